//! CUDA launchers of kernels/top_k.cu: one block of `THREADS` per row, results left on the
//! device.

use crate::device::kernels::ids;
use crate::device::launch::{launch, per_row, THREADS};
use crate::device::{data_ptr, dev_ptr, reading, CudaDevice};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Shared memory of every entry point: double-buffered (value, position) slots per warp.
const SHARED_BYTES: usize = 2 * (THREADS as usize / 32) * (4 + 4);

/// The largest k of the `top_k_list4` variant (each thread keeps its 4 first elements).
const LIST4_K: usize = 4;

/// `cols` as the kernels' i32, after checking that `rows` blocks can be launched (the caller
/// checked cols ≤ i32::MAX).
fn launch_sizes(rows: usize, cols: usize) -> Result<i32> {
    if rows > i32::MAX as usize {
        return Err(Error::TooLarge {
            what: format!("selection over [{rows}, {cols}] on CUDA"),
            needed: format!("{rows} rows"),
            limit: format!("{} rows (one block each)", i32::MAX),
        });
    }
    Ok(cols as i32)
}

pub(super) fn empty_indices(dev: &Arc<CudaDevice>, shape: &[usize]) -> Result<Indices> {
    Indices::from_cuda(dev.empty::<i32>()?, shape, dev)
}

pub(super) fn empty_values(dev: &Arc<CudaDevice>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev)
}

pub(super) fn argmax(x: &Tensor, rows: usize, cols: usize, shape: &[usize]) -> Result<Indices> {
    let cols_i = launch_sizes(rows, cols)?;
    let dev = x.cuda_device()?;
    let stream = dev.stream();
    let f = dev.function(ids::top_k::ARGMAX_FUSED, x.dtype())?;
    let indices = dev.alloc_output::<i32>(rows)?;
    let i_ptr = dev_ptr(&indices, stream);
    reading(x.cuda_data()?, stream, |x_ptr| -> Result<()> {
        // SAFETY: x (a live tensor) holds rows·cols elements of the dtype and `indices`
        // (allocated above) rows i32; block r reads row r (64-bit offsets) and writes
        // indices[r]; the shared memory is the kernel's slots.
        unsafe { launch!(stream, &f, per_row(rows, 1, SHARED_BYTES); x_ptr, cols_i, i_ptr) };
        Ok(())
    })?;
    Indices::from_cuda(indices, shape, dev)
}

/// `k` is in 1..=min(cols, MAX_CUDA_K) (checked by the caller).
pub(super) fn top_k(
    x: &Tensor,
    rows: usize,
    cols: usize,
    k: usize,
    shape: &[usize],
) -> Result<(Tensor, Indices)> {
    let cols_i = launch_sizes(rows, cols)?;
    let k_i = k as i32;
    let dev = x.cuda_device()?;
    let stream = dev.stream();
    let variant = if k <= LIST4_K {
        ids::top_k::TOP_K_LIST4
    } else {
        ids::top_k::TOP_K_LIST16
    };
    let f = dev.function(variant, x.dtype())?;
    let values = dev.alloc_output_data(x.dtype(), rows * k)?;
    let indices = dev.alloc_output::<i32>(rows * k)?;
    let (v_ptr, i_ptr) = (data_ptr(&values, stream), dev_ptr(&indices, stream));
    reading(x.cuda_data()?, stream, |x_ptr| -> Result<()> {
        // SAFETY: x (a live tensor) holds rows·cols elements of the dtype, `values` (its
        // dtype) and `indices` (i32), allocated above, rows·k each, k ≤ cols; block r reads row
        // r (64-bit offsets) and writes row r of both; the shared memory is the kernel's slots.
        unsafe {
            launch!(stream, &f, per_row(rows, 1, SHARED_BYTES); x_ptr, cols_i, k_i, v_ptr, i_ptr)
        };
        Ok(())
    })?;
    Ok((
        Tensor::from_cuda_data(values, shape, dev)?,
        Indices::from_cuda(indices, shape, dev)?,
    ))
}
