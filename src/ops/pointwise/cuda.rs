//! CUDA launchers of kernels/pointwise.cu: one grid-stride launch per call, 64-bit counts.

use super::BinaryOp;
use crate::device::kernels::{ids, Kernel};
use crate::device::launch::{grid_stride, launch};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::dtype::CudaData;
use crate::error::Result;
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A new output of `like`'s dtype and element count, with its address.
fn output(dev: &CudaDevice, like: &Tensor) -> Result<(CudaData, u64)> {
    let out = dev.alloc_output_data(like.dtype(), like.numel())?;
    let ptr = data_ptr(&out, dev.stream());
    Ok((out, ptr))
}

/// A zero-size result of `like`'s shape and dtype (no launch).
fn empty(dev: &Arc<CudaDevice>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_cuda_data(dev.empty_data(like.dtype())?, like.shape(), dev)
}

pub(super) fn activation(dev: &Arc<CudaDevice>, x: &Tensor, act: Activation) -> Result<Tensor> {
    let n = x.numel();
    if n == 0 {
        return empty(dev, x);
    }
    let f = dev.function(ids::pointwise::ACTIVATION_FORWARD, x.dtype())?;
    let stream = dev.stream();
    let (out, y) = output(dev, x)?;
    let (count, code) = (n as u64, act.code());
    reading(x.cuda_data()?, stream, |x| -> Result<()> {
        // SAFETY: x (the tensor's storage on `dev`) and y (allocated above) hold n elements of
        // the kernel's dtype; the kernel touches indices below n only.
        unsafe { launch!(stream, &f, grid_stride(n); x, y, count, code) };
        Ok(())
    })?;
    Tensor::from_cuda_data(out, x.shape(), dev)
}

/// `y` and `dy` are on `dev` in one dtype and shape (checked by the caller).
pub(super) fn activation_backward(
    dev: &Arc<CudaDevice>,
    y: &Tensor,
    dy: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    two_inputs(dev, ids::pointwise::ACTIVATION_BACKWARD, y, dy, act.code())
}

/// `a` and `b` are on `dev` in one dtype and shape (checked by the caller).
pub(super) fn binary(
    dev: &Arc<CudaDevice>,
    a: &Tensor,
    b: &Tensor,
    op: BinaryOp,
) -> Result<Tensor> {
    two_inputs(dev, ids::pointwise::BINARY_FORWARD, a, b, op.code())
}

/// `kernel` (a, b, out, count, code) over `a` and `b`, on `dev` in one dtype and shape
/// (checked by the caller), into a new tensor of `a`'s shape.
fn two_inputs(
    dev: &Arc<CudaDevice>,
    kernel: Kernel,
    a: &Tensor,
    b: &Tensor,
    code: i32,
) -> Result<Tensor> {
    let n = a.numel();
    if n == 0 {
        return empty(dev, a);
    }
    let f = dev.function(kernel, a.dtype())?;
    let stream = dev.stream();
    let (out, y) = output(dev, a)?;
    let count = n as u64;
    reading(a.cuda_data()?, stream, |a| {
        reading(b.cuda_data()?, stream, |b| -> Result<()> {
            // SAFETY: a, b (checked to share a's device, dtype and shape) and y (allocated
            // above) hold n elements of the kernel's dtype; the kernel touches indices < n.
            unsafe { launch!(stream, &f, grid_stride(n); a, b, y, count, code) };
            Ok(())
        })
    })?;
    Tensor::from_cuda_data(out, a.shape(), dev)
}

/// `a`, `b` and `dy` are on `dev` in one dtype and shape (checked by the caller).
pub(super) fn mul_backward(
    dev: &Arc<CudaDevice>,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let n = a.numel();
    if n == 0 {
        return Ok((empty(dev, a)?, empty(dev, b)?));
    }
    let f = dev.function(ids::pointwise::MUL_BACKWARD, a.dtype())?;
    let stream = dev.stream();
    let (out_a, da) = output(dev, a)?;
    let (out_b, db) = output(dev, b)?;
    let count = n as u64;
    reading(a.cuda_data()?, stream, |a| {
        reading(b.cuda_data()?, stream, |b| {
            reading(dy.cuda_data()?, stream, |dy| -> Result<()> {
                // SAFETY: a, b, dy (checked to share a's device, dtype and shape), da and db
                // (allocated above) hold n elements of the kernel's dtype; the kernel touches
                // indices below n only.
                unsafe { launch!(stream, &f, grid_stride(n); a, b, dy, da, db, count) };
                Ok(())
            })
        })
    })?;
    Ok((
        Tensor::from_cuda_data(out_a, a.shape(), dev)?,
        Tensor::from_cuda_data(out_b, b.shape(), dev)?,
    ))
}
