//! What training needs besides the layers' backward passes: the softmax cross-entropy loss,
//! gradient-norm clipping and the Adam/AdamW optimizer. On the CPU: f32 parameters (they are
//! their own master weights), sums in f64. On CUDA: f32, f16 or bf16 tensors, f32 math, f32
//! moments and master weights on the device, one kernel launch per Adam step.

mod cuda;
mod loss;
mod optim;

pub use loss::{softmax_cross_entropy, Loss};
pub use optim::{clip_grad_norm, Adam};
