//! Backpropagation through time on CUDA, in f32 from the reserve.
//!
//! Per layer (last first) and direction, per step from the last: the gate gradients of the
//! step's rows, then dh_{t-1} += W_hhᵀ·(those rows) as one GEMM. The fused path turns dh, dc
//! and the saved activations into gate gradients with one kernel per step (plus, for an LSTM
//! with projection, one kernel and the W_hr GEMM) and keeps them for every row, so that each
//! weight gradient, the bias gradients and the layer input's gradient are one GEMM per
//! layer-direction after the loop. The naive path runs the same math as one kernel per
//! elementwise op and accumulates the weight gradients with GEMMs at every step, as an unfused
//! autograd of the unrolled graph would.

use super::super::arena::Arena;
use super::{act_code, cell_code, finished, slot_weights, upload_lengths, Kernels, Saved};
use crate::device::kernels::ids;
use crate::device::launch::{launch, per_element};
use crate::device::{data_ptr, dev_ptr, reading, Batched, CudaDevice, Lane, MatRef, Op, Strided};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::recurrent::{Cell, Dims, DirectionGradients, DirectionWeights, Gradients};
use crate::tensor::Tensor;
use cudarc::driver::CudaFunction;
use std::sync::Arc;

/// An f32 row-major matrix at `ptr` with leading dimension `ld`.
fn f32_mat(ptr: u64, ld: usize) -> MatRef {
    MatRef {
        ptr,
        ld,
        dtype: DType::F32,
    }
}

/// C[m, n] (f32, leading dimension n) = op(A)·op(B) + beta·C.
///
/// # Safety
/// As `Lane::gemm_batched` for one matrix each: `a` and `b` hold op(A) [m, k] and op(B) [k, n]
/// at their leading dimensions, and `c` m·n f32, all in live buffers on the lane's device.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    lane: &Lane,
    (m, n, k): (usize, usize, usize),
    a: MatRef,
    a_op: Op,
    b: MatRef,
    b_op: Op,
    c: u64,
    beta: f32,
) -> Result<()> {
    let one = |mat: MatRef| Strided { mat, stride: 0 };
    // SAFETY: a batch of one (stride 0) is exactly the three matrices the caller's contract
    // covers; c is f32 with leading dimension n.
    unsafe {
        lane.gemm_batched(&Batched {
            count: 1,
            m,
            n,
            k,
            a: one(a),
            a_op,
            b: one(b),
            b_op,
            c: one(f32_mat(c, n)),
            beta,
        })
    }
}

/// The address `elems` f32 elements past `base`.
fn at(base: u64, elems: usize) -> u64 {
    base + 4 * elems as u64
}

/// The operands of the weight gradients over some rows (every row, or one step's): the gate
/// gradients [rows, G·H] (input and hidden side), the layer input [rows, in], h_{t-1}
/// [rows, O] and, with a projection, the projected h's gradient [rows, O] and the h before it
/// [rows, H].
struct GradientRows {
    rows: usize,
    dgate: u64,
    dgate_h: u64,
    x: u64,
    hprev: u64,
    dh: u64,
    m: u64,
}

/// The naive path's kernels (kernels/elementwise.cu and recurrent_train.cu).
struct NaiveKernels {
    gather: CudaFunction,
    unary: CudaFunction,
    binary: CudaFunction,
    mask: CudaFunction,
    carry: CudaFunction,
    scatter: CudaFunction,
}

/// `binary_naive_f32`'s op codes (kernels/elementwise.cu).
const OP_ADD: i32 = 0;
const OP_MUL: i32 = 1;
const OP_SUB: i32 = 2;
const OP_DTANH: i32 = 3;
const OP_DSIGMOID: i32 = 4;
const OP_DRELU: i32 = 5;

/// One layer-direction's backward inputs and outputs, all f32 device addresses.
struct Slot {
    reverse: i32,
    /// This direction's columns of the layer output's gradient, leading dimension D·O.
    dy: u64,
    /// The layer input [rows, in] f32 and its gradient (accumulated over directions).
    x: u64,
    dx: u64,
    input: usize,
    /// Saved activations.
    act: u64,
    aux: u64,
    hprev: u64,
    m: u64,
    c0: u64,
    /// f32 weights: w_ih [G·H, in], w_hh [G·H, O], w_hr [O, H] (0 without projection).
    w_ih: u64,
    w_hh: u64,
    w_hr: u64,
    /// dh [B, O] and dc [B, H] entering the last step; they leave holding dh0 and dc0.
    dh: [u64; 2],
    dc: u64,
    /// Gradients [G·H, in], [G·H, O], [G·H] × 2, [O, H].
    g_w_ih: u64,
    g_w_hh: u64,
    g_b_ih: u64,
    g_b_hh: u64,
    g_w_hr: u64,
}

/// The scratch of the step loop.
struct Work {
    /// Gate gradients of every row [rows, G·H] (the GRU's hidden side separately).
    dgate: u64,
    dgate_h: u64,
    /// This step's rows of them [B, G·H] (the GRU: input side, then hidden side).
    dstep: u64,
    dstep_h: u64,
    /// Projection: the projected h's gradient per step [B, O] and per row [rows, O], and the
    /// pre-projection h's [B, H].
    dht: u64,
    dh_rows: u64,
    dm: u64,
    /// Ones [max(rows, B)] for bias gradients.
    ones: u64,
    /// The naive path's [B, ·] temporaries.
    tmp: [u64; 8],
    x_t: u64,
    dx_t: u64,
}

struct Backward<'a> {
    dev: &'a CudaDevice,
    lane: &'a Lane,
    cell: Cell,
    dims: Dims,
    lengths: u64,
    naive: Option<NaiveKernels>,
    step_fn: CudaFunction,
    projection_fn: CudaFunction,
    work: Work,
}

impl Backward<'_> {
    /// Backpropagates one layer-direction.
    ///
    /// # Safety
    /// Every address of `s` and `self.work` is a live f32 buffer of the size its comment states
    /// (0 only where a part is absent: no projection, not an LSTM or GRU, not naive), on the
    /// device of `self.lane`; `self.lengths` holds B i32 lengths.
    unsafe fn slot(&self, s: &Slot) -> Result<()> {
        let d = self.dims;
        let (b, h, o, gw, rows) = (d.batch, d.hidden, d.out_size, d.gate_width(), d.rows());
        let w = &self.work;
        let gru = self.cell == Cell::Gru;
        let dgate_h = if gru { w.dgate_h } else { w.dgate };
        // The fused kernel leaves the hidden side's step gradients in dstep; the naive chain
        // keeps both sides of a GRU.
        let dstep_h = if gru && self.naive.is_some() {
            w.dstep_h
        } else {
            w.dstep
        };
        let lane = self.lane;
        // f32 buffers that are accumulated into or only partly written start at zero: the
        // fused path's gate gradients of every row (rows that end early are never written),
        // the naive path's weight gradients (summed step by step), and the projection's
        // per-row dh.
        let mut zero = match self.naive {
            None => vec![(w.dgate, rows * gw)],
            Some(_) => vec![
                (s.g_w_ih, gw * s.input),
                (s.g_w_hh, gw * o),
                (s.g_b_ih, gw),
                (s.g_b_hh, gw),
            ],
        };
        if gru && self.naive.is_none() {
            zero.push((w.dgate_h, rows * gw));
        }
        if s.w_hr != 0 {
            zero.push((w.dh_rows, rows * o));
            if self.naive.is_some() {
                zero.push((s.g_w_hr, o * h));
            }
        }
        for (ptr, elems) in zero {
            // SAFETY: each pair is one of the caller's buffers (see # Safety) and its f32 size:
            // dgate(_h) [rows, G·H], the gradients [G·H, in], [G·H, O], [G·H], [O, H], dh_rows
            // [rows, O]; the projection's only when w_hr is present.
            unsafe { self.dev.fill_async(ptr, 0, 4 * elems)? };
        }
        let (dy_ld, b32, h32, o32) = ((d.dirs * o) as i32, b as i32, h as i32, o as i32);
        let (st, sb) = d.strides();
        let (st32, sb32) = (st as i32, sb as i32);
        let mut cur = 0;
        for step in (0..d.seq_len).rev() {
            let (dh, dh_next) = (s.dh[cur], s.dh[1 - cur]);
            let s32 = step as i32;
            if s.w_hr != 0 {
                // SAFETY: the caller's contract (see # Safety): dh and dh_next [B, O], dy this
                // direction's columns of [rows, D·O], dht [B, O], dh_rows [rows, O] (present
                // with the projection); one thread per element of B·O. Then dm [B, H] =
                // dht [B, O] · w_hr [O, H].
                unsafe {
                    launch!(lane.stream, &self.projection_fn, per_element(b * o); dh, s.dy, dy_ld, w.dht, w.dh_rows,
                        dh_next, self.lengths, b32, o32, st32, sb32, s32, s.reverse);
                    gemm(
                        lane,
                        (b, h, o),
                        f32_mat(w.dht, o),
                        Op::AsIs,
                        f32_mat(s.w_hr, h),
                        Op::AsIs,
                        w.dm,
                        0.0,
                    )?;
                }
            }
            match &self.naive {
                None => {
                    let (cell32, act32) = (cell_code(self.cell), act_code(self.cell));
                    let dm = if s.w_hr != 0 { w.dm } else { 0 };
                    let gh = if gru { w.dgate_h } else { 0 };
                    // SAFETY: the caller's contract: the slot's saved act [rows, G·H], aux and
                    // m [rows, H] (0 when absent), hprev [rows, O], c0 [B, H] (LSTM), dy as
                    // above, dh and dh_next [B, O], dc [B, H], dm [B, H] (or 0), dgate and
                    // dgate_h [rows, G·H] (dgate_h a GRU's only, else 0), dstep [B, G·H];
                    // one thread per element of B·H.
                    unsafe {
                        launch!(lane.stream, &self.step_fn, per_element(b * h); cell32, act32, s.act, s.aux, s.hprev,
                            s.c0, s.dy, dy_ld, dh, dh_next, s.dc, dm, w.dgate, gh, w.dstep,
                            self.lengths, b32, h32, st32, sb32, s32, s.reverse)
                    };
                }
                // SAFETY: `naive_step` has this function's contract; self.naive is set, so the
                // naive scratch (tmp, x_t, dx_t, dstep_h) was allocated.
                Some(k) => unsafe { self.naive_step(k, s, step, dh, dh_next)? },
            }
            // dh_{t-1} += W_hhᵀ · (this step's hidden-side gate gradients).
            // SAFETY: dstep_h is dstep or the naive GRU's dstep_h, [B, G·H]; w_hh is the f32
            // [G·H, O] weight; dh_next [B, O] (the caller's contract).
            unsafe {
                gemm(
                    lane,
                    (b, o, gw),
                    f32_mat(dstep_h, gw),
                    Op::AsIs,
                    f32_mat(s.w_hh, o),
                    Op::AsIs,
                    dh_next,
                    1.0,
                )?
            };
            cur = 1 - cur;
        }
        if cur == 1 {
            // dh0 is expected in dh[0].
            // SAFETY: both dh buffers hold B·O f32 (the caller's contract).
            unsafe { self.dev.copy_async(s.dh[0], s.dh[1], 4 * b * o)? };
        }
        if self.naive.is_some() {
            return Ok(());
        }
        // The weight gradients over every row at once; rows a sequence never reaches have zero
        // gate gradients.
        let every_row = GradientRows {
            rows,
            dgate: w.dgate,
            dgate_h,
            x: s.x,
            hprev: s.hprev,
            dh: w.dh_rows,
            m: s.m,
        };
        // SAFETY: `every_row` addresses `rows` rows of each operand: dgate and dgate_h
        // [rows, G·H], x [rows, in], hprev [rows, O], dh_rows [rows, O] and m [rows, H] (the
        // last two with a projection only); the rest is this function's contract.
        unsafe { self.weight_gradients(s, &every_row, 0.0)? };
        // SAFETY: dx [rows, in] += dgate [rows, G·H] · w_ih [G·H, in] (the caller's contract).
        unsafe {
            gemm(
                lane,
                (rows, s.input, gw),
                f32_mat(w.dgate, gw),
                Op::AsIs,
                f32_mat(s.w_ih, s.input),
                Op::AsIs,
                s.dx,
                1.0,
            )
        }
    }

    /// g = Σ over `r`'s rows of each parameter gradient's product (+ beta·g): W_ih's and the
    /// biases' from the input-side gate gradients, W_hh's from the hidden side's, W_hr's from
    /// the projected h's gradient.
    ///
    /// # Safety
    /// As `slot`; `r` addresses `r.rows` rows of each operand (dgate and dgate_h [·, G·H], x
    /// [·, in], hprev [·, O], and with a projection dh [·, O] and m [·, H]), and `r.rows` ≤
    /// max(rows, B), the length of `work.ones`.
    unsafe fn weight_gradients(&self, s: &Slot, r: &GradientRows, beta: f32) -> Result<()> {
        let d = self.dims;
        let (h, o, gw) = (d.hidden, d.out_size, d.gate_width());
        let ones = f32_mat(self.work.ones, 1);
        let products = [
            (s.g_w_ih, s.input, r.dgate, f32_mat(r.x, s.input)),
            (s.g_w_hh, o, r.dgate_h, f32_mat(r.hprev, o)),
            (s.g_b_ih, 1, r.dgate, ones),
            (s.g_b_hh, 1, r.dgate_h, ones),
        ];
        for (g, n, dgate, right) in products {
            let left = f32_mat(dgate, gw);
            // SAFETY: g [G·H, n] += dgateᵀ [G·H, rows] · right [rows, n], where right is x
            // [rows, in], hprev [rows, O] or the ones (a [rows, 1] column, ld 1); the gradient
            // buffers hold G·H·n f32 (the caller's contract).
            unsafe {
                gemm(
                    self.lane,
                    (gw, n, r.rows),
                    left,
                    Op::Transposed,
                    right,
                    Op::AsIs,
                    g,
                    beta,
                )?
            };
        }
        if s.w_hr != 0 {
            let (left, right) = (f32_mat(r.dh, o), f32_mat(r.m, h));
            // SAFETY: g_w_hr [O, H] += dhᵀ [O, rows] · m [rows, H] (the caller's contract).
            unsafe {
                gemm(
                    self.lane,
                    (o, h, r.rows),
                    left,
                    Op::Transposed,
                    right,
                    Op::AsIs,
                    s.g_w_hr,
                    beta,
                )?
            };
        }
        Ok(())
    }

    /// One step of the naive path: the gate gradients as one kernel per elementwise op into
    /// this step's [B, G·H], the carried dh and dc, and this step's share of every weight
    /// gradient and of the input's gradient.
    ///
    /// # Safety
    /// As `slot`, with the naive scratch allocated: tmp 8 × [B, max(G·H, O)], x_t and dx_t
    /// [B, widest layer input], dstep_h [B, G·H]; `step` < T.
    unsafe fn naive_step(
        &self,
        k: &NaiveKernels,
        s: &Slot,
        step: usize,
        dh: u64,
        dh_next: u64,
    ) -> Result<()> {
        let d = self.dims;
        let (b, h, o, gw) = (d.batch, d.hidden, d.out_size, d.gate_width());
        let lane = self.lane;
        let w = &self.work;
        let (st, sb) = d.strides();
        let (b32, st32, sb32, s32) = (b as i32, st as i32, sb as i32, step as i32);
        let lengths = self.lengths;
        let rev = s.reverse;
        // The helpers below launch on the views this function's calls choose, each within a
        // buffer of the caller's contract: a saved [rows, ld] part of the reserve for
        // `gather`'s source, else [B, cols] windows (cols ≤ ld) of the [B, ·] scratch, the
        // step gradients or dh / dc.
        // y [B, cols] = this step's rows of src [rows, ld] (0 for ended rows).
        let gather = |src: u64, ld: usize, y: u64, cols: usize| -> Result<()> {
            let (ld32, c32) = (ld as i32, cols as i32);
            // SAFETY: src is a [rows, ld] f32 part of the reserve or dy, y a [B, cols] f32
            // buffer (see above); one thread per element of B·cols.
            unsafe {
                launch!(lane.stream, &k.gather, per_element(b * cols); src, ld32, y, c32, lengths, b32, c32, st32, sb32,
                    s32, rev)
            };
            Ok(())
        };
        // y = a op c on [B, cols] views with leading dimensions.
        let binary = |a: (u64, usize), c: (u64, usize), y: (u64, usize), cols: usize, op: i32| {
            let (la, lc, ly, c32) = (a.1 as i32, c.1 as i32, y.1 as i32, cols as i32);
            // SAFETY: a, c and y are [B, cols] f32 views at their leading dimensions (see
            // above); one thread per element of B·cols.
            unsafe {
                launch!(lane.stream, &k.binary, per_element(b * cols); a.0, la, c.0, lc, y.0, ly, b32, c32, op)
            };
            Ok::<(), crate::error::Error>(())
        };
        let tanh = |x: u64, y: u64, cols: usize| -> Result<()> {
            let (c32, act) = (cols as i32, crate::ops::recurrent::Activation::Tanh.code());
            // SAFETY: x and y are [B, cols] f32 scratch (see above); one thread per element.
            unsafe {
                launch!(lane.stream, &k.unary, per_element(b * cols); x, c32, y, c32, b32, c32, act)
            };
            Ok(())
        };
        let mask = |y: u64, ld: usize, cols: usize| -> Result<()> {
            let (ld32, c32) = (ld as i32, cols as i32);
            // SAFETY: y is a [B, ld] f32 step gradient (see above); one thread per element of
            // B·cols.
            unsafe {
                launch!(lane.stream, &k.mask, per_element(b * cols); y, ld32, lengths, b32, c32, s32, rev)
            };
            Ok(())
        };
        let carry = |value: u64, prev: u64, out: u64, cols: usize| -> Result<()> {
            let c32 = cols as i32;
            // SAFETY: value (or 0: none), prev and out are [B, cols] f32 (scratch, dh or dc;
            // see above); one thread per element of B·cols.
            unsafe {
                launch!(lane.stream, &k.carry, per_element(b * cols); value, prev, out, lengths, b32, c32, s32, rev)
            };
            Ok(())
        };
        let [g, aux, hp, dy, dht, t1, t2, t3] = w.tmp;
        let (ds, dsh) = (w.dstep, w.dstep_h);
        let gate = |base: u64, n: usize| (at(base, n * h), gw);
        let plain = |p: u64| (p, h);
        gather(s.act, gw, g, gw)?;
        // The gradient of this step's h (before W_hr with a projection: the projection
        // kernel and GEMM made it).
        let dht = match s.w_hr {
            0 => {
                gather(s.dy, d.dirs * o, dy, o)?;
                binary(plain(dh), plain(dy), plain(dht), h, OP_ADD)?;
                dht
            }
            _ => w.dm,
        };
        match self.cell {
            Cell::Rnn(nl) => {
                let op = match nl {
                    crate::Nonlinearity::Tanh => OP_DTANH,
                    crate::Nonlinearity::Relu => OP_DRELU,
                };
                binary(plain(dht), plain(g), (ds, gw), h, op)?;
            }
            Cell::Lstm => {
                gather(s.aux, h, aux, h)?;
                // c_{t-1}: the previous step's c (every row running now ran then), or c0.
                match step {
                    // SAFETY: t3 holds B·max(G·H, O) ≥ B·H f32 and the slot's c0 B·H f32.
                    0 => unsafe { self.dev.copy_async(t3, s.c0, 4 * b * h)? },
                    _ => {
                        let (ld32, c32, p32) = (h as i32, h as i32, s32 - 1);
                        // SAFETY: gathers step − 1's rows of aux [rows, H] into t3 (≥ B·H
                        // f32); one thread per element of B·H.
                        unsafe {
                            launch!(lane.stream, &k.gather, per_element(b * h); s.aux, ld32, t3, c32, lengths, b32,
                                c32, st32, sb32, p32, rev)
                        };
                    }
                }
                tanh(aux, t1, h)?; // tanh(c_t)
                binary(plain(dht), plain(t1), plain(t2), h, OP_MUL)?; // dh ⊙ tanh(c)
                binary(plain(t2), gate(g, 3), gate(ds, 3), h, OP_DSIGMOID)?; // d o
                binary(plain(dht), gate(g, 3), plain(t2), h, OP_MUL)?; // dh ⊙ o
                binary(plain(t2), plain(t1), plain(t2), h, OP_DTANH)?;
                binary(plain(t2), plain(s.dc), plain(t2), h, OP_ADD)?; // dc_t
                binary(plain(t2), gate(g, 2), plain(t1), h, OP_MUL)?;
                binary(plain(t1), gate(g, 0), gate(ds, 0), h, OP_DSIGMOID)?; // d i
                binary(plain(t2), plain(t3), plain(t1), h, OP_MUL)?;
                binary(plain(t1), gate(g, 1), gate(ds, 1), h, OP_DSIGMOID)?; // d f
                binary(plain(t2), gate(g, 0), plain(t1), h, OP_MUL)?;
                binary(plain(t1), gate(g, 2), gate(ds, 2), h, OP_DTANH)?; // d g
                binary(plain(t2), gate(g, 1), plain(t1), h, OP_MUL)?; // dc_{t-1}
                carry(t1, s.dc, s.dc, h)?;
            }
            Cell::Gru => {
                gather(s.aux, h, aux, h)?;
                gather(s.hprev, o, hp, h)?;
                binary(plain(hp), gate(g, 2), plain(t1), h, OP_SUB)?; // h_{t-1} − n
                binary(plain(dht), plain(t1), plain(t1), h, OP_MUL)?; // d z
                binary(plain(t1), gate(g, 1), gate(ds, 1), h, OP_DSIGMOID)?;
                binary(plain(t1), gate(g, 1), gate(dsh, 1), h, OP_DSIGMOID)?;
                binary(plain(dht), gate(g, 1), plain(t1), h, OP_MUL)?; // dh ⊙ z (carried)
                binary(plain(dht), plain(t1), plain(t2), h, OP_SUB)?; // d n
                binary(plain(t2), gate(g, 2), gate(ds, 2), h, OP_DTANH)?;
                binary(gate(ds, 2), gate(g, 0), gate(dsh, 2), h, OP_MUL)?;
                binary(gate(ds, 2), plain(aux), plain(t2), h, OP_MUL)?; // d r
                binary(plain(t2), gate(g, 0), gate(ds, 0), h, OP_DSIGMOID)?;
                binary(plain(t2), gate(g, 0), gate(dsh, 0), h, OP_DSIGMOID)?;
                mask(dsh, gw, gw)?;
            }
        }
        mask(ds, gw, gw)?;
        if s.w_hr == 0 {
            let direct = if self.cell == Cell::Gru { t1 } else { 0 };
            carry(direct, dh, dh_next, o)?;
        }
        // This step's share of every gradient.
        gather(s.x, s.input, w.x_t, s.input)?;
        gather(s.hprev, o, hp, o)?;
        if s.w_hr != 0 {
            gather(s.m, h, aux, h)?;
        }
        let step_rows = GradientRows {
            rows: b,
            dgate: ds,
            dgate_h: if self.cell == Cell::Gru { dsh } else { ds },
            x: w.x_t,
            hprev: hp,
            dh: w.dht,
            m: aux,
        };
        // SAFETY: `step_rows` addresses B rows of each operand (B ≤ max(rows, B)): ds and dsh
        // [B, G·H], x_t [B, in], hp [B, O] (tmp, ≥ B·O), dht [B, O], aux [B, H] (tmp, ≥ B·H).
        unsafe { self.weight_gradients(s, &step_rows, 1.0)? };
        // SAFETY: dx_t [B, in] (x_t's size, in ≤ widest) = ds [B, G·H] · w_ih [G·H, in]; the
        // scatter adds its rows into this step's rows of dx [rows, in], one thread per element.
        unsafe {
            gemm(
                lane,
                (b, s.input, gw),
                f32_mat(ds, gw),
                Op::AsIs,
                f32_mat(s.w_ih, s.input),
                Op::AsIs,
                w.dx_t,
                0.0,
            )?;
            let (ld32, c32) = (s.input as i32, s.input as i32);
            launch!(lane.stream, &k.scatter, per_element(b * s.input); w.dx_t, s.dx, ld32, lengths, b32, c32, st32,
                sb32, s32, rev);
        }
        Ok(())
    }
}

/// The gradients of Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n (+ Σ c_n ⊙ grad_c_n) on CUDA,
/// from the reserve of a CUDA training-mode forward with the same weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dev: &Arc<CudaDevice>,
    naive: bool,
    cell: Cell,
    dims: Dims,
    lengths: &[usize],
    saved: &Saved,
    weights: &[DirectionWeights],
    grad_output: &Tensor,
    grad_h_n: Option<&Tensor>,
    grad_c_n: Option<&Tensor>,
) -> Result<Gradients> {
    let _queue = dev.lock_queue();
    let stream = dev.stream();
    let lane = &dev.lanes()[0];
    let dtype = saved.dtype();
    let kernels = Kernels::new(dev, dtype)?;
    let lengths_buf = upload_lengths(dev, lengths)?;
    let lengths_ptr = dev_ptr(&lengths_buf, stream);
    let Dims {
        batch: b,
        hidden: h,
        out_size: o,
        dirs,
        layers,
        ..
    } = dims;
    let (rows, gw) = (dims.rows(), dims.gate_width());
    let widest = (0..layers).map(|l| dims.layer_input(l)).max().unwrap_or(0);
    let lstm = cell == Cell::Lstm;
    let mut scratch = Arena::new(dev);
    let naive_kernels = match naive {
        false => None,
        true => {
            let f = |kernel| dev.function(kernel, DType::F32);
            Some(NaiveKernels {
                gather: f(ids::elementwise::GATHER_NAIVE)?,
                unary: f(ids::elementwise::UNARY_NAIVE)?,
                binary: f(ids::elementwise::BINARY_NAIVE)?,
                mask: f(ids::recurrent_train::MASK_ROWS)?,
                carry: f(ids::recurrent_train::CARRY_MASKED)?,
                scatter: f(ids::recurrent_train::SCATTER_ROWS)?,
            })
        }
    };
    let mut tmp = [0u64; 8];
    if naive {
        for t in tmp.iter_mut() {
            *t = scratch.f32(b * gw.max(o))?;
        }
    }
    let work = Work {
        dgate: scratch.f32(rows * gw)?,
        dgate_h: match cell {
            Cell::Gru => scratch.f32(rows * gw)?,
            _ => 0,
        },
        dstep: scratch.f32(b * gw)?,
        dstep_h: scratch.f32(b * gw)?,
        dht: scratch.f32(b * o)?,
        dh_rows: match dims.projected() {
            true => scratch.f32(rows * o)?,
            false => 0,
        },
        dm: scratch.f32(b * h)?,
        ones: scratch.upload(&vec![1.0; rows.max(b)])?,
        tmp,
        x_t: scratch.f32(b * widest)?,
        dx_t: scratch.f32(b * widest)?,
    };
    let run = Backward {
        dev,
        lane,
        cell,
        dims,
        lengths: lengths_ptr,
        naive: naive_kernels,
        step_fn: dev.function(ids::recurrent_train::RECURRENT_BACKWARD_STEP, DType::F32)?,
        projection_fn: dev.function(ids::recurrent_train::PROJECTION_BACKWARD, DType::F32)?,
        work,
    };
    let sw = slot_weights(weights, &dims, dev)?;
    // Every address below is a live buffer allocated here, in the reserve (laid out for
    // `dims`, which the caller checked against the weights) or of a caller tensor checked
    // against `dims` (and the reserve's dtype), each used with the sizes it was allocated for.
    let widen = |scratch: &mut Arena<'_>, t: Option<&Tensor>, n: usize| -> Result<u64> {
        let y = scratch.f32(n)?;
        match t {
            // Read in stream order: the caller may free the tensor once this returns.
            // SAFETY: every call passes n = the tensor's element count (a gradient checked
            // against `dims` in the reserve's dtype); y was just allocated with n f32.
            Some(t) => reading(t.cuda_data()?, stream, |src| unsafe {
                kernels.widen(lane, src, y, n)
            })?,
            // SAFETY: y was just allocated with n f32.
            None => unsafe { dev.fill_async(y, 0, 4 * n)? },
        }
        Ok(y)
    };
    // The f32 copy of a weight (the GEMMs take f32 operands with the f32 gradients).
    let weight32 = |scratch: &mut Arena<'_>, m: MatRef, n: usize| -> Result<u64> {
        let y = scratch.f32(n)?;
        // SAFETY: every call passes a weight of n elements (its shape checked against `dims`,
        // its dtype against the reserve's); y was just allocated with n f32.
        unsafe { kernels.widen(lane, m.ptr, y, n)? };
        Ok(y)
    };
    let states = layers * dirs * b;
    let dh_all = widen(&mut scratch, grad_h_n, states * o)?;
    let dc_all = match lstm {
        true => widen(&mut scratch, grad_c_n, states * h)?,
        false => scratch.f32_zeros(b * h)?,
    };
    let dh_spare = scratch.f32(b * o)?;
    // dY of the layer being run, and the dX it makes (the next layer's dY).
    let mut dy = widen(&mut scratch, Some(grad_output), rows * dirs * o)?;
    let mut params: Vec<Option<DirectionGradients>> = (0..layers * dirs).map(|_| None).collect();
    let mut input_grad = None;
    for layer in (0..layers).rev() {
        let input = dims.layer_input(layer);
        let dx = scratch.f32_zeros(rows * input)?;
        let x = saved.at(saved.layout.inputs[layer], stream);
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let sl = saved.layout.slots[slot];
            let w = &sw[slot];
            let s = Slot {
                reverse: dir as i32,
                dy: at(dy, dir * o),
                x,
                dx,
                input,
                act: saved.at(sl.act, stream),
                aux: sl.aux.map_or(0, |a| saved.at(a, stream)),
                hprev: saved.at(sl.hprev, stream),
                m: sl.m.map_or(0, |a| saved.at(a, stream)),
                c0: match saved.layout.c0 {
                    Some(c0) if lstm => saved.at(c0 + slot * b * h, stream),
                    _ => 0,
                },
                w_ih: weight32(&mut scratch, w.w_ih, gw * input)?,
                w_hh: weight32(&mut scratch, w.w_hh, gw * o)?,
                w_hr: match w.w_hr {
                    Some(m) => weight32(&mut scratch, m, o * h)?,
                    None => 0,
                },
                dh: [at(dh_all, slot * b * o), dh_spare],
                dc: if lstm {
                    at(dc_all, slot * b * h)
                } else {
                    dc_all
                },
                g_w_ih: scratch.f32(gw * input)?,
                g_w_hh: scratch.f32(gw * o)?,
                g_b_ih: scratch.f32(gw)?,
                g_b_hh: scratch.f32(gw)?,
                g_w_hr: scratch.f32(o * h)?,
            };
            // SAFETY: every address of `s` and `run.work` is a buffer of the size `Slot` and
            // `Work` state: dy [rows, D·O] (at this direction's columns), x and dx
            // [rows, in], the reserve's parts of this slot (laid out for `dims`), the f32
            // weights and gradients just allocated, dh this slot of dh_all [L·D, B, O] and
            // dh_spare [B, O], dc this slot of dc_all [L·D, B, H] (or [B, H] zeros); `run`'s
            // scratch was allocated above for `dims` (the naive part when `naive`), and its
            // lengths hold B i32.
            unsafe { run.slot(&s)? };
            let narrow = |src: u64, like: &Tensor| -> Result<Tensor> {
                let out = dev.alloc_output_data(dtype, like.numel())?;
                // SAFETY: src is the f32 gradient of the parameter `like` (as many elements);
                // `out` was just allocated with like.numel() elements of the storage dtype.
                unsafe { kernels.narrow(lane, src, data_ptr(&out, stream), like.numel())? };
                finished(dev, out, like.shape())
            };
            let wt = &weights[slot];
            params[slot] = Some(DirectionGradients {
                w_ih: narrow(s.g_w_ih, &wt.w_ih)?,
                w_hh: narrow(s.g_w_hh, &wt.w_hh)?,
                b_ih: wt.b_ih.as_ref().map(|t| narrow(s.g_b_ih, t)).transpose()?,
                b_hh: wt.b_hh.as_ref().map(|t| narrow(s.g_b_hh, t)).transpose()?,
                w_hr: wt.w_hr.as_ref().map(|t| narrow(s.g_w_hr, t)).transpose()?,
            });
        }
        dy = dx;
        if layer == 0 {
            input_grad = Some(dx);
        }
    }
    let to_tensor = |src: u64, shape: &[usize]| -> Result<Tensor> {
        let n = shape.iter().product();
        let out = dev.alloc_output_data(dtype, n)?;
        // SAFETY: every call passes an f32 buffer of the shape's element count (dx of layer 0
        // [rows, I], dh_all [L·D, B, O], dc_all [L·D, B, H]); `out` was just allocated with n.
        unsafe { kernels.narrow(lane, src, data_ptr(&out, stream), n)? };
        finished(dev, out, shape)
    };
    let input_shape = match dims.batch_first {
        true => [b, dims.seq_len, dims.input_size],
        false => [dims.seq_len, b, dims.input_size],
    };
    let grads = Gradients {
        input: to_tensor(input_grad.expect("at least one layer"), &input_shape)?,
        h0: to_tensor(dh_all, &dims.state_shape())?,
        c0: lstm
            .then(|| to_tensor(dc_all, &dims.cell_shape()))
            .transpose()?,
        params: params
            .into_iter()
            .map(|p| p.expect("every slot ran"))
            .collect(),
    };
    drop(scratch);
    drop(lengths_buf);
    Ok(grads)
}
