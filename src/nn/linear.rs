//! `nn::Linear` (y = x Wᵀ + b, PyTorch's nn.Linear) and `nn::Embedding` (rows of a table by id,
//! with an optional padding index), with their backward passes. The layers own their
//! parameters; the work is `ops::linear` and `ops::embedding`, on the parameters' device and in
//! their dtype (f32, f16 or bf16 storage).

use super::init::{normal, uniform};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::nn::Module;
use crate::ops::{embedding, linear};
use crate::size;
use crate::tensor::Tensor;

pub use crate::ops::linear::LinearGradients;

/// A parameter of `shape` from f32 `values`, on `device` in `dtype`.
fn parameter(values: Vec<f32>, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
    Tensor::from_f32(&values, shape, dtype)?.to(device, dtype)
}

/// A fully connected layer.
pub struct Linear {
    /// Shape `[out, in]`.
    pub weight: Tensor,
    /// Shape `[out]`, on the weight's device in its dtype.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Parameters drawn like PyTorch's default, U(-1/√in, 1/√in), on `device` in `dtype`.
    pub fn random(
        input: usize,
        output: usize,
        bias: bool,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let bound = 1.0 / (input.max(1) as f32).sqrt();
        let count = size::elements("weight", &[output, input])?;
        let weight = parameter(
            uniform(count, bound, seed)?,
            &[output, input],
            device,
            dtype,
        )?;
        let bias = bias
            .then(|| {
                parameter(
                    uniform(output, bound, seed ^ 0x5eed)?,
                    &[output],
                    device,
                    dtype,
                )
            })
            .transpose()?;
        Ok(Linear { weight, bias })
    }

    /// y [..., out] for x [..., in] (on the layer's device, in its dtype).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear::forward(x, &self.weight, self.bias.as_ref())
    }

    /// The gradients for `forward(x)` given grad_y [..., out].
    pub fn backward(&self, x: &Tensor, grad_y: &Tensor) -> Result<LinearGradients> {
        linear::backward(x, &self.weight, self.bias.is_some(), grad_y)
    }

    /// The parameters' gradients only (state_dict order), for a layer whose input needs none.
    pub fn param_backward(&self, x: &Tensor, grad_y: &Tensor) -> Result<Vec<Tensor>> {
        linear::param_backward(x, &self.weight, self.bias.is_some(), grad_y)
    }

    /// The parameters' gradients (state_dict order), and the input's when `input` is asked for.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        grad_y: &Tensor,
        input: bool,
    ) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        if !input {
            return Ok((self.param_backward(x, grad_y)?, None));
        }
        let grads = self.backward(x, grad_y)?;
        let mut params = vec![grads.weight];
        params.extend(grads.bias);
        Ok((params, Some(grads.input)))
    }
}

impl Module for Linear {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut p = vec![("weight".to_string(), &self.weight)];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b)));
        p
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut p = vec![("weight".to_string(), &mut self.weight)];
        p.extend(self.bias.iter_mut().map(|b| ("bias".to_string(), b)));
        p
    }
}

/// A lookup table: id k → row k of `weight` [V, E]. The padding index's row gets no gradient.
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// N(0, 1) rows like PyTorch's default, the padding row zero, on `device` in `dtype`.
    pub fn random(
        vocab: usize,
        dim: usize,
        padding_idx: Option<usize>,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        if let Some(p) = padding_idx.filter(|&p| p >= vocab) {
            return Err(Error::Config(format!(
                "padding_idx {p} is outside the vocabulary of {vocab}"
            )));
        }
        let mut w = normal(size::elements("weight", &[vocab, dim])?, seed)?;
        if let Some(p) = padding_idx {
            w[p * dim..(p + 1) * dim].fill(0.0);
        }
        Ok(Embedding {
            weight: parameter(w, &[vocab, dim], device, dtype)?,
            padding_idx,
        })
    }

    /// [ids.shape.., E] for ids on the table's device. On CUDA an id outside the vocabulary
    /// gives a row of zeros, and `CudaDevice::check_errors` reports it later (the host never
    /// reads CUDA ids; see `ops::embedding`).
    pub fn forward(&self, ids: &Indices) -> Result<Tensor> {
        embedding::forward(&self.weight, ids)
    }

    /// The table's gradient for `forward(ids)` given grad_y [ids.shape.., E]: rows summed per
    /// id, the padding index's row zero.
    pub fn backward(&self, ids: &Indices, grad_y: &Tensor) -> Result<Tensor> {
        let &[vocab, dim] = self.weight.shape() else {
            return Err(Error::shape("weight", "[V, E]", self.weight.shape()));
        };
        if grad_y.shape().last() != Some(&dim) {
            let want = format!("[..., {dim}] (the table's width)");
            return Err(Error::shape("grad_y", want, grad_y.shape()));
        }
        grad_y.check_on(&self.weight.device(), "grad_y")?;
        if grad_y.dtype() != self.weight.dtype() {
            return Err(Error::DType {
                tensor: "grad_y".into(),
                expected: format!("{} (the table's)", self.weight.dtype()),
                got: grad_y.dtype().name().into(),
            });
        }
        embedding::backward(ids, grad_y, vocab, self.padding_idx)
    }
}

impl Module for Embedding {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        vec![("weight".to_string(), &self.weight)]
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![("weight".to_string(), &mut self.weight)]
    }
}
