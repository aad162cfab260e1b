//! nn.LSTM, nn.GRU and nn.RNN over candle tensors, with what candle-nn's layers lack: several
//! layers, both directions, batch_first, the LSTM projection, h0/c0, variable lengths and
//! f16/bf16. Parameters are read from a `VarBuilder` under PyTorch's names, so a PyTorch
//! state_dict saved as safetensors loads as it is, and candle's optimisers train them.

use super::recurrent::{Extras, Stack};
use crate::nn::recurrent::Spec;
use crate::nn::{GruConfig, LstmConfig, RnnConfig};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// What `Lstm::forward` returns.
#[derive(Debug, Clone)]
pub struct LstmOutput {
    /// [T, B, D·P] ([B, T, D·P] when batch_first), P the projection size (else H); zero past
    /// each row's length.
    pub output: Tensor,
    /// [L·D, B, P]: each row's state at its last valid step.
    pub h_n: Tensor,
    /// [L·D, B, H]
    pub c_n: Tensor,
}

/// What `Gru::forward` and `Rnn::forward` return.
#[derive(Debug, Clone)]
pub struct RnnOutput {
    pub output: Tensor,
    pub h_n: Tensor,
}

/// Parameters made where `vb` creates them as PyTorch does: U(-1/√H, 1/√H).
fn load(spec: Spec, vb: &VarBuilder) -> Result<Stack> {
    let bound = 1.0 / (spec.hidden_size as f64).sqrt();
    Stack::load(spec, vb, |name| {
        (
            name.to_string(),
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )
    })
}

/// nn.LSTM over candle tensors.
pub struct Lstm {
    stack: Stack,
    config: LstmConfig,
}

/// nn.GRU over candle tensors.
pub struct Gru {
    stack: Stack,
    config: GruConfig,
}

/// nn.RNN (tanh or ReLU) over candle tensors.
pub struct Rnn {
    stack: Stack,
    config: RnnConfig,
}

macro_rules! common {
    ($layer:ident, $config:ident) => {
        impl $layer {
            /// The parameters under PyTorch's names (`weight_ih_l0`, `bias_hh_l1_reverse`,
            /// ...) from `vb` (use `vb.pp("lstm")` for a module's prefix).
            pub fn new(config: $config, vb: VarBuilder) -> Result<Self> {
                let stack = load(config.spec(), &vb)?;
                Ok($layer { stack, config })
            }

            pub fn config(&self) -> &$config {
                &self.config
            }

            /// Every parameter with its PyTorch name, in state_dict order.
            pub fn parameters(&self) -> Vec<(String, Tensor)> {
                let names = self.stack.spec.parameters().map(|(n, _)| n);
                names.zip(self.stack.weights.iter().cloned()).collect()
            }
        }
    };
}

common!(Lstm, LstmConfig);
common!(Gru, GruConfig);
common!(Rnn, RnnConfig);

impl Lstm {
    /// Runs the sequence: `input` [T, B, I] ([B, T, I] when batch_first); `state` (h0
    /// [L·D, B, P or H], c0 [L·D, B, H]), zeros when absent; `lengths` each row's valid length
    /// in 1..=T (as pack_padded_sequence with enforce_sorted=False).
    pub fn forward(
        &self,
        input: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
        lengths: Option<&[usize]>,
    ) -> Result<LstmOutput> {
        let (h0, c0) = state.unzip();
        let pass = self.stack.run(
            input,
            Extras {
                h0,
                c0,
                lengths,
                cells: false,
            },
        )?;
        Ok(LstmOutput {
            output: pass.output,
            h_n: pass.h_n,
            c_n: pass.c_n.expect("an LSTM pass returns c_n"),
        })
    }
}

macro_rules! without_cell {
    ($layer:ident) => {
        impl $layer {
            /// Runs the sequence: `input` [T, B, I] ([B, T, I] when batch_first); `h0`
            /// [L·D, B, H], zeros when absent; `lengths` each row's valid length in 1..=T.
            pub fn forward(
                &self,
                input: &Tensor,
                h0: Option<&Tensor>,
                lengths: Option<&[usize]>,
            ) -> Result<RnnOutput> {
                let pass = self.stack.run(
                    input,
                    Extras {
                        h0,
                        lengths,
                        ..Extras::default()
                    },
                )?;
                Ok(RnnOutput {
                    output: pass.output,
                    h_n: pass.h_n,
                })
            }
        }
    };
}

without_cell!(Gru);
without_cell!(Rnn);
