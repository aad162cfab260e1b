//! The CPU path: the products in f32 through `gemm_cpu` (f16 and bf16 widened to f32),
//! results rounded to the inputs' dtype.

use super::Computed;
use crate::error::Result;
use crate::ops::gemm_cpu::{self, LinearSizes};
use crate::tensor::Tensor;

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    sizes: LinearSizes,
    shape: &[usize],
) -> Result<Tensor> {
    let b = bias.map(Tensor::f32_values).transpose()?;
    let y = gemm_cpu::linear(&x.f32_values()?, &weight.f32_values()?, b.as_deref(), sizes)?;
    Tensor::from_f32_vec(y, shape, x.dtype())
}

/// The gradients; the input's only when `input_grad`.
pub(super) fn backward(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
    sizes: LinearSizes,
    input_grad: bool,
) -> Result<Computed> {
    let dtype = x.dtype();
    let dy = grad_y.f32_values()?;
    let dx = input_grad
        .then(|| gemm_cpu::linear_input_grad(&dy, &weight.f32_values()?, sizes))
        .transpose()?;
    let (dw, db) = gemm_cpu::linear_param_grads(&dy, &x.f32_values()?, sizes, has_bias)?;
    Ok(Computed {
        input: dx
            .map(|dx| Tensor::from_f32_vec(dx, x.shape(), dtype))
            .transpose()?,
        weight: Tensor::from_f32_vec(dw, weight.shape(), dtype)?,
        bias: db
            .map(|db| Tensor::from_f32_vec(db, &[sizes.n], dtype))
            .transpose()?,
    })
}
