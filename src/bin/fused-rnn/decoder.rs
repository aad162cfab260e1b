//! `run` on a show-attend-tell decoder's weights (recognised by `decode_step.weight_ih` and
//! `attention.encoder_att.weight`): teacher-forced logits and attention, and with `--grad`
//! every gradient.

use crate::limits;
use crate::run::{finite, load_grads, only, training_device, RunOptions, RunReport};
use fused_rnn::error::{Error, Result};
use fused_rnn::io::{save_f32, TensorFile};
use fused_rnn::nn::{AttentionDecoder, Module};
use fused_rnn::{Indices, Tensor};

/// `features` [B, L, D], or [B, h, w, D] (a CNN's grid) read as [B, h·w, D]; with the shape it
/// came in.
pub fn features(tensor: Tensor) -> Result<(Tensor, Vec<usize>)> {
    let shape = tensor.shape().to_vec();
    match shape[..] {
        [_, _, _] => Ok((tensor, shape)),
        [b, h, w, d] => Ok((tensor.reshape(&[b, h * w, d])?, shape)),
        _ => Err(Error::shape(
            "features",
            "[B, L, D] or [B, h, w, D]",
            &shape,
        )),
    }
}

/// Int64 ids of `name` [B, T] as i32 `Indices`; an id outside i32 is an error naming it.
fn ids(file: &TensorFile, name: &str) -> Result<Indices> {
    let (values, shape) = file.ints(name)?;
    if shape.len() != 2 {
        return Err(Error::shape(name, "[B, T]", &shape));
    }
    let ids = values
        .iter()
        .enumerate()
        .map(|(position, &v)| {
            i32::try_from(v).map_err(|_| Error::Index {
                tensor: name.into(),
                position,
                value: v,
                limit: i32::MAX as usize,
            })
        })
        .collect::<Result<Vec<i32>>>()?;
    Indices::from_vec(ids, &shape)
}

/// Non-negative int64 counts of `name` [B].
pub fn counts(file: &TensorFile, name: &str) -> Result<Option<Vec<usize>>> {
    if !file.contains(name) {
        return Ok(None);
    }
    let (values, shape) = file.ints(name)?;
    if shape.len() != 1 {
        return Err(Error::shape(name, "[B]", &shape));
    }
    values
        .iter()
        .enumerate()
        .map(|(b, &v)| {
            usize::try_from(v).map_err(|_| Error::Lengths(format!("{name}[{b}] = {v} is negative")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// [B, S, W] → [B, T − 1, W], zero past step S.
fn padded(t: &Tensor, steps: usize) -> Result<Tensor> {
    let &[b, s, w] = t.shape() else {
        unreachable!("the decoder's outputs are [B, S, ·]")
    };
    let values = t.to_vec_f32()?;
    let mut out = vec![0.0f32; b * steps * w];
    for r in 0..b {
        out[r * steps * w..][..s * w].copy_from_slice(&values[r * s * w..][..s * w]);
    }
    Tensor::from_vec(out, &[b, steps, w])
}

/// [B, T − 1, W] → [B, S, W]: the steps the forward ran.
fn trimmed(t: &Tensor, steps: usize, name: &str, want: &[usize]) -> Result<Tensor> {
    if t.shape() != want {
        return Err(Error::shape(name, format!("{want:?}"), t.shape()));
    }
    let [b, full, w] = *want else {
        unreachable!("three sizes")
    };
    let values = t.to_vec_f32()?;
    let mut out = Vec::with_capacity(b * steps * w);
    for r in 0..b {
        out.extend_from_slice(&values[r * full * w..][..steps * w]);
    }
    Tensor::from_vec(out, &[b, steps, w])
}

pub fn run_decoder(opts: &RunOptions, weights: &TensorFile) -> Result<RunReport> {
    let refuse = |flag: &str| Error::Config(format!("{flag} does not apply to a decoder"));
    if opts.batch_first.is_some() {
        return Err(refuse("--batch-first"));
    }
    if opts.nonlinearity.is_some() {
        return Err(refuse("--nonlinearity"));
    }
    let grads = load_grads(opts, &["grad_logits", "grad_alphas"], "the decoder")?;
    let (device, device_reason, dtype) = training_device(opts, grads.is_some())?;
    let decoder = AttentionDecoder::from_state_dict(weights, "", &device, dtype)?;
    let inputs = TensorFile::load(&opts.input)?;
    only(
        &inputs,
        &["features", "captions", "lengths", "key_lengths"],
        "the decoder",
    )?;
    let (features_in, features_shape) = features(finite(opts, &inputs, "features")?)?;
    let captions = ids(&inputs, "captions")?;
    let lengths = counts(&inputs, "lengths")?.ok_or_else(|| Error::MissingTensor {
        file: inputs.path().display().to_string(),
        tensor: "lengths".into(),
    })?;
    let key_lengths = counts(&inputs, "key_lengths")?;
    let &[b, t] = captions.shape() else {
        unreachable!("checked by ids")
    };
    let config = *decoder.config();
    if let Some(start) = config.start {
        let ids = captions.host_slice()?;
        if let Some(row) = (0..b).find(|&r| ids[r * t] as usize != start) {
            return Err(Error::Config(format!(
                "captions[{row}, 0] = {} is not <start> (start_token {start})",
                ids[row * t]
            )));
        }
    }
    let (l, d, v) = (
        features_in.shape()[1],
        config.dims.features,
        config.dims.vocab,
    );
    let steps = t.saturating_sub(1);
    let mut result = vec![("logits", vec![b, steps, v]), ("alphas", vec![b, steps, l])];
    if grads.is_some() {
        result.push(("features.grad", vec![b, l, d]));
        let params = decoder.parameters().iter().map(|(_, p)| p.numel()).sum();
        result.push(("parameter gradients", vec![params]));
    }
    // The CPU keeps per step and row the gates, the state, the attention and the context.
    let dims = config.dims;
    let per_step = 6 * dims.hidden + dims.attention + 4 * d + dims.embed + l + v;
    let work = (b * steps.max(1) * per_step * 4) as u64;
    limits::check_result(
        &result,
        (work, "working buffers"),
        &limits::output_limit(opts.max_output),
    )?;
    let features_in = features_in.to(&device, dtype)?;
    let out = decoder.forward(
        &features_in,
        key_lengths.as_deref(),
        &captions,
        &lengths,
        grads.is_some(),
    )?;
    let logits = padded(&out.logits, steps)?;
    let alphas = padded(&out.alphas, steps)?;
    let mut tensors: Vec<(String, Tensor)> =
        vec![("logits".into(), logits), ("alphas".into(), alphas)];
    if let (Some(g), Some(saved)) = (&grads, &out.saved) {
        let s = saved.shape().1;
        let grad_logits = trimmed(
            &finite(opts, g, "grad_logits")?,
            s,
            "grad_logits",
            &[b, steps, v],
        )?;
        let grad_alphas = match g.contains("grad_alphas") {
            true => Some(trimmed(
                &finite(opts, g, "grad_alphas")?,
                s,
                "grad_alphas",
                &[b, steps, l],
            )?),
            false => None,
        };
        let grads = decoder.backward(
            saved,
            &grad_logits.to(&device, dtype)?,
            grad_alphas
                .map(|g| g.to(&device, dtype))
                .transpose()?
                .as_ref(),
        )?;
        tensors.push((
            "features.grad".into(),
            grads.features.reshape(&features_shape)?,
        ));
        for ((name, _), g) in decoder.parameters().into_iter().zip(grads.params) {
            tensors.push((format!("{name}.grad"), g));
        }
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_f32(&opts.output, &named)?;
    Ok(RunReport {
        device_reason,
        module: format!(
            "AttentionDecoder(D={}, A={}, H={}, E={}, V={}, {})",
            d,
            dims.attention,
            dims.hidden,
            dims.embed,
            v,
            config.activation.name()
        ),
        dispatch: None,
    })
}
