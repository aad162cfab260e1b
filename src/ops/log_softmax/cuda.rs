//! CUDA launchers of kernels/log_softmax.cu: one block of `THREADS` per row.

use crate::device::kernels::ids;
use crate::device::launch::{launch, per_row, THREADS};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// Shared memory of both kernels: a (maximum, sum) or a sum per warp, as f32.
const SHARED_BYTES: usize = 2 * (THREADS as usize / 32) * 4;

/// `cols` as the kernels' i32, after checking that `rows` blocks can be launched.
fn launch_sizes(rows: usize, cols: usize) -> Result<i32> {
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return Err(Error::TooLarge {
            what: format!("log_softmax over [{rows}, {cols}] on CUDA"),
            needed: format!("{rows} rows of {cols} values"),
            limit: format!("{} rows and {} values per row", i32::MAX, i32::MAX),
        });
    }
    Ok(cols as i32)
}

pub(super) fn empty(dev: &Arc<CudaDevice>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev)
}

pub(super) fn log_softmax(x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let cols_i = launch_sizes(rows, cols)?;
    let dev = x.cuda_device()?;
    let stream = dev.stream();
    let f = dev.function(ids::log_softmax::LOG_SOFTMAX_FUSED, x.dtype())?;
    let y = dev.alloc_output_data(x.dtype(), rows * cols)?;
    let y_ptr = data_ptr(&y, stream);
    reading(x.cuda_data()?, stream, |x_ptr| -> Result<()> {
        // SAFETY: x (a live tensor) and y (allocated above) hold rows·cols elements of the
        // dtype; block r reads row r of x and writes row r of y, with 64-bit offsets; the
        // shared memory is the kernel's 2·warps floats.
        unsafe { launch!(stream, &f, per_row(rows, 1, SHARED_BYTES); x_ptr, y_ptr, cols_i) };
        Ok(())
    })?;
    Tensor::from_cuda_data(y, x.shape(), dev)
}

pub(super) fn log_softmax_backward(
    y: &Tensor,
    grad_y: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<Tensor> {
    let cols_i = launch_sizes(rows, cols)?;
    let dev = y.cuda_device()?;
    let stream = dev.stream();
    let f = dev.function(ids::log_softmax::LOG_SOFTMAX_BACKWARD_FUSED, y.dtype())?;
    let dx = dev.alloc_output_data(y.dtype(), rows * cols)?;
    let dx_ptr = data_ptr(&dx, stream);
    reading(y.cuda_data()?, stream, |y_ptr| {
        reading(grad_y.cuda_data()?, stream, |dy_ptr| -> Result<()> {
            // SAFETY: y, grad_y (same shape and dtype, checked by the caller) and dx (allocated
            // above) hold rows·cols elements of the dtype; block r touches row r only, with
            // 64-bit offsets; the shared memory is the kernel's warp sums.
            unsafe {
                launch!(stream, &f, per_row(rows, 1, SHARED_BYTES); y_ptr, dy_ptr, dx_ptr, cols_i)
            };
            Ok(())
        })
    })?;
    Tensor::from_cuda_data(dx, y.shape(), dev)
}
