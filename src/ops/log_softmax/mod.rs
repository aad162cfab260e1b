//! Log-softmax over the last dimension, and its backward.
//!
//! `x` of any rank ≥ 1 is viewed as [rows, V] (every leading dimension folded into rows):
//! `y = x − log Σ e^x` per row, and the backward `grad_x = grad_y − e^y · Σ grad_y`
//! (PyTorch's formula, from the output). Non-finite inputs give what torch.log_softmax gives:
//! a row holding a NaN or a +inf, or made only of −inf, is NaN throughout; a −inf among
//! finite values gives −inf. Storage f32, f16 or bf16 on the CPU or CUDA; outputs in the
//! input's dtype, on its device. A zero-size input gives an empty result.

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `x` viewed as [rows, V] over its last dimension.
fn rows_cols(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let Some((&cols, lead)) = shape.split_last() else {
        return Err(Error::shape(name, "[..., V] (rank 1 or more)", shape));
    };
    Ok((crate::size::elements(name, lead)?, cols))
}

/// An empty tensor of `shape` in `like`'s dtype, on its device.
fn empty(like: &Tensor, shape: &[usize]) -> Result<Tensor> {
    match like.device() {
        Device::Cpu => Tensor::from_f32(&[], shape, like.dtype()),
        Device::Cuda(dev) => cuda::empty(&dev, like.dtype(), shape),
    }
}

/// `log_softmax(x, dim = -1)`: same shape, dtype and device as `x`.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols("x", x.shape())?;
    if rows == 0 || cols == 0 {
        return empty(x, x.shape());
    }
    match x.device() {
        Device::Cpu => cpu::log_softmax(x, cols),
        Device::Cuda(_) => cuda::log_softmax(x, rows, cols),
    }
}

/// The gradient of Σ log_softmax(x) ⊙ grad_y with respect to x, from the forward's output
/// `y`: `grad_y − e^y · Σ_last grad_y`. `grad_y` must have `y`'s shape, dtype and device.
pub fn log_softmax_backward(y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    let (rows, cols) = rows_cols("y", y.shape())?;
    if grad_y.shape() != y.shape() {
        let want = format!("{:?} (y's shape)", y.shape());
        return Err(Error::shape("grad_y", want, grad_y.shape()));
    }
    if grad_y.dtype() != y.dtype() {
        return Err(Error::DType {
            tensor: "grad_y".into(),
            expected: y.dtype().to_string(),
            got: grad_y.dtype().to_string(),
        });
    }
    let device = y.device();
    grad_y.check_on(&device, "grad_y")?;
    if rows == 0 || cols == 0 {
        return empty(y, y.shape());
    }
    match device {
        Device::Cpu => cpu::log_softmax_backward(y, grad_y, cols),
        Device::Cuda(_) => cuda::log_softmax_backward(y, grad_y, rows, cols),
    }
}
