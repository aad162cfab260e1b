//! safetensors files in PyTorch's naming: reading state_dicts and inputs, writing outputs.

mod safetensors_file;
mod temporary;

pub use safetensors_file::{save, save_f32, Data, TensorFile};
pub use temporary::{abandon_writes, write_atomically, Abandoned};
