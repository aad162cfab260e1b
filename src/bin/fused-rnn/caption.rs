//! The `caption` command: region features in, decoded captions out (greedy or beam search on a
//! show-attend-tell decoder).

use crate::decoder::{counts, features};
use crate::limits::{self, ByteSize};
use crate::run::DeviceChoice;
use fused_rnn::error::{Error, Result};
use fused_rnn::io::{save, Data, TensorFile};
use fused_rnn::nn::{holds_decoder, AttentionDecoder, Search};
use fused_rnn::{DType, Device, Tensor};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct CaptionOptions {
    /// A decoder's state_dict (`DecoderWithAttention`'s names, at the top level or under
    /// `decoder.`), in safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// `features` [N, L, D] or [N, h, w, D], optional int64 `key_lengths` [N].
    #[arg(long)]
    pub features: PathBuf,
    /// Receives int64 `tokens` [N, max_len] (−1 after `<end>`), `scores` [N] and, for greedy
    /// decoding, `alphas` [N, max_len, L].
    #[arg(long)]
    pub output: PathBuf,
    /// Hypotheses kept per image (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// The most tokens a caption gets, `<end>` included.
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    /// The `<start>` token id (default: the weights' `start_token` metadata).
    #[arg(long)]
    pub start: Option<usize>,
    /// The `<end>` token id (default: the weights' `end_token` metadata).
    #[arg(long)]
    pub end: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Storage dtype on CUDA (default f32); the CPU computes in f32 only.
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Refuses a run whose result would exceed this many bytes (default a quarter of the
    /// memory available).
    #[arg(long, value_name = "SIZE")]
    pub max_output: Option<ByteSize>,
}

/// Decodes every row of `--features` and writes the captions; returns why the device was used.
pub fn caption(opts: &CaptionOptions) -> Result<String> {
    let weights = TensorFile::load(&opts.weights)?;
    let prefix = ["", "decoder."]
        .into_iter()
        .find(|p| holds_decoder(&weights, p))
        .ok_or_else(|| {
            Error::Config(format!(
                "{}: no decoder (decode_step.weight_ih and attention.encoder_att.weight, at the \
                 top level or under decoder.)",
                weights.path().display()
            ))
        })?;
    let (device, reason) = opts.device.open()?;
    let dtype = match (&device, opts.dtype) {
        (Device::Cpu, Some(d)) if d != DType::F32 => {
            return Err(Error::Config(format!(
                "--dtype {d} needs CUDA; the CPU computes in f32 ({reason})"
            )))
        }
        (_, d) => d.unwrap_or(DType::F32),
    };
    let decoder = AttentionDecoder::from_state_dict(&weights, prefix, &device, dtype)?;
    let config = decoder.config();
    let missing = |what: &str, flag: &str| {
        Error::Config(format!(
            "the {what} token id is unknown: the weights carry no {what}_token metadata; give {flag}"
        ))
    };
    let search = Search {
        start: opts
            .start
            .or(config.start)
            .ok_or_else(|| missing("start", "--start"))?,
        end: opts
            .end
            .or(config.end)
            .ok_or_else(|| missing("end", "--end"))?,
        max_len: opts.max_len,
        beam: opts.beam,
    };
    let inputs = TensorFile::load(&opts.features)?;
    if let Some(stray) = inputs
        .names()
        .find(|n| !["features", "key_lengths"].contains(n))
    {
        return Err(Error::Config(format!(
            "{}: unexpected tensor {} (caption takes features and key_lengths)",
            inputs.path().display(),
            fused_rnn::error::quoted(stray)
        )));
    }
    let raw = inputs.float("features")?;
    Error::check_finite("features", raw.host_slice::<f32>()?, raw.shape())?;
    let (keys, _) = features(raw)?;
    let key_lengths = counts(&inputs, "key_lengths")?;
    let &[n, l, _] = keys.shape() else {
        unreachable!("features() gives three sizes")
    };
    let mut result = vec![
        ("tokens", vec![n, opts.max_len, 2]),
        ("scores", vec![n]),
        (
            "the search's attention",
            vec![n, opts.beam, opts.max_len, l],
        ),
    ];
    if opts.beam == 1 {
        result.push(("alphas", vec![n, opts.max_len, l]));
    }
    limits::check_result(&result, (0, ""), &limits::output_limit(opts.max_output))?;
    let keys: Tensor = keys.to(&device, dtype)?;
    let found = decoder.decode(&keys, key_lengths.as_deref(), search)?;
    let tokens_shape = [n, opts.max_len];
    let scores = Tensor::from_vec(found.scores.clone(), &[n])?;
    let mut out = vec![
        ("tokens", Data::Int(&found.tokens, &tokens_shape)),
        ("scores", Data::Float(&scores)),
    ];
    if opts.beam == 1 {
        out.push(("alphas", Data::Float(&found.alphas)));
    }
    save(&opts.output, &out, &[])?;
    Ok(reason)
}
