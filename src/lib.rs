//! Fused CUDA kernels for recurrent networks, with PyTorch's semantics.
//!
//! | module | CPU (f32) | CUDA fused (f32/f16/bf16) | CUDA naive |
//! |---|---|---|---|
//! | `nn::Rnn` (tanh, relu) | yes | yes | yes |
//! | `nn::Lstm` (with or without projection) | yes | yes | yes |
//! | `nn::Gru` | yes | yes | yes |
//! | `nn::Attention` (additive, general, dot) | yes | yes | yes |
//! | training: `forward_train` / `backward` of every module | yes | yes | yes |
//! | training: `nn::Linear`, `nn::Embedding` (`ops::linear` on cuBLASLt, `ops::embedding`, with backward) | yes (every dtype) | yes | — |
//! | training: `train` (cross-entropy, clipping, Adam/AdamW) | yes | yes | — |
//! | blocks with backward: `ops::pointwise` (sigmoid, tanh, relu, add, mul), `ops::reduce` (sum, mean over a dim), `ops::dropout` | yes (every dtype) | yes | — |
//! | blocks: `ops::log_softmax` (with backward), `ops::top_k` (`argmax`, `top_k` with k ≤ 64 on CUDA; no backward) | yes (every dtype) | yes | — |
//! | blocks with backward: `ops::concat` (concat, split along any dim), `ops::index_select` (ids on the host or the device; `CudaDevice::check_errors` reports device ids out of range) | yes (every dtype) | yes | — |
//! | `nn::AttentionDecoder` (show-attend-tell): teacher forcing, backward, dropout, greedy and beam search | yes | yes (f32 math) | yes (teacher forcing and backward) |
//! | `models::Captioner` (patch encoder or region features), `models::Seq2Seq` (bi-LSTM/GRU encoder), checkpoints | yes | yes | — |
//! | `candle` (feature `candle`): `lstm`/`gru` drop-ins for candle-nn's, `Lstm`/`Gru`/`Rnn`/`Attention` over candle tensors, trained through candle's autograd | yes | yes (feature `candle-cuda`) | — |
//!
//! Every module takes layers, bidirectional, batch_first, bias, initial states and variable
//! lengths, with nn.RNN's / nn.LSTM's / nn.GRU's semantics. Weights load from PyTorch
//! state_dicts saved as safetensors. On CUDA, each layer-direction runs one GEMM for the input
//! projection of every step, then per step one recurrent GEMM and one fused kernel (biases,
//! gates, cell update, length mask, output and next state); the sequence is captured into a
//! CUDA graph once per shape and replayed. `Algo::Persistent` instead runs each layer-direction
//! in one cooperative launch with W_hh kept in shared memory, specialised to the shape with
//! NVRTC at run time; `Algo::Auto` takes it where it was measured faster. Attention computes a source's key side once
//! (`Attention::keys`); each decoding step is then one fused pass over the keys (scores, masked
//! softmax, context), split across blocks and combined.
//!
//! The model layer (`models`) composes the layers into a show-attend-tell captioner and a
//! seq2seq translator on one attention decoder (`DecoderWithAttention`'s names), with the
//! paper's loss, training steps, greedy and beam search, and safetensors checkpoints; `eval`
//! scores captions (BLEU-1..4 as the COCO caption evaluation computes it, exact match, word
//! error rate, attention localisation).
//!
//! Every layer implements `nn::Module` (parameters by PyTorch name, `load_state_dict` under a
//! prefix, `nn::save_state_dict`); a model composes its layers' parameters under prefixes
//! (`nn::parameters_of`), gathers gradients by name (`nn::Grads`) and steps them with one
//! optimiser call (`train::Adam::step_module`). Any shape a caller can build gives `Ok` or
//! `Err`, never a panic; sizes are counted with checked arithmetic and large buffers allocated
//! fallibly.
//!
//! Every op (`ops::*`) checks its arguments in `mod.rs`, then dispatches on the device of its
//! tensors to `cpu.rs` (the reference) or `cuda.rs` (launchers); ops never import each other,
//! and `nn` layers own parameters and call ops. A CUDA tensor carries its device; another
//! crate's buffers come in owned (`Tensor::from_cuda_slice`) or lent for a call
//! (`Tensor::borrow_cuda_slice`). Integer ids (tokens, beam rows, `argmax` results) are
//! `Indices`, on the host or the device. Kernels are named by typed ids generated from their
//! sources (`device::kernels::ids`), and the codes both sides use are written once
//! (kernels/codes.cuh → `device::kernels::codes`).
//!
//! # Quick start
//! ```no_run
//! use fused_rnn::{nn::{Rnn, RnnConfig}, DType, Device, Tensor};
//! # fn main() -> fused_rnn::Result<()> {
//! let (device, why) = Device::auto();
//! println!("{why}");
//! let rnn = Rnn::random(RnnConfig::new(16, 32), &device, DType::F32, 0)?;
//! let x = Tensor::from_vec(vec![0.1f32; 5 * 2 * 16], &[5, 2, 16])?.to(&device, DType::F32)?;
//! let out = rnn.forward(&x, None, Some(&[5, 3]))?;
//! assert_eq!(out.output.shape(), &[5, 2, 32]);
//! # Ok(()) }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod data;
pub mod device;
mod dtype;
pub mod error;
pub mod eval;
mod indices;
pub mod io;
pub mod models;
pub mod nn;
pub mod nvrtc;
pub mod ops;
pub mod size;
mod tensor;
pub mod train;

pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use indices::Indices;
pub use ops::algo::Algo;
pub use ops::precision::Precision;
pub use ops::recurrent::{Cell, Gradients, Nonlinearity, Outputs, Reserve};
pub use tensor::Tensor;
