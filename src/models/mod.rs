//! The model layer: a show-attend-tell captioner and a seq2seq translator on one attention
//! decoder, trained and decoded through `nn` and `train` only, and saved as one safetensors
//! checkpoint with PyTorch names.

pub mod bundled;
mod captioner;
mod checkpoint;
mod loss;
mod seq2seq;
mod vocab;

pub use crate::nn::AttentionDecoder;
pub use captioner::{Caption, Captioner, CaptionerConfig, Input, StepReport};
pub use loss::{caption_loss, targets, CaptionLoss};
pub use seq2seq::{EncoderCell, Seq2Seq, Seq2SeqConfig, Sources};
pub use vocab::{Vocab, END, PAD, START, UNKNOWN};
