//! Layer objects that own their parameters.

mod attention;
mod layers;
pub(crate) mod recurrent;

pub use attention::Attention;
pub use layers::{Gru, GruConfig, Lstm, LstmConfig, LstmOutput, Rnn, RnnConfig, RnnOutput};
