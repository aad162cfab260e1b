//! The `caption` command. On images (the default: the bundled captioner on the digit scenes'
//! test set) it prints captions and scores and writes COCO results (`caption_images`); on
//! region features (`--features`) it decodes them with a show-attend-tell decoder and writes
//! the tokens.

use crate::decoder::{counts, features};
use crate::limits::{self, ByteSize};
use crate::run::DeviceChoice;
use fused_rnn::data::Split;
use fused_rnn::error::{Error, Result};
use fused_rnn::io::{save, Data, TensorFile};
use fused_rnn::nn::{holds_decoder, AttentionDecoder, Search};
use fused_rnn::{DType, Tensor};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct CaptionOptions {
    /// On images, a checkpoint of `train caption` (default: the bundled digit captioner). With
    /// --features, a decoder's state_dict (`DecoderWithAttention`'s names, at the top level or
    /// under `decoder.`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The images: `digits` (the bundled digit scenes) or a data set folder (a Karpathy file
    /// `dataset_*.json` or COCO files `captions_<split>*.json`, with the images).
    #[arg(long, default_value = crate::corpus::DIGITS, conflicts_with_all = ["images", "features"])]
    pub data: String,
    /// The split of --data to caption.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Caption these image files (PNG or JPEG) instead of a data set.
    #[arg(long, num_args = 1.., conflicts_with = "features")]
    pub images: Vec<PathBuf>,
    /// Caption at most this many images of the split.
    #[arg(long, value_parser = crate::positive::<usize>)]
    pub limit: Option<usize>,
    /// The captions in the COCO results format, `[{"image_id", "caption"}]`.
    #[arg(long, default_value = "results.json")]
    pub results: PathBuf,
    /// The references in the COCO caption annotation format (when the images have them).
    #[arg(long, default_value = "references.json")]
    pub references: PathBuf,
    /// Write a page, DIR/index.html, showing every image with its caption and each word's
    /// attention.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Captions printed beside their references.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Region features `features` [N, L, D] or [N, h, w, D], optional int64 `key_lengths` [N],
    /// to decode instead of images (needs --weights and --output).
    #[arg(long, requires_all = ["weights", "output"])]
    pub features: Option<PathBuf>,
    /// With --features: receives int64 `tokens` [N, max_len] (−1 after `<end>`), `scores` [N]
    /// and, for greedy decoding, `alphas` [N, max_len, L].
    #[arg(long, requires = "features")]
    pub output: Option<PathBuf>,
    /// Hypotheses kept per image (1: greedy).
    #[arg(long, default_value_t = 1, value_parser = crate::positive::<usize>)]
    pub beam: usize,
    /// The most tokens a caption gets, `<end>` included.
    #[arg(long, default_value_t = 20, value_parser = crate::positive::<usize>)]
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

/// Captions images or decodes features, as the options say; for features, returns why the
/// device was used (captioning images says so as it starts).
pub fn caption(opts: &CaptionOptions) -> Result<Option<String>> {
    match (&opts.features, &opts.weights, &opts.output) {
        (Some(features), Some(weights), Some(output)) => {
            caption_features(opts, features, weights, output).map(Some)
        }
        _ => crate::caption_images::caption_images(opts).map(|()| None),
    }
}

/// Decodes every row of `features` and writes the captions to `output`.
fn caption_features(
    opts: &CaptionOptions,
    features_file: &Path,
    weights: &Path,
    output: &Path,
) -> Result<String> {
    let weights = TensorFile::load(weights)?;
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
    let (device, dtype, reason) = opts.device.open_for(opts.dtype)?;
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
    let inputs = TensorFile::load(features_file)?;
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
    save(output, &out, &[])?;
    Ok(reason)
}
