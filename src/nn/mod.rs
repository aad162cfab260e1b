//! Layer objects that own their parameters.

mod layers;
pub(crate) mod recurrent;

pub use layers::{Gru, GruConfig, Lstm, LstmConfig, LstmOutput, Rnn, RnnConfig, RnnOutput};
