//! The CPU reference, on the generator of `ops::philox` (kernels/dropout.cu's, written again in
//! Rust), so that masks agree bit for bit.

use crate::error::Result;
use crate::ops::philox::{for_each_factor, Rate};
use crate::tensor::Tensor;

pub(super) fn apply(x: &Tensor, rate: Rate, seed: u64) -> Result<Tensor> {
    let mut values = x.to_vec_f32()?;
    for_each_factor(values.len(), rate, seed, |i, factor| values[i] *= factor);
    Tensor::from_f32(&values, x.shape(), x.dtype())
}
