//! Selection over the last dimension: `argmax` and `top_k`, for greedy and beam-search
//! decoding.
//!
//! `x` of any rank ≥ 1 is viewed as [rows, V]. The order is torch's: larger first, NaN
//! larger than every number; among equal values (NaNs all equal, −0 = +0) the lower index
//! comes first. So `argmax` is the first index of the maximum (as torch.argmax on the CPU),
//! and `top_k` returns each row's k first elements of that order, descending, ties broken by
//! the lower index (torch.topk leaves the order of ties unspecified; this rule makes it
//! deterministic and the same on both devices). Storage f32, f16 or bf16 on the CPU or CUDA;
//! the values come back exactly as stored, positions as i32 `Indices` on the input's device
//! (no host round trip). There is no backward: the outputs are positions (the values'
//! gradient, were it needed, is a scatter of grad_values to `indices`).
//!
//! Limits: V ≥ 1 and V ≤ i32::MAX (positions are i32); `top_k` takes 1 ≤ k ≤ V, and at most
//! `MAX_CUDA_K` on CUDA (an `Error::Unsupported` beyond).

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;

/// The largest k `top_k` takes on CUDA.
pub const MAX_CUDA_K: usize = 64;

/// `x`'s leading dimensions, rows and V, after checking that it has a non-empty last dimension
/// whose positions fit i32.
fn rows_cols(x: &Tensor) -> Result<(&[usize], usize, usize)> {
    let shape = x.shape();
    let Some((&cols, lead)) = shape.split_last() else {
        return Err(Error::shape("x", "[..., V] (rank 1 or more)", shape));
    };
    if cols == 0 {
        return Err(Error::shape("x", "[..., V] with V ≥ 1", shape));
    }
    if cols > i32::MAX as usize {
        return Err(Error::TooLarge {
            what: format!("selection over x {shape:?}"),
            needed: format!("{cols} positions per row"),
            limit: format!("{} (positions are i32)", i32::MAX),
        });
    }
    Ok((lead, crate::size::elements("x", lead)?, cols))
}

/// The position of each row's maximum: `torch.argmax(x, dim=-1)`, shape `x.shape()[..-1]`
/// (`[]`, one position, for a vector), on `x`'s device.
pub fn argmax(x: &Tensor) -> Result<Indices> {
    let (lead, rows, cols) = rows_cols(x)?;
    match x.device() {
        Device::Cpu => Indices::from_vec(cpu::argmax(x, cols)?, lead),
        Device::Cuda(dev) if rows == 0 => cuda::empty_indices(&dev, lead),
        Device::Cuda(_) => cuda::argmax(x, rows, cols, lead),
    }
}

/// Each row's `k` largest values and their positions, descending (ties: lower position
/// first): `torch.topk(x, k, dim=-1)` with a deterministic tie order. Both have shape
/// `x.shape()[..-1] + [k]` ([rows, k] for a matrix); the values are in `x`'s dtype, both on
/// its device.
pub fn top_k(x: &Tensor, k: usize) -> Result<(Tensor, Indices)> {
    let (lead, rows, cols) = rows_cols(x)?;
    if k == 0 || k > cols {
        return Err(Error::Config(format!(
            "top_k: k = {k} is outside 1..={cols} (the last dimension of x {:?})",
            x.shape()
        )));
    }
    let device = x.device();
    if k > MAX_CUDA_K && matches!(device, Device::Cuda(_)) {
        return Err(Error::Unsupported {
            request: format!("top_k with k = {k} on CUDA"),
            reason: format!("the CUDA kernel takes k ≤ {MAX_CUDA_K}; use the CPU"),
        });
    }
    let mut shape = lead.to_vec();
    shape.push(k);
    match device {
        Device::Cpu => {
            let (values, indices) = cpu::top_k(x, cols, k)?;
            Ok((
                Tensor::from_f32(&values, &shape, x.dtype())?,
                Indices::from_vec(indices, &shape)?,
            ))
        }
        Device::Cuda(dev) if rows == 0 => Ok((
            cuda::empty_values(&dev, x.dtype(), &shape)?,
            cuda::empty_indices(&dev, &shape)?,
        )),
        Device::Cuda(_) => cuda::top_k(x, rows, cols, k, &shape),
    }
}
