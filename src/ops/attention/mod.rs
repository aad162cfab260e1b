//! Soft attention (Bahdanau's additive, Luong's general, scaled dot): scores over a source's
//! keys, a softmax masked to each row's key length, and the weighted sum of values.
//!
//! Shapes: keys [B, L, Dk], values [B, L, Dv] (the keys when absent), queries [B, Tq, Dq] (one
//! query per row is Tq = 1), context [B, Tq, Dv], weights [B, Tq, L]. The key side (W_k K + b_k,
//! or W K) is computed once per source (`Keys`) and reused by every decoding step.
//!
//! `nn::Attention` owns the parameters and hands its ops a `Layer` view; here the arguments
//! are checked and the work dispatched: `cpu.rs` and `backward_cpu.rs` (the reference; the
//! backward in f32, or f64 in its tests), `cuda.rs` and `cuda/backward.rs` (fused and naive launchers).

mod backward_cpu;
mod cpu;
mod cuda;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::algo::Algo;
use crate::size;
use crate::tensor::Tensor;
use std::sync::OnceLock;

/// How a query scores a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// e_j = v · tanh(W_q q + b_q + W_k k_j + b_k)
    Additive,
    /// e_j = q · (W k_j)
    General,
    /// e_j = scale · q · k_j
    Dot { scale: f32 },
}

impl Score {
    pub fn name(self) -> &'static str {
        match self {
            Score::Additive => "additive",
            Score::General => "general",
            Score::Dot { .. } => "dot",
        }
    }
}

/// Parameters in PyTorch's naming: query_proj (additive), key_proj, score (additive).
pub struct Params {
    pub w_q: Option<Tensor>,
    pub b_q: Option<Tensor>,
    pub w_k: Option<Tensor>,
    pub b_k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl Params {
    /// No parameters (dot scores).
    pub(crate) fn none() -> Self {
        Params {
            w_q: None,
            b_q: None,
            w_k: None,
            b_k: None,
            v: None,
        }
    }

    /// Each parameter with its PyTorch name, in state_dict order (None where the kind has none).
    pub(crate) fn named(&self) -> [(&'static str, Option<&Tensor>); 5] {
        [
            ("query_proj.weight", self.w_q.as_ref()),
            ("query_proj.bias", self.b_q.as_ref()),
            ("key_proj.weight", self.w_k.as_ref()),
            ("key_proj.bias", self.b_k.as_ref()),
            ("score.weight", self.v.as_ref()),
        ]
    }
}

/// A source's keys after the key-side projection, with its values and key lengths.
pub struct Keys {
    /// [B, L, K]: W_k k + b_k (additive, K = A), W k (general, K = Dq) or k (dot, K = Dk).
    pub(crate) projected: Tensor,
    /// [B, L, Dv]
    pub(crate) values: Tensor,
    pub(crate) lengths: Vec<usize>,
    /// The lengths and addresses the CUDA kernels read, when the keys are on a GPU.
    pub(crate) device: Option<cuda::KeysOnDevice>,
}

impl Keys {
    pub fn batch(&self) -> usize {
        self.projected.shape()[0]
    }

    pub fn len(&self) -> usize {
        self.projected.shape()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn value_size(&self) -> usize {
        self.values.shape()[2]
    }
}

/// What `attend` returns.
pub struct Attended {
    /// [B, Tq, Dv]
    pub context: Tensor,
    /// [B, Tq, L], zero past each row's key length; only when asked for.
    pub weights: Option<Tensor>,
}

/// Checks key lengths (each in 1..=L, one per row); none means every key counts.
fn check_key_lengths(lengths: Option<&[usize]>, batch: usize, len: usize) -> Result<Vec<usize>> {
    let Some(lengths) = lengths else {
        return Ok(vec![len; batch]);
    };
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("[{batch}]"),
            &[lengths.len()],
        ));
    }
    for (b, &l) in lengths.iter().enumerate() {
        if l == 0 || l > len {
            return Err(Error::Lengths(format!(
                "lengths[{b}] = {l} is outside 1..={len} (the number of keys)"
            )));
        }
    }
    Ok(lengths.to_vec())
}

use backward_cpu::{backward as backward_cpu, Params as CpuParams, Sizes};
use cpu::{attend as attend_cpu, project_keys as project_keys_cpu};

/// What `Attention::backward` returns: the gradients of Σ context ⊙ grad_context.
pub struct AttentionGradients {
    /// The query's shape.
    pub query: Tensor,
    /// [B, L, Dk]; with no separate values it includes their gradient.
    pub keys: Tensor,
    /// [B, L, Dv] when the values were given.
    pub values: Option<Tensor>,
    /// Every parameter's gradient with its PyTorch name, in state_dict order.
    pub params: Vec<(String, Tensor)>,
}
use cuda::{BackwardCall, OnDevice};

/// A layer's CUDA state (kernels, its parameters' addresses, scratch), made on first use and
/// dropped when its parameters may change; never made on the CPU.
#[derive(Default)]
pub(crate) struct State(OnceLock<OnDevice>);

impl State {
    pub(crate) fn reset(&mut self) {
        self.0 = OnceLock::new();
    }
}

/// An attention layer as its ops see it: kind, parameters, placement, CUDA path, the sizes its
/// parameters fix, and its CUDA state.
pub(crate) struct Layer<'a> {
    pub score: Score,
    pub params: &'a Params,
    pub device: &'a Device,
    pub dtype: DType,
    pub algo: Algo,
    pub state: &'a State,
    /// Dq when the parameters fix it (additive, general).
    pub query_size: Option<usize>,
    /// Dk when the parameters fix it (additive, general).
    pub key_size: Option<usize>,
}

impl<'a> Layer<'a> {
    /// The CUDA state, made when first asked for; None on the CPU.
    fn on_device(&self) -> Result<Option<&'a OnDevice>> {
        let Device::Cuda(dev) = self.device else {
            return Ok(None);
        };
        if self.state.0.get().is_none() {
            // Two threads may both build it; either result is the same.
            let _ = self
                .state
                .0
                .set(OnDevice::new(dev, self.dtype, self.params)?);
        }
        Ok(self.state.0.get())
    }

    /// Makes the CUDA state now (on a CUDA device), so that a layer that cannot run there
    /// fails when it is built.
    pub(crate) fn prepare(&self) -> Result<()> {
        self.on_device().map(|_| ())
    }

    /// The width keys and queries are projected to: A (additive), Dq (general); None for dot
    /// scores, which use the keys as they are.
    pub(crate) fn projection_width(&self) -> Option<usize> {
        match self.score {
            Score::Additive => self.params.v.as_ref().map(|v| v.shape()[1]),
            Score::General => self.query_size,
            Score::Dot { .. } => None,
        }
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
}

pub(crate) fn keys(
    layer: &Layer<'_>,
    keys: &Tensor,
    values: Option<&Tensor>,
    lengths: Option<&[usize]>,
) -> Result<Keys> {
    let lengths = layer.check_source(keys, values, lengths)?;
    let values = values.unwrap_or(keys);
    let keys = keys.to(layer.device, layer.dtype)?;
    let values = values.to(layer.device, layer.dtype)?;
    match layer.on_device()? {
        None => Ok(Keys {
            projected: project_keys_cpu(layer.score, layer.params, &keys)?,
            values,
            lengths,
            device: None,
        }),
        Some(cuda) => {
            let projected = cuda.project_keys(layer.score, &keys)?;
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

pub(crate) fn backward(
    layer: &Layer<'_>,
    keys: &Tensor,
    values: Option<&Tensor>,
    lengths: Option<&[usize]>,
    query: &Tensor,
    grad_context: &Tensor,
) -> Result<AttentionGradients> {
    // The forward's checks: shapes, lengths, the query's rank.
    let lengths = layer.check_source(keys, values, lengths)?;
    let &[batch, len, dk] = keys.shape() else {
        unreachable!("checked by check_source")
    };
    let (queries, single, dq) = layer.check_query(batch, dk, query)?;
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
    let sizes = Sizes {
        batch,
        queries,
        keys: len,
        dq,
        dk,
        dv,
    };
    if let Some(cuda) = layer.on_device()? {
        // Tensors already on the device in the layer's dtype are read in place.
        let staged = |t: &Tensor| -> Result<Option<Tensor>> {
            let in_place = t.dtype() == layer.dtype && t.check_on(layer.device, "").is_ok();
            (!in_place)
                .then(|| t.to(layer.device, layer.dtype))
                .transpose()
        };
        let (q, k, g) = (staged(query)?, staged(keys)?, staged(grad_context)?);
        let v = values.map(staged).transpose()?.flatten();
        let call = BackwardCall {
            score: layer.score,
            query: q.as_ref().unwrap_or(query),
            keys: k.as_ref().unwrap_or(keys),
            values: values.map(|t| v.as_ref().unwrap_or(t)),
            grad_context: g.as_ref().unwrap_or(grad_context),
            lengths: &lengths,
            sizes,
        };
        return cuda.backward(layer.algo, &call, layer.params);
    }
    let param = |t: Option<&Tensor>| t.map_or(Ok(Vec::new()), Tensor::to_vec_f32);
    let p = layer.params;
    let p32 = CpuParams {
        w_q: param(p.w_q.as_ref())?,
        b_q: param(p.b_q.as_ref())?,
        w_k: param(p.w_k.as_ref())?,
        b_k: param(p.b_k.as_ref())?,
        v: param(p.v.as_ref())?,
    };
    let values32 = values.map(Tensor::to_vec_f32).transpose()?;
    let g = backward_cpu(
        layer.score,
        &p32,
        &sizes,
        &query.to_vec_f32()?,
        &keys.to_vec_f32()?,
        values32.as_deref(),
        &lengths,
        &grad_context.to_vec_f32()?,
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
            params.push((name.to_string(), Tensor::from_vec(grad, t.shape())?));
        }
    }
    Ok(AttentionGradients {
        query: Tensor::from_vec(g.query, query.shape())?,
        keys: Tensor::from_vec(g.keys, keys.shape())?,
        values: match (g.values, values) {
            (Some(v), Some(t)) => Some(Tensor::from_vec(v, t.shape())?),
            _ => None,
        },
        params,
    })
}

pub(crate) fn attend(
    layer: &Layer<'_>,
    keys: &Keys,
    query: &Tensor,
    want_weights: bool,
) -> Result<Attended> {
    let (b, width) = (keys.batch(), keys.projected.shape()[2]);
    // Keys made by another layer carry its projection width.
    let own = layer.projection_width();
    if own.is_some_and(|k| k != width) {
        let want = format!("keys projected to width {}", own.unwrap_or(0));
        return Err(Error::shape("keys", want, keys.projected.shape()));
    }
    let (tq, single, dq) = layer.check_query(b, width, query)?;
    // Results of B·Tq·Dv and B·Tq·L elements: counts that must not overflow.
    size::elements("context", &[b, tq, keys.value_size()])?;
    size::elements("weights", &[b, tq, keys.len()])?;
    let out = match layer.on_device()? {
        None => {
            let query3 = query.to(&Device::Cpu, DType::F32)?.reshape(&[b, tq, dq])?;
            attend_cpu(layer.score, layer.params, keys, &query3, want_weights)?
        }
        Some(cuda) => {
            // A query already on the device in the layer's dtype is read in place.
            let in_place =
                query.dtype() == layer.dtype && query.check_on(layer.device, "query").is_ok();
            let moved = (!in_place)
                .then(|| query.to(layer.device, layer.dtype))
                .transpose()?;
            let query = moved.as_ref().unwrap_or(query);
            cuda.attend(layer.algo, layer.score, keys, query, tq, want_weights)?
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
