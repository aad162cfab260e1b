//! Gradient-norm clipping and Adam/AdamW, each one pass over every parameter.

use super::cuda::{self, AdamCuda, AdamHyper};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The factor clip_grad_norm_ scales the gradients by, when it scales them.
fn clip_scale(norm: f64, max_norm: f32) -> Option<f64> {
    let scale = max_norm as f64 / (norm + 1e-6);
    (scale < 1.0).then_some(scale)
}

/// Scales every gradient by max_norm / (total L2 norm) when the norm exceeds max_norm, as
/// torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
///
/// On CUDA the gradients must share one device and dtype; the norm is one reduction launch
/// (sums in f64) and one read, the scaling one more launch.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f32) -> Result<f32> {
    if grads.iter().any(|g| g.is_cuda()) {
        return cuda::clip_grad_norm(grads, max_norm, clip_scale);
    }
    let mut squares = 0f64;
    for g in grads.iter() {
        squares += g
            .host_slice::<f32>()?
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>();
    }
    let norm = squares.sqrt();
    if let Some(scale) = clip_scale(norm, max_norm) {
        for g in grads.iter_mut() {
            g.host_slice_mut::<f32>()?
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * scale) as f32);
        }
    }
    Ok(norm as f32)
}

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
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    cuda: Option<AdamCuda>,
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
            moments: Vec::new(),
            cuda: None,
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
        if params.len() != grads.len() {
            return Err(Error::Config(format!(
                "{} parameters but {} gradients",
                params.len(),
                grads.len()
            )));
        }
        let on_cuda = params.iter().any(|p| p.is_cuda()) || grads.iter().any(|g| g.is_cuda());
        if on_cuda || self.cuda.is_some() {
            return self.step_cuda(params, grads);
        }
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| (vec![0.0; p.numel()], vec![0.0; p.numel()]))
                .collect();
        }
        if self.moments.len() != params.len() {
            return Err(Error::Config(
                "the parameters changed between Adam steps".into(),
            ));
        }
        self.steps += 1;
        let (b1, b2) = self.betas;
        let correct1 = 1.0 - (b1 as f64).powi(self.steps as i32);
        let correct2 = 1.0 - (b2 as f64).powi(self.steps as i32);
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            if p.shape() != g.shape() || m.len() != p.numel() {
                return Err(Error::shape(
                    "gradient",
                    format!("{:?}", p.shape()),
                    g.shape(),
                ));
            }
            let g = g.host_slice::<f32>()?;
            let p = p.host_slice_mut::<f32>()?;
            for ((pi, &gi), (mi, vi)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                let mut grad = gi;
                if self.decoupled {
                    *pi -= self.lr * self.weight_decay * *pi;
                } else {
                    grad += self.weight_decay * *pi;
                }
                *mi = b1 * *mi + (1.0 - b1) * grad;
                *vi = b2 * *vi + (1.0 - b2) * grad * grad;
                let m_hat = *mi as f64 / correct1;
                let v_hat = *vi as f64 / correct2;
                *pi -= (self.lr as f64 * m_hat / (v_hat.sqrt() + self.eps as f64)) as f32;
            }
        }
        Ok(())
    }
    fn step_cuda(&mut self, params: &mut [&mut Tensor], grads: &[&Tensor]) -> Result<()> {
        if !self.moments.is_empty() {
            return Err(Error::Config(
                "this Adam has stepped CPU parameters; it cannot step CUDA ones".into(),
            ));
        }
        let mut state = match self.cuda.take() {
            Some(state) => state,
            None => AdamCuda::new(params)?,
        };
        let hyper = AdamHyper {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
            step: self.steps + 1,
        };
        let stepped = state.step(params, grads, &hyper);
        // A first step that fails leaves no state behind: the next call may bring other tensors.
        if stepped.is_ok() || self.steps > 0 {
            self.cuda = Some(state);
        }
        stepped?;
        self.steps += 1;
        Ok(())
    }

    /// The f32 master weights of parameter `index` (in the order `step` takes them), when this
    /// optimizer steps f16 or bf16 parameters on CUDA; None otherwise.
    pub fn master_weights(&self, index: usize) -> Result<Option<Vec<f32>>> {
        match &self.cuda {
            Some(state) => state.master(index),
            None => Ok(None),
        }
    }
}
