//! safetensors files in PyTorch's naming: reading state_dicts and inputs, writing outputs; the
//! files bundled with the crate.

mod bundled;
mod safetensors_file;
mod temporary;

pub use bundled::Bundled;
pub use safetensors_file::{save, save_f32, Data, TensorFile};
pub use temporary::{abandon_writes, write_atomically, Abandoned};
