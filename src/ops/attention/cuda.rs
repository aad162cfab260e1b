//! CUDA attention. The key side is one cuBLAS GEMM per source (f32 out) plus the bias, stored
//! in the storage dtype. Per call, the query side is a GEMM (additive scores) or read as it is,
//! then either the fused kernels — per (row, query, chunk of keys) the scores, a masked softmax
//! and the context without the scores leaving shared memory, then one kernel combining a row's
//! chunks — or the naive chain: broadcast add, tanh and a GEMV (additive) or a batched GEMM
//! (products) for the scores, a softmax kernel, and a batched GEMM for the context.
//!
//! The backward (`backward.rs`) recomputes the scores the same two ways.
//!
//! A decoder calls this once per token, so the host side is kept short: kernels and parameter
//! addresses are resolved once per layer (`OnDevice`), key addresses once per source
//! (`KeysOnDevice`), and scratch lives in a workspace reused across calls.

use super::{Attended, Keys, Params, Score};
use crate::device::kernels::ids;
use crate::device::launch::{launch, per_element, per_row};
use crate::device::{
    allow_dynamic_shared, data_ptr, reading, Batched, CudaDevice, Device, MatRef, Op, Strided,
};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::algo::Algo;
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, CudaSlice};
use std::sync::{Arc, Mutex, OnceLock};

/// Floats of shared memory the fused kernel needs besides q, v and the chunk's scores: the
/// context's partial sums (ATT_WARPS · CTX_PASS) and the reduction slots (ATT_WARPS).
const FUSED_FIXED_FLOATS: usize = 8 * 256 + 8;
/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;
/// Fused blocks to aim for per multiprocessor, so that loads from several blocks overlap.
const BLOCKS_PER_SM: usize = 4;
/// Keys per chunk: at least this many (a block's fixed cost is amortised) and at most
/// `MAX_CHUNK` (its scores fit in shared memory).
const MIN_CHUNK: usize = 32;
const MAX_CHUNK: usize = 4096;

use crate::device::kernels::codes::{ATT_ADDITIVE, ATT_PRODUCT};

/// The naive additive path's rows·len·width terms (the pre-activation it materialises), which
/// its kernels index with i32: too many is an error that names the fused algorithm.
fn naive_additive_terms(rows: usize, len: usize, width: usize) -> Result<usize> {
    let terms = rows * len * width;
    if terms > i32::MAX as usize {
        return Err(Error::Unsupported {
            request: "naive additive attention".into(),
            reason: format!(
                "it would hold {rows}·{len}·{width} terms, more than its kernels index; use the \
                 fused algorithm"
            ),
        });
    }
    Ok(terms)
}

mod backward;
pub(crate) use backward::BackwardCall;

fn address(t: &Tensor, dev: &CudaDevice) -> Result<u64> {
    Ok(data_ptr(t.cuda_data()?, dev.stream()))
}

fn address_of(t: &Option<Tensor>, dev: &CudaDevice) -> Result<u64> {
    t.as_ref().map_or(Ok(0), |t| address(t, dev))
}

/// The kernels one layer launches.
struct Kernels {
    fused: CudaFunction,
    combine: CudaFunction,
    broadcast_add: CudaFunction,
    softmax: CudaFunction,
    unary: CudaFunction,
    add_bias: CudaFunction,
    load: CudaFunction,
    convert: CudaFunction,
}

/// A layer's CUDA side: kernels and parameter addresses resolved once, and a workspace of f32
/// scratch reused by every call (all on one stream, so reuse is ordered).
pub(crate) struct OnDevice {
    dev: Arc<CudaDevice>,
    dtype: DType,
    multiprocessors: usize,
    /// The most dynamic shared memory a block may opt into.
    shared_limit: usize,
    kernels: Kernels,
    /// Addresses into the layer's parameters, which live as long as the layer.
    w_q: Option<MatRef>,
    w_k: Option<MatRef>,
    /// The rows of W_k: the width of projected keys.
    key_width: usize,
    b_q: u64,
    b_k: u64,
    score_v: u64,
    workspace: Mutex<Option<CudaSlice<f32>>>,
    /// The backward's kernels, loaded by its first call.
    backward: OnceLock<backward::Kernels>,
}

/// A source's CUDA side: the lengths as the kernels read them and the keys' addresses.
pub(crate) struct KeysOnDevice {
    _lengths: CudaSlice<i32>,
    lengths: u64,
    projected: u64,
    values: u64,
}

impl OnDevice {
    /// `params` must be on `dev` in `dtype` and outlive the result.
    pub fn new(dev: &Arc<CudaDevice>, dtype: DType, params: &Params) -> Result<Self> {
        let f = |kernel, dt| dev.function(kernel, dt);
        let kernels = Kernels {
            fused: f(ids::attention::ATTEND_FUSED, dtype)?,
            combine: f(ids::attention::ATTEND_COMBINE, dtype)?,
            broadcast_add: f(ids::attention::BROADCAST_ADD_NAIVE, dtype)?,
            softmax: f(ids::attention::MASKED_SOFTMAX_NAIVE, DType::F32)?,
            unary: f(ids::elementwise::UNARY_NAIVE, DType::F32)?,
            add_bias: f(ids::elementwise::ADD_BIAS_NAIVE, dtype)?,
            load: f(ids::elementwise::LOAD_NAIVE, dtype)?,
            convert: f(ids::elementwise::CONVERT_NAIVE, dtype)?,
        };
        let mat = |t: &Option<Tensor>| -> Result<Option<MatRef>> {
            t.as_ref()
                .map(|t| Ok(MatRef::of(t.cuda_data()?, t.shape()[1], dev.stream())))
                .transpose()
        };
        Ok(Self {
            multiprocessors: dev.multiprocessors()?,
            shared_limit: dev.shared_memory_optin()?,
            kernels,
            w_q: mat(&params.w_q)?,
            w_k: mat(&params.w_k)?,
            key_width: params.w_k.as_ref().map_or(0, |w| w.shape()[0]),
            b_q: address_of(&params.b_q, dev)?,
            b_k: address_of(&params.b_k, dev)?,
            score_v: address_of(&params.v, dev)?,
            workspace: Mutex::new(None),
            backward: OnceLock::new(),
            dev: dev.clone(),
            dtype,
        })
    }

    /// y[rows, n] (f32, at `y`) = x[rows, k] · Wᵀ (+ b) for a weight W [n, k] at `w`.
    ///
    /// # Safety
    /// `x` addresses rows·k elements of the layer's dtype (k = `w.ld`), `y` rows·n f32, `b` n
    /// elements of the layer's dtype or is 0, and `w` is one of this layer's weights, [n, k];
    /// all live on this device.
    unsafe fn linear(
        &self,
        x: u64,
        rows: usize,
        w: MatRef,
        n: usize,
        b: u64,
        y: u64,
    ) -> Result<()> {
        let k = w.ld;
        let a = MatRef {
            ptr: x,
            ld: k,
            dtype: self.dtype,
        };
        // SAFETY: the caller's contract (see # Safety): x [rows, k], w [n, k], y [rows, n] f32.
        unsafe { self.dev.lanes()[0].gemm_abt(rows, n, k, a, w, y, n, 0.0)? };
        if b != 0 {
            let (ldy, rows_i, cols) = (n as i32, rows as i32, n as i32);
            // SAFETY: y holds rows·n f32 and b n elements (the caller's contract); one thread
            // per element of rows·n.
            unsafe {
                launch!(self.dev.stream(), &self.kernels.add_bias, per_element(rows * n); y, ldy, b, rows_i, cols)
            };
        }
        Ok(())
    }

    /// f32 `src` (len elements) into a new buffer of the layer's dtype.
    ///
    /// # Safety
    /// `src` addresses len f32 in a live buffer on this device.
    unsafe fn convert(&self, src: u64, len: usize) -> Result<CudaData> {
        let out = self.dev.alloc_output_data(self.dtype, len)?;
        let (dst, n) = (data_ptr(&out, self.dev.stream()), len as i32);
        // SAFETY: src holds len f32 (the caller's contract); `out` was just allocated with
        // len elements of the layer's dtype; one thread per element.
        unsafe { launch!(self.dev.stream(), &self.kernels.convert, per_element(len); src, dst, n) };
        Ok(out)
    }

    /// At least `floats` f32 of scratch (grown as needed) and its address, with the lock that
    /// keeps it this call's until the work is enqueued.
    fn workspace(
        &self,
        floats: usize,
    ) -> Result<(std::sync::MutexGuard<'_, Option<CudaSlice<f32>>>, u64)> {
        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        if ws.as_ref().is_none_or(|w| w.len() < floats) {
            *ws = Some(self.dev.alloc_output::<f32>(floats)?);
        }
        let ptr = crate::device::dev_ptr(ws.as_ref().expect("allocated above"), self.dev.stream());
        Ok((ws, ptr))
    }

    /// The key side of a source: keys [B, L, Dk] on the device in the layer's dtype →
    /// [B, L, K], and the source's device-side addresses once `values` are known.
    pub fn project_keys(&self, score: Score, keys: &Tensor) -> Result<Tensor> {
        let &[b, l, _] = keys.shape() else {
            unreachable!("checked by the layer")
        };
        let (Some(w), false) = (self.w_k, matches!(score, Score::Dot { .. })) else {
            return keys.to(&Device::Cuda(self.dev.clone()), self.dtype);
        };
        let n = self.key_width;
        let _queue = self.dev.lock_queue();
        let (_ws, y) = self.workspace(b * l * n)?;
        let out = reading(keys.cuda_data()?, self.dev.stream(), |k| {
            // SAFETY: keys hold B·L·Dk elements; the workspace B·L·n f32.
            unsafe {
                self.linear(k, b * l, w, n, self.b_k, y)?;
                self.convert(y, b * l * n)
            }
        })?;
        Tensor::from_cuda_data(out, &[b, l, n], &self.dev)
    }

    /// The device side of a source whose tensors are final.
    pub fn keys_on_device(
        &self,
        projected: &Tensor,
        values: &Tensor,
        lengths: &[usize],
    ) -> Result<KeysOnDevice> {
        let ints: Vec<i32> = lengths.iter().map(|&n| n as i32).collect();
        let buf = self.dev.upload(&ints)?;
        Ok(KeysOnDevice {
            lengths: crate::device::dev_ptr(&buf, self.dev.stream()),
            _lengths: buf,
            projected: address(projected, &self.dev)?,
            values: address(values, &self.dev)?,
        })
    }

    /// Attends the `tq` queries per row of `query` ([B·Tq, Dq] elements on the device in the
    /// layer's dtype) over `keys`.
    pub fn attend(
        &self,
        algo: Algo,
        score: Score,
        keys: &Keys,
        query: &Tensor,
        tq: usize,
        want_weights: bool,
    ) -> Result<Attended> {
        let on = keys
            .device
            .as_ref()
            .ok_or_else(|| Error::Config("these keys were prepared for the CPU".into()))?;
        let (batch, len, dv, k) = (
            keys.batch(),
            keys.len(),
            keys.value_size(),
            keys.projected.shape()[2],
        );
        let rows = batch * tq;
        let scale = match score {
            Score::Dot { scale } => scale,
            _ => 1.0,
        };
        let _queue = self.dev.lock_queue();
        let (context, weights) = reading(query.cuda_data()?, self.dev.stream(), |q| {
            let job = Job {
                score,
                q,
                rows,
                tq,
                len,
                k,
                dv,
                scale,
                keys: on,
                batch,
            };
            // SAFETY: the query holds rows·Dq elements of the layer's dtype; the source's
            // buffers B·L·K and B·L·Dv, its lengths B ints in 1..=L (checked by the layer).
            unsafe {
                match algo {
                    Algo::Naive => self.naive(&job, want_weights),
                    Algo::Auto | Algo::Fused => self.fused(&job, want_weights),
                    Algo::Persistent => Err(Error::Unsupported {
                        request: "attention".into(),
                        reason: "it has no persistent algorithm (use auto, fused or naive)".into(),
                    }),
                }
            }
        })?;
        Ok(Attended {
            context: Tensor::from_cuda_data(context, &[batch, tq, dv], &self.dev)?,
            weights: weights
                .map(|w| Tensor::from_cuda_data(w, &[batch, tq, len], &self.dev))
                .transpose()?,
        })
    }

    /// How many chunks each row's keys are cut into, and the chunk length.
    fn chunks(&self, rows: usize, len: usize) -> (usize, usize) {
        let wanted = (BLOCKS_PER_SM * self.multiprocessors).div_ceil(rows);
        let splits = wanted
            .min(len.div_ceil(MIN_CHUNK))
            .max(len.div_ceil(MAX_CHUNK))
            .max(1);
        let chunk = len.div_ceil(splits);
        (len.div_ceil(chunk), chunk)
    }

    /// # Safety
    /// As `attend`'s: `j.q` holds rows·k elements of the layer's dtype (rows·Dq: k is Dq for
    /// products, and additive scores project it first); the source's projected keys B·L·K and
    /// values B·L·Dv elements, its lengths B i32 in 1..=L; all live on this device.
    unsafe fn fused(
        &self,
        j: &Job<'_>,
        want_weights: bool,
    ) -> Result<(CudaData, Option<CudaData>)> {
        let (splits, chunk) = self.chunks(j.rows, j.len);
        let additive = j.score == Score::Additive;
        let qf_len = if additive { j.rows * j.k } else { 0 };
        let partial_len = if splits > 1 {
            j.rows * splits * (2 + j.dv)
        } else {
            0
        };
        let probs_len = if splits > 1 && want_weights {
            j.rows * j.len
        } else {
            0
        };
        let (_ws, ws) = self.workspace(qf_len + partial_len + probs_len)?;
        let at = |floats: usize| ws + 4 * floats as u64;
        let (qf, partial, probs) = (at(0), at(qf_len), at(qf_len + partial_len));
        // The query side: W_q q + b_q in f32 for additive scores; products read q as it is.
        let (qf, qt) = match (additive, self.w_q) {
            (true, Some(w)) => {
                // SAFETY: q [rows, Dq] (the caller's contract) through W_q [A, Dq] (A = k) and
                // b_q [A] (or 0) into qf, the workspace's first rows·k f32.
                unsafe { self.linear(j.q, j.rows, w, j.k, self.b_q, qf)? };
                (qf, 0u64)
            }
            _ => (0u64, j.q),
        };
        let s = self.dev.stream();
        let context = self.dev.alloc_output_data(self.dtype, j.rows * j.dv)?;
        let weights = want_weights
            .then(|| self.dev.alloc_output_data(self.dtype, j.rows * j.len))
            .transpose()?;
        let (ctx, w) = (
            data_ptr(&context, s),
            weights.as_ref().map_or(0, |w| data_ptr(w, s)),
        );
        let bytes = 4 * (j.k * if additive { 2 } else { 1 } + chunk + FUSED_FIXED_FLOATS);
        self.allow_shared(&self.kernels.fused, bytes, j.k)?;
        let mode = if additive { ATT_ADDITIVE } else { ATT_PRODUCT };
        let (partial, probs) = (
            if splits > 1 { partial } else { 0 },
            if probs_len > 0 { probs } else { 0 },
        );
        let [tq, len, k, dv, chunk_i, splits_i] =
            [j.tq, j.len, j.k, j.dv, chunk, splits].map(|v| v as i32);
        let (kp, vals, lengths, v, scale) = (
            j.keys.projected,
            j.keys.values,
            j.keys.lengths,
            self.score_v,
            j.scale,
        );
        // SAFETY: the caller's contract covers q (qt, read when not additive), kp, vals and
        // lengths; qf holds rows·k f32 (additive), v is the layer's score vector [A] (or 0),
        // partial rows·splits·(2 + Dv) f32 and probs rows·L f32 in the workspace (0 when
        // unused), ctx rows·Dv and w rows·L (or 0) of the layer's dtype, just allocated. Grid
        // rows × splits, each block with `bytes` of shared memory, which allow_shared let it
        // take.
        unsafe {
            launch!(self.dev.stream(), &self.kernels.fused, per_row(j.rows, splits, bytes);
                qf, qt, kp, vals, v, scale, lengths, tq, len, k, dv, mode, chunk_i, splits_i,
                partial, probs, ctx, w)
        };
        if splits > 1 {
            // Padded: the compiler may load a few factors past the last in one wide read.
            let factors = 4 * (splits.next_multiple_of(4) + 4);
            // SAFETY: reads the partial sums (and probs) the fused launch wrote, writes ctx
            // and w as above; one block per row, its shared memory the padded factors (more
            // than the default 48 KiB only past ~50M keys, which the driver refuses as an
            // error).
            unsafe {
                launch!(self.dev.stream(), &self.kernels.combine, per_row(j.rows, 1, factors);
                    partial, probs, lengths, tq, len, dv, chunk_i, splits_i, ctx, w)
            };
        }
        Ok((context, weights))
    }

    /// Lets `f` use `bytes` of dynamic shared memory, or says why it cannot.
    fn allow_shared(&self, f: &CudaFunction, bytes: usize, k: usize) -> Result<()> {
        if bytes <= DEFAULT_SHARED_BYTES {
            return Ok(());
        }
        if bytes > self.shared_limit {
            return Err(Error::Unsupported {
                request: "the fused attention kernel".into(),
                reason: format!(
                    "a query side of {k} features needs {bytes} B of shared memory, more than \
                     this device's {} B; use the naive algorithm",
                    self.shared_limit
                ),
            });
        }
        allow_dynamic_shared(f, bytes)
    }

    /// # Safety
    /// As `fused`.
    unsafe fn naive(
        &self,
        j: &Job<'_>,
        want_weights: bool,
    ) -> Result<(CudaData, Option<CudaData>)> {
        let (rows, len, k, dv) = (j.rows, j.len, j.k, j.dv);
        let additive = j.score == Score::Additive;
        let terms = if additive {
            naive_additive_terms(rows, len, k)?
        } else {
            0
        };
        let qf_len = if additive { rows * k + k } else { 0 };
        let (_ws, ws) = self.workspace(qf_len + terms + 2 * rows * len + rows * dv)?;
        let at = |floats: usize| ws + 4 * floats as u64;
        let (qf, v, sum) = (at(0), at(rows * k), at(qf_len));
        let (e, p, ctx) = (
            at(qf_len + terms),
            at(qf_len + terms + rows * len),
            at(qf_len + terms + 2 * rows * len),
        );
        let lane = &self.dev.lanes()[0];
        let [tq_i, len_i, k_i] = [j.tq, len, k].map(|x| x as i32);
        if additive {
            // tanh(W_q q + b_q + kp) for every (row, key) [rows·L, A], then a GEMV with v.
            let w_q = self.w_q.expect("additive layers have query_proj");
            // SAFETY: q [rows, Dq] (the caller's contract) through W_q [A, Dq] (A = k) and b_q
            // into qf, the workspace's first rows·k f32.
            unsafe { self.linear(j.q, rows, w_q, k, self.b_q, qf)? };
            let rows_i = rows as i32;
            let kp = j.keys.projected;
            let (n_rows, act) = ((rows * len) as i32, Activation::Tanh.code());
            let score_v = self.score_v;
            let f32_mat = |ptr| MatRef {
                ptr,
                ld: k,
                dtype: DType::F32,
            };
            // SAFETY: sum = tanh(qf + kp) holds `terms` = rows·L·k f32 in the workspace, from
            // qf [rows, k] and the keys' B·L·k (the caller's contract), one thread per term;
            // the layer's score vector v (k elements of its dtype, live with the layer) is
            // widened into the workspace's k f32 after qf; e [rows·L] f32 = sum · v.
            unsafe {
                launch!(self.dev.stream(), &self.kernels.broadcast_add, per_element(terms); qf, kp, sum, rows_i, tq_i, len_i, k_i);
                launch!(self.dev.stream(), &self.kernels.unary, per_element(terms); sum, k_i, sum, k_i, n_rows, k_i, act);
                launch!(self.dev.stream(), &self.kernels.load, per_element(k); score_v, v, k_i);
                lane.gemm_abt(rows * len, 1, k, f32_mat(sum), f32_mat(v), e, 1, 0.0)?;
            }
        } else {
            // Products: e[b] = Q[b] · KP[b]ᵀ, one batched GEMM over the rows' sources.
            // SAFETY: per row b of the batch, Q[b] [Tq, k] of the query (rows = B·Tq, k = Dq)
            // and KP[b] [L, k] of the keys (the caller's contract); e [B, Tq, L] f32 is the
            // workspace's rows·L f32 at `e`.
            unsafe {
                lane.gemm_batched(&Batched {
                    count: j.batch,
                    m: j.tq,
                    n: len,
                    k,
                    a: Strided::new(j.q, k, self.dtype, j.tq * k),
                    a_op: Op::AsIs,
                    b: Strided::new(j.keys.projected, k, self.dtype, len * k),
                    b_op: Op::Transposed,
                    c: Strided::new(e, len, DType::F32, j.tq * len),
                    beta: 0.0,
                })?
            };
        }
        let (lengths, scale) = (j.keys.lengths, j.scale);
        // SAFETY: e and p are the workspace's rows·L f32 each, lengths B i32 (the caller's
        // contract); one block per row.
        unsafe {
            launch!(self.dev.stream(), &self.kernels.softmax, per_row(rows, 1, 0); e, p, lengths, tq_i, len_i, scale)
        };
        // The weights in the storage dtype are also the context GEMM's left operand.
        // SAFETY: p holds rows·L f32.
        let weights = unsafe { self.convert(p, rows * len)? };
        let w = data_ptr(&weights, self.dev.stream());
        // SAFETY: per row b of the batch, the weights [Tq, L] just converted and the values
        // [L, Dv] (the caller's contract); ctx [B, Tq, Dv] f32 is the workspace's last
        // rows·Dv f32.
        unsafe {
            lane.gemm_batched(&Batched {
                count: j.batch,
                m: j.tq,
                n: dv,
                k: len,
                a: Strided::new(w, len, self.dtype, j.tq * len),
                a_op: Op::AsIs,
                b: Strided::new(j.keys.values, dv, self.dtype, len * dv),
                b_op: Op::AsIs,
                c: Strided::new(ctx, dv, DType::F32, j.tq * dv),
                beta: 0.0,
            })?
        };
        // SAFETY: ctx holds rows·Dv f32.
        let context = unsafe { self.convert(ctx, rows * dv)? };
        Ok((context, want_weights.then_some(weights)))
    }
}

/// One call's sizes and addresses.
struct Job<'a> {
    score: Score,
    /// The query, [rows, Dq] in the layer's dtype.
    q: u64,
    batch: usize,
    rows: usize,
    tq: usize,
    len: usize,
    /// The width of the scores' operands: A (additive) or Dq.
    k: usize,
    dv: usize,
    scale: f32,
    keys: &'a KeysOnDevice,
}

#[cfg(test)]
mod tests {
    #[test]
    fn naive_additive_terms_past_i32_are_an_error_naming_the_fused_algorithm() {
        assert_eq!(super::naive_additive_terms(3, 5, 7).unwrap(), 105);
        let e = super::naive_additive_terms(1 << 16, 1 << 10, 1 << 5).unwrap_err();
        assert!(e.to_string().contains("use the fused algorithm"), "{e}");
    }
}
