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
use crate::ops::attention::{self, check_key_lengths, Attended, Keys, Params, Score};
use crate::size;
use crate::tensor::Tensor;
use crate::DType;
use std::sync::OnceLock;

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
        self.cuda = OnceLock::new();
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
    cuda: OnceLock<attention::OnDevice>,
    /// Dq when the parameters fix it (additive, general).
    query_size: Option<usize>,
    /// Dk when the parameters fix it (additive, general).
    key_size: Option<usize>,
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
        Attention {
            score,
            params,
            device: Device::Cpu,
            dtype: DType::F32,
            algo: Algo::Auto,
            cuda: OnceLock::new(),
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
        self.on_device()?;
        Ok(self)
    }

    /// The CUDA state (kernels, the parameters' addresses, scratch), made when first asked
    /// for; None on the CPU.
    fn on_device(&self) -> Result<Option<&attention::OnDevice>> {
        let Device::Cuda(dev) = &self.device else {
            return Ok(None);
        };
        if self.cuda.get().is_none() {
            // Two threads may both build it; either result is the same.
            let _ = self
                .cuda
                .set(attention::OnDevice::new(dev, self.dtype, &self.params)?);
        }
        Ok(self.cuda.get())
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

    pub fn score(&self) -> Score {
        self.score
    }

    /// The width keys and queries are projected to: A (additive), Dq (general); None for dot
    /// scores, which use the keys as they are.
    pub fn projection_width(&self) -> Option<usize> {
        match self.score {
            Score::Additive => self.params.v.as_ref().map(|v| v.shape()[1]),
            Score::General => self.query_size,
            Score::Dot { .. } => None,
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
        let lengths = self.check_source(keys, values, lengths)?;
        let values = values.unwrap_or(keys);
        let keys = keys.to(&self.device, self.dtype)?;
        let values = values.to(&self.device, self.dtype)?;
        match self.on_device()? {
            None => Ok(Keys {
                projected: attention::project_keys_cpu(self.score, &self.params, &keys)?,
                values,
                lengths,
                device: None,
            }),
            Some(cuda) => {
                let projected = cuda.project_keys(self.score, &keys)?;
                let device = cuda.keys_on_device(&projected, &values, &lengths)?;
                Ok(Keys {
                    projected,
                    values,
                    lengths,
                    device: Some(device),
                })
            }
        }
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
        // The forward's checks: shapes, lengths, the query's rank.
        let lengths = self.check_source(keys, values, lengths)?;
        let &[batch, len, dk] = keys.shape() else {
            unreachable!("checked by check_source")
        };
        let (queries, single, dq) = self.check_query(batch, dk, query)?;
        let dv = values.map_or(dk, |v| v.shape()[2]);
        let context = if single {
            vec![batch, dv]
        } else {
            vec![batch, queries, dv]
        };
        if grad_context.shape() != context {
            let want = format!("{context:?}");
            return Err(Error::shape("grad_context", want, grad_context.shape()));
        }
        let sizes = attention::Sizes {
            batch,
            queries,
            keys: len,
            dq,
            dk,
            dv,
        };
        if let Some(cuda) = self.on_device()? {
            // Tensors already on the device in the layer's dtype are read in place.
            let staged = |t: &Tensor| -> Result<Option<Tensor>> {
                let in_place = t.dtype() == self.dtype && t.check_on(&self.device, "").is_ok();
                (!in_place)
                    .then(|| t.to(&self.device, self.dtype))
                    .transpose()
            };
            let (q, k, g) = (staged(query)?, staged(keys)?, staged(grad_context)?);
            let v = values.map(staged).transpose()?.flatten();
            let call = attention::BackwardCall {
                score: self.score,
                query: q.as_ref().unwrap_or(query),
                keys: k.as_ref().unwrap_or(keys),
                values: values.map(|t| v.as_ref().unwrap_or(t)),
                grad_context: g.as_ref().unwrap_or(grad_context),
                lengths: &lengths,
                sizes,
            };
            return cuda.backward(self.algo, &call, &self.params);
        }
        let param = |t: Option<&Tensor>| t.map_or(Ok(Vec::new()), Tensor::to_vec_f64);
        let p = &self.params;
        let p64 = attention::Params64 {
            w_q: param(p.w_q.as_ref())?,
            b_q: param(p.b_q.as_ref())?,
            w_k: param(p.w_k.as_ref())?,
            b_k: param(p.b_k.as_ref())?,
            v: param(p.v.as_ref())?,
        };
        let values64 = values.map(Tensor::to_vec_f64).transpose()?;
        let g = attention::backward_cpu(
            self.score,
            &p64,
            &sizes,
            &query.to_vec_f64()?,
            &keys.to_vec_f64()?,
            values64.as_deref(),
            &lengths,
            &grad_context.to_vec_f64()?,
        )?;
        let grads = [
            g.params.w_q,
            g.params.b_q,
            g.params.w_k,
            g.params.b_k,
            g.params.v,
        ];
        let mut params = Vec::new();
        for ((name, t), grad) in p.named().into_iter().zip(grads) {
            if let Some(t) = t {
                params.push((name.to_string(), Tensor::from_f64(&grad, t.shape())?));
            }
        }
        Ok(attention::AttentionGradients {
            query: Tensor::from_f64(&g.query, query.shape())?,
            keys: Tensor::from_f64(&g.keys, keys.shape())?,
            values: match (g.values, values) {
                (Some(v), Some(t)) => Some(Tensor::from_f64(&v, t.shape())?),
                _ => None,
            },
            params,
        })
    }

    /// Checks a source as `keys` takes it; returns its key lengths (all L when absent).
    fn check_source(
        &self,
        keys: &Tensor,
        values: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<Vec<usize>> {
        let &[b, l, dk] = keys.shape() else {
            return Err(Error::shape("keys", "[B, L, Dk]", keys.shape()));
        };
        if b == 0 || l == 0 || dk == 0 || self.key_size.is_some_and(|k| k != dk) {
            let want = self
                .key_size
                .map_or("[B, L, Dk]".into(), |k| format!("[B, L, {k}]"));
            let want = format!("{want} with B, L, Dk ≥ 1");
            return Err(Error::shape("keys", want, keys.shape()));
        }
        if let Some(v) = values {
            let ok = matches!(*v.shape(), [vb, vl, dv] if (vb, vl) == (b, l) && dv > 0);
            if !ok {
                let want = format!("[{b}, {l}, Dv] with Dv ≥ 1");
                return Err(Error::shape("values", want, v.shape()));
            }
        }
        check_key_lengths(lengths, b, l)
    }

    /// Checks a query ([B, Dq] or [B, Tq, Dq]) for `b` rows, Dq the layer's query size or else
    /// `width` (dot scores: the keys'); returns (Tq, whether it has rank 2, Dq).
    fn check_query(&self, b: usize, width: usize, query: &Tensor) -> Result<(usize, bool, usize)> {
        let dq = self.query_size.unwrap_or(width);
        match *query.shape() {
            [qb, qd] if qb == b && qd == dq => Ok((1, true, dq)),
            [qb, t, qd] if qb == b && qd == dq && t > 0 => Ok((t, false, dq)),
            _ => {
                let want = format!("[{b}, {dq}] or [{b}, Tq, {dq}]");
                Err(Error::shape("query", want, query.shape()))
            }
        }
    }

    /// Attends `query` ([B, Dq], or [B, Tq, Dq] for many queries per row) over `keys`; the
    /// context (and the weights, when asked for) come back with the query's rank.
    pub fn attend(&self, keys: &Keys, query: &Tensor, want_weights: bool) -> Result<Attended> {
        let (b, width) = (keys.batch(), keys.projected.shape()[2]);
        // Keys made by another layer carry its projection width.
        let own = self.projection_width();
        if own.is_some_and(|k| k != width) {
            let want = format!("keys projected to width {}", own.unwrap_or(0));
            return Err(Error::shape("keys", want, keys.projected.shape()));
        }
        let (tq, single, dq) = self.check_query(b, width, query)?;
        // Results of B·Tq·Dv and B·Tq·L elements: counts that must not overflow.
        size::elements("context", &[b, tq, keys.value_size()])?;
        size::elements("weights", &[b, tq, keys.len()])?;
        let out = match self.on_device()? {
            None => {
                let query3 = query.to(&Device::Cpu, DType::F32)?.reshape(&[b, tq, dq])?;
                attention::attend_cpu(self.score, &self.params, keys, &query3, want_weights)?
            }
            Some(cuda) => {
                // A query already on the device in the layer's dtype is read in place.
                let in_place =
                    query.dtype() == self.dtype && query.check_on(&self.device, "query").is_ok();
                let moved = (!in_place)
                    .then(|| query.to(&self.device, self.dtype))
                    .transpose()?;
                let query = moved.as_ref().unwrap_or(query);
                cuda.attend(self.algo, self.score, keys, query, tq, want_weights)?
            }
        };
        if !single {
            return Ok(out);
        }
        Ok(Attended {
            context: out.context.reshape(&[b, keys.value_size()])?,
            weights: out
                .weights
                .map(|w| w.reshape(&[b, keys.len()]))
                .transpose()?,
        })
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
