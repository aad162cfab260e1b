//! The Rnn, Lstm and Gru part of the sweep: constructors over every size, then forward,
//! forward_train, backward (with every module's reserve) and reserve_bytes around valid calls.

use crate::common::layers::{Case, Kind};
use crate::harness::{collected, Sweep};
use crate::shapes::{
    cube, dims, length_variants, maybe, num, opt_dims, shared, tensors, tensors_around, DIMS, HUGE,
    MAX,
};
use fused_rnn::nn::{Gru, GruConfig, Lstm, LstmConfig, Rnn, RnnConfig};
use fused_rnn::{DType, Device, Gradients, Nonlinearity, Reserve, Tensor};

/// (bidirectional, batch_first, bias): every combination for the constructors.
const ALL_FLAGS: [(bool, bool, bool); 8] = [
    (false, false, false),
    (false, false, true),
    (false, true, false),
    (false, true, true),
    (true, false, false),
    (true, false, true),
    (true, true, false),
    (true, true, true),
];
/// Fewer for the modules the calls run on.
const RUN_FLAGS: [(bool, bool, bool); 4] = [
    (false, false, true),
    (true, false, true),
    (false, true, false),
    (true, true, true),
];

pub(crate) fn case(
    kind: Kind,
    (i, h, layers): (usize, usize, usize),
    flags: (bool, bool, bool),
) -> Case {
    let (bidirectional, batch_first, bias) = flags;
    Case {
        kind,
        i,
        h,
        layers,
        bidirectional,
        batch_first,
        t: 0,
        b: 0,
        lengths: false,
        h0: false,
        bias,
    }
}

pub(crate) fn describe(c: &Case) -> String {
    format!(
        "{:?}(I={}, H={}, layers={}, bidirectional={}, batch_first={}, bias={})",
        c.kind,
        num(c.i),
        num(c.h),
        num(c.layers),
        c.bidirectional,
        c.batch_first,
        c.bias
    )
}

/// Any recurrent layer, through its public API.
pub(crate) enum Module {
    Rnn(Rnn),
    Lstm(Lstm),
    Gru(Gru),
}

/// A training forward's reserve and its results' shapes (output, h_n and, LSTM, c_n).
type Forwarded = (Reserve, Vec<Vec<usize>>);

impl Module {
    pub(crate) fn random(c: &Case, dtype: DType) -> fused_rnn::Result<Self> {
        let (cpu, seed) = (Device::Cpu, 11);
        Ok(match c.kind {
            Kind::Rnn(nonlinearity) => {
                let config = RnnConfig {
                    nonlinearity,
                    num_layers: c.layers,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                    ..RnnConfig::new(c.i, c.h)
                };
                Module::Rnn(Rnn::random(config, &cpu, dtype, seed)?)
            }
            Kind::Lstm { proj } => {
                let config = LstmConfig {
                    proj_size: proj,
                    num_layers: c.layers,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                    ..LstmConfig::new(c.i, c.h)
                };
                Module::Lstm(Lstm::random(config, &cpu, dtype, seed)?)
            }
            Kind::Gru => {
                let config = GruConfig {
                    num_layers: c.layers,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                    ..GruConfig::new(c.i, c.h)
                };
                Module::Gru(Gru::random(config, &cpu, dtype, seed)?)
            }
        })
    }

    /// `forward` (None) or `forward_train`; c0 reaches an LSTM only, and only with h0.
    fn run(
        &self,
        train: bool,
        x: &Tensor,
        (h0, c0): (Option<&Tensor>, Option<&Tensor>),
        lengths: Option<&[usize]>,
    ) -> fused_rnn::Result<Option<Forwarded>> {
        let shapes = |ts: &[&Tensor]| ts.iter().map(|t| t.shape().to_vec()).collect();
        Ok(match (self, train) {
            (Module::Rnn(m), false) => m.forward(x, h0, lengths).map(|_| None)?,
            (Module::Gru(m), false) => m.forward(x, h0, lengths).map(|_| None)?,
            (Module::Lstm(m), false) => m.forward(x, h0.zip(c0), lengths).map(|_| None)?,
            (Module::Rnn(m), true) => {
                let (o, r) = m.forward_train(x, h0, lengths)?;
                Some((r, shapes(&[&o.output, &o.h_n])))
            }
            (Module::Gru(m), true) => {
                let (o, r) = m.forward_train(x, h0, lengths)?;
                Some((r, shapes(&[&o.output, &o.h_n])))
            }
            (Module::Lstm(m), true) => {
                let (o, r) = m.forward_train(x, h0.zip(c0), lengths)?;
                Some((r, shapes(&[&o.output, &o.h_n, &o.c_n])))
            }
        })
    }

    /// `backward`; grad_c_n reaches an LSTM only (the others' API has no place for it).
    fn backward(
        &self,
        reserve: &Reserve,
        [dy, dh, dc]: [Option<&Tensor>; 3],
    ) -> fused_rnn::Result<Gradients> {
        let dy = dy.expect("grad_output is always given");
        match self {
            Module::Rnn(m) => m.backward(reserve, dy, dh),
            Module::Gru(m) => m.backward(reserve, dy, dh),
            Module::Lstm(m) => m.backward(reserve, dy, dh, dc),
        }
    }

    fn named_gradients(&self, grads: &Gradients) -> usize {
        match self {
            Module::Rnn(m) => m.named_gradients(grads).len(),
            Module::Gru(m) => m.named_gradients(grads).len(),
            Module::Lstm(m) => m.named_gradients(grads).len(),
        }
    }

    fn reserve_bytes(&self, seq_len: usize, batch: usize) -> usize {
        match self {
            Module::Rnn(m) => m.reserve_bytes(seq_len, batch),
            Module::Gru(m) => m.reserve_bytes(seq_len, batch),
            Module::Lstm(m) => m.reserve_bytes(seq_len, batch),
        }
    }
}

/// A recurrent module under test: its description, case and layer.
struct Subject {
    name: String,
    case: Case,
    module: Module,
}

/// What a valid training forward of a subject keeps: its reserve, upstream gradients of its
/// results' shapes, and the gradients of its own backward.
struct Trained {
    reserve: Reserve,
    upstream: Vec<Tensor>,
    grads: Option<Gradients>,
}

impl Trained {
    fn upstream(&self) -> [Option<&Tensor>; 3] {
        [0, 1, 2].map(|k| self.upstream.get(k))
    }
}

impl Subject {
    fn lstm(&self) -> bool {
        matches!(self.case.kind, Kind::Lstm { .. })
    }

    fn input_shape(&self, t: usize, b: usize) -> Vec<usize> {
        match self.case.batch_first {
            true => vec![b, t, self.case.i],
            false => vec![t, b, self.case.i],
        }
    }

    /// (h0's shape, c0's shape) for `b` rows.
    fn state_shapes(&self, b: usize) -> (Vec<usize>, Vec<usize>) {
        let c = &self.case;
        let ld = c.layers * if c.bidirectional { 2 } else { 1 };
        (vec![ld, b, c.out_size()], vec![ld, b, c.h])
    }

    /// `forward` or `forward_train` in the sweep.
    fn run(
        &self,
        sweep: &mut Sweep,
        train: bool,
        x: &Tensor,
        state: (Option<&Tensor>, Option<&Tensor>),
        lengths: Option<&[usize]>,
    ) -> Option<Forwarded> {
        let call = || {
            let mode = if train { "forward_train" } else { "forward" };
            format!(
                "{}.{mode}(input {}, h0 {}, c0 {}, lengths {})",
                self.name,
                dims(x.shape()),
                opt_dims(state.0),
                opt_dims(state.1),
                maybe(lengths)
            )
        };
        sweep.call(call, || self.module.run(train, x, state, lengths))?
    }

    /// `backward` in the sweep, with the reserve of the subject named `of`.
    fn backward(
        &self,
        sweep: &mut Sweep,
        (reserve, of): (&Reserve, &str),
        upstream: [Option<&Tensor>; 3],
    ) -> Option<Gradients> {
        let call = || {
            let [dy, dh, dc] = upstream;
            format!(
                "{}.backward(reserve of {of}, grad_output {}, grad_h_n {}, grad_c_n {})",
                self.name,
                opt_dims(dy),
                opt_dims(dh),
                opt_dims(dc)
            )
        };
        sweep.call(call, || self.module.backward(reserve, upstream))
    }
}

pub(crate) fn check_recurrent(sweep: &mut Sweep) {
    let all_kinds = [
        Kind::Rnn(Nonlinearity::Tanh),
        Kind::Rnn(Nonlinearity::Relu),
        Kind::Lstm { proj: 0 },
        Kind::Lstm { proj: 1 },
        Kind::Lstm { proj: 3 },
        Kind::Gru,
    ];
    for kind in all_kinds {
        for &(i, h, layers) in &cube(&DIMS) {
            for flags in ALL_FLAGS {
                let c = case(kind, (i, h, layers), flags);
                sweep.call(
                    || format!("{}::random", describe(&c)),
                    || Module::random(&c, DType::F32),
                );
            }
        }
        let c = case(kind, (3, 3, 1), ALL_FLAGS[0]);
        for dtype in [DType::F16, DType::BF16] {
            sweep.call(
                || format!("{}::random on the CPU in {dtype}", describe(&c)),
                || Module::random(&c, dtype),
            );
        }
    }
    // Modules to run: sizes 1 and 3, and LSTM projections 1 and 2 (one below H = 3).
    let run_kinds = [
        Kind::Rnn(Nonlinearity::Tanh),
        Kind::Lstm { proj: 0 },
        Kind::Lstm { proj: 1 },
        Kind::Lstm { proj: 2 },
        Kind::Gru,
    ];
    let mut subjects = Vec::new();
    for kind in run_kinds {
        for &sizes in &cube(&[1, 3]) {
            for flags in RUN_FLAGS {
                let case = case(kind, sizes, flags);
                let name = describe(&case);
                let made = sweep.call(
                    || format!("{name}::random"),
                    || Module::random(&case, DType::F32),
                );
                subjects.extend(made.map(|module| Subject { name, case, module }));
            }
        }
    }
    for s in &subjects {
        check_forward(sweep, s);
        check_reserve_bytes(sweep, s);
    }
    let trained: Vec<Option<Trained>> = subjects.iter().map(|s| train(sweep, s)).collect();
    // Every module's backward with every other module's reserve and upstream gradients.
    for (s, mine) in subjects.iter().zip(&trained) {
        let Some(mine) = mine else { continue };
        for (other, theirs) in subjects.iter().zip(&trained) {
            let Some(theirs) = theirs else { continue };
            if std::ptr::eq(s, other) {
                continue;
            }
            s.backward(sweep, (&mine.reserve, &s.name), theirs.upstream());
            s.backward(sweep, (&theirs.reserve, &other.name), theirs.upstream());
            if let Some(g) = &theirs.grads {
                sweep.value(
                    || format!("{}.named_gradients(of {})", s.name, other.name),
                    || s.module.named_gradients(g),
                );
            }
        }
    }
}

/// forward and forward_train around valid calls: the input, h0, c0 and lengths in turn.
fn check_forward(sweep: &mut Sweep, s: &Subject) {
    for train in [false, true] {
        for x in tensors_around(&s.input_shape(3, 3)) {
            s.run(sweep, train, x, (None, None), None);
        }
        for (t, b) in [(1, 1), (3, 3), (1, 3), (3, 1)] {
            let x = shared(&s.input_shape(t, b));
            let (hs, cs) = s.state_shapes(b);
            let c0 = s.lstm().then(|| shared(&cs));
            for h in tensors_around(&hs) {
                s.run(sweep, train, x, (Some(h), c0), None);
            }
            if s.lstm() {
                for c in tensors_around(&cs) {
                    s.run(sweep, train, x, (Some(shared(&hs)), Some(c)), None);
                }
            }
            for lengths in length_variants(t, b) {
                s.run(sweep, train, x, (None, None), lengths.as_deref());
            }
        }
    }
}

/// A valid training forward (3 steps, 3 rows, mixed lengths, h0 and c0), then backward with
/// grad_output, grad_h_n and grad_c_n in turn replaced by every sweep shape (and, for the
/// last two, left out).
fn train(sweep: &mut Sweep, s: &Subject) -> Option<Trained> {
    let x = shared(&s.input_shape(3, 3));
    let (hs, cs) = s.state_shapes(3);
    let state = (Some(shared(&hs)), s.lstm().then(|| shared(&cs)));
    let (reserve, shapes) = s.run(sweep, true, x, state, Some(&[1, 3, 2]))?;
    let upstream = tensors(&shapes);
    let valid: [Option<&Tensor>; 3] = [0, 1, 2].map(|k| upstream.get(k));
    let mine = (&reserve, s.name.as_str());
    for (slot, shape) in shapes.iter().enumerate() {
        for g in tensors_around(shape) {
            let mut up = valid;
            up[slot] = Some(g);
            s.backward(sweep, mine, up);
        }
        if slot > 0 {
            let mut up = valid;
            up[slot] = None;
            s.backward(sweep, mine, up);
        }
    }
    let grads = s.backward(sweep, mine, valid);
    Some(Trained {
        reserve,
        upstream,
        grads,
    })
}

/// reserve_bytes at sizes that overflow, and around the largest sequence length each batch
/// size accepts (found by bisection; a panic counts as accepted), where the count must still
/// be computable.
fn check_reserve_bytes(sweep: &mut Sweep, s: &Subject) {
    let mut args = vec![
        (MAX, MAX),
        (MAX, 1),
        (1, MAX),
        (0, MAX),
        (MAX, 0),
        (HUGE, HUGE),
        (HUGE, 3),
        (0, 0),
        (3, 3),
    ];
    for batch in [1, 3] {
        let accepted = |t: usize| {
            !collected(|| s.module.reserve_bytes(t, batch)).is_ok_and(|bytes| bytes == MAX)
        };
        let (mut lo, mut hi) = (0usize, MAX);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if accepted(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        args.extend([(lo, batch), (hi, batch), (lo / 2, batch)]);
    }
    for (t, b) in args {
        sweep.value(
            || format!("{}.reserve_bytes({}, {})", s.name, num(t), num(b)),
            || s.module.reserve_bytes(t, b),
        );
    }
}
