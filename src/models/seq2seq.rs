//! `models::Seq2Seq`: a translator. Source tokens → an embedding → a bidirectional LSTM or GRU
//! over each row's length → the attention decoder, which attends over the encoder's outputs
//! (the first length[b] of row b) and writes the target.

use super::captioner::{Caption, StepReport};
use super::checkpoint;
use super::loss::{caption_loss, CaptionLoss};
use super::vocab::{Vocab, END, PAD, START};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::nn::{
    parameters_mut_of, parameters_of, AttentionActivation, AttentionDecoder, DecoderConfig,
    DecoderDims, Embedding, Grads, Module, Recurrent, RecurrentSpec,
};
use crate::tensor::Tensor;
use crate::train::Adam;
use crate::{Cell, Reserve};
use std::path::Path;

const KIND: &str = "seq2seq";

/// The sizes of a new translator.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Seq2SeqConfig {
    /// Source embedding size.
    pub source_embed: usize,
    /// The encoder's hidden size per direction (its outputs are twice as wide).
    pub encoder_hidden: usize,
    /// `lstm` or `gru`.
    pub encoder_cell: EncoderCell,
    pub attention: usize,
    pub hidden: usize,
    pub embed: usize,
    #[serde(with = "activation_name")]
    pub activation: AttentionActivation,
    /// Dropout on the states the decoder's `fc` reads, in training.
    #[serde(default)]
    pub dropout: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderCell {
    Lstm,
    Gru,
}

mod activation_name {
    use crate::nn::AttentionActivation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &AttentionActivation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AttentionActivation, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

pub struct Seq2Seq {
    config: Seq2SeqConfig,
    source_vocab: Vocab,
    target_vocab: Vocab,
    embedding: Embedding,
    encoder: Recurrent,
    decoder: AttentionDecoder,
}

impl Module for Seq2Seq {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        parameters_of(&[
            ("embedding.", &self.embedding),
            ("encoder.", &self.encoder),
            ("decoder.", &self.decoder),
        ])
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        parameters_mut_of(vec![
            ("embedding.", &mut self.embedding),
            ("encoder.", &mut self.encoder),
            ("decoder.", &mut self.decoder),
        ])
    }
}

/// Source sentences as ids: [B, Ts] padded with `<pad>`, and each row's length.
pub struct Sources {
    pub ids: Indices,
    pub lengths: Vec<usize>,
}

impl Sources {
    /// Rows of source ids (each non-empty), padded to the longest.
    pub fn new(rows: &[Vec<usize>]) -> Result<Self> {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(Error::Lengths(
                "every source needs at least one token".into(),
            ));
        }
        let mut ids = vec![PAD; rows.len() * width];
        for (r, row) in rows.iter().enumerate() {
            ids[r * width..r * width + row.len()].copy_from_slice(row);
        }
        Ok(Sources {
            ids: Indices::from_usize(&ids, &[rows.len(), width])?,
            lengths: rows.iter().map(Vec::len).collect(),
        })
    }
}

/// The encoder's forward, kept for its backward.
struct Encoded {
    keys: Tensor,
    reserve: Option<Reserve>,
}

fn spec(config: &Seq2SeqConfig) -> RecurrentSpec {
    RecurrentSpec {
        cell: match config.encoder_cell {
            EncoderCell::Lstm => Cell::Lstm,
            EncoderCell::Gru => Cell::Gru,
        },
        input_size: config.source_embed,
        hidden_size: config.encoder_hidden,
        proj_size: 0,
        num_layers: 1,
        bias: true,
        batch_first: true,
        bidirectional: true,
    }
}

impl Seq2Seq {
    pub fn random(
        config: Seq2SeqConfig,
        source_vocab: Vocab,
        target_vocab: Vocab,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let embedding = Embedding::random(
            source_vocab.len(),
            config.source_embed,
            Some(PAD),
            device,
            dtype,
            seed ^ 0xe5b,
        )?;
        let encoder = Recurrent::random(spec(&config), device, dtype, seed ^ 0xe7c)?;
        let decoder = AttentionDecoder::random(
            DecoderConfig {
                dims: DecoderDims {
                    features: 2 * config.encoder_hidden,
                    attention: config.attention,
                    hidden: config.hidden,
                    embed: config.embed,
                    vocab: target_vocab.len(),
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
        Ok(Seq2Seq {
            config,
            source_vocab,
            target_vocab,
            embedding,
            encoder,
            decoder,
        })
    }

    pub fn source_vocab(&self) -> &Vocab {
        &self.source_vocab
    }

    pub fn target_vocab(&self) -> &Vocab {
        &self.target_vocab
    }

    fn encode(&self, sources: &Sources, train: bool) -> Result<Encoded> {
        let x = self.embedding.forward(&sources.ids)?;
        let lengths = Some(&sources.lengths[..]);
        if train {
            let (out, reserve) = self.encoder.forward_train(&x, None, None, lengths)?;
            Ok(Encoded {
                keys: out.output,
                reserve: Some(reserve),
            })
        } else {
            let out = self.encoder.forward(&x, None, None, lengths)?;
            Ok(Encoded {
                keys: out.output,
                reserve: None,
            })
        }
    }

    /// The teacher-forced loss of `targets` [B, T] (with `<start>` and `<end>`, `lengths`
    /// counting both) for `sources` (no update).
    pub fn loss(
        &self,
        sources: &Sources,
        targets: &Indices,
        lengths: &[usize],
    ) -> Result<CaptionLoss> {
        let enc = self.encode(sources, false)?;
        let out =
            self.decoder
                .forward(&enc.keys, Some(&sources.lengths), targets, lengths, false)?;
        caption_loss(out.logits, &out.alphas, targets, lengths, 0.0)
    }

    /// One step of training on the cross-entropy (no attention penalty: a source word need not
    /// be attended once), backward through decoder, encoder and embedding, clipping and Adam.
    pub fn train_step(
        &mut self,
        sources: &Sources,
        targets: &Indices,
        lengths: &[usize],
        adam: &mut Adam,
        clip: Option<f32>,
    ) -> Result<StepReport> {
        let enc = self.encode(sources, true)?;
        let out =
            self.decoder
                .forward(&enc.keys, Some(&sources.lengths), targets, lengths, true)?;
        let saved = out.saved.expect("kept in training");
        let loss = caption_loss(out.logits, &out.alphas, targets, lengths, 0.0)?;
        let dec = self.decoder.backward(&saved, &loss.grad_logits, None)?;
        let reserve = enc.reserve.expect("kept in training");
        let enc_grads = self.encoder.backward(&reserve, &dec.features, None, None)?;
        let demb = self.embedding.backward(&sources.ids, &enc_grads.input)?;
        let mut all = Grads::new();
        all.add("embedding.", &self.embedding, [demb])?;
        all.add("encoder.", &self.encoder, enc_grads.into_params())?;
        all.add("decoder.", &self.decoder, dec.params)?;
        let grad_norm = all.clip_norm(clip.unwrap_or(f32::INFINITY))?;
        adam.step_module(self, &all)?;
        Ok(StepReport {
            loss: loss.value,
            cross_entropy: loss.cross_entropy,
            penalty: 0.0,
            tokens: loss.tokens,
            grad_norm,
        })
    }

    /// Translations of `sources` by greedy (`beam` 1) or beam search, with each target word's
    /// attention over the source tokens.
    pub fn translate(
        &self,
        sources: &Sources,
        max_len: usize,
        beam: usize,
    ) -> Result<Vec<Caption>> {
        let enc = self.encode(sources, false)?;
        let found = self.decoder.decode(
            &enc.keys,
            Some(&sources.lengths),
            self.decoder.search(max_len, beam)?,
        )?;
        let l = enc.keys.shape()[1];
        let alphas = found.alphas.to_vec_f32()?;
        Ok((0..sources.lengths.len())
            .map(|n| {
                let tokens = found.caption(n);
                let words = self
                    .target_vocab
                    .decode(&tokens)
                    .into_iter()
                    .map(String::from)
                    .collect();
                Caption {
                    alphas: alphas[n * max_len * l..][..tokens.len() * l].to_vec(),
                    tokens,
                    words,
                    score: found.scores[n],
                }
            })
            .collect())
    }

    /// Writes the checkpoint: parameters under `embedding.`, `encoder.` (nn.LSTM / nn.GRU
    /// names) and `decoder.`, both vocabularies and the configuration.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut meta = self.decoder.config().metadata();
        meta.push(("source_vocab".into(), self.source_vocab.to_json()));
        meta.push(("target_vocab".into(), self.target_vocab.to_json()));
        meta.push((
            "config".into(),
            serde_json::to_string(&self.config).expect("plain fields"),
        ));
        checkpoint::write(path.as_ref(), KIND, self, meta)
    }

    pub fn load(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let file = checkpoint::open(path.as_ref(), KIND)?;
        let config: Seq2SeqConfig = checkpoint::json(&file, "config")?;
        let source_vocab = checkpoint::vocab(&file, "source_vocab")?;
        let target_vocab = checkpoint::vocab(&file, "target_vocab")?;
        checkpoint::only_under(&file, &["embedding.", "encoder.", "decoder."])?;
        let mut model = Seq2Seq::random(config, source_vocab, target_vocab, device, dtype, 0)?;
        model.embedding.load_state_dict(&file, "embedding.")?;
        model.encoder.load_state_dict(&file, "encoder.")?;
        model.decoder = AttentionDecoder::from_state_dict(&file, "decoder.", device, dtype)?;
        let d = model.decoder.config().dims;
        if d.vocab != model.target_vocab.len() || d.features != 2 * config.encoder_hidden {
            return Err(Error::Config(format!(
                "{}: the decoder's sizes {d:?} do not match the configuration",
                file.path().display()
            )));
        }
        Ok(model)
    }
}
