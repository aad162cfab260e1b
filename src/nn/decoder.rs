//! `nn::AttentionDecoder`: the show-attend-tell decoder (`DecoderWithAttention`'s parameters and
//! names), built in memory or loaded from a state_dict prefix; the work is `ops::decoder`.

use super::init::uniform;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::io::TensorFile;
use crate::nn::Module;
use crate::ops::algo::Algo;
use crate::ops::decoder::Dropout;
use crate::ops::decoder::{self, Graphs, Params, NAMES};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::ops::decoder::{
    AttentionActivation, Decoded, Dims as DecoderDims, Forward as DecoderForward,
    Gradients as DecoderGradients, Saved as DecoderSaved, Search,
};

/// The decoder's sizes and settings: what a checkpoint's metadata records beside the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderConfig {
    pub dims: DecoderDims,
    pub activation: AttentionActivation,
    /// The `<start>` and `<end>` token ids, when known (a state_dict's metadata may omit them).
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// The probability of dropping each state `fc` reads in training (`DecoderWithAttention`'s
    /// `dropout`; 0 for none).
    pub dropout: f32,
}

impl DecoderConfig {
    /// The metadata keys and values a state_dict carries for this configuration.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let mut m = vec![(
            "attention_activation".to_string(),
            self.activation.name().to_string(),
        )];
        for (key, id) in [("start_token", self.start), ("end_token", self.end)] {
            m.extend(id.map(|id| (key.to_string(), id.to_string())));
        }
        m.push(("dropout".into(), self.dropout.to_string()));
        m
    }
}

pub struct AttentionDecoder {
    config: DecoderConfig,
    algo: Algo,
    /// The next training forward's dropout seed: one per call, from the construction seed, so
    /// that a run repeats exactly.
    draws: AtomicU64,
    /// The fused CUDA loop captured per shape.
    graphs: Graphs,
    /// In `ops::decoder::NAMES` order.
    params: Vec<Tensor>,
}

impl Module for AttentionDecoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        NAMES
            .iter()
            .map(|n| n.to_string())
            .zip(&self.params)
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        NAMES
            .iter()
            .map(|n| n.to_string())
            .zip(&mut self.params)
            .collect()
    }
}

/// Whether a state_dict under `prefix` holds a decoder (its LSTM cell and its attention).
pub fn holds_decoder(file: &TensorFile, prefix: &str) -> bool {
    file.contains(&format!("{prefix}decode_step.weight_ih"))
        && file.contains(&format!("{prefix}attention.encoder_att.weight"))
}

impl AttentionDecoder {
    /// Parameters drawn as `DecoderWithAttention` draws them: the embedding and fc's weight
    /// U(−0.1, 0.1) and fc's bias zero; the rest PyTorch's default (U(±1/√in) for the linear
    /// layers, U(±1/√H) for the LSTM cell).
    pub fn random(config: DecoderConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        check_tokens(&config)?;
        let shapes = config.dims.shapes();
        let h = config.dims.hidden;
        let params = NAMES
            .iter()
            .zip(&shapes)
            .enumerate()
            .map(|(i, (name, shape))| {
                let n = crate::size::elements(name, shape)?;
                let fan_in = match *name {
                    "embedding.weight" | "fc.weight" => 100,
                    "fc.bias" => 0,
                    n if n.starts_with("decode_step.") => h,
                    // A linear layer's bias follows its weight [out, in].
                    _ => shapes[i - usize::from(shape.len() == 1)][1],
                };
                let values = match fan_in {
                    0 => vec![0.0; n],
                    f => uniform(n, 1.0 / (f as f32).sqrt(), seed.wrapping_add(i as u64))?,
                };
                Tensor::from_f32(&values, shape, dtype)?.to(device, dtype)
            })
            .collect::<Result<_>>()?;
        Ok(AttentionDecoder {
            config,
            algo: Algo::Auto,
            draws: AtomicU64::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            graphs: Graphs::default(),
            params,
        })
    }

    /// The decoder under `prefix` of a state_dict: sizes from the shapes, the attention
    /// nonlinearity and the `<start>`/`<end>` ids from the metadata (`attention_activation`,
    /// default relu; `start_token`, `end_token`, when present).
    pub fn from_state_dict(
        file: &TensorFile,
        prefix: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let loaded: Vec<Tensor> = NAMES
            .iter()
            .map(|n| file.float(&format!("{prefix}{n}")))
            .collect::<Result<_>>()?;
        let refs: [&Tensor; 19] = std::array::from_fn(|i| &loaded[i]);
        let dims = DecoderDims::infer(&refs)?;
        let activation = match file.metadata("attention_activation") {
            Some(a) => a.parse()?,
            None => AttentionActivation::default(),
        };
        let token = |key: &str| -> Result<Option<usize>> {
            let Some(text) = file.metadata(key) else {
                return Ok(None);
            };
            text.trim().parse().map(Some).map_err(|_| {
                Error::Config(format!(
                    "{}: metadata `{key}` = {} is not a token id",
                    file.path().display(),
                    crate::error::quoted(text)
                ))
            })
        };
        let dropout = match file.metadata("dropout") {
            None => 0.0,
            Some(text) => text
                .trim()
                .parse()
                .ok()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{}: metadata `dropout` = {} is not a probability below 1",
                        file.path().display(),
                        crate::error::quoted(text)
                    ))
                })?,
        };
        let config = DecoderConfig {
            dims,
            activation,
            start: token("start_token")?,
            end: token("end_token")?,
            dropout,
        };
        let mut decoder = AttentionDecoder::random(config, device, dtype, 0)?;
        decoder.load_state_dict(file, prefix)?;
        Ok(decoder)
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.params[0].device()
    }

    pub fn dtype(&self) -> DType {
        self.params[0].dtype()
    }

    /// How many shapes' fused CUDA loops replay a captured graph, and why any others do not
    /// (nothing on the CPU).
    pub fn graph_capture_status(&self) -> (usize, Vec<String>) {
        self.graphs.status()
    }

    /// Sets the training dropout before `fc` (p in [0, 1)).
    pub fn with_dropout(mut self, p: f32) -> Result<Self> {
        self.config.dropout = p;
        check_tokens(&self.config)?;
        Ok(self)
    }

    /// Chooses the CUDA implementation: `Auto` and `Fused` run the fused step, `Naive` one
    /// operation per line of the PyTorch code (for comparison). Ignored on the CPU.
    pub fn with_algo(mut self, algo: Algo) -> Self {
        self.algo = algo;
        self
    }

    fn view(&self) -> Params<'_> {
        Params {
            tensors: std::array::from_fn(|i| &self.params[i]),
            activation: self.config.activation,
            algo: self.algo,
            graphs: Some(&self.graphs),
        }
    }

    /// The teacher-forced decoder: logits [B, S, V] and alphas [B, S, L] for captions [B, T]
    /// (ids beginning with `<start>`) with `lengths` counting `<start>` and `<end>`, over keys
    /// `features` [B, L, D] (the first key_lengths[b] of row b; all when none). With `train`,
    /// keeps what `backward` needs and applies the configured dropout (a new mask per call).
    pub fn forward(
        &self,
        features: &Tensor,
        key_lengths: Option<&[usize]>,
        captions: &Indices,
        lengths: &[usize],
        train: bool,
    ) -> Result<DecoderForward> {
        let dropout = match train && self.config.dropout > 0.0 {
            true => {
                let seed = self.draws.fetch_add(1, Ordering::Relaxed);
                Some(Dropout::new(self.config.dropout, seed)?)
            }
            false => None,
        };
        decoder::forward(
            &self.view(),
            features,
            key_lengths,
            captions,
            lengths,
            train,
            dropout,
        )
    }

    /// The gradients of Σ logits ⊙ grad_logits + Σ alphas ⊙ grad_alphas for a training
    /// forward: into the features and every parameter (state_dict order, for `Grads::add`).
    pub fn backward(
        &self,
        saved: &DecoderSaved,
        grad_logits: &Tensor,
        grad_alphas: Option<&Tensor>,
    ) -> Result<DecoderGradients> {
        decoder::backward(&self.view(), saved, grad_logits, grad_alphas)
    }

    /// Greedy (`beam` 1) or beam search from the configured `<start>` to `<end>`.
    pub fn search(&self, max_len: usize, beam: usize) -> Result<Search> {
        let (Some(start), Some(end)) = (self.config.start, self.config.end) else {
            return Err(Error::Config(
                "the decoder's <start> and <end> token ids are not known (no start_token and \
                 end_token metadata)"
                    .into(),
            ));
        };
        Ok(Search {
            start,
            end,
            max_len,
            beam,
        })
    }

    /// Captions for every row of `features` [N, L, D] (the first key_lengths[b] keys of row
    /// b; all when none).
    pub fn decode(
        &self,
        features: &Tensor,
        key_lengths: Option<&[usize]>,
        search: Search,
    ) -> Result<Decoded> {
        decoder::decode(&self.view(), features, key_lengths, search)
    }
}

fn check_tokens(config: &DecoderConfig) -> Result<()> {
    if !(0.0..1.0).contains(&config.dropout) {
        return Err(Error::Config(format!(
            "dropout {} is outside [0, 1)",
            config.dropout
        )));
    }
    let v = config.dims.vocab;
    for (what, id) in [("start_token", config.start), ("end_token", config.end)] {
        let Some(id) = id else { continue };
        if id >= v {
            return Err(Error::Config(format!(
                "{what} {id} is outside the vocabulary of {v}"
            )));
        }
    }
    Ok(())
}
