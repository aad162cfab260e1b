//! Soft attention (Bahdanau's additive, Luong's general, scaled dot): scores over a source's
//! keys, a softmax masked to each row's key length, and the weighted sum of values.
//!
//! Shapes: keys [B, L, Dk], values [B, L, Dv] (the keys when absent), queries [B, Tq, Dq] (one
//! query per row is Tq = 1), context [B, Tq, Dv], weights [B, Tq, L]. The key side (W_k K + b_k,
//! or W K) is computed once per source (`Keys`) and reused by every decoding step.

mod backward_cpu;
mod cpu;
mod cuda;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
pub(crate) fn check_key_lengths(
    lengths: Option<&[usize]>,
    batch: usize,
    len: usize,
) -> Result<Vec<usize>> {
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

pub(crate) use backward_cpu::{backward as backward_cpu, Params64, Sizes};
pub(crate) use cpu::{attend as attend_cpu, project_keys as project_keys_cpu};

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
pub(crate) use cuda::{BackwardCall, OnDevice};
