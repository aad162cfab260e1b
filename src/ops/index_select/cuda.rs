//! CUDA launchers of kernels/index_select.cu, one thread per element of the selection. Ids on
//! the device are checked by the kernels (see mod.rs): a bad one is skipped and reported to
//! the device's error record under `ERROR_INDEX_SELECT` / `ERROR_INDEX_SELECT_BACKWARD`.

use super::Layout;
use crate::device::kernels::codes::{ERROR_INDEX_SELECT, ERROR_INDEX_SELECT_BACKWARD};
use crate::device::kernels::ids;
use crate::device::launch::{launch, per_element};
use crate::device::{data_ptr, dev_ptr, reading};
use crate::dtype::CudaData;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;
use cudarc::driver::DevicePtr;

/// The kernels index with i32 counts.
fn check_count(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::TooLarge {
        what: format!("{what} on CUDA"),
        needed: format!("{n} elements"),
        limit: format!("{} elements per launch", i32::MAX),
    })
}

/// The error for a result CUDA tensors cannot hold.
fn empty_result(what: &str, shape: &[usize]) -> Error {
    Error::Unsupported {
        request: format!("{what} of shape {shape:?} on CUDA"),
        reason: "it has no elements, and CUDA tensors cannot be empty (CUDA refuses empty \
                 allocations)"
            .into(),
    }
}

/// The launch's sizes as the kernels take them: rows, n_src, n_ids, inner, after checking
/// that the source (`src` elements) and the selection (`sel` elements) fit i32 counts (then
/// so does every factor of them that is not 0).
fn sizes(l: &Layout, src: usize, sel: usize, what: &str) -> Result<[i32; 4]> {
    check_count(what, src)?;
    check_count(what, sel)?;
    Ok([
        check_count(what, l.outer)?,
        check_count(what, l.n_src)?,
        check_count(what, l.n_ids)?,
        check_count(what, l.inner)?,
    ])
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
        return Err(empty_result("an index_select", shape));
    }
    let [rows, n_src, n_ids, inner] = sizes(l, x.numel(), n, "an index_select")?;
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
        // found inside 0..n_src, and the grid covers y's n elements.
        unsafe {
            launch!(stream, &f, per_element(n);
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
        return Err(empty_result("an index_select_backward", shape));
    }
    let n = grad_y.numel();
    let [rows, n_src, n_ids, inner] = sizes(l, total, n, "an index_select_backward")?;
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
            // SAFETY: grad_y holds rows·n_ids·inner elements of `dtype` (n, the grid), acc
            // rows·n_src·inner f32s, ids n_ids i32s, the error record ERROR_RECORD_WORDS i32s; the
            // kernel adds into acc only at ids it found inside 0..n_src.
            unsafe {
                launch!(stream, &f, per_element(n);
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
