//! Recurrent modules of every kind behind one type, and random inputs for them, for the tests
//! that compare a device's results with the CPU's.

use fused_rnn::nn::{Gru, GruConfig, Lstm, LstmConfig, Module, Rnn, RnnConfig};
use fused_rnn::{Algo, Cell, DType, Device, Nonlinearity, Precision, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Rnn(Nonlinearity),
    Lstm { proj: usize },
    Gru,
}

impl Kind {
    pub fn cell(self) -> Cell {
        match self {
            Kind::Rnn(nl) => Cell::Rnn(nl),
            Kind::Lstm { .. } => Cell::Lstm,
            Kind::Gru => Cell::Gru,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub kind: Kind,
    pub i: usize,
    pub h: usize,
    pub layers: usize,
    pub bidirectional: bool,
    pub batch_first: bool,
    pub t: usize,
    pub b: usize,
    pub lengths: bool,
    pub h0: bool,
    pub bias: bool,
}

/// One layer of any kind, so that every case runs through the same checks.
pub enum Layer {
    Rnn(Rnn),
    Lstm(Lstm),
    Gru(Gru),
}

impl Layer {
    pub fn random(c: &Case, seed: u64) -> Self {
        let cpu = Device::Cpu;
        match c.kind {
            Kind::Rnn(nonlinearity) => {
                let config = RnnConfig {
                    input_size: c.i,
                    hidden_size: c.h,
                    num_layers: c.layers,
                    nonlinearity,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                };
                Layer::Rnn(Rnn::random(config, &cpu, DType::F32, seed).unwrap())
            }
            Kind::Lstm { proj } => {
                let config = LstmConfig {
                    input_size: c.i,
                    hidden_size: c.h,
                    proj_size: proj,
                    num_layers: c.layers,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                };
                Layer::Lstm(Lstm::random(config, &cpu, DType::F32, seed).unwrap())
            }
            Kind::Gru => {
                let config = GruConfig {
                    input_size: c.i,
                    hidden_size: c.h,
                    num_layers: c.layers,
                    bias: c.bias,
                    batch_first: c.batch_first,
                    bidirectional: c.bidirectional,
                };
                Layer::Gru(Gru::random(config, &cpu, DType::F32, seed).unwrap())
            }
        }
    }

    pub fn to(&self, device: &Device, dtype: DType, algo: Algo) -> Self {
        match self {
            Layer::Rnn(l) => Layer::Rnn(l.to(device, dtype).unwrap().with_algo(algo)),
            Layer::Lstm(l) => Layer::Lstm(l.to(device, dtype).unwrap().with_algo(algo)),
            Layer::Gru(l) => Layer::Gru(l.to(device, dtype).unwrap().with_algo(algo)),
        }
    }

    /// What the CPU trains this layer in.
    pub fn with_precision(self, precision: Precision) -> Self {
        match self {
            Layer::Rnn(l) => Layer::Rnn(l.with_precision(precision)),
            Layer::Lstm(l) => Layer::Lstm(l.with_precision(precision)),
            Layer::Gru(l) => Layer::Gru(l.with_precision(precision)),
        }
    }

    /// Every parameter with its PyTorch name.
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        match self {
            Layer::Rnn(l) => l.parameters_mut(),
            Layer::Lstm(l) => l.parameters_mut(),
            Layer::Gru(l) => l.parameters_mut(),
        }
    }

    /// (output, h_n, c_n) as named tensors.
    pub fn forward(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Vec<(&'static str, Tensor)> {
        match self {
            Layer::Rnn(l) => {
                let o = l.forward(x, h0, lengths).unwrap();
                vec![("output", o.output), ("h_n", o.h_n)]
            }
            Layer::Gru(l) => {
                let o = l.forward(x, h0, lengths).unwrap();
                vec![("output", o.output), ("h_n", o.h_n)]
            }
            Layer::Lstm(l) => {
                let state = h0.zip(c0);
                let o = l.forward(x, state, lengths).unwrap();
                vec![("output", o.output), ("h_n", o.h_n), ("c_n", o.c_n)]
            }
        }
    }

    /// forward_train, then backward of Σ output ⊙ dy + Σ h_n ⊙ dh (+ Σ c_n ⊙ dc): the
    /// forward's results and every gradient, named, on the host in f32.
    /// `upstream` holds dy and, optionally, dh and dc.
    pub fn train(&self, inputs: &Inputs, upstream: &[Tensor]) -> Vec<(String, Vec<f32>)> {
        let (x, h0, c0, lengths) = inputs;
        let (h0, c0, lengths) = (h0.as_ref(), c0.as_ref(), lengths.as_deref());
        let (dy, dh, dc) = (&upstream[0], upstream.get(1), upstream.get(2));
        let host = |name: &str, t: &Tensor| (name.to_string(), t.to_vec_f32().unwrap());
        let mut named = Vec::new();
        let grads = match self {
            Layer::Rnn(l) => {
                let (o, r) = l.forward_train(x, h0, lengths).unwrap();
                named.extend([host("output", &o.output), host("h_n", &o.h_n)]);
                let g = l.backward(&r, dy, dh).unwrap();
                named.extend(l.named_gradients(&g).iter().map(|(n, t)| host(n, t)));
                g
            }
            Layer::Gru(l) => {
                let (o, r) = l.forward_train(x, h0, lengths).unwrap();
                named.extend([host("output", &o.output), host("h_n", &o.h_n)]);
                let g = l.backward(&r, dy, dh).unwrap();
                named.extend(l.named_gradients(&g).iter().map(|(n, t)| host(n, t)));
                g
            }
            Layer::Lstm(l) => {
                let (o, r) = l.forward_train(x, h0.zip(c0), lengths).unwrap();
                named.extend([host("output", &o.output), host("h_n", &o.h_n)]);
                named.push(host("c_n", &o.c_n));
                let g = l.backward(&r, dy, dh, dc).unwrap();
                named.extend(l.named_gradients(&g).iter().map(|(n, t)| host(n, t)));
                g
            }
        };
        named.push(host("input.grad", &grads.input));
        named.push(host("h0.grad", &grads.h0));
        if let Some(c0) = &grads.c0 {
            named.push(host("c0.grad", c0));
        }
        named
    }

    pub fn capture_status(&self) -> (usize, Vec<String>) {
        match self {
            Layer::Rnn(l) => l.graph_capture_status(),
            Layer::Lstm(l) => l.graph_capture_status(),
            Layer::Gru(l) => l.graph_capture_status(),
        }
    }
}

impl Case {
    pub fn out_size(&self) -> usize {
        match self.kind {
            Kind::Lstm { proj } if proj > 0 => proj,
            _ => self.h,
        }
    }

    /// Unsorted lengths with a 1 and a full-length row.
    pub fn lengths(&self) -> Option<Vec<usize>> {
        self.lengths.then(|| {
            (0..self.b)
                .map(|r| [1, self.t, self.t.div_ceil(2)][r % 3])
                .collect()
        })
    }
}

/// One call's inputs: (x, h0, c0, lengths), on the host in f32.
pub type Inputs = (Tensor, Option<Tensor>, Option<Tensor>, Option<Vec<usize>>);

pub fn inputs(c: &Case, seed: u64, with_state: bool, lengths: Option<Vec<usize>>) -> Inputs {
    let dirs = if c.bidirectional { 2 } else { 1 };
    let x_shape = if c.batch_first {
        [c.b, c.t, c.i]
    } else {
        [c.t, c.b, c.i]
    };
    let x = Tensor::from_vec(super::random(c.t * c.b * c.i, 1.0, seed), &x_shape).unwrap();
    let state = |size: usize, seed: u64| {
        let shape = [c.layers * dirs, c.b, size];
        Tensor::from_vec(super::random(shape.iter().product(), 0.5, seed), &shape).unwrap()
    };
    let h0 = with_state.then(|| state(c.out_size(), seed + 1));
    let c0 = (with_state && matches!(c.kind, Kind::Lstm { .. })).then(|| state(c.h, seed + 2));
    (x, h0, c0, lengths)
}

/// Random gradients of the output, h_n and c_n (c_n's for an LSTM), or only the output's.
pub fn upstream(c: &Case, seed: u64, with_state: bool) -> Vec<Tensor> {
    let dirs = if c.bidirectional { 2 } else { 1 };
    let o = c.out_size();
    let output = if c.batch_first {
        [c.b, c.t, dirs * o]
    } else {
        [c.t, c.b, dirs * o]
    };
    let shapes = [
        output.to_vec(),
        vec![c.layers * dirs, c.b, o],
        vec![c.layers * dirs, c.b, c.h],
    ];
    let count = match (with_state, c.kind) {
        (false, _) => 1,
        (true, Kind::Lstm { .. }) => 3,
        (true, _) => 2,
    };
    shapes[..count]
        .iter()
        .enumerate()
        .map(|(k, shape)| {
            let n = shape.iter().product();
            Tensor::from_vec(super::random(n, 1.0, seed + k as u64), shape).unwrap()
        })
        .collect()
}
