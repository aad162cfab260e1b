//! The optimiser's ops: gradient-norm clipping and the Adam/AdamW step, each one pass over
//! every parameter. Checks and dispatch here; `cpu.rs` (f32 parameters, their own master
//! weights, sums in f64) and `cuda.rs` (one multi-tensor launch, f32 moments and master weights
//! on the device).

mod cpu;
mod cuda;

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
    cpu::clip_grad_norm(grads, max_norm, clip_scale)
}

/// One step's hyperparameters, as `Adam` holds them.
pub(crate) struct AdamHyper {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    /// The step being taken, from 1.
    pub step: u32,
}

/// Adam's moments (and, for 16-bit parameters on CUDA, master weights) on the parameters'
/// device.
pub(crate) enum AdamState {
    Cpu(Vec<(Vec<f32>, Vec<f32>)>),
    Cuda(Box<cuda::AdamCuda>),
}

/// One Adam step of `params` from `grads` (same order and shapes every call); `state` is made
/// at the first step, on the parameters' device. A first step that fails leaves no state.
pub(crate) fn adam_step(
    state: &mut Option<AdamState>,
    params: &mut [&mut Tensor],
    grads: &[&Tensor],
    hyper: &AdamHyper,
) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::Config(format!(
            "{} parameters but {} gradients",
            params.len(),
            grads.len()
        )));
    }
    let on_cuda = params.iter().any(|p| p.is_cuda()) || grads.iter().any(|g| g.is_cuda());
    let mut current = match state.take() {
        Some(s) => s,
        None if on_cuda => AdamState::Cuda(Box::new(cuda::AdamCuda::new(params)?)),
        None => AdamState::Cpu(cpu::moments(params)),
    };
    let stepped = match &mut current {
        AdamState::Cpu(_) if on_cuda => Err(Error::Config(
            "this Adam has stepped CPU parameters; it cannot step CUDA ones".into(),
        )),
        AdamState::Cpu(moments) => cpu::adam_step(moments, params, grads, hyper),
        AdamState::Cuda(c) => c.step(params, grads, hyper),
    };
    if stepped.is_ok() || hyper.step > 1 {
        *state = Some(current);
    }
    stepped
}

/// The f32 master weights of parameter `index`, when `state` steps f16 or bf16 parameters on
/// CUDA; None otherwise.
/// Every parameter's (first, second) moments, in the order of the steps' parameters.
pub type Moments = Vec<(Vec<f32>, Vec<f32>)>;

/// The moments; None before the first step.
pub(crate) fn moments(state: Option<&AdamState>) -> Result<Option<Moments>> {
    match state {
        None => Ok(None),
        Some(AdamState::Cpu(m)) => Ok(Some(m.clone())),
        Some(AdamState::Cuda(c)) => c.moments().map(Some),
    }
}

/// State for `params` holding `moments` (one pair per parameter, each of its size), on the
/// parameters' device.
pub(crate) fn restore(params: &[&mut Tensor], moments: Moments) -> Result<AdamState> {
    if moments.len() != params.len() {
        return Err(Error::Config(format!(
            "optimizer state for {} parameters, the model has {}",
            moments.len(),
            params.len()
        )));
    }
    for (k, (p, (m, v))) in params.iter().zip(&moments).enumerate() {
        if m.len() != p.numel() || v.len() != p.numel() {
            return Err(Error::Config(format!(
                "optimizer state of parameter {k}: {} and {} values for {} elements",
                m.len(),
                v.len(),
                p.numel()
            )));
        }
    }
    if params.iter().any(|p| p.is_cuda()) {
        let mut c = cuda::AdamCuda::new(params)?;
        c.set_moments(&moments)?;
        Ok(AdamState::Cuda(Box::new(c)))
    } else {
        Ok(AdamState::Cpu(moments))
    }
}

pub(crate) fn master_weights(state: Option<&AdamState>, index: usize) -> Result<Option<Vec<f32>>> {
    match state {
        Some(AdamState::Cuda(c)) => c.master(index),
        _ => Ok(None),
    }
}
