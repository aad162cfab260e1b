//! Backpropagation through time on the CPU: a training-mode forward that keeps what the
//! backward needs (per step the gate activations, the state entering the step and, for an LSTM,
//! the cell; like cuDNN's reserve space), and the backward itself.
//!
//! It computes in f32 or f64 (`Real`): f32 by default, f64 as the reference that the f32 path
//! is tested against (and that the finite-difference checks below run). In f32 the products are
//! f32 GEMMs; the bias gradients, sums over every step and row, are summed in f64, which costs
//! little and keeps them accurate where their terms cancel.
//!
//! Per step and row the backward turns dh (and dc) and the saved activations into gate
//! gradients and carries dh back through W_hh; the weight gradients are then one product per
//! layer-direction over all time steps, not one per step.

use super::{step_time, Activation, Cell, Dims};
use crate::ops::gemm_cpu::{cores, gemm_ab, gemm_atb, transpose};
use crate::ops::math_cpu::Real;
use crate::ops::packed_gemm::PackedB;
use std::borrow::Cow;
use std::ops::Range;

/// One layer-direction's parameters in PyTorch's row-major shapes: w_ih [G·H, in],
/// w_hh [G·H, O], biases [G·H], w_hr [O, H].
pub(crate) struct Params<'a, T> {
    pub w_ih: &'a [T],
    pub w_hh: &'a [T],
    pub b_ih: Option<&'a [T]>,
    pub b_hh: Option<&'a [T]>,
    pub w_hr: Option<&'a [T]>,
}

/// The gradients of one layer-direction's parameters, in the same shapes (biases always).
#[derive(Debug, Clone)]
pub(crate) struct ParamGrads<T> {
    pub w_ih: Vec<T>,
    pub w_hh: Vec<T>,
    pub b_ih: Vec<T>,
    pub b_hh: Vec<T>,
    pub w_hr: Vec<T>,
}

/// A stack of layer-directions and the call's shape.
pub(crate) struct Net<'a, T> {
    pub cell: Cell,
    pub dims: Dims,
    /// One per batch row, in 1..=T.
    pub lengths: &'a [usize],
    /// L·D layer-directions, layer-major.
    pub params: Vec<Params<'a, T>>,
    /// How many threads share the batch: None for as many as the work and cores make worth it
    /// (the tests force several).
    pub threads: Option<usize>,
}

/// What one layer-direction keeps for the backward, one row per (t, b) as the input is laid
/// out; rows a short sequence never reaches stay zero.
#[derive(Debug, Clone)]
struct SlotSaved<T> {
    /// Gate activations [rows, G·H]: i, f, g, o (LSTM); r, z, n (GRU); h (RNN).
    gates: Vec<T>,
    /// The state entering the step [rows, O].
    h_prev: Vec<T>,
    /// LSTM: the cell entering the step and leaving it [rows, H].
    c_prev: Vec<T>,
    c: Vec<T>,
    /// LSTM with projection: h before W_hr [rows, H].
    m: Vec<T>,
    /// GRU: W_hn h + b_hn [rows, H].
    hn: Vec<T>,
}

/// Everything a training-mode forward keeps: each layer's input and each layer-direction's
/// activations.
#[derive(Debug, Clone)]
pub(crate) struct Saved<T> {
    layer_inputs: Vec<Vec<T>>,
    slots: Vec<SlotSaved<T>>,
}

impl<T> Saved<T> {
    /// The LSTM's c_t of layer-direction `slot` after every step [rows, H] (empty otherwise).
    pub(crate) fn cell_states(&self, slot: usize) -> &[T] {
        &self.slots[slot].c
    }
}

/// Elements a training-mode forward keeps for `dims` (known before the call).
pub(crate) fn saved_len(cell: Cell, dims: &Dims) -> usize {
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

/// The forward results.
pub(crate) struct Forward<T> {
    /// [rows, D·O]
    pub output: Vec<T>,
    /// [L·D, B, O]
    pub h_n: Vec<T>,
    /// [L·D, B, H] (LSTM; empty otherwise)
    pub c_n: Vec<T>,
}

/// The backward results.
pub(crate) struct Backward<T> {
    /// [rows, I]
    pub input: Vec<T>,
    /// [L·D, B, O]
    pub h0: Vec<T>,
    /// [L·D, B, H] (LSTM; empty otherwise)
    pub c0: Vec<T>,
    pub params: Vec<ParamGrads<T>>,
}

/// c[m, n] = a[m, k] · b[k, n] (+ c when `accumulate`), row-major and contiguous.
fn matmul<T: Real>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T], accumulate: bool) {
    let beta = if accumulate { T::ONE } else { T::default() };
    gemm_ab(m, n, k, a, k, b, n, c, n, beta, usize::MAX);
}

/// Adds `bias` (if any) to every row of `x`.
fn add_bias_rows<T: Real>(x: &mut [T], bias: Option<&[T]>) {
    if let Some(bias) = bias {
        for row in x.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
        }
    }
}

/// The column sums of a row-major [rows, n] matrix, summed in f64: a sum over every step and
/// row, whose terms may cancel.
fn column_sums<T: Real>(x: &[T], n: usize) -> Vec<T> {
    let mut sums = vec![0f64; n];
    for row in x.chunks_exact(n) {
        sums.iter_mut()
            .zip(row)
            .for_each(|(s, &v)| *s += v.to_f64());
    }
    sums.into_iter().map(T::from_f64).collect()
}

/// g[n, k] = a[rows, n]ᵀ · b[rows, k]: a weight gradient over every row at once.
fn gradient<T: Real>(a: &[T], n: usize, b: &[T], k: usize) -> Vec<T> {
    let rows = a.len() / n.max(1);
    let mut g = vec![T::default(); n * k];
    gemm_atb(n, k, rows, a, b, &mut g);
    g
}

/// Gate `k` of a gate-major row of n units.
#[inline(always)]
fn gate<T>(v: &[T], k: usize, n: usize) -> &[T] {
    &v[k * n..(k + 1) * n]
}

/// One row's forward step over its n units. `pre` is W_ih x + b_ih and `rec` W_hh h + b_hh
/// (G·n each, gate-major); the gate activations go to `gates`. The RNN and GRU update `h` in
/// place; the LSTM updates `c` and writes o ⊙ tanh(c) to `h` (before any projection).
struct ForwardRow<'a, T> {
    pre: &'a [T],
    rec: &'a [T],
    gates: &'a mut [T],
    h: &'a mut [T],
    c: &'a mut [T],
}

/// The loops index equal-length slices with no branch inside, so that they vectorise.
#[inline(always)]
fn forward_row<T: Real>(cell: Cell, r: ForwardRow<'_, T>) {
    let n = r.h.len();
    let zero = T::default();
    match cell {
        Cell::Rnn(nl) => {
            let (pre, rec, g) = (&r.pre[..n], &r.rec[..n], &mut r.gates[..n]);
            match nl.activation() {
                Activation::Relu => {
                    for j in 0..n {
                        let a = pre[j] + rec[j];
                        g[j] = if a < zero { zero } else { a };
                    }
                }
                _ => {
                    for j in 0..n {
                        g[j] = (pre[j] + rec[j]).tanh();
                    }
                }
            }
            r.h.copy_from_slice(g);
        }
        Cell::Lstm => {
            let (gi, rest) = r.gates.split_at_mut(n);
            let (gf, rest) = rest.split_at_mut(n);
            let (gg, go) = rest.split_at_mut(n);
            let go = &mut go[..n];
            let (pi, pf, pg, po) = (
                gate(r.pre, 0, n),
                gate(r.pre, 1, n),
                gate(r.pre, 2, n),
                gate(r.pre, 3, n),
            );
            let (ri, rf, rg, ro) = (
                gate(r.rec, 0, n),
                gate(r.rec, 1, n),
                gate(r.rec, 2, n),
                gate(r.rec, 3, n),
            );
            let (c, h) = (&mut r.c[..n], r.h);
            for j in 0..n {
                let i = (pi[j] + ri[j]).sigmoid();
                let f = (pf[j] + rf[j]).sigmoid();
                let g = (pg[j] + rg[j]).tanh();
                let o = (po[j] + ro[j]).sigmoid();
                (gi[j], gf[j], gg[j], go[j]) = (i, f, g, o);
                let cell = f * c[j] + i * g;
                c[j] = cell;
                h[j] = o * cell.tanh();
            }
        }
        Cell::Gru => {
            let (gr, rest) = r.gates.split_at_mut(n);
            let (gz, gn) = rest.split_at_mut(n);
            let gn = &mut gn[..n];
            let (pr, pz, pn) = (gate(r.pre, 0, n), gate(r.pre, 1, n), gate(r.pre, 2, n));
            let (rr, rz, rn) = (gate(r.rec, 0, n), gate(r.rec, 1, n), gate(r.rec, 2, n));
            let h = r.h;
            for j in 0..n {
                // r multiplies the recurrent half W_hn h + b_hn.
                let reset = (pr[j] + rr[j]).sigmoid();
                let z = (pz[j] + rz[j]).sigmoid();
                let cand = (pn[j] + reset * rn[j]).tanh();
                (gr[j], gz[j], gn[j]) = (reset, z, cand);
                h[j] = cand + z * (h[j] - cand);
            }
        }
    }
}

/// One row's backward step over its n units, from the upstream gradient `dh` (the LSTM's:
/// of o ⊙ tanh(c), before any projection) and the saved `gates`: the gate pre-activations'
/// gradients into `din`. The LSTM reads `c_prev` and `c` and carries `dc` back in place. The
/// GRU reads `h_prev` and `hn`, and also writes the recurrent side's gate gradients to `drec`
/// (the n gate's scaled by r) and the part of dh_{t-1} that bypasses W_hh to `direct`.
struct BackwardRow<'a, T> {
    gates: &'a [T],
    dh: &'a [T],
    c_prev: &'a [T],
    c: &'a [T],
    dc: &'a mut [T],
    h_prev: &'a [T],
    hn: &'a [T],
    din: &'a mut [T],
    drec: &'a mut [T],
    direct: &'a mut [T],
}

/// As `forward_row`, loops that vectorise.
#[inline(always)]
fn backward_row<T: Real>(cell: Cell, r: BackwardRow<'_, T>) {
    let n = r.dh.len();
    let (zero, one) = (T::default(), T::ONE);
    let dh = r.dh;
    match cell {
        Cell::Rnn(nl) => {
            let (y, din) = (&r.gates[..n], &mut r.din[..n]);
            match nl.activation() {
                Activation::Relu => {
                    for j in 0..n {
                        din[j] = if y[j] > zero { dh[j] } else { zero };
                    }
                }
                _ => {
                    for j in 0..n {
                        din[j] = dh[j] * (one - y[j] * y[j]);
                    }
                }
            }
        }
        Cell::Lstm => {
            let (gi, gf, gg, go) = (
                gate(r.gates, 0, n),
                gate(r.gates, 1, n),
                gate(r.gates, 2, n),
                gate(r.gates, 3, n),
            );
            let (di, rest) = r.din.split_at_mut(n);
            let (df, rest) = rest.split_at_mut(n);
            let (dg, d_o) = rest.split_at_mut(n);
            let d_o = &mut d_o[..n];
            let (c, c_prev, dc) = (&r.c[..n], &r.c_prev[..n], &mut r.dc[..n]);
            for j in 0..n {
                let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
                let tc = c[j].tanh();
                let dct = dc[j] + dh[j] * o * (one - tc * tc);
                di[j] = dct * g * i * (one - i);
                df[j] = dct * c_prev[j] * f * (one - f);
                dg[j] = dct * i * (one - g * g);
                d_o[j] = dh[j] * tc * o * (one - o);
                dc[j] = dct * f;
            }
        }
        Cell::Gru => {
            let (gr, gz, gn) = (
                gate(r.gates, 0, n),
                gate(r.gates, 1, n),
                gate(r.gates, 2, n),
            );
            let (h_prev, hn, direct) = (&r.h_prev[..n], &r.hn[..n], &mut r.direct[..n]);
            let (dr, rest) = r.din.split_at_mut(n);
            let (dz, dn) = rest.split_at_mut(n);
            let dn = &mut dn[..n];
            let (rr, rest) = r.drec.split_at_mut(n);
            let (rz, rn) = rest.split_at_mut(n);
            let rn = &mut rn[..n];
            for j in 0..n {
                let (reset, z, cand) = (gr[j], gz[j], gn[j]);
                let dan = dh[j] * (one - z) * (one - cand * cand);
                let d_reset = dan * hn[j] * reset * (one - reset);
                let d_z = dh[j] * (h_prev[j] - cand) * z * (one - z);
                (dr[j], dz[j], dn[j]) = (d_reset, d_z, dan);
                (rr[j], rz[j], rn[j]) = (d_reset, d_z, dan * reset);
                direct[j] = dh[j] * z;
            }
        }
    }
}

/// `$best(cell, row)` runs `$row` compiled for the widest vector extension this CPU has: the
/// build targets baseline x86-64, whose SSE2 leaves most of the activations' width unused.
macro_rules! widest {
    ($best:ident, $row:ident, $args:ident) => {
        fn $best<T: Real>(cell: Cell, r: $args<'_, T>) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512<T: Real>(cell: Cell, r: $args<'_, T>) {
                    $row(cell, r)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2<T: Real>(cell: Cell, r: $args<'_, T>) {
                    $row(cell, r)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512(cell, r) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2(cell, r) };
                }
            }
            $row(cell, r)
        }
    };
}

widest!(forward_row_best, forward_row, ForwardRow);
widest!(backward_row_best, backward_row, BackwardRow);

/// The per-step products' weights, prepared once per layer-direction: f32 packs them for
/// `PackedB`, which then multiplies without repacking at every step; f64 (the reference)
/// keeps them transposed for `gemm_ab`.
pub(crate) trait StepGemm: Real {
    type Packed: Sync;
    /// A buffer of `len` values, of unspecified contents, that this thread's later calls may
    /// reuse once given back with `give_back`: allocating tens of megabytes afresh costs a
    /// page fault per 4 KiB at first write.
    fn scratch(len: usize) -> Vec<Self>;
    fn give_back(buf: Vec<Self>);
    /// B = wᵀ for a row-major w [n, k].
    fn pack(w: &[Self], n: usize, k: usize) -> Self::Packed;
    /// c[m, n] = a[m, k] · B, on this thread.
    fn multiply(b: &Self::Packed, m: usize, n: usize, k: usize, a: &[Self], c: &mut [Self]);
}

thread_local! {
    /// See `StepGemm::scratch`.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl StepGemm for f32 {
    type Packed = PackedB;
    fn scratch(len: usize) -> Vec<f32> {
        let mut buf = SCRATCH.take();
        buf.resize(len, 0.0);
        buf
    }
    fn give_back(buf: Vec<f32>) {
        SCRATCH.set(buf);
    }
    fn pack(w: &[f32], n: usize, k: usize) -> PackedB {
        PackedB::from_rows(w, k, &(0..n).collect::<Vec<_>>())
    }
    fn multiply(b: &PackedB, m: usize, n: usize, k: usize, a: &[f32], c: &mut [f32]) {
        b.matmul(m, a, k, c, n);
    }
}

impl StepGemm for f64 {
    type Packed = Vec<f64>;
    fn scratch(len: usize) -> Vec<f64> {
        vec![0.0; len]
    }
    fn give_back(_: Vec<f64>) {}
    fn pack(w: &[f64], n: usize, k: usize) -> Vec<f64> {
        transpose(w, n, k)
    }
    fn multiply(b: &Vec<f64>, m: usize, n: usize, k: usize, a: &[f64], c: &mut [f64]) {
        gemm_ab(m, n, k, a, k, b, n, c, n, 0.0, 1);
    }
}

/// w [n, k] prepared as B = wᵀ [k, n] for `StepGemm::multiply`.
struct StepMatrix<T: StepGemm> {
    b: T::Packed,
    n: usize,
    k: usize,
}

impl<T: StepGemm> StepMatrix<T> {
    fn new(w: &[T], n: usize, k: usize) -> Self {
        Self {
            b: T::pack(w, n, k),
            n,
            k,
        }
    }

    /// c[m, n] = a[m, k] · wᵀ.
    fn multiply(&self, m: usize, a: &[T], c: &mut [T]) {
        T::multiply(
            &self.b,
            m,
            self.n,
            self.k,
            &a[..m * self.k],
            &mut c[..m * self.n],
        );
    }
}

/// A buffer of rows that the batch's threads share: row (t, b) belongs to the thread that
/// runs batch row b, and only that thread touches it.
struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the threads touch disjoint rows (see above), and the buffer outlives them (scoped).
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// The slice `new` took is alive, and no other thread touches [start, start + len) while
    /// the result is used.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: the assert keeps the range inside the live slice `new` took; the caller's
        // contract makes it this thread's alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    /// Row `row` of `width` values; empty for a buffer the call does not keep (length 0).
    ///
    /// # Safety
    /// As `part`, for that row.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, row: usize, width: usize) -> &mut [T] {
        match self.len {
            0 => &mut [],
            // SAFETY: the caller's contract.
            _ => unsafe { self.part(row * width, width) },
        }
    }
}

/// Batch rows per thread that make another thread worth its start, in multiply-adds of the
/// whole sequence loop.
const MACS_PER_THREAD: usize = 1 << 22;

/// `v` [B, width] cut into the rows of `parts` (contiguous, in order, covering 0..B).
fn split_rows<'a, T>(mut v: &'a mut [T], width: usize, parts: &[Range<usize>]) -> Vec<&'a mut [T]> {
    parts
        .iter()
        .map(|part| {
            let (mine, rest) = std::mem::take(&mut v).split_at_mut(part.len() * width);
            v = rest;
            mine
        })
        .collect()
}

/// A layer-direction's buffers as the forward's threads share them.
struct ForwardShared<T> {
    gates: Shared<T>,
    h_prev: Shared<T>,
    c_prev: Shared<T>,
    c: Shared<T>,
    m: Shared<T>,
    hn: Shared<T>,
    /// The layer's output [rows, D·O].
    output: Shared<T>,
}

/// One row of what the forward keeps (empty where the call keeps nothing).
struct SavedRow<'a, T> {
    gates: &'a mut [T],
    h_prev: &'a mut [T],
    c_prev: &'a mut [T],
    c: &'a mut [T],
    m: &'a mut [T],
    hn: &'a mut [T],
}

impl<T> ForwardShared<T> {
    /// # Safety
    /// The buffers are alive, and no other thread touches input row `row` of them while the
    /// result is used.
    unsafe fn row(&self, row: usize, d: &Dims) -> SavedRow<'_, T> {
        let (h, o, gw) = (d.hidden, d.out_size, d.gate_width());
        // SAFETY: the caller's contract.
        unsafe {
            SavedRow {
                gates: self.gates.row(row, gw),
                h_prev: self.h_prev.row(row, o),
                c_prev: self.c_prev.row(row, h),
                c: self.c.row(row, h),
                m: self.m.row(row, h),
                hn: self.hn.row(row, h),
            }
        }
    }
}

/// A layer-direction's gradient rows as the backward's threads share them.
struct BackwardShared<T> {
    d_in_gates: Shared<T>,
    d_rec_gates: Shared<T>,
    d_h_rows: Shared<T>,
}

/// One thread's batch rows and their states [rows of the part, width], updated in place.
struct Part<'a, T> {
    rows: Range<usize>,
    h: &'a mut [T],
    c: &'a mut [T],
}

impl<T: StepGemm> Net<'_, T> {
    /// The batch cut into contiguous parts, one per thread. Batch rows never meet within a
    /// layer-direction (W_hh mixes a row's units, not rows), so each thread runs the whole
    /// sequence for its part with no synchronisation between steps.
    fn batch_parts(&self) -> Vec<Range<usize>> {
        let d = &self.dims;
        let macs = d.rows() * d.gate_width() * d.out_size;
        let count = self
            .threads
            .unwrap_or((macs / MACS_PER_THREAD).clamp(1, cores()))
            .clamp(1, d.batch);
        (0..count)
            .map(|k| d.batch * k / count..d.batch * (k + 1) / count)
            .collect()
    }

    /// The rows of `part` still running at `step` in direction `dir`, as (batch row, input
    /// row), into `active` (reused from step to step).
    fn active_rows(
        &self,
        step: usize,
        dir: usize,
        part: &Range<usize>,
        active: &mut Vec<(usize, usize)>,
    ) {
        let (st, sb) = self.dims.strides();
        active.clear();
        active.extend(part.clone().filter_map(|b| {
            step_time(step, self.lengths[b], dir == 1).map(|t| (b, t * st + b * sb))
        }));
    }

    /// The forward pass, keeping what `backward` needs. `x` [rows, I]; `h0` [L·D, B, O] and
    /// `c0` [L·D, B, H] (zeros when absent). The input projection is one GEMM per
    /// layer-direction; then each thread runs the steps of its batch rows, W_hh·h one product
    /// per step and the pointwise update per active row.
    pub fn forward_train(
        &self,
        x: &[T],
        h0: Option<&[T]>,
        c0: Option<&[T]>,
    ) -> (Forward<T>, Saved<T>) {
        let d = self.dims;
        let (rows, batch, hidden, out, gw) =
            (d.rows(), d.batch, d.hidden, d.out_size, d.gate_width());
        let (lstm, gru) = (self.cell == Cell::Lstm, self.cell == Cell::Gru);
        let zeros = |n: usize| vec![T::default(); n];
        let mut h_n = zeros(d.layers * d.dirs * batch * out);
        let mut c_n = zeros(if lstm {
            d.layers * d.dirs * batch * hidden
        } else {
            0
        });
        let mut layer_in = x.to_vec();
        let mut saved = Saved {
            layer_inputs: Vec::new(),
            slots: Vec::new(),
        };
        let mut xw = T::scratch(rows * gw);
        let parts = self.batch_parts();
        for layer in 0..d.layers {
            let in_w = d.layer_input(layer);
            let mut output = zeros(rows * d.dirs * out);
            for dir in 0..d.dirs {
                let slot = layer * d.dirs + dir;
                let p = &self.params[slot];
                let mut s = SlotSaved {
                    gates: zeros(rows * gw),
                    h_prev: zeros(rows * out),
                    c_prev: zeros(if lstm { rows * hidden } else { 0 }),
                    c: zeros(if lstm { rows * hidden } else { 0 }),
                    m: zeros(if p.w_hr.is_some() { rows * hidden } else { 0 }),
                    hn: zeros(if gru { rows * hidden } else { 0 }),
                };
                // W_ih x + b_ih for every (t, b) row at once.
                let w_ih_t = transpose(p.w_ih, gw, in_w);
                matmul(rows, gw, in_w, &layer_in, &w_ih_t, &mut xw, false);
                add_bias_rows(&mut xw, p.b_ih);
                let h = &mut h_n[slot * batch * out..(slot + 1) * batch * out];
                match h0 {
                    Some(h0) => h.copy_from_slice(&h0[slot * batch * out..][..batch * out]),
                    None => h.fill(T::default()),
                }
                let c: &mut [T] = match lstm {
                    true => {
                        let c = &mut c_n[slot * batch * hidden..(slot + 1) * batch * hidden];
                        if let Some(c0) = c0 {
                            c.copy_from_slice(&c0[slot * batch * hidden..][..batch * hidden]);
                        }
                        c
                    }
                    false => &mut [],
                };
                let w_hh = StepMatrix::new(p.w_hh, gw, out);
                let w_hr = p.w_hr.map(|w| StepMatrix::new(w, out, hidden));
                let shared = ForwardShared {
                    gates: Shared::new(&mut s.gates),
                    h_prev: Shared::new(&mut s.h_prev),
                    c_prev: Shared::new(&mut s.c_prev),
                    c: Shared::new(&mut s.c),
                    m: Shared::new(&mut s.m),
                    hn: Shared::new(&mut s.hn),
                    output: Shared::new(&mut output),
                };
                let h_parts = split_rows(h, out, &parts);
                let c_parts = split_rows(c, if lstm { hidden } else { 0 }, &parts);
                let mut jobs =
                    parts
                        .iter()
                        .zip(h_parts.into_iter().zip(c_parts))
                        .map(|(rows, (h, c))| Part {
                            rows: rows.clone(),
                            h,
                            c,
                        });
                let first = jobs.next().expect("at least one part");
                let (xw, w_hh, w_hr, shared) = (&xw, &w_hh, w_hr.as_ref(), &shared);
                std::thread::scope(|scope| {
                    for part in jobs {
                        scope
                            .spawn(move || self.forward_part(dir, p, xw, w_hh, w_hr, shared, part));
                    }
                    self.forward_part(dir, p, xw, w_hh, w_hr, shared, first);
                });
                saved.slots.push(s);
            }
            saved
                .layer_inputs
                .push(std::mem::replace(&mut layer_in, output));
        }
        T::give_back(xw);
        (
            Forward {
                output: layer_in,
                h_n,
                c_n,
            },
            saved,
        )
    }

    /// The steps of one layer-direction for the batch rows of `part`.
    #[allow(clippy::too_many_arguments)]
    fn forward_part(
        &self,
        dir: usize,
        p: &Params<'_, T>,
        xw: &[T],
        w_hh: &StepMatrix<T>,
        w_hr: Option<&StepMatrix<T>>,
        s: &ForwardShared<T>,
        part: Part<'_, T>,
    ) {
        let d = self.dims;
        let (hidden, out, gw) = (d.hidden, d.out_size, d.gate_width());
        let (lstm, gru) = (self.cell == Cell::Lstm, self.cell == Cell::Gru);
        let Part { rows: range, h, c } = part;
        let (first, nb) = (range.start, range.len());
        let zeros = |n: usize| vec![T::default(); n];
        let mut hh = zeros(nb * gw);
        let mut m = zeros(nb * hidden);
        let mut projected = zeros(if w_hr.is_some() { nb * out } else { 0 });
        let mut active = Vec::with_capacity(nb);
        for step in 0..d.seq_len {
            self.active_rows(step, dir, &range, &mut active);
            if active.is_empty() {
                break;
            }
            // W_hh h + b_hh for the part's rows (rows that have ended are not read).
            w_hh.multiply(nb, h, &mut hh);
            add_bias_rows(&mut hh, p.b_hh);
            for &(b, row) in &active {
                let lb = b - first;
                // SAFETY: row `row` is (t, b) for this part's batch row b, which no other
                // thread touches; the buffers outlive the scope.
                let kept = unsafe { s.row(row, &d) };
                let rec = &hh[lb * gw..(lb + 1) * gw];
                let hb = &mut h[lb * out..(lb + 1) * out];
                kept.h_prev.copy_from_slice(hb);
                let cb: &mut [T] = match lstm {
                    true => {
                        let cb = &mut c[lb * hidden..(lb + 1) * hidden];
                        kept.c_prev.copy_from_slice(cb);
                        cb
                    }
                    false => &mut [],
                };
                let target = match w_hr {
                    Some(_) => &mut m[lb * hidden..(lb + 1) * hidden],
                    None => hb,
                };
                forward_row_best(
                    self.cell,
                    ForwardRow {
                        pre: &xw[row * gw..(row + 1) * gw],
                        rec,
                        gates: kept.gates,
                        h: target,
                        c: cb,
                    },
                );
                if lstm {
                    kept.c.copy_from_slice(&c[lb * hidden..(lb + 1) * hidden]);
                }
                if w_hr.is_some() {
                    kept.m.copy_from_slice(&m[lb * hidden..(lb + 1) * hidden]);
                }
                if gru {
                    kept.hn.copy_from_slice(&rec[2 * hidden..]);
                }
            }
            if let Some(w_hr) = w_hr {
                // h = W_hr m, for the rows still running.
                w_hr.multiply(nb, &m, &mut projected);
                for &(b, _) in &active {
                    let lb = b - first;
                    h[lb * out..(lb + 1) * out]
                        .copy_from_slice(&projected[lb * out..(lb + 1) * out]);
                }
            }
            for &(b, row) in &active {
                let lb = b - first;
                // SAFETY: this direction's columns of row (t, b), for this part's batch row b:
                // no other thread touches them; the buffer outlives the scope.
                unsafe { s.output.part(row * d.dirs * out + dir * out, out) }
                    .copy_from_slice(&h[lb * out..(lb + 1) * out]);
            }
        }
    }

    /// The gradients of Σ output ⊙ d_output + Σ h_n ⊙ d_h_n (+ Σ c_n ⊙ d_c_n) with respect to
    /// the input, h0, c0 and every parameter. Outputs past a row's length get no gradient.
    /// Each thread runs the steps of its batch rows (per step one product carries dh back
    /// through W_hh); the weight gradients and the input's are then one GEMM each per
    /// layer-direction over every step.
    pub fn backward(
        &self,
        saved: &Saved<T>,
        d_output: &[T],
        d_h_n: Option<&[T]>,
        d_c_n: Option<&[T]>,
    ) -> Backward<T> {
        let d = self.dims;
        let (rows, batch, hidden, out, gw) =
            (d.rows(), d.batch, d.hidden, d.out_size, d.gate_width());
        let (lstm, gru) = (self.cell == Cell::Lstm, self.cell == Cell::Gru);
        let zeros = |n: usize| vec![T::default(); n];
        let mut d_h0 = zeros(d.layers * d.dirs * batch * out);
        let mut d_c0 = zeros(if lstm {
            d.layers * d.dirs * batch * hidden
        } else {
            0
        });
        let mut grads: Vec<Option<ParamGrads<T>>> = (0..d.layers * d.dirs).map(|_| None).collect();
        let mut d_layer_out = Cow::Borrowed(d_output);
        let parts = self.batch_parts();
        for layer in (0..d.layers).rev() {
            let in_w = d.layer_input(layer);
            let layer_in = &saved.layer_inputs[layer];
            let mut d_in = zeros(rows * in_w);
            for dir in 0..d.dirs {
                let slot = layer * d.dirs + dir;
                let (p, s) = (&self.params[slot], &saved.slots[slot]);
                // Gate gradients per row: on the input side and, for a GRU, on the recurrent
                // side (they differ only in its n gate, where the recurrent side is scaled by
                // r; the other cells use one for both).
                let mut d_in_gates = T::scratch(rows * gw);
                // The steps write every row they reach; the GEMMs over all rows read the
                // others as zeros.
                let (st, sb) = d.strides();
                for (b, &len) in self.lengths.iter().enumerate() {
                    for t in len..d.seq_len {
                        let row = t * st + b * sb;
                        d_in_gates[row * gw..(row + 1) * gw].fill(T::default());
                    }
                }
                let mut d_rec_gates = zeros(if gru { rows * gw } else { 0 });
                // LSTM with projection: dh per row, for W_hr's gradient.
                let mut d_h_rows = zeros(if p.w_hr.is_some() { rows * out } else { 0 });
                let dh = &mut d_h0[slot * batch * out..(slot + 1) * batch * out];
                if let Some(g) = d_h_n {
                    dh.copy_from_slice(&g[slot * batch * out..][..batch * out]);
                }
                let dc: &mut [T] = match lstm {
                    true => {
                        let dc = &mut d_c0[slot * batch * hidden..(slot + 1) * batch * hidden];
                        if let Some(g) = d_c_n {
                            dc.copy_from_slice(&g[slot * batch * hidden..][..batch * hidden]);
                        }
                        dc
                    }
                    false => &mut [],
                };
                // dh_{t-1} = d_rec · W_hh and, with a projection, dm = dh · W_hr.
                let w_hh = StepMatrix::new(&transpose(p.w_hh, gw, out), out, gw);
                let w_hr = p
                    .w_hr
                    .map(|w| StepMatrix::new(&transpose(w, out, hidden), hidden, out));
                let shared = BackwardShared {
                    d_in_gates: Shared::new(&mut d_in_gates),
                    d_rec_gates: Shared::new(&mut d_rec_gates),
                    d_h_rows: Shared::new(&mut d_h_rows),
                };
                let dh_parts = split_rows(dh, out, &parts);
                let dc_parts = split_rows(dc, if lstm { hidden } else { 0 }, &parts);
                let mut jobs =
                    parts
                        .iter()
                        .zip(dh_parts.into_iter().zip(dc_parts))
                        .map(|(rows, (h, c))| Part {
                            rows: rows.clone(),
                            h,
                            c,
                        });
                let first = jobs.next().expect("at least one part");
                let (d_out, w_hh, w_hr, shared) = (&d_layer_out, &w_hh, w_hr.as_ref(), &shared);
                std::thread::scope(|scope| {
                    for part in jobs {
                        scope.spawn(move || {
                            self.backward_part(dir, s, d_out, w_hh, w_hr, shared, part)
                        });
                    }
                    self.backward_part(dir, s, d_out, w_hh, w_hr, shared, first);
                });
                // Every step at once: the weight gradients and the layer input's.
                let d_rec_gates = if gru { &d_rec_gates } else { &d_in_gates };
                let b_ih = column_sums(&d_in_gates, gw);
                let gr = ParamGrads {
                    w_ih: gradient(&d_in_gates, gw, layer_in, in_w),
                    w_hh: gradient(d_rec_gates, gw, &s.h_prev, out),
                    b_hh: if gru {
                        column_sums(d_rec_gates, gw)
                    } else {
                        b_ih.clone()
                    },
                    b_ih,
                    w_hr: match p.w_hr {
                        Some(_) => gradient(&d_h_rows, out, &s.m, hidden),
                        None => Vec::new(),
                    },
                };
                matmul(rows, in_w, gw, &d_in_gates, p.w_ih, &mut d_in, dir > 0);
                T::give_back(d_in_gates);
                grads[slot] = Some(gr);
            }
            d_layer_out = Cow::Owned(d_in);
        }
        Backward {
            input: d_layer_out.into_owned(),
            h0: d_h0,
            c0: d_c0,
            params: grads
                .into_iter()
                .map(|g| g.expect("every slot ran"))
                .collect(),
        }
    }

    /// The backward steps of one layer-direction for the batch rows of `part`, whose `h` and
    /// `c` hold dh and dc: from d_h_n and d_c_n in, to d_h0 and d_c0 out.
    #[allow(clippy::too_many_arguments)]
    fn backward_part(
        &self,
        dir: usize,
        s: &SlotSaved<T>,
        d_layer_out: &[T],
        w_hh: &StepMatrix<T>,
        w_hr: Option<&StepMatrix<T>>,
        g: &BackwardShared<T>,
        part: Part<'_, T>,
    ) {
        let d = self.dims;
        let (hidden, out, gw) = (d.hidden, d.out_size, d.gate_width());
        let (lstm, gru) = (self.cell == Cell::Lstm, self.cell == Cell::Gru);
        let Part {
            rows: range,
            h: dh,
            c: dc,
        } = part;
        let (first, nb) = (range.start, range.len());
        let zeros = |n: usize| vec![T::default(); n];
        let mut dm = zeros(if w_hr.is_some() { nb * hidden } else { 0 });
        let mut d_rec_step = zeros(nb * gw);
        let mut dh_prev = zeros(nb * out);
        let mut direct = zeros(if gru { nb * out } else { 0 });
        let mut active = Vec::with_capacity(nb);
        for step in (0..d.seq_len).rev() {
            // Rows that have ended carry their state: their gradient passes unchanged.
            self.active_rows(step, dir, &range, &mut active);
            if active.is_empty() {
                continue;
            }
            for &(b, row) in &active {
                let lb = b - first;
                let from_output = &d_layer_out[row * d.dirs * out + dir * out..][..out];
                dh[lb * out..(lb + 1) * out]
                    .iter_mut()
                    .zip(from_output)
                    .for_each(|(v, &g)| *v += g);
            }
            if let Some(w_hr) = w_hr {
                // dm = W_hrᵀ dh for the part's rows.
                w_hr.multiply(nb, dh, &mut dm);
                for &(b, row) in &active {
                    let lb = b - first;
                    // SAFETY: row `row` is (t, b) for this part's batch row b, which no other
                    // thread touches; the buffer outlives the scope.
                    unsafe { g.d_h_rows.part(row * out, out) }
                        .copy_from_slice(&dh[lb * out..(lb + 1) * out]);
                }
            }
            // Rows that have ended send nothing through W_hh.
            d_rec_step.fill(T::default());
            for &(b, row) in &active {
                let lb = b - first;
                let units = row * hidden..(row + 1) * hidden;
                let (h_prev, hn): (&[T], &[T]) = match gru {
                    true => (&s.h_prev[row * out..(row + 1) * out], &s.hn[units.clone()]),
                    false => (&[], &[]),
                };
                let (c_prev, c, dcb): (&[T], &[T], &mut [T]) = match lstm {
                    true => (
                        &s.c_prev[units.clone()],
                        &s.c[units],
                        &mut dc[lb * hidden..(lb + 1) * hidden],
                    ),
                    false => (&[], &[], &mut []),
                };
                // SAFETY: as for d_h_rows above (d_rec_gates is empty unless the cell is a
                // GRU).
                let (din, drec) =
                    unsafe { (g.d_in_gates.row(row, gw), g.d_rec_gates.row(row, gw)) };
                let direct: &mut [T] = match gru {
                    true => &mut direct[lb * out..(lb + 1) * out],
                    false => &mut [],
                };
                backward_row_best(
                    self.cell,
                    BackwardRow {
                        gates: &s.gates[row * gw..(row + 1) * gw],
                        dh: match w_hr {
                            Some(_) => &dm[lb * hidden..(lb + 1) * hidden],
                            None => &dh[lb * out..(lb + 1) * out],
                        },
                        c_prev,
                        c,
                        dc: dcb,
                        h_prev,
                        hn,
                        din: &mut *din,
                        drec: &mut *drec,
                        direct,
                    },
                );
                let rec_side = if gru { drec } else { din };
                d_rec_step[lb * gw..(lb + 1) * gw].copy_from_slice(rec_side);
            }
            // dh_{t-1} = W_hhᵀ · (recurrent gate gradients) (+ z ⊙ dh for a GRU).
            w_hh.multiply(nb, &d_rec_step, &mut dh_prev);
            for &(b, _) in &active {
                let lb = b - first;
                let dhb = &mut dh[lb * out..(lb + 1) * out];
                dhb.copy_from_slice(&dh_prev[lb * out..(lb + 1) * out]);
                if gru {
                    dhb.iter_mut()
                        .zip(&direct[lb * out..(lb + 1) * out])
                        .for_each(|(v, &x)| *v += x);
                }
            }
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
        threads: Option<usize>,
    }

    fn random(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    impl Owned {
        fn net<'a>(
            &'a self,
            cell: Cell,
            dims: Dims,
            lengths: &'a [usize],
            bias: bool,
        ) -> Net<'a, f64> {
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
                threads: self.threads,
            }
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Every gradient (input, h0, c0, each parameter) against central differences of the loss
    /// Σ output ⊙ g_out + Σ h_n ⊙ g_h + Σ c_n ⊙ g_c, in f64, with the batch split over
    /// threads in several ways.
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
                // The batch split over 1, 2 and 3 threads (as far as it has rows).
                threads: Some(1 + k % 3),
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
            assert_eq!(kept, saved_len(cell, &dims), "case {k}");
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
