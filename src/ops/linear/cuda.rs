//! CUDA launchers. Forward: one cuBLASLt GEMM with the bias in its epilogue; where cuBLASLt
//! has no algorithm (or no library), a cuBLAS GEMM straight into the dtype (no bias) or into f32
//! scratch followed by `linear_bias` (kernels/linear.cu). Backward: dx = dy·W and dW = dyᵀ·x as
//! cuBLAS GEMMs, db as `linear_bias_grad` (deterministic column sums).

use super::Computed;
use crate::device::kernels::{codes, ids};
use crate::device::launch::{launch, THREADS};
use crate::device::{data_ptr, reading, Batched, CudaDevice, LinearLt, MatRef, Op, Strided};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::ops::gemm_cpu::LinearSizes;
use crate::tensor::Tensor;
use cudarc::driver::{CudaStream, LaunchConfig};
use std::sync::Arc;

/// The bias gradient's block: columns × row lanes (kernels/codes.cuh).
const LB_COLS: usize = codes::LINEAR_GRAD_COLS as usize;
const LB_ROWS: usize = codes::LINEAR_GRAD_ROWS as usize;
/// Row blocks of `linear_bias`'s grid at most (grid.y's limit); each strides over the rows.
const MAX_ROW_BLOCKS: usize = 65535;

/// cuBLAS takes sizes and leading dimensions as i32, the kernels their sizes.
fn check_i32(s: LinearSizes) -> Result<()> {
    for (what, v) in [("rows", s.rows), ("inputs", s.k), ("outputs", s.n)] {
        if v > i32::MAX as usize {
            return Err(Error::TooLarge {
                what: format!("a linear layer's {what} on CUDA"),
                needed: v.to_string(),
                limit: format!("{} (cuBLAS sizes are i32)", i32::MAX),
            });
        }
    }
    Ok(())
}

/// A new buffer of `len` elements of `dtype` (none for 0).
fn output(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaData> {
    match len {
        0 => dev.empty_data(dtype),
        len => dev.alloc_output_data(dtype, len),
    }
}

/// `reading` for an optional tensor: `f` gets 0 for none.
fn reading_opt<R>(
    t: Option<&Tensor>,
    stream: &CudaStream,
    f: impl FnOnce(u64) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => reading(t.cuda_data()?, stream, f),
        None => f(0),
    }
}

/// One row-major GEMM of the lane (a batch of one).
fn single(m: usize, n: usize, k: usize, a: (MatRef, Op), b: (MatRef, Op), c: MatRef) -> Batched {
    let one = |mat: MatRef| Strided { mat, stride: 0 };
    Batched {
        count: 1,
        m,
        n,
        k,
        a: one(a.0),
        a_op: a.1,
        b: one(b.0),
        b_op: b.1,
        c: one(c),
        beta: 0.0,
    }
}

pub(super) fn forward(
    dev: &Arc<CudaDevice>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    s: LinearSizes,
    shape: &[usize],
) -> Result<Tensor> {
    check_i32(s)?;
    let dtype = x.dtype();
    let y = output(dev, dtype, s.rows * s.n)?;
    if s.rows * s.n == 0 {
        return Tensor::from_cuda_data(y, shape, dev);
    }
    let stream = dev.stream();
    let yp = data_ptr(&y, stream);
    let _queue = dev.lock_queue();
    reading(x.cuda_data()?, stream, |xp| {
        reading(weight.cuda_data()?, stream, |wp| {
            reading_opt(bias, stream, |bp| {
                // SAFETY: x holds rows·k, W n·k, the bias n (checked by `forward`) and y
                // rows·n elements of `dtype`, all on this device; the sizes fit i32.
                unsafe { enqueue_forward(dev, s, dtype, xp, wp, bp, yp) }
            })
        })
    })?;
    Tensor::from_cuda_data(y, shape, dev)
}

/// y = x Wᵀ (+ b) at the given addresses (b = 0: no bias).
///
/// # Safety
/// As `forward`'s call: x rows·k, w n·k, b n (or 0) and y rows·n elements of `dtype` on `dev`;
/// rows, n ≥ 1.
unsafe fn enqueue_forward(
    dev: &CudaDevice,
    s: LinearSizes,
    dtype: DType,
    x: u64,
    w: u64,
    b: u64,
    y: u64,
) -> Result<()> {
    let LinearSizes { rows, k, n } = s;
    if k == 0 {
        // A product of no terms: y is the bias (or zeros).
        // SAFETY: as the caller's; no product to read.
        return unsafe { add_bias(dev, dtype, 0, b, y, rows, n) };
    }
    let lane = &dev.lanes()[0];
    let bias = (b != 0).then_some(b);
    let g = LinearLt {
        rows,
        n,
        k,
        x,
        w,
        bias,
        y,
        dtype,
    };
    // SAFETY: the caller vouches for the addresses and sizes (all ≥ 1 here).
    if dev.cublaslt() && unsafe { lane.linear_lt(&g)? } {
        return Ok(());
    }
    let mat = |ptr, ld| MatRef { ptr, ld, dtype };
    if bias.is_none() {
        let g = single(
            rows,
            n,
            k,
            (mat(x, k), Op::AsIs),
            (mat(w, k), Op::Transposed),
            mat(y, n),
        );
        // SAFETY: x is [rows, k], W [n, k] (read transposed) and y [rows, n], all row-major.
        return unsafe { lane.gemm_batched(&g) };
    }
    let acc = dev.alloc_output::<f32>(rows * n)?;
    let accp = crate::device::dev_ptr(&acc, dev.stream());
    // SAFETY: as above, with the product into `acc` (rows·n f32, freed after the work on this
    // stream); then the bias kernel reads it.
    unsafe {
        lane.gemm_abt(rows, n, k, mat(x, k), mat(w, k), accp, n, 0.0)?;
        add_bias(dev, dtype, accp, b, y, rows, n)
    }
}

/// y [rows, n] = acc (f32, or 0 for none) + bias (or 0 for none), in `dtype`.
///
/// # Safety
/// `acc` rows·n f32 or 0, `b` n elements of `dtype` or 0, `y` rows·n elements of `dtype`, on
/// `dev`; rows, n ≥ 1 and at most i32::MAX.
unsafe fn add_bias(
    dev: &CudaDevice,
    dtype: DType,
    acc: u64,
    b: u64,
    y: u64,
    rows: usize,
    n: usize,
) -> Result<()> {
    let f = dev.function(ids::linear::LINEAR_BIAS, dtype)?;
    let cfg = LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize) as u32,
            rows.min(MAX_ROW_BLOCKS) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows, cols) = (rows as i32, n as i32);
    // SAFETY: the caller vouches for the buffers; each thread writes column c < cols of rows
    // blockIdx.y, blockIdx.y + gridDim.y, ... < rows.
    unsafe { launch!(dev.stream(), &f, cfg; acc, b, y, rows, cols) };
    Ok(())
}

pub(super) fn backward(
    dev: &Arc<CudaDevice>,
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
    s: LinearSizes,
    input_grad: bool,
) -> Result<Computed> {
    check_i32(s)?;
    let LinearSizes { rows, k, n } = s;
    let dtype = x.dtype();
    let dx = input_grad
        .then(|| output(dev, dtype, rows * k))
        .transpose()?;
    let dw = output(dev, dtype, n * k)?;
    let db = has_bias.then(|| output(dev, dtype, n)).transpose()?;
    let stream = dev.stream();
    let dxp = dx.as_ref().map(|dx| data_ptr(dx, stream));
    let dwp = data_ptr(&dw, stream);
    let dbp = db.as_ref().map(|db| data_ptr(db, stream));
    let bytes = dtype.size_in_bytes();
    let mat = |ptr, ld| MatRef { ptr, ld, dtype };
    let lane = &dev.lanes()[0];
    let _queue = dev.lock_queue();
    reading(grad_y.cuda_data()?, stream, |gy| {
        reading(x.cuda_data()?, stream, |xp| {
            reading(weight.cuda_data()?, stream, |wp| -> Result<()> {
                // SAFETY: dy holds rows·n, x rows·k, W n·k elements of `dtype` (checked by
                // `backward`), dx rows·k, dW n·k, db n; every size fits i32.
                unsafe {
                    // dx [rows, k] = dy [rows, n] · W [n, k]
                    if let (Some(dxp), true) = (dxp, rows * k > 0) {
                        match n {
                            0 => dev.fill_async(dxp, 0, rows * k * bytes)?,
                            _ => lane.gemm_batched(&single(
                                rows,
                                k,
                                n,
                                (mat(gy, n), Op::AsIs),
                                (mat(wp, k), Op::AsIs),
                                mat(dxp, k),
                            ))?,
                        }
                    }
                    // dW [n, k] = dyᵀ · x, dy read as stored [rows, n]
                    if n * k > 0 {
                        match rows {
                            0 => dev.fill_async(dwp, 0, n * k * bytes)?,
                            _ => lane.gemm_batched(&single(
                                n,
                                k,
                                rows,
                                (mat(gy, n), Op::Transposed),
                                (mat(xp, k), Op::AsIs),
                                mat(dwp, k),
                            ))?,
                        }
                    }
                    if let (Some(dbp), true) = (dbp, n > 0) {
                        bias_grad(dev, dtype, gy, dbp, rows, n)?;
                    }
                }
                Ok(())
            })
        })
    })?;
    let tensor = |data, shape: &[usize]| Tensor::from_cuda_data(data, shape, dev);
    Ok(Computed {
        input: dx.map(|dx| tensor(dx, x.shape())).transpose()?,
        weight: tensor(dw, weight.shape())?,
        bias: db.map(|db| tensor(db, &[n])).transpose()?,
    })
}

/// db[c] = Σ_r dy[r, c] for dy [rows, n] (rows may be 0: zeros).
///
/// # Safety
/// `dy` rows·n and `db` n elements of `dtype` on `dev`; n ≥ 1, rows and n at most i32::MAX.
unsafe fn bias_grad(
    dev: &CudaDevice,
    dtype: DType,
    dy: u64,
    db: u64,
    rows: usize,
    n: usize,
) -> Result<()> {
    let f = dev.function(ids::linear::LINEAR_BIAS_GRAD, dtype)?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(LB_COLS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (LB_COLS * LB_ROWS * 4) as u32,
    };
    let (rows, cols) = (rows as i32, n as i32);
    // SAFETY: the caller vouches for the buffers; a block reads columns [32·b, 32·b + 32) ∩
    // [0, cols) of every row and writes those of db; its shared memory holds 256 floats.
    unsafe { launch!(dev.stream(), &f, cfg; dy, db, rows, cols) };
    Ok(())
}
