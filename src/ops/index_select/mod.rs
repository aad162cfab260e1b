//! torch.index_select along any dimension, and its backward (index_add).
//!
//! `x` is viewed as [outer, n, inner] around `dim` and the ids (1-D, i32) pick entries along
//! it: y[o, j, i] = x[o, ids[j], i]. Reordering a beam search's states is dim 0 over the rows
//! of h [B·beam, H]. The backward adds each gradient entry back where it came from, so
//! repeated ids accumulate.
//!
//! Ids out of range (outside 0..n): host ids are checked on the host before anything runs,
//! and the call returns `Error::Index` naming the position and the value. CUDA ids are never
//! read by the host (a decoding loop keeps them on the device): the kernels do not follow a bad
//! id — its output entries are 0, and the backward adds nothing for it — and record it in the
//! device's error record, which `CudaDevice::check_errors` turns into the same `Error::Index`
//! (one small read, where the caller chooses, e.g. with a decoding loop's stop flag).
//!
//! The backward on CUDA adds with f32 atomics into an f32 accumulator (converted to the dtype
//! at the end), so with repeated ids the order of additions, and the last bits of the result,
//! may vary between runs; without repeats every entry is written once and the result is
//! exact. The CPU sums in f64.
//!
//! Storage f32, f16 or bf16; the ids must be on the tensor's device.

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;

/// How the source and the selection sit around `dim`.
pub(crate) struct Layout {
    /// The product of the dimensions before `dim`.
    pub outer: usize,
    /// The size of `dim` in the source (the ids' range).
    pub n_src: usize,
    /// The number of ids (the size of `dim` in the selection).
    pub n_ids: usize,
    /// The product of the dimensions after `dim`.
    pub inner: usize,
}

/// Checks the ids' rank (0-D or 1-D, as torch.index_select) and device, and host ids' values
/// against 0..`limit`.
fn check_ids(ids: &Indices, device: &Device, limit: usize) -> Result<()> {
    if ids.shape().len() > 1 {
        return Err(Error::shape("ids", "[n] (1-D)", ids.shape()));
    }
    ids.check_on(device, "ids")?;
    ids.check_host_range(limit, "ids")
}

/// `shape` with `dim` checked against its rank.
fn check_dim(tensor: &str, shape: &[usize], dim: usize) -> Result<()> {
    if dim >= shape.len() {
        return Err(Error::shape(
            tensor,
            format!("at least {} dimensions (dim {dim})", dim + 1),
            shape,
        ));
    }
    Ok(())
}

/// The shape of `shape` with `dim` of size `n`.
fn with_dim(shape: &[usize], dim: usize, n: usize) -> Vec<usize> {
    let mut shape = shape.to_vec();
    shape[dim] = n;
    shape
}

/// torch.index_select(x, dim, ids): the entries of `x` along `dim` at `ids`, in their order
/// (repeats allowed). The result has `x`'s shape with ids.numel() along `dim`.
pub fn index_select(x: &Tensor, dim: usize, ids: &Indices) -> Result<Tensor> {
    let shape = x.shape();
    check_dim("x", shape, dim)?;
    check_ids(ids, &x.device(), shape[dim])?;
    let out_shape = with_dim(shape, dim, ids.numel());
    crate::size::elements("index_select result", &out_shape)?;
    let layout = Layout {
        outer: shape[..dim].iter().product(),
        n_src: shape[dim],
        n_ids: ids.numel(),
        inner: shape[dim + 1..].iter().product(),
    };
    if x.is_cuda() {
        cuda::index_select(x, ids, &layout, &out_shape)
    } else {
        cpu::index_select(x, ids, &layout, &out_shape)
    }
}

/// The backward of `index_select`: the gradient of `x` (its size along `dim` being
/// `size_of_dim`), each entry of `grad_y` added at its id's position, so repeated ids
/// accumulate and unpicked entries are 0 (index_add into zeros).
pub fn index_select_backward(
    grad_y: &Tensor,
    dim: usize,
    ids: &Indices,
    size_of_dim: usize,
) -> Result<Tensor> {
    let shape = grad_y.shape();
    check_dim("grad_y", shape, dim)?;
    check_ids(ids, &grad_y.device(), size_of_dim)?;
    if shape[dim] != ids.numel() {
        let want = format!("{} along dim {dim} (one per id)", ids.numel());
        return Err(Error::shape("grad_y", want, shape));
    }
    let out_shape = with_dim(shape, dim, size_of_dim);
    crate::size::elements("index_select_backward result", &out_shape)?;
    let layout = Layout {
        outer: shape[..dim].iter().product(),
        n_src: size_of_dim,
        n_ids: ids.numel(),
        inner: shape[dim + 1..].iter().product(),
    };
    if grad_y.is_cuda() {
        cuda::index_select_backward(grad_y, ids, &layout, &out_shape)
    } else {
        cpu::index_select_backward(grad_y, ids, &layout, &out_shape)
    }
}
