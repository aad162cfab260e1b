//! `nn::Attention`: soft attention with additive, general or dot scores, parameters in PyTorch's
//! naming (`query_proj`, `key_proj`, `score`), key-length masks, one or many queries per row.
//! On CUDA the parameters, keys and values live on the device in the storage dtype (f32, f16 or
//! bf16) and the fused kernel (or the naive chain, `Algo::Naive`) attends and backpropagates;
//! the CPU computes in f32 (its backward in f64).

use crate::device::Device;
use crate::error::{quoted, Error, Result};
use crate::io::TensorFile;
use crate::ops::attention::{self, check_key_lengths, Attended, Keys, Params, Score};
use crate::ops::recurrent::Algo;
use crate::size;
use crate::tensor::Tensor;
use crate::DType;

pub struct Attention {
    score: Score,
    params: Params,
    device: Device,
    dtype: DType,
    algo: Algo,
    /// Kernels, parameter addresses and scratch on CUDA; None on the CPU.
    cuda: Option<attention::OnDevice>,
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
        if !device.is_cuda() && dtype != DType::F32 {
            return Err(Error::Config(format!(
                "the CPU computes attention in f32, not {}",
                dtype.name()
            )));
        }
        let mut layer = Self::from_file(file)?;
        let to = |t: &mut Option<Tensor>| -> Result<()> {
            if let Some(x) = t {
                *x = x.to(device, dtype)?;
            }
            Ok(())
        };
        let p = &mut layer.params;
        for t in [&mut p.w_q, &mut p.b_q, &mut p.w_k, &mut p.b_k, &mut p.v] {
            to(t)?;
        }
        layer.device = device.clone();
        layer.dtype = dtype;
        if let Device::Cuda(dev) = device {
            layer.cuda = Some(attention::OnDevice::new(dev, dtype, &layer.params)?);
        }
        Ok(layer)
    }

    /// Every parameter with its PyTorch name, in state_dict order (that of the gradients'
    /// `params`), for an optimizer to update in place. CPU: on CUDA the layer keeps the
    /// parameters' addresses, which a replaced tensor would leave dangling.
    pub fn parameters_mut(&mut self) -> Result<Vec<(String, &mut Tensor)>> {
        if self.device.is_cuda() {
            return Err(Error::Config(
                "attention parameters are updated on the CPU so far (on CUDA the layer holds \
                 their addresses)"
                    .into(),
            ));
        }
        let p = &mut self.params;
        Ok([
            ("query_proj.weight", p.w_q.as_mut()),
            ("query_proj.bias", p.b_q.as_mut()),
            ("key_proj.weight", p.w_k.as_mut()),
            ("key_proj.bias", p.b_k.as_mut()),
            ("score.weight", p.v.as_mut()),
        ]
        .into_iter()
        .filter_map(|(name, t)| t.map(|t| (name.to_string(), t)))
        .collect())
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
        match kind.as_str() {
            "additive" => {
                let v = param(file, "score.weight", &[Dim::Is(1), Dim::Any("A")])?;
                let a = Dim::Is(v.shape()[1]);
                let w_q = param(file, "query_proj.weight", &[a, Dim::Any("Dq")])?;
                let w_k = param(file, "key_proj.weight", &[a, Dim::Any("Dk")])?;
                Ok(Attention {
                    device: Device::Cpu,
                    dtype: DType::F32,
                    algo: Algo::Auto,
                    cuda: None,
                    score: Score::Additive,
                    query_size: Some(w_q.shape()[1]),
                    key_size: Some(w_k.shape()[1]),
                    params: Params {
                        b_q: opt("query_proj.bias", a)?,
                        b_k: opt("key_proj.bias", a)?,
                        w_q: Some(w_q),
                        w_k: Some(w_k),
                        v: Some(v),
                    },
                })
            }
            "general" => {
                let w_k = param(file, "key_proj.weight", &[Dim::Any("Dq"), Dim::Any("Dk")])?;
                Ok(Attention {
                    device: Device::Cpu,
                    dtype: DType::F32,
                    algo: Algo::Auto,
                    cuda: None,
                    score: Score::General,
                    query_size: Some(w_k.shape()[0]),
                    key_size: Some(w_k.shape()[1]),
                    params: Params {
                        w_q: None,
                        b_q: None,
                        w_k: Some(w_k),
                        b_k: None,
                        v: None,
                    },
                })
            }
            _ => {
                let scale = match file.metadata("scale") {
                    Some(s) => {
                        s.parse::<f32>()
                            .ok()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| {
                                Error::Config(format!(
                                    "metadata scale = {} is not a finite number",
                                    quoted(s)
                                ))
                            })?
                    }
                    None => 1.0,
                };
                Ok(Attention {
                    device: Device::Cpu,
                    dtype: DType::F32,
                    algo: Algo::Auto,
                    cuda: None,
                    score: Score::Dot { scale },
                    query_size: None,
                    key_size: None,
                    params: Params {
                        w_q: None,
                        b_q: None,
                        w_k: None,
                        b_k: None,
                        v: None,
                    },
                })
            }
        }
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
        let keys = attention::copy_to(&self.device, keys, self.dtype)?;
        let values = attention::copy_to(&self.device, values, self.dtype)?;
        match &self.cuda {
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
        if let Some(cuda) = &self.cuda {
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
        let out = match &self.cuda {
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
