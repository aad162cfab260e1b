//! What nn.RNN, nn.LSTM and nn.GRU share: a stack of layer-directions with parameters in
//! PyTorch's naming and shapes, the input checks, and dispatch to the CPU or CUDA path.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorFile;
use crate::nn::module::check_parameters;
use crate::nn::Module;
use crate::ops::algo::Algo;
use crate::ops::precision::Precision;
use crate::ops::recurrent::{
    self, check_lengths, Call, Cell, Dims, DirectionWeights, Gradients, Outputs, PlanCache, Reserve,
};
use crate::size;
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};

/// Sizes and options of a recurrent module (the union of nn.RNN's, nn.LSTM's and nn.GRU's);
/// `infer` reads them from a state_dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub cell: Cell,
    pub input_size: usize,
    pub hidden_size: usize,
    /// LSTM projection size; 0 for none.
    pub proj_size: usize,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
}

impl Spec {
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// The size of h: the projection size, else the hidden size.
    pub fn out_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    pub fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.directions() * self.out_size()
        }
    }

    /// PyTorch's parameter name suffix of layer `layer`, direction `dir`: "l0", "l0_reverse".
    pub fn suffix(layer: usize, dir: usize) -> String {
        if dir == 0 {
            format!("l{layer}")
        } else {
            format!("l{layer}_reverse")
        }
    }

    /// Every parameter name and shape of the module, in state_dict order, made as they are
    /// asked for (a module can have many layers).
    pub fn parameters(&self) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
        let (gh, h, o) = (
            self.cell.gates() * self.hidden_size,
            self.hidden_size,
            self.out_size(),
        );
        let slots =
            (0..self.num_layers).flat_map(move |l| (0..self.directions()).map(move |d| (l, d)));
        slots.flat_map(move |(layer, dir)| {
            let sfx = Spec::suffix(layer, dir);
            let mut params = vec![
                (
                    format!("weight_ih_{sfx}"),
                    vec![gh, self.layer_input(layer)],
                ),
                (format!("weight_hh_{sfx}"), vec![gh, o]),
            ];
            if self.bias {
                params.push((format!("bias_ih_{sfx}"), vec![gh]));
                params.push((format!("bias_hh_{sfx}"), vec![gh]));
            }
            if self.proj_size > 0 {
                params.push((format!("weight_hr_{sfx}"), vec![o, h]));
            }
            params
        })
    }

    /// How many parameter tensors the module has: up to five per layer-direction.
    fn tensor_count(&self) -> usize {
        let per_slot = 2 + 2 * usize::from(self.bias) + usize::from(self.proj_size > 0);
        self.num_layers * self.directions() * per_slot
    }

    /// Host bytes a pass of `seq_len` steps of `batch` rows takes on `device` besides its
    /// inputs and results (`training`: a forward that keeps what the backward needs), once
    /// every size of the pass is known to be countable.
    pub fn host_work_bytes(
        &self,
        device: &Device,
        seq_len: usize,
        batch: usize,
        training: bool,
    ) -> Result<usize> {
        let dims = self.dims(seq_len, batch);
        dims.check_sizes(training)?;
        // The command line trains in the default precision.
        Ok(recurrent::host_work_bytes(
            device,
            Precision::default(),
            self.cell,
            &dims,
            training,
        ))
    }

    /// The sizes of a pass over `seq_len` steps of `batch` rows.
    pub(crate) fn dims(&self, seq_len: usize, batch: usize) -> Dims {
        Dims {
            seq_len,
            batch,
            input_size: self.input_size,
            hidden: self.hidden_size,
            out_size: self.out_size(),
            gates: self.cell.gates(),
            layers: self.num_layers,
            dirs: self.directions(),
            batch_first: self.batch_first,
        }
    }

    /// The sizes of a pass over an input of `shape` ([T, B, I], or [B, T, I] when
    /// batch_first), checked: I is the input size, T and B are positive, every size countable.
    pub(crate) fn input_dims(&self, shape: &[usize]) -> Result<Dims> {
        let expected = if self.batch_first {
            format!("[B, T, {}] (batch_first)", self.input_size)
        } else {
            format!("[T, B, {}]", self.input_size)
        };
        let &[d0, d1, i] = shape else {
            return Err(Error::shape("input", expected, shape));
        };
        let (seq_len, batch) = if self.batch_first { (d1, d0) } else { (d0, d1) };
        if i != self.input_size || seq_len == 0 || batch == 0 {
            return Err(Error::shape("input", expected, shape));
        }
        let dims = self.dims(seq_len, batch);
        dims.check_sizes(false)?;
        Ok(dims)
    }

    /// Checks the sizes: positive, a projection only on an LSTM and smaller than H, and every
    /// parameter count and byte count within usize.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::Config(format!(
                "input_size, hidden_size and num_layers must be positive (got {}, {}, {})",
                self.input_size, self.hidden_size, self.num_layers
            )));
        }
        if self.proj_size > 0 && (self.cell != Cell::Lstm || self.proj_size >= self.hidden_size) {
            return Err(Error::Config(format!(
                "proj_size {} needs an LSTM with hidden_size > proj_size (hidden_size {})",
                self.proj_size, self.hidden_size
            )));
        }
        // Every parameter of a layer-direction, all of them together and their bytes must be
        // countable (saturated sums fail the checked products).
        let widest = self
            .input_size
            .max(self.directions().saturating_mul(self.out_size()));
        let per_slot = widest
            .saturating_add(self.out_size())
            .saturating_add(2)
            .saturating_add(self.out_size());
        let too_large = |_| Error::TooLarge {
            what: format!("the parameters of {self}"),
            needed: "more bytes".into(),
            limit: "a count can hold (2^64)".into(),
        };
        let slots =
            size::elements("", &[self.num_layers, self.directions(), 5]).map_err(too_large)?;
        let all = [self.cell.gates(), self.hidden_size, per_slot, slots, 4];
        size::elements("", &all).map_err(too_large)?;
        Ok(())
    }
}

/// Parameters in state_dict order, the order of `named_gradients`.
impl Module for Recurrent {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let names = self.spec.parameters().map(|(name, _)| name);
        let tensors = self.weights.iter().flat_map(|w| {
            [Some(&w.w_ih), Some(&w.w_hh)]
                .into_iter()
                .chain([w.b_ih.as_ref(), w.b_hh.as_ref(), w.w_hr.as_ref()])
                .flatten()
        });
        names.zip(tensors).collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        // Captured CUDA graphs hold the weights' addresses, and a caller may replace a tensor.
        self.plans = PlanCache::default();
        let names = self.spec.parameters().map(|(name, _)| name);
        let tensors = self.weights.iter_mut().flat_map(|w| {
            [Some(&mut w.w_ih), Some(&mut w.w_hh)]
                .into_iter()
                .chain([w.b_ih.as_mut(), w.b_hh.as_mut(), w.w_hr.as_mut()])
                .flatten()
        });
        names.zip(tensors).collect()
    }
}

/// PyTorch's repr of the module: `LSTM(proj_size=4, input_size=6, hidden_size=9, ...)`.
impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cell {
            Cell::Rnn(nl) => write!(f, "RNN(nonlinearity={}, ", nl.name())?,
            Cell::Lstm if self.proj_size > 0 => write!(f, "LSTM(proj_size={}, ", self.proj_size)?,
            other => write!(f, "{}(", other.name())?,
        }
        write!(
            f,
            "input_size={}, hidden_size={}, num_layers={}, bias={}, batch_first={}, bidirectional={})",
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.batch_first,
            self.bidirectional
        )
    }
}

/// A recurrent module of any kind (what `Spec::infer` found) on one device, parameters in one
/// storage dtype: the core of `Rnn`, `Lstm` and `Gru`.
pub struct Recurrent {
    pub spec: Spec,
    device: Device,
    dtype: DType,
    algo: Algo,
    precision: Precision,
    weights: Vec<DirectionWeights>,
    /// CUDA graphs of recent forward shapes, replayed instead of relaunching every step.
    plans: PlanCache,
}

impl Recurrent {
    /// Parameters drawn like PyTorch's default init, U(-1/√H, 1/√H), from `seed`.
    pub fn random(spec: Spec, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 1.0 / (spec.hidden_size as f32).sqrt();
        let mut tensors = Self::tensor_list(&spec)?;
        for (name, shape) in spec.parameters() {
            let mut v = size::zeros::<f32>(&name, size::elements(&name, &shape)?)?;
            v.fill_with(|| rng.random_range(-bound..=bound));
            tensors.push((name, Tensor::from_vec(v, &shape)?));
        }
        Self::assemble(spec, tensors, device, dtype)
    }

    /// Parameters from a PyTorch state_dict, checked against `spec`; non-finite weights are an
    /// error.
    pub fn from_state_dict(
        spec: Spec,
        file: &TensorFile,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        spec.validate()?;
        let mut tensors = Self::tensor_list(&spec)?;
        for (name, shape) in spec.parameters() {
            let t = file.float(&name)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::shape(name, format!("{shape:?}"), t.shape()));
            }
            Error::check_finite(&name, t.host_slice::<f32>()?, t.shape())?;
            tensors.push((name, t));
        }
        Self::assemble(spec, tensors, device, dtype)
    }

    /// An empty list with room for every parameter of `spec`, or an error when there is none.
    fn tensor_list(spec: &Spec) -> Result<Vec<(String, Tensor)>> {
        let mut list = Vec::new();
        list.try_reserve_exact(spec.tensor_count())
            .map_err(|_| Error::TooLarge {
                what: format!("{} layers", spec.num_layers),
                needed: format!("{} parameter tensors", spec.tensor_count()),
                limit: "what this process can allocate".into(),
            })?;
        Ok(list)
    }

    /// Groups named host tensors (in `Spec::parameters` order) by layer-direction and copies them
    /// to `device` in `dtype`.
    fn assemble(
        spec: Spec,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut tensors = tensors.into_iter().map(|(_, t)| t);
        let mut weights = Vec::new();
        for _ in 0..spec.num_layers * spec.directions() {
            let mut next = || tensors.next().expect("Spec::parameters lists every tensor");
            let (w_ih, w_hh) = (next(), next());
            let (b_ih, b_hh) = match spec.bias {
                true => (Some(next()), Some(next())),
                false => (None, None),
            };
            let w_hr = (spec.proj_size > 0).then(next);
            weights.push(DirectionWeights {
                w_ih,
                w_hh,
                b_ih,
                b_hh,
                w_hr,
            });
        }
        Self::copied(spec, &weights, device, dtype)
    }

    /// Copies `weights` (on any device) to `device` in `dtype`.
    fn copied(
        spec: Spec,
        weights: &[DirectionWeights],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if !device.is_cuda() && dtype != DType::F32 {
            return Err(Error::Config(format!(
                "the CPU path computes in f32 only (asked for {dtype})"
            )));
        }
        let to = |t: &Tensor| t.to(device, dtype);
        let weights = weights
            .iter()
            .map(|w| {
                Ok(DirectionWeights {
                    w_ih: to(&w.w_ih)?,
                    w_hh: to(&w.w_hh)?,
                    b_ih: w.b_ih.as_ref().map(to).transpose()?,
                    b_hh: w.b_hh.as_ref().map(to).transpose()?,
                    w_hr: w.w_hr.as_ref().map(to).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Recurrent {
            spec,
            device: device.clone(),
            dtype,
            algo: Algo::Auto,
            precision: Precision::default(),
            weights,
            plans: PlanCache::default(),
        })
    }

    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        let mut copy = Self::copied(self.spec, &self.weights, device, dtype)?;
        copy.algo = self.algo;
        copy.precision = self.precision;
        Ok(copy)
    }

    /// Copies `values` (one per parameter, in state_dict order, each shaped as built, on this
    /// module's device in its dtype) into the parameters in place: their buffers stay, and with
    /// them the CUDA graphs captured over them.
    #[cfg(feature = "candle")]
    pub(crate) fn assign_parameters(&mut self, values: &[&Tensor]) -> Result<()> {
        let mut params = self.weights.iter_mut().flat_map(|w| {
            [Some(&mut w.w_ih), Some(&mut w.w_hh)]
                .into_iter()
                .chain([w.b_ih.as_mut(), w.b_hh.as_mut(), w.w_hr.as_mut()])
                .flatten()
        });
        let mut count = 0;
        for (value, (name, _)) in values.iter().zip(self.spec.parameters()) {
            let Some(param) = params.next() else { break };
            param
                .assign(value)
                .map_err(|e| Error::Config(format!("{}: {e}", crate::error::quoted(&name))))?;
            count += 1;
        }
        if count != values.len() || params.next().is_some() {
            return Err(Error::Config(format!(
                "{} values for the parameters of {}",
                values.len(),
                self.spec
            )));
        }
        Ok(())
    }

    pub fn set_algo(&mut self, algo: Algo) {
        self.algo = algo;
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn capture_status(&self) -> (usize, Vec<String>) {
        self.plans.capture_status()
    }

    pub fn dispatch_notes(&self) -> Vec<String> {
        self.plans.dispatch_notes()
    }

    /// Checks the call's tensors against the module and runs it.
    pub fn forward(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<Outputs> {
        self.checked(input, h0, c0, lengths, |call| {
            recurrent::forward(&self.device, self.algo, call, &self.plans)
        })
    }

    /// As `forward`, with the LSTM's cell state after every step of the last layer's forward
    /// direction (None for the other cells; see `ops::recurrent::forward_with_cells`).
    #[cfg(feature = "candle")]
    pub(crate) fn forward_with_cells(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<(Outputs, Option<Tensor>)> {
        self.checked(input, h0, c0, lengths, |call| {
            recurrent::forward_with_cells(&self.device, self.algo, call, &self.plans)
        })
    }

    /// As `forward`, keeping what `backward` needs.
    pub fn forward_train(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<(Outputs, Reserve)> {
        self.checked(input, h0, c0, lengths, |call| {
            call.dims.check_sizes(true)?;
            recurrent::forward_train(&self.device, self.precision, call)
        })
    }

    /// The gradients for the training-mode forward that made `reserve` (see
    /// `ops::recurrent::backward`).
    pub fn backward(
        &self,
        reserve: &Reserve,
        grad_output: &Tensor,
        grad_h_n: Option<&Tensor>,
        grad_c_n: Option<&Tensor>,
    ) -> Result<Gradients> {
        self.check_weights()?;
        recurrent::backward(
            &self.device,
            self.algo,
            &self.weights,
            reserve,
            grad_output,
            grad_h_n,
            grad_c_n,
        )
    }

    /// Every gradient of `grads` with its parameter's PyTorch name.
    pub fn named_gradients<'a>(&self, grads: &'a Gradients) -> Vec<(String, &'a Tensor)> {
        let names = self.spec.parameters().map(|(name, _)| name);
        names
            .zip(grads.params.iter().flat_map(|g| g.tensors()))
            .collect()
    }

    /// Checks the call's tensors against the module and hands `run` the checked call.
    fn checked<T>(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
        lengths: Option<&[usize]>,
        run: impl FnOnce(&Call<'_>) -> Result<T>,
    ) -> Result<T> {
        self.check_weights()?;
        let dims = self.dims(input)?;
        self.check_tensor(input, "input", None)?;
        self.check_tensor_opt(h0, "h0", &dims.state_shape())?;
        self.check_tensor_opt(c0, "c0", &dims.cell_shape())?;
        let lengths = check_lengths(lengths, dims.batch, dims.seq_len)?;
        run(&Call {
            cell: self.spec.cell,
            dims,
            weights: &self.weights,
            input,
            h0,
            c0,
            lengths: &lengths,
        })
    }

    /// The weights as the spec sizes them, on the layer's device in its dtype (see
    /// `check_parameters`).
    fn check_weights(&self) -> Result<()> {
        let shapes: Vec<Vec<usize>> = self.spec.parameters().map(|(_, s)| s).collect();
        check_parameters(self.parameters(), &shapes, &self.device, self.dtype)
    }

    /// See the layers' `reserve_bytes` (usize::MAX when the count overflows).
    pub fn reserve_bytes(&self, seq_len: usize, batch: usize) -> usize {
        let dims = self.dims_for(seq_len, batch);
        match dims.check_sizes(true) {
            Ok(()) => recurrent::reserve_bytes(&self.device, self.precision, self.spec.cell, &dims),
            Err(_) => usize::MAX,
        }
    }

    fn dims_for(&self, seq_len: usize, batch: usize) -> Dims {
        self.spec.dims(seq_len, batch)
    }

    fn check_tensor_opt(&self, t: Option<&Tensor>, name: &str, shape: &[usize]) -> Result<()> {
        t.map_or(Ok(()), |t| self.check_tensor(t, name, Some(shape)))
    }

    fn check_tensor(&self, t: &Tensor, name: &str, shape: Option<&[usize]>) -> Result<()> {
        if t.dtype() != self.dtype {
            return Err(Error::DType {
                tensor: name.into(),
                expected: self.dtype.name().into(),
                got: t.dtype().name().into(),
            });
        }
        match shape {
            Some(shape) if t.shape() != shape => {
                Err(Error::shape(name, format!("{shape:?}"), t.shape()))
            }
            _ => Ok(()),
        }
    }

    fn dims(&self, input: &Tensor) -> Result<Dims> {
        self.spec.input_dims(input.shape())
    }
}
