//! The library's promise that for any shape a caller can construct the public API answers with
//! a `Result`, `Ok` or `Err`, and never panics: a panic takes a training loop or a server down
//! where an `Err` would have named the tensor and both shapes.
//!
//! Every public CPU entry point is called around valid calls, one argument at a time replaced by
//! each shape of rank 0 to 4 over the dimensions {0, 1, 3}, by near misses of the right shape,
//! and by zero-element shapes with huge dimensions beside the zero; configurations, lengths and
//! sizes go to 0 and to sizes no machine holds. Each call runs under `catch_unwind`; every
//! panic is kept with the call, its message and its location, and the test fails listing them
//! all, so one run reports everything. Calls that ask for more memory than any machine has run
//! in a child process whose allocations have a budget: a size the library fails to refuse
//! aborts the child, which is reported with where it allocated, instead of this test.

mod common;

use common::layers::{Case, Kind};
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{
    Attention, Embedding, Gru, GruConfig, Linear, Lstm, LstmConfig, Rnn, RnnConfig,
};
use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Gradients, Nonlinearity, Reserve, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The dimensions every small shape is built from.
const DIMS: [usize; 3] = [0, 1, 3];
/// A dimension no buffer can have: 2^40 elements.
const HUGE: usize = 1 << 40;
const MAX: usize = usize::MAX;

/// The environment variable that makes `isolated_call` run one of `isolated_calls`.
const CASE_VAR: &str = "FUSED_RNN_SHAPES_CASE";
/// How a child marks a panic on its standard output.
const PANIC_MARK: &str = "library_shapes panic: ";
/// How a child marks an allocation past its budget on its standard error.
const ALLOC_MARK: &str = "library_shapes allocation: ";
/// What a child may allocate: far more than its calls need, far less than any huge size.
const CHILD_BUDGET: isize = 64 << 20;
/// What a child may allocate after its first refusal.
const CHILD_SLACK: isize = 16 << 20;
const CHILD_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Collecting panics, and allocations past a child's budget

thread_local! {
    /// Whether this thread's panics are being collected (otherwise the default hook prints them).
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    /// The last collected panic: its message and where it was raised.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set while an allocation past the budget is being reported (the report allocates).
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that records collected panics instead of printing.
fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !COLLECTING.get() {
                return default(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a payload that is not text)".into());
            let place = info.location().map_or("an unknown location".into(), |l| {
                format!("{}:{}", l.file(), l.line())
            });
            let origin = match place.starts_with("src/") {
                true => String::new(),
                false => format!(" (called from {})", reporting(crate_frame)),
            };
            LAST_PANIC.set(Some(format!("`{message}` at {place}{origin}")));
        }));
    });
}

/// `f`'s result, computed past a child's allocation budget.
fn reporting<T>(f: impl FnOnce() -> T) -> T {
    REPORTING.set(true);
    let out = f();
    REPORTING.set(false);
    out
}

/// The innermost frame of the current backtrace in the crate's `src/`: where the crate called
/// into std or a dependency that panicked or allocated.
fn crate_frame() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    trace
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("at "))
        .map(|path| path.trim_start_matches(root).trim_start_matches("./"))
        .find(|path| path.starts_with("src/"))
        .map_or("no frame in src/".into(), str::to_string)
}

/// The system allocator, with a budget in a child running `isolated_call` (0, none, elsewhere):
/// an allocation past it is reported with the crate's frame that asked for it, then fails.
struct Budgeted;

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

static BUDGET: AtomicIsize = AtomicIsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static REFUSED: AtomicBool = AtomicBool::new(false);

impl Budgeted {
    /// Whether `size` more bytes fit the budget (counted when they do). A report, of a panic
    /// or of a refusal, is neither limited nor counted: it reads the backtrace.
    fn admit(size: usize) -> bool {
        let budget = BUDGET.load(Relaxed);
        if budget == 0 || REPORTING.get() {
            return true;
        }
        // Layout sizes never exceed isize::MAX.
        let size = size as isize;
        if LIVE.fetch_add(size, Relaxed).saturating_add(size) <= budget {
            return true;
        }
        LIVE.fetch_sub(size, Relaxed);
        // The first refusal is reported, and leaves room for what follows it (an Err, or the
        // allocation-failure message: written under the backtrace lock, so never reported).
        if !REFUSED.swap(true, Relaxed) {
            BUDGET.fetch_add(CHILD_SLACK, Relaxed);
            let frame = reporting(crate_frame);
            eprintln!("{ALLOC_MARK}{size} bytes, asked for at {frame}");
        }
        false
    }

    fn release(size: usize) {
        if BUDGET.load(Relaxed) != 0 {
            LIVE.fetch_sub(size as isize, Relaxed);
        }
    }
}

// SAFETY: every call goes to the system allocator with the caller's layout; the budget only
// refuses (returns null), which callers handle as an allocation failure.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::admit(layout.size()) {
            true => unsafe { System.alloc(layout) },
            false => std::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::admit(layout.size()) {
            true => unsafe { System.alloc_zeroed(layout) },
            false => std::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::release(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        // On failure the old block stays; either way one of the two sizes is not held.
        Self::release(if moved.is_null() {
            new_size
        } else {
            layout.size()
        });
        moved
    }
}

/// Runs calls under `catch_unwind` and keeps every panic with its call.
#[derive(Default)]
struct Sweep {
    calls: usize,
    errors: usize,
    panics: Vec<String>,
}

impl Sweep {
    /// Runs `f`: its Ok value, None after an Err or a panic. `call` describes it (made only
    /// for the report of a panic).
    fn call<T, E>(
        &mut self,
        call: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        self.calls += 1;
        match collected(f) {
            Ok(Ok(value)) => Some(value),
            Ok(Err(_)) => {
                self.errors += 1;
                None
            }
            Err(panic) => {
                self.panics.push(format!("{}: panicked: {panic}", call()));
                None
            }
        }
    }

    /// As `call`, for entry points that return a value rather than a Result.
    fn value<T>(&mut self, call: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Option<T> {
        self.call(call, || Ok::<T, std::convert::Infallible>(f()))
    }
}

/// `f`'s result, or its panic as text (a collected panic's message never reaches stderr).
fn collected<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    COLLECTING.set(true);
    let outcome = catch_unwind(AssertUnwindSafe(f));
    COLLECTING.set(false);
    outcome.map_err(|_| {
        LAST_PANIC
            .take()
            .unwrap_or_else(|| "a panic on another thread".into())
    })
}

// ---------------------------------------------------------------------------------------------
// Shapes and tensors

/// A size as the report shows it: huge powers of two and usize::MAX by name.
fn num(d: usize) -> String {
    match d {
        MAX => "MAX".into(),
        d if d >= 1 << 32 && d.is_power_of_two() => format!("2^{}", d.trailing_zeros()),
        d => d.to_string(),
    }
}

fn dims(shape: &[usize]) -> String {
    let names: Vec<String> = shape.iter().map(|&d| num(d)).collect();
    format!("[{}]", names.join(", "))
}

fn opt_dims(t: Option<&Tensor>) -> String {
    t.map_or("None".into(), |t| dims(t.shape()))
}

fn list(shapes: &[Vec<usize>]) -> String {
    let names: Vec<String> = shapes.iter().map(|s| dims(s)).collect();
    format!("[{}]", names.join(", "))
}

/// Every shape of rank 0 to 4 over `DIMS`, then zero-element shapes with huge dimensions.
fn shapes() -> &'static [Vec<usize>] {
    static SHAPES: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let mut all = vec![vec![]];
        let mut rank = vec![vec![]];
        for _ in 0..4 {
            rank = rank
                .iter()
                .flat_map(|s: &Vec<usize>| DIMS.iter().map(move |&d| [s.as_slice(), &[d]].concat()))
                .collect();
            all.extend(rank.iter().cloned());
        }
        all.extend([
            vec![HUGE, 0],
            vec![0, HUGE],
            vec![HUGE, 0, 5],
            vec![0, HUGE, 1],
            vec![1, 0, HUGE],
            vec![3, HUGE, 0],
            vec![0, HUGE, HUGE],
            vec![HUGE, 0, 1, 3],
            vec![0, MAX],
            vec![1, 3, 0, HUGE],
        ]);
        all
    })
}

/// Every sweep shape, then the near misses of `valid` that are not among them: `valid`, each
/// dimension one more and one less, one more leading axis and one fewer.
fn around(valid: &[usize]) -> Vec<Vec<usize>> {
    let mut near = vec![valid.to_vec(), [&[1], valid].concat()];
    if let Some((_, rest)) = valid.split_first() {
        near.push(rest.to_vec());
    }
    for axis in 0..valid.len() {
        for delta in [1isize, -1] {
            let mut s = valid.to_vec();
            if let Some(d) = s[axis].checked_add_signed(delta) {
                s[axis] = d;
                near.push(s);
            }
        }
    }
    let mut all = shapes().to_vec();
    for s in near {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all
}

/// The element count of `shape` when it is small enough to make a tensor of in this test.
fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 16)
}

fn small(shape: &[usize]) -> bool {
    elements(shape).is_some()
}

/// A host f32 tensor of `shape` with random non-zero values (seeded by the shape).
fn tensor(shape: &[usize]) -> Tensor {
    let n = elements(shape).unwrap_or_else(|| panic!("sweep shapes stay small: {shape:?}"));
    let seed = shape
        .iter()
        .fold(n as u64, |h, &d| h.wrapping_mul(31) ^ d as u64);
    Tensor::from_vec(common::random(n, 1.0, seed), shape).unwrap()
}

fn tensors(shapes: &[Vec<usize>]) -> Vec<Tensor> {
    shapes.iter().map(|s| tensor(s)).collect()
}

/// The tensor of `shape`, made once per process and shared (the sweep reads the same shapes
/// many times).
fn shared(shape: &[usize]) -> &'static Tensor {
    static MADE: OnceLock<Mutex<HashMap<Vec<usize>, &'static Tensor>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    made.entry(shape.to_vec())
        .or_insert_with(|| Box::leak(Box::new(tensor(shape))))
}

/// The shared tensors of `around(valid)`.
fn tensors_around(valid: &[usize]) -> Vec<&'static Tensor> {
    around(valid).iter().map(|s| shared(s)).collect()
}

/// Lengths around a valid call of `batch` rows of `len` steps (or keys), and none.
fn length_variants(len: usize, batch: usize) -> Vec<Option<Vec<usize>>> {
    let mixed = (0..batch)
        .map(|r| [1, len, len.div_ceil(2)][r % 3])
        .collect();
    let mut out = vec![None, Some(mixed), Some(vec![])];
    for (value, rows) in [(len, batch + 1), (0, batch), (len + 1, batch), (MAX, batch)] {
        out.push(Some(vec![value; rows]));
    }
    out
}

/// Lengths, a bias shape or tokens when given.
fn maybe(values: Option<&[usize]>) -> String {
    values.map_or("None".into(), dims)
}

// ---------------------------------------------------------------------------------------------
// Tensor

/// Shapes whose element count overflows usize (some only in one order of multiplication).
const OVERFLOWING: [&[usize]; 7] = [
    &[HUGE, HUGE, 0],
    &[MAX, 2],
    &[2, MAX],
    &[MAX, MAX, 0],
    &[1 << 32, 1 << 32],
    &[HUGE, HUGE, HUGE],
    &[MAX],
];

fn check_tensor(sweep: &mut Sweep) {
    let all: Vec<&[usize]> = shapes()
        .iter()
        .map(Vec::as_slice)
        .chain(OVERFLOWING)
        .collect();
    for shape in &all {
        let s = || dims(shape);
        for len in [0, 1, 3] {
            let values = common::random(len, 1.0, len as u64 + 1);
            sweep.call(
                || format!("Tensor::from_vec({len} values, {})", s()),
                || Tensor::from_vec(values.clone(), shape),
            );
            for dtype in [DType::F16, DType::BF16] {
                sweep.call(
                    || format!("Tensor::from_f32({len} values, {}, {dtype})", s()),
                    || Tensor::from_f32(&values, shape, dtype),
                );
            }
            let flat = Tensor::from_vec(values, &[len]).unwrap();
            sweep.call(
                || format!("Tensor [{len}].reshape({})", s()),
                || flat.reshape(shape),
            );
        }
    }
    for shape in shapes() {
        let s = || dims(shape);
        sweep.call(
            || format!("Tensor {}.reshape([0, 2^40, 2^40])", s()),
            || tensor(shape).reshape(&[0, HUGE, HUGE]),
        );
        for dtype in DType::ALL {
            sweep.call(
                || format!("Tensor {}.to(cpu, {dtype})", s()),
                || shared(shape).to(&Device::Cpu, dtype)?.to_vec_f32(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rnn, Lstm, Gru

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

fn case(kind: Kind, (i, h, layers): (usize, usize, usize), flags: (bool, bool, bool)) -> Case {
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

fn describe(c: &Case) -> String {
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

/// Every (a, b) over `values`.
fn pairs(values: &[usize]) -> Vec<(usize, usize)> {
    let v = values;
    v.iter()
        .flat_map(|&a| v.iter().map(move |&b| (a, b)))
        .collect()
}

/// Every (a, b, c) over `values`.
fn cube(values: &[usize]) -> Vec<(usize, usize, usize)> {
    let v = values;
    pairs(v)
        .into_iter()
        .flat_map(|(a, b)| v.iter().map(move |&c| (a, b, c)))
        .collect()
}

/// Any recurrent layer, through its public API.
enum Module {
    Rnn(Rnn),
    Lstm(Lstm),
    Gru(Gru),
}

/// A training forward's reserve and its results' shapes (output, h_n and, LSTM, c_n).
type Forwarded = (Reserve, Vec<Vec<usize>>);

impl Module {
    fn random(c: &Case, dtype: DType) -> fused_rnn::Result<Self> {
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

fn check_recurrent(sweep: &mut Sweep) {
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

// ---------------------------------------------------------------------------------------------
// Attention

/// A state_dict to write: a label, tensors (name, shape) and metadata.
struct StateDict {
    label: String,
    tensors: Vec<(&'static str, Vec<usize>)>,
    metadata: Vec<(&'static str, String)>,
}

fn state_dict(label: &str, tensors: &[(&'static str, &[usize])], kind: Option<&str>) -> StateDict {
    StateDict {
        label: label.into(),
        tensors: tensors.iter().map(|(n, s)| (*n, s.to_vec())).collect(),
        metadata: kind.map(|k| ("kind", k.to_string())).into_iter().collect(),
    }
}

/// Writes `sd` with random values into `dir` as a safetensors file.
fn write_state_dict(dir: &Path, sd: &StateDict) -> std::path::PathBuf {
    let bytes: Vec<Vec<u8>> = sd
        .tensors
        .iter()
        .enumerate()
        .map(|(k, (_, shape))| {
            let values = common::random(shape.iter().product(), 0.7, k as u64 + 5);
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
        .collect();
    let views = sd.tensors.iter().zip(&bytes).map(|((name, shape), b)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).unwrap();
        (name.to_string(), view)
    });
    let metadata: HashMap<String, String> = sd
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let file: String = sd
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{file}.safetensors"));
    safetensors::serialize_to_file(views, Some(metadata), &path).unwrap();
    path
}

/// An attention layer under test, with the query and key widths its valid calls use.
struct AttentionSubject {
    name: String,
    layer: Attention,
    dq: usize,
    dk: usize,
}

/// Layers of every kind (sizes 1 and 3, with and without biases, kind from metadata or from
/// the tensors), as (state_dict, Dq, Dk).
fn attention_layers() -> Vec<(StateDict, usize, usize)> {
    let mut out = Vec::new();
    let biases: [&[&str]; 4] = [
        &[],
        &["query_proj.bias", "key_proj.bias"],
        &["query_proj.bias"],
        &["key_proj.bias"],
    ];
    let sizes = [(1, 1, 1), (3, 1, 3), (1, 3, 1), (3, 3, 3)];
    for (n, (&(a, dq, dk), biases)) in sizes.iter().zip(biases).enumerate() {
        let (v, w_q, w_k, bias) = ([1, a], [a, dq], [a, dk], [a]);
        let mut t: Vec<(&'static str, &[usize])> = vec![
            ("score.weight", &v),
            ("query_proj.weight", &w_q),
            ("key_proj.weight", &w_k),
        ];
        t.extend(biases.iter().map(|&b| (b, &bias[..])));
        let kind = (n % 2 == 0).then_some("additive");
        let label = format!("additive_a{a}_dq{dq}_dk{dk}_biases{}", biases.len());
        out.push((state_dict(&label, &t, kind), dq, dk));
    }
    for (n, &(dq, dk)) in [(1, 1), (1, 3), (3, 1), (3, 3)].iter().enumerate() {
        let kind = (n % 2 == 0).then_some("general");
        let w = [dq, dk];
        let label = format!("general_dq{dq}_dk{dk}");
        out.push((state_dict(&label, &[("key_proj.weight", &w)], kind), dq, dk));
    }
    for (scale, d) in [(None, 3), (Some("0.5"), 1), (Some("-2"), 3)] {
        let label = format!("dot_scale_{}_d{d}", scale.unwrap_or("none"));
        let mut sd = state_dict(&label, &[], Some("dot"));
        sd.metadata.extend(scale.map(|s| ("scale", s.to_string())));
        out.push((sd, d, d));
    }
    out.push((state_dict("dot_inferred", &[], None), 1, 1));
    out
}

/// Files a layer must refuse: wrong ranks, zero or mismatched sizes, stray tensors, bad
/// metadata.
fn bad_attention_files() -> Vec<StateDict> {
    let additive = |name: &'static str, shape: &'static [usize]| {
        let mut t: Vec<(&'static str, &[usize])> = vec![
            ("score.weight", &[1, 3]),
            ("query_proj.weight", &[3, 2]),
            ("key_proj.weight", &[3, 1]),
            ("query_proj.bias", &[3]),
            ("key_proj.bias", &[3]),
        ];
        t.iter_mut()
            .filter(|(n, _)| *n == name)
            .for_each(|e| e.1 = shape);
        state_dict(
            &format!("additive {name} {}", dims(shape)),
            &t,
            Some("additive"),
        )
    };
    let mut out = Vec::new();
    for shape in [
        &[1, 0][..],
        &[0, 3],
        &[3],
        &[2, 3],
        &[1, 3, 1],
        &[],
        &[1, 1, 0, 3],
    ] {
        out.push(additive("score.weight", shape));
    }
    for name in ["query_proj.weight", "key_proj.weight"] {
        for shape in [&[3][..], &[2, 2], &[3, 0], &[0, 3], &[3, 1, 1], &[]] {
            out.push(additive(name, shape));
        }
    }
    for name in ["query_proj.bias", "key_proj.bias"] {
        for shape in [&[2][..], &[0], &[3, 1], &[1, 3], &[]] {
            out.push(additive(name, shape));
        }
    }
    for shape in [&[0, 3][..], &[3, 0], &[3], &[1, 1, 1], &[]] {
        let label = format!("general key_proj.weight {}", dims(shape));
        out.push(state_dict(
            &label,
            &[("key_proj.weight", shape)],
            Some("general"),
        ));
    }
    let one = &[("score.weight", &[1, 3][..])];
    out.extend([
        state_dict("additive without tensors", &[], Some("additive")),
        state_dict("general without tensors", &[], Some("general")),
        state_dict("general with score.weight", one, Some("general")),
        state_dict(
            "dot with key_proj.weight",
            &[("key_proj.weight", &[3, 3])],
            Some("dot"),
        ),
        state_dict("kind luong", &[], Some("luong")),
        state_dict("inferred additive without projections", one, None),
    ]);
    for scale in ["nan", "inf", "-inf", "abc", "1e40", ""] {
        let mut sd = state_dict(&format!("dot scale {scale}"), &[], Some("dot"));
        sd.metadata.push(("scale", scale.to_string()));
        out.push(sd);
    }
    out
}

/// Loads a state_dict file and builds an attention layer from it in `dtype`.
fn load_attention(
    sweep: &mut Sweep,
    dir: &Path,
    sd: &StateDict,
    dtype: DType,
) -> Option<Attention> {
    let path = write_state_dict(dir, sd);
    let file = sweep.call(
        || format!("TensorFile::load({})", sd.label),
        || TensorFile::load(&path),
    )?;
    sweep.call(
        || format!("Attention::from_state_dict({}, cpu, {dtype})", sd.label),
        || Attention::from_state_dict(&file, &Device::Cpu, dtype),
    )
}

fn check_attention(sweep: &mut Sweep) {
    let dir = common::scratch("library-shapes");
    for sd in bad_attention_files() {
        load_attention(sweep, &dir, &sd, DType::F32);
    }
    let mut subjects = Vec::new();
    for (sd, dq, dk) in attention_layers() {
        load_attention(sweep, &dir, &sd, DType::F16);
        if let Some(layer) = load_attention(sweep, &dir, &sd, DType::F32) {
            let name = format!("Attention({})", sd.label);
            subjects.push(AttentionSubject {
                name,
                layer,
                dq,
                dk,
            });
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    // Valid keys of every layer, for every layer's attend: one row of one key, and three rows
    // of three keys with values of another width and mixed lengths.
    let mut all_keys = Vec::new();
    for s in &subjects {
        check_keys(sweep, s);
        check_attention_backward(sweep, s);
        let (k1, k3, v3) = ([1, 1, s.dk], [3, 3, s.dk], [3, 3, 1]);
        for (k, v, lengths) in [(k1, None, None), (k3, Some(v3), Some(&[1, 3, 2][..]))] {
            let (v, l) = (v.map(|v| shared(&v)), maybe(lengths));
            let made = format!(
                "{} (keys {}, values {}, lengths {l})",
                s.name,
                dims(&k),
                opt_dims(v)
            );
            let keys = sweep.call(|| made.clone(), || s.layer.keys(shared(&k), v, lengths));
            all_keys.extend(keys.map(|keys| (made, keys)));
        }
    }
    let queries: Vec<&Tensor> = shapes().iter().map(|s| shared(s)).collect();
    for s in &subjects {
        for (from, keys) in &all_keys {
            for q in &queries {
                let want = q.shape().len() % 2 == 0;
                sweep.call(
                    || {
                        let q = dims(q.shape());
                        format!(
                            "{}.attend(keys of {from}, query {q}, want_weights {want})",
                            s.name
                        )
                    },
                    || s.layer.attend(keys, q, want),
                );
            }
        }
    }
}

/// `keys` around valid calls: keys, values and lengths in turn.
fn check_keys(sweep: &mut Sweep, s: &AttentionSubject) {
    let mut keys = |k: &Tensor, v: Option<&Tensor>, lengths: Option<&[usize]>| {
        let call = || {
            let (k, v, l) = (dims(k.shape()), opt_dims(v), maybe(lengths));
            format!("{}.keys(keys {k}, values {v}, lengths {l})", s.name)
        };
        sweep.call(call, || s.layer.keys(k, v, lengths));
    };
    for k in tensors_around(&[3, 3, s.dk]) {
        keys(k, None, None);
    }
    let k = shared(&[3, 3, s.dk]);
    for v in tensors_around(&[3, 3, 3]) {
        keys(k, Some(v), Some(&[1, 3, 2]));
    }
    for lengths in length_variants(3, 3) {
        keys(k, None, lengths.as_deref());
    }
}

/// backward around valid calls (one query per row and several, values or not): keys, values,
/// lengths, query and grad_context in turn.
fn check_attention_backward(sweep: &mut Sweep, s: &AttentionSubject) {
    let k = shared(&[3, 3, s.dk]);
    for (query, dv) in [(vec![3, s.dq], 3), (vec![3, 2, s.dq], 1)] {
        let lead = &query[..query.len() - 1];
        let (v, q) = (shared(&[3, 3, dv]), shared(&query));
        let g = shared(&[lead, &[dv]].concat());
        let mut backward = |[k, v, q, g]: [&Tensor; 4], values: bool, lengths: Option<&[usize]>| {
            let v = values.then_some(v);
            let call = || {
                let (k, v, l) = (dims(k.shape()), opt_dims(v), maybe(lengths));
                let (q, g) = (dims(q.shape()), dims(g.shape()));
                let args =
                    format!("keys {k}, values {v}, lengths {l}, query {q}, grad_context {g}");
                format!("{}.backward({args})", s.name)
            };
            sweep.call(call, || s.layer.backward(k, v, lengths, q, g));
        };
        let base = [k, v, q, g];
        for (slot, valid) in base.map(|t| t.shape().to_vec()).iter().enumerate() {
            for t in tensors_around(valid) {
                let mut args = base;
                args[slot] = t;
                backward(args, true, Some(&[1, 3, 2]));
            }
        }
        for l in length_variants(3, 3) {
            backward(base, true, l.as_deref());
        }
        // Without values the context has the keys' width.
        backward([k, v, q, shared(&[lead, &[s.dk]].concat())], false, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Linear and Embedding

/// One Linear made directly (any weight and bias shape), its forward and its backward.
fn linear_calls(sweep: &mut Sweep, w: &[usize], b: Option<&[usize]>, x: &[usize], gy: &[usize]) {
    let layer = Linear {
        weight: tensor(w),
        bias: b.map(tensor),
    };
    let name = || format!("Linear {{ weight {}, bias {} }}", dims(w), maybe(b));
    let (x, gy) = (shared(x), shared(gy));
    sweep.call(
        || format!("{}.forward({})", name(), dims(x.shape())),
        || layer.forward(x),
    );
    sweep.call(
        || {
            format!(
                "{}.backward({}, {})",
                name(),
                dims(x.shape()),
                dims(gy.shape())
            )
        },
        || layer.backward(x, gy),
    );
}

/// Linear's constructor over every size, then forward and backward around valid layers.
fn check_linear(sweep: &mut Sweep) {
    for (i, o) in pairs(&DIMS) {
        for bias in [false, true] {
            sweep.call(
                || format!("Linear::random({i}, {o}, bias {bias})"),
                || Linear::random(i, o, bias, 3),
            );
        }
    }
    for (out, inp, with_bias) in [(1, 1, true), (3, 1, false), (1, 3, true), (3, 3, true)] {
        let (w, b) = (vec![out, inp], vec![out]);
        let (x, gy) = (vec![3, inp], vec![3, out]);
        let bias = with_bias.then_some(b.as_slice());
        for ws in around(&w) {
            linear_calls(sweep, &ws, bias, &x, &gy);
        }
        for bs in around(&b) {
            linear_calls(sweep, &w, Some(&bs), &x, &gy);
        }
        for xs in around(&x) {
            // The gradient of the output this input gives, when it has one.
            let g = match xs.split_last() {
                Some((_, lead)) if small(lead) => [lead, &[out]].concat(),
                _ => gy.clone(),
            };
            linear_calls(sweep, &w, bias, &xs, &g);
        }
        for gs in around(&gy) {
            linear_calls(sweep, &w, bias, &x, &gs);
        }
    }
}

/// One Embedding made directly (any weight shape, any padding index), its forward of `tokens`
/// as `shape` and its backward from `gy`.
fn embedding_calls(
    sweep: &mut Sweep,
    (weight, pad): (&[usize], Option<usize>),
    tokens: &[usize],
    shape: &[usize],
    gy: &[usize],
) {
    let table = Embedding {
        weight: tensor(weight),
        padding_idx: pad,
    };
    let name = || format!("Embedding {{ weight {}, padding {pad:?} }}", dims(weight));
    let gy = shared(gy);
    sweep.call(
        || format!("{}.forward({}, {})", name(), dims(tokens), dims(shape)),
        || table.forward(tokens, shape),
    );
    sweep.call(
        || {
            format!(
                "{}.backward({}, {})",
                name(),
                dims(tokens),
                dims(gy.shape())
            )
        },
        || table.backward(tokens, gy),
    );
}

/// Embedding's constructor over every size and padding index, then forward and backward
/// around valid tables.
fn check_embedding(sweep: &mut Sweep) {
    let paddings = |vocab: usize| {
        let last = vocab.saturating_sub(1);
        [None, Some(0), Some(last), Some(vocab), Some(MAX)]
    };
    for (vocab, dim) in pairs(&DIMS) {
        for pad in paddings(vocab) {
            sweep.call(
                || format!("Embedding::random({vocab}, {dim}, padding {pad:?})"),
                || Embedding::random(vocab, dim, pad, 5),
            );
        }
    }
    for (vocab, dim) in [(1, 1), (3, 3), (3, 1), (1, 3)] {
        let tokens: Vec<usize> = (0..vocab).chain([0]).collect();
        let n = tokens.len();
        let table = [vocab, dim];
        for pad in paddings(vocab) {
            for ws in around(&table) {
                embedding_calls(sweep, (&ws, pad), &tokens, &[n], &[n, dim]);
            }
        }
        let token_sets = [
            vec![],
            vec![vocab],
            vec![MAX],
            vec![0; 5],
            vec![vocab - 1; 2],
        ];
        for t in &token_sets {
            embedding_calls(sweep, (&table, None), t, &[t.len()], &[t.len(), dim]);
        }
        for shape in around(&[n]) {
            embedding_calls(sweep, (&table, Some(0)), &tokens, &shape, &[n, dim]);
        }
        for gs in around(&[n, dim]) {
            embedding_calls(sweep, (&table, Some(0)), &tokens, &[1, n], &gs);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loss, clipping, Adam

/// softmax_cross_entropy for logits of every sweep shape, with targets of the length the
/// logits' first dimension gives (and one more): valid, ignored, out of range.
fn check_loss(sweep: &mut Sweep) {
    for logits in tensors_around(&[3, 3]) {
        let shape = logits.shape();
        let n = shape.first().map_or(1, |&n| n.min(8));
        let vocab = shape.get(1).map_or(0, |&v| v.min(1 << 20) as i64);
        for ignore in [-100, 0, i64::MIN] {
            let mixed = (0..n).map(|r| [0, ignore, vocab - 1][r % 3]).collect();
            let mut target_sets = vec![vec![], mixed, vec![0; n + 1]];
            for value in [ignore, 0, vocab - 1, vocab, -1, i64::MAX, i64::MIN] {
                target_sets.push(vec![value; n]);
            }
            target_sets.sort();
            target_sets.dedup();
            for targets in target_sets {
                sweep.call(
                    || {
                        let args = format!("{}, targets {targets:?}", dims(shape));
                        format!("softmax_cross_entropy(logits {args}, ignore {ignore})")
                    },
                    || softmax_cross_entropy(logits, &targets, ignore),
                );
            }
        }
    }
}

fn check_clip(sweep: &mut Sweep) {
    let mut lists: Vec<Vec<Vec<usize>>> = vec![vec![]];
    lists.extend(around(&[3]).into_iter().map(|s| vec![s]));
    lists.extend(around(&[3, 3]).into_iter().map(|s| vec![vec![3], s]));
    for shapes in &lists {
        for max_norm in [1.0, 1e-30, 0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut grads = tensors(shapes);
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
            sweep.call(
                || format!("clip_grad_norm({}, {max_norm})", list(shapes)),
                || clip_grad_norm(&mut refs, max_norm),
            );
        }
    }
    let mut mixed = [
        tensor(&[3]),
        tensor(&[3]).to(&Device::Cpu, DType::F16).unwrap(),
    ];
    let mut refs: Vec<&mut Tensor> = mixed.iter_mut().collect();
    sweep.call(
        || "clip_grad_norm([f32 [3], f16 [3]], 1)".into(),
        || clip_grad_norm(&mut refs, 1.0),
    );
}

/// One optimizer step's (param shapes, grad shapes).
type Step<'a> = (&'a [Vec<usize>], &'a [Vec<usize>]);

/// Steps of one Adam (AdamW when `decoupled`).
fn adam_steps(sweep: &mut Sweep, decoupled: bool, steps: &[Step<'_>]) {
    let mut adam = if decoupled {
        Adam::adamw(1e-2)
    } else {
        Adam::new(1e-2)
    };
    let mut history = Vec::new();
    for &(ps, gs) in steps {
        let mut params = tensors(ps);
        let grads = tensors(gs);
        let mut p: Vec<&mut Tensor> = params.iter_mut().collect();
        let g: Vec<&Tensor> = grads.iter().collect();
        history.push(format!("step(params {}, grads {})", list(ps), list(gs)));
        let name = if decoupled { "AdamW" } else { "Adam" };
        sweep.call(
            || format!("{name}: {}", history.join(", then ")),
            || adam.step(&mut p, &g),
        );
    }
}

/// Adam with param and grad lists of other lengths, grads of every shape, and parameters that
/// change between steps.
fn check_adam(sweep: &mut Sweep) {
    let base = [vec![3, 3], vec![3]];
    let three = [vec![3, 3], vec![3], vec![3]];
    for decoupled in [false, true] {
        for grads in [&base[..0], &base[..1], &three] {
            adam_steps(sweep, decoupled, &[(&base, grads)]);
        }
        for g in around(&[3, 3]) {
            adam_steps(sweep, decoupled, &[(&base, &[g, vec![3]])]);
        }
        for p in around(&[3]) {
            let changed = [vec![3, 3], p];
            adam_steps(sweep, decoupled, &[(&base, &base), (&changed, &changed)]);
            adam_steps(sweep, decoupled, &[(&changed, &changed), (&base, &base)]);
        }
        adam_steps(sweep, decoupled, &[(&base, &base), (&three, &three)]);
        adam_steps(
            sweep,
            decoupled,
            &[(&base, &base), (&base[..1], &base[..1])],
        );
    }
    let mut params = [tensor(&[3])];
    let grads = [tensor(&[3]).to(&Device::Cpu, DType::BF16).unwrap()];
    let mut p: Vec<&mut Tensor> = params.iter_mut().collect();
    sweep.call(
        || "Adam: step(params [f32 [3]], grads [bf16 [3]])".into(),
        || Adam::new(1e-3).step(&mut p, &[&grads[0]]),
    );
}

// ---------------------------------------------------------------------------------------------
// Calls that must refuse sizes no machine holds, each in a child process

type IsolatedCall = (String, Box<dyn Fn() -> fused_rnn::Result<()>>);

/// Calls whose arguments ask for more memory than exists (parameters of 2^40 and more
/// elements, results of 2^40 columns), or pair zero-element tensors with huge dimensions in
/// every argument: the library must refuse the first before allocating, and answer the
/// second without allocating by the huge dimension.
fn isolated_calls() -> Vec<IsolatedCall> {
    let mut calls: Vec<IsolatedCall> = Vec::new();
    let mut add = |call: String, run: Box<dyn Fn() -> fused_rnn::Result<()>>| {
        calls.push((call, run));
    };
    let kinds = [
        Kind::Rnn(Nonlinearity::Tanh),
        Kind::Lstm { proj: 0 },
        Kind::Lstm { proj: 1 },
        Kind::Gru,
    ];
    let sizes = [
        (1, HUGE, 1),
        (HUGE, 1, 1),
        (3, 3, HUGE),
        (1, 3, MAX / 16),
        (HUGE, HUGE, HUGE),
        (MAX, 3, 1),
        (1, MAX, 1),
    ];
    for kind in kinds {
        for s in sizes {
            let c = case(kind, s, (true, false, true));
            let run = move || Module::random(&c, DType::F32).map(drop);
            add(format!("{}::random", describe(&c)), Box::new(run));
        }
    }
    let linear = [
        (HUGE, 1, true),
        (1, HUGE, true),
        (0, HUGE, true),
        (HUGE, 0, true),
        (MAX, MAX, false),
    ];
    for (i, o, bias) in linear {
        let run = move || Linear::random(i, o, bias, 3).map(drop);
        let call = format!("Linear::random({}, {}, bias {bias})", num(i), num(o));
        add(call, Box::new(run));
    }
    // (weight, x, grad_y) with a dimension of 2^40: the first two forwards have 2^40 output
    // columns (to be refused); every other result has no element (to be made without
    // allocating by the huge dimension).
    let products: [(&[usize], &[usize], &[usize]); 5] = [
        (&[HUGE, 0], &[1, 0], &[1, HUGE]),
        (&[HUGE, 0], &[3, 1, 0], &[3, 1, HUGE]),
        (&[0, HUGE], &[0, HUGE], &[0, 0]),
        (&[0, HUGE], &[1, 0, HUGE], &[1, 0, 0]),
        (&[HUGE, 0], &[0, 0], &[0, HUGE]),
    ];
    for (w, x, gy) in products {
        let layer = || Linear {
            weight: tensor(w),
            bias: None,
        };
        let name = format!("Linear {{ weight {}, bias None }}", dims(w));
        let run = move || layer().forward(&tensor(x)).map(drop);
        add(format!("{name}.forward({})", dims(x)), Box::new(run));
        if small(gy) {
            let run = move || layer().backward(&tensor(x), &tensor(gy)).map(drop);
            let call = format!("{name}.backward({}, {})", dims(x), dims(gy));
            add(call, Box::new(run));
        }
    }
    let tables = [
        (HUGE, 1, None),
        (1, HUGE, None),
        (HUGE, 0, Some(HUGE - 1)),
        (0, HUGE, None),
        (HUGE, HUGE, None),
    ];
    for (vocab, dim, pad) in tables {
        let run = move || Embedding::random(vocab, dim, pad, 5).map(drop);
        let call = format!(
            "Embedding::random({}, {}, padding {pad:?})",
            num(vocab),
            num(dim)
        );
        add(call, Box::new(run));
    }
    calls
}

/// Runs `isolated_calls()[index]` in a child process (this binary's `isolated_call` test);
/// Err describes its panic, its death (with the allocation past the budget, if any) or its
/// hang.
fn run_isolated(index: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "isolated_call",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE_VAR, index.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a child: {e}"))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                child.kill().ok();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let panics: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(PANIC_MARK).map(|(_, panic)| panic))
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let refused = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(ALLOC_MARK))
        .map_or(String::new(), |a| format!("; the allocation refused: {a}"));
    // Its last word: the allocation failure, else the last line but a note.
    let last = stderr
        .lines()
        .find(|l| l.starts_with("memory allocation of"))
        .or_else(|| {
            let note = |l: &str| l.trim().is_empty() || l.starts_with("note:");
            stderr
                .lines()
                .rfind(|l| !note(l) && !l.starts_with(ALLOC_MARK))
        })
        .unwrap_or("");
    match status {
        _ if !panics.is_empty() => Err(panics.join("; ")),
        None => Err(format!("no answer within {CHILD_TIMEOUT:?}{refused}")),
        Some(s) if !s.success() => Err(format!("the process died ({s}): `{last}`{refused}")),
        Some(_) => Ok(()),
    }
}

fn check_isolated(sweep: &mut Sweep) {
    for (index, (call, _)) in isolated_calls().iter().enumerate() {
        sweep.calls += 1;
        if let Err(why) = run_isolated(index) {
            sweep
                .panics
                .push(format!("{call} (in a child process): {why}"));
        }
    }
}

/// One call of `isolated_calls`, with allocations over a budget refused: what `check_isolated`
/// runs this binary for, as its child with `CASE_VAR` set.
#[test]
#[ignore = "a child process of every_shape_gets_a_result_not_a_panic"]
fn isolated_call() {
    // Run alone (`--include-ignored`) it has nothing to do.
    let Ok(index) = std::env::var(CASE_VAR) else {
        return;
    };
    install_hook();
    let (_, run) = isolated_calls().swap_remove(index.parse().unwrap());
    BUDGET.store(CHILD_BUDGET, Relaxed);
    let outcome = collected(run);
    BUDGET.store(0, Relaxed);
    if let Err(panic) = outcome {
        println!("{PANIC_MARK}panicked: {panic}");
    }
}

/// A part of the sweep: its name and what it calls.
type Part = (&'static str, fn(&mut Sweep));

#[test]
fn every_shape_gets_a_result_not_a_panic() {
    install_hook();
    let start = Instant::now();
    let mut sweep = Sweep::default();
    let parts: [Part; 9] = [
        ("Tensor", check_tensor),
        ("Rnn, Lstm, Gru", check_recurrent),
        ("Attention", check_attention),
        ("Linear", check_linear),
        ("Embedding", check_embedding),
        ("softmax_cross_entropy", check_loss),
        ("clip_grad_norm", check_clip),
        ("Adam", check_adam),
        ("in child processes", check_isolated),
    ];
    for (name, part) in parts {
        let (calls, errors, panics, at) = (
            sweep.calls,
            sweep.errors,
            sweep.panics.len(),
            Instant::now(),
        );
        part(&mut sweep);
        let calls = sweep.calls - calls;
        let failed = (sweep.errors - errors) + (sweep.panics.len() - panics);
        eprintln!(
            "{name}: {calls} calls, {} Ok, in {:.1?}",
            calls - failed,
            at.elapsed()
        );
    }
    eprintln!(
        "{} calls in {:.1?}: {} Ok, {} Err, {} panicked or died",
        sweep.calls,
        start.elapsed(),
        sweep.calls - sweep.errors - sweep.panics.len(),
        sweep.errors,
        sweep.panics.len()
    );
    assert!(
        sweep.panics.is_empty(),
        "{} of {} calls panicked or died (a Result was due):\n{}",
        sweep.panics.len(),
        sweep.calls,
        sweep.panics.join("\n")
    );
}
