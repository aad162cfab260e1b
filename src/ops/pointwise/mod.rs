//! Elementwise building blocks with their backward: the activations `sigmoid`, `tanh` and
//! `relu`, and `add` and `mul` of two tensors of one shape. Any shape, f32/f16/bf16 storage,
//! f32 arithmetic, on the CPU or CUDA (kernels/pointwise.cu).
//!
//! The activations' backward takes the forward's output y, as PyTorch's do:
//! sigmoid dy·(1 − y)·y, tanh dy·(1 − y²), relu dy where y > 0 and 0 elsewhere (written
//! `y <= 0 ? 0 : dy`, as `threshold_backward`, so a NaN output passes the gradient on). NaN
//! inputs give NaN outputs, as in PyTorch. The gradient of `add` is `grad_y` for both inputs,
//! so it has no function of its own.

mod cpu;
mod cuda;

use crate::device::kernels::codes;
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;

/// Binary ops of equal shapes (codes: `POINTWISE_*` of kernels/codes.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Mul,
}

impl BinaryOp {
    pub fn code(self) -> i32 {
        match self {
            BinaryOp::Add => codes::POINTWISE_ADD,
            BinaryOp::Mul => codes::POINTWISE_MUL,
        }
    }

    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Mul => a * b,
        }
    }
}

/// Checks that `t` (named `name`) has the device, dtype and shape of `like` (named `like_name`).
fn check_like(like: &Tensor, like_name: &str, t: &Tensor, name: &str) -> Result<()> {
    t.check_on(&like.device(), name)?;
    if t.dtype() != like.dtype() {
        return Err(Error::DType {
            tensor: name.into(),
            expected: format!("{} (the dtype of {like_name})", like.dtype()),
            got: t.dtype().name().into(),
        });
    }
    if t.shape() != like.shape() {
        let expected = format!("{:?} (the shape of {like_name})", like.shape());
        return Err(Error::shape(name, expected, t.shape()));
    }
    Ok(())
}

fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if x.is_cuda() {
        cuda::activation(x.cuda_device()?, x, act)
    } else {
        cpu::activation(x, act)
    }
}

fn activation_backward(y: &Tensor, grad_y: &Tensor, act: Activation) -> Result<Tensor> {
    check_like(y, "y", grad_y, "grad_y")?;
    if y.is_cuda() {
        cuda::activation_backward(y.cuda_device()?, y, grad_y, act)
    } else {
        cpu::activation_backward(y, grad_y, act)
    }
}

/// The logistic function 1 / (1 + e^−x), elementwise.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Sigmoid)
}

/// The gradient of `sigmoid` from its output `y`: grad_y·(1 − y)·y.
pub fn sigmoid_backward(y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    activation_backward(y, grad_y, Activation::Sigmoid)
}

/// tanh, elementwise.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Tanh)
}

/// The gradient of `tanh` from its output `y`: grad_y·(1 − y²).
pub fn tanh_backward(y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    activation_backward(y, grad_y, Activation::Tanh)
}

/// max(x, 0) elementwise; NaN stays NaN.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Relu)
}

/// The gradient of `relu` from its output `y`: 0 where y ≤ 0, else grad_y (also where y is
/// NaN, as PyTorch's `threshold_backward`).
pub fn relu_backward(y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
    activation_backward(y, grad_y, Activation::Relu)
}

fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    check_like(a, "a", b, "b")?;
    if a.is_cuda() {
        cuda::binary(a.cuda_device()?, a, b, op)
    } else {
        cpu::binary(a, b, op)
    }
}

/// a + b of one shape, elementwise. Its gradient is `grad_y` for both inputs.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Add)
}

/// a · b of one shape, elementwise.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, BinaryOp::Mul)
}

/// The gradients of `mul(a, b)`: (grad_y · b, grad_y · a).
pub fn mul_backward(a: &Tensor, b: &Tensor, grad_y: &Tensor) -> Result<(Tensor, Tensor)> {
    check_like(a, "a", b, "b")?;
    check_like(a, "a", grad_y, "grad_y")?;
    if a.is_cuda() {
        cuda::mul_backward(a.cuda_device()?, a, b, grad_y)
    } else {
        cpu::mul_backward(a, b, grad_y)
    }
}
