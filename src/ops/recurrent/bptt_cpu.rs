//! Backpropagation through time on the CPU: a training-mode forward that keeps what the
//! backward needs (per step the gate activations, the state entering the step and, for an LSTM,
//! the cell; like cuDNN's reserve space), and the backward itself. It computes in f64 (from f32
//! storage): gradients summed over many steps then keep f32 accuracy where their terms cancel,
//! and the finite-difference checks run the same code.
//!
//! Per step and row the backward turns dh (and dc) and the saved activations into gate
//! gradients and carries dh back through W_hh; the weight gradients are then one product per
//! layer-direction over all time steps, not one per step.

use super::{step_time, Activation, Cell, Dims};
use crate::ops::gemm_cpu::{gemm_ab, gemm_atb, transpose};

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One layer-direction's parameters in PyTorch's row-major shapes: w_ih [G·H, in],
/// w_hh [G·H, O], biases [G·H], w_hr [O, H].
pub(crate) struct Params<'a> {
    pub w_ih: &'a [f64],
    pub w_hh: &'a [f64],
    pub b_ih: Option<&'a [f64]>,
    pub b_hh: Option<&'a [f64]>,
    pub w_hr: Option<&'a [f64]>,
}

/// The gradients of one layer-direction's parameters, in the same shapes (biases always).
#[derive(Debug, Clone)]
pub(crate) struct ParamGrads {
    pub w_ih: Vec<f64>,
    pub w_hh: Vec<f64>,
    pub b_ih: Vec<f64>,
    pub b_hh: Vec<f64>,
    pub w_hr: Vec<f64>,
}

/// A stack of layer-directions and the call's shape.
pub(crate) struct Net<'a> {
    pub cell: Cell,
    pub dims: Dims,
    /// One per batch row, in 1..=T.
    pub lengths: &'a [usize],
    /// L·D layer-directions, layer-major.
    pub params: Vec<Params<'a>>,
}

/// What one layer-direction keeps for the backward, one row per (t, b) as the input is laid
/// out; rows a short sequence never reaches stay zero.
#[derive(Debug, Clone)]
struct SlotSaved {
    /// Gate activations [rows, G·H]: i, f, g, o (LSTM); r, z, n (GRU); h (RNN).
    gates: Vec<f64>,
    /// The state entering the step [rows, O].
    h_prev: Vec<f64>,
    /// LSTM: the cell entering the step and leaving it [rows, H].
    c_prev: Vec<f64>,
    c: Vec<f64>,
    /// LSTM with projection: h before W_hr [rows, H].
    m: Vec<f64>,
    /// GRU: W_hn h + b_hn [rows, H].
    hn: Vec<f64>,
}

/// Everything a training-mode forward keeps: each layer's input and each layer-direction's
/// activations.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    layer_inputs: Vec<Vec<f64>>,
    slots: Vec<SlotSaved>,
}

impl Saved {
    /// Elements a training-mode forward keeps for `dims` (known before the call).
    pub fn len_for(cell: Cell, dims: &Dims) -> usize {
        let rows = dims.rows();
        let (h, o, gw) = (dims.hidden, dims.out_size, dims.gate_width());
        let inputs: usize = (0..dims.layers).map(|l| rows * dims.layer_input(l)).sum();
        let per_slot = rows
            * (gw
                + o
                + match cell {
                    Cell::Lstm => 2 * h + if dims.projected() { h } else { 0 },
                    Cell::Gru => h,
                    Cell::Rnn(_) => 0,
                });
        inputs + dims.layers * dims.dirs * per_slot
    }
}

/// The forward results.
pub(crate) struct Forward {
    /// [rows, D·O]
    pub output: Vec<f64>,
    /// [L·D, B, O]
    pub h_n: Vec<f64>,
    /// [L·D, B, H] (LSTM; empty otherwise)
    pub c_n: Vec<f64>,
}

/// The backward results.
pub(crate) struct Backward {
    /// [rows, I]
    pub input: Vec<f64>,
    /// [L·D, B, O]
    pub h0: Vec<f64>,
    /// [L·D, B, H] (LSTM; empty otherwise)
    pub c0: Vec<f64>,
    pub params: Vec<ParamGrads>,
}

/// c[m, n] = a[m, k] · b[k, n] (+ c when `accumulate`), row-major and contiguous.
fn matmul(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64], accumulate: bool) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_ab(m, n, k, a, k, b, n, c, n, beta, usize::MAX);
}

/// Adds `bias` (if any) to every row of `x`.
fn add_bias_rows(x: &mut [f64], bias: Option<&[f64]>) {
    if let Some(bias) = bias {
        for row in x.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
        }
    }
}

/// The column sums of a row-major [rows, n] matrix.
fn column_sums(x: &[f64], n: usize) -> Vec<f64> {
    let mut sums = vec![0.0; n];
    for row in x.chunks_exact(n) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
    sums
}

/// g[n, k] = a[rows, n]ᵀ · b[rows, k]: a weight gradient over every row at once.
fn gradient(a: &[f64], n: usize, b: &[f64], k: usize) -> Vec<f64> {
    let rows = a.len() / n.max(1);
    let mut g = vec![0.0; n * k];
    gemm_atb(n, k, rows, a, b, &mut g);
    g
}

impl Net<'_> {
    /// The rows still running at `step` in direction `dir`, as (batch row, input row), into
    /// `active` (reused from step to step).
    fn active_rows(&self, step: usize, dir: usize, active: &mut Vec<(usize, usize)>) {
        let (st, sb) = self.dims.strides();
        active.clear();
        active.extend((0..self.dims.batch).filter_map(|b| {
            step_time(step, self.lengths[b], dir == 1).map(|t| (b, t * st + b * sb))
        }));
    }

    /// The forward pass, keeping what `backward` needs. `x` [rows, I]; `h0` [L·D, B, O] and
    /// `c0` [L·D, B, H] (zeros when absent). The input projection is one GEMM per
    /// layer-direction, W_hh·h one per step; the pointwise update runs per active row.
    pub fn forward_train(
        &self,
        x: &[f64],
        h0: Option<&[f64]>,
        c0: Option<&[f64]>,
    ) -> (Forward, Saved) {
        let d = self.dims;
        let (rows, batch, hidden, out, gw) =
            (d.rows(), d.batch, d.hidden, d.out_size, d.gate_width());
        let lstm = self.cell == Cell::Lstm;
        let mut h_n = vec![0.0; d.layers * d.dirs * batch * out];
        let mut c_n = vec![
            0.0;
            if lstm {
                d.layers * d.dirs * batch * hidden
            } else {
                0
            }
        ];
        let mut layer_in = x.to_vec();
        let mut saved = Saved {
            layer_inputs: Vec::new(),
            slots: Vec::new(),
        };
        let mut hh = vec![0.0; batch * gw];
        let mut m = vec![0.0; batch * hidden];
        let mut projected = vec![0.0; batch * out];
        let mut active = Vec::with_capacity(batch);
        for layer in 0..d.layers {
            let in_w = d.layer_input(layer);
            let mut output = vec![0.0; rows * d.dirs * out];
            for dir in 0..d.dirs {
                let slot = layer * d.dirs + dir;
                let p = &self.params[slot];
                let mut s = SlotSaved {
                    gates: vec![0.0; rows * gw],
                    h_prev: vec![0.0; rows * out],
                    c_prev: vec![0.0; if lstm { rows * hidden } else { 0 }],
                    c: vec![0.0; if lstm { rows * hidden } else { 0 }],
                    m: vec![0.0; if p.w_hr.is_some() { rows * hidden } else { 0 }],
                    hn: vec![
                        0.0;
                        if self.cell == Cell::Gru {
                            rows * hidden
                        } else {
                            0
                        }
                    ],
                };
                let w_hh_t = transpose(p.w_hh, gw, out);
                let w_hr_t = p.w_hr.map(|w| transpose(w, out, hidden));
                // W_ih x + b_ih for every (t, b) row at once.
                let mut xw = vec![0.0; rows * gw];
                matmul(
                    rows,
                    gw,
                    in_w,
                    &layer_in,
                    &transpose(p.w_ih, gw, in_w),
                    &mut xw,
                    false,
                );
                add_bias_rows(&mut xw, p.b_ih);
                let mut h = match h0 {
                    Some(h0) => h0[slot * batch * out..(slot + 1) * batch * out].to_vec(),
                    None => vec![0.0; batch * out],
                };
                let mut c = match c0 {
                    Some(c0) if lstm => {
                        c0[slot * batch * hidden..(slot + 1) * batch * hidden].to_vec()
                    }
                    _ => vec![0.0; if lstm { batch * hidden } else { 0 }],
                };
                for step in 0..d.seq_len {
                    // W_hh h + b_hh for every row (rows that have ended are not read).
                    matmul(batch, gw, out, &h, &w_hh_t, &mut hh, false);
                    add_bias_rows(&mut hh, p.b_hh);
                    self.active_rows(step, dir, &mut active);
                    for &(b, row) in &active {
                        let pre = &xw[row * gw..(row + 1) * gw];
                        let rec = &hh[b * gw..(b + 1) * gw];
                        let hb = &mut h[b * out..(b + 1) * out];
                        s.h_prev[row * out..(row + 1) * out].copy_from_slice(hb);
                        let g = &mut s.gates[row * gw..(row + 1) * gw];
                        match self.cell {
                            Cell::Rnn(nl) => {
                                for ((gv, &x), &r) in g.iter_mut().zip(pre).zip(rec) {
                                    let a = x + r;
                                    *gv = match nl.activation() {
                                        Activation::Relu if a < 0.0 => 0.0,
                                        Activation::Relu => a,
                                        _ => a.tanh(),
                                    };
                                }
                                hb.copy_from_slice(g);
                            }
                            Cell::Lstm => {
                                let cb = &mut c[b * hidden..(b + 1) * hidden];
                                s.c_prev[row * hidden..(row + 1) * hidden].copy_from_slice(cb);
                                let mb = &mut m[b * hidden..(b + 1) * hidden];
                                for j in 0..hidden {
                                    let a = |k: usize| pre[k * hidden + j] + rec[k * hidden + j];
                                    let (i, f, gg, o) =
                                        (sigmoid(a(0)), sigmoid(a(1)), a(2).tanh(), sigmoid(a(3)));
                                    g[j] = i;
                                    g[hidden + j] = f;
                                    g[2 * hidden + j] = gg;
                                    g[3 * hidden + j] = o;
                                    cb[j] = f * cb[j] + i * gg;
                                    mb[j] = o * cb[j].tanh();
                                }
                                s.c[row * hidden..(row + 1) * hidden].copy_from_slice(cb);
                                match p.w_hr {
                                    Some(_) => {
                                        s.m[row * hidden..(row + 1) * hidden].copy_from_slice(mb)
                                    }
                                    None => hb.copy_from_slice(mb),
                                }
                            }
                            Cell::Gru => {
                                // r multiplies the recurrent half W_hn h + b_hn.
                                for j in 0..hidden {
                                    let r = sigmoid(pre[j] + rec[j]);
                                    let z = sigmoid(pre[hidden + j] + rec[hidden + j]);
                                    let n = (pre[2 * hidden + j] + r * rec[2 * hidden + j]).tanh();
                                    g[j] = r;
                                    g[hidden + j] = z;
                                    g[2 * hidden + j] = n;
                                    hb[j] = n + z * (hb[j] - n);
                                }
                                s.hn[row * hidden..(row + 1) * hidden]
                                    .copy_from_slice(&rec[2 * hidden..]);
                            }
                        }
                    }
                    if let Some(w_hr_t) = &w_hr_t {
                        // h = W_hr m, for the rows still running.
                        matmul(batch, out, hidden, &m, w_hr_t, &mut projected, false);
                        for &(b, _) in &active {
                            h[b * out..(b + 1) * out]
                                .copy_from_slice(&projected[b * out..(b + 1) * out]);
                        }
                    }
                    for &(b, row) in &active {
                        output[row * d.dirs * out + dir * out..][..out]
                            .copy_from_slice(&h[b * out..(b + 1) * out]);
                    }
                }
                h_n[slot * batch * out..(slot + 1) * batch * out].copy_from_slice(&h);
                if lstm {
                    c_n[slot * batch * hidden..(slot + 1) * batch * hidden].copy_from_slice(&c);
                }
                saved.slots.push(s);
            }
            saved
                .layer_inputs
                .push(std::mem::replace(&mut layer_in, output));
        }
        (
            Forward {
                output: layer_in,
                h_n,
                c_n,
            },
            saved,
        )
    }

    /// The gradients of Σ output ⊙ d_output + Σ h_n ⊙ d_h_n (+ Σ c_n ⊙ d_c_n) with respect to
    /// the input, h0, c0 and every parameter. Outputs past a row's length get no gradient. Per
    /// step, one GEMM carries dh back through W_hh; the weight gradients and the input's are
    /// one GEMM each per layer-direction over every step.
    pub fn backward(
        &self,
        saved: &Saved,
        d_output: &[f64],
        d_h_n: Option<&[f64]>,
        d_c_n: Option<&[f64]>,
    ) -> Backward {
        let d = self.dims;
        let (rows, batch, hidden, out, gw) =
            (d.rows(), d.batch, d.hidden, d.out_size, d.gate_width());
        let lstm = self.cell == Cell::Lstm;
        let mut d_h0 = vec![0.0; d.layers * d.dirs * batch * out];
        let mut d_c0 = vec![
            0.0;
            if lstm {
                d.layers * d.dirs * batch * hidden
            } else {
                0
            }
        ];
        let mut grads: Vec<Option<ParamGrads>> = (0..d.layers * d.dirs).map(|_| None).collect();
        let mut d_layer_out = d_output.to_vec();
        let mut dm = vec![0.0; batch * hidden];
        let mut d_rec_step = vec![0.0; batch * gw];
        let mut dh_prev = vec![0.0; batch * out];
        let mut direct = vec![0.0; batch * out];
        let mut active = Vec::with_capacity(batch);
        for layer in (0..d.layers).rev() {
            let in_w = d.layer_input(layer);
            let layer_in = &saved.layer_inputs[layer];
            let mut d_in = vec![0.0; rows * in_w];
            for dir in 0..d.dirs {
                let slot = layer * d.dirs + dir;
                let (p, s) = (&self.params[slot], &saved.slots[slot]);
                // Gate gradients per row: on the input side and on the recurrent side (they
                // differ only in the GRU's n gate, where the recurrent side is scaled by r).
                let mut d_in_gates = vec![0.0; rows * gw];
                let mut d_rec_gates = vec![0.0; rows * gw];
                // LSTM with projection: dh per row, for W_hr's gradient.
                let mut d_h_rows = vec![0.0; if p.w_hr.is_some() { rows * out } else { 0 }];
                let mut dh = match d_h_n {
                    Some(g) => g[slot * batch * out..(slot + 1) * batch * out].to_vec(),
                    None => vec![0.0; batch * out],
                };
                let mut dc = match d_c_n {
                    Some(g) if lstm => {
                        g[slot * batch * hidden..(slot + 1) * batch * hidden].to_vec()
                    }
                    _ => vec![0.0; if lstm { batch * hidden } else { 0 }],
                };
                for step in (0..d.seq_len).rev() {
                    // Rows that have ended carry their state: their gradient passes unchanged.
                    self.active_rows(step, dir, &mut active);
                    for &(b, row) in &active {
                        let from_output = &d_layer_out[row * d.dirs * out + dir * out..][..out];
                        dh[b * out..(b + 1) * out]
                            .iter_mut()
                            .zip(from_output)
                            .for_each(|(v, &g)| *v += g);
                    }
                    if let Some(w_hr) = p.w_hr {
                        // dm = W_hrᵀ dh for every row.
                        matmul(batch, hidden, out, &dh, w_hr, &mut dm, false);
                        for &(b, row) in &active {
                            d_h_rows[row * out..(row + 1) * out]
                                .copy_from_slice(&dh[b * out..(b + 1) * out]);
                        }
                    }
                    d_rec_step.iter_mut().for_each(|v| *v = 0.0);
                    for &(b, row) in &active {
                        let g = &s.gates[row * gw..(row + 1) * gw];
                        let dhb = &dh[b * out..(b + 1) * out];
                        let din = &mut d_in_gates[row * gw..(row + 1) * gw];
                        let drec = &mut d_rec_gates[row * gw..(row + 1) * gw];
                        match self.cell {
                            Cell::Rnn(nl) => {
                                for ((dv, &y), &dy) in din.iter_mut().zip(g).zip(dhb) {
                                    *dv = dy
                                        * match nl.activation() {
                                            Activation::Relu if y > 0.0 => 1.0,
                                            Activation::Relu => 0.0,
                                            _ => 1.0 - y * y,
                                        };
                                }
                                drec.copy_from_slice(din);
                            }
                            Cell::Lstm => {
                                let dmb = match p.w_hr {
                                    Some(_) => &dm[b * hidden..(b + 1) * hidden],
                                    None => dhb,
                                };
                                let cb = &s.c[row * hidden..(row + 1) * hidden];
                                let cp = &s.c_prev[row * hidden..(row + 1) * hidden];
                                let dcb = &mut dc[b * hidden..(b + 1) * hidden];
                                for j in 0..hidden {
                                    let (i, f, gg, o) =
                                        (g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]);
                                    let tc = cb[j].tanh();
                                    let dct = dcb[j] + dmb[j] * o * (1.0 - tc * tc);
                                    din[j] = dct * gg * i * (1.0 - i);
                                    din[hidden + j] = dct * cp[j] * f * (1.0 - f);
                                    din[2 * hidden + j] = dct * i * (1.0 - gg * gg);
                                    din[3 * hidden + j] = dmb[j] * tc * o * (1.0 - o);
                                    dcb[j] = dct * f;
                                }
                                drec.copy_from_slice(din);
                            }
                            Cell::Gru => {
                                let hp = &s.h_prev[row * out..(row + 1) * out];
                                let hn = &s.hn[row * hidden..(row + 1) * hidden];
                                for j in 0..hidden {
                                    let (r, z, n) = (g[j], g[hidden + j], g[2 * hidden + j]);
                                    let dhj = dhb[j];
                                    let dan = dhj * (1.0 - z) * (1.0 - n * n);
                                    din[j] = dan * hn[j] * r * (1.0 - r);
                                    din[hidden + j] = dhj * (hp[j] - n) * z * (1.0 - z);
                                    din[2 * hidden + j] = dan;
                                    drec[j] = din[j];
                                    drec[hidden + j] = din[hidden + j];
                                    drec[2 * hidden + j] = dan * r;
                                    direct[b * out + j] = dhj * z;
                                }
                            }
                        }
                        d_rec_step[b * gw..(b + 1) * gw].copy_from_slice(drec);
                    }
                    // dh_{t-1} = W_hhᵀ · (recurrent gate gradients) (+ z ⊙ dh for a GRU).
                    matmul(batch, out, gw, &d_rec_step, p.w_hh, &mut dh_prev, false);
                    for &(b, _) in &active {
                        let dhb = &mut dh[b * out..(b + 1) * out];
                        dhb.copy_from_slice(&dh_prev[b * out..(b + 1) * out]);
                        if self.cell == Cell::Gru {
                            dhb.iter_mut()
                                .zip(&direct[b * out..(b + 1) * out])
                                .for_each(|(v, &x)| *v += x);
                        }
                    }
                }
                d_h0[slot * batch * out..(slot + 1) * batch * out].copy_from_slice(&dh);
                if lstm {
                    d_c0[slot * batch * hidden..(slot + 1) * batch * hidden].copy_from_slice(&dc);
                }
                // Every step at once: the weight gradients and the layer input's.
                let gr = ParamGrads {
                    w_ih: gradient(&d_in_gates, gw, layer_in, in_w),
                    w_hh: gradient(&d_rec_gates, gw, &s.h_prev, out),
                    b_ih: column_sums(&d_in_gates, gw),
                    b_hh: column_sums(&d_rec_gates, gw),
                    w_hr: match p.w_hr {
                        Some(_) => gradient(&d_h_rows, out, &s.m, hidden),
                        None => Vec::new(),
                    },
                };
                matmul(rows, in_w, gw, &d_in_gates, p.w_ih, &mut d_in, true);
                grads[slot] = Some(gr);
            }
            d_layer_out = d_in;
        }
        Backward {
            input: d_layer_out,
            h0: d_h0,
            c0: d_c0,
            params: grads
                .into_iter()
                .map(|g| g.expect("every slot ran"))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::recurrent::Nonlinearity;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// A case: cell, input, hidden, projection (0: none), layers, directions, batch_first,
    /// T, B, lengths, initial states, bias.
    type Case = (
        Cell,
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        usize,
        usize,
        bool,
        bool,
        bool,
    );

    const TANH: Cell = Cell::Rnn(Nonlinearity::Tanh);
    const RELU: Cell = Cell::Rnn(Nonlinearity::Relu);

    const CASES: &[Case] = &[
        (TANH, 3, 4, 0, 3, 1, false, 4, 2, false, true, true),
        (RELU, 2, 5, 0, 1, 2, true, 5, 3, true, false, true),
        (Cell::Lstm, 3, 4, 0, 2, 2, false, 4, 3, true, true, true),
        (Cell::Lstm, 2, 5, 3, 1, 2, true, 5, 3, true, true, false),
        (Cell::Lstm, 1, 1, 0, 1, 1, false, 3, 1, false, false, true),
        (Cell::Gru, 3, 4, 0, 2, 2, false, 4, 3, true, true, true),
        (Cell::Gru, 2, 3, 0, 1, 1, true, 6, 4, true, false, false),
    ];

    struct Owned {
        params: Vec<[Vec<f64>; 5]>,
    }

    fn random(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    impl Owned {
        fn net<'a>(&'a self, cell: Cell, dims: Dims, lengths: &'a [usize], bias: bool) -> Net<'a> {
            let params = self
                .params
                .iter()
                .map(|[w_ih, w_hh, b_ih, b_hh, w_hr]| Params {
                    w_ih,
                    w_hh,
                    b_ih: bias.then_some(b_ih.as_slice()),
                    b_hh: bias.then_some(b_hh.as_slice()),
                    w_hr: (!w_hr.is_empty()).then_some(w_hr.as_slice()),
                })
                .collect();
            Net {
                cell,
                dims,
                lengths,
                params,
            }
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Every gradient (input, h0, c0, each parameter) against central differences of the loss
    /// Σ output ⊙ g_out + Σ h_n ⊙ g_h + Σ c_n ⊙ g_c, in f64.
    #[test]
    // Each element is changed, evaluated and restored in place, which iterators cannot borrow.
    #[allow(clippy::needless_range_loop)]
    fn gradients_match_finite_differences_for_every_cell_and_option() {
        for (k, &(cell, i, h, proj, layers, dirs, batch_first, t, b, lens, init, bias)) in
            CASES.iter().enumerate()
        {
            let mut rng = StdRng::seed_from_u64(k as u64 + 1);
            let out = if proj > 0 { proj } else { h };
            let dims = Dims {
                seq_len: t,
                batch: b,
                input_size: i,
                hidden: h,
                out_size: out,
                gates: cell.gates(),
                layers,
                dirs,
                batch_first,
            };
            let gw = dims.gate_width();
            let lengths: Vec<usize> = (0..b)
                .map(|r| {
                    if lens {
                        [t, 1, t - 1, 2][r % 4].max(1)
                    } else {
                        t
                    }
                })
                .collect();
            let mut owned = Owned {
                params: (0..layers * dirs)
                    .map(|slot| {
                        let in_w = dims.layer_input(slot / dirs);
                        [
                            random(&mut rng, gw * in_w, 0.6),
                            random(&mut rng, gw * out, 0.6),
                            random(&mut rng, gw, 0.6),
                            random(&mut rng, gw, 0.6),
                            if proj > 0 {
                                random(&mut rng, out * h, 0.6)
                            } else {
                                Vec::new()
                            },
                        ]
                    })
                    .collect(),
            };
            let mut x = random(&mut rng, dims.rows() * i, 1.0);
            let lstm = cell == Cell::Lstm;
            let mut h0 = random(&mut rng, layers * dirs * b * out, 0.5);
            let mut c0 = random(&mut rng, if lstm { layers * dirs * b * h } else { 0 }, 0.5);
            let g_out = random(&mut rng, dims.rows() * dirs * out, 1.0);
            let g_h = random(&mut rng, layers * dirs * b * out, 1.0);
            let g_c = random(&mut rng, c0.len(), 1.0);
            let loss = |owned: &Owned, x: &[f64], h0: &[f64], c0: &[f64]| {
                let net = owned.net(cell, dims, &lengths, bias);
                let (f, _) = net.forward_train(x, init.then_some(h0), (init && lstm).then_some(c0));
                dot(&f.output, &g_out) + dot(&f.h_n, &g_h) + dot(&f.c_n, &g_c)
            };
            let net = owned.net(cell, dims, &lengths, bias);
            let (_, saved) = net.forward_train(
                &x,
                init.then_some(&h0[..]),
                (init && lstm).then_some(&c0[..]),
            );
            // The reserve's size is known from the shape alone.
            let kept: usize = saved.layer_inputs.iter().map(Vec::len).sum::<usize>()
                + saved
                    .slots
                    .iter()
                    .map(|s| {
                        s.gates.len()
                            + s.h_prev.len()
                            + s.c_prev.len()
                            + s.c.len()
                            + s.m.len()
                            + s.hn.len()
                    })
                    .sum::<usize>();
            assert_eq!(kept, Saved::len_for(cell, &dims), "case {k}");
            let grads = net.backward(&saved, &g_out, Some(&g_h), lstm.then_some(&g_c[..]));
            let what = format!("case {k} ({})", cell.name());
            const EPS: f64 = 1e-6;
            let check = |name: &str, analytic: f64, plus: f64, minus: f64| {
                let numeric = (plus - minus) / (2.0 * EPS);
                assert!(
                    (analytic - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
                    "{what} {name}: analytic {analytic}, numeric {numeric}"
                );
            };
            for j in 0..x.len() {
                let v = x[j];
                x[j] = v + EPS;
                let plus = loss(&owned, &x, &h0, &c0);
                x[j] = v - EPS;
                let minus = loss(&owned, &x, &h0, &c0);
                x[j] = v;
                check(&format!("input[{j}]"), grads.input[j], plus, minus);
            }
            if init {
                for j in 0..h0.len() {
                    let v = h0[j];
                    h0[j] = v + EPS;
                    let plus = loss(&owned, &x, &h0, &c0);
                    h0[j] = v - EPS;
                    let minus = loss(&owned, &x, &h0, &c0);
                    h0[j] = v;
                    check(&format!("h0[{j}]"), grads.h0[j], plus, minus);
                }
                for j in 0..c0.len() {
                    let v = c0[j];
                    c0[j] = v + EPS;
                    let plus = loss(&owned, &x, &h0, &c0);
                    c0[j] = v - EPS;
                    let minus = loss(&owned, &x, &h0, &c0);
                    c0[j] = v;
                    check(&format!("c0[{j}]"), grads.c0[j], plus, minus);
                }
            }
            for slot in 0..layers * dirs {
                let g = &grads.params[slot];
                let analytic = [&g.w_ih, &g.w_hh, &g.b_ih, &g.b_hh, &g.w_hr];
                for (p, name) in ["w_ih", "w_hh", "b_ih", "b_hh", "w_hr"].iter().enumerate() {
                    if !bias && (p == 2 || p == 3) {
                        continue;
                    }
                    for j in 0..owned.params[slot][p].len() {
                        let v = owned.params[slot][p][j];
                        owned.params[slot][p][j] = v + EPS;
                        let plus = loss(&owned, &x, &h0, &c0);
                        owned.params[slot][p][j] = v - EPS;
                        let minus = loss(&owned, &x, &h0, &c0);
                        owned.params[slot][p][j] = v;
                        check(
                            &format!("slot {slot} {name}[{j}]"),
                            analytic[p][j],
                            plus,
                            minus,
                        );
                    }
                }
            }
        }
    }
}
