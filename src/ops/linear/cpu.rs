//! The CPU reference: the products in f64 over the f32 values of the storage, rounded back to
//! the inputs' dtype.

use super::LinearGradients;
use crate::error::Result;
use crate::ops::gemm_cpu::{self, LinearSizes};
use crate::tensor::Tensor;

fn narrow(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

pub(super) fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    sizes: LinearSizes,
    shape: &[usize],
) -> Result<Tensor> {
    let b = bias.map(Tensor::to_vec_f64).transpose()?;
    let y = gemm_cpu::linear(&x.to_vec_f64()?, &weight.to_vec_f64()?, b.as_deref(), sizes)?;
    Tensor::from_f32(&narrow(&y), shape, x.dtype())
}

pub(super) fn backward(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
    sizes: LinearSizes,
) -> Result<LinearGradients> {
    let dtype = x.dtype();
    let (dx, dw, db) = gemm_cpu::linear_backward(
        &grad_y.to_vec_f64()?,
        &x.to_vec_f64()?,
        &weight.to_vec_f64()?,
        sizes,
        has_bias,
    )?;
    Ok(LinearGradients {
        input: Tensor::from_f32(&narrow(&dx), x.shape(), dtype)?,
        weight: Tensor::from_f32(&narrow(&dw), weight.shape(), dtype)?,
        bias: db
            .map(|db| Tensor::from_f32(&narrow(&db), &[sizes.n], dtype))
            .transpose()?,
    })
}
