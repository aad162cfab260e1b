//! Layer objects that own their parameters.

mod attention;
mod conv;
mod decoder;
mod grads;
mod init;
mod layers;
mod linear;
mod module;
mod patch;
pub(crate) mod recurrent;
mod state_dict;

pub use attention::{Attention, AttentionConfig};
pub use decoder::{
    holds_decoder, AttentionActivation, AttentionDecoder, Decoded, DecoderConfig, DecoderDims,
    DecoderForward, DecoderGradients, DecoderSaved, Search,
};
pub use grads::Grads;
pub use layers::{Gru, GruConfig, Lstm, LstmConfig, LstmOutput, Rnn, RnnConfig, RnnOutput};
pub use linear::{Embedding, Linear, LinearGradients};
pub use module::{parameters_mut_of, parameters_of, save_state_dict, Module};
pub use patch::{EncoderLayers, ImageShape, PatchEncoder, Patches};
pub use recurrent::{Recurrent, Spec as RecurrentSpec};
