//! CUDA attention. The key side is one cuBLAS GEMM per source (f32 out) plus the bias, stored
//! in the storage dtype. Per call, the query side is a GEMM (additive) or a conversion to f32,
//! then either one fused kernel per (row, query) — scores, masked softmax and context without
//! the scores leaving shared memory — or the naive chain: broadcast add, tanh and a GEMV
//! (additive) or a batched GEMM (products) for the scores, a softmax kernel, and a batched GEMM
//! for the context.

use super::{Attended, Keys, Params, Score};
use crate::device::{data_ptr, reading, CudaDevice, Device, MatRef, RightOperand, Strided};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::ops::recurrent::Algo;
use crate::tensor::Tensor;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Threads per block of the attention kernels (ATT_THREADS in kernels/attention.cu).
const THREADS: u32 = 256;
/// Floats of shared memory the fused kernel needs besides q, v and the scores: the context's
/// partial sums (ATT_WARPS · CTX_PASS) and the reduction slots (ATT_WARPS).
const FUSED_FIXED_FLOATS: usize = 8 * 256 + 8;
/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// Mode codes of `attend_fused` (kernels/attention.cu).
const ATT_ADDITIVE: i32 = 0;
const ATT_PRODUCT: i32 = 1;

fn blocks(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row.
fn per_row(rows: usize, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    }
}

/// Launches `$f` with `$cfg` on the device stream. Arguments must be places. Callers are
/// `unsafe` blocks whose `SAFETY:` lines say why the addresses and sizes are valid.
macro_rules! launch {
    ($dev:expr, $f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let mut builder = $dev.stream().launch_builder($f);
        $( builder.arg(&$arg); )+
        builder.launch($cfg)?;
    }};
}

fn data(t: &Tensor) -> Result<&CudaData> {
    t.cuda_data()
}

/// A copy of `t` on `dev` in `dtype`: device to device when it is there already in `dtype`,
/// else through `Tensor::to`.
pub(crate) fn copy_to(dev: &Arc<CudaDevice>, t: &Tensor, dtype: DType) -> Result<Tensor> {
    let device = Device::Cuda(dev.clone());
    let src = match t.cuda_data() {
        Ok(src) if src.dtype() == dtype && t.check_on(&device, "").is_ok() => src,
        _ => return t.to(&device, dtype),
    };
    let out = dev.alloc_output_data(dtype, t.numel())?;
    let dst = data_ptr(&out, dev.stream());
    reading(src, dev.stream(), |src| {
        // SAFETY: both buffers hold t.numel() elements of `dtype` on this device.
        unsafe { dev.copy_async(dst, src, t.numel() * dtype.size_in_bytes()) }
    })?;
    Tensor::from_cuda_data(out, t.shape())
}

/// An f32 scratch buffer of `len` elements and its address.
fn scratch(dev: &CudaDevice, len: usize) -> Result<(CudaData, u64)> {
    let buf = dev.alloc_output_data(DType::F32, len)?;
    let ptr = data_ptr(&buf, dev.stream());
    Ok((buf, ptr))
}

/// y[rows, n] (f32) = x[rows, k] · Wᵀ (+ b) for a weight W [n, k] in the storage dtype.
///
/// # Safety
/// `x` addresses rows·k elements of `dtype` on this device.
unsafe fn linear(
    dev: &CudaDevice,
    x: u64,
    dtype: DType,
    rows: usize,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<(CudaData, u64)> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let (y, y_ptr) = scratch(dev, rows * n)?;
    let lane = &dev.lanes()[0];
    let a = MatRef {
        ptr: x,
        ld: k,
        dtype,
    };
    lane.gemm_abt(
        rows,
        n,
        k,
        a,
        MatRef::of(data(w)?, k, dev.stream()),
        y_ptr,
        n,
        0.0,
    )?;
    if let Some(b) = b {
        let f = dev.function("elementwise", "add_bias_naive", dtype)?;
        let (ldy, bias, rows_i, cols) = (
            n as i32,
            data_ptr(data(b)?, dev.stream()),
            rows as i32,
            n as i32,
        );
        // SAFETY: y holds rows·n f32; the bias n elements of `dtype`.
        launch!(dev, &f, blocks(rows * n); y_ptr, ldy, bias, rows_i, cols);
    }
    Ok((y, y_ptr))
}

/// f32 `src` (len elements) into a new buffer of `dtype`.
///
/// # Safety
/// `src` addresses len f32 on this device.
unsafe fn convert(dev: &CudaDevice, src: u64, len: usize, dtype: DType) -> Result<CudaData> {
    let out = dev.alloc_output_data(dtype, len)?;
    let (dst, n) = (data_ptr(&out, dev.stream()), len as i32);
    let f = dev.function("elementwise", "convert_naive", dtype)?;
    launch!(dev, &f, blocks(len); src, dst, n);
    Ok(out)
}

/// The key side on the device: keys [B, L, Dk] in the storage dtype → [B, L, K].
pub(crate) fn project_keys(
    dev: &Arc<CudaDevice>,
    score: Score,
    params: &Params,
    keys: &Tensor,
) -> Result<Tensor> {
    let &[b, l, _] = keys.shape() else {
        unreachable!("checked by the layer")
    };
    let dtype = keys.dtype();
    let (Some(w), false) = (&params.w_k, matches!(score, Score::Dot { .. })) else {
        return copy_to(dev, keys, dtype);
    };
    let _queue = dev.lock_queue();
    let n = w.shape()[0];
    let out = reading(data(keys)?, dev.stream(), |k| {
        // SAFETY: keys holds B·L·Dk elements of `dtype`; the results are sized by `linear`.
        unsafe {
            let (y, y_ptr) = linear(dev, k, dtype, b * l, w, params.b_k.as_ref())?;
            let out = convert(dev, y_ptr, b * l * n, dtype)?;
            drop(y);
            Ok::<_, Error>(out)
        }
    })?;
    Tensor::from_cuda_data(out, &[b, l, n])
}

/// The fused kernel's dynamic shared memory for K-wide scores over L keys.
fn fused_shared_bytes(score: Score, k: usize, len: usize) -> usize {
    let v = if score == Score::Additive { k } else { 0 };
    4 * (k + v + len + FUSED_FIXED_FLOATS)
}

/// Lets `f` use `bytes` of dynamic shared memory, or says why it cannot.
fn allow_shared(dev: &CudaDevice, f: &CudaFunction, bytes: usize, len: usize) -> Result<()> {
    if bytes <= DEFAULT_SHARED_BYTES {
        return Ok(());
    }
    let limit = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
        as usize;
    if bytes > limit {
        return Err(Error::Config(format!(
            "{len} keys need {bytes} B of shared memory in the fused attention kernel, more than \
             this device's {limit} B; use the naive algorithm"
        )));
    }
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )?;
    Ok(())
}

/// Attends every query of `query` [B, Tq, Dq] (on the device, in the keys' dtype) over `keys`.
pub(crate) fn attend(
    dev: &CudaDevice,
    algo: Algo,
    score: Score,
    params: &Params,
    keys: &Keys,
    query: &Tensor,
    want_weights: bool,
) -> Result<Attended> {
    let &[batch, tq, _] = query.shape() else {
        unreachable!("checked by the layer")
    };
    let dtype = keys.projected.dtype();
    let (len, dv, k) = (keys.len(), keys.value_size(), keys.projected.shape()[2]);
    let rows = batch * tq;
    let lengths = keys
        .device_lengths
        .as_ref()
        .ok_or_else(|| Error::Config("keys were prepared for the CPU".into()))?;
    let s = dev.stream();
    let (kp, vals) = (
        data_ptr(data(&keys.projected)?, s),
        data_ptr(data(&keys.values)?, s),
    );
    let lengths = crate::device::dev_ptr(lengths, s);
    let scale = match score {
        Score::Dot { scale } => scale,
        _ => 1.0,
    };
    let _queue = dev.lock_queue();
    let (context, weights) = reading(data(query)?, s, |q| -> Result<_> {
        // SAFETY (every launch and GEMM below): the query holds rows·Dq elements of `dtype`;
        // the keys' buffers B·L·K and B·L·Dv, lengths B ints in 1..=L (checked by the layer);
        // every scratch and output buffer is allocated here with the size its writer covers.
        unsafe {
            // The query side, f32 [rows, K].
            let (_qf, qf) = match (score, &params.w_q) {
                (Score::Additive, Some(w)) => linear(dev, q, dtype, rows, w, params.b_q.as_ref())?,
                _ => {
                    let (buf, ptr) = scratch(dev, rows * k)?;
                    let f = dev.function("elementwise", "load_naive", dtype)?;
                    let n = (rows * k) as i32;
                    launch!(dev, &f, blocks(rows * k); q, ptr, n);
                    (buf, ptr)
                }
            };
            let score_v = match (score, &params.v) {
                (Score::Additive, Some(v)) => data_ptr(data(v)?, s),
                _ => 0,
            };
            match algo {
                Algo::Naive => naive(
                    dev,
                    score,
                    q,
                    qf,
                    kp,
                    vals,
                    score_v,
                    scale,
                    lengths,
                    keys,
                    rows,
                    tq,
                    dtype,
                    want_weights,
                ),
                Algo::Auto | Algo::Fused => {
                    let context = dev.alloc_output_data(dtype, rows * dv)?;
                    let weights = want_weights
                        .then(|| dev.alloc_output_data(dtype, rows * len))
                        .transpose()?;
                    let (ctx_ptr, w_ptr) = (
                        data_ptr(&context, s),
                        weights.as_ref().map_or(0, |w| data_ptr(w, s)),
                    );
                    let f = dev.function("attention", "attend_fused", dtype)?;
                    let bytes = fused_shared_bytes(score, k, len);
                    allow_shared(dev, &f, bytes, len)?;
                    let mode = if score == Score::Additive {
                        ATT_ADDITIVE
                    } else {
                        ATT_PRODUCT
                    };
                    let (tq_i, len_i, k_i, dv_i) = (tq as i32, len as i32, k as i32, dv as i32);
                    launch!(dev, &f, per_row(rows, bytes);
                        qf, kp, vals, score_v, scale, lengths, tq_i, len_i, k_i, dv_i, mode, ctx_ptr, w_ptr);
                    Ok((context, weights))
                }
            }
        }
    })?;
    Ok(Attended {
        context: Tensor::from_cuda_data(context, &[batch, tq, dv])?,
        weights: weights
            .map(|w| Tensor::from_cuda_data(w, &[batch, tq, len]))
            .transpose()?,
    })
}

/// The naive chain; returns (context, weights) in the storage dtype.
///
/// # Safety
/// As `attend`'s launches: every address covers what its kernel reads.
#[allow(clippy::too_many_arguments)]
unsafe fn naive(
    dev: &CudaDevice,
    score: Score,
    q: u64,
    qf: u64,
    kp: u64,
    vals: u64,
    score_v: u64,
    scale: f32,
    lengths: u64,
    keys: &Keys,
    rows: usize,
    tq: usize,
    dtype: DType,
    want_weights: bool,
) -> Result<(CudaData, Option<CudaData>)> {
    let (batch, len, dv, k) = (
        keys.batch(),
        keys.len(),
        keys.value_size(),
        keys.projected.shape()[2],
    );
    let lane = &dev.lanes()[0];
    let (_scores, e) = scratch(dev, rows * len)?;
    if score == Score::Additive {
        // tanh(q + kp) for every (row, key) [rows·L, A], then a GEMV with v.
        if rows * len * k > i32::MAX as usize {
            return Err(Error::Config(format!(
                "naive additive attention would materialise {rows}·{len}·{k} scores' terms, more \
                 than its kernels index; use the fused algorithm"
            )));
        }
        let (_sum, sum) = scratch(dev, rows * len * k)?;
        let f = dev.function("attention", "broadcast_add_naive", dtype)?;
        let (rows_i, tq_i, len_i, k_i) = (rows as i32, tq as i32, len as i32, k as i32);
        launch!(dev, &f, blocks(rows * len * k); qf, kp, sum, rows_i, tq_i, len_i, k_i);
        let f = dev.function("elementwise", "unary_naive", DType::F32)?;
        let (n_rows, act) = (
            (rows * len) as i32,
            crate::ops::recurrent::Activation::Tanh.code(),
        );
        launch!(dev, &f, blocks(rows * len * k); sum, k_i, sum, k_i, n_rows, k_i, act);
        let (_v, v) = scratch(dev, k)?;
        let f = dev.function("elementwise", "load_naive", dtype)?;
        launch!(dev, &f, blocks(k); score_v, v, k_i);
        let f32_mat = |ptr| MatRef {
            ptr,
            ld: k,
            dtype: DType::F32,
        };
        lane.gemm_abt(rows * len, 1, k, f32_mat(sum), f32_mat(v), e, 1, 0.0)?;
    } else {
        // Products: e[b] = Q[b] · KP[b]ᵀ, one batched GEMM over the rows' sources.
        let a = Strided {
            mat: MatRef {
                ptr: q,
                ld: k,
                dtype,
            },
            stride: tq * k,
        };
        let b = Strided {
            mat: MatRef {
                ptr: kp,
                ld: k,
                dtype,
            },
            stride: len * k,
        };
        lane.gemm_batched(
            batch,
            tq,
            len,
            k,
            a,
            b,
            RightOperand::Transposed,
            e,
            len,
            tq * len,
        )?;
    }
    let (_probs, p) = scratch(dev, rows * len)?;
    let f = dev.function("attention", "masked_softmax_naive", DType::F32)?;
    let (tq_i, len_i) = (tq as i32, len as i32);
    launch!(dev, &f, per_row(rows, 0); e, p, lengths, tq_i, len_i, scale);
    // The weights in the storage dtype are also the context GEMM's left operand.
    let weights = convert(dev, p, rows * len, dtype)?;
    let w = data_ptr(&weights, dev.stream());
    let (_ctx, ctx) = scratch(dev, rows * dv)?;
    let a = Strided {
        mat: MatRef {
            ptr: w,
            ld: len,
            dtype,
        },
        stride: tq * len,
    };
    let b = Strided {
        mat: MatRef {
            ptr: vals,
            ld: dv,
            dtype,
        },
        stride: len * dv,
    };
    lane.gemm_batched(
        batch,
        tq,
        dv,
        len,
        a,
        b,
        RightOperand::Plain,
        ctx,
        dv,
        tq * dv,
    )?;
    let context = convert(dev, ctx, rows * dv, dtype)?;
    Ok((context, want_weights.then_some(weights)))
}
