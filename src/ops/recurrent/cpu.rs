//! CPU reference forward, f32. The same loop as the CUDA path: one GEMM for the input projection
//! of a layer-direction, then per step one GEMM for W_hh·h, the cell's elementwise update, and
//! (LSTM with projection) one GEMM for W_hr·h.

use super::{step_time, Activation, Call, Cell, Dims, Outputs};
use crate::error::{Error, Result};
use crate::ops::gemm_cpu::{gemm_ab, transpose};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicUsize, Ordering};

fn f32_values<'a>(t: &'a Tensor, name: &str) -> Result<&'a [f32]> {
    t.host_slice::<f32>().map_err(|_| Error::DType {
        tensor: name.into(),
        expected: "f32 (the CPU path computes in f32)".into(),
        got: t.dtype().name().into(),
    })
}

/// A bias as f32 values, zeros when the layer has none.
fn bias(t: &Option<Tensor>, len: usize, name: &str) -> Result<Vec<f32>> {
    match t {
        Some(t) => Ok(f32_values(t, name)?.to_vec()),
        None => Ok(vec![0.0; len]),
    }
}

/// Applies `f` to every element. One inlined function per loop, over one slice, is what LLVM
/// vectorises (a match on the activation inside the loop is not).
#[inline(always)]
fn activate(values: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in values {
        *v = f(*v);
    }
}

/// The elementwise update of one row. `gates` holds W_ih x + b_ih + W_hh h + b_hh (G·H; for the
/// GRU's n gate only the input half, `rec_n` then holds W_hn h + b_hn) and is overwritten.
/// Updates `h` (H wide; the pre-projection h for an LSTM with projection) and `c` in place.
#[inline(always)]
fn update_row(cell: Cell, gates: &mut [f32], rec_n: &[f32], h: &mut [f32], c: &mut [f32]) {
    use crate::ops::math_cpu::{sigmoid, tanh};
    let hidden = h.len();
    match cell {
        Cell::Rnn(nl) => {
            match nl.activation() {
                Activation::Tanh => activate(gates, tanh),
                act => activate(gates, |x| act.apply(x)),
            }
            h.copy_from_slice(gates);
        }
        Cell::Lstm => {
            let (ifg, o) = gates.split_at_mut(3 * hidden);
            let (i_f, g) = ifg.split_at_mut(2 * hidden);
            activate(i_f, sigmoid);
            activate(g, tanh);
            activate(o, sigmoid);
            let (i, f) = i_f.split_at(hidden);
            for (((c, &f), &i), &g) in c.iter_mut().zip(f.iter()).zip(i).zip(g.iter()) {
                *c = f * *c + i * g;
            }
            h.copy_from_slice(c);
            activate(h, tanh);
            for (h, &o) in h.iter_mut().zip(o.iter()) {
                *h *= o;
            }
        }
        Cell::Gru => {
            let (rz, n) = gates.split_at_mut(2 * hidden);
            activate(rz, sigmoid);
            let (r, z) = rz.split_at(hidden);
            for ((n, &r), &rec) in n.iter_mut().zip(r).zip(rec_n) {
                *n += r * rec;
            }
            activate(n, tanh);
            for ((h, &n), &z) in h.iter_mut().zip(n.iter()).zip(z) {
                *h = n + z * (*h - n);
            }
        }
    }
}

/// gates = pre + b_ih + rec + b_hh over the gate columns that combine both halves (all but the
/// GRU's n gate, whose input half gets b_in here and whose recurrent half is returned in
/// `rec_n` with b_hn added).
#[inline(always)]
fn sum_gates(
    cell: Cell,
    pre: &[f32],
    rec: &[f32],
    b_ih: &[f32],
    b_hh: &[f32],
    gates: &mut [f32],
    rec_n: &mut [f32],
) {
    let split = match cell {
        Cell::Gru => 2 * rec_n.len(),
        _ => gates.len(),
    };
    let both = gates[..split]
        .iter_mut()
        .zip(&pre[..split])
        .zip(&rec[..split]);
    for (((g, &x), &r), (&bi, &bh)) in both.zip(b_ih.iter().zip(b_hh)) {
        *g = x + bi + r + bh;
    }
    if cell == Cell::Gru {
        let input = gates[split..]
            .iter_mut()
            .zip(&pre[split..])
            .zip(&b_ih[split..]);
        for ((g, &x), &bi) in input {
            *g = x + bi;
        }
        for ((n, &r), &bh) in rec_n.iter_mut().zip(&rec[split..]).zip(&b_hh[split..]) {
            *n = r + bh;
        }
    }
}

/// One row's inputs and state for one step.
struct Row<'a> {
    pre: &'a [f32],
    rec: &'a [f32],
    b_ih: &'a [f32],
    b_hh: &'a [f32],
    gates: &'a mut [f32],
    rec_n: &'a mut [f32],
    /// H wide: h, or the LSTM's pre-projection h.
    h: &'a mut [f32],
    c: &'a mut [f32],
}

#[inline(always)]
fn step_row(cell: Cell, r: Row<'_>) {
    sum_gates(cell, r.pre, r.rec, r.b_ih, r.b_hh, r.gates, r.rec_n);
    update_row(cell, r.gates, r.rec_n, r.h, r.c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn step_row_avx512(cell: Cell, r: Row<'_>) {
    step_row(cell, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn step_row_avx2(cell: Cell, r: Row<'_>) {
    step_row(cell, r)
}

/// `step_row` compiled for the widest vector extension this CPU has: the build targets baseline
/// x86-64, whose SSE2 leaves most of the activations' width unused.
fn step_row_best(cell: Cell, r: Row<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            return unsafe { step_row_avx512(cell, r) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { step_row_avx2(cell, r) };
        }
    }
    step_row(cell, r)
}

/// Steps per chunk of the pipelined input projection.
const CHUNK_STEPS: usize = 8;

/// The order in which the input projection's chunks of `CHUNK_STEPS` steps are produced: the
/// order the steps consume them.
#[derive(Clone, Copy)]
struct ChunkOrder {
    count: usize,
    reverse: bool,
}

impl ChunkOrder {
    /// The times [t0, t1) of the k-th chunk produced.
    fn times(self, k: usize, seq_len: usize) -> (usize, usize) {
        let c = if self.reverse { self.count - 1 - k } else { k };
        (c * CHUNK_STEPS, ((c + 1) * CHUNK_STEPS).min(seq_len))
    }

    /// How many chunks must be produced before time `t` can be read.
    fn produced_with(self, t: usize) -> usize {
        let c = t / CHUNK_STEPS;
        if self.reverse {
            self.count - c
        } else {
            c + 1
        }
    }
}

/// The input projection's buffer, shared with the thread that fills it (see `forward`).
struct SharedRows(*mut f32);
// SAFETY: the producer writes only rows no reader has been told of; readers read only rows
// published to them with Release/Acquire ordering.
unsafe impl Sync for SharedRows {}

pub(super) fn forward(call: &Call<'_>) -> Result<Outputs> {
    let Call {
        cell,
        ref dims,
        weights,
        input,
        h0,
        c0,
        lengths,
    } = *call;
    let x = f32_values(input, "input")?;
    let h0 = h0.map(|t| f32_values(t, "h0")).transpose()?;
    let c0 = c0.map(|t| f32_values(t, "c0")).transpose()?;
    let Dims {
        seq_len,
        batch,
        hidden,
        out_size: out,
        dirs,
        layers,
        ..
    } = *dims;
    let (st, sb) = dims.strides();
    let (rows, gw, width) = (dims.rows(), dims.gate_width(), dirs * out);
    let lstm = cell == Cell::Lstm;

    let mut h_n = vec![0f32; layers * dirs * batch * out];
    let mut c_n = vec![
        0f32;
        if lstm {
            layers * dirs * batch * hidden
        } else {
            0
        }
    ];
    let mut layer_in = x.to_vec();
    let mut xw = vec![0f32; rows * gw];
    let mut hh = vec![0f32; batch * gw];
    let mut h = vec![0f32; batch * out];
    let mut c = vec![0f32; batch * hidden];
    let (mut gates, mut rec_n) = (vec![0f32; gw], vec![0f32; hidden]);
    // The LSTM's h before projection, [B, H], and after it, [B, O]; without projection h itself
    // is updated.
    let mut pre_proj = vec![0f32; if dims.projected() { batch * hidden } else { 0 }];
    let mut projected = vec![0f32; if dims.projected() { batch * out } else { 0 }];
    // Each row's time at the current step, None once it has ended.
    let mut times = vec![None; batch];
    for layer in 0..layers {
        let in_w = dims.layer_input(layer);
        let mut out_buf = vec![0f32; rows * width];
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let w = &weights[slot];
            // Transposed once per call: the GEMMs take weights as [k, n] (see gemm_cpu).
            let w_ih = transpose(f32_values(&w.w_ih, "weight_ih")?, gw, in_w);
            let w_hh = transpose(f32_values(&w.w_hh, "weight_hh")?, gw, out);
            let w_hr = match &w.w_hr {
                Some(t) => Some(transpose(f32_values(t, "weight_hr")?, out, hidden)),
                None => None,
            };
            let b_ih = bias(&w.b_ih, gw, "bias_ih")?;
            let b_hh = bias(&w.b_hh, gw, "bias_hh")?;

            let state = |init: Option<&[f32]>, size: usize, buf: &mut Vec<f32>| match init {
                Some(v) => buf.copy_from_slice(&v[slot * batch * size..(slot + 1) * batch * size]),
                None => buf.fill(0.0),
            };
            state(h0, out, &mut h);
            if lstm {
                state(c0, hidden, &mut c);
            }
            let reverse = dir == 1;
            // Every step reads one time for all its rows: the forward direction, or the reverse
            // one when all rows have the full length.
            let one_time_per_step = !reverse || lengths.iter().all(|&l| l == seq_len);
            let chunks = ChunkOrder {
                count: seq_len.div_ceil(CHUNK_STEPS),
                reverse,
            };
            let pipelined = !dims.batch_first
                && one_time_per_step
                && chunks.count > 1
                && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
            let progress = AtomicUsize::new(0);
            let xw_ptr = SharedRows(xw.as_mut_ptr());
            std::thread::scope(|scope| {
                let (xw_ptr, progress, layer_in, w_ih) = (&xw_ptr, &progress, &layer_in, &w_ih);
                let producer = pipelined.then(|| {
                    scope.spawn(move || {
                        for k in 0..chunks.count {
                            let (t0, t1) = chunks.times(k, seq_len);
                            let (r0, r1) = (t0 * batch, t1 * batch);
                            // SAFETY: rows [r0, r1) of xw are written by this thread alone and
                            // read by the steps only after `progress` publishes them.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    xw_ptr.0.add(r0 * gw),
                                    (r1 - r0) * gw,
                                )
                            };
                            let x = &layer_in[r0 * in_w..r1 * in_w];
                            gemm_ab(r1 - r0, gw, in_w, x, in_w, w_ih, gw, dst, gw, 0.0, 1);
                            progress.store(k + 1, Ordering::Release);
                        }
                    })
                });
                if !pipelined {
                    // SAFETY: no other thread touches xw.
                    let all = unsafe { std::slice::from_raw_parts_mut(xw_ptr.0, rows * gw) };
                    gemm_ab(
                        rows,
                        gw,
                        in_w,
                        layer_in,
                        in_w,
                        w_ih,
                        gw,
                        all,
                        gw,
                        0.0,
                        usize::MAX,
                    );
                }
                for s in 0..seq_len {
                    // While the second thread projects the input, the steps' GEMMs keep to one
                    // thread; after that they may use every core.
                    let producing = pipelined && progress.load(Ordering::Acquire) < chunks.count;
                    let step_threads = if producing { 1 } else { usize::MAX };
                    if let Some(producer) = &producer {
                        let needed =
                            chunks.produced_with(step_time(s, seq_len, reverse).unwrap_or(0));
                        while progress.load(Ordering::Acquire) < needed {
                            // A producer that stopped early panicked: fail, never spin forever.
                            assert!(
                                !producer.is_finished()
                                    || progress.load(Ordering::Acquire) >= needed,
                                "the input projection thread stopped early"
                            );
                            std::thread::yield_now();
                        }
                    }
                    gemm_ab(
                        batch,
                        gw,
                        out,
                        &h,
                        out,
                        &w_hh,
                        gw,
                        &mut hh,
                        gw,
                        0.0,
                        step_threads,
                    );
                    // Rows that have ended keep their state; their outputs stay 0.
                    for (b, t) in times.iter_mut().enumerate() {
                        *t = step_time(s, lengths[b], reverse);
                    }
                    for (b, t) in times.iter().enumerate() {
                        let Some(t) = *t else { continue };
                        let row = t * st + b * sb;
                        let target = match &w_hr {
                            Some(_) => &mut pre_proj[b * hidden..(b + 1) * hidden],
                            None => &mut h[b * out..(b + 1) * out],
                        };
                        // SAFETY: row `row` was written before this step (published through
                        // `progress` when pipelined) and nothing writes it any more.
                        let pre = unsafe { std::slice::from_raw_parts(xw_ptr.0.add(row * gw), gw) };
                        step_row_best(
                            cell,
                            Row {
                                pre,
                                rec: &hh[b * gw..(b + 1) * gw],
                                b_ih: &b_ih,
                                b_hh: &b_hh,
                                gates: &mut gates,
                                rec_n: &mut rec_n,
                                h: target,
                                c: &mut c[b * hidden..(b + 1) * hidden],
                            },
                        );
                    }
                    if let Some(w_hr) = &w_hr {
                        // h = W_hr·h, kept for the rows still running.
                        gemm_ab(
                            batch,
                            out,
                            hidden,
                            &pre_proj,
                            hidden,
                            w_hr,
                            out,
                            &mut projected,
                            out,
                            0.0,
                            step_threads,
                        );
                        for (b, t) in times.iter().enumerate() {
                            if t.is_some() {
                                h[b * out..(b + 1) * out]
                                    .copy_from_slice(&projected[b * out..(b + 1) * out]);
                            }
                        }
                    }
                    for (b, t) in times.iter().enumerate() {
                        if let Some(t) = *t {
                            let row = t * st + b * sb;
                            out_buf[row * width + dir * out..][..out]
                                .copy_from_slice(&h[b * out..(b + 1) * out]);
                        }
                    }
                }
            });
            h_n[slot * batch * out..(slot + 1) * batch * out].copy_from_slice(&h);
            if lstm {
                c_n[slot * batch * hidden..(slot + 1) * batch * hidden].copy_from_slice(&c);
            }
        }
        layer_in = out_buf;
    }
    Ok(Outputs {
        output: Tensor::from_vec(layer_in, &dims.output_shape())?,
        h_n: Tensor::from_vec(h_n, &dims.state_shape())?,
        c_n: lstm
            .then(|| Tensor::from_vec(c_n, &dims.cell_shape()))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::{ChunkOrder, CHUNK_STEPS};

    #[test]
    fn chunks_are_produced_in_the_order_the_steps_read_them() {
        let seq_len = 2 * CHUNK_STEPS + 3;
        for reverse in [false, true] {
            let order = ChunkOrder { count: 3, reverse };
            let produced: Vec<_> = (0..3).map(|k| order.times(k, seq_len)).collect();
            for s in 0..seq_len {
                let t = if reverse { seq_len - 1 - s } else { s };
                let needed = order.produced_with(t);
                // The chunk holding t is among the first `needed`, and not among the first
                // `needed - 1`.
                assert!(produced[..needed].iter().any(|&(a, b)| (a..b).contains(&t)));
                assert!(!produced[..needed - 1]
                    .iter()
                    .any(|&(a, b)| (a..b).contains(&t)));
            }
        }
    }
}
