//! Recurrent forward (nn.RNN, nn.LSTM, nn.GRU semantics): checks, then the CPU or CUDA path.
//!
//! Layout: `input` is [T, B, I] (or [B, T, I] when batch_first); row (t, b) of any [rows, ·]
//! buffer is `t * st + b * sb` with (st, sb) = (B, 1) or (1, T), so batch-first data is never
//! transposed. With G gates per unit (1 RNN, 4 LSTM, 3 GRU), hidden size H and output size O
//! (the LSTM projection size, else H): `output` is [T, B, D·O] (or [B, T, D·O]), `h_n` is
//! [L·D, B, O] and the LSTM's `c_n` is [L·D, B, H].

mod arena;
mod bptt_cpu;
mod cpu;
mod cuda;
pub mod persistent;
mod train_cuda;

pub(crate) use cuda::PlanCache;

use crate::device::Device;
use crate::error::{Error, Result};
pub(crate) use crate::ops::activation::Activation;
use crate::ops::algo::Algo;
use crate::ops::precision::Precision;
use crate::size;
use crate::tensor::Tensor;
use std::borrow::Cow;

/// The Elman RNN's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Nonlinearity {
    #[default]
    Tanh,
    Relu,
}

impl Nonlinearity {
    pub fn name(self) -> &'static str {
        match self {
            Nonlinearity::Tanh => "tanh",
            Nonlinearity::Relu => "relu",
        }
    }

    pub(crate) fn activation(self) -> Activation {
        match self {
            Nonlinearity::Tanh => Activation::Tanh,
            Nonlinearity::Relu => Activation::Relu,
        }
    }
}

impl std::str::FromStr for Nonlinearity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tanh" => Ok(Nonlinearity::Tanh),
            "relu" => Ok(Nonlinearity::Relu),
            _ => Err(Error::Config(format!(
                "unknown nonlinearity {} (expected tanh or relu)",
                crate::error::quoted(s)
            ))),
        }
    }
}

/// The recurrent cell of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cell {
    Rnn(Nonlinearity),
    Lstm,
    Gru,
}

impl Cell {
    /// Gate rows per hidden unit in the weight matrices.
    pub fn gates(self) -> usize {
        match self {
            Cell::Rnn(_) => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cell::Rnn(_) => "RNN",
            Cell::Lstm => "LSTM",
            Cell::Gru => "GRU",
        }
    }
}

/// Weights of one layer-direction, in PyTorch's shapes: w_ih [G·H, in], w_hh [G·H, O],
/// biases [G·H], and the LSTM projection w_hr [O, H].
pub struct DirectionWeights {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
    pub w_hr: Option<Tensor>,
}

/// Sizes of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub seq_len: usize,
    pub batch: usize,
    pub input_size: usize,
    pub hidden: usize,
    /// The size of h and of each direction's output: the projection size, else `hidden`.
    pub out_size: usize,
    pub gates: usize,
    pub layers: usize,
    pub dirs: usize,
    pub batch_first: bool,
}

impl Dims {
    pub fn rows(&self) -> usize {
        self.seq_len * self.batch
    }

    /// (st, sb): the row of (t, b) is t·st + b·sb.
    pub fn strides(&self) -> (usize, usize) {
        if self.batch_first {
            (1, self.seq_len)
        } else {
            (self.batch, 1)
        }
    }

    /// Columns of the gate pre-activations: G·H.
    pub fn gate_width(&self) -> usize {
        self.gates * self.hidden
    }

    pub fn projected(&self) -> bool {
        self.out_size != self.hidden
    }

    pub fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.dirs * self.out_size
        }
    }

    pub fn output_shape(&self) -> Vec<usize> {
        let width = self.dirs * self.out_size;
        if self.batch_first {
            vec![self.batch, self.seq_len, width]
        } else {
            vec![self.seq_len, self.batch, width]
        }
    }

    /// Shape of h0 / h_n.
    pub fn state_shape(&self) -> Vec<usize> {
        vec![self.layers * self.dirs, self.batch, self.out_size]
    }

    /// Checks that every buffer of a pass (and, `training`, an f64 reserve) has an element
    /// and byte count that fits in usize, so that the sizes computed from these dims cannot
    /// overflow.
    pub fn check_sizes(&self, training: bool) -> Result<()> {
        let rows = size::elements("input rows", &[self.seq_len, self.batch])?;
        // Saturating: a saturated count fails the checked product below. A training slot keeps
        // a step's gates, h, c and the projection's h (what `bptt_cpu::saved_len` counts), and
        // each layer its input.
        let widest = (self.gate_width())
            .saturating_add(self.hidden.saturating_mul(3))
            .saturating_add(self.out_size)
            .max(self.dirs.saturating_mul(self.out_size))
            .max(self.input_size);
        let slots = match training {
            true => self.layers.saturating_mul(self.dirs.saturating_add(1)),
            false => 2,
        };
        // The states h0/c0 and h_n/c_n, whatever the sequence length.
        let width = self.hidden.max(self.out_size);
        size::elements(
            "the states",
            &[self.layers, self.dirs, self.batch, width, 8],
        )?;
        let per_slot = size::elements("a pass's buffers", &[rows, widest, slots])?;
        size::bytes("a pass's buffers", per_slot, if training { 8 } else { 4 })?;
        Ok(())
    }

    /// Shape of the LSTM's c0 / c_n.
    pub fn cell_shape(&self) -> Vec<usize> {
        vec![self.layers * self.dirs, self.batch, self.hidden]
    }
}

/// Time index of step `s` for a row of length `len` (pack_padded_sequence semantics: the
/// reverse direction starts at the row's last valid step), or None once the row has ended.
/// Mirrors `step_time` in kernels/common.cuh.
pub(crate) fn step_time(s: usize, len: usize, reverse: bool) -> Option<usize> {
    (s < len).then(|| if reverse { len - 1 - s } else { s })
}

/// Checks lengths (each in 1..=T, one per batch row); none means every row has length T.
pub fn check_lengths(
    lengths: Option<&[usize]>,
    batch: usize,
    seq_len: usize,
) -> Result<Vec<usize>> {
    let Some(lengths) = lengths else {
        return Ok(vec![seq_len; batch]);
    };
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("[{batch}]"),
            &[lengths.len()],
        ));
    }
    for (b, &len) in lengths.iter().enumerate() {
        if len == 0 || len > seq_len {
            return Err(Error::Lengths(format!(
                "lengths[{b}] = {len} is outside 1..={seq_len} (the sequence length)"
            )));
        }
    }
    Ok(lengths.to_vec())
}

/// One checked forward call: everything both paths need.
pub(crate) struct Call<'a> {
    pub cell: Cell,
    pub dims: Dims,
    /// L·D layer-directions in PyTorch order (layer-major, forward before reverse), already
    /// checked against `dims`.
    pub weights: &'a [DirectionWeights],
    pub input: &'a Tensor,
    pub h0: Option<&'a Tensor>,
    /// The LSTM's initial cell state.
    pub c0: Option<&'a Tensor>,
    pub lengths: &'a [usize],
}

/// What a forward pass returns.
pub struct Outputs {
    pub output: Tensor,
    pub h_n: Tensor,
    /// The LSTM's final cell state.
    pub c_n: Option<Tensor>,
}

/// What a training-mode forward keeps for `backward` (like cuDNN's reserve space): each
/// layer's input and, per layer-direction, step and row, the gate activations and the states.
/// The CPU keeps them in the layer's `Precision` (the backward computes in the precision of
/// the reserve it is given); CUDA keeps them in f32 on the device, whatever the storage dtype.
pub struct Reserve {
    cell: Cell,
    dims: Dims,
    lengths: Vec<usize>,
    saved: Saved,
}

enum Saved {
    Cpu32(bptt_cpu::Saved<f32>),
    Cpu64(bptt_cpu::Saved<f64>),
    Cuda(train_cuda::Saved),
}

impl Reserve {
    /// Elements kept (f32 on CUDA; on the CPU in the precision it was made in, see `bytes`),
    /// known before the call from the shape alone.
    pub fn len(&self) -> usize {
        match self.saved {
            Saved::Cpu32(_) | Saved::Cpu64(_) => bptt_cpu::saved_len(self.cell, &self.dims),
            Saved::Cuda(_) => train_cuda::Saved::len_for(self.cell, &self.dims),
        }
    }

    /// Bytes kept: `len` times 4, or 8 for a CPU reserve made in `Precision::F64`.
    pub fn bytes(&self) -> usize {
        let each = match self.saved {
            Saved::Cpu64(_) => 8,
            Saved::Cpu32(_) | Saved::Cuda(_) => 4,
        };
        each * self.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The LSTM's cell state after every step of layer-direction `slot` (layer · D + direction),
    /// shaped like one direction's output: [T, B, H], or [B, T, H] when batch_first; f32, on
    /// `device` (the one that made the reserve). Steps past a row's length are unspecified.
    /// None for the other cells.
    pub fn cell_states(&self, device: &Device, slot: usize) -> Result<Option<Tensor>> {
        let d = &self.dims;
        if self.cell != Cell::Lstm || slot >= d.layers * d.dirs {
            return Ok(None);
        }
        let shape = match d.batch_first {
            true => [d.batch, d.seq_len, d.hidden],
            false => [d.seq_len, d.batch, d.hidden],
        };
        let t = match (&self.saved, device) {
            (Saved::Cpu32(s), _) => Tensor::from_vec(s.cell_states(slot).to_vec(), &shape)?,
            (Saved::Cpu64(s), _) => {
                let v = s.cell_states(slot).iter().map(|&x| x as f32).collect();
                Tensor::from_vec(v, &shape)?
            }
            (Saved::Cuda(s), Device::Cuda(dev)) => {
                let Some(c) = s.cell_states(slot, d.rows(), d.hidden, dev.stream())? else {
                    return Ok(None);
                };
                Tensor::from_cuda_slice(c, &shape, dev)?
            }
            (Saved::Cuda(_), Device::Cpu) => {
                return Err(Error::Config(
                    "a CUDA reserve read with the CPU as its device".into(),
                ))
            }
        };
        Ok(Some(t))
    }
}

/// Bytes a training-mode forward of `dims` keeps on `device` in `precision` (what
/// `Reserve::bytes` counts).
pub(crate) fn reserve_bytes(
    device: &Device,
    precision: Precision,
    cell: Cell,
    dims: &Dims,
) -> usize {
    match device {
        Device::Cpu => precision.bytes() * bptt_cpu::saved_len(cell, dims),
        Device::Cuda(_) => 4 * train_cuda::Saved::len_for(cell, dims),
    }
}

/// Host bytes a pass of `dims` (checked by `Dims::check_sizes`) uses besides its inputs and
/// results: on the CPU one layer-direction's input projection and the layer output between
/// layers (forward) or the reserve (training, in `precision`); CUDA keeps its buffers on the
/// device.
pub(crate) fn host_work_bytes(
    device: &Device,
    precision: Precision,
    cell: Cell,
    dims: &Dims,
    training: bool,
) -> usize {
    match (device, training) {
        (Device::Cuda(_), _) => 0,
        (Device::Cpu, true) => reserve_bytes(device, precision, cell, dims),
        (Device::Cpu, false) => 4 * dims.rows() * (dims.gate_width() + dims.dirs * dims.out_size),
    }
}

/// The gradients of one layer-direction's parameters, in PyTorch's shapes.
pub struct DirectionGradients {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
    pub w_hr: Option<Tensor>,
}

impl DirectionGradients {
    /// The tensors in state_dict order (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr).
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        [Some(&self.w_ih), Some(&self.w_hh)]
            .into_iter()
            .chain([self.b_ih.as_ref(), self.b_hh.as_ref(), self.w_hr.as_ref()])
            .flatten()
    }
}

/// What `backward` returns: the gradients of the input, the initial states and every
/// parameter (L·D layer-directions in PyTorch order).
pub struct Gradients {
    pub input: Tensor,
    pub h0: Tensor,
    /// The LSTM's.
    pub c0: Option<Tensor>,
    pub params: Vec<DirectionGradients>,
}

impl Gradients {
    /// The parameters' gradients in state_dict order, as `nn::Grads::add` takes them.
    pub fn into_params(self) -> Vec<Tensor> {
        self.params
            .into_iter()
            .flat_map(|d| {
                [Some(d.w_ih), Some(d.w_hh), d.b_ih, d.b_hh, d.w_hr]
                    .into_iter()
                    .flatten()
            })
            .collect()
    }
}

/// The types the CPU trains in, read from and written to f32 host tensors.
trait Host: bptt_cpu::StepGemm {
    /// `t`'s values: borrowed when it already holds this type.
    fn values(t: &Tensor) -> Result<Cow<'_, [Self]>>;
    fn tensor(values: Vec<Self>, shape: &[usize]) -> Result<Tensor>;
}

impl Host for f32 {
    fn values(t: &Tensor) -> Result<Cow<'_, [f32]>> {
        match t.host_slice::<f32>() {
            Ok(v) => Ok(Cow::Borrowed(v)),
            Err(_) => t.to_vec_f32().map(Cow::Owned),
        }
    }

    fn tensor(values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(values, shape)
    }
}

impl Host for f64 {
    fn values(t: &Tensor) -> Result<Cow<'_, [f64]>> {
        t.to_vec_f64().map(Cow::Owned)
    }

    fn tensor(values: Vec<f64>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f64(&values, shape)
    }
}

/// One layer-direction's weights in `T` (biases and projection when present).
struct Weights<'a, T: Clone + 'static> {
    w_ih: Cow<'a, [T]>,
    w_hh: Cow<'a, [T]>,
    b_ih: Option<Cow<'a, [T]>>,
    b_hh: Option<Cow<'a, [T]>>,
    w_hr: Option<Cow<'a, [T]>>,
}

fn weights_in<T: Host>(weights: &[DirectionWeights]) -> Result<Vec<Weights<'_, T>>> {
    fn opt<T: Host>(t: &Option<Tensor>) -> Result<Option<Cow<'_, [T]>>> {
        t.as_ref().map(T::values).transpose()
    }
    weights
        .iter()
        .map(|w| {
            Ok(Weights {
                w_ih: T::values(&w.w_ih)?,
                w_hh: T::values(&w.w_hh)?,
                b_ih: opt(&w.b_ih)?,
                b_hh: opt(&w.b_hh)?,
                w_hr: opt(&w.w_hr)?,
            })
        })
        .collect()
}

/// The BPTT network over `weights`.
fn net<'a, T: Host>(
    cell: Cell,
    dims: Dims,
    weights: &'a [Weights<'_, T>],
    lengths: &'a [usize],
) -> bptt_cpu::Net<'a, T> {
    let params = weights
        .iter()
        .map(|w| bptt_cpu::Params {
            w_ih: &w.w_ih,
            w_hh: &w.w_hh,
            b_ih: w.b_ih.as_deref(),
            b_hh: w.b_hh.as_deref(),
            w_hr: w.w_hr.as_deref(),
        })
        .collect();
    bptt_cpu::Net {
        cell,
        dims,
        lengths,
        params,
        threads: None,
    }
}

/// The CPU's training-mode forward in `T`.
fn cpu_forward_train<T: Host>(call: &Call<'_>) -> Result<(Outputs, bptt_cpu::Saved<T>)> {
    let weights = weights_in::<T>(call.weights)?;
    let net = net(call.cell, call.dims, &weights, call.lengths);
    let x = T::values(call.input)?;
    let h0 = call.h0.map(T::values).transpose()?;
    let c0 = call.c0.map(T::values).transpose()?;
    let (f, saved) = net.forward_train(&x, h0.as_deref(), c0.as_deref());
    let dims = call.dims;
    let outputs = Outputs {
        output: T::tensor(f.output, &dims.output_shape())?,
        h_n: T::tensor(f.h_n, &dims.state_shape())?,
        c_n: (call.cell == Cell::Lstm)
            .then(|| T::tensor(f.c_n, &dims.cell_shape()))
            .transpose()?,
    };
    Ok((outputs, saved))
}

/// The CPU's backward in `T` (the reserve's).
fn cpu_backward<T: Host>(
    reserve: &Reserve,
    saved: &bptt_cpu::Saved<T>,
    weights: &[DirectionWeights],
    grad_output: &Tensor,
    grad_h_n: Option<&Tensor>,
    grad_c_n: Option<&Tensor>,
) -> Result<Gradients> {
    let dims = reserve.dims;
    let converted = weights_in::<T>(weights)?;
    let net = net(reserve.cell, dims, &converted, &reserve.lengths);
    let g = net.backward(
        saved,
        &T::values(grad_output)?,
        grad_h_n.map(T::values).transpose()?.as_deref(),
        grad_c_n.map(T::values).transpose()?.as_deref(),
    );
    let input_shape = match dims.batch_first {
        true => vec![dims.batch, dims.seq_len, dims.input_size],
        false => vec![dims.seq_len, dims.batch, dims.input_size],
    };
    let params = g
        .params
        .into_iter()
        .zip(weights)
        .map(|(p, w)| {
            let like = |v: Vec<T>, t: &Tensor| T::tensor(v, t.shape());
            Ok(DirectionGradients {
                w_ih: like(p.w_ih, &w.w_ih)?,
                w_hh: like(p.w_hh, &w.w_hh)?,
                b_ih: w.b_ih.as_ref().map(|t| like(p.b_ih, t)).transpose()?,
                b_hh: w.b_hh.as_ref().map(|t| like(p.b_hh, t)).transpose()?,
                w_hr: w.w_hr.as_ref().map(|t| like(p.w_hr, t)).transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Gradients {
        input: T::tensor(g.input, &input_shape)?,
        h0: T::tensor(g.h0, &dims.state_shape())?,
        c0: (reserve.cell == Cell::Lstm)
            .then(|| T::tensor(g.c0, &dims.cell_shape()))
            .transpose()?,
        params,
    })
}

/// The forward pass in training mode: the same results as `forward`, and the `Reserve` that
/// `backward` needs. The CPU computes in `precision`.
pub(crate) fn forward_train(
    device: &Device,
    precision: Precision,
    call: &Call<'_>,
) -> Result<(Outputs, Reserve)> {
    call.input.check_on(device, "input")?;
    for (name, t) in [("h0", call.h0), ("c0", call.c0)] {
        if let Some(t) = t {
            t.check_on(device, name)?;
        }
    }
    if let Device::Cuda(dev) = device {
        let (outputs, saved) = train_cuda::forward_train(dev, call)?;
        let reserve = Reserve {
            cell: call.cell,
            dims: call.dims,
            lengths: call.lengths.to_vec(),
            saved: Saved::Cuda(saved),
        };
        return Ok((outputs, reserve));
    }
    let (outputs, saved) = match precision {
        Precision::F32 => {
            let (outputs, saved) = cpu_forward_train::<f32>(call)?;
            (outputs, Saved::Cpu32(saved))
        }
        Precision::F64 => {
            let (outputs, saved) = cpu_forward_train::<f64>(call)?;
            (outputs, Saved::Cpu64(saved))
        }
    };
    let reserve = Reserve {
        cell: call.cell,
        dims: call.dims,
        lengths: call.lengths.to_vec(),
        saved,
    };
    Ok((outputs, reserve))
}

/// The gradients of Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n (+ Σ c_n ⊙ grad_c_n) for the
/// training-mode forward that made `reserve`, with the same weights. On CUDA, `Algo::Naive`
/// runs the naive backward, any other the fused one; the CPU computes in the reserve's
/// precision.
pub(crate) fn backward(
    device: &Device,
    algo: Algo,
    weights: &[DirectionWeights],
    reserve: &Reserve,
    grad_output: &Tensor,
    grad_h_n: Option<&Tensor>,
    grad_c_n: Option<&Tensor>,
) -> Result<Gradients> {
    let dims = reserve.dims;
    let lstm = reserve.cell == Cell::Lstm;
    // The reserve must come from a module of these weights' sizes.
    let gw = dims.gate_width();
    let fits = weights.len() == dims.layers * dims.dirs
        && weights.iter().enumerate().all(|(slot, w)| {
            w.w_ih.shape() == [gw, dims.layer_input(slot / dims.dirs)]
                && w.w_hh.shape() == [gw, dims.out_size]
                && w.w_hr.as_ref().map(|t| t.shape().to_vec())
                    == dims.projected().then(|| vec![dims.out_size, dims.hidden])
        });
    if !fits {
        return Err(Error::Config(format!(
            "the reserve comes from a different {} (a forward_train of another module)",
            reserve.cell.name()
        )));
    }
    let check = |t: &Tensor, name: &str, shape: Vec<usize>| -> Result<()> {
        match t.shape() == shape.as_slice() {
            true => Ok(()),
            false => Err(Error::shape(name, format!("{shape:?}"), t.shape())),
        }
    };
    check(grad_output, "grad_output", dims.output_shape())?;
    if let Some(g) = grad_h_n {
        check(g, "grad_h_n", dims.state_shape())?;
    }
    match (grad_c_n, lstm) {
        (Some(g), true) => check(g, "grad_c_n", dims.cell_shape())?,
        (Some(_), false) => {
            return Err(Error::Config(format!(
                "grad_c_n applies to LSTM modules, not to {}",
                reserve.cell.name()
            )))
        }
        (None, _) => {}
    }
    for (name, t) in [
        ("grad_output", Some(grad_output)),
        ("grad_h_n", grad_h_n),
        ("grad_c_n", grad_c_n),
    ] {
        if let Some(t) = t {
            t.check_on(device, name)?;
        }
    }
    match (&reserve.saved, device) {
        (Saved::Cpu32(saved), Device::Cpu) => {
            cpu_backward(reserve, saved, weights, grad_output, grad_h_n, grad_c_n)
        }
        (Saved::Cpu64(saved), Device::Cpu) => {
            cpu_backward(reserve, saved, weights, grad_output, grad_h_n, grad_c_n)
        }
        (Saved::Cuda(saved), Device::Cuda(dev)) => {
            if let Some(w) = weights.iter().find(|w| w.w_ih.dtype() != saved.dtype()) {
                return Err(Error::Config(format!(
                    "the reserve was made in {}, the weights are {}",
                    saved.dtype().name(),
                    w.w_ih.dtype().name()
                )));
            }
            let upstream = [("grad_output", Some(grad_output)), ("grad_h_n", grad_h_n)];
            for (name, t) in upstream.into_iter().chain([("grad_c_n", grad_c_n)]) {
                match t {
                    Some(t) if t.dtype() != saved.dtype() => {
                        return Err(Error::DType {
                            tensor: name.into(),
                            expected: saved.dtype().name().into(),
                            got: t.dtype().name().into(),
                        })
                    }
                    _ => {}
                }
            }
            train_cuda::backward(
                dev,
                algo == Algo::Naive,
                reserve.cell,
                dims,
                &reserve.lengths,
                saved,
                weights,
                grad_output,
                grad_h_n,
                grad_c_n,
            )
        }
        _ => Err(Error::Config(
            "the reserve was made on another device than the module's".into(),
        )),
    }
}

/// Runs the forward pass on `device`. `plans` caches the CUDA graphs of the layer the weights
/// belong to.
pub(crate) fn forward(
    device: &Device,
    algo: Algo,
    call: &Call<'_>,
    plans: &PlanCache,
) -> Result<Outputs> {
    call.input.check_on(device, "input")?;
    for (name, t) in [("h0", call.h0), ("c0", call.c0)] {
        if let Some(t) = t {
            t.check_on(device, name)?;
        }
    }
    match device {
        Device::Cpu => cpu::forward(call),
        Device::Cuda(dev) => cuda::forward(dev, algo, call, plans),
    }
}

/// As `forward`, also returning the LSTM's cell state after every step of the last layer's
/// forward direction, shaped like one direction's output (see `Reserve::cell_states`). The CPU
/// records it as it goes; CUDA runs the training-mode forward, whose reserve holds it.
#[cfg(feature = "candle")]
pub(crate) fn forward_with_cells(
    device: &Device,
    algo: Algo,
    call: &Call<'_>,
    plans: &PlanCache,
) -> Result<(Outputs, Option<Tensor>)> {
    if call.cell != Cell::Lstm {
        return Ok((forward(device, algo, call, plans)?, None));
    }
    if let Device::Cpu = device {
        call.input.check_on(device, "input")?;
        return cpu::forward_keeping(call, true);
    }
    let (outputs, reserve) = forward_train(device, Precision::default(), call)?;
    let slot = (call.dims.layers - 1) * call.dims.dirs;
    Ok((outputs, reserve.cell_states(device, slot)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_direction_starts_at_each_rows_last_valid_step() {
        let forward: Vec<_> = (0..5).map(|s| step_time(s, 3, false)).collect();
        assert_eq!(forward, [Some(0), Some(1), Some(2), None, None]);
        let reverse: Vec<_> = (0..5).map(|s| step_time(s, 3, true)).collect();
        assert_eq!(reverse, [Some(2), Some(1), Some(0), None, None]);
    }

    #[test]
    fn lengths_must_be_one_per_row_within_one_to_t() {
        assert_eq!(check_lengths(None, 2, 4).unwrap(), [4, 4]);
        assert_eq!(check_lengths(Some(&[1, 4]), 2, 4).unwrap(), [1, 4]);
        assert!(check_lengths(Some(&[0, 4]), 2, 4).is_err());
        assert!(check_lengths(Some(&[5, 4]), 2, 4).is_err());
        assert!(check_lengths(Some(&[4]), 2, 4).is_err());
    }

    #[test]
    fn activations_match_their_definitions() {
        assert!(Activation::Relu.apply(f32::NAN).is_nan());
        assert_eq!(Activation::Relu.apply(-2.0), 0.0);
        assert_eq!(Activation::Relu.apply(3.0), 3.0);
        for x in [-20.0f32, -3.0, -0.5, 0.0, 0.7, 4.0, 20.0] {
            let sigmoid = 1.0 / (1.0 + (-x as f64).exp());
            assert!(
                (Activation::Sigmoid.apply(x) as f64 - sigmoid).abs() < 5e-7,
                "{x}"
            );
        }
    }
}
