//! `models::Captioner`: "Show, Attend and Tell" over either raw pixels (a `PatchEncoder`
//! trained end to end with the decoder) or region features [N, L, D] from any CNN.

use super::checkpoint;
use super::loss::{caption_loss, CaptionLoss};
use super::vocab::{Vocab, END, START};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::nn::{
    parameters_mut_of, parameters_of, AttentionActivation, AttentionDecoder, DecoderConfig,
    DecoderDims, EncoderLayers, Grads, ImageShape, Module, PatchEncoder, Patches,
};
use crate::tensor::Tensor;
use crate::train::Adam;
use crate::Algo;
use std::path::Path;

const KIND: &str = "captioner";

/// What a captioner reads.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Images as f32 pixels [N, C, H, W] (row-major) of the encoder's shape.
    Pixels(&'a [f32]),
    /// Region features [N, L, D] (a model without an image encoder).
    Features(&'a Tensor),
}

/// The sizes of a new captioner.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionerConfig {
    /// The image encoder's input, or none for precomputed features.
    pub image: Option<ImageShape>,
    /// The image encoder's layers before its key layer (a stem of convolutions, a hidden layer).
    pub encoder: EncoderLayers,
    /// D: a key's size (the encoder's output, or the features').
    pub features: usize,
    pub attention: usize,
    pub hidden: usize,
    pub embed: usize,
    pub activation: AttentionActivation,
    /// Dropout on the states `fc` reads, in training (`DecoderWithAttention`'s; 0 for none).
    pub dropout: f32,
}

/// A decoded caption.
#[derive(Debug, Clone)]
pub struct Caption {
    /// Ids, `<end>` included when produced.
    pub tokens: Vec<usize>,
    /// The words before `<end>`.
    pub words: Vec<String>,
    /// The sum of the chosen tokens' log-probabilities.
    pub score: f32,
    /// Per token its attention over the L regions [tokens, L].
    pub alphas: Vec<f32>,
}

/// One training step's numbers.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub loss: f32,
    pub cross_entropy: f32,
    pub penalty: f32,
    pub tokens: usize,
    /// The gradients' norm before clipping.
    pub grad_norm: f32,
}

pub struct Captioner {
    encoder: Option<PatchEncoder>,
    decoder: AttentionDecoder,
    vocab: Vocab,
}

impl Module for Captioner {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut parts: Vec<(&str, &dyn Module)> = Vec::new();
        if let Some(e) = &self.encoder {
            parts.push(("encoder.", e));
        }
        parts.push(("decoder.", &self.decoder));
        parameters_of(&parts)
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut parts: Vec<(&str, &mut dyn Module)> = Vec::new();
        if let Some(e) = &mut self.encoder {
            parts.push(("encoder.", e));
        }
        parts.push(("decoder.", &mut self.decoder));
        parameters_mut_of(parts)
    }
}

impl Captioner {
    /// A new model for `vocab`, drawn from `seed`.
    pub fn random(
        config: CaptionerConfig,
        vocab: Vocab,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let encoder = config
            .image
            .map(|shape| {
                PatchEncoder::random(
                    shape,
                    &config.encoder,
                    config.features,
                    device,
                    dtype,
                    seed ^ 0xe4c,
                )
            })
            .transpose()?;
        let decoder = AttentionDecoder::random(
            DecoderConfig {
                dims: DecoderDims {
                    features: config.features,
                    attention: config.attention,
                    hidden: config.hidden,
                    embed: config.embed,
                    vocab: vocab.len(),
                },
                activation: config.activation,
                start: Some(START),
                end: Some(END),
                dropout: config.dropout,
            },
            device,
            dtype,
            seed,
        )?;
        Ok(Captioner {
            encoder,
            decoder,
            vocab,
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Chooses the decoder's CUDA implementation (`AttentionDecoder::with_algo`).
    pub fn with_algo(mut self, algo: Algo) -> Self {
        self.decoder = self.decoder.with_algo(algo);
        self
    }

    pub fn decoder(&self) -> &AttentionDecoder {
        &self.decoder
    }

    /// The image encoder's input, when the model reads pixels.
    pub fn image_shape(&self) -> Option<ImageShape> {
        self.encoder.as_ref().map(PatchEncoder::shape)
    }

    /// The image encoder's layers before its key layer, when the model reads pixels.
    pub fn encoder_layers(&self) -> Option<EncoderLayers> {
        self.encoder.as_ref().map(PatchEncoder::layers)
    }

    /// The keys [N, L, D] of `input`, and what the encoder's backward needs.
    fn keys(&self, input: Input, train: bool) -> Result<(Tensor, Option<Patches>)> {
        match (input, &self.encoder) {
            (Input::Pixels(pixels), Some(e)) => e.forward(pixels, train),
            (Input::Features(f), None) => Ok((f.to(&f.device(), f.dtype())?, None)),
            (Input::Pixels(_), None) => Err(Error::Config(
                "this captioner reads region features, not pixels (it has no image encoder)".into(),
            )),
            (Input::Features(_), Some(_)) => Err(Error::Config(
                "this captioner reads pixels through its image encoder, not features".into(),
            )),
        }
    }

    /// The teacher-forced loss on `captions` [B, T] with `lengths` (no update).
    pub fn loss(
        &self,
        input: Input,
        captions: &Indices,
        lengths: &[usize],
        alpha_c: f32,
    ) -> Result<CaptionLoss> {
        let (keys, _) = self.keys(input, false)?;
        let out = self
            .decoder
            .forward(&keys, None, captions, lengths, false)?;
        caption_loss(out.logits, &out.alphas, captions, lengths, alpha_c)
    }

    /// One step of training: forward, the loss (cross-entropy plus `alpha_c` × the attention
    /// penalty), backward through the decoder and the encoder, clipping to `clip` (global
    /// norm) when given, and `adam`'s update.
    pub fn train_step(
        &mut self,
        input: Input,
        captions: &Indices,
        lengths: &[usize],
        adam: &mut Adam,
        alpha_c: f32,
        clip: Option<f32>,
    ) -> Result<StepReport> {
        let (keys, patches) = self.keys(input, true)?;
        let out = self.decoder.forward(&keys, None, captions, lengths, true)?;
        let saved = out.saved.expect("kept in training");
        let loss = caption_loss(out.logits, &out.alphas, captions, lengths, alpha_c)?;
        let grads = self
            .decoder
            .backward(&saved, &loss.grad_logits, loss.grad_alphas.as_ref())?;
        let mut all = Grads::new();
        all.add("decoder.", &self.decoder, grads.params)?;
        if let (Some(encoder), Some(patches)) = (&self.encoder, &patches) {
            all.add(
                "encoder.",
                encoder,
                encoder.backward(patches, &grads.features)?,
            )?;
        }
        let grad_norm = match clip {
            Some(max) => all.clip_norm(max)?,
            None => all.clip_norm(f32::INFINITY)?,
        };
        adam.step_module(self, &all)?;
        Ok(StepReport {
            loss: loss.value,
            cross_entropy: loss.cross_entropy,
            penalty: loss.penalty,
            tokens: loss.tokens,
            grad_norm,
        })
    }

    /// Captions for every image of `input` by greedy (`beam` 1) or beam search.
    pub fn caption(&self, input: Input, max_len: usize, beam: usize) -> Result<Vec<Caption>> {
        let (keys, _) = self.keys(input, false)?;
        let found = self
            .decoder
            .decode(&keys, None, self.decoder.search(max_len, beam)?)?;
        let l = keys.shape()[1];
        let alphas = found.alphas.to_vec_f32()?;
        Ok((0..keys.shape()[0])
            .map(|n| {
                let tokens = found.caption(n);
                let words = self
                    .vocab
                    .decode(&tokens)
                    .into_iter()
                    .map(String::from)
                    .collect();
                let alphas = alphas[n * max_len * l..][..tokens.len() * l].to_vec();
                Caption {
                    tokens,
                    words,
                    score: found.scores[n],
                    alphas,
                }
            })
            .collect())
    }

    /// Writes the checkpoint: parameters under `encoder.` and `decoder.` (the decoder's as
    /// `DecoderWithAttention` names them), the vocabulary, the image shape and the decoder's
    /// metadata.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut meta = self.decoder.config().metadata();
        meta.push(("vocab".into(), self.vocab.to_json()));
        if let Some(shape) = self.image_shape() {
            meta.push((
                "image".into(),
                serde_json::to_string(&shape).expect("plain numbers"),
            ));
        }
        checkpoint::write(path.as_ref(), KIND, self, meta)
    }

    /// A checkpoint written by `save`, on `device` in `dtype`.
    pub fn load(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let file = checkpoint::open(path.as_ref(), KIND)?;
        let vocab = checkpoint::vocab(&file, "vocab")?;
        let decoder = AttentionDecoder::from_state_dict(&file, "decoder.", device, dtype)?;
        let dims = decoder.config().dims;
        if dims.vocab != vocab.len() {
            return Err(Error::Config(format!(
                "{}: the decoder has {} words, the vocabulary {}",
                file.path().display(),
                dims.vocab,
                vocab.len()
            )));
        }
        let encoder = match file.metadata("image") {
            None => None,
            Some(_) => {
                let shape: ImageShape = checkpoint::json(&file, "image")?;
                let e = PatchEncoder::load(&file, "encoder.", shape, dims.features, device, dtype)?;
                Some(e)
            }
        };
        let prefixes: &[&str] = match encoder {
            Some(_) => &["encoder.", "decoder."],
            None => &["decoder."],
        };
        checkpoint::only_under(&file, prefixes)?;
        Ok(Captioner {
            encoder,
            decoder,
            vocab,
        })
    }
}
