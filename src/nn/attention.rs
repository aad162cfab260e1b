//! `nn::Attention`: soft attention with additive, general or dot scores, parameters in PyTorch's
//! naming (`query_proj`, `key_proj`, `score`), key-length masks, one or many queries per row.
//! On CUDA the parameters, keys and values live on the device in the storage dtype (f32, f16 or
//! bf16) and the fused kernel (or the naive chain, `Algo::Naive`) attends and backpropagates;
//! the CPU computes in f32 (its backward in f64).

use crate::device::Device;
use crate::error::{quoted, Error, Result};
use crate::io::TensorFile;
use crate::nn::init;
use crate::nn::Module;
use crate::ops::algo::Algo;
use crate::ops::attention::{self, Attended, Keys, Params, Score};
use crate::size;
use crate::tensor::Tensor;
use crate::DType;

/// Parameters in state_dict order, that of the gradients' `params`.
impl Module for Attention {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        self.params
            .named()
            .into_iter()
            .filter_map(|(name, t)| t.map(|t| (name.to_string(), t)))
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        // The CUDA state holds the parameters' addresses, and a caller may replace a tensor.
        self.state.reset();
        let p = &mut self.params;
        [
            ("query_proj.weight", p.w_q.as_mut()),
            ("query_proj.bias", p.b_q.as_mut()),
            ("key_proj.weight", p.w_k.as_mut()),
            ("key_proj.bias", p.b_k.as_mut()),
            ("score.weight", p.v.as_mut()),
        ]
        .into_iter()
        .filter_map(|(name, t)| t.map(|t| (name.to_string(), t)))
        .collect()
    }
}

/// nn-style constructor arguments of an `Attention` layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    pub score: Score,
    /// Dq: the query's width.
    pub query_size: usize,
    /// Dk: the keys' width.
    pub key_size: usize,
    /// A: the hidden width of additive scores (unused by the others).
    pub attention_size: usize,
    /// Whether additive scores' projections have biases.
    pub bias: bool,
}

pub struct Attention {
    score: Score,
    params: Params,
    device: Device,
    dtype: DType,
    algo: Algo,
    /// Kernels, parameter addresses and scratch on CUDA, made on first use (and again after
    /// `parameters_mut`, which may replace a parameter); never on the CPU.
    state: attention::State,
    /// Dq when the parameters fix it (additive, general).
    query_size: Option<usize>,
    /// Dk when the parameters fix it (additive, general).
    key_size: Option<usize>,
    /// The parameters' shapes as built, in state_dict order.
    shapes: Vec<Vec<usize>>,
}

/// A dimension of a parameter's expected shape: one fixed by another parameter, or any
/// positive size (named for messages).
#[derive(Clone, Copy)]
enum Dim {
    Is(usize),
    Any(&'static str),
}

/// The float tensor `name` of shape `dims`, every dimension at least 1, non-finite values
/// refused.
fn param(file: &TensorFile, name: &str, dims: &[Dim]) -> Result<Tensor> {
    let t = file.float(name)?;
    let shape = t.shape();
    let fits = |(&s, d): (&usize, &Dim)| match *d {
        Dim::Is(n) => s == n,
        Dim::Any(_) => s > 0,
    };
    if shape.len() != dims.len() || !shape.iter().zip(dims).all(fits) {
        let names: Vec<String> = dims
            .iter()
            .map(|d| match d {
                Dim::Is(n) => n.to_string(),
                Dim::Any(s) => s.to_string(),
            })
            .collect();
        let free: Vec<&str> = dims
            .iter()
            .filter_map(|d| match d {
                Dim::Any(s) => Some(*s),
                Dim::Is(_) => None,
            })
            .collect();
        let mut want = format!("[{}]", names.join(", "));
        if !free.is_empty() {
            want += &format!(" with {} ≥ 1", free.join(", "));
        }
        return Err(Error::shape(name, want, shape));
    }
    Error::check_finite(name, t.host_slice::<f32>()?, shape)?;
    Ok(t)
}

impl Attention {
    /// The kind comes from the file's `kind` metadata, else from its tensors: `score.weight` →
    /// additive, `key_proj.weight` alone → general, none → dot (with metadata `scale`, default 1).
    /// Parameters are stored on `device` in `dtype` (f32 on the CPU).
    pub fn from_state_dict(file: &TensorFile, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_file(file)?.placed(device, dtype)
    }

    /// A layer of `config` with PyTorch's default initialisation (each nn.Linear's weight and
    /// bias uniform in ±1/√fan_in), drawn from `seed`, on `device` in `dtype` (f32 on the CPU).
    pub fn random(
        config: AttentionConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let AttentionConfig {
            score,
            query_size: dq,
            key_size: dk,
            attention_size: a,
            bias,
        } = config;
        let sizes = match score {
            Score::Additive => [dq, dk, a],
            Score::General => [dq, dk, 1],
            Score::Dot { .. } => [dq, dk, (dq == dk) as usize],
        };
        if sizes.contains(&0) {
            return Err(Error::Config(format!(
                "{} attention needs positive sizes{} (got query_size {dq}, key_size {dk}, \
                 attention_size {a})",
                score.name(),
                if matches!(score, Score::Dot { .. }) {
                    " and query_size = key_size"
                } else {
                    ""
                }
            )));
        }
        let linear = |rows: usize, cols: usize, seed: u64| -> Result<Tensor> {
            let bound = 1.0 / (cols as f32).sqrt();
            let count = size::elements("attention weight", &[rows, cols])?;
            Tensor::from_vec(init::uniform(count, bound, seed)?, &[rows, cols])
        };
        let bias_of = |rows: usize, fan_in: usize, seed: u64| -> Result<Option<Tensor>> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            bias.then(|| Tensor::from_vec(init::uniform(rows, bound, seed)?, &[rows]))
                .transpose()
        };
        let params = match score {
            Score::Additive => Params {
                w_q: Some(linear(a, dq, seed)?),
                b_q: bias_of(a, dq, seed ^ 1)?,
                w_k: Some(linear(a, dk, seed ^ 2)?),
                b_k: bias_of(a, dk, seed ^ 3)?,
                v: Some(linear(1, a, seed ^ 4)?),
            },
            Score::General => Params {
                w_k: Some(linear(dq, dk, seed ^ 2)?),
                ..Params::none()
            },
            Score::Dot { .. } => Params::none(),
        };
        Self::on_host(score, params).placed(device, dtype)
    }

    /// A layer of host f32 parameters, its sizes read from them.
    fn on_host(score: Score, params: Params) -> Self {
        let cols = |t: &Option<Tensor>| t.as_ref().map(|t| t.shape()[1]);
        let (query_size, key_size) = match score {
            Score::Additive => (cols(&params.w_q), cols(&params.w_k)),
            Score::General => (params.w_k.as_ref().map(|t| t.shape()[0]), cols(&params.w_k)),
            Score::Dot { .. } => (None, None),
        };
        let shapes = params
            .named()
            .into_iter()
            .filter_map(|(_, t)| t.map(|t| t.shape().to_vec()))
            .collect();
        Attention {
            shapes,
            score,
            params,
            device: Device::Cpu,
            dtype: DType::F32,
            algo: Algo::Auto,
            state: attention::State::default(),
            query_size,
            key_size,
        }
    }

    /// This layer with its parameters on `device` in `dtype`.
    fn placed(mut self, device: &Device, dtype: DType) -> Result<Self> {
        if !device.is_cuda() && dtype != DType::F32 {
            return Err(Error::Config(format!(
                "the CPU computes attention in f32, not {}",
                dtype.name()
            )));
        }
        let p = &mut self.params;
        for t in [&mut p.w_q, &mut p.b_q, &mut p.w_k, &mut p.b_k, &mut p.v]
            .into_iter()
            .flatten()
        {
            *t = t.to(device, dtype)?;
        }
        self.device = device.clone();
        self.dtype = dtype;
        self.layer().prepare()?;
        Ok(self)
    }

    /// Which CUDA path `attend` takes (`Auto` is the fused kernel); the CPU has one.
    pub fn set_algo(&mut self, algo: Algo) {
        self.algo = algo;
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The layer with host f32 parameters, checked.
    fn from_file(file: &TensorFile) -> Result<Self> {
        let kind = match file.metadata("kind") {
            Some(k) => k.to_string(),
            None if file.contains("score.weight") => "additive".into(),
            None if file.contains("key_proj.weight") => "general".into(),
            None => "dot".into(),
        };
        let allowed: &[&str] = match kind.as_str() {
            "additive" => &[
                "query_proj.weight",
                "query_proj.bias",
                "key_proj.weight",
                "key_proj.bias",
                "score.weight",
            ],
            "general" => &["key_proj.weight"],
            "dot" => &[],
            other => {
                return Err(Error::Config(format!(
                    "metadata kind = {} (expected additive, general or dot)",
                    quoted(other)
                )))
            }
        };
        if let Some(stray) = file.names().find(|n| !allowed.contains(n)) {
            return Err(Error::Config(format!(
                "{}: unexpected tensor {} for {kind} attention",
                file.path().display(),
                quoted(stray)
            )));
        }
        let opt = |name: &str, rows: Dim| -> Result<Option<Tensor>> {
            file.contains(name)
                .then(|| param(file, name, &[rows]))
                .transpose()
        };
        let (score, params) =
            match kind.as_str() {
                "additive" => {
                    let v = param(file, "score.weight", &[Dim::Is(1), Dim::Any("A")])?;
                    let a = Dim::Is(v.shape()[1]);
                    let params = Params {
                        w_q: Some(param(file, "query_proj.weight", &[a, Dim::Any("Dq")])?),
                        b_q: opt("query_proj.bias", a)?,
                        w_k: Some(param(file, "key_proj.weight", &[a, Dim::Any("Dk")])?),
                        b_k: opt("key_proj.bias", a)?,
                        v: Some(v),
                    };
                    (Score::Additive, params)
                }
                "general" => {
                    let w_k = param(file, "key_proj.weight", &[Dim::Any("Dq"), Dim::Any("Dk")])?;
                    let params = Params {
                        w_k: Some(w_k),
                        ..Params::none()
                    };
                    (Score::General, params)
                }
                _ => {
                    let scale =
                        match file.metadata("scale") {
                            Some(s) => s.parse::<f32>().ok().filter(|s| s.is_finite()).ok_or_else(
                                || {
                                    Error::Config(format!(
                                        "metadata scale = {} is not a finite number",
                                        quoted(s)
                                    ))
                                },
                            )?,
                            None => 1.0,
                        };
                    (Score::Dot { scale }, Params::none())
                }
            };
        Ok(Self::on_host(score, params))
    }

    /// Copies `values` (one per parameter, in state_dict order, shaped as built, on this
    /// layer's device in its dtype) into the parameters in place: their buffers stay, and with
    /// them the CUDA state that holds their addresses.
    #[cfg(feature = "candle")]
    pub(crate) fn assign_parameters(&mut self, values: &[&Tensor]) -> Result<()> {
        let p = &mut self.params;
        let params: Vec<&mut Tensor> = [&mut p.w_q, &mut p.b_q, &mut p.w_k, &mut p.b_k, &mut p.v]
            .into_iter()
            .filter_map(Option::as_mut)
            .collect();
        if params.len() != values.len() {
            return Err(Error::Config(format!(
                "{} values for the {} parameters of the attention layer",
                values.len(),
                params.len()
            )));
        }
        for (param, value) in params.into_iter().zip(values) {
            param.assign(value)?;
        }
        Ok(())
    }

    pub fn score(&self) -> Score {
        self.score
    }

    /// The width keys and queries are projected to: A (additive), Dq (general); None for dot
    /// scores, which use the keys as they are.
    pub fn projection_width(&self) -> Option<usize> {
        self.layer().projection_width()
    }

    /// The parameters as built (see `nn::module::check_parameters`).
    /// Runs at every decoding step, so it allocates nothing.
    fn check_parameters(&self) -> Result<()> {
        let named = self.params.named().into_iter();
        let params = named.filter_map(|(name, t)| t.map(|t| (name, t)));
        super::module::check_parameters(params, &self.shapes, &self.device, self.dtype)
    }

    /// The ops' view of this layer.
    fn layer(&self) -> attention::Layer<'_> {
        attention::Layer {
            score: self.score,
            params: &self.params,
            device: &self.device,
            dtype: self.dtype,
            algo: self.algo,
            state: &self.state,
            query_size: self.query_size,
            key_size: self.key_size,
        }
    }

    /// The key side, once per source: keys [B, L, Dk], values [B, L, Dv] (the keys when
    /// absent), key lengths in 1..=L (all L when absent). Tensors on another device or in
    /// another dtype are copied to the layer's.
    pub fn keys(
        &self,
        keys: &Tensor,
        values: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<Keys> {
        self.check_parameters()?;
        attention::keys(&self.layer(), keys, values, lengths)
    }

    /// The gradients of Σ context ⊙ grad_context for attending `query` over `keys` (with
    /// `values` and `lengths` as `keys()` takes them): the query's, the keys', the values' and
    /// every parameter's. Scores and weights are recomputed, so no forward state is kept. On
    /// the CPU in f64 (f32 results); on CUDA with the layer's algorithm, the gradients on the
    /// device in the layer's dtype (tensors elsewhere are copied there first).
    pub fn backward(
        &self,
        keys: &Tensor,
        values: Option<&Tensor>,
        lengths: Option<&[usize]>,
        query: &Tensor,
        grad_context: &Tensor,
    ) -> Result<attention::AttentionGradients> {
        self.check_parameters()?;
        attention::backward(&self.layer(), keys, values, lengths, query, grad_context)
    }

    /// Attends `query` ([B, Dq], or [B, Tq, Dq] for many queries per row) over `keys`; the
    /// context (and the weights, when asked for) come back with the query's rank.
    pub fn attend(&self, keys: &Keys, query: &Tensor, want_weights: bool) -> Result<Attended> {
        self.check_parameters()?;
        attention::attend(&self.layer(), keys, query, want_weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(score: Score, dq: usize, dk: usize, a: usize) -> AttentionConfig {
        AttentionConfig {
            score,
            query_size: dq,
            key_size: dk,
            attention_size: a,
            bias: true,
        }
    }

    #[test]
    fn random_layers_have_pytorchs_names_shapes_and_bounds() {
        let cpu = Device::Cpu;
        let mut layer =
            Attention::random(config(Score::Additive, 6, 4, 5), &cpu, DType::F32, 9).unwrap();
        let params = layer.parameters_mut();
        let shapes: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .collect();
        let want = [
            ("query_proj.weight", vec![5, 6]),
            ("query_proj.bias", vec![5]),
            ("key_proj.weight", vec![5, 4]),
            ("key_proj.bias", vec![5]),
            ("score.weight", vec![1, 5]),
        ];
        assert_eq!(shapes, want.map(|(n, s)| (n.to_string(), s)));
        // nn.Linear's default: U(±1/√fan_in), and not all alike.
        for ((name, t), fan_in) in params.iter().zip([6f32, 6.0, 4.0, 4.0, 5.0]) {
            let v = t.host_slice::<f32>().unwrap();
            let bound = 1.0 / fan_in.sqrt();
            assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
            assert!(v.iter().any(|x| *x != v[0]), "{name}");
        }
        // The same seed, the same layer; it attends like one read from a file.
        let again =
            Attention::random(config(Score::Additive, 6, 4, 5), &cpu, DType::F32, 9).unwrap();
        assert_eq!(
            again.params.w_k.as_ref().unwrap().to_vec_f32().unwrap(),
            layer.params.w_k.as_ref().unwrap().to_vec_f32().unwrap()
        );
        let keys = Tensor::from_vec(vec![0.5f32; 2 * 3 * 4], &[2, 3, 4]).unwrap();
        let keys = again.keys(&keys, None, Some(&[3, 1])).unwrap();
        let query = Tensor::from_vec(vec![0.25f32; 2 * 6], &[2, 6]).unwrap();
        let out = again.attend(&keys, &query, true).unwrap();
        assert_eq!(out.context.shape(), [2, 4]);
    }

    #[test]
    fn sizes_a_kind_cannot_use_are_errors() {
        let cpu = Device::Cpu;
        for bad in [
            config(Score::Additive, 6, 4, 0),
            config(Score::General, 0, 4, 5),
            config(Score::Dot { scale: 1.0 }, 3, 4, 0),
        ] {
            assert!(
                Attention::random(bad, &cpu, DType::F32, 1).is_err(),
                "{bad:?}"
            );
        }
        let half = Attention::random(config(Score::General, 3, 4, 0), &cpu, DType::F16, 1);
        assert!(half.is_err());
        let dot = Attention::random(
            config(Score::Dot { scale: 0.5 }, 4, 4, 0),
            &cpu,
            DType::F32,
            1,
        );
        assert!(dot.unwrap().parameters_mut().is_empty());
    }
}
