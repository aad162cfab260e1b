//! Layer objects that own their parameters.

mod rnn;

pub use rnn::{Rnn, RnnConfig, RnnOutput};
