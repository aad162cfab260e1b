//! The Adam/AdamW optimiser: hyperparameters and step count here, the update in `ops::optim`.

use crate::error::Result;
use crate::nn::{Grads, Module};
use crate::ops::optim::{self, AdamHyper, AdamState, Moments};
use crate::tensor::Tensor;

/// Adam (Kingma & Ba) with bias correction, as torch.optim.Adam; with `decoupled` weight decay
/// it is AdamW (torch.optim.AdamW). Moments are kept per parameter in f32.
///
/// On CUDA (parameters on one device, in one dtype; gradients in the parameters' dtype) a step
/// is one kernel launch over every parameter. Moments stay on the device in f32; parameters
/// stored in f16 or bf16 get f32 master weights there, which the step updates before writing
/// the rounded values to the parameters. The master weights are read from the parameters at
/// the first step, and again wherever a parameter no longer holds its master's rounding (it was
/// written or replaced between steps).
pub struct Adam {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding weight_decay·p to the gradient.
    pub decoupled: bool,
    steps: u32,
    state: Option<AdamState>,
}

/// Adam's state between steps, as [`Adam::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamSnapshot {
    pub steps: u32,
    pub moments: Moments,
}

impl Adam {
    /// torch.optim.Adam's defaults with learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            steps: 0,
            state: None,
        }
    }

    /// torch.optim.AdamW's defaults (weight decay 0.01) with learning rate `lr`.
    pub fn adamw(lr: f32) -> Self {
        Adam {
            weight_decay: 0.01,
            decoupled: true,
            ..Adam::new(lr)
        }
    }

    /// One update of every parameter from its gradient (same order and shapes every call).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Tensor]) -> Result<()> {
        let hyper = AdamHyper {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
            step: self.steps + 1,
        };
        optim::adam_step(&mut self.state, params, grads, &hyper)?;
        self.steps += 1;
        Ok(())
    }

    /// One update of every parameter of `module` from the gradient of the same name in
    /// `grads`: every parameter needs one, and every gradient must name a parameter.
    pub fn step_module(&mut self, module: &mut dyn Module, grads: &Grads) -> Result<()> {
        let mut params = module.parameters_mut();
        let names: Vec<String> = params.iter().map(|(name, _)| name.clone()).collect();
        let ordered = grads.for_module(&names)?;
        let mut tensors: Vec<&mut Tensor> = params.iter_mut().map(|(_, t)| &mut **t).collect();
        self.step(&mut tensors, &ordered)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// What resuming needs: the step count and every parameter's (first, second) moments in
    /// the order `step` takes them (empty before the first step).
    pub fn snapshot(&self) -> Result<AdamSnapshot> {
        Ok(AdamSnapshot {
            steps: self.steps,
            moments: optim::moments(self.state.as_ref())?.unwrap_or_default(),
        })
    }

    /// Continues from `snapshot` for `module`'s parameters (checked against their sizes).
    pub fn restore(&mut self, module: &mut dyn Module, snapshot: AdamSnapshot) -> Result<()> {
        self.state = match snapshot.moments.is_empty() {
            true => None,
            false => {
                let mut params = module.parameters_mut();
                let tensors: Vec<&mut Tensor> = params.iter_mut().map(|(_, t)| &mut **t).collect();
                Some(optim::restore(&tensors, snapshot.moments)?)
            }
        };
        self.steps = snapshot.steps;
        Ok(())
    }

    /// The f32 master weights of parameter `index` (in the order `step` takes them), when this
    /// optimizer steps f16 or bf16 parameters on CUDA; None otherwise.
    pub fn master_weights(&self, index: usize) -> Result<Option<Vec<f32>>> {
        optim::master_weights(self.state.as_ref(), index)
    }
}
