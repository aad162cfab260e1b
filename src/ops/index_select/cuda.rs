//! CUDA launchers of kernels/index_select.cu, grid-stride over the selection. Ids on
//! the device are checked by the kernels (see mod.rs): a bad one is skipped and reported to
//! the device's error record under `ERROR_INDEX_SELECT` / `ERROR_INDEX_SELECT_BACKWARD`.

use super::Layout;
use crate::device::kernels::codes::{ERROR_INDEX_SELECT, ERROR_INDEX_SELECT_BACKWARD};
use crate::device::kernels::ids;
use crate::device::launch::{grid_stride, launch};
use crate::device::{data_ptr, dev_ptr, reading};
use crate::dtype::CudaData;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;
use cudarc::driver::DevicePtr;

/// The launch's sizes as the kernels take them: rows and inner as 64-bit counts, the size of
/// the selected dimension and the number of ids as i32 (the ids are i32, so a larger
/// dimension could not be indexed whole; `what` names the call in the error).
fn sizes(l: &Layout, what: &str) -> Result<(u64, i32, i32, u64)> {
    let int = |n: usize, of: &str| {
        i32::try_from(n).map_err(|_| Error::TooLarge {
            what: format!("{what} on CUDA: {of}"),
            needed: n.to_string(),
            limit: format!("{} (ids are i32)", i32::MAX),
        })
    };
    let n_src = int(l.n_src, "the size of the selected dimension")?;
    let n_ids = int(l.n_ids, "the number of ids")?;
    Ok((l.outer as u64, n_src, n_ids, l.inner as u64))
}

pub(super) fn index_select(
    x: &Tensor,
    ids: &Indices,
    l: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    let dev = x.cuda_device()?;
    let dtype = x.dtype();
    let n = l.outer * l.n_ids * l.inner;
    if n == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev);
    }
    let (rows, n_src, n_ids, inner) = sizes(l, "an index_select")?;
    let f = dev.function(ids::index_select::INDEX_SELECT, dtype)?;
    let stream = dev.stream();
    let out = dev.alloc_output_data(dtype, n)?;
    let y = data_ptr(&out, stream);
    let errors = dev.error_record();
    let code = ERROR_INDEX_SELECT;
    let (ids_ptr, _ids_read) = ids.cuda_slice()?.device_ptr(stream);
    reading(x.cuda_data()?, stream, |x| -> Result<()> {
        // SAFETY: x holds rows·n_src·inner and y rows·n_ids·inner elements of `dtype`, ids
        // n_ids i32s, the error record ERROR_RECORD_WORDS i32s; the kernel reads x only at ids it
        // found inside 0..n_src, and its grid-stride loop covers y's n elements and no more.
        unsafe {
            launch!(stream, &f, grid_stride(n);
                x, y, ids_ptr, errors, code, rows, n_src, n_ids, inner);
        }
        Ok(())
    })?;
    Tensor::from_cuda_data(out, shape, dev)
}

pub(super) fn index_select_backward(
    grad_y: &Tensor,
    ids: &Indices,
    l: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    let dev = grad_y.cuda_device()?;
    let dtype = grad_y.dtype();
    let total = l.outer * l.n_src * l.inner;
    if total == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev);
    }
    let n = grad_y.numel();
    let (rows, n_src, n_ids, inner) = sizes(l, "an index_select_backward")?;
    let stream = dev.stream();
    // The f32 accumulator starts at 0 (not poisoned: every entry is a sum, possibly empty).
    let acc = stream.alloc_zeros::<f32>(total)?;
    if n > 0 {
        let f = dev.function(ids::index_select::INDEX_SELECT_BACKWARD, dtype)?;
        let acc_ptr = dev_ptr(&acc, stream);
        let errors = dev.error_record();
        let code = ERROR_INDEX_SELECT_BACKWARD;
        let (ids_ptr, _ids_read) = ids.cuda_slice()?.device_ptr(stream);
        reading(grad_y.cuda_data()?, stream, |g| -> Result<()> {
            // SAFETY: grad_y holds rows·n_ids·inner (n, the loop's count) elements of `dtype`, acc
            // rows·n_src·inner f32s, ids n_ids i32s, the error record ERROR_RECORD_WORDS i32s; the
            // kernel adds into acc only at ids it found inside 0..n_src.
            unsafe {
                launch!(stream, &f, grid_stride(n);
                    g, acc_ptr, ids_ptr, errors, code, rows, n_src, n_ids, inner);
            }
            Ok(())
        })?;
    }
    let acc = CudaData::F32(acc);
    let out = if dtype == crate::DType::F32 {
        acc
    } else {
        dev.convert_data(&acc, dtype)?
    };
    Tensor::from_cuda_data(out, shape, dev)
}
