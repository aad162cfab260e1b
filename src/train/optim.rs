//! Gradient-norm clipping and Adam/AdamW, each one pass over every parameter.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Scales every gradient by max_norm / (total L2 norm) when the norm exceeds max_norm, as
/// torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f32) -> Result<f32> {
    let mut squares = 0f64;
    for g in grads.iter() {
        squares += g
            .host_slice::<f32>()?
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>();
    }
    let norm = squares.sqrt();
    let scale = max_norm as f64 / (norm + 1e-6);
    if scale < 1.0 {
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
pub struct Adam {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding weight_decay·p to the gradient.
    pub decoupled: bool,
    steps: u32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
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
}
