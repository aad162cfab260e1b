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
    let dy = grad_y.to_vec_f32()?;
    let dx = input_grad
        .then(|| gemm_cpu::linear_input_grad(&dy, &weight.to_vec_f32()?, sizes))
        .transpose()?;
    let (dw, db) = gemm_cpu::linear_param_grads(&dy, &x.to_vec_f32()?, sizes, has_bias)?;
    Ok(Computed {
        input: dx
            .map(|dx| Tensor::from_f32(&dx, x.shape(), dtype))
            .transpose()?,
        weight: Tensor::from_f32(&dw, weight.shape(), dtype)?,
        bias: db
            .map(|db| Tensor::from_f32(&db, &[sizes.n], dtype))
            .transpose()?,
    })
}
