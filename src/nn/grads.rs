//! Parameter gradients by name, as an optimiser takes them: a model's prefix + the layer's
//! PyTorch name (`decoder.attention.key_proj.weight`), so that they meet the parameters of
//! `Module::parameters` whatever order a backward pass produced them in.

use super::Module;
use crate::error::{quoted, Error, Result};
use crate::ops::{optim, pointwise};
use crate::tensor::Tensor;
use std::collections::HashMap;

#[derive(Default)]
pub struct Grads {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

impl Grads {
    pub fn new() -> Self {
        Grads::default()
    }

    /// The gradient of parameter `name`; each name once (`accumulate` sums the gradients of a
    /// parameter used in several places).
    pub fn insert(&mut self, name: impl Into<String>, grad: Tensor) -> Result<()> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(Error::Config(format!(
                "a second gradient for {}: accumulate sums a shared parameter's gradients",
                quoted(&name)
            )));
        }
        self.index.insert(name.clone(), self.tensors.len());
        self.names.push(name);
        self.tensors.push(grad);
        Ok(())
    }

    /// The gradients of every parameter of `module`, given in its state_dict order (the order
    /// of `Module::parameters`, which every layer's backward follows), under `prefix`. Their
    /// number and shapes must match the parameters'.
    pub fn add(
        &mut self,
        prefix: &str,
        module: &dyn Module,
        grads: impl IntoIterator<Item = Tensor>,
    ) -> Result<()> {
        let params = module.parameters();
        let grads: Vec<Tensor> = grads.into_iter().collect();
        if grads.len() != params.len() {
            return Err(Error::Config(format!(
                "{} gradients for the {} parameters under {}",
                grads.len(),
                params.len(),
                quoted(prefix)
            )));
        }
        for ((name, p), g) in params.into_iter().zip(grads) {
            let name = format!("{prefix}{name}");
            if g.shape() != p.shape() {
                return Err(Error::shape(name, format!("{:?}", p.shape()), g.shape()));
            }
            self.insert(name, g)?;
        }
        Ok(())
    }

    /// Adds `grad` to the gradient of `name` (on its device, in its dtype), or inserts it when
    /// there is none yet: a parameter used in several places (a shared embedding, a layer
    /// applied twice) gets the sum of its uses' gradients.
    pub fn accumulate(&mut self, name: impl Into<String>, grad: Tensor) -> Result<()> {
        let name = name.into();
        match self.index.get(&name) {
            None => self.insert(name, grad),
            Some(&k) => {
                let held = &mut self.tensors[k];
                if grad.shape() != held.shape() {
                    let want = format!("{:?} (the gradient held)", held.shape());
                    return Err(Error::shape(name, want, grad.shape()));
                }
                *held = pointwise::add(held, &grad)?;
                Ok(())
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&k| &self.tensors[k])
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Every name with its gradient, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// Scales every gradient by max_norm / (total L2 norm) when the norm exceeds max_norm
    /// (torch.nn.utils.clip_grad_norm_); returns the norm before clipping.
    pub fn clip_norm(&mut self, max_norm: f32) -> Result<f32> {
        let mut all: Vec<&mut Tensor> = self.tensors.iter_mut().collect();
        optim::clip_grad_norm(&mut all, max_norm)
    }

    /// The gradients of `module`'s parameters in its order, each name required, and no
    /// gradient left over that names no parameter.
    pub(crate) fn for_module<'a>(&'a self, names: &[String]) -> Result<Vec<&'a Tensor>> {
        let ordered = names
            .iter()
            .map(|name| {
                self.get(name).ok_or_else(|| {
                    Error::Config(format!("no gradient for parameter {}", quoted(name)))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if self.len() != names.len() {
            let known: std::collections::HashSet<&String> = names.iter().collect();
            if let Some(stray) = self.names.iter().find(|n| !known.contains(n)) {
                return Err(Error::Config(format!(
                    "a gradient for {}, which is not a parameter of the model",
                    quoted(stray)
                )));
            }
        }
        Ok(ordered)
    }
}
