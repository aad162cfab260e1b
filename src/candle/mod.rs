//! fused-rnn as candle's recurrent backend (feature `candle`; `candle-cuda` for CUDA tensors).
//!
//! - [`lstm`] and [`gru`] take candle-nn's arguments and weight names and implement
//!   `candle_nn::rnn::RNN`; `seq` is one fused pass instead of a loop of steps. Switching a
//!   program is a change of import.
//! - [`Attention`]: additive, general or dot scores with key-length masks.
//! - [`Lstm`], [`Gru`] and [`Rnn`] are PyTorch's modules over candle tensors: layers, both
//!   directions, batch_first, the LSTM projection, h0/c0, variable lengths, f16/bf16; their
//!   parameters load from a `VarBuilder` under PyTorch's names.
//! - Training: a pass that any tracked tensor reaches enters candle's graph as one custom op
//!   whose backward is this crate's backpropagation through time, so `backward()` and
//!   candle's optimisers work as with candle's own layers.
//! - CPU tensors run the CPU path (in f32). CUDA tensors run the kernels on candle's own
//!   stream, reading candle's buffers in place and handing results back without a copy; the
//!   weights are copied into the layer's buffers once per call, as PyTorch's
//!   `flatten_parameters` does.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{rnn::RNN, VarBuilder, VarMap};
//! // was: use candle_nn::{lstm, LSTMConfig};
//! use candle_nn::LSTMConfig;
//! use fused_rnn::candle::lstm;
//!
//! let map = VarMap::new();
//! let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
//! let layer = lstm(16, 32, LSTMConfig::default(), vb.pp("lstm"))?;
//! let x = Tensor::randn(0f32, 1.0, (4, 10, 16), &Device::Cpu)?; // [B, T, I]
//! let states = layer.seq(&x)?;
//! let hs = layer.states_to_tensor(&states)?; // [B, T, H]
//! # Ok::<(), candle_core::Error>(())
//! ```

mod attention;
mod convert;
mod layers;
mod recurrent;
mod rnn;

pub use attention::{Attended, Attention};
pub use layers::{Gru, Lstm, LstmOutput, Rnn, RnnOutput};
pub use rnn::{gru, lstm, GRU, LSTM};
