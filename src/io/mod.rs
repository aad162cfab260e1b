//! safetensors files in PyTorch's naming: reading state_dicts and inputs, writing outputs.

mod safetensors_file;

pub use safetensors_file::{save_f32, TensorFile};
