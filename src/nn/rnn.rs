//! `nn::Rnn`: an Elman RNN with nn.RNN's options, parameters and semantics.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorFile;
use crate::ops::rnn::{self, check_lengths, Algo, Dims, DirectionWeights, Nonlinearity, PlanCache};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};

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

    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
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

    /// The input width of layer `layer`.
    pub fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.directions() * self.hidden_size
        }
    }

    fn validate(&self) -> Result<()> {
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::Config(format!(
                "input_size, hidden_size and num_layers must be positive (got {}, {}, {})",
                self.input_size, self.hidden_size, self.num_layers
            )));
        }
        Ok(())
    }
}

/// The result of a forward pass.
pub struct RnnOutput {
    /// [T, B, D·H], or [B, T, D·H] when batch_first; zero past each row's length.
    pub output: Tensor,
    /// [L·D, B, H]: each row's state at its last valid step.
    pub h_n: Tensor,
}

/// An Elman RNN on one device, parameters in one storage dtype.
pub struct Rnn {
    config: RnnConfig,
    device: Device,
    dtype: DType,
    algo: Algo,
    weights: Vec<DirectionWeights>,
    /// CUDA graphs of recent forward shapes, replayed instead of relaunching every step.
    plans: PlanCache,
}

impl Rnn {
    /// Parameters drawn like PyTorch's default init, U(-1/√H, 1/√H), from `seed`.
    pub fn random(config: RnnConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 1.0 / (config.hidden_size as f32).sqrt();
        let mut draw = |shape: &[usize]| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
            Tensor::from_vec(v, shape)
        };
        let h = config.hidden_size;
        let mut host = Vec::new();
        for layer in 0..config.num_layers {
            for _ in 0..config.directions() {
                let w_ih = draw(&[h, config.layer_input(layer)])?;
                let w_hh = draw(&[h, h])?;
                let (b_ih, b_hh) = if config.bias {
                    (Some(draw(&[h])?), Some(draw(&[h])?))
                } else {
                    (None, None)
                };
                host.push(DirectionWeights {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                });
            }
        }
        Self::copied(config, &host, device, dtype)
    }

    /// Parameters from a PyTorch state_dict (`weight_ih_l{k}[_reverse]`, `weight_hh_l{k}`,
    /// `bias_ih_l{k}`, `bias_hh_l{k}`), checked against `config`; non-finite weights are an
    /// error.
    pub fn from_state_dict(
        config: RnnConfig,
        file: &TensorFile,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        let h = config.hidden_size;
        let mut host = Vec::new();
        for layer in 0..config.num_layers {
            for dir in 0..config.directions() {
                let sfx = RnnConfig::suffix(layer, dir);
                let get = |name: String, shape: &[usize]| -> Result<Tensor> {
                    let t = file.float(&name)?;
                    if t.shape() != shape {
                        return Err(Error::shape(name, format!("{shape:?}"), t.shape()));
                    }
                    if t.host_slice::<f32>()?.iter().any(|v| !v.is_finite()) {
                        return Err(Error::Config(format!("{name}: contains NaN or infinity")));
                    }
                    Ok(t)
                };
                let w_ih = get(format!("weight_ih_{sfx}"), &[h, config.layer_input(layer)])?;
                let w_hh = get(format!("weight_hh_{sfx}"), &[h, h])?;
                let (b_ih, b_hh) = if config.bias {
                    (
                        Some(get(format!("bias_ih_{sfx}"), &[h])?),
                        Some(get(format!("bias_hh_{sfx}"), &[h])?),
                    )
                } else {
                    (None, None)
                };
                host.push(DirectionWeights {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                });
            }
        }
        Self::copied(config, &host, device, dtype)
    }

    /// Copies `weights` (on any device) to `device` in `dtype`.
    fn copied(
        config: RnnConfig,
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
                })
            })
            .collect::<Result<_>>()?;
        Ok(Rnn {
            config,
            device: device.clone(),
            dtype,
            algo: Algo::Auto,
            weights,
            plans: PlanCache::default(),
        })
    }

    /// A copy of this layer on `device` with parameters stored in `dtype`.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self::copied(self.config, &self.weights, device, dtype)?.with_algo(self.algo))
    }

    /// Chooses the CUDA implementation (ignored on the CPU).
    pub fn with_algo(mut self, algo: Algo) -> Self {
        self.algo = algo;
        self
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How many recent forward shapes replay a captured CUDA graph (0 on the CPU).
    pub fn captured_graphs(&self) -> usize {
        self.plans.captured_graphs()
    }

    /// Runs the sequence. `input` is [T, B, I] ([B, T, I] when batch_first) on this layer's
    /// device in its dtype; `h0` is [L·D, B, H] (zeros when absent); `lengths` gives each
    /// row's valid length in 1..=T (as pack_padded_sequence with enforce_sorted=False).
    pub fn forward(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<RnnOutput> {
        let dims = self.dims(input)?;
        let expect_dtype = |t: &Tensor, name: &str| -> Result<()> {
            if t.dtype() != self.dtype {
                return Err(Error::DType {
                    tensor: name.into(),
                    expected: self.dtype.name().into(),
                    got: t.dtype().name().into(),
                });
            }
            Ok(())
        };
        expect_dtype(input, "input")?;
        if let Some(h0) = h0 {
            expect_dtype(h0, "h0")?;
            let want = dims.state_shape();
            if h0.shape() != want.as_slice() {
                return Err(Error::shape("h0", format!("{want:?}"), h0.shape()));
            }
        }
        let lengths = check_lengths(lengths, dims.batch, dims.seq_len)?;
        let call = rnn::Call {
            act: self.config.nonlinearity,
            dims,
            weights: &self.weights,
            input,
            h0,
            lengths: &lengths,
        };
        let (output, h_n) = rnn::forward(&self.device, self.algo, &call, &self.plans)?;
        Ok(RnnOutput { output, h_n })
    }

    fn dims(&self, input: &Tensor) -> Result<Dims> {
        let c = &self.config;
        let expected = if c.batch_first {
            format!("[B, T, {}] (batch_first)", c.input_size)
        } else {
            format!("[T, B, {}]", c.input_size)
        };
        let &[d0, d1, i] = input.shape() else {
            return Err(Error::shape("input", expected, input.shape()));
        };
        let (seq_len, batch) = if c.batch_first { (d1, d0) } else { (d0, d1) };
        if i != c.input_size || seq_len == 0 || batch == 0 {
            return Err(Error::shape("input", expected, input.shape()));
        }
        Ok(Dims {
            seq_len,
            batch,
            input_size: c.input_size,
            hidden: c.hidden_size,
            layers: c.num_layers,
            dirs: c.directions(),
            batch_first: c.batch_first,
        })
    }
}
