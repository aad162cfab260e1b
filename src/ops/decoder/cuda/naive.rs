//! The naive decoder on CUDA: one operation per line of `DecoderWithAttention`'s PyTorch code,
//! as eager PyTorch runs it, for comparison with the fused path. Per step: encoder_att(f)
//! again, decoder_att(h), the broadcast add, the activation, full_att, the masked softmax, the
//! weighted sum (a batched GEMM), f_beta(h), the sigmoid, the gating product, the LSTM cell's
//! two GEMMs and its gates, and fc. The backward mirrors autograd: per step every one of those
//! backwards, weight gradients included. It shares the fused path's buffers and its tail.

use super::{gemm, int, Accumulated, Buf, Dropout, Forward, Run, Weights, F};
use crate::device::kernels::codes::{ACT_SIGMOID, OP_DRELU, OP_DSIGMOID, OP_DTANH, OP_MUL};
use crate::device::kernels::ids;
use crate::device::launch::{grid_stride, launch, per_element, per_row};
use crate::device::{Batched, Op, Strided};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use cudarc::driver::CudaFunction;

/// The one-op kernels the naive path chains.
pub(super) struct Kernels {
    unary: CudaFunction,
    binary: CudaFunction,
    broadcast_add: CudaFunction,
    softmax: CudaFunction,
    softmax_backward: CudaFunction,
}

impl Kernels {
    pub fn load(dev: &crate::device::CudaDevice) -> Result<Self> {
        let f = |k| dev.function(k, DType::F32);
        Ok(Kernels {
            unary: f(ids::elementwise::UNARY_NAIVE)?,
            binary: f(ids::elementwise::BINARY_NAIVE)?,
            broadcast_add: f(ids::attention::BROADCAST_ADD_NAIVE)?,
            softmax: f(ids::attention::MASKED_SOFTMAX_NAIVE)?,
            softmax_backward: f(ids::attention_backward::SOFTMAX_BACKWARD_NAIVE)?,
        })
    }
}

/// A row-major f32 matrix operand: address, leading dimension, distance to the next of a batch.
type Mat = (u64, usize, usize);

impl Weights {
    fn naive(&self) -> Result<&Kernels> {
        self.naive
            .as_ref()
            .ok_or_else(|| crate::error::Error::Unsupported {
                request: "the naive decoder".into(),
                reason: "its kernels were not loaded (Algo::Naive loads them)".into(),
            })
    }

    /// For i < count: C_i [m, n] = op(A_i) · op(B_i) + beta · C_i.
    #[allow(clippy::too_many_arguments)]
    fn batched(
        &self,
        count: usize,
        (m, n, k): (usize, usize, usize),
        (a, a_op): (Mat, Op),
        (b, b_op): (Mat, Op),
        c: Mat,
        beta: f32,
    ) -> Result<()> {
        let g = Batched {
            count,
            m,
            n,
            k,
            a: Strided::new(a.0, a.1, DType::F32, a.2),
            a_op,
            b: Strided::new(b.0, b.1, DType::F32, b.2),
            b_op,
            c: Strided::new(c.0, c.1, DType::F32, c.2),
            beta,
        };
        // SAFETY: the callers pass matrices of this call's buffers, sized for the batch.
        unsafe { self.lane().gemm_batched(&g) }
    }

    /// y = act(x) over rows × cols with leading dimensions.
    fn unary(
        &self,
        x: (u64, usize),
        y: (u64, usize),
        rows: usize,
        cols: usize,
        act: i32,
    ) -> Result<()> {
        let k = self.naive()?;
        let stream = self.dev.stream();
        let (xp, ldx, yp, ldy) = (x.0, int("width", x.1)?, y.0, int("width", y.1)?);
        let (r, c) = (int("rows", rows)?, int("width", cols)?);
        int("elements", rows * cols)?;
        // SAFETY: x and y hold rows·ld f32 (cols ≤ ld).
        unsafe { launch!(stream, &k.unary, per_element(rows * cols); xp, ldx, yp, ldy, r, c, act) };
        Ok(())
    }

    /// y = a op b over rows × cols with leading dimensions.
    fn binary(
        &self,
        a: (u64, usize),
        b: (u64, usize),
        y: (u64, usize),
        (rows, cols): (usize, usize),
        op: i32,
    ) -> Result<()> {
        let k = self.naive()?;
        let stream = self.dev.stream();
        let (ap, lda, bp, ldb, yp, ldy) = (
            a.0,
            int("width", a.1)?,
            b.0,
            int("width", b.1)?,
            y.0,
            int("width", y.1)?,
        );
        let (r, c) = (int("rows", rows)?, int("width", cols)?);
        int("elements", rows * cols)?;
        // SAFETY: a, b and y hold rows·ld f32 (cols ≤ ld).
        unsafe {
            launch!(stream, &k.binary, per_element(rows * cols); ap, lda, bp, ldb, yp, ldy, r, c, op)
        };
        Ok(())
    }

    /// The naive teacher-forced forward; keeps act(encoder_att(f) + decoder_att(h)) per step.
    pub fn forward_naive(
        &self,
        features: &Tensor,
        lens: &[usize],
        captions: &[i32],
        lengths: &[usize],
        steps: usize,
        dropout: Option<Dropout>,
    ) -> Result<Forward> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let mut run = self.start(features, lens, captions, lengths, steps, true)?;
        let k = self.naive()?;
        let dev = &self.dev;
        let stream = dev.stream();
        let lane = self.lane();
        let (batch, len) = (run.batch, run.keys);
        let u = run.u.as_ref().expect("kept on the naive path");
        let act = self.act;
        let att1 = Buf::new(dev, batch * len * a)?;
        let att2 = Buf::new(dev, batch * a)?;
        let z = Buf::new(dev, batch * len * a)?;
        let scores = Buf::new(dev, batch * len)?;
        let gp = Buf::new(dev, batch * d)?;
        let gi = Buf::new(dev, batch * 4 * h)?;
        let gh = Buf::new(dev, batch * 4 * h)?;
        let (i_b, i_l, i_a) = (
            int("batch", batch)?,
            int("keys", len)?,
            int("attention size", a)?,
        );
        let (one, unit) = (1i32, 1f32);
        let softmax_shared = 0usize;
        for t in 0..steps {
            let r = t * batch;
            let (h_prev, c_prev) = (run.h.at(r * h), run.c.at(r * h));
            // att1 = encoder_att(f), again every step; att2 = decoder_att(h).
            self.linear((run.f.ptr, d), batch * len, 0, (a, d), att1.ptr)?;
            self.linear((h_prev, h), batch, 2, (a, h), att2.ptr)?;
            let (qp, kp, zp) = (att2.ptr, att1.ptr, z.ptr);
            // SAFETY: att2 B·A, att1 and z B·L·A f32.
            unsafe {
                launch!(stream, &k.broadcast_add, per_element(batch * len * a);
                    qp, kp, zp, i_b, one, i_l, i_a)
            };
            let u_t = u.at(r * len * a);
            self.unary((z.ptr, a), (u_t, a), batch * len, a, act)?;
            // full_att (its bias left out: the softmax cancels it), the masked softmax.
            gemm(
                lane,
                (batch * len, 1, a),
                (u_t, a, Op::AsIs),
                (self.p[4].ptr, a, Op::Transposed),
                (scores.ptr, 1),
                0.0,
            )?;
            let (sp, alp, lp) = (scores.ptr, run.alpha.at(r * len), run.lens.1);
            // SAFETY: scores and alpha B·L f32, lens B ints.
            unsafe {
                launch!(stream, &k.softmax, per_row(batch, 1, softmax_shared);
                    sp, alp, lp, one, i_l, unit)
            };
            // awe = Σ_l α_l f_l per row; the gate; the gated context into the step's input.
            let awe_t = run.awe.at(r * d);
            self.batched(
                batch,
                (1, d, len),
                ((alp, len, len), Op::AsIs),
                ((run.f.ptr, d, len * d), Op::AsIs),
                (awe_t, d, d),
                0.0,
            )?;
            self.linear((h_prev, h), batch, 15, (d, h), gp.ptr)?;
            let gate_t = run.gate.at(r * d);
            self.unary((gp.ptr, d), (gate_t, d), batch, d, ACT_SIGMOID)?;
            let x_t = run.x.at(r * (e + d));
            self.binary(
                (gate_t, d),
                (awe_t, d),
                (x_t + (e * F) as u64, e + d),
                (batch, d),
                OP_MUL,
            )?;
            // The LSTM cell: x·W_ihᵀ and h·W_hhᵀ, then the gates (both biases at once).
            gemm(
                lane,
                (batch, 4 * h, e + d),
                (x_t, e + d, Op::AsIs),
                (self.p[7].ptr, e + d, Op::Transposed),
                (gi.ptr, 4 * h),
                0.0,
            )?;
            gemm(
                lane,
                (batch, 4 * h, h),
                (h_prev, h, Op::AsIs),
                (self.p[8].ptr, h, Op::Transposed),
                (gh.ptr, 4 * h),
                0.0,
            )?;
            let (null, gip, ghp, bl) = (0u64, gi.ptr, gh.ptr, self.b_lstm.ptr);
            let (cn, hn, ap) = (
                run.c.at(r * h + batch * h),
                run.h.at(r * h + batch * h),
                run.acts.at(r * 4 * h),
            );
            let (i_h, i_4h) = (int("hidden size", h)?, int("gate width", 4 * h)?);
            // SAFETY: gi, gh and acts B·4H f32, the bias 4H, c and h B·H.
            unsafe {
                launch!(stream, &self.kernels.cell, grid_stride(batch * h);
                    null, gip, ghp, bl, c_prev, cn, hn, ap, i_b, i_h, i_4h)
            };
        }
        // preds = fc(dropout(h)), per step.
        let states = self.dropped_states(&mut run, dropout)?;
        for t in 0..steps {
            let r = t * batch;
            let state = states + (r * h * F) as u64;
            self.linear((state, h), batch, 17, (v, h), run.logits.at(r * v))?;
        }
        self.finish(run)
    }

    /// The naive backward: per step, every operation's backward in reverse, weight gradients
    /// added step by step.
    pub fn backward_naive(
        &self,
        run: &Run,
        grad_logits: &Tensor,
        grad_alphas: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = self.dims;
        let k = self.naive()?;
        let dev = &self.dev;
        let stream = dev.stream();
        let lane = self.lane();
        let (batch, steps, len) = (run.batch, run.steps, run.keys);
        let rows = steps * batch;
        let w = 4 * h + a + d;
        let u = run.u.as_ref().expect("kept on the naive path");
        let dlogits = self.time_major(run, grad_logits)?;
        let dalpha_in = grad_alphas.map(|g| self.time_major(run, g)).transpose()?;
        let z = |n: usize| Buf::zeroed(dev, n);
        let (dw_fc, db_fc) = (z(v * h)?, z(v)?);
        let (dw_st, db_st, dw_ih) = (z(w * h)?, z(w)?, z(4 * h * (e + d))?);
        let (dw_ea, db_ea) = (z(a * d)?, z(a)?);
        let (dw_fa, db_fa) = (z(a)?, z(1)?);
        let (df, dh, dc) = (z(batch * len * d)?, z(batch * h)?, z(batch * h)?);
        let dx_emb = z(rows * e)?;
        // fc per step, then dropout's mask over every step's states at once.
        let dh_out = Buf::new(dev, rows * h)?;
        let states = run.fc_input(h);
        for t in 0..steps {
            let (r, dlog) = (t * batch, dlogits.at(t * batch * v));
            gemm(
                lane,
                (batch, h, v),
                (dlog, v, Op::AsIs),
                (self.p[17].ptr, h, Op::AsIs),
                (dh_out.at(r * h), h),
                0.0,
            )?;
            let state = states + (r * h * F) as u64;
            gemm(
                lane,
                (v, h, batch),
                (dlog, v, Op::Transposed),
                (state, h, Op::AsIs),
                (dw_fc.ptr, h),
                1.0,
            )?;
            self.column_sums(dlog, batch, v, v, db_fc.ptr, true)?;
        }
        if let Some((_, drop)) = &run.dropped {
            self.drop(dh_out.ptr, dh_out.ptr, rows * h, *drop)?;
        }
        let dg = Buf::new(dev, batch * 4 * h)?;
        let dx = Buf::new(dev, batch * (e + d))?;
        let (dgate, dawe, dgp) = (
            Buf::new(dev, batch * d)?,
            Buf::new(dev, batch * d)?,
            Buf::new(dev, batch * d)?,
        );
        let dal = Buf::new(dev, batch * len)?;
        let de = Buf::new(dev, batch * len)?;
        let du = Buf::new(dev, batch * len * a)?;
        let dq = Buf::new(dev, batch * a)?;
        let ones = Buf::from_host(dev, &vec![1.0; len])?;
        let (i_b, i_h, i_l, i_4h) = (
            int("batch", batch)?,
            int("hidden size", h)?,
            int("keys", len)?,
            int("gate width", 4 * h)?,
        );
        let (one, unit) = (1i32, 1f32);
        let dz_op = match self.act {
            x if x == Activation::Relu.code() => OP_DRELU,
            _ => OP_DTANH,
        };
        // Accumulating GEMM outputs and column sums.
        for t in (0..steps).rev() {
            let (r, t32) = (t * batch, t as i32);
            let h_prev = run.h.at(r * h);
            // The cell.
            let (dho, dhp, dcp, ap) = (dh_out.at(r * h), dh.ptr, dc.ptr, run.acts.at(r * 4 * h));
            let (cp, cn, sp, dgp_) = (
                run.c.at(r * h),
                run.c.at(r * h + batch * h),
                run.row_steps.1,
                dg.ptr,
            );
            // SAFETY: step t's rows of the S·B-row buffers; dh, dc B·H; dg B·4H f32.
            unsafe {
                launch!(stream, &self.kernels.cell_backward, grid_stride(batch * h);
                    dho, dhp, dcp, ap, cp, cn, sp, t32, dgp_, i_b, i_h, i_4h)
            };
            let x_t = run.x.at(r * (e + d));
            gemm(
                lane,
                (4 * h, e + d, batch),
                (dg.ptr, 4 * h, Op::Transposed),
                (x_t, e + d, Op::AsIs),
                (dw_ih.ptr, e + d),
                1.0,
            )?;
            gemm(
                lane,
                (4 * h, h, batch),
                (dg.ptr, 4 * h, Op::Transposed),
                (h_prev, h, Op::AsIs),
                (dw_st.ptr, h),
                1.0,
            )?;
            self.column_sums(dg.ptr, batch, 4 * h, 4 * h, db_st.ptr, true)?;
            gemm(
                lane,
                (batch, e + d, 4 * h),
                (dg.ptr, 4 * h, Op::AsIs),
                (self.p[7].ptr, e + d, Op::AsIs),
                (dx.ptr, e + d),
                0.0,
            )?;
            gemm(
                lane,
                (batch, h, 4 * h),
                (dg.ptr, 4 * h, Op::AsIs),
                (self.p[8].ptr, h, Op::AsIs),
                (dh.ptr, h),
                0.0,
            )?;
            // cat([emb, awe]): the embedding's part, kept for the lookup's backward.
            gemm(
                lane,
                (batch, e, 4 * h),
                (dg.ptr, 4 * h, Op::AsIs),
                (self.p[7].ptr, e + d, Op::AsIs),
                (dx_emb.at(r * e), e),
                0.0,
            )?;
            // awe = gate · awe: both factors' gradients; the sigmoid; f_beta.
            let (gate_t, awe_t, dctx) = (run.gate.at(r * d), run.awe.at(r * d), dx.at(e));
            self.binary(
                (dctx, e + d),
                (awe_t, d),
                (dgate.ptr, d),
                (batch, d),
                OP_MUL,
            )?;
            self.binary(
                (dctx, e + d),
                (gate_t, d),
                (dawe.ptr, d),
                (batch, d),
                OP_MUL,
            )?;
            self.binary(
                (dgate.ptr, d),
                (gate_t, d),
                (dgp.ptr, d),
                (batch, d),
                OP_DSIGMOID,
            )?;
            let fb = (4 * h + a) * h;
            gemm(
                lane,
                (d, h, batch),
                (dgp.ptr, d, Op::Transposed),
                (h_prev, h, Op::AsIs),
                (dw_st.at(fb), h),
                1.0,
            )?;
            self.column_sums(dgp.ptr, batch, d, d, db_st.at(4 * h + a), true)?;
            gemm(
                lane,
                (batch, h, d),
                (dgp.ptr, d, Op::AsIs),
                (self.p[15].ptr, h, Op::AsIs),
                (dh.ptr, h),
                1.0,
            )?;
            // awe = Σ_l α_l f_l: dα and the keys' share.
            let alp = run.alpha.at(r * len);
            self.batched(
                batch,
                (1, len, d),
                ((dawe.ptr, d, d), Op::AsIs),
                ((run.f.ptr, d, len * d), Op::Transposed),
                (dal.ptr, len, len),
                0.0,
            )?;
            if let Some(g) = &dalpha_in {
                let add = crate::device::kernels::codes::OP_ADD;
                self.binary(
                    (dal.ptr, len),
                    (g.at(r * len), len),
                    (dal.ptr, len),
                    (batch, len),
                    add,
                )?;
            }
            self.batched(
                batch,
                (len, d, 1),
                ((alp, 1, len), Op::AsIs),
                ((dawe.ptr, d, d), Op::AsIs),
                (df.ptr, d, len * d),
                1.0,
            )?;
            // The masked softmax, full_att, the activation.
            let (pp, dpp, dsp, lp) = (alp, dal.ptr, de.ptr, run.lens.1);
            // SAFETY: alpha, dal, de B·L f32; lens B ints.
            unsafe {
                launch!(stream, &k.softmax_backward, per_row(batch, 1, 0);
                    pp, dpp, dsp, lp, one, i_l, unit)
            };
            let u_t = u.at(r * len * a);
            gemm(
                lane,
                (1, a, batch * len),
                (de.ptr, 1, Op::Transposed),
                (u_t, a, Op::AsIs),
                (dw_fa.ptr, a),
                1.0,
            )?;
            self.column_sums(de.ptr, batch * len, 1, 1, db_fa.ptr, true)?;
            gemm(
                lane,
                (batch * len, a, 1),
                (de.ptr, 1, Op::AsIs),
                (self.p[4].ptr, a, Op::AsIs),
                (du.ptr, a),
                0.0,
            )?;
            self.binary((du.ptr, a), (u_t, a), (du.ptr, a), (batch * len, a), dz_op)?;
            // att1 + att2[:, None]: decoder_att's input gradient sums over the keys.
            self.batched(
                batch,
                (1, a, len),
                ((ones.ptr, len, 0), Op::AsIs),
                ((du.ptr, a, len * a), Op::AsIs),
                (dq.ptr, a, a),
                0.0,
            )?;
            let da = 4 * h * h;
            gemm(
                lane,
                (a, h, batch),
                (dq.ptr, a, Op::Transposed),
                (h_prev, h, Op::AsIs),
                (dw_st.at(da), h),
                1.0,
            )?;
            self.column_sums(dq.ptr, batch, a, a, db_st.at(4 * h), true)?;
            gemm(
                lane,
                (batch, h, a),
                (dq.ptr, a, Op::AsIs),
                (self.p[2].ptr, h, Op::AsIs),
                (dh.ptr, h),
                1.0,
            )?;
            // encoder_att(f), recomputed every step in the forward: its gradients every step.
            self.encoder_att_backward(run, &du, &dw_ea, &db_ea, &df, 1.0)?;
        }
        self.backward_tail(
            run,
            Accumulated {
                dx_emb,
                dh,
                dc,
                df,
                dp: None,
                dw_ea,
                db_ea,
                dw_fa,
                db_fa,
                fa_rows: 1,
                dw_st,
                db_st,
                dw_ih,
                dw_fc,
                db_fc,
            },
        )
    }
}

/// The naive decoding step's scratch for R = N·K hypotheses over N images.
pub(super) struct SearchScratch {
    att1: Buf,
    att2: Buf,
    z: Buf,
    u: Buf,
    scores: Buf,
    awe: Buf,
    gp: Buf,
    gate: Buf,
    gi: Buf,
    gh: Buf,
}

impl SearchScratch {
    pub fn new(w: &Weights, images: usize, rows: usize, len: usize) -> Result<Self> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            ..
        } = w.dims;
        let b = |n: usize| Buf::new(&w.dev, n);
        Ok(SearchScratch {
            att1: b(images * len * a)?,
            att2: b(rows * a)?,
            z: b(rows * len * a)?,
            u: b(rows * len * a)?,
            scores: b(rows * len)?,
            awe: b(rows * d)?,
            gp: b(rows * d)?,
            gate: b(rows * d)?,
            gi: b(rows * 4 * h)?,
            gh: b(rows * 4 * h)?,
        })
    }
}

/// One decoding step's operands: `rows` hypotheses, `beam` per image, each row's input
/// [embedding; ·] in `x` (the context goes into its last D columns), its state h, c, the keys
/// f [N, L, D] with their lengths per image, and where the new state and attention go.
pub(super) struct SearchStep {
    pub rows: usize,
    pub beam: usize,
    pub len: usize,
    pub x: u64,
    pub h: u64,
    pub c: u64,
    pub f: u64,
    pub lens: u64,
    pub h_new: u64,
    pub c_new: u64,
    pub alpha: u64,
}

impl Weights {
    /// The decoder's step for every hypothesis the naive way (caption.py's loop with the
    /// decoder's own lines): encoder_att(f) again, then one operation per line, as
    /// `forward_naive` runs a step.
    pub(super) fn naive_search_step(&self, s: &SearchStep, t: &SearchScratch) -> Result<()> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            ..
        } = self.dims;
        let k = self.naive()?;
        let stream = self.dev.stream();
        let lane = self.lane();
        let (rows, beam, len) = (s.rows, s.beam, s.len);
        let images = rows / beam;
        self.linear((s.f, d), images * len, 0, (a, d), t.att1.ptr)?;
        self.linear((s.h, h), rows, 2, (a, h), t.att2.ptr)?;
        let (i_r, i_k, i_l, i_a) = (
            int("rows", rows)?,
            int("beam", beam)?,
            int("keys", len)?,
            int("attention size", a)?,
        );
        let (qp, kp, zp) = (t.att2.ptr, t.att1.ptr, t.z.ptr);
        // SAFETY: att2 R·A, att1 N·L·A, z R·L·A f32; row r reads image r / K.
        unsafe {
            launch!(stream, &k.broadcast_add, per_element(rows * len * a); qp, kp, zp, i_r, i_k, i_l, i_a)
        };
        self.unary((t.z.ptr, a), (t.u.ptr, a), rows * len, a, self.act)?;
        gemm(
            lane,
            (rows * len, 1, a),
            (t.u.ptr, a, Op::AsIs),
            (self.p[4].ptr, a, Op::Transposed),
            (t.scores.ptr, 1),
            0.0,
        )?;
        let (sp, ap, lp, unit) = (t.scores.ptr, s.alpha, s.lens, 1f32);
        // SAFETY: scores and alpha R·L f32; lens N ints (row r's at r / K).
        unsafe { launch!(stream, &k.softmax, per_row(rows, 1, 0); sp, ap, lp, i_k, i_l, unit) };
        self.batched(
            images,
            (beam, d, len),
            ((s.alpha, len, beam * len), Op::AsIs),
            ((s.f, d, len * d), Op::AsIs),
            (t.awe.ptr, d, beam * d),
            0.0,
        )?;
        self.linear((s.h, h), rows, 15, (d, h), t.gp.ptr)?;
        self.unary((t.gp.ptr, d), (t.gate.ptr, d), rows, d, ACT_SIGMOID)?;
        self.binary(
            (t.gate.ptr, d),
            (t.awe.ptr, d),
            (s.x + (e * F) as u64, e + d),
            (rows, d),
            OP_MUL,
        )?;
        gemm(
            lane,
            (rows, 4 * h, e + d),
            (s.x, e + d, Op::AsIs),
            (self.p[7].ptr, e + d, Op::Transposed),
            (t.gi.ptr, 4 * h),
            0.0,
        )?;
        gemm(
            lane,
            (rows, 4 * h, h),
            (s.h, h, Op::AsIs),
            (self.p[8].ptr, h, Op::Transposed),
            (t.gh.ptr, 4 * h),
            0.0,
        )?;
        let (null, gip, ghp, bl) = (0u64, t.gi.ptr, t.gh.ptr, self.b_lstm.ptr);
        let (cp, cn, hn) = (s.c, s.c_new, s.h_new);
        let (i_h, i_4h) = (int("hidden size", h)?, int("gate width", 4 * h)?);
        // SAFETY: gi, gh R·4H f32, the bias 4H, c, c_new, h_new R·H.
        unsafe {
            launch!(stream, &self.kernels.cell, grid_stride(rows * h);
                null, gip, ghp, bl, cp, cn, hn, null, i_r, i_h, i_4h)
        };
        Ok(())
    }
}
