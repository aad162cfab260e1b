//! `nn::Linear` (y = x Wᵀ + b, PyTorch's nn.Linear) and `nn::Embedding` (rows of a table by
//! token, with an optional padding index), with their backward passes. CPU, f32 storage; the
//! products run in f64.

use super::init::uniform;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::ops::gemm_cpu::{self, LinearSizes};
use crate::size;
use crate::tensor::Tensor;

fn values<'a>(t: &'a Tensor, name: &str) -> Result<&'a [f32]> {
    t.host_slice::<f32>().map_err(|_| Error::DType {
        tensor: name.into(),
        expected: "f32 on the CPU".into(),
        got: t.dtype().name().into(),
    })
}

/// A fully connected layer.
pub struct Linear {
    /// Shape `[out, in]`.
    pub weight: Tensor,
    /// Shape `[out]`.
    pub bias: Option<Tensor>,
}

/// What `Linear::backward` returns.
pub struct LinearGradients {
    pub input: Tensor,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Parameters drawn like PyTorch's default, U(-1/√in, 1/√in).
    pub fn random(input: usize, output: usize, bias: bool, seed: u64) -> Result<Self> {
        let bound = 1.0 / (input.max(1) as f32).sqrt();
        let count = size::elements("weight", &[output, input])?;
        Ok(Linear {
            weight: Tensor::from_vec(uniform(count, bound, seed)?, &[output, input])?,
            bias: bias
                .then(|| Tensor::from_vec(uniform(output, bound, seed ^ 0x5eed)?, &[output]))
                .transpose()?,
        })
    }

    /// (out, in), with the bias checked against them: the fields are public.
    fn sizes(&self) -> Result<(usize, usize)> {
        let &[out, input] = self.weight.shape() else {
            return Err(Error::shape("weight", "[out, in]", self.weight.shape()));
        };
        match &self.bias {
            Some(b) if b.shape() != [out] => {
                Err(Error::shape("bias", format!("[{out}]"), b.shape()))
            }
            _ => Ok((out, input)),
        }
    }

    /// The product's sizes for `x` [..., in], and the leading dimensions of `x`.
    fn product(&self, x: &Tensor, name: &str) -> Result<(LinearSizes, Vec<usize>)> {
        let (n, k) = self.sizes()?;
        match x.shape().split_last() {
            Some((&last, lead)) if last == k => {
                let rows = size::elements(name, lead)?;
                Ok((LinearSizes { rows, k, n }, lead.to_vec()))
            }
            _ => Err(Error::shape(name, format!("[..., {k}]"), x.shape())),
        }
    }

    /// y [..., out] for x [..., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (sizes, lead) = self.product(x, "input")?;
        let b = self.bias.as_ref().map(Tensor::to_vec_f64).transpose()?;
        let y = gemm_cpu::linear(
            &x.to_vec_f64()?,
            &self.weight.to_vec_f64()?,
            b.as_deref(),
            sizes,
        )?;
        Tensor::from_f64(&y, &[lead, vec![sizes.n]].concat())
    }

    /// The gradients for `forward(x)` given grad_y [..., out].
    pub fn backward(&self, x: &Tensor, grad_y: &Tensor) -> Result<LinearGradients> {
        let (sizes, lead) = self.product(x, "input")?;
        let out = sizes.n;
        if grad_y.shape() != [lead.clone(), vec![out]].concat().as_slice() {
            let want = format!("{:?}", [lead, vec![out]].concat());
            return Err(Error::shape("grad_y", want, grad_y.shape()));
        }
        let (dx, dw, db) = gemm_cpu::linear_backward(
            &grad_y.to_vec_f64()?,
            &x.to_vec_f64()?,
            &self.weight.to_vec_f64()?,
            sizes,
            self.bias.is_some(),
        )?;
        Ok(LinearGradients {
            input: Tensor::from_f64(&dx, x.shape())?,
            weight: Tensor::from_f64(&dw, self.weight.shape())?,
            bias: db.map(|db| Tensor::from_f64(&db, &[out])).transpose()?,
        })
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

/// A lookup table: token k → row k of `weight` [V, E]. The padding index's row gets no gradient.
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// N(0, 1) rows like PyTorch's default (uniform here, same variance), the padding row zero.
    pub fn random(vocab: usize, dim: usize, padding_idx: Option<usize>, seed: u64) -> Result<Self> {
        let mut w = uniform(size::elements("weight", &[vocab, dim])?, 3f32.sqrt(), seed)?;
        if let Some(p) = padding_idx {
            if p >= vocab {
                return Err(Error::Config(format!(
                    "padding_idx {p} is outside the vocabulary of {vocab}"
                )));
            }
            w[p * dim..(p + 1) * dim].fill(0.0);
        }
        Ok(Embedding {
            weight: Tensor::from_vec(w, &[vocab, dim])?,
            padding_idx,
        })
    }

    fn check(&self, tokens: &[usize]) -> Result<(usize, usize)> {
        let &[vocab, dim] = self.weight.shape() else {
            return Err(Error::shape("weight", "[V, E]", self.weight.shape()));
        };
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Config(format!(
                "token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok((vocab, dim))
    }

    /// [..., E] for tokens of shape `shape` (its product is tokens.len()).
    pub fn forward(&self, tokens: &[usize], shape: &[usize]) -> Result<Tensor> {
        let (_, dim) = self.check(tokens)?;
        if size::elements("tokens", shape)? != tokens.len() {
            let want = format!("{} elements (one per token)", tokens.len());
            return Err(Error::shape("tokens", want, shape));
        }
        let w = values(&self.weight, "weight")?;
        let mut y = Vec::with_capacity(tokens.len() * dim);
        for &t in tokens {
            y.extend_from_slice(&w[t * dim..(t + 1) * dim]);
        }
        Tensor::from_vec(y, &[shape, &[dim]].concat())
    }

    /// The table's gradient for `forward(tokens)` given grad_y [..., E]: rows summed per token,
    /// the padding index's row zero.
    pub fn backward(&self, tokens: &[usize], grad_y: &Tensor) -> Result<Tensor> {
        let (vocab, dim) = self.check(tokens)?;
        let g = values(grad_y, "grad_y")?;
        if g.len() != tokens.len() * dim {
            return Err(Error::shape(
                "grad_y",
                format!("[{} tokens, {dim}]", tokens.len()),
                grad_y.shape(),
            ));
        }
        let mut dw = vec![0f32; vocab * dim];
        for (&t, gr) in tokens.iter().zip(g.chunks_exact(dim.max(1))) {
            if Some(t) == self.padding_idx {
                continue;
            }
            dw[t * dim..(t + 1) * dim]
                .iter_mut()
                .zip(gr)
                .for_each(|(d, &x)| *d += x);
        }
        Tensor::from_vec(dw, &[vocab, dim])
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
