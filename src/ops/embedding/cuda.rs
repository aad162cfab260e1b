//! CUDA launchers for kernels/embedding.cu: the gather, and the scatter into a zeroed f32
//! accumulator (then converted to the dtype). A bad id is skipped and reported to the device's
//! error record under `ERROR_EMBEDDING` / `ERROR_EMBEDDING_BACKWARD`.

use crate::device::kernels::codes::{ERROR_EMBEDDING, ERROR_EMBEDDING_BACKWARD};
use crate::device::kernels::ids;
use crate::device::launch::{launch, THREADS};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::dtype::{CudaData, DType};
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;
use cudarc::driver::{DevicePtr, LaunchConfig};
use std::sync::Arc;

/// Id blocks of the gather and scatter grids at most (grid.y's limit); each strides over ids.
const MAX_ID_BLOCKS: usize = 65535;

/// The kernels index with i32 sizes.
fn check_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::TooLarge {
        what: format!("an embedding's {what} on CUDA"),
        needed: v.to_string(),
        limit: format!("{} (the kernels' sizes are i32)", i32::MAX),
    })
}

/// (n, dim, vocab) as the kernels take them.
fn sizes(n: usize, dim: usize, vocab: usize) -> Result<(i32, i32, i32)> {
    Ok((
        check_i32("ids", n)?,
        check_i32("width", dim)?,
        check_i32("vocabulary", vocab)?,
    ))
}

/// Grid (⌈dim / 256⌉, id blocks) for `n` ids of `dim` values.
fn grid(n: usize, dim: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            dim.div_ceil(THREADS as usize) as u32,
            n.min(MAX_ID_BLOCKS) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn forward(
    dev: &Arc<CudaDevice>,
    weight: &Tensor,
    ids: &Indices,
    vocab: usize,
    dim: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let n = ids.numel();
    let (n_i, dim_i, vocab_i) = sizes(n, dim, vocab)?;
    let dtype = weight.dtype();
    if n * dim == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev);
    }
    let y = dev.alloc_output_data(dtype, n * dim)?;
    let stream = dev.stream();
    let yp = data_ptr(&y, stream);
    let f = dev.function(ids::embedding::EMBEDDING_GATHER, dtype)?;
    let (errors, code) = (dev.error_record(), ERROR_EMBEDDING);
    let (idp, _read_ids) = ids.cuda_slice()?.device_ptr(stream);
    reading(weight.cuda_data()?, stream, |wp| -> Result<()> {
        // SAFETY: the weight holds vocab·dim elements, the ids n i32s, y n·dim elements, the
        // error record ERROR_RECORD_WORDS i32s; the kernel reads a row only for an id it found
        // inside 0..vocab and writes y[i, e] for i < n, e < dim.
        unsafe {
            launch!(stream, &f, grid(n, dim); wp, idp, yp, errors, code, n_i, dim_i, vocab_i)
        };
        Ok(())
    })?;
    Tensor::from_cuda_data(y, shape, dev)
}

pub(super) fn backward(
    dev: &Arc<CudaDevice>,
    ids: &Indices,
    grad_y: &Tensor,
    vocab: usize,
    dim: usize,
    padding_idx: Option<usize>,
) -> Result<Tensor> {
    let n = ids.numel();
    let (n_i, dim_i, vocab_i) = sizes(n, dim, vocab)?;
    // padding_idx < vocab ≤ i32::MAX (checked by `backward`); −1 never matches an id in range.
    let padding = padding_idx.map_or(-1, |p| p as i32);
    let dtype = grad_y.dtype();
    let len = vocab * dim;
    if len == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dtype)?, &[vocab, dim], dev);
    }
    let stream = dev.stream();
    let acc = dev.alloc_output::<f32>(len)?;
    let accp = crate::device::dev_ptr(&acc, stream);
    // SAFETY: `acc` holds len f32.
    unsafe { dev.fill_async(accp, 0, 4 * len)? };
    if n > 0 {
        let f = dev.function(ids::embedding::EMBEDDING_SCATTER, dtype)?;
        let (errors, code) = (dev.error_record(), ERROR_EMBEDDING_BACKWARD);
        let (idp, _read_ids) = ids.cuda_slice()?.device_ptr(stream);
        reading(grad_y.cuda_data()?, stream, |gp| -> Result<()> {
            // SAFETY: grad_y holds n·dim elements, the ids n i32s, acc vocab·dim f32s, the error
            // record ERROR_RECORD_WORDS i32s; the kernel adds into row id only for an id it
            // found inside 0..vocab.
            unsafe {
                launch!(stream, &f, grid(n, dim);
                        gp, idp, accp, errors, code, n_i, dim_i, vocab_i, padding)
            };
            Ok(())
        })?;
    }
    let acc = CudaData::F32(acc);
    let out = match dtype {
        DType::F32 => acc,
        _ => dev.convert_data(&acc, dtype)?,
    };
    Tensor::from_cuda_data(out, &[vocab, dim], dev)
}
