//! Drop-in replacements for `candle_nn::{lstm, gru}`: the same signatures, weight names and
//! initialisation, and `candle_nn::rnn::RNN`, but `seq` is one fused pass over the sequence
//! instead of a loop of steps. A program switches by changing its import.

use super::recurrent::{Extras, Stack};
use crate::nn::recurrent::Spec;
use crate::ops::recurrent::Cell;
use candle_core::{Result, Tensor, TensorId};
use candle_nn::rnn::{Direction, GRUConfig, GRUState, LSTMConfig, LSTMState, RNN};
use candle_nn::{Init, VarBuilder};

/// One layer, one direction, batch-first, as candle-nn's layers are.
fn spec(cell: Cell, in_dim: usize, hidden_dim: usize, bias: bool) -> Spec {
    Spec {
        cell,
        input_size: in_dim,
        hidden_size: hidden_dim,
        proj_size: 0,
        num_layers: 1,
        bias,
        batch_first: true,
        bidirectional: false,
    }
}

/// Both biases or none: our layers have one `bias` switch, as PyTorch's do.
fn bias_of(b_ih: Option<Init>, b_hh: Option<Init>) -> Result<bool> {
    match (b_ih, b_hh) {
        (Some(_), Some(_)) => Ok(true),
        (None, None) => Ok(false),
        _ => Err(super::convert::refuse(
            "a layer with one of bias_ih and bias_hh only (both or neither, as in PyTorch)",
        )),
    }
}

/// The init candle-nn gives parameter `name` (our layer-0 name) under `config`'s hints.
fn init_of(name: &str, w_ih: Init, w_hh: Init, b_ih: Option<Init>, b_hh: Option<Init>) -> Init {
    let unset = Init::Const(0.);
    match name.split("_l").next() {
        Some("weight_ih") => w_ih,
        Some("weight_hh") => w_hh,
        Some("bias_ih") => b_ih.unwrap_or(unset),
        _ => b_hh.unwrap_or(unset),
    }
}

/// The last `seq`'s output [B, T, H] and the ids of the h's it handed out as states. Given
/// exactly those states, `states_to_tensor` returns the output itself instead of stacking its
/// slices again: a copy, and in candle's backward one full-size gradient per step. Taken by
/// the first `states_to_tensor` after the `seq` (a later `seq` replaces it).
#[derive(Clone, Default)]
struct LastSeq(std::sync::Arc<std::sync::Mutex<Option<Handed>>>);

/// The ids of the h's a `seq` handed out, and its output.
type Handed = (Vec<TensorId>, Tensor);

impl LastSeq {
    fn set(&self, output: &Tensor, hs: impl Iterator<Item = TensorId>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((hs.collect(), output.clone()));
    }

    /// The output, when `hs` are the h's of the last `seq`, in order.
    fn output_for(&self, hs: &[&Tensor]) -> Option<Tensor> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let same = last.as_ref().is_some_and(|(ids, _)| {
            ids.len() == hs.len() && ids.iter().zip(hs).all(|(id, h)| *id == h.id())
        });
        same.then(|| last.take().map(|(_, output)| output))
            .flatten()
    }
}

/// The steps of a fused pass as candle-nn's states: h from the output, the last state from
/// h_n/c_n (so that gradients reach every step's h and the final c).
fn batch_rows(t: &Tensor, step: usize) -> Result<Tensor> {
    t.narrow(1, step, 1)?.squeeze(1)
}

/// A long short-term memory layer (candle-nn's `LSTM`, run by fused-rnn).
#[derive(Clone)]
pub struct LSTM {
    stack: std::sync::Arc<Stack>,
    last: LastSeq,
    hidden_dim: usize,
    config: LSTMConfig,
}

impl std::fmt::Debug for LSTM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LSTM(fused-rnn, {})", self.stack.spec)
    }
}

impl LSTM {
    /// As `candle_nn::LSTM::new`: weights `weight_ih_l{k}[_reverse]` etc. from `vb`.
    pub fn new(
        in_dim: usize,
        hidden_dim: usize,
        config: LSTMConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bias = bias_of(config.b_ih_init, config.b_hh_init)?;
        let suffix = match config.direction {
            Direction::Forward => "",
            Direction::Backward => "_reverse",
        };
        let layer = config.layer_idx;
        let stack = Stack::load(spec(Cell::Lstm, in_dim, hidden_dim, bias), &vb, |name| {
            let base = name.trim_end_matches("l0");
            let init = init_of(
                name,
                config.w_ih_init,
                config.w_hh_init,
                config.b_ih_init,
                config.b_hh_init,
            );
            (format!("{base}l{layer}{suffix}"), init)
        })?;
        Ok(LSTM {
            stack: std::sync::Arc::new(stack),
            last: LastSeq::default(),
            hidden_dim,
            config,
        })
    }

    pub fn config(&self) -> &LSTMConfig {
        &self.config
    }
}

/// Creates an LSTM layer (as `candle_nn::lstm`).
pub fn lstm(in_dim: usize, hidden_dim: usize, config: LSTMConfig, vb: VarBuilder) -> Result<LSTM> {
    LSTM::new(in_dim, hidden_dim, config, vb)
}

impl RNN for LSTM {
    type State = LSTMState;

    fn zero_state(&self, batch_dim: usize) -> Result<LSTMState> {
        let zeros = Tensor::zeros(
            (batch_dim, self.hidden_dim),
            self.stack.dtype(),
            self.stack.device(),
        )?;
        Ok(LSTMState::new(zeros.clone(), zeros))
    }

    /// One step: the fused pass over a sequence of one.
    fn step(&self, input: &Tensor, state: &LSTMState) -> Result<LSTMState> {
        let pass = self.stack.run(
            &input.unsqueeze(1)?,
            Extras {
                h0: Some(&state.h.unsqueeze(0)?),
                c0: Some(&state.c.unsqueeze(0)?),
                ..Extras::default()
            },
        )?;
        let c_n = pass.c_n.expect("an LSTM pass returns c_n");
        Ok(LSTMState::new(pass.h_n.squeeze(0)?, c_n.squeeze(0)?))
    }

    fn seq(&self, input: &Tensor) -> Result<Vec<LSTMState>> {
        self.states(input, None)
    }

    fn seq_init(&self, input: &Tensor, init_state: &LSTMState) -> Result<Vec<LSTMState>> {
        self.states(input, Some(init_state))
    }

    fn states_to_tensor(&self, states: &[LSTMState]) -> Result<Tensor> {
        let hs: Vec<&Tensor> = states.iter().map(|s| &s.h).collect();
        match self.last.output_for(&hs) {
            Some(output) => Ok(output),
            None => Tensor::stack(&hs, 1),
        }
    }
}

impl LSTM {
    /// Every step's state from one fused pass. c before the last step comes from the pass's
    /// record of the cell (values only: gradients reach every h and the last c).
    fn states(&self, input: &Tensor, init: Option<&LSTMState>) -> Result<Vec<LSTMState>> {
        // As candle-nn: no steps, no states.
        if input.dims3()?.1 == 0 {
            return Ok(Vec::new());
        }
        let (h0, c0) = match init {
            Some(s) => (Some(s.h.unsqueeze(0)?), Some(s.c.unsqueeze(0)?)),
            None => (None, None),
        };
        let pass = self.stack.run(
            input,
            Extras {
                h0: h0.as_ref(),
                c0: c0.as_ref(),
                lengths: None,
                cells: true,
            },
        )?;
        let cells = pass.cells.expect("an LSTM pass keeps its cells when asked");
        let c_n = pass.c_n.expect("an LSTM pass returns c_n").squeeze(0)?;
        let steps = input.dim(1)?;
        let states = (0..steps)
            .map(|t| {
                let c = match t + 1 == steps {
                    true => c_n.clone(),
                    false => batch_rows(&cells, t)?,
                };
                Ok(LSTMState::new(batch_rows(&pass.output, t)?, c))
            })
            .collect::<Result<Vec<_>>>()?;
        self.last.set(&pass.output, states.iter().map(|s| s.h.id()));
        Ok(states)
    }
}

/// A gated recurrent unit layer (candle-nn's `GRU`, run by fused-rnn).
#[derive(Clone)]
pub struct GRU {
    stack: std::sync::Arc<Stack>,
    last: LastSeq,
    hidden_dim: usize,
    config: GRUConfig,
}

impl std::fmt::Debug for GRU {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GRU(fused-rnn, {})", self.stack.spec)
    }
}

impl GRU {
    /// As `candle_nn::GRU::new`: weights `weight_ih_l0` etc. from `vb`.
    pub fn new(
        in_dim: usize,
        hidden_dim: usize,
        config: GRUConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bias = bias_of(config.b_ih_init, config.b_hh_init)?;
        let stack = Stack::load(spec(Cell::Gru, in_dim, hidden_dim, bias), &vb, |name| {
            let init = init_of(
                name,
                config.w_ih_init,
                config.w_hh_init,
                config.b_ih_init,
                config.b_hh_init,
            );
            (name.to_string(), init)
        })?;
        Ok(GRU {
            stack: std::sync::Arc::new(stack),
            last: LastSeq::default(),
            hidden_dim,
            config,
        })
    }

    pub fn config(&self) -> &GRUConfig {
        &self.config
    }
}

/// Creates a GRU layer (as `candle_nn::gru`).
pub fn gru(in_dim: usize, hidden_dim: usize, config: GRUConfig, vb: VarBuilder) -> Result<GRU> {
    GRU::new(in_dim, hidden_dim, config, vb)
}

impl RNN for GRU {
    type State = GRUState;

    fn zero_state(&self, batch_dim: usize) -> Result<GRUState> {
        let h = Tensor::zeros(
            (batch_dim, self.hidden_dim),
            self.stack.dtype(),
            self.stack.device(),
        )?;
        Ok(GRUState { h })
    }

    /// One step: the fused pass over a sequence of one.
    fn step(&self, input: &Tensor, state: &GRUState) -> Result<GRUState> {
        let pass = self.stack.run(
            &input.unsqueeze(1)?,
            Extras {
                h0: Some(&state.h.unsqueeze(0)?),
                ..Extras::default()
            },
        )?;
        Ok(GRUState {
            h: pass.h_n.squeeze(0)?,
        })
    }

    fn seq(&self, input: &Tensor) -> Result<Vec<GRUState>> {
        self.states(input, None)
    }

    fn seq_init(&self, input: &Tensor, init_state: &GRUState) -> Result<Vec<GRUState>> {
        self.states(input, Some(init_state))
    }

    /// As candle-nn's GRU: the states concatenated along dimension 1 ([B, T·H]).
    fn states_to_tensor(&self, states: &[GRUState]) -> Result<Tensor> {
        let hs: Vec<&Tensor> = states.iter().map(|s| &s.h).collect();
        match self.last.output_for(&hs) {
            Some(output) => output.flatten_from(1),
            None => Tensor::cat(&hs, 1),
        }
    }
}

impl GRU {
    fn states(&self, input: &Tensor, init: Option<&GRUState>) -> Result<Vec<GRUState>> {
        if input.dims3()?.1 == 0 {
            return Ok(Vec::new());
        }
        let h0 = init.map(|s| s.h.unsqueeze(0)).transpose()?;
        let pass = self.stack.run(
            input,
            Extras {
                h0: h0.as_ref(),
                ..Extras::default()
            },
        )?;
        let states = (0..input.dim(1)?)
            .map(|t| {
                Ok(GRUState {
                    h: batch_rows(&pass.output, t)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.last.set(&pass.output, states.iter().map(|s| s.h.id()));
        Ok(states)
    }
}
