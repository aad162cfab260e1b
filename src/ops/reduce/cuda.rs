//! CUDA launchers of kernels/reduce.cu.

use super::{Reduction, View};
use crate::device::kernels::ids;
use crate::device::launch::{grid_stride, launch, per_row, GRID_STRIDE_BLOCKS, THREADS};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Output columns per strip of `reduce_forward`: a power of two up to a warp, no wider than
/// the rows (`inner` ≥ 1) it covers, so that a warp's loads stay contiguous.
pub(crate) fn tile(inner: usize) -> usize {
    inner.next_power_of_two().min(32)
}

pub(super) fn reduce(
    dev: &Arc<CudaDevice>,
    x: &Tensor,
    v: View,
    shape: &[usize],
    op: Reduction,
) -> Result<Tensor> {
    let outputs = v.outer * v.inner;
    if outputs == 0 {
        return Tensor::from_cuda_data(dev.empty_data(x.dtype())?, shape, dev);
    }
    let f = dev.function(ids::reduce::REDUCE_FORWARD, x.dtype())?;
    let stream = dev.stream();
    let out = dev.alloc_output_data(x.dtype(), outputs)?;
    let y = data_ptr(&out, stream);
    let tile = tile(v.inner);
    let strips = v.outer * v.inner.div_ceil(tile);
    let cfg = per_row(strips.min(GRID_STRIDE_BLOCKS), 1, THREADS as usize * 4);
    let (outer, n, inner) = (v.outer as u64, v.n as u64, v.inner as u64);
    let (tile, code) = (tile as i32, op.code());
    reading(x.cuda_data()?, stream, |x| -> Result<()> {
        // SAFETY: x holds outer·n·inner elements of the kernel's dtype on `dev` and y (allocated
        // above) outer·inner; the kernel reads x[(o·n + k)·inner + c] and writes y[o·inner + c]
        // for o < outer, k < n, c < inner only; `tile` divides THREADS, whose floats the
        // dynamic shared memory holds.
        unsafe { launch!(stream, &f, cfg; x, y, outer, n, inner, tile, code) };
        Ok(())
    })?;
    Tensor::from_cuda_data(out, shape, dev)
}

pub(super) fn reduce_backward(
    dev: &Arc<CudaDevice>,
    dy: &Tensor,
    v: View,
    shape: &[usize],
    op: Reduction,
) -> Result<Tensor> {
    let total = v.outer * v.n * v.inner;
    if total == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dy.dtype())?, shape, dev);
    }
    let f = dev.function(ids::reduce::REDUCE_BACKWARD, dy.dtype())?;
    let stream = dev.stream();
    let out = dev.alloc_output_data(dy.dtype(), total)?;
    let dx = data_ptr(&out, stream);
    let (count, n, inner, code) = (total as u64, v.n as u64, v.inner as u64, op.code());
    reading(dy.cuda_data()?, stream, |dy| -> Result<()> {
        // SAFETY: dy holds outer·inner elements of the kernel's dtype on `dev` (its shape was
        // checked) and dx (allocated above) outer·n·inner = total; the kernel writes dx[i] for
        // i < total and reads dy[(i / (n·inner))·inner + i % inner] < outer·inner.
        unsafe { launch!(stream, &f, grid_stride(total); dy, dx, count, n, inner, code) };
        Ok(())
    })?;
    Tensor::from_cuda_data(out, shape, dev)
}
