//! The attention decoder of "Show, Attend and Tell" (Xu et al. 2015) as the widely used PyTorch
//! `DecoderWithAttention` writes it: an LSTM cell that, at every step, attends over keys
//! f [B, L, D] (image regions, or an encoder's outputs with a length mask) with its previous
//! state, gates the context, and reads the context beside the previous token's embedding.
//!
//! Per row b with key length n_b and step t:
//! ```text
//! h0, c0 = init_h(mean f), init_c(mean f)            (mean over the row's valid keys)
//! e_l    = full_att(act(encoder_att(f_l) + decoder_att(h)))      act: ReLU or tanh
//! α      = softmax of e over the valid keys (0 elsewhere)
//! ctx    = sigmoid(f_beta(h)) ⊙ Σ_l α_l f_l
//! h, c   = LSTMCell([embedding(y_t); ctx], (h, c))   (gates i, f, g, o)
//! logits = fc(h)
//! ```
//! The step is computed as one product of h against the stacked [W_hh; decoder_att; f_beta],
//! the attention (scores, masked softmax, context, gate) per row, the context's share of W_ih,
//! and the cell; the embedding's share of W_ih for every teacher-forced step and `fc` over all
//! steps are one product each, outside the loop.
//!
//! `nn::AttentionDecoder` owns the parameters and hands the ops a `Params` view; here the
//! arguments are checked and the work dispatched to `cpu.rs` (f32 for speed, f64 for the
//! reference, one generic body) or `cuda.rs` (teacher forcing, its backward and the search).
//! `search.rs` holds the CPU's greedy and beam search bookkeeping.

mod cpu;
mod cuda;
mod search;

pub use cuda::Graphs;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::ops::activation::Activation;
use crate::ops::algo::Algo;
use crate::size;
use crate::tensor::Tensor;

/// The nonlinearity between the summed projections and `full_att`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionActivation {
    /// `DecoderWithAttention`'s choice.
    #[default]
    Relu,
    /// The paper's.
    Tanh,
}

impl AttentionActivation {
    pub fn name(self) -> &'static str {
        match self {
            AttentionActivation::Relu => "relu",
            AttentionActivation::Tanh => "tanh",
        }
    }

    pub(crate) fn activation(self) -> Activation {
        match self {
            AttentionActivation::Relu => Activation::Relu,
            AttentionActivation::Tanh => Activation::Tanh,
        }
    }
}

impl std::str::FromStr for AttentionActivation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "relu" => Ok(AttentionActivation::Relu),
            "tanh" => Ok(AttentionActivation::Tanh),
            _ => Err(Error::Config(format!(
                "unknown attention_activation {} (expected relu or tanh)",
                crate::error::quoted(s)
            ))),
        }
    }
}

/// The parameters' names in `DecoderWithAttention`'s state_dict, in its order; `Params` and
/// the gradients follow it.
pub const NAMES: [&str; 19] = [
    "attention.encoder_att.weight",
    "attention.encoder_att.bias",
    "attention.decoder_att.weight",
    "attention.decoder_att.bias",
    "attention.full_att.weight",
    "attention.full_att.bias",
    "embedding.weight",
    "decode_step.weight_ih",
    "decode_step.weight_hh",
    "decode_step.bias_ih",
    "decode_step.bias_hh",
    "init_h.weight",
    "init_h.bias",
    "init_c.weight",
    "init_c.bias",
    "f_beta.weight",
    "f_beta.bias",
    "fc.weight",
    "fc.bias",
];

/// The decoder's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// D: a key's size.
    pub features: usize,
    /// A
    pub attention: usize,
    /// H
    pub hidden: usize,
    /// E
    pub embed: usize,
    /// V
    pub vocab: usize,
}

impl Dims {
    /// The parameters' shapes, in `NAMES` order.
    pub fn shapes(&self) -> [Vec<usize>; 19] {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        } = *self;
        [
            vec![a, d],
            vec![a],
            vec![a, h],
            vec![a],
            vec![1, a],
            vec![1],
            vec![v, e],
            vec![4 * h, e + d],
            vec![4 * h, h],
            vec![4 * h],
            vec![4 * h],
            vec![h, d],
            vec![h],
            vec![h, d],
            vec![h],
            vec![d, h],
            vec![d],
            vec![v, h],
            vec![v],
        ]
    }

    /// The sizes read off the parameters' shapes (each checked against them).
    pub fn infer(params: &[&Tensor; 19]) -> Result<Dims> {
        let [a, d] = dims2(NAMES[0], params[0])?;
        let [v, e] = dims2(NAMES[6], params[6])?;
        let [_, h] = dims2(NAMES[8], params[8])?;
        let dims = Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            vocab: v,
        };
        if [a, d, h, e, v].contains(&0) {
            return Err(Error::Config(format!(
                "the decoder's sizes must be positive, got {dims:?}"
            )));
        }
        for ((name, t), shape) in NAMES.iter().zip(params).zip(dims.shapes()) {
            if t.shape() != shape.as_slice() {
                return Err(Error::shape(*name, format!("{shape:?}"), t.shape()));
            }
        }
        Ok(dims)
    }
}

fn dims2(name: &str, t: &Tensor) -> Result<[usize; 2]> {
    match *t.shape() {
        [a, b] => Ok([a, b]),
        _ => Err(Error::shape(name, "2 dimensions", t.shape())),
    }
}

/// A view of the decoder's parameters (in `NAMES` order), its attention nonlinearity and the
/// CUDA algorithm (`Fused` for `Auto`; `Naive` is PyTorch's op-by-op chain, for comparison).
pub struct Params<'a> {
    pub tensors: [&'a Tensor; 19],
    pub activation: AttentionActivation,
    pub algo: Algo,
    /// The layer's captured loops (the fused CUDA forward replays one per shape); none runs
    /// the loop as launches.
    pub graphs: Option<&'a Graphs>,
}

impl Params<'_> {
    /// The sizes, every shape checked, and the parameters' device and dtype (one for all).
    fn check(&self) -> Result<(Dims, Device, DType)> {
        if self.algo == Algo::Persistent {
            return Err(Error::Unsupported {
                request: "Algo::Persistent for the attention decoder".into(),
                reason: "it runs fused or naive".into(),
            });
        }
        let dims = Dims::infer(&self.tensors)?;
        let first = self.tensors[0];
        let (device, dtype) = (first.device(), first.dtype());
        for (name, t) in NAMES.iter().zip(&self.tensors) {
            t.check_on(&device, name)?;
            if t.dtype() != dtype {
                return Err(Error::DType {
                    tensor: (*name).into(),
                    expected: format!("{dtype} (the decoder's)"),
                    got: t.dtype().name().into(),
                });
            }
        }
        Ok((dims, device, dtype))
    }
}

/// Keys and their valid lengths, checked against the decoder.
struct Keys<'a> {
    features: &'a Tensor,
    batch: usize,
    len: usize,
    lengths: Vec<usize>,
}

fn check_keys<'a>(
    dims: &Dims,
    device: &Device,
    features: &'a Tensor,
    key_lengths: Option<&[usize]>,
) -> Result<Keys<'a>> {
    let &[batch, len, d] = features.shape() else {
        return Err(Error::shape(
            "features",
            format!("[B, L, {}]", dims.features),
            features.shape(),
        ));
    };
    if d != dims.features || len == 0 {
        return Err(Error::shape(
            "features",
            format!("[B, L ≥ 1, {}] (D of encoder_att)", dims.features),
            features.shape(),
        ));
    }
    features.check_on(device, "features")?;
    let lengths = match key_lengths {
        None => vec![len; batch],
        Some(l) if l.len() != batch => {
            return Err(Error::shape(
                "key_lengths",
                format!("[{batch}]"),
                &[l.len()],
            ))
        }
        Some(l) => {
            if let Some((b, &n)) = l.iter().enumerate().find(|(_, &n)| n == 0 || n > len) {
                return Err(Error::Lengths(format!(
                    "key_lengths[{b}] = {n} is outside 1..={len} (the number of keys)"
                )));
            }
            l.to_vec()
        }
    };
    Ok(Keys {
        features,
        batch,
        len,
        lengths,
    })
}

/// Dropout before `fc` in training (`fc(dropout(h))`): each element of the time-major states
/// [S, B, H] kept with probability 1 − p by the mask of `ops::dropout` for `seed` (the same on
/// the CPU and on CUDA), and scaled by 1 / (1 − p).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub(crate) rate: crate::ops::philox::Rate,
    pub(crate) seed: u64,
}

impl Dropout {
    /// Dropping with probability `p` (in [0, 1]) by the mask of `seed`.
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        Ok(Dropout {
            rate: crate::ops::philox::Rate::new(p)?,
            seed,
        })
    }
}

/// What a teacher-forced forward returns.
pub struct Forward {
    /// [B, S, V] with S = max(lengths) − 1; zero past each row's lengths − 1 steps.
    pub logits: Tensor,
    /// [B, S, L]: the attention of every step, zero past each row's steps and keys.
    pub alphas: Tensor,
    /// What `backward` needs (training mode only).
    pub saved: Option<Saved>,
}

/// A training forward's activations, for `backward`.
pub struct Saved {
    dims: Dims,
    dtype: DType,
    run: Run,
}

enum Run {
    /// The run and the parameters in the layouts it used (the backward reads the same).
    Cpu(Box<(cpu::Run<f32>, cpu::Weights<f32>)>),
    Cuda(Box<(cuda::Run, cuda::Weights)>),
}

impl Saved {
    /// (B, S, L): rows, steps and keys of the forward that made it.
    pub fn shape(&self) -> (usize, usize, usize) {
        match &self.run {
            Run::Cpu(r) => (r.0.batch, r.0.steps, r.0.keys),
            Run::Cuda(r) => (r.0.batch, r.0.steps, r.0.keys),
        }
    }
}

/// The gradients of Σ logits ⊙ grad_logits + Σ alphas ⊙ grad_alphas.
pub struct Gradients {
    /// [B, L, D]
    pub features: Tensor,
    /// One per parameter, in `NAMES` order, in the parameters' dtype.
    pub params: Vec<Tensor>,
}

/// The teacher-forced decoder over `captions` [B, T] (ids; row b reads its first
/// lengths[b] − 1 as inputs), `lengths` (each in 2..=T, counting `<start>` and `<end>`), keys
/// `features` [B, L, D] with optional `key_lengths` (each in 1..=L). With `keep`, the
/// activations are kept for `backward`; `dropout` drops the states `fc` reads.
pub fn forward(
    params: &Params,
    features: &Tensor,
    key_lengths: Option<&[usize]>,
    captions: &Indices,
    lengths: &[usize],
    keep: bool,
    dropout: Option<Dropout>,
) -> Result<Forward> {
    let (dims, device, dtype) = params.check()?;
    let keys = check_keys(&dims, &device, features, key_lengths)?;
    let (steps, ids) = check_captions(&dims, &keys, captions, lengths)?;
    let (b, l, v) = (keys.batch, keys.len, dims.vocab);
    if let Device::Cuda(dev) = &device {
        let weights = cuda::Weights::new(dev, params, dims)?;
        let out = match params.algo {
            Algo::Naive => weights.forward_naive(
                keys.features,
                &keys.lengths,
                &ids,
                lengths,
                steps,
                dropout,
            )?,
            _ => weights.forward(
                keys.features,
                &keys.lengths,
                &ids,
                lengths,
                steps,
                dropout,
                params.graphs,
            )?,
        };
        return Ok(Forward {
            logits: out.logits.to(&device, dtype)?,
            alphas: out.alphas.to(&device, dtype)?,
            saved: keep.then_some(Saved {
                dims,
                dtype,
                run: Run::Cuda(Box::new((out.run, weights))),
            }),
        });
    }
    let weights = cpu::Weights::<f32>::new(params, dims)?;
    let run = cpu::forward(
        &weights,
        &keys.features.to_vec_f32()?,
        &keys.lengths,
        &ids,
        lengths,
        steps,
        dropout,
    )?;
    let logits = Tensor::from_f32(&run.logits_batch_major()?, &[b, steps, v], dtype)?;
    let alphas = Tensor::from_f32(&run.alphas_batch_major()?, &[b, steps, l], dtype)?;
    Ok(Forward {
        logits,
        alphas,
        saved: keep.then_some(Saved {
            dims,
            dtype,
            run: Run::Cpu(Box::new((run, weights))),
        }),
    })
}

/// The gradients for a training `forward` given grad_logits [B, S, V] and optionally
/// grad_alphas [B, S, L] (both ignored past each row's steps). The forward kept the parameters
/// as it read them (f32, in its layouts), so the gradients are those of the forward that ran;
/// `params` must still be the decoder's (same sizes and device).
pub fn backward(
    params: &Params,
    saved: &Saved,
    grad_logits: &Tensor,
    grad_alphas: Option<&Tensor>,
) -> Result<Gradients> {
    let (dims, device, _) = params.check()?;
    if dims != saved.dims {
        return Err(Error::Config(
            "backward: the decoder's parameters are not the ones its forward ran with".into(),
        ));
    }
    let (b, s, l) = saved.shape();
    let want = [b, s, dims.vocab];
    if grad_logits.shape() != want {
        return Err(Error::shape(
            "grad_logits",
            format!("{want:?}"),
            grad_logits.shape(),
        ));
    }
    grad_logits.check_on(&device, "grad_logits")?;
    if let Some(g) = grad_alphas {
        if g.shape() != [b, s, l] {
            let want = format!("{:?}", [b, s, l]);
            return Err(Error::shape("grad_alphas", want, g.shape()));
        }
        g.check_on(&device, "grad_alphas")?;
    }
    let dtype = saved.dtype;
    let (run, weights) = match &saved.run {
        Run::Cpu(kept) => (&kept.0, &kept.1),
        Run::Cuda(kept) => {
            let (run, weights) = (&kept.0, &kept.1);
            if !device.is_cuda() {
                return Err(Error::DeviceMismatch {
                    expected: "the CUDA device the forward ran on".into(),
                    got: "the CPU (the decoder's parameters)".into(),
                });
            }
            let (features, grads) = match run.is_naive() {
                true => weights.backward_naive(run, grad_logits, grad_alphas)?,
                false => weights.backward(run, grad_logits, grad_alphas)?,
            };
            return Ok(Gradients {
                features: features.to(&device, dtype)?,
                params: grads
                    .iter()
                    .map(|g| g.to(&device, dtype))
                    .collect::<Result<_>>()?,
            });
        }
    };
    let grad_alphas = grad_alphas.map(Tensor::to_vec_f32).transpose()?;
    let grads = cpu::backward(
        weights,
        run,
        &grad_logits.to_vec_f32()?,
        grad_alphas.as_deref(),
    )?;
    let features = Tensor::from_f32(&grads.features, &[b, l, dims.features], dtype)?;
    let params = grads
        .params
        .iter()
        .zip(dims.shapes())
        .map(|(g, shape)| Tensor::from_f32(g, &shape, dtype))
        .collect::<Result<_>>()?;
    Ok(Gradients { features, params })
}

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Search {
    pub start: usize,
    pub end: usize,
    /// The most tokens a caption gets, `<end>` included.
    pub max_len: usize,
    /// Hypotheses kept per row: 1 is greedy.
    pub beam: usize,
}

/// Captions decoded for every row of the keys.
pub struct Decoded {
    /// [N, max_len]: the chosen tokens, `<end>` included when produced, −1 after it.
    pub tokens: Vec<i64>,
    /// [N]: the sum of the chosen tokens' log-softmax.
    pub scores: Vec<f32>,
    /// [N, max_len, L]: each emitted token's attention, zero after the last.
    pub alphas: Tensor,
    pub max_len: usize,
}

impl Decoded {
    /// Row n's tokens up to and including `<end>`.
    pub fn caption(&self, n: usize) -> Vec<usize> {
        self.tokens[n * self.max_len..(n + 1) * self.max_len]
            .iter()
            .take_while(|&&t| t >= 0)
            .map(|&t| t as usize)
            .collect()
    }
}

/// Greedy (beam 1) or beam search from `start` for every row of `features` [N, L, D]: each step
/// keeps the `beam` best extensions (total log-probability) of the row's live hypotheses;
/// those ending in `end` are finished and the live beam shrinks by as many; decoding stops when
/// none is live or after `max_len` tokens (live ones then count as finished). The answer is the
/// finished hypothesis with the highest total; ties go to the one finished first, then to the
/// better-ranked. Ties between candidates go to the lower (hypothesis rank, token).
///
/// On CUDA the whole search stays on the device (beam ≤ 64): one int is read back per step
/// (whether any hypothesis lives) and the history once at the end; `Algo::Naive` runs each
/// step the naive way.
pub fn decode(
    params: &Params,
    features: &Tensor,
    key_lengths: Option<&[usize]>,
    search: Search,
) -> Result<Decoded> {
    let (dims, device, dtype) = params.check()?;
    let keys = check_keys(&dims, &device, features, key_lengths)?;
    for (what, id) in [("start", search.start), ("end", search.end)] {
        if id >= dims.vocab {
            return Err(Error::Index {
                tensor: format!("the {what} token"),
                position: 0,
                value: id as i64,
                limit: dims.vocab,
            });
        }
    }
    if search.max_len == 0 || search.beam == 0 {
        return Err(Error::Config(format!(
            "decoding needs max_len ≥ 1 and beam ≥ 1, got {} and {}",
            search.max_len, search.beam
        )));
    }
    size::elements(
        "the decoded attention",
        &[keys.batch, search.beam, search.max_len, keys.len],
    )?;
    if let Device::Cuda(dev) = &device {
        let weights = cuda::Weights::new(dev, params, dims)?;
        let found = weights.decode(keys.features, &keys.lengths, search)?;
        return Ok(Decoded {
            tokens: found.tokens,
            scores: found.scores,
            alphas: found.alphas.to(&device, dtype)?,
            max_len: search.max_len,
        });
    }
    let weights = cpu::Weights::<f32>::new(params, dims)?;
    let found = cpu::decode(
        &weights,
        &keys.features.to_vec_f32()?,
        &keys.lengths,
        search,
    )?;
    let alphas = Tensor::from_f32(
        &found.alphas,
        &[keys.batch, search.max_len, keys.len],
        dtype,
    )?;
    Ok(Decoded {
        tokens: found.tokens,
        scores: found.scores,
        alphas,
        max_len: search.max_len,
    })
}

/// The steps S = max(lengths) − 1 and the ids on the host, after checking captions [B, T] and
/// lengths (each in 2..=T) and every id the decoder reads (positions below lengths − 1)
/// against the vocabulary. Teacher forcing's ids are read on the host whatever their device:
/// they are checked before any work.
fn check_captions(
    dims: &Dims,
    keys: &Keys,
    captions: &Indices,
    lengths: &[usize],
) -> Result<(usize, Vec<i32>)> {
    let &[batch, t] = captions.shape() else {
        return Err(Error::shape("captions", "[B, T]", captions.shape()));
    };
    if batch != keys.batch {
        let want = format!("[{}, T] (B of features)", keys.batch);
        return Err(Error::shape("captions", want, captions.shape()));
    }
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("[{batch}]"),
            &[lengths.len()],
        ));
    }
    if let Some((b, &n)) = lengths.iter().enumerate().find(|(_, &n)| n < 2 || n > t) {
        return Err(Error::Lengths(format!(
            "lengths[{b}] = {n} is outside 2..={t} (a caption holds <start> and <end>)"
        )));
    }
    let ids = captions.to_vec()?;
    for (b, &n) in lengths.iter().enumerate() {
        for (i, &id) in ids[b * t..b * t + n - 1].iter().enumerate() {
            if id < 0 || id as usize >= dims.vocab {
                return Err(Error::Index {
                    tensor: "captions".into(),
                    position: b * t + i,
                    value: id as i64,
                    limit: dims.vocab,
                });
            }
        }
    }
    Ok((lengths.iter().max().map_or(0, |&n| n - 1), ids))
}
