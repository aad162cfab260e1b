//! CUDA backward of attention (kernels/attention_backward.cu): the gradients of
//! Σ context ⊙ grad_context, recomputing the scores.
//!
//! Both paths start from the query and key sides (GEMMs, f32 for additive scores) and end in
//! the same cuBLAS calls over all rows at once: d values = pᵀ·dctx per batch row, for products
//! dq = ds·kp and dkp = dsᵀ·q, and the projections' backward (dx = dy·W, dW = dyᵀ·x).
//! Fused: one kernel per (row, chunk of keys) for scores → softmax → dp → ds (and one combining
//! a row's chunks where there are several); for additive scores one kernel for the tanh
//! backward (dkp and per-chunk partials) and one adding the partials (dq, the biases' and the
//! score vector's gradients). General scores project the queries there (e = (q W)·k), so
//! that they cost as dot scores plus GEMMs over the rows, not over every key. Naive: the forward's naive scores and softmax, dp as a
//! batched GEMM, a softmax-backward kernel and, for additive scores, the outer product ds ⊗ v,
//! a tanh-backward kernel and the sums as GEMMs with a ones vector. Intermediate gradients
//! that feed cuBLAS are stored in the layer's dtype (cuBLAS takes both operands in one dtype);
//! sums and reductions are f32.

use super::{naive_additive_terms, OnDevice, ATT_ADDITIVE, ATT_PRODUCT};
use crate::device::kernels::ids;
use crate::device::launch::{launch, per_element, per_row, THREADS};
use crate::device::{
    copy_to_device_async, data_ptr, fill_words_async, reading, Batched, CudaDevice, MatRef, Op,
    Strided,
};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::algo::Algo;
use crate::ops::attention::{AttentionGradients, Params, Score, Sizes};
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, LaunchConfig};

/// The backward's kernels.
pub(super) struct Kernels {
    fused: CudaFunction,
    combine: CudaFunction,
    additive: CudaFunction,
    finish: CudaFunction,
    softmax: CudaFunction,
    tanh: CudaFunction,
    /// The forward's broadcast add, reading the f32 key side.
    broadcast_add: CudaFunction,
}

impl Kernels {
    fn load(dev: &CudaDevice, dtype: DType) -> Result<Self> {
        let f = |kernel, dt| dev.function(kernel, dt);
        Ok(Kernels {
            fused: f(ids::attention_backward::ATTEND_BACKWARD_FUSED, dtype)?,
            combine: f(ids::attention_backward::ATTEND_BACKWARD_COMBINE, dtype)?,
            additive: f(ids::attention_backward::ADDITIVE_BACKWARD_FUSED, dtype)?,
            finish: f(ids::attention_backward::ADDITIVE_FINISH_FUSED, dtype)?,
            softmax: f(ids::attention_backward::SOFTMAX_BACKWARD_NAIVE, DType::F32)?,
            tanh: f(ids::attention_backward::TANH_BACKWARD_NAIVE, DType::F32)?,
            broadcast_add: f(ids::attention::BROADCAST_ADD_NAIVE, DType::F32)?,
        })
    }
}

/// One backward call: tensors on the layer's device in its dtype, sizes and lengths checked by
/// the layer.
pub(crate) struct BackwardCall<'a> {
    pub score: Score,
    /// [B, Tq, Dq] elements.
    pub query: &'a Tensor,
    pub keys: &'a Tensor,
    /// None: the keys are the values.
    pub values: Option<&'a Tensor>,
    pub grad_context: &'a Tensor,
    pub lengths: &'a [usize],
    pub sizes: Sizes,
}

/// Where the gradients go (0: not wanted; `dv` 0 adds the values' gradient to the keys').
struct Outputs {
    dq: u64,
    dk: u64,
    dv: u64,
    w_q: u64,
    b_q: u64,
    w_k: u64,
    b_k: u64,
    score_v: u64,
}

/// One call's sizes and addresses.
struct Job<'a> {
    score: Score,
    s: Sizes,
    rows: usize,
    /// The width of the scores' operands: A (additive) or Dq.
    width: usize,
    scale: f32,
    q: u64,
    k: u64,
    /// The values (the keys when they are the values).
    v: u64,
    grad: u64,
    lengths: &'a [usize],
    out: Outputs,
}

/// Regions of the f32 workspace, each 256-byte aligned (cuBLAS's fast paths want aligned
/// operands); a region of 0 elements takes no room.
#[derive(Default)]
struct Layout {
    floats: usize,
}

impl Layout {
    /// Room for `n` elements of `dtype`: its offset in floats.
    fn take(&mut self, n: usize, dtype: DType) -> usize {
        let at = self.floats;
        self.floats += (n * dtype.size_in_bytes()).div_ceil(4).next_multiple_of(64);
        at
    }
}

/// A row-major matrix at `ptr` with `ld` elements per row.
fn mat(ptr: u64, ld: usize, dtype: DType) -> MatRef {
    MatRef { ptr, ld, dtype }
}

/// C[m, n] = op(A)·op(B), one matrix each.
#[allow(clippy::too_many_arguments)]
fn single(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    a_op: Op,
    b: MatRef,
    b_op: Op,
    c: MatRef,
) -> Batched {
    let one = |x: MatRef| Strided { mat: x, stride: 0 };
    Batched {
        count: 1,
        m,
        n,
        k,
        a: one(a),
        a_op,
        b: one(b),
        b_op,
        c: one(c),
        beta: 0.0,
    }
}

impl OnDevice {
    fn backward_kernels(&self) -> Result<&Kernels> {
        if let Some(k) = self.backward.get() {
            return Ok(k);
        }
        let loaded = Kernels::load(&self.dev, self.dtype)?;
        Ok(self.backward.get_or_init(|| loaded))
    }

    /// The gradients of Σ context ⊙ grad_context for `call`, on the device in the layer's
    /// dtype; `params` are the layer's (the gradients take their names and shapes).
    pub fn backward(
        &self,
        algo: Algo,
        call: &BackwardCall<'_>,
        params: &Params,
    ) -> Result<AttentionGradients> {
        if algo == Algo::Persistent {
            return Err(Error::Unsupported {
                request: "attention".into(),
                reason: "it has no persistent algorithm (use auto, fused or naive)".into(),
            });
        }
        let kernels = self.backward_kernels()?;
        let s = call.sizes;
        let alloc = |n: usize| self.dev.alloc_output_data(self.dtype, n);
        let query = alloc(call.query.numel())?;
        let keys = alloc(call.keys.numel())?;
        let values = call.values.map(|v| alloc(v.numel())).transpose()?;
        let grads = params
            .named()
            .map(|(_, t)| t.map(|t| alloc(t.numel())).transpose());
        let grads: Vec<Option<CudaData>> = grads.into_iter().collect::<Result<_>>()?;
        let st = self.dev.stream();
        let addr = |d: Option<&CudaData>| d.map_or(0, |d| data_ptr(d, st));
        let out = Outputs {
            dq: addr(Some(&query)),
            dk: addr(Some(&keys)),
            dv: addr(values.as_ref()),
            w_q: addr(grads[0].as_ref()),
            b_q: addr(grads[1].as_ref()),
            w_k: addr(grads[2].as_ref()),
            b_k: addr(grads[3].as_ref()),
            score_v: addr(grads[4].as_ref()),
        };
        let width = match call.score {
            Score::Additive => self.key_width,
            _ => s.dq,
        };
        let scale = match call.score {
            Score::Dot { scale } => scale,
            _ => 1.0,
        };
        let vals = call.values.unwrap_or(call.keys);
        let _queue = self.dev.lock_queue();
        reading(call.query.cuda_data()?, st, |q| {
            reading(call.keys.cuda_data()?, st, |k| {
                reading(vals.cuda_data()?, st, |v| {
                    reading(call.grad_context.cuda_data()?, st, |grad| {
                        let job = Job {
                            score: call.score,
                            s,
                            rows: s.batch * s.queries,
                            width,
                            scale,
                            q,
                            k,
                            v,
                            grad,
                            lengths: call.lengths,
                            out,
                        };
                        // SAFETY: the layer checked the sizes: the query holds B·Tq·Dq
                        // elements, the keys B·L·Dk, the values B·L·Dv, grad_context B·Tq·Dv,
                        // all of the layer's dtype on this device; the outputs were allocated
                        // above with the inputs' and parameters' sizes; lengths are in 1..=L.
                        unsafe {
                            match algo {
                                Algo::Naive => self.backward_naive(kernels, &job),
                                _ => self.backward_fused(kernels, &job),
                            }
                        }
                    })
                })
            })
        })?;
        let mut named = Vec::new();
        for ((name, t), g) in params.named().into_iter().zip(grads) {
            if let (Some(t), Some(g)) = (t, g) {
                named.push((
                    name.to_string(),
                    Tensor::from_cuda_data(g, t.shape(), &self.dev)?,
                ));
            }
        }
        Ok(AttentionGradients {
            query: Tensor::from_cuda_data(query, call.query.shape(), &self.dev)?,
            keys: Tensor::from_cuda_data(keys, call.keys.shape(), &self.dev)?,
            values: match (values, call.values) {
                (Some(g), Some(t)) => Some(Tensor::from_cuda_data(g, t.shape(), &self.dev)?),
                _ => None,
            },
            params: named,
        })
    }

    /// Copies the key lengths to `dst` (B ints) on the stream.
    ///
    /// # Safety
    /// `dst` addresses room for `lengths.len()` ints on this device.
    unsafe fn upload_lengths(&self, lengths: &[usize], dst: u64) -> Result<()> {
        let ints: Vec<i32> = lengths.iter().map(|&n| n as i32).collect();
        // SAFETY: the caller vouches for `dst`; the copy is staged before `ints` goes.
        unsafe { copy_to_device_async(self.dev.stream(), dst, &ints) }
    }

    /// The query and key sides as the forward's scores read them: (f32 query, f32 keys) for
    /// additive scores, into `qp` [rows, A] and `kp` [B·L, A]; else (query, keys) in the
    /// layer's dtype, general keys projected into `kp_t` [B·L, Dq].
    ///
    /// # Safety
    /// As `backward`'s (the job's query B·Tq·Dq and keys B·L·Dk elements of the layer's dtype,
    /// live on this device), with `qp`, `kp` and `kp_t` sized as above for the kind.
    unsafe fn sides(&self, j: &Job<'_>, qp: u64, kp: u64, kp_t: u64) -> Result<(u64, u64)> {
        let keys_rows = j.s.batch * j.s.keys;
        match j.score {
            Score::Additive => {
                let w_q = self.w_q.expect("additive layers have query_proj");
                let w_k = self.w_k.expect("additive layers have key_proj");
                // SAFETY: the caller's contract: q [rows, Dq] through W_q [A, Dq] into qp
                // [rows, A] f32, k [B·L, Dk] through W_k [A, Dk] into kp [B·L, A] f32 (A =
                // width); the biases are the layer's [A] (or 0).
                unsafe {
                    self.linear(j.q, j.rows, w_q, j.width, self.b_q, qp)?;
                    self.linear(j.k, keys_rows, w_k, j.width, self.b_k, kp)?;
                }
                Ok((qp, kp))
            }
            Score::General => {
                let w_k = self.w_k.expect("general layers have key_proj");
                let (dt, s) = (self.dtype, &j.s);
                // SAFETY: kp_t [B·L, Dq] = k [B·L, Dk] · W_kᵀ, W_k the layer's [Dq, Dk]; the
                // caller's contract covers k and kp_t.
                unsafe {
                    self.dev.lanes()[0].gemm_batched(&single(
                        keys_rows,
                        s.dq,
                        s.dk,
                        mat(j.k, s.dk, dt),
                        Op::AsIs,
                        w_k,
                        Op::Transposed,
                        mat(kp_t, s.dq, dt),
                    ))?
                };
                Ok((j.q, kp_t))
            }
            Score::Dot { .. } => Ok((j.q, j.k)),
        }
    }

    /// # Safety
    /// As `backward`'s: the job's query B·Tq·Dq, keys B·L·Dk, values B·L·Dv and grad B·Tq·Dv
    /// elements of the layer's dtype, live on this device; its outputs (0 where not wanted)
    /// the same sizes as the inputs and parameters they are the gradients of; lengths B values
    /// in 1..=L.
    unsafe fn backward_fused(&self, kern: &Kernels, j: &Job<'_>) -> Result<()> {
        let (s, dt, f32) = (&j.s, self.dtype, DType::F32);
        let (rows, width, len) = (j.rows, j.width, s.keys);
        let keys_rows = s.batch * len;
        let additive = j.score == Score::Additive;
        let general = j.score == Score::General;
        // Chunks of keys: per row for the scores, per batch row for the tanh backward.
        let (splits, chunk) = self.chunks(rows, len);
        let (key_splits, key_chunk) = self.chunks(s.batch, len);
        let only = |on: bool, n: usize| if on { n } else { 0 };
        let mut lay = Layout::default();
        let lengths = lay.take(s.batch, f32);
        let partial = lay.take(only(splits > 1, rows * splits * 3), f32);
        let qp = lay.take(only(additive, rows * width), f32);
        let kp = lay.take(only(additive, keys_rows * width), f32);
        let u = lay.take(only(general, rows * s.dk), dt);
        let du = lay.take(only(general, rows * s.dk), dt);
        let dkp = lay.take(only(additive, keys_rows * width), dt);
        let e = lay.take(rows * len, f32);
        let dp = lay.take(rows * len, f32);
        let probs = lay.take(rows * len, dt);
        let ds_t = lay.take(only(!additive, rows * len), dt);
        let dq_part = lay.take(only(additive, key_splits * rows * width), f32);
        let sums = lay.take(only(additive, s.batch * key_splits * 2 * width), f32);
        let dqp = lay.take(only(additive, rows * width), dt);
        let (_ws, base) = self.workspace(lay.floats)?;
        let at = |floats: usize| base + 4 * floats as u64;
        let lengths = at(lengths);
        // From here on every `at(...)` is a region `lay` sized above in the workspace, which
        // holds lay.floats f32 and stays this call's while `_ws` is held.
        // SAFETY: `lengths` is a region of B floats, room for B i32.
        unsafe { self.upload_lengths(j.lengths, lengths)? };
        let (qs, ks) = if general {
            // e = q·(W k) = (q W)·k: projecting the queries (rows) rather than the keys (B·L
            // rows) shrinks the projection and both of its gradients' GEMMs alike.
            let w = self.w_k.expect("general layers have key_proj");
            let (q, u) = (mat(j.q, s.dq, dt), mat(at(u), s.dk, dt));
            let lane = &self.dev.lanes()[0];
            // SAFETY: u [rows, Dk] (its region) = q [rows, Dq] (the caller's contract) · W_k,
            // the layer's [Dq, Dk].
            unsafe { lane.gemm_batched(&single(rows, s.dk, s.dq, q, Op::AsIs, w, Op::AsIs, u))? };
            (u.ptr, j.k)
        } else {
            // SAFETY: additive: qp [rows, A] and kp [B·L, A] f32 regions; dot scores use
            // neither (kp_t is only for the naive general path).
            unsafe { self.sides(j, at(qp), at(kp), 0)? }
        };
        // The scores' operand width: A, Dk for the projected query, Dq = Dk for dot scores.
        let width = if general { s.dk } else { width };

        // Scores → softmax → dp → ds.
        let (qf, kf, qt, kt) = if additive {
            (qs, ks, 0, 0)
        } else {
            (0, 0, qs, ks)
        };
        let bytes = 4 * (width * if additive { 2 } else { 1 } + s.dv);
        self.allow_shared(&kern.fused, bytes, width)?;
        let mode = if additive { ATT_ADDITIVE } else { ATT_PRODUCT };
        let (e, dp, probs) = (at(e), at(dp), at(probs));
        // Additive ds stays f32 (the tanh backward reads it), over dp, which it replaces.
        let (dsf, dst) = if additive { (dp, 0) } else { (0, at(ds_t)) };
        let [tq, len_i, k, dv] = [s.queries, len, width, s.dv].map(|x| x as i32);
        let [chunk_i, splits_i] = [chunk, splits].map(|x| x as i32);
        let (v, score_v, grad, scale, partial) = (j.v, self.score_v, j.grad, j.scale, at(partial));
        // SAFETY: the query and key sides are qp/kp [·, A] f32 (additive), u [rows, Dk] and
        // the keys [B·L, Dk] (general) or the query and keys (dot), `width` wide; values, grad
        // and lengths as the caller's contract and above; e, dp [rows, L] f32, partial
        // [rows, splits, 3] f32 (when split), probs [rows, L] and ds_t [rows, L] (products)
        // regions; grid rows × splits with `bytes` of shared memory, allowed above.
        unsafe {
            launch!(self.dev.stream(), &kern.fused, per_row(rows, splits, bytes);
                qf, kf, qt, kt, v, score_v, grad, scale, lengths, tq, len_i, k, dv, mode, chunk_i,
                splits_i, e, dp, partial, probs, dsf, dst)
        };
        if splits > 1 {
            let ds_scale = if additive { 1.0f32 } else { scale };
            // SAFETY: the same regions as the fused launch, one block per row.
            unsafe {
                launch!(self.dev.stream(), &kern.combine, per_row(rows, 1, 0);
                    e, dp, partial, lengths, tq, len_i, chunk_i, splits_i, ds_scale, probs, dsf, dst)
            };
        }

        if additive {
            let (dkp, dq_part, sums, dqp) = (at(dkp), at(dq_part), at(sums), at(dqp));
            let [chunk_i, splits_i] = [key_chunk, key_splits].map(|x| x as i32);
            let grid = LaunchConfig {
                grid_dim: (s.batch as u32, key_splits as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: reads qp, kp [·, A] f32 and ds (in dp) [rows, L] f32; writes dkp
            // [B·L, A], dq_part [key_splits, rows, A] f32 and sums [B, key_splits, 2, A] f32
            // (their regions); score_v is the layer's [A]; grid B × key_splits.
            unsafe {
                launch!(self.dev.stream(), &kern.additive, grid;
                    qf, kf, dsf, score_v, lengths, tq, len_i, k, chunk_i, splits_i, dkp, dq_part,
                    sums)
            };
            let dq_blocks = (rows * width).div_ceil(THREADS as usize);
            let grid = dq_blocks + (2 * width).div_ceil(32);
            let [rows_i, parts, dq_blocks] =
                [rows, s.batch * key_splits, dq_blocks].map(|x| x as i32);
            let (b_q, b_k, d_score) = (j.out.b_q, j.out.b_k, j.out.score_v);
            // SAFETY: sums the partials above into dqp [rows, A] (its region) and the [A]
            // gradients of b_q, b_k (0 without biases) and the score vector, which the caller
            // allocated with their parameters' sizes.
            unsafe {
                launch!(self.dev.stream(), &kern.finish, per_row(grid, 1, 0);
                    dq_part, sums, rows_i, k, splits_i, parts, dq_blocks, dqp, b_q, b_k, d_score)
            };
            // SAFETY: dqp [rows, A] and dkp [B·L, A] in the layer's dtype (their regions).
            unsafe { self.additive_tail(j, dqp, dkp)? };
        } else {
            let (dqs, dk) = (if general { at(du) } else { j.out.dq }, j.out.dk);
            // SAFETY: ds_t [rows, L]; qs, kt the query and key sides of `width` columns
            // (above); dqs is du [rows, Dk] (general) or the query's gradient [rows, Dq], dk
            // the keys' gradient [B·L, Dk] (Dk = width for products).
            unsafe { self.product_tail(j, at(ds_t), qt, kt, width, dqs, dk)? };
            if general {
                // SAFETY: du [rows, Dk] was just written.
                unsafe { self.general_tail(j, dqs, true)? };
            }
        }
        // SAFETY: probs [rows, L] in the layer's dtype (its region).
        unsafe { self.values_tail(j, probs) }
    }

    /// # Safety
    /// As `backward_fused`.
    unsafe fn backward_naive(&self, kern: &Kernels, j: &Job<'_>) -> Result<()> {
        let (s, dt, f32) = (&j.s, self.dtype, DType::F32);
        let (rows, width, len) = (j.rows, j.width, s.keys);
        let keys_rows = s.batch * len;
        let additive = j.score == Score::Additive;
        let general = j.score == Score::General;
        let terms = if additive {
            naive_additive_terms(rows, len, width)?
        } else {
            0
        };
        // The f32 intermediates that feed cuBLAS get a copy in the layer's dtype unless that
        // is f32.
        let half = dt != f32;
        let only = |on: bool, n: usize| if on { n } else { 0 };
        let mut lay = Layout::default();
        let lengths = lay.take(s.batch, f32);
        let qp = lay.take(only(additive, rows * width), f32);
        let kp = lay.take(only(additive, keys_rows * width), f32);
        let kp_t = lay.take(only(general, keys_rows * width), dt);
        let dkp_t = lay.take(only(general, keys_rows * width), dt);
        let u = lay.take(terms, f32);
        let du = lay.take(terms, f32);
        let vf = lay.take(only(additive, width), f32);
        let ones = lay.take(only(additive, rows.max(keys_rows)), f32);
        let dqp = lay.take(only(additive, rows * width), f32);
        let dkp = lay.take(only(additive, keys_rows * width), f32);
        let dqp_t = lay.take(only(additive && half, rows * width), dt);
        let dkp_h = lay.take(only(additive && half, keys_rows * width), dt);
        let small = lay.take(only(additive && half, 3 * width), f32);
        let e = lay.take(rows * len, f32);
        let p = lay.take(rows * len, f32);
        let dp = lay.take(rows * len, f32);
        let ds = lay.take(rows * len, f32);
        let p_t = lay.take(only(half, rows * len), dt);
        let ds_t = lay.take(only(half && !additive, rows * len), dt);
        let (_ws, base) = self.workspace(lay.floats)?;
        let at = |floats: usize| base + 4 * floats as u64;
        let lengths = at(lengths);
        // From here on every `at(...)` is a region `lay` sized above in the workspace, which
        // holds lay.floats f32 and stays this call's while `_ws` is held.
        // SAFETY: `lengths` is a region of B floats, room for B i32.
        unsafe { self.upload_lengths(j.lengths, lengths)? };
        // SAFETY: qp [rows, A] and kp [B·L, A] f32 (additive), kp_t [B·L, Dq] (general).
        let (qs, ks) = unsafe { self.sides(j, at(qp), at(kp), at(kp_t))? };
        let lane = &self.dev.lanes()[0];
        let [tq, len_i, k] = [s.queries, len, width].map(|x| x as i32);
        let (e, p, dp, ds) = (at(e), at(p), at(dp), at(ds));
        let (u, du, vf) = (at(u), at(du), at(vf));

        // The scores, as the forward's naive chain computes them.
        if additive {
            let rows_i = rows as i32;
            let (n_rows, act) = ((rows * len) as i32, Activation::Tanh.code());
            let score_v = self.score_v;
            // SAFETY: u = tanh(qp + kp) fills its region of `terms` = rows·L·A f32 from qp
            // [rows, A] and kp [B·L, A] f32, one thread per term; the layer's score vector
            // ([A] of its dtype, live with the layer) widens into vf [A] f32; e [rows·L] f32
            // = u · vf.
            unsafe {
                launch!(self.dev.stream(), &kern.broadcast_add, per_element(terms); qs, ks, u, rows_i, tq, len_i, k);
                launch!(self.dev.stream(), &self.kernels.unary, per_element(terms); u, k, u, k, n_rows, k, act);
                launch!(self.dev.stream(), &self.kernels.load, per_element(width); score_v, vf, k);
                lane.gemm_abt(
                    rows * len,
                    1,
                    width,
                    mat(u, width, f32),
                    mat(vf, width, f32),
                    e,
                    1,
                    0.0,
                )?;
            }
        } else {
            // SAFETY: per batch row, the query [Tq, Dq] (width = Dq) times the key side
            // [L, Dq] (kp_t for general scores, the keys for dot scores, Dk = Dq) into e
            // [Tq, L] f32 (its region).
            unsafe {
                lane.gemm_batched(&Batched {
                    count: s.batch,
                    m: s.queries,
                    n: len,
                    k: width,
                    a: Strided::new(qs, width, dt, s.queries * width),
                    a_op: Op::AsIs,
                    b: Strided::new(ks, width, dt, len * width),
                    b_op: Op::Transposed,
                    c: Strided::new(e, len, f32, s.queries * len),
                    beta: 0.0,
                })?
            };
        }
        let scale = j.scale;
        // SAFETY: e and p are [rows, L] f32 regions, lengths B i32; one block per row.
        unsafe {
            launch!(self.dev.stream(), &self.kernels.softmax, per_row(rows, 1, 0); e, p, lengths, tq, len_i, scale)
        };
        // dp_b = dctx_b · values_bᵀ, then ds.
        // SAFETY: per batch row, grad [Tq, Dv] times the values [L, Dv] (the caller's
        // contract) into dp [Tq, L] f32 (its region); the softmax backward reads p and dp and
        // writes ds, [rows, L] f32 regions, one block per row.
        unsafe {
            lane.gemm_batched(&Batched {
                count: s.batch,
                m: s.queries,
                n: len,
                k: s.dv,
                a: Strided::new(j.grad, s.dv, dt, s.queries * s.dv),
                a_op: Op::AsIs,
                b: Strided::new(j.v, s.dv, dt, len * s.dv),
                b_op: Op::Transposed,
                c: Strided::new(dp, len, f32, s.queries * len),
                beta: 0.0,
            })?;
            launch!(self.dev.stream(), &kern.softmax, per_row(rows, 1, 0); p, dp, ds, lengths, tq, len_i, scale);
        }
        let p_t = if half {
            // SAFETY: p [rows, L] f32 into the p_t region, rows·L of the layer's dtype.
            unsafe { self.convert_into(p, at(p_t), rows * len)? }
        } else {
            p
        };

        if additive {
            let ones = at(ones);
            let n_ones = rows.max(keys_rows);
            // SAFETY: the ones region holds max(rows, B·L) f32 words.
            unsafe { fill_words_async(self.dev.stream(), ones, 1f32.to_bits(), n_ones)? };
            // d tanh = ds ⊗ v (an outer product), then through tanh.
            let n = terms as i32;
            // SAFETY: du [rows·L, A] f32 (its region of `terms`) = ds [rows·L, 1] · vf [A, 1]ᵀ,
            // then through tanh with u (also `terms` f32), one thread per term.
            unsafe {
                lane.gemm_abt(
                    rows * len,
                    width,
                    1,
                    mat(ds, 1, f32),
                    mat(vf, 1, f32),
                    du,
                    width,
                    0.0,
                )?;
                launch!(self.dev.stream(), &kern.tanh, per_element(terms); du, u, du, n);
            }
            // dqp sums over the keys, dkp over the queries.
            let (dqp, dkp) = (at(dqp), at(dkp));
            // SAFETY: per row, ones [1, L] (stride 0) · du's [L, A] into dqp's [1, A]; per
            // batch row, ones [1, Tq] · du's [Tq, L·A] into dkp's [1, L·A]: du holds
            // rows·L·A = B·Tq·L·A f32, dqp rows·A and dkp B·L·A f32, ones ≥ max(L, Tq).
            unsafe {
                lane.gemm_batched(&Batched {
                    count: rows,
                    m: 1,
                    n: width,
                    k: len,
                    a: Strided::new(ones, len, f32, 0),
                    a_op: Op::AsIs,
                    b: Strided::new(du, width, f32, len * width),
                    b_op: Op::AsIs,
                    c: Strided::new(dqp, width, f32, width),
                    beta: 0.0,
                })?;
                lane.gemm_batched(&Batched {
                    count: s.batch,
                    m: 1,
                    n: len * width,
                    k: s.queries,
                    a: Strided::new(ones, s.queries, f32, 0),
                    a_op: Op::AsIs,
                    b: Strided::new(du, len * width, f32, s.queries * len * width),
                    b_op: Op::AsIs,
                    c: Strided::new(dkp, len * width, f32, len * width),
                    beta: 0.0,
                })?;
            }
            // The score vector's gradient Σ ds·u over every (row, key), the biases' the sums
            // of dqp and dkp over their rows: f32 out (cuBLAS writes no half from f32 operands),
            // converted for half dtypes.
            let reductions = [
                (j.out.score_v, ds, u, rows * len),
                (j.out.b_q, ones, dqp, rows),
                (j.out.b_k, ones, dkp, keys_rows),
            ];
            for (i, (out, x, y, n)) in reductions.into_iter().enumerate() {
                if out == 0 {
                    continue;
                }
                let c = if half { at(small + i * width) } else { out };
                // SAFETY: c [1, A] f32 (the `small` region's i-th A, or the [A] gradient
                // itself when the dtype is f32) = x [1, n] · y [n, A]: ds and u (n = rows·L),
                // or ones and dqp (n = rows) or dkp (n = B·L), all f32 regions of ≥ n and n·A.
                // Then, for half dtypes, into the gradient ([A] of the layer's dtype).
                unsafe {
                    lane.gemm_batched(&single(
                        1,
                        width,
                        n,
                        mat(x, n, f32),
                        Op::AsIs,
                        mat(y, width, f32),
                        Op::AsIs,
                        mat(c, width, f32),
                    ))?;
                    if half {
                        self.convert_into(c, out, width)?;
                    }
                }
            }
            let (dqp, dkp) = if half {
                // SAFETY: dqp [rows, A] and dkp [B·L, A] f32 into their half regions of the
                // same counts.
                unsafe {
                    (
                        self.convert_into(dqp, at(dqp_t), rows * width)?,
                        self.convert_into(dkp, at(dkp_h), keys_rows * width)?,
                    )
                }
            } else {
                (dqp, dkp)
            };
            // SAFETY: dqp [rows, A] and dkp [B·L, A] in the layer's dtype.
            unsafe { self.additive_tail(j, dqp, dkp)? };
        } else {
            let ds = if half {
                // SAFETY: ds [rows, L] f32 into the ds_t region, rows·L of the layer's dtype.
                unsafe { self.convert_into(ds, at(ds_t), rows * len)? }
            } else {
                ds
            };
            let dkp = if general { at(dkp_t) } else { j.out.dk };
            // SAFETY: ds [rows, L]; qs the query [rows, Dq], ks the key side [B·L, Dq] (kp_t
            // or the keys, Dk = Dq for dot scores); the query's gradient [rows, Dq] and dkp
            // the kp_t gradient region [B·L, Dq] or the keys' gradient [B·L, Dk].
            unsafe { self.product_tail(j, ds, qs, ks, s.dq, j.out.dq, dkp)? };
            if general {
                // SAFETY: dkp_t [B·L, Dq] was just written.
                unsafe { self.general_tail(j, dkp, false)? };
            }
        }
        // SAFETY: p_t [rows, L] in the layer's dtype (p itself when that is f32).
        unsafe { self.values_tail(j, p_t) }
    }

    /// f32 `src` (n elements) into `dst` in the layer's dtype; returns `dst`.
    ///
    /// # Safety
    /// `src` addresses n f32 and `dst` room for n elements of the layer's dtype, both live on
    /// this device.
    unsafe fn convert_into(&self, src: u64, dst: u64, n: usize) -> Result<u64> {
        let n_i = n as i32;
        // SAFETY: the caller's contract (see # Safety); one thread per element.
        unsafe { launch!(self.dev.stream(), &self.kernels.convert, per_element(n); src, dst, n_i) };
        Ok(dst)
    }

    /// Additive scores: dq = dqp·W_q, dW_q = dqpᵀ·q, dk = dkp·W_k, dW_k = dkpᵀ·k, for dqp
    /// [rows, A] and dkp [B·L, A] in the layer's dtype.
    ///
    /// # Safety
    /// As `backward`'s, with dqp and dkp as above.
    unsafe fn additive_tail(&self, j: &Job<'_>, dqp: u64, dkp: u64) -> Result<()> {
        let (s, dt, a) = (&j.s, self.dtype, j.width);
        let w_q = self.w_q.expect("additive layers have query_proj");
        let w_k = self.w_k.expect("additive layers have key_proj");
        let keys_rows = s.batch * s.keys;
        let lane = &self.dev.lanes()[0];
        let sides = [
            (dqp, j.rows, w_q, j.q, s.dq, j.out.dq, j.out.w_q),
            (dkp, keys_rows, w_k, j.k, s.dk, j.out.dk, j.out.w_k),
        ];
        for (dy, rows, w, x, n, dx, dw) in sides {
            let dy = mat(dy, a, dt);
            // SAFETY: dx [rows, n] = dy [rows, A] · W [A, n] and dW [A, n] = dyᵀ · x [rows, n],
            // for the query side (rows = B·Tq, n = Dq) and the key side (B·L, Dk): dy is the
            // caller's dqp or dkp, W the layer's weight, x the job's query or keys and dx, dW
            // the gradients allocated with their sizes (the caller's contract).
            unsafe {
                lane.gemm_batched(&single(
                    rows,
                    n,
                    a,
                    dy,
                    Op::AsIs,
                    w,
                    Op::AsIs,
                    mat(dx, n, dt),
                ))?;
                let x = mat(x, n, dt);
                lane.gemm_batched(&single(
                    a,
                    n,
                    rows,
                    dy,
                    Op::Transposed,
                    x,
                    Op::AsIs,
                    mat(dw, n, dt),
                ))?;
            }
        }
        Ok(())
    }

    /// Products, per batch row: dqs = ds·kp [Tq, w] and dkp = dsᵀ·qs [L, w], for ds [rows, L],
    /// the query side `qs` [rows, w] and the key side `kp` [B·L, w], all in the layer's dtype.
    ///
    /// # Safety
    /// As `backward`'s, with the operands as above and `dqs`, `dkp` room for their results.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_tail(
        &self,
        j: &Job<'_>,
        ds: u64,
        qs: u64,
        kp: u64,
        w: usize,
        dqs: u64,
        dkp: u64,
    ) -> Result<()> {
        let (s, dt) = (&j.s, self.dtype);
        let (tq, len) = (s.queries, s.keys);
        let lane = &self.dev.lanes()[0];
        let ds = Strided::new(ds, len, dt, tq * len);
        // c [m, w] = op(ds) [m, k] · b [k, w] per batch row.
        let times = |a_op: Op, m: usize, k: usize, b: u64, c: u64| Batched {
            count: s.batch,
            m,
            n: w,
            k,
            a: ds,
            a_op,
            b: Strided::new(b, w, dt, k * w),
            b_op: Op::AsIs,
            c: Strided::new(c, w, dt, m * w),
            beta: 0.0,
        };
        // SAFETY: per batch row, ds [Tq, L] (stride Tq·L), kp [L, w] and qs [Tq, w], and the
        // results dqs [Tq, w] and dkp [L, w], as the caller's contract sizes them.
        unsafe {
            lane.gemm_batched(&times(Op::AsIs, tq, len, kp, dqs))?;
            lane.gemm_batched(&times(Op::Transposed, len, tq, qs, dkp))
        }
    }

    /// General scores, back through W [Dq, Dk]: with the key side projected (kp = k·Wᵀ, `dy`
    /// = dkp [B·L, Dq]) dk = dkp·W and dW = dkpᵀ·k; with the query side (u = q·W, `dy` = du
    /// [rows, Dk]) dq = du·Wᵀ and dW = qᵀ·du.
    ///
    /// # Safety
    /// As `backward`'s, with `dy` as above in the layer's dtype.
    unsafe fn general_tail(&self, j: &Job<'_>, dy: u64, query_side: bool) -> Result<()> {
        let (s, dt) = (&j.s, self.dtype);
        let w = self.w_k.expect("general layers have key_proj");
        let lane = &self.dev.lanes()[0];
        let dw = mat(j.out.w_k, s.dk, dt);
        if query_side {
            let (du, q) = (mat(dy, s.dk, dt), mat(j.q, s.dq, dt));
            let dq = mat(j.out.dq, s.dq, dt);
            // SAFETY: dq [rows, Dq] = du [rows, Dk] · Wᵀ and dW [Dq, Dk] = qᵀ · du, with W the
            // layer's [Dq, Dk], q the job's query and dq, dW gradients of their sizes (the
            // caller's contract).
            unsafe {
                lane.gemm_batched(&single(
                    j.rows,
                    s.dq,
                    s.dk,
                    du,
                    Op::AsIs,
                    w,
                    Op::Transposed,
                    dq,
                ))?;
                lane.gemm_batched(&single(
                    s.dq,
                    s.dk,
                    j.rows,
                    q,
                    Op::Transposed,
                    du,
                    Op::AsIs,
                    dw,
                ))
            }
        } else {
            let keys_rows = s.batch * s.keys;
            let (dkp, k) = (mat(dy, s.dq, dt), mat(j.k, s.dk, dt));
            let dk = mat(j.out.dk, s.dk, dt);
            // SAFETY: dk [B·L, Dk] = dkp [B·L, Dq] · W and dW [Dq, Dk] = dkpᵀ · k, with W the
            // layer's [Dq, Dk], k the job's keys and dk, dW gradients of their sizes (the
            // caller's contract).
            unsafe {
                lane.gemm_batched(&single(
                    keys_rows,
                    s.dk,
                    s.dq,
                    dkp,
                    Op::AsIs,
                    w,
                    Op::AsIs,
                    dk,
                ))?;
                lane.gemm_batched(&single(
                    s.dq,
                    s.dk,
                    keys_rows,
                    dkp,
                    Op::Transposed,
                    k,
                    Op::AsIs,
                    dw,
                ))
            }
        }
    }

    /// d values = pᵀ·dctx per batch row, for p [rows, L] in the layer's dtype; added to the
    /// keys' gradient when the keys are the values.
    ///
    /// # Safety
    /// As `backward`'s, with `p` as above; the keys' gradient written when it is added to.
    unsafe fn values_tail(&self, j: &Job<'_>, p: u64) -> Result<()> {
        let (s, dt) = (&j.s, self.dtype);
        let (c, beta) = match j.out.dv {
            0 => (j.out.dk, 1.0),
            dv => (dv, 0.0),
        };
        // SAFETY: per batch row, pᵀ [L, Tq] of p [Tq, L] (the caller's) times grad [Tq, Dv]
        // into the values' gradient [L, Dv] — or added into the keys' [L, Dk] when the keys
        // are the values (then Dk = Dv); both allocated with their inputs' sizes.
        unsafe {
            self.dev.lanes()[0].gemm_batched(&Batched {
                count: s.batch,
                m: s.keys,
                n: s.dv,
                k: s.queries,
                a: Strided::new(p, s.keys, dt, s.queries * s.keys),
                a_op: Op::Transposed,
                b: Strided::new(j.grad, s.dv, dt, s.queries * s.dv),
                b_op: Op::AsIs,
                c: Strided::new(c, s.dv, dt, s.keys * s.dv),
                beta,
            })
        }
    }
}
