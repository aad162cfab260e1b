//! The decoder on CUDA (kernels/decoder.cu and cuBLAS), in f32: the parameters are converted
//! to f32 on the device once per call, so storage in f16 or bf16 changes the inputs and
//! outputs only. The layout and the arithmetic are those of `cpu.rs` (time-major buffers, the
//! same products), so the two paths read alike:
//!
//! per step: one GEMM of h against the stacked [W_hh; decoder_att; f_beta], `decoder_attend`
//! (scores, masked softmax, context, gate; one block per row), the context's share of W_ih,
//! and `decoder_cell`. The embedding's share of W_ih and `fc` are one GEMM each over every
//! step. Nothing is read back inside the loop.
//!
//! full_att's bias shifts every score of a row alike, which the softmax cancels: the kernels
//! leave it out, and its gradient is the sum of the scores' gradients (zero but for rounding).

use super::{Dims, Dropout, Params, Search};
use crate::device::kernels::ids::{decoder as k, decoder_search as search};
use crate::device::launch::{grid_stride, launch, per_row};
use crate::device::{dev_ptr, Batched, CudaDevice, Lane, Op, Strided};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::ops::algo::Algo;
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, CudaSlice};
use std::sync::Arc;

mod graph;
mod naive;

pub use graph::Graphs;
use graph::{Loop, Step};

const F: usize = std::mem::size_of::<f32>();

/// An f32 buffer of this call and its address.
struct Buf {
    slice: CudaSlice<f32>,
    ptr: u64,
}

impl Buf {
    fn new(dev: &CudaDevice, len: usize) -> Result<Self> {
        let slice = dev.alloc_output::<f32>(len.max(1))?;
        let ptr = dev_ptr(&slice, dev.stream());
        Ok(Buf { slice, ptr })
    }

    fn zeroed(dev: &CudaDevice, len: usize) -> Result<Self> {
        let b = Buf::new(dev, len)?;
        // SAFETY: the buffer holds max(len, 1) f32 on `dev`.
        unsafe { dev.fill_async(b.ptr, 0, len * F)? };
        Ok(b)
    }

    /// The f32 copy of `data` (converted on the device).
    fn of(dev: &CudaDevice, data: &CudaData) -> Result<Self> {
        match dev.convert_data(data, DType::F32)? {
            CudaData::F32(slice) => {
                let ptr = dev_ptr(&slice, dev.stream());
                Ok(Buf { slice, ptr })
            }
            _ => unreachable!("converted to f32"),
        }
    }

    fn from_host(dev: &CudaDevice, values: &[f32]) -> Result<Self> {
        let slice = dev.upload(values)?;
        let ptr = dev_ptr(&slice, dev.stream());
        Ok(Buf { slice, ptr })
    }

    /// The address of element `i`.
    fn at(&self, i: usize) -> u64 {
        self.ptr + (i * F) as u64
    }
}

fn ints(dev: &CudaDevice, values: &[usize]) -> Result<(CudaSlice<i32>, u64)> {
    let v: Vec<i32> = values
        .iter()
        .map(|&x| i32::try_from(x))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::TooLarge {
            what: "a decoder's lengths or ids".into(),
            needed: "more than 31 bits".into(),
            limit: "i32::MAX".into(),
        })?;
    let slice = dev.upload(if v.is_empty() { &[0][..] } else { &v })?;
    let ptr = dev_ptr(&slice, dev.stream());
    Ok((slice, ptr))
}

/// A size as the kernels' `int`.
fn int(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::TooLarge {
        what: format!("the decoder's {what}"),
        needed: n.to_string(),
        limit: "i32::MAX (the kernels' indices)".into(),
    })
}

/// C[m, n] = op(A)[m, k] · op(B)[k, n] + beta · C, row-major f32 with leading dimensions.
#[allow(clippy::too_many_arguments)]
fn gemm(
    lane: &Lane,
    (m, n, kk): (usize, usize, usize),
    (a, lda, a_op): (u64, usize, Op),
    (b, ldb, b_op): (u64, usize, Op),
    (c, ldc): (u64, usize),
    beta: f32,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let g = Batched {
        count: 1,
        m,
        n,
        k: kk,
        a: Strided::new(a, lda, DType::F32, 0),
        a_op,
        b: Strided::new(b, ldb, DType::F32, 0),
        b_op,
        c: Strided::new(c, ldc, DType::F32, 0),
        beta,
    };
    // SAFETY: every caller passes addresses into live f32 buffers of this call sized for the
    // shapes and leading dimensions given (the buffers are allocated below from the same dims).
    unsafe { lane.gemm_batched(&g) }
}

/// The kernels of decoder.cu.
struct Kernels {
    rows: CudaFunction,
    mean: CudaFunction,
    gather: CudaFunction,
    attend: CudaFunction,
    cell: CudaFunction,
    batch_major: CudaFunction,
    time_major: CudaFunction,
    cell_backward: CudaFunction,
    attend_backward: CudaFunction,
    column_sums: CudaFunction,
    mean_backward: CudaFunction,
    embedding_backward: CudaFunction,
    row_top: CudaFunction,
    select: CudaFunction,
    reorder: CudaFunction,
    dropout: CudaFunction,
}

impl Kernels {
    fn load(dev: &CudaDevice) -> Result<Self> {
        let f = |kernel| dev.function(kernel, DType::F32);
        Ok(Kernels {
            rows: f(k::DECODER_ROWS)?,
            mean: f(k::DECODER_MEAN)?,
            gather: f(k::DECODER_GATHER)?,
            attend: f(k::DECODER_ATTEND)?,
            cell: f(k::DECODER_CELL)?,
            batch_major: f(k::DECODER_BATCH_MAJOR)?,
            time_major: f(k::DECODER_TIME_MAJOR)?,
            cell_backward: f(k::DECODER_CELL_BACKWARD)?,
            attend_backward: f(k::DECODER_ATTEND_BACKWARD)?,
            column_sums: f(k::DECODER_COLUMN_SUMS)?,
            mean_backward: f(k::DECODER_MEAN_BACKWARD)?,
            embedding_backward: f(k::DECODER_EMBEDDING_BACKWARD)?,
            row_top: f(search::SEARCH_ROW_TOP)?,
            select: f(search::SEARCH_SELECT)?,
            reorder: f(search::SEARCH_REORDER)?,
            dropout: f(crate::device::kernels::ids::dropout::DROPOUT_APPLY)?,
        })
    }
}

/// The parameters in f32 on the device, with the stacked step weights and the LSTM's two
/// biases summed.
pub(crate) struct Weights {
    dev: Arc<CudaDevice>,
    dims: Dims,
    act: i32,
    kernels: Kernels,
    /// In `NAMES` order.
    p: Vec<Buf>,
    /// [W_hh; decoder_att; f_beta] [W, H]
    w_st: Buf,
    /// b_ih + b_hh [4H]
    b_lstm: Buf,
    /// The naive path's kernels, when it runs.
    naive: Option<naive::Kernels>,
}

impl Weights {
    pub fn new(dev: &Arc<CudaDevice>, params: &Params, dims: Dims) -> Result<Self> {
        let kernels = Kernels::load(dev)?;
        let naive = (params.algo == Algo::Naive)
            .then(|| naive::Kernels::load(dev))
            .transpose()?;
        let p: Vec<Buf> = params
            .tensors
            .iter()
            .map(|t| Buf::of(dev, t.cuda_data()?))
            .collect::<Result<_>>()?;
        let (h, a, d) = (dims.hidden, dims.attention, dims.features);
        let w = 4 * h + a + d;
        let w_st = Buf::new(dev, w * h)?;
        let mut at = 0;
        for (i, rows) in [(8, 4 * h), (2, a), (15, d)] {
            // SAFETY: parameter i holds rows·H f32 (its checked shape); w_st holds W·H.
            unsafe { dev.copy_async(w_st.at(at), p[i].ptr, rows * h * F)? };
            at += rows * h;
        }
        // b_ih and b_hh side by side [2, 4H], summed by columns.
        let pair = Buf::new(dev, 8 * h)?;
        // SAFETY: each bias holds 4H f32; `pair` holds 8H.
        unsafe {
            dev.copy_async(pair.ptr, p[9].ptr, 4 * h * F)?;
            dev.copy_async(pair.at(4 * h), p[10].ptr, 4 * h * F)?;
        }
        let b_lstm = Buf::new(dev, 4 * h)?;
        let weights = Weights {
            dev: dev.clone(),
            dims,
            act: params.activation.activation().code(),
            kernels,
            p,
            w_st,
            b_lstm,
            naive,
        };
        weights.column_sums(pair.ptr, 2, 4 * h, 4 * h, weights.b_lstm.ptr, false)?;
        Ok(weights)
    }

    fn lane(&self) -> &Lane {
        &self.dev.lanes()[0]
    }

    /// out[j] (+)= Σ_r x[r·ld + j] for j < n.
    fn column_sums(
        &self,
        x: u64,
        rows: usize,
        n: usize,
        ld: usize,
        out: u64,
        accumulate: bool,
    ) -> Result<()> {
        let stream = self.dev.stream();
        let (x, r, n32, ld, acc) = (
            x,
            rows as i64,
            int("width", n)?,
            int("width", ld)?,
            accumulate as i32,
        );
        // SAFETY: x holds rows·ld f32 with n ≤ ld, out holds n f32 (the callers' buffers).
        unsafe {
            launch!(stream, &self.kernels.column_sums, per_row(n.div_ceil(32), 1, 0); x, r, n32, ld, out, acc)
        };
        Ok(())
    }

    /// y[r·ld + j] = bias[j]: a GEMM output's bias, before the GEMM adds the product.
    fn bias_rows(&self, y: u64, bias: &Buf, rows: usize, n: usize, ld: usize) -> Result<()> {
        let stream = self.dev.stream();
        let (b, r, n32, ld32) = (bias.ptr, rows as i64, int("width", n)?, int("width", ld)?);
        // SAFETY: y holds rows·ld f32 with n ≤ ld; bias holds n.
        unsafe { launch!(stream, &self.kernels.rows, grid_stride(rows * n); y, b, r, n32, ld32) };
        Ok(())
    }

    /// y [rows, n] = x [rows, k] · W[n, k]ᵀ + b for the parameter pair at `w` (weight, then
    /// bias), into `y` (ld n).
    fn linear(
        &self,
        x: (u64, usize),
        rows: usize,
        w: usize,
        (n, kk): (usize, usize),
        y: u64,
    ) -> Result<()> {
        self.bias_rows(y, &self.p[w + 1], rows, n, n)?;
        gemm(
            self.lane(),
            (rows, n, kk),
            (x.0, x.1, Op::AsIs),
            (self.p[w].ptr, kk, Op::Transposed),
            (y, n),
            1.0,
        )
    }
}

/// What the forward keeps on the device (time-major, as `cpu::Run`).
pub(crate) struct Run {
    pub batch: usize,
    pub steps: usize,
    pub keys: usize,
    lens: (CudaSlice<i32>, u64),
    row_steps: (CudaSlice<i32>, u64),
    tokens: (CudaSlice<i32>, u64),
    f: Buf,
    p: Buf,
    mean: Buf,
    h: Buf,
    c: Buf,
    acts: Buf,
    q: Buf,
    alpha: Buf,
    awe: Buf,
    gate: Buf,
    x: Buf,
    /// logits [S·B, V] time-major.
    logits: Buf,
    /// The naive path's attention activations act(encoder_att(f) + decoder_att(h)) per step
    /// [S, B, L, A] (as autograd keeps them); none on the fused path, which recomputes them.
    u: Option<Buf>,
    /// With dropout: the dropped states fc read [S, B, H], and the mask's rate and seed.
    dropped: Option<(Buf, Dropout)>,
}

impl Run {
    /// Whether the naive path made it (its backward must be the naive one).
    pub fn is_naive(&self) -> bool {
        self.u.is_some()
    }

    /// The states `fc` read [S·B, H]: dropped, or the LSTM's.
    fn fc_input(&self, h: usize) -> u64 {
        self.dropped
            .as_ref()
            .map_or(self.h.at(self.batch * h), |(hd, _)| hd.ptr)
    }
}

/// The forward's outputs as f32 tensors [B, S, V] and [B, S, L], and the run.
pub(crate) struct Forward {
    pub logits: Tensor,
    pub alphas: Tensor,
    pub run: Run,
}

impl Weights {
    /// [B, S, X] of time-major `src` [S, B, X], zero past each row's steps.
    fn batch_major(&self, run: &Run, src: &Buf, width: usize) -> Result<Tensor> {
        let (b, s) = (run.batch, run.steps);
        let out = Buf::new(&self.dev, b * s * width)?;
        let stream = self.dev.stream();
        let (src, st, dst) = (src.ptr, run.row_steps.1, out.ptr);
        let (s32, b32, x32) = (int("steps", s)?, int("batch", b)?, int("width", width)?);
        // SAFETY: src and out hold S·B·X f32; steps holds B ints.
        unsafe {
            launch!(stream, &self.kernels.batch_major, grid_stride(b * s * width); src, st, dst, s32, b32, x32)
        };
        Tensor::from_cuda_data(CudaData::F32(out.slice), &[b, s, width], &self.dev)
    }

    /// A teacher-forced run's buffers, with what every path does first: the ids and lengths
    /// uploaded, the keys in f32 and projected, the initial state, each step's embedding in
    /// its input rows (arguments checked by the caller, ids validated on the host).
    fn start(
        &self,
        features: &Tensor,
        lens: &[usize],
        captions: &[i32],
        lengths: &[usize],
        steps: usize,
        naive: bool,
    ) -> Result<Run> {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let dev = &self.dev;
        let stream = dev.stream();
        let batch = lens.len();
        let len = features.shape()[1];
        let t_len = captions.len() / batch.max(1);
        let rows = steps * batch;
        let row_steps: Vec<usize> = lengths.iter().map(|&n| n - 1).collect();
        let mut tokens = vec![0usize; rows.max(1)];
        for t in 0..steps {
            for b in (0..batch).filter(|&b| t < row_steps[b]) {
                tokens[t * batch + b] = captions[b * t_len + t] as usize;
            }
        }
        let (i_b, i_l, i_d, i_e, i_s) = (
            int("batch", batch)?,
            int("keys", len)?,
            int("key size", d)?,
            int("embedding size", e)?,
            int("steps", steps)?,
        );
        int("gate rows", batch * (4 * h + a + d))?;
        int("attention activations", batch * len * a)?;
        int("attention maps", rows * len)?;
        let run_lens = ints(dev, lens)?;
        let run_steps = ints(dev, &row_steps)?;
        let run_tokens = ints(dev, &tokens)?;
        let f = Buf::of(dev, features.cuda_data()?)?;
        let p = Buf::new(dev, batch * len * a)?;
        self.linear((f.ptr, d), batch * len, 0, (a, d), p.ptr)?;
        let mean = Buf::new(dev, batch * d)?;
        let (lp, mp) = (run_lens.1, mean.ptr);
        // SAFETY: f holds B·L·D f32, lens B ints, mean B·D f32.
        unsafe {
            launch!(stream, &self.kernels.mean, grid_stride(batch * d); f.ptr, lp, mp, i_b, i_l, i_d)
        };
        let hs = Buf::new(dev, (steps + 1) * batch * h)?;
        let cs = Buf::new(dev, (steps + 1) * batch * h)?;
        self.linear((mean.ptr, d), batch, 11, (h, d), hs.ptr)?;
        self.linear((mean.ptr, d), batch, 13, (h, d), cs.ptr)?;

        // Each step's input [embedding; ctx], and the embedding's share of the gates.
        let x = Buf::new(dev, rows * (e + d))?;
        let ldx = int("input width", e + d)?;
        let (emb, tp, sp, xp) = (self.p[6].ptr, run_tokens.1, run_steps.1, x.ptr);
        // SAFETY: emb holds V·E f32; tokens and steps S·B and B ints (ids < V, checked); x
        // holds S·B·(E + D) f32.
        unsafe {
            launch!(stream, &self.kernels.gather, grid_stride(rows * e); emb, tp, sp, xp, i_s, i_b, i_e, ldx)
        };
        Ok(Run {
            batch,
            steps,
            keys: len,
            lens: run_lens,
            row_steps: run_steps,
            tokens: run_tokens,
            f,
            p,
            mean,
            h: hs,
            c: cs,
            acts: Buf::new(dev, rows * 4 * h)?,
            q: Buf::new(dev, rows * a)?,
            alpha: Buf::new(dev, rows * len)?,
            awe: Buf::new(dev, rows * d)?,
            gate: Buf::new(dev, rows * d)?,
            x,
            logits: Buf::new(dev, rows * v)?,
            u: naive.then(|| Buf::new(dev, rows * len * a)).transpose()?,
            dropped: None,
        })
    }

    /// y = x · mask / (1 − p) over n f32 (the mask of `ops::dropout`; y may be x).
    fn drop(&self, x: u64, y: u64, n: usize, drop: Dropout) -> Result<()> {
        let stream = self.dev.stream();
        let (count, seed, threshold, scale) =
            (n as u64, drop.seed, drop.rate.threshold, drop.rate.scale);
        // SAFETY: x and y hold n f32 each (the callers' buffers); a thread per group of four.
        unsafe {
            launch!(stream, &self.kernels.dropout, grid_stride(n.div_ceil(4)); x, y, count, seed, threshold, scale)
        };
        Ok(())
    }

    /// With dropout, the dropped copy of the states `fc` reads [S·B, H] (kept in the run);
    /// the address `fc` reads either way.
    fn dropped_states(&self, run: &mut Run, dropout: Option<Dropout>) -> Result<u64> {
        let (rows, h) = (run.steps * run.batch, self.dims.hidden);
        let states = run.h.at(run.batch * h);
        let Some(drop) = dropout else {
            return Ok(states);
        };
        let hd = Buf::new(&self.dev, rows * h)?;
        self.drop(states, hd.ptr, rows * h, drop)?;
        let ptr = hd.ptr;
        run.dropped = Some((hd, drop));
        Ok(ptr)
    }

    /// The outputs of a finished run, batch-major.
    fn finish(&self, run: Run) -> Result<Forward> {
        Ok(Forward {
            logits: self.batch_major(&run, &run.logits, self.dims.vocab)?,
            alphas: self.batch_major(&run, &run.alpha, run.keys)?,
            run,
        })
    }

    /// The fused teacher-forced forward: per step the stacked GEMM, `decoder_attend`, the
    /// context's GEMM and `decoder_cell`; the embedding's share and `fc` over every step.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        features: &Tensor,
        lens: &[usize],
        captions: &[i32],
        lengths: &[usize],
        steps: usize,
        dropout: Option<Dropout>,
        graphs: Option<&Graphs>,
    ) -> Result<Forward> {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let mut run = self.start(features, lens, captions, lengths, steps, false)?;
        let dev = &self.dev;
        let lane = self.lane();
        let (batch, len) = (run.batch, run.keys);
        let w = 4 * h + a + d;
        let rows = steps * batch;
        let (lp, sp) = (run.lens.1, run.row_steps.1);
        let (hs, cs, x, p, f) = (&run.h, &run.c, &run.x, &run.p, &run.f);
        let (acts, q, alpha, awe, gate) = (&run.acts, &run.q, &run.alpha, &run.awe, &run.gate);
        let xg = Buf::new(dev, rows * 4 * h)?;
        gemm(
            lane,
            (rows, 4 * h, e),
            (x.ptr, e + d, Op::AsIs),
            (self.p[7].ptr, e + d, Op::Transposed),
            (xg.ptr, 4 * h),
            0.0,
        )?;

        let g = Buf::new(dev, batch * w)?;
        let gc = Buf::new(dev, batch * 4 * h)?;
        let l = Loop {
            batch,
            len,
            steps,
            x: x.ptr,
            xg: xg.ptr,
            p: p.ptr,
            f: f.ptr,
            lens: lp,
            row_steps: sp,
            h: hs.ptr,
            c: cs.ptr,
            acts: acts.ptr,
            q: q.ptr,
            alpha: alpha.ptr,
            awe: awe.ptr,
            gate: gate.ptr,
            g: g.ptr,
            gc: gc.ptr,
            weights: self.loop_weights(),
        };
        match graphs {
            Some(graphs) => graphs.run(self, &l)?,
            None => self.issue_loop(lane, &l)?,
        }
        let states = self.dropped_states(&mut run, dropout)?;
        self.linear((states, h), rows, 17, (v, h), run.logits.ptr)?;
        self.finish(run)
    }

    /// [S·B, X] time-major f32 of `t` [B, S, X], zero past each row's steps.
    fn time_major(&self, run: &Run, t: &Tensor) -> Result<Buf> {
        let (b, s) = (run.batch, run.steps);
        let width = t.shape()[2];
        let src = Buf::of(&self.dev, t.cuda_data()?)?;
        let out = Buf::new(&self.dev, b * s * width)?;
        let stream = self.dev.stream();
        let (sp, st, dp) = (src.ptr, run.row_steps.1, out.ptr);
        let (s32, b32, x32) = (int("steps", s)?, int("batch", b)?, int("width", width)?);
        // SAFETY: src and out hold B·S·X f32; steps B ints.
        unsafe {
            launch!(stream, &self.kernels.time_major, grid_stride(b * s * width); sp, st, dp, s32, b32, x32)
        };
        Ok(out)
    }

    /// The gradients (features [B, L, D] and every parameter in `NAMES` order) as f32 tensors.
    pub fn backward(
        &self,
        run: &Run,
        grad_logits: &Tensor,
        grad_alphas: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let dev = &self.dev;
        let stream = dev.stream();
        let lane = self.lane();
        let (batch, steps, len) = (run.batch, run.steps, run.keys);
        let rows = steps * batch;
        let w = 4 * h + a + d;
        let (i_b, i_l, i_d, i_a, i_h, i_w) = (
            int("batch", batch)?,
            int("keys", len)?,
            int("key size", d)?,
            int("attention size", a)?,
            int("hidden size", h)?,
            int("stacked width", w)?,
        );
        let dlogits = self.time_major(run, grad_logits)?;
        let dalpha = grad_alphas.map(|g| self.time_major(run, g)).transpose()?;

        // fc
        let dh_out = Buf::new(dev, rows * h)?;
        gemm(
            lane,
            (rows, h, v),
            (dlogits.ptr, v, Op::AsIs),
            (self.p[17].ptr, h, Op::AsIs),
            (dh_out.ptr, h),
            0.0,
        )?;
        let dw_fc = Buf::new(dev, v * h)?;
        gemm(
            lane,
            (v, h, rows),
            (dlogits.ptr, v, Op::Transposed),
            (run.fc_input(h), h, Op::AsIs),
            (dw_fc.ptr, h),
            0.0,
        )?;
        let db_fc = Buf::new(dev, v)?;
        self.column_sums(dlogits.ptr, rows, v, v, db_fc.ptr, false)?;
        if let Some((_, drop)) = &run.dropped {
            self.drop(dh_out.ptr, dh_out.ptr, rows * h, *drop)?;
        }

        // Through time.
        let dst = Buf::new(dev, rows.max(1) * w)?;
        let dp = Buf::zeroed(dev, batch * len * a)?;
        let df = Buf::zeroed(dev, batch * len * d)?;
        let dwfa = Buf::zeroed(dev, batch * a)?;
        let dbfa = Buf::zeroed(dev, batch)?;
        let dh = Buf::zeroed(dev, batch * h)?;
        let dc = Buf::zeroed(dev, batch * h)?;
        let dctx = Buf::new(dev, batch * d)?;
        let backward_shared = (d + 2 * len) * F;
        for t in (0..steps).rev() {
            let (t32, r) = (t as i32, t * batch);
            let (dho, dhp, dcp, ap) = (dh_out.at(r * h), dh.ptr, dc.ptr, run.acts.at(r * 4 * h));
            let (cp, cn, sp, dg) = (
                run.c.at(r * h),
                run.c.at(r * h + batch * h),
                run.row_steps.1,
                dst.at(r * w),
            );
            // SAFETY: step t's rows of the S·B-row buffers; dh, dc B·H; dg B·W f32.
            unsafe {
                launch!(stream, &self.kernels.cell_backward, grid_stride(batch * h);
                    dho, dhp, dcp, ap, cp, cn, sp, t32, dg, i_b, i_h, i_w)
            };
            gemm(
                lane,
                (batch, d, 4 * h),
                (dg, w, Op::AsIs),
                (self.p[7].at(e), e + d, Op::AsIs),
                (dctx.ptr, d),
                0.0,
            )?;
            let (dx, gp, wp, alp, qp) = (
                dctx.ptr,
                run.gate.at(r * d),
                run.awe.at(r * d),
                run.alpha.at(r * len),
                run.q.at(r * a),
            );
            let (pp, fp, w_fa, lp) = (run.p.ptr, run.f.ptr, self.p[4].ptr, run.lens.1);
            let dap = dalpha.as_ref().map_or(0, |g| g.at(r * len));
            let (dfp, dpp, dwp, dbp, act) = (df.ptr, dp.ptr, dwfa.ptr, dbfa.ptr, self.act);
            // SAFETY: as the forward's attend; dalpha (when given) step t's B·L rows; df, dp,
            // dwfa, dbfa B·L·D, B·L·A, B·A and B f32.
            unsafe {
                launch!(stream, &self.kernels.attend_backward, per_row(batch, 1, backward_shared);
                    dx, gp, wp, alp, qp, pp, fp, w_fa, dap, lp, sp, t32,
                    i_b, i_l, i_d, i_a, i_h, i_w, act, dg, dfp, dpp, dwp, dbp)
            };
            gemm(
                lane,
                (batch, h, w),
                (dg, w, Op::AsIs),
                (self.w_st.ptr, h, Op::AsIs),
                (dh.ptr, h),
                0.0,
            )?;
        }

        // The step weights over every step.
        let dw_st = Buf::new(dev, w * h)?;
        gemm(
            lane,
            (w, h, rows),
            (dst.ptr, w, Op::Transposed),
            (run.h.ptr, h, Op::AsIs),
            (dw_st.ptr, h),
            0.0,
        )?;
        let db_st = Buf::new(dev, w)?;
        self.column_sums(dst.ptr, rows, w, w, db_st.ptr, false)?;
        let dw_ih = Buf::new(dev, 4 * h * (e + d))?;
        gemm(
            lane,
            (4 * h, e + d, rows),
            (dst.ptr, w, Op::Transposed),
            (run.x.ptr, e + d, Op::AsIs),
            (dw_ih.ptr, e + d),
            0.0,
        )?;
        let dx_emb = Buf::new(dev, rows * e)?;
        gemm(
            lane,
            (rows, e, 4 * h),
            (dst.ptr, w, Op::AsIs),
            (self.p[7].ptr, e + d, Op::AsIs),
            (dx_emb.ptr, e),
            0.0,
        )?;
        let dw_ea = Buf::zeroed(dev, a * d)?;
        let db_ea = Buf::zeroed(dev, a)?;
        self.backward_tail(
            run,
            Accumulated {
                dx_emb,
                dh,
                dc,
                df,
                dp: Some(dp),
                dw_ea,
                db_ea,
                dw_fa: dwfa,
                db_fa: dbfa,
                fa_rows: batch,
                dw_st,
                db_st,
                dw_ih,
                dw_fc,
                db_fc,
            },
        )
    }
}

/// What a backward path has summed when it reaches the shared tail.
struct Accumulated {
    /// Each step's embedding gradient [S·B, E].
    dx_emb: Buf,
    /// d h0, d c0 [B, H].
    dh: Buf,
    dc: Buf,
    /// The keys' gradient so far [B, L, D].
    df: Buf,
    /// d encoder_att(f) summed over the steps [B·L, A], for the tail to finish (the fused
    /// path); none when encoder_att's gradients are already in `dw_ea`, `db_ea` and `df`.
    dp: Option<Buf>,
    dw_ea: Buf,
    db_ea: Buf,
    /// full_att's weight and bias gradients in `fa_rows` partial rows ([rows, A], [rows]).
    dw_fa: Buf,
    db_fa: Buf,
    fa_rows: usize,
    /// The stacked step weights' [W, H] and biases' [W] gradients, W_ih's [4H, E + D], fc's.
    dw_st: Buf,
    db_st: Buf,
    dw_ih: Buf,
    dw_fc: Buf,
    db_fc: Buf,
}

impl Weights {
    /// The end of both backward paths: the embedding's gradient, the initial state through
    /// init_h and init_c into the keys' mean, encoder_att (from `dp` when given), and the
    /// gradients as f32 tensors in `NAMES` order (the stacked ones split).
    fn backward_tail(&self, run: &Run, g: Accumulated) -> Result<(Tensor, Vec<Tensor>)> {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let dev = &self.dev;
        let stream = dev.stream();
        let lane = self.lane();
        let (batch, steps, len) = (run.batch, run.steps, run.keys);
        let rows = steps * batch;
        let (i_b, i_l, i_d) = (int("batch", batch)?, int("keys", len)?, int("key size", d)?);
        let demb = Buf::zeroed(dev, v * e)?;
        let (xp, tp, sp, ep) = (g.dx_emb.ptr, run.tokens.1, run.row_steps.1, demb.ptr);
        let (i_s, i_e) = (int("steps", steps)?, int("embedding size", e)?);
        // SAFETY: dx_emb holds S·B·E f32, tokens S·B ids < V, demb V·E f32.
        unsafe {
            launch!(stream, &self.kernels.embedding_backward, grid_stride(rows * e);
                xp, tp, sp, ep, i_s, i_b, i_e, i_e)
        };

        let grads_init = |dstate: &Buf| -> Result<(Buf, Buf)> {
            let dw = Buf::new(dev, h * d)?;
            gemm(
                lane,
                (h, d, batch),
                (dstate.ptr, h, Op::Transposed),
                (run.mean.ptr, d, Op::AsIs),
                (dw.ptr, d),
                0.0,
            )?;
            let db = Buf::new(dev, h)?;
            self.column_sums(dstate.ptr, batch, h, h, db.ptr, false)?;
            Ok((dw, db))
        };
        let (dw_ih0, db_ih0) = grads_init(&g.dh)?;
        let (dw_ic0, db_ic0) = grads_init(&g.dc)?;
        let dmean = Buf::new(dev, batch * d)?;
        gemm(
            lane,
            (batch, d, h),
            (g.dh.ptr, h, Op::AsIs),
            (self.p[11].ptr, d, Op::AsIs),
            (dmean.ptr, d),
            0.0,
        )?;
        gemm(
            lane,
            (batch, d, h),
            (g.dc.ptr, h, Op::AsIs),
            (self.p[13].ptr, d, Op::AsIs),
            (dmean.ptr, d),
            1.0,
        )?;
        let (mp, lp, dfp) = (dmean.ptr, run.lens.1, g.df.ptr);
        // SAFETY: dmean B·D f32, lens B ints, df B·L·D f32.
        unsafe {
            launch!(stream, &self.kernels.mean_backward, grid_stride(batch * len * d);
                mp, lp, dfp, i_b, i_l, i_d)
        };

        if let Some(dp) = &g.dp {
            self.encoder_att_backward(run, dp, &g.dw_ea, &g.db_ea, &g.df, 0.0)?;
        }
        let dw_fa = Buf::new(dev, a)?;
        self.column_sums(g.dw_fa.ptr, g.fa_rows, a, a, dw_fa.ptr, false)?;
        let db_fa = Buf::new(dev, 1)?;
        self.column_sums(g.db_fa.ptr, g.fa_rows, 1, 1, db_fa.ptr, false)?;

        // Split the stacked gradients into the parameters'.
        let part = |src: &Buf, from: usize, n: usize| -> Result<Buf> {
            let out = Buf::new(dev, n)?;
            // SAFETY: src holds at least from + n f32 (the stacked layouts above).
            unsafe { dev.copy_async(out.ptr, src.at(from), n * F)? };
            Ok(out)
        };
        let (dw_st, db_st) = (&g.dw_st, &g.db_st);
        let grads = vec![
            g.dw_ea,
            g.db_ea,
            part(dw_st, 4 * h * h, a * h)?,
            part(db_st, 4 * h, a)?,
            dw_fa,
            db_fa,
            demb,
            g.dw_ih,
            part(dw_st, 0, 4 * h * h)?,
            part(db_st, 0, 4 * h)?,
            part(db_st, 0, 4 * h)?,
            dw_ih0,
            db_ih0,
            dw_ic0,
            db_ic0,
            part(dw_st, (4 * h + a) * h, d * h)?,
            part(db_st, 4 * h + a, d)?,
            g.dw_fc,
            g.db_fc,
        ];
        let params = grads
            .into_iter()
            .zip(self.dims.shapes())
            .map(|(g, shape)| Tensor::from_cuda_data(CudaData::F32(g.slice), &shape, dev))
            .collect::<Result<Vec<_>>>()?;
        let features = Tensor::from_cuda_data(CudaData::F32(g.df.slice), &[batch, len, d], dev)?;
        Ok((features, params))
    }

    /// encoder_att's gradients for dp [B·L, A] into dw_ea and db_ea (`beta` 0 overwrites them,
    /// 1 adds to them), and its share of the keys' gradient added to df.
    fn encoder_att_backward(
        &self,
        run: &Run,
        dp: &Buf,
        dw_ea: &Buf,
        db_ea: &Buf,
        df: &Buf,
        beta: f32,
    ) -> Result<()> {
        let (a, d) = (self.dims.attention, self.dims.features);
        let rows = run.batch * run.keys;
        let lane = self.lane();
        gemm(
            lane,
            (a, d, rows),
            (dp.ptr, a, Op::Transposed),
            (run.f.ptr, d, Op::AsIs),
            (dw_ea.ptr, d),
            beta,
        )?;
        self.column_sums(dp.ptr, rows, a, a, db_ea.ptr, beta != 0.0)?;
        gemm(
            lane,
            (rows, d, a),
            (dp.ptr, a, Op::AsIs),
            (self.p[0].ptr, d, Op::AsIs),
            (df.ptr, d),
            1.0,
        )
    }
}

/// What the search finds: tokens [N, max_len] (−1 after the caption), scores [N], and the
/// attention [N, max_len, L] as an f32 tensor on the device.
pub(crate) struct Found {
    pub tokens: Vec<i64>,
    pub scores: Vec<f32>,
    pub alphas: Tensor,
}

/// An int buffer of `len` copies of `value`.
fn filled(dev: &CudaDevice, len: usize, value: i32) -> Result<(CudaSlice<i32>, u64)> {
    let slice = dev.upload(&vec![value; len.max(1)])?;
    let ptr = dev_ptr(&slice, dev.stream());
    Ok((slice, ptr))
}

impl Weights {
    /// Greedy or beam search for every row of `features` [N, L, D] (checked by the caller),
    /// all on the device: per step the decoder's products and kernels for the N·K live rows,
    /// each row's best K tokens, each image's selection, the state reordered; one int (the live
    /// count) read back per step, the history read back once at the end.
    pub fn decode(&self, features: &Tensor, lens: &[usize], s: Search) -> Result<Found> {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let dev = &self.dev;
        let stream = dev.stream();
        let lane = self.lane();
        let (n, kb, max_len) = (lens.len(), s.beam, s.max_len);
        let len = features.shape()[1];
        let rows = n * kb;
        let w = 4 * h + a + d;
        if kb > 64 {
            return Err(Error::Unsupported {
                request: format!("beam {kb} on CUDA"),
                reason: "the device search keeps at most 64 hypotheses per image".into(),
            });
        }
        let (i_n, i_k, i_l, i_d, i_h, i_e, i_v, i_r) = (
            int("batch", n)?,
            int("beam", kb)?,
            int("keys", len)?,
            int("key size", d)?,
            int("hidden size", h)?,
            int("embedding size", e)?,
            int("vocabulary", v)?,
            int("hypotheses", rows)?,
        );
        int("attention history", max_len * rows * len)?;
        int("stacked rows", rows * w)?;
        let (i_end, i_max) = (int("end", s.end)?, int("max_len", max_len)?);
        let lens_d = ints(dev, lens)?;
        let image: Vec<usize> = (0..rows).map(|r| r / kb).collect();
        let image_d = ints(dev, &image)?;
        let f = Buf::of(dev, features.cuda_data()?)?;
        let p = Buf::new(dev, n * len * a)?;
        self.linear((f.ptr, d), n * len, 0, (a, d), p.ptr)?;
        let mean = Buf::new(dev, n * d)?;
        let (lp, mp) = (lens_d.1, mean.ptr);
        // SAFETY: f holds N·L·D f32, lens N ints, mean N·D f32.
        unsafe {
            launch!(stream, &self.kernels.mean, grid_stride(n * d); f.ptr, lp, mp, i_n, i_l, i_d)
        };
        let (h0, c0) = (Buf::new(dev, n * h)?, Buf::new(dev, n * h)?);
        self.linear((mean.ptr, d), n, 11, (h, d), h0.ptr)?;
        self.linear((mean.ptr, d), n, 13, (h, d), c0.ptr)?;

        // Each image's start in its first row; the others idle.
        let rows_d = filled(dev, n, 1)?;
        let slots_d = filled(dev, n, i_k)?;
        let tokens = filled(dev, rows, int("start", s.start)?)?;
        let first: Vec<usize> = (0..rows).map(|r| r / kb).collect();
        let parent = ints(dev, &first)?;
        let (hs, cs) = (Buf::new(dev, rows * h)?, Buf::new(dev, rows * h)?);
        self.reorder(&h0, parent.1, rows_d.1, &hs, (i_n, i_k, i_h))?;
        self.reorder(&c0, parent.1, rows_d.1, &cs, (i_n, i_k, i_h))?;
        let mut scores = Buf::zeroed(dev, rows)?;
        let mut next_scores = Buf::zeroed(dev, rows)?;

        let x = Buf::new(dev, rows * (e + d))?;
        let xg = Buf::new(dev, rows * 4 * h)?;
        let g = Buf::new(dev, rows * w)?;
        let gc = Buf::new(dev, rows * 4 * h)?;
        let (q, awe, gate) = (
            Buf::new(dev, rows * a)?,
            Buf::new(dev, rows * d)?,
            Buf::new(dev, rows * d)?,
        );
        let alpha = Buf::new(dev, rows * len)?;
        let (h_new, c_new) = (Buf::new(dev, rows * h)?, Buf::new(dev, rows * h)?);
        let logits = Buf::new(dev, rows * v)?;
        let (top_v, top_i) = (Buf::new(dev, rows * kb)?, filled(dev, rows * kb, 0)?);
        let fin_count = filled(dev, n, 0)?;
        let fin_score = Buf::new(dev, rows)?;
        let (fin_step, fin_parent, fin_token) = (
            filled(dev, rows, 0)?,
            filled(dev, rows, 0)?,
            filled(dev, rows, 0)?,
        );
        let fin_alpha = Buf::zeroed(dev, rows * len)?;
        let hist_token = filled(dev, max_len * rows, -1)?;
        let hist_parent = filled(dev, max_len * rows, 0)?;
        let hist_alpha = Buf::zeroed(dev, max_len * rows * len)?;
        let live_count = filled(dev, 1, 0)?;
        let ldx = int("input width", e + d)?;
        let (one, null) = (1i32, 0u64);
        let warps = crate::device::launch::THREADS as usize / 32;
        let mut flag = [0i32; 1];
        let naive = self
            .naive
            .is_some()
            .then(|| naive::SearchScratch::new(self, n, rows, len))
            .transpose()?;

        for step in 0..max_len {
            let (emb, tp, xp) = (self.p[6].ptr, tokens.1, x.ptr);
            // SAFETY: emb V·E f32; tokens R ids < V (the start, then chosen tokens); x R·(E + D).
            unsafe {
                launch!(stream, &self.kernels.gather, grid_stride(rows * e); emb, tp, null, xp, one, i_r, i_e, ldx)
            };
            match &naive {
                Some(scratch) => {
                    let step = naive::SearchStep {
                        rows,
                        beam: kb,
                        len,
                        x: x.ptr,
                        h: hs.ptr,
                        c: cs.ptr,
                        f: f.ptr,
                        lens: lp,
                        h_new: h_new.ptr,
                        c_new: c_new.ptr,
                        alpha: alpha.ptr,
                    };
                    self.naive_search_step(&step, scratch)?;
                }
                None => {
                    gemm(
                        lane,
                        (rows, 4 * h, e),
                        (x.ptr, e + d, Op::AsIs),
                        (self.p[7].ptr, e + d, Op::Transposed),
                        (xg.ptr, 4 * h),
                        0.0,
                    )?;
                    let step = Step {
                        rows,
                        len,
                        t: 0,
                        h_prev: hs.ptr,
                        c_prev: cs.ptr,
                        h_new: h_new.ptr,
                        c_new: c_new.ptr,
                        x: x.ptr,
                        xg: xg.ptr,
                        q: q.ptr,
                        alpha: alpha.ptr,
                        awe: awe.ptr,
                        gate: gate.ptr,
                        acts: 0,
                        p: p.ptr,
                        f: f.ptr,
                        lens: lp,
                        row_steps: 0,
                        image: image_d.1,
                        g: g.ptr,
                        gc: gc.ptr,
                    };
                    self.fused_step(lane, self.loop_weights(), &step)?;
                }
            }
            self.linear((h_new.ptr, h), rows, 17, (v, h), logits.ptr)?;
            let (lg, rp, tv, ti) = (logits.ptr, rows_d.1, top_v.ptr, top_i.1);
            // SAFETY: logits R·V f32, rows N ints, top_v/top_i R·K.
            unsafe {
                launch!(stream, &self.kernels.row_top, per_row(rows, 1, 2 * warps * F);
                    lg, rp, i_v, i_k, tv, ti)
            };
            // SAFETY: one int.
            unsafe { dev.fill_async(live_count.1, 0, 4)? };
            let (sc, al, sl, fc) = (scores.ptr, alpha.ptr, slots_d.1, fin_count.1);
            let (fs, fst, fpa, ftk, fal) = (
                fin_score.ptr,
                fin_step.1,
                fin_parent.1,
                fin_token.1,
                fin_alpha.ptr,
            );
            let (nt, ns, pa, ht, hp, ha, lc) = (
                tokens.1,
                next_scores.ptr,
                parent.1,
                hist_token.1,
                hist_parent.1,
                hist_alpha.ptr,
                live_count.1,
            );
            let i_step = step as i32;
            // SAFETY: the candidates R·K; scores, next_scores R f32; alpha R·L; rows, slots,
            // fin_count N ints; fin_* N·K entries (at most K finish per image); tokens, parent
            // R; the history max_len·R (·L); step < max_len.
            unsafe {
                launch!(stream, &self.kernels.select, per_row(n, 1, 2 * kb * kb * F);
                    tv, ti, sc, al, rp, sl, fc, fs, fst, fpa, ftk, fal, nt, ns, pa, ht, hp, ha, lc,
                    i_n, i_k, i_v, i_l, i_step, i_max, i_end)
            };
            self.reorder(&h_new, parent.1, rows_d.1, &hs, (i_n, i_k, i_h))?;
            self.reorder(&c_new, parent.1, rows_d.1, &cs, (i_n, i_k, i_h))?;
            std::mem::swap(&mut scores, &mut next_scores);
            // The one read per step (pageable memory: the copy waits for the step).
            stream.memcpy_dtoh(&live_count.0, &mut flag[..])?;
            if flag[0] == 0 {
                break;
            }
        }

        // Each image's best finished hypothesis, walked back through the history.
        let (counts, fin_scores) = (
            stream.clone_dtoh(&fin_count.0)?,
            stream.clone_dtoh(&fin_score.slice)?,
        );
        let (steps_h, parents_h, tokens_h) = (
            stream.clone_dtoh(&fin_step.0)?,
            stream.clone_dtoh(&fin_parent.0)?,
            stream.clone_dtoh(&fin_token.0)?,
        );
        let fin_alphas = stream.clone_dtoh(&fin_alpha.slice)?;
        let (ht, hp, ha) = (
            stream.clone_dtoh(&hist_token.0)?,
            stream.clone_dtoh(&hist_parent.0)?,
            stream.clone_dtoh(&hist_alpha.slice)?,
        );
        let mut out_tokens = vec![-1i64; n * max_len];
        let mut out_scores = vec![f32::NAN; n];
        let mut out_alphas = vec![0f32; n * max_len * len];
        for img in 0..n {
            let done = counts[img] as usize;
            let Some(best) = (0..done).fold(None::<usize>, |b, f| match b {
                Some(b) if fin_scores[img * kb + b] >= fin_scores[img * kb + f] => Some(b),
                _ => Some(f),
            }) else {
                continue;
            };
            let at = img * kb + best;
            out_scores[img] = fin_scores[at];
            let last = steps_h[at] as usize;
            out_tokens[img * max_len + last] = tokens_h[at] as i64;
            out_alphas[(img * max_len + last) * len..][..len]
                .copy_from_slice(&fin_alphas[at * len..][..len]);
            let mut rank = parents_h[at] as usize;
            for step in (0..last).rev() {
                let r = step * rows + img * kb + rank;
                out_tokens[img * max_len + step] = ht[r] as i64;
                out_alphas[(img * max_len + step) * len..][..len]
                    .copy_from_slice(&ha[r * len..][..len]);
                rank = hp[r] as usize;
            }
        }
        let alphas = Tensor::from_vec(out_alphas, &[n, max_len, len])?
            .to(&crate::Device::Cuda(dev.clone()), DType::F32)?;
        Ok(Found {
            tokens: out_tokens,
            scores: out_scores,
            alphas,
        })
    }

    /// dst [N·K, H] = src rows by `parent` for each image's live rows, idle rows zero.
    fn reorder(
        &self,
        src: &Buf,
        parent: u64,
        rows: u64,
        dst: &Buf,
        (n, k, h): (i32, i32, i32),
    ) -> Result<()> {
        let stream = self.dev.stream();
        let (s, d) = (src.ptr, dst.ptr);
        let total = (n as usize) * (k as usize) * (h as usize);
        // SAFETY: parent and rows hold N·K and N ints, parents index rows of src (its N·K or,
        // for the first step, N rows of H f32); dst holds N·K·H f32.
        unsafe {
            launch!(stream, &self.kernels.reorder, grid_stride(total); s, parent, rows, d, n, k, h)
        };
        Ok(())
    }
}
