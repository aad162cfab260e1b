//! The Attention part of the sweep: layers loaded from state_dict files (valid and not), then
//! keys, attend and backward around valid calls.

use crate::common;
use crate::harness::Sweep;
use crate::shapes::{dims, length_variants, maybe, opt_dims, shapes, shared, tensors_around};
use fused_rnn::io::TensorFile;
use fused_rnn::nn::Attention;
use fused_rnn::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// A state_dict to write: a label, tensors (name, shape) and metadata.
struct StateDict {
    label: String,
    tensors: Vec<(&'static str, Vec<usize>)>,
    metadata: Vec<(&'static str, String)>,
}

fn state_dict(label: &str, tensors: &[(&'static str, &[usize])], kind: Option<&str>) -> StateDict {
    StateDict {
        label: label.into(),
        tensors: tensors.iter().map(|(n, s)| (*n, s.to_vec())).collect(),
        metadata: kind.map(|k| ("kind", k.to_string())).into_iter().collect(),
    }
}

/// Writes `sd` with random values into `dir` as a safetensors file.
fn write_state_dict(dir: &Path, sd: &StateDict) -> std::path::PathBuf {
    let bytes: Vec<Vec<u8>> = sd
        .tensors
        .iter()
        .enumerate()
        .map(|(k, (_, shape))| {
            let values = common::random(shape.iter().product(), 0.7, k as u64 + 5);
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
        .collect();
    let views = sd.tensors.iter().zip(&bytes).map(|((name, shape), b)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).unwrap();
        (name.to_string(), view)
    });
    let metadata: HashMap<String, String> = sd
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let file: String = sd
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{file}.safetensors"));
    safetensors::serialize_to_file(views, Some(metadata), &path).unwrap();
    path
}

/// An attention layer under test, with the query and key widths its valid calls use.
struct AttentionSubject {
    name: String,
    layer: Attention,
    dq: usize,
    dk: usize,
}

/// Layers of every kind (sizes 1 and 3, with and without biases, kind from metadata or from
/// the tensors), as (state_dict, Dq, Dk).
fn attention_layers() -> Vec<(StateDict, usize, usize)> {
    let mut out = Vec::new();
    let biases: [&[&str]; 4] = [
        &[],
        &["query_proj.bias", "key_proj.bias"],
        &["query_proj.bias"],
        &["key_proj.bias"],
    ];
    let sizes = [(1, 1, 1), (3, 1, 3), (1, 3, 1), (3, 3, 3)];
    for (n, (&(a, dq, dk), biases)) in sizes.iter().zip(biases).enumerate() {
        let (v, w_q, w_k, bias) = ([1, a], [a, dq], [a, dk], [a]);
        let mut t: Vec<(&'static str, &[usize])> = vec![
            ("score.weight", &v),
            ("query_proj.weight", &w_q),
            ("key_proj.weight", &w_k),
        ];
        t.extend(biases.iter().map(|&b| (b, &bias[..])));
        let kind = (n % 2 == 0).then_some("additive");
        let label = format!("additive_a{a}_dq{dq}_dk{dk}_biases{}", biases.len());
        out.push((state_dict(&label, &t, kind), dq, dk));
    }
    for (n, &(dq, dk)) in [(1, 1), (1, 3), (3, 1), (3, 3)].iter().enumerate() {
        let kind = (n % 2 == 0).then_some("general");
        let w = [dq, dk];
        let label = format!("general_dq{dq}_dk{dk}");
        out.push((state_dict(&label, &[("key_proj.weight", &w)], kind), dq, dk));
    }
    for (scale, d) in [(None, 3), (Some("0.5"), 1), (Some("-2"), 3)] {
        let label = format!("dot_scale_{}_d{d}", scale.unwrap_or("none"));
        let mut sd = state_dict(&label, &[], Some("dot"));
        sd.metadata.extend(scale.map(|s| ("scale", s.to_string())));
        out.push((sd, d, d));
    }
    out.push((state_dict("dot_inferred", &[], None), 1, 1));
    out
}

/// Files a layer must refuse: wrong ranks, zero or mismatched sizes, stray tensors, bad
/// metadata.
fn bad_attention_files() -> Vec<StateDict> {
    let additive = |name: &'static str, shape: &'static [usize]| {
        let mut t: Vec<(&'static str, &[usize])> = vec![
            ("score.weight", &[1, 3]),
            ("query_proj.weight", &[3, 2]),
            ("key_proj.weight", &[3, 1]),
            ("query_proj.bias", &[3]),
            ("key_proj.bias", &[3]),
        ];
        t.iter_mut()
            .filter(|(n, _)| *n == name)
            .for_each(|e| e.1 = shape);
        state_dict(
            &format!("additive {name} {}", dims(shape)),
            &t,
            Some("additive"),
        )
    };
    let mut out = Vec::new();
    for shape in [
        &[1, 0][..],
        &[0, 3],
        &[3],
        &[2, 3],
        &[1, 3, 1],
        &[],
        &[1, 1, 0, 3],
    ] {
        out.push(additive("score.weight", shape));
    }
    for name in ["query_proj.weight", "key_proj.weight"] {
        for shape in [&[3][..], &[2, 2], &[3, 0], &[0, 3], &[3, 1, 1], &[]] {
            out.push(additive(name, shape));
        }
    }
    for name in ["query_proj.bias", "key_proj.bias"] {
        for shape in [&[2][..], &[0], &[3, 1], &[1, 3], &[]] {
            out.push(additive(name, shape));
        }
    }
    for shape in [&[0, 3][..], &[3, 0], &[3], &[1, 1, 1], &[]] {
        let label = format!("general key_proj.weight {}", dims(shape));
        out.push(state_dict(
            &label,
            &[("key_proj.weight", shape)],
            Some("general"),
        ));
    }
    let one = &[("score.weight", &[1, 3][..])];
    out.extend([
        state_dict("additive without tensors", &[], Some("additive")),
        state_dict("general without tensors", &[], Some("general")),
        state_dict("general with score.weight", one, Some("general")),
        state_dict(
            "dot with key_proj.weight",
            &[("key_proj.weight", &[3, 3])],
            Some("dot"),
        ),
        state_dict("kind luong", &[], Some("luong")),
        state_dict("inferred additive without projections", one, None),
    ]);
    for scale in ["nan", "inf", "-inf", "abc", "1e40", ""] {
        let mut sd = state_dict(&format!("dot scale {scale}"), &[], Some("dot"));
        sd.metadata.push(("scale", scale.to_string()));
        out.push(sd);
    }
    out
}

/// Loads a state_dict file and builds an attention layer from it in `dtype`.
fn load_attention(
    sweep: &mut Sweep,
    dir: &Path,
    sd: &StateDict,
    dtype: DType,
) -> Option<Attention> {
    let path = write_state_dict(dir, sd);
    let file = sweep.call(
        || format!("TensorFile::load({})", sd.label),
        || TensorFile::load(&path),
    )?;
    sweep.call(
        || format!("Attention::from_state_dict({}, cpu, {dtype})", sd.label),
        || Attention::from_state_dict(&file, &Device::Cpu, dtype),
    )
}

pub(crate) fn check_attention(sweep: &mut Sweep) {
    let dir = common::scratch("library-shapes");
    for sd in bad_attention_files() {
        load_attention(sweep, &dir, &sd, DType::F32);
    }
    let mut subjects = Vec::new();
    for (sd, dq, dk) in attention_layers() {
        load_attention(sweep, &dir, &sd, DType::F16);
        if let Some(layer) = load_attention(sweep, &dir, &sd, DType::F32) {
            let name = format!("Attention({})", sd.label);
            subjects.push(AttentionSubject {
                name,
                layer,
                dq,
                dk,
            });
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    // Valid keys of every layer, for every layer's attend: one row of one key, and three rows
    // of three keys with values of another width and mixed lengths.
    let mut all_keys = Vec::new();
    for s in &subjects {
        check_keys(sweep, s);
        check_attention_backward(sweep, s);
        let (k1, k3, v3) = ([1, 1, s.dk], [3, 3, s.dk], [3, 3, 1]);
        for (k, v, lengths) in [(k1, None, None), (k3, Some(v3), Some(&[1, 3, 2][..]))] {
            let (v, l) = (v.map(|v| shared(&v)), maybe(lengths));
            let made = format!(
                "{} (keys {}, values {}, lengths {l})",
                s.name,
                dims(&k),
                opt_dims(v)
            );
            let keys = sweep.call(|| made.clone(), || s.layer.keys(shared(&k), v, lengths));
            all_keys.extend(keys.map(|keys| (made, keys)));
        }
    }
    let queries: Vec<&Tensor> = shapes().iter().map(|s| shared(s)).collect();
    for s in &subjects {
        for (from, keys) in &all_keys {
            for q in &queries {
                let want = q.shape().len() % 2 == 0;
                sweep.call(
                    || {
                        let q = dims(q.shape());
                        format!(
                            "{}.attend(keys of {from}, query {q}, want_weights {want})",
                            s.name
                        )
                    },
                    || s.layer.attend(keys, q, want),
                );
            }
        }
    }
}

/// `keys` around valid calls: keys, values and lengths in turn.
fn check_keys(sweep: &mut Sweep, s: &AttentionSubject) {
    let mut keys = |k: &Tensor, v: Option<&Tensor>, lengths: Option<&[usize]>| {
        let call = || {
            let (k, v, l) = (dims(k.shape()), opt_dims(v), maybe(lengths));
            format!("{}.keys(keys {k}, values {v}, lengths {l})", s.name)
        };
        sweep.call(call, || s.layer.keys(k, v, lengths));
    };
    for k in tensors_around(&[3, 3, s.dk]) {
        keys(k, None, None);
    }
    let k = shared(&[3, 3, s.dk]);
    for v in tensors_around(&[3, 3, 3]) {
        keys(k, Some(v), Some(&[1, 3, 2]));
    }
    for lengths in length_variants(3, 3) {
        keys(k, None, lengths.as_deref());
    }
}

/// backward around valid calls (one query per row and several, values or not): keys, values,
/// lengths, query and grad_context in turn.
fn check_attention_backward(sweep: &mut Sweep, s: &AttentionSubject) {
    let k = shared(&[3, 3, s.dk]);
    for (query, dv) in [(vec![3, s.dq], 3), (vec![3, 2, s.dq], 1)] {
        let lead = &query[..query.len() - 1];
        let (v, q) = (shared(&[3, 3, dv]), shared(&query));
        let g = shared(&[lead, &[dv]].concat());
        let mut backward = |[k, v, q, g]: [&Tensor; 4], values: bool, lengths: Option<&[usize]>| {
            let v = values.then_some(v);
            let call = || {
                let (k, v, l) = (dims(k.shape()), opt_dims(v), maybe(lengths));
                let (q, g) = (dims(q.shape()), dims(g.shape()));
                let args =
                    format!("keys {k}, values {v}, lengths {l}, query {q}, grad_context {g}");
                format!("{}.backward({args})", s.name)
            };
            sweep.call(call, || s.layer.backward(k, v, lengths, q, g));
        };
        let base = [k, v, q, g];
        for (slot, valid) in base.map(|t| t.shape().to_vec()).iter().enumerate() {
            for t in tensors_around(valid) {
                let mut args = base;
                args[slot] = t;
                backward(args, true, Some(&[1, 3, 2]));
            }
        }
        for l in length_variants(3, 3) {
            backward(base, true, l.as_deref());
        }
        // Without values the context has the keys' width.
        backward([k, v, q, shared(&[lead, &[s.dk]].concat())], false, None);
    }
}
