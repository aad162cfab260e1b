//! The elementwise update of one batch row for one step: the gate nonlinearities and the cell
//! update, over any contiguous run of hidden units (a chunk, see `super`). Each cell is one loop
//! over the units that reads its gates and writes h (and c) once, with no temporaries: loops of
//! inlined branch-free activations over equal-length slices are what LLVM vectorises.

use super::super::{Activation, Cell};
use crate::ops::math_cpu::{sigmoid, tanh};

/// One row's inputs and state for one step, for n hidden units.
pub(super) struct Row<'a> {
    /// W_ih x + b_ih, plus b_hh for every gate but the GRU's n (G·n, gate-major).
    pub pre: &'a [f32],
    /// W_hh h (G·n, gate-major).
    pub rec: &'a [f32],
    /// The GRU's b_hn (n); empty for the other cells.
    pub b_hn: &'a [f32],
    /// h, or the LSTM's pre-projection h: updated in place.
    pub h: &'a mut [f32],
    /// The LSTM's c: updated in place.
    pub c: &'a mut [f32],
}

/// Gate `g` of a gate-major row of n units.
#[inline(always)]
fn gate(v: &[f32], g: usize, n: usize) -> &[f32] {
    &v[g * n..(g + 1) * n]
}

#[inline(always)]
fn rnn(pre: &[f32], rec: &[f32], h: &mut [f32], f: impl Fn(f32) -> f32) {
    let n = h.len();
    let (pre, rec) = (&pre[..n], &rec[..n]);
    for j in 0..n {
        h[j] = f(pre[j] + rec[j]);
    }
}

#[inline(always)]
fn lstm(pre: &[f32], rec: &[f32], h: &mut [f32], c: &mut [f32]) {
    let n = h.len();
    let (pi, pf, pg, po) = (
        gate(pre, 0, n),
        gate(pre, 1, n),
        gate(pre, 2, n),
        gate(pre, 3, n),
    );
    let (ri, rf, rg, ro) = (
        gate(rec, 0, n),
        gate(rec, 1, n),
        gate(rec, 2, n),
        gate(rec, 3, n),
    );
    let c = &mut c[..n];
    for j in 0..n {
        let i = sigmoid(pi[j] + ri[j]);
        let f = sigmoid(pf[j] + rf[j]);
        let g = tanh(pg[j] + rg[j]);
        let o = sigmoid(po[j] + ro[j]);
        let cell = f * c[j] + i * g;
        c[j] = cell;
        h[j] = o * tanh(cell);
    }
}

/// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), as PyTorch's GRU.
#[inline(always)]
fn gru(pre: &[f32], rec: &[f32], b_hn: &[f32], h: &mut [f32]) {
    let n = h.len();
    let (pr, pz, pn) = (gate(pre, 0, n), gate(pre, 1, n), gate(pre, 2, n));
    let (rr, rz, rn) = (gate(rec, 0, n), gate(rec, 1, n), gate(rec, 2, n));
    let b_hn = &b_hn[..n];
    for j in 0..n {
        let r = sigmoid(pr[j] + rr[j]);
        let z = sigmoid(pz[j] + rz[j]);
        let cand = tanh(pn[j] + r * (rn[j] + b_hn[j]));
        h[j] = cand + z * (h[j] - cand);
    }
}

#[inline(always)]
fn step_row(cell: Cell, r: Row<'_>) {
    match cell {
        Cell::Rnn(nl) => match nl.activation() {
            Activation::Tanh => rnn(r.pre, r.rec, r.h, tanh),
            act => rnn(r.pre, r.rec, r.h, |x| act.apply(x)),
        },
        Cell::Lstm => lstm(r.pre, r.rec, r.h, r.c),
        Cell::Gru => gru(r.pre, r.rec, r.b_hn, r.h),
    }
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
pub(super) fn step_row_best(cell: Cell, r: Row<'_>) {
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
