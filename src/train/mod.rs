//! What training needs besides the layers' backward passes: the softmax cross-entropy loss,
//! gradient-norm clipping and the Adam/AdamW optimizer. CPU, f32 parameters (they are their own
//! master weights), sums in f64.

mod loss;
mod optim;

pub use loss::{softmax_cross_entropy, Loss};
pub use optim::{clip_grad_norm, Adam};
