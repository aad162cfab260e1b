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

/// y[n] (+)= W[n, k] · x[k] for a row-major W.
fn matvec(w: &[f64], x: &[f64], y: &mut [f64], accumulate: bool) {
    let k = x.len();
    for (yi, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        let dot = row.iter().zip(x).fold(0.0, |s, (&a, &b)| s + a * b);
        *yi = if accumulate { *yi + dot } else { dot };
    }
}

/// x[k] += W[n, k]ᵀ · y[n].
fn matvec_t(w: &[f64], y: &[f64], x: &mut [f64]) {
    let k = x.len();
    for (&yi, row) in y.iter().zip(w.chunks_exact(k)) {
        for (xj, &wj) in x.iter_mut().zip(row) {
            *xj += wj * yi;
        }
    }
}

/// g[n, k] += Σ_r a[r, n] · b[r, k]: a weight gradient over every row at once.
fn outer_sum(a: &[f64], n: usize, b: &[f64], k: usize, g: &mut [f64]) {
    for (ar, br) in a.chunks_exact(n).zip(b.chunks_exact(k)) {
        for (gi, &ai) in g.chunks_exact_mut(k).zip(ar) {
            if ai == 0.0 {
                continue;
            }
            for (gij, &bj) in gi.iter_mut().zip(br) {
                *gij += ai * bj;
            }
        }
    }
}

impl Net<'_> {
    /// The forward pass, keeping what `backward` needs. `x` [rows, I]; `h0` [L·D, B, O] and
    /// `c0` [L·D, B, H] (zeros when absent).
    pub fn forward_train(
        &self,
        x: &[f64],
        h0: Option<&[f64]>,
        c0: Option<&[f64]>,
    ) -> (Forward, Saved) {
        let d = self.dims;
        let (rows, batch, hidden, out, gw) =
            (d.rows(), d.batch, d.hidden, d.out_size, d.gate_width());
        let (st, sb) = d.strides();
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
        let mut a = vec![0.0; gw];
        let mut hn = vec![0.0; hidden];
        let mut m = vec![0.0; hidden];
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
                    for b in 0..batch {
                        let Some(t) = step_time(step, self.lengths[b], dir == 1) else {
                            continue;
                        };
                        let row = t * st + b * sb;
                        let xt = &layer_in[row * in_w..(row + 1) * in_w];
                        let hb = &mut h[b * out..(b + 1) * out];
                        s.h_prev[row * out..(row + 1) * out].copy_from_slice(hb);
                        matvec(p.w_ih, xt, &mut a, false);
                        if let Some(bias) = p.b_ih {
                            a.iter_mut().zip(bias).for_each(|(v, &bv)| *v += bv);
                        }
                        let g = &mut s.gates[row * gw..(row + 1) * gw];
                        match self.cell {
                            Cell::Rnn(nl) => {
                                matvec(p.w_hh, hb, &mut a, true);
                                add_bias(&mut a, p.b_hh);
                                for (gv, &av) in g.iter_mut().zip(&a) {
                                    *gv = match nl.activation() {
                                        Activation::Relu if av < 0.0 => 0.0,
                                        Activation::Relu => av,
                                        _ => av.tanh(),
                                    };
                                }
                                hb.copy_from_slice(g);
                            }
                            Cell::Lstm => {
                                matvec(p.w_hh, hb, &mut a, true);
                                add_bias(&mut a, p.b_hh);
                                let cb = &mut c[b * hidden..(b + 1) * hidden];
                                s.c_prev[row * hidden..(row + 1) * hidden].copy_from_slice(cb);
                                for j in 0..hidden {
                                    let (i, f) = (sigmoid(a[j]), sigmoid(a[hidden + j]));
                                    let (gg, o) =
                                        (a[2 * hidden + j].tanh(), sigmoid(a[3 * hidden + j]));
                                    g[j] = i;
                                    g[hidden + j] = f;
                                    g[2 * hidden + j] = gg;
                                    g[3 * hidden + j] = o;
                                    cb[j] = f * cb[j] + i * gg;
                                    m[j] = o * cb[j].tanh();
                                }
                                s.c[row * hidden..(row + 1) * hidden].copy_from_slice(cb);
                                match p.w_hr {
                                    Some(w_hr) => {
                                        s.m[row * hidden..(row + 1) * hidden].copy_from_slice(&m);
                                        matvec(w_hr, &m, hb, false);
                                    }
                                    None => hb.copy_from_slice(&m),
                                }
                            }
                            Cell::Gru => {
                                // The recurrent half separately: r multiplies W_hn h + b_hn.
                                let mut rec = vec![0.0; gw];
                                matvec(p.w_hh, hb, &mut rec, false);
                                add_bias(&mut rec, p.b_hh);
                                for j in 0..hidden {
                                    let r = sigmoid(a[j] + rec[j]);
                                    let z = sigmoid(a[hidden + j] + rec[hidden + j]);
                                    hn[j] = rec[2 * hidden + j];
                                    let n = (a[2 * hidden + j] + r * hn[j]).tanh();
                                    g[j] = r;
                                    g[hidden + j] = z;
                                    g[2 * hidden + j] = n;
                                    hb[j] = n + z * (hb[j] - n);
                                }
                                s.hn[row * hidden..(row + 1) * hidden].copy_from_slice(&hn);
                            }
                        }
                        output[row * d.dirs * out + dir * out..][..out].copy_from_slice(hb);
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
    /// the input, h0, c0 and every parameter. Outputs past a row's length get no gradient.
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
        let (st, sb) = d.strides();
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
        let mut dm = vec![0.0; hidden];
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
                let mut g_hr = vec![0.0; if p.w_hr.is_some() { out * hidden } else { 0 }];
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
                    for b in 0..batch {
                        // A row that has ended carries its state: its gradient passes unchanged.
                        let Some(t) = step_time(step, self.lengths[b], dir == 1) else {
                            continue;
                        };
                        let row = t * st + b * sb;
                        let dhb = &mut dh[b * out..(b + 1) * out];
                        let from_output = &d_layer_out[row * d.dirs * out + dir * out..][..out];
                        dhb.iter_mut().zip(from_output).for_each(|(v, &g)| *v += g);
                        let g = &s.gates[row * gw..(row + 1) * gw];
                        let din = &mut d_in_gates[row * gw..(row + 1) * gw];
                        let drec = &mut d_rec_gates[row * gw..(row + 1) * gw];
                        let mut direct = None;
                        match self.cell {
                            Cell::Rnn(nl) => {
                                for ((dv, &y), &dy) in din.iter_mut().zip(g).zip(dhb.iter()) {
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
                                match p.w_hr {
                                    Some(w_hr) => {
                                        dm.iter_mut().for_each(|v| *v = 0.0);
                                        matvec_t(w_hr, dhb, &mut dm);
                                        let mrow = &s.m[row * hidden..(row + 1) * hidden];
                                        outer_sum(dhb, out, mrow, hidden, &mut g_hr);
                                    }
                                    None => dm.copy_from_slice(dhb),
                                }
                                let cb = &s.c[row * hidden..(row + 1) * hidden];
                                let cp = &s.c_prev[row * hidden..(row + 1) * hidden];
                                let dcb = &mut dc[b * hidden..(b + 1) * hidden];
                                for j in 0..hidden {
                                    let (i, f, gg, o) =
                                        (g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]);
                                    let tc = cb[j].tanh();
                                    let dct = dcb[j] + dm[j] * o * (1.0 - tc * tc);
                                    din[j] = dct * gg * i * (1.0 - i);
                                    din[hidden + j] = dct * cp[j] * f * (1.0 - f);
                                    din[2 * hidden + j] = dct * i * (1.0 - gg * gg);
                                    din[3 * hidden + j] = dm[j] * tc * o * (1.0 - o);
                                    dcb[j] = dct * f;
                                }
                                drec.copy_from_slice(din);
                            }
                            Cell::Gru => {
                                let hp = &s.h_prev[row * out..(row + 1) * out];
                                let hn = &s.hn[row * hidden..(row + 1) * hidden];
                                let mut keep = vec![0.0; hidden];
                                for j in 0..hidden {
                                    let (r, z, n) = (g[j], g[hidden + j], g[2 * hidden + j]);
                                    let dhj = dhb[j];
                                    let dan = dhj * (1.0 - z) * (1.0 - n * n);
                                    let dr = dan * hn[j];
                                    din[j] = dr * r * (1.0 - r);
                                    din[hidden + j] = dhj * (hp[j] - n) * z * (1.0 - z);
                                    din[2 * hidden + j] = dan;
                                    drec[j] = din[j];
                                    drec[hidden + j] = din[hidden + j];
                                    drec[2 * hidden + j] = dan * r;
                                    keep[j] = dhj * z;
                                }
                                direct = Some(keep);
                            }
                        }
                        // dh_{t-1} = W_hhᵀ · (recurrent gate gradients) (+ z ⊙ dh for a GRU).
                        let dhb = &mut dh[b * out..(b + 1) * out];
                        match direct {
                            Some(keep) => dhb.copy_from_slice(&keep),
                            None => dhb.iter_mut().for_each(|v| *v = 0.0),
                        }
                        matvec_t(p.w_hh, &d_rec_gates[row * gw..(row + 1) * gw], dhb);
                    }
                }
                d_h0[slot * batch * out..(slot + 1) * batch * out].copy_from_slice(&dh);
                if lstm {
                    d_c0[slot * batch * hidden..(slot + 1) * batch * hidden].copy_from_slice(&dc);
                }
                // Weight gradients: one product over every (t, b) row of the layer-direction.
                let mut gr = ParamGrads {
                    w_ih: vec![0.0; gw * in_w],
                    w_hh: vec![0.0; gw * out],
                    b_ih: vec![0.0; gw],
                    b_hh: vec![0.0; gw],
                    w_hr: g_hr,
                };
                outer_sum(&d_in_gates, gw, layer_in, in_w, &mut gr.w_ih);
                outer_sum(&d_rec_gates, gw, &s.h_prev, out, &mut gr.w_hh);
                for (din, drec) in d_in_gates
                    .chunks_exact(gw)
                    .zip(d_rec_gates.chunks_exact(gw))
                {
                    gr.b_ih.iter_mut().zip(din).for_each(|(v, &x)| *v += x);
                    gr.b_hh.iter_mut().zip(drec).for_each(|(v, &x)| *v += x);
                }
                // The layer input's gradient: W_ihᵀ · (input-side gate gradients), every row.
                for (dx, dg) in d_in.chunks_exact_mut(in_w).zip(d_in_gates.chunks_exact(gw)) {
                    matvec_t(p.w_ih, dg, dx);
                }
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

fn add_bias(a: &mut [f64], bias: Option<&[f64]>) {
    if let Some(bias) = bias {
        a.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
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
