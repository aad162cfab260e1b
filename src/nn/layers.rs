//! The public recurrent layers, `Rnn`, `Lstm` and `Gru`: nn.RNN's, nn.LSTM's and nn.GRU's
//! options, parameters and semantics over the shared `Recurrent` core.

use super::recurrent::{Recurrent, Spec};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::io::TensorFile;
use crate::nn::Module;
use crate::ops::algo::Algo;
use crate::ops::precision::Precision;
use crate::ops::recurrent::{Cell, Gradients, Nonlinearity, Outputs, Reserve};
use crate::tensor::Tensor;

/// nn.RNN's constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RnnConfig {
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub nonlinearity: Nonlinearity,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
}

/// nn.LSTM's constructor arguments; `proj_size` 0 means no projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LstmConfig {
    pub input_size: usize,
    pub hidden_size: usize,
    pub proj_size: usize,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
}

/// nn.GRU's constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GruConfig {
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
}

impl RnnConfig {
    /// One layer, tanh, with bias, sequence-first, unidirectional (nn.RNN's defaults).
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        RnnConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            nonlinearity: Nonlinearity::Tanh,
            bias: true,
            batch_first: false,
            bidirectional: false,
        }
    }

    pub(crate) fn spec(&self) -> Spec {
        Spec {
            cell: Cell::Rnn(self.nonlinearity),
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            proj_size: 0,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }
}

impl LstmConfig {
    /// One layer, with bias, no projection, sequence-first, unidirectional (nn.LSTM's defaults).
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        LstmConfig {
            input_size,
            hidden_size,
            proj_size: 0,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
        }
    }

    pub(crate) fn spec(&self) -> Spec {
        Spec {
            cell: Cell::Lstm,
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            proj_size: self.proj_size,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }
}

impl GruConfig {
    /// One layer, with bias, sequence-first, unidirectional (nn.GRU's defaults).
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        GruConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
        }
    }

    pub(crate) fn spec(&self) -> Spec {
        Spec {
            cell: Cell::Gru,
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            proj_size: 0,
            num_layers: self.num_layers,
            bias: self.bias,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }
}

/// What `Rnn` and `Gru` return.
pub struct RnnOutput {
    /// [T, B, D·H], or [B, T, D·H] when batch_first; zero past each row's length (the
    /// sequence keeps its full length T, as pad_packed_sequence with total_length = T).
    pub output: Tensor,
    /// [L·D, B, H]: each row's state at its last valid step.
    pub h_n: Tensor,
}

impl From<Outputs> for RnnOutput {
    fn from(out: Outputs) -> Self {
        RnnOutput {
            output: out.output,
            h_n: out.h_n,
        }
    }
}

/// What `Lstm` returns. With a projection of size P, output and h_n have P columns.
pub struct LstmOutput {
    pub output: Tensor,
    pub h_n: Tensor,
    /// [L·D, B, H]: each row's cell state at its last valid step.
    pub c_n: Tensor,
}

/// An Elman RNN (nn.RNN).
pub struct Rnn {
    config: RnnConfig,
    inner: Recurrent,
}

/// A long short-term memory network (nn.LSTM), with optional projection.
pub struct Lstm {
    config: LstmConfig,
    inner: Recurrent,
}

/// A gated recurrent unit network (nn.GRU).
pub struct Gru {
    config: GruConfig,
    inner: Recurrent,
}

/// Construction, copying and accessors, the same for every layer.
macro_rules! layer_common {
    ($layer:ident, $config:ident) => {
        /// Parameters in state_dict order, the order of `named_gradients`.
        impl Module for $layer {
            fn parameters(&self) -> Vec<(String, &Tensor)> {
                self.inner.parameters()
            }

            fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
                self.inner.parameters_mut()
            }
        }

        impl $layer {
            /// Parameters drawn like PyTorch's default init, U(-1/√H, 1/√H), from `seed`.
            pub fn random(
                config: $config,
                device: &Device,
                dtype: DType,
                seed: u64,
            ) -> Result<Self> {
                let inner = Recurrent::random(config.spec(), device, dtype, seed)?;
                Ok($layer { config, inner })
            }

            /// Parameters from a PyTorch state_dict (`weight_ih_l{k}[_reverse]`, `weight_hh_l{k}`,
            /// `bias_ih_l{k}`, `bias_hh_l{k}`, LSTM `weight_hr_l{k}`), checked against `config`;
            /// non-finite weights are an error.
            pub fn from_state_dict(
                config: $config,
                file: &TensorFile,
                device: &Device,
                dtype: DType,
            ) -> Result<Self> {
                let inner = Recurrent::from_state_dict(config.spec(), file, device, dtype)?;
                Ok($layer { config, inner })
            }

            /// A copy of this layer on `device` with parameters stored in `dtype`.
            pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
                let inner = self.inner.to(device, dtype)?;
                Ok($layer {
                    config: self.config,
                    inner,
                })
            }

            /// Chooses the CUDA implementation (ignored on the CPU).
            pub fn with_algo(mut self, algo: Algo) -> Self {
                self.inner.set_algo(algo);
                self
            }

            /// What the CPU computes `forward_train` and `backward` in: f32 by default,
            /// `Precision::F64` for the float64 reference (ignored on CUDA).
            pub fn with_precision(mut self, precision: Precision) -> Self {
                self.inner.set_precision(precision);
                self
            }

            pub fn config(&self) -> &$config {
                &self.config
            }

            pub fn device(&self) -> &Device {
                self.inner.device()
            }

            pub fn dtype(&self) -> DType {
                self.inner.dtype()
            }

            /// How many recent CUDA forward shapes replay a captured graph, and why any others
            /// do not (empty on the CPU).
            pub fn graph_capture_status(&self) -> (usize, Vec<String>) {
                self.inner.capture_status()
            }

            /// For each CUDA shape run with `Algo::Auto`: the algorithm picked and why (for
            /// example why a shape does not run persistently). Empty on the CPU.
            pub fn dispatch_notes(&self) -> Vec<String> {
                self.inner.dispatch_notes()
            }

            /// Every gradient of `grads` with its parameter's PyTorch name
            /// (`weight_ih_l0`, ...), in state_dict order.
            pub fn named_gradients<'a>(&self, grads: &'a Gradients) -> Vec<(String, &'a Tensor)> {
                self.inner.named_gradients(grads)
            }

            /// Bytes a `forward_train` of `seq_len` steps at `batch` keeps on this layer's
            /// device for `backward` (the reserve), known before the call.
            pub fn reserve_bytes(&self, seq_len: usize, batch: usize) -> usize {
                self.inner.reserve_bytes(seq_len, batch)
            }
        }
    };
}

layer_common!(Rnn, RnnConfig);
layer_common!(Lstm, LstmConfig);
layer_common!(Gru, GruConfig);

/// Running and training the layers without a cell state: the same for `Rnn` and `Gru`.
macro_rules! without_cell {
    ($layer:ident) => {
        impl $layer {
            /// Runs the sequence. `input` is [T, B, I] ([B, T, I] when batch_first) on this
            /// layer's device in its dtype; `h0` is [L·D, B, H] (zeros when absent); `lengths`
            /// gives each row's valid length in 1..=T (as pack_padded_sequence with
            /// enforce_sorted=False).
            pub fn forward(
                &self,
                input: &Tensor,
                h0: Option<&Tensor>,
                lengths: Option<&[usize]>,
            ) -> Result<RnnOutput> {
                self.inner
                    .forward(input, h0, None, lengths)
                    .map(RnnOutput::from)
            }

            /// As `forward`, keeping what `backward` needs (its size: `reserve_bytes`).
            pub fn forward_train(
                &self,
                input: &Tensor,
                h0: Option<&Tensor>,
                lengths: Option<&[usize]>,
            ) -> Result<(RnnOutput, Reserve)> {
                let (out, reserve) = self.inner.forward_train(input, h0, None, lengths)?;
                Ok((RnnOutput::from(out), reserve))
            }

            /// The gradients of Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n for the
            /// training-mode forward that made `reserve`: the input's, h0's and every
            /// parameter's (`named_gradients` names them). Outputs past a row's length get no
            /// gradient.
            pub fn backward(
                &self,
                reserve: &Reserve,
                grad_output: &Tensor,
                grad_h_n: Option<&Tensor>,
            ) -> Result<Gradients> {
                self.inner.backward(reserve, grad_output, grad_h_n, None)
            }
        }
    };
}

without_cell!(Rnn);
without_cell!(Gru);

impl Lstm {
    /// Runs the sequence. `state` is (h0 [L·D, B, P or H], c0 [L·D, B, H]), zeros when absent;
    /// otherwise as `Rnn::forward`.
    pub fn forward(
        &self,
        input: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
        lengths: Option<&[usize]>,
    ) -> Result<LstmOutput> {
        let (h0, c0) = state.unzip();
        Ok(LstmOutput::from(
            self.inner.forward(input, h0, c0, lengths)?,
        ))
    }

    /// As `forward`, keeping what `backward` needs (its size: `reserve_bytes`).
    pub fn forward_train(
        &self,
        input: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
        lengths: Option<&[usize]>,
    ) -> Result<(LstmOutput, Reserve)> {
        let (h0, c0) = state.unzip();
        let (out, reserve) = self.inner.forward_train(input, h0, c0, lengths)?;
        Ok((LstmOutput::from(out), reserve))
    }

    /// The gradients of Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n + Σ c_n ⊙ grad_c_n for the
    /// training-mode forward that made `reserve`: the input's, h0's, c0's and every
    /// parameter's (`named_gradients` names them). Outputs past a row's length get no
    /// gradient.
    pub fn backward(
        &self,
        reserve: &Reserve,
        grad_output: &Tensor,
        grad_h_n: Option<&Tensor>,
        grad_c_n: Option<&Tensor>,
    ) -> Result<Gradients> {
        self.inner
            .backward(reserve, grad_output, grad_h_n, grad_c_n)
    }
}

impl From<Outputs> for LstmOutput {
    fn from(out: Outputs) -> Self {
        LstmOutput {
            output: out.output,
            h_n: out.h_n,
            c_n: out.c_n.expect("an LSTM forward returns c_n"),
        }
    }
}
