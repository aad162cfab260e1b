//! What training needs besides the layers' backward passes: the softmax cross-entropy loss,
//! gradient-norm clipping, the Adam/AdamW optimizer and weight averaging. On the CPU: f32
//! parameters (they are their own master weights), sums in f64. On CUDA: f32, f16 or bf16
//! tensors, f32 math, f32 moments and master weights on the device, one kernel launch per Adam
//! step. The arithmetic is in `ops::cross_entropy` and `ops::optim`.

mod average;
mod optim;

pub use crate::ops::cross_entropy::{softmax_cross_entropy, Loss};
pub use crate::ops::optim::clip_grad_norm;
pub use average::WeightAverage;
pub use optim::{Adam, AdamSnapshot};
