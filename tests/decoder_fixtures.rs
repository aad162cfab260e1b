//! The attention decoder against PyTorch (float64, `scripts/fixtures/make_decoder_fixtures.py`):
//! teacher-forced logits and attention, every gradient, greedy and beam captions, through the
//! library and through the `run` and `caption` commands; and the commands' refusals of bad input.

mod common;

use common::assert_close;
use common::cli::{assert_fails, bin, run, write, Data};
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{AttentionDecoder, Module};
use fused_rnn::{DType, Device, Indices, Tensor};
use std::path::{Path, PathBuf};

/// Within 1e-4 of the reference's largest magnitude.
const TOL: f32 = 1e-4;

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(common::fixtures("decoder"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 6, "decoder fixtures missing");
    dirs
}

fn load(case: &Path, name: &str) -> TensorFile {
    TensorFile::load(case.join(format!("{name}.safetensors"))).unwrap()
}

fn floats(file: &TensorFile, name: &str) -> Vec<f32> {
    file.float(name).unwrap().to_vec_f32().unwrap()
}

fn counts(file: &TensorFile, name: &str) -> Option<Vec<usize>> {
    file.contains(name).then(|| {
        file.ints(name)
            .unwrap()
            .0
            .iter()
            .map(|&v| v as usize)
            .collect()
    })
}

fn meta(file: &TensorFile, key: &str) -> usize {
    file.metadata(key).unwrap().parse().unwrap()
}

/// [B, T − 1, W] values cut to the first `steps` steps: [B, steps, W].
fn first_steps(values: &[f32], b: usize, full: usize, steps: usize) -> Vec<f32> {
    let w = values.len() / (b * full);
    (0..b)
        .flat_map(|r| values[r * full * w..][..steps * w].to_vec())
        .collect()
}

/// A parameter's gradient scale: its own largest magnitude, except for full_att's bias, whose
/// gradient is zero but for rounding (the softmax cancels a shift of every score), measured
/// against its weight's.
fn grad_scale(expected: &TensorFile, name: &str) -> Vec<f32> {
    match name {
        "attention.full_att.bias" => floats(expected, "attention.full_att.weight.grad"),
        _ => floats(expected, &format!("{name}.grad")),
    }
}

fn assert_grad(what: &str, got: &[f32], want: &[f32], scale_of: &[f32]) {
    let scale = scale_of.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL * scale + TOL * w.abs(),
            "{what}[{k}]: got {g}, expected {w} (scale {scale:e})"
        );
    }
    assert_eq!(got.len(), want.len(), "{what}");
}

#[test]
fn cpu_matches_pytorch_forward_gradients_and_decoding() {
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let weights = load(&case, "weights");
        let input = load(&case, "input");
        let expected = load(&case, "expected");
        let decoder =
            AttentionDecoder::from_state_dict(&weights, "", &Device::Cpu, DType::F32).unwrap();
        let features = input.float("features").unwrap();
        let key_lengths = counts(&input, "key_lengths");
        let (ids, shape) = input.ints("captions").unwrap();
        let captions = Indices::from_vec(ids.iter().map(|&v| v as i32).collect(), &shape).unwrap();
        let lengths = counts(&input, "lengths").unwrap();
        let (b, full) = (shape[0], shape[1] - 1);
        let out = decoder
            .forward(&features, key_lengths.as_deref(), &captions, &lengths, true)
            .unwrap();
        let steps = out.logits.shape()[1];
        assert_eq!(steps, lengths.iter().max().unwrap() - 1, "{name}");
        for (what, got) in [("logits", &out.logits), ("alphas", &out.alphas)] {
            let want = floats(&expected, what);
            let got = got.to_vec_f32().unwrap();
            assert_close(
                &format!("{name}: {what}"),
                &got,
                &first_steps(&want, b, full, steps),
                TOL,
            );
            // Past the longest caption the reference is zero too.
            let kept: f32 = first_steps(&want, b, full, steps)
                .iter()
                .map(|x| x.abs())
                .sum();
            let all: f32 = want.iter().map(|x| x.abs()).sum();
            assert_eq!(kept, all, "{name}: {what} beyond step {steps}");
        }

        let cut = |t: &str| {
            let v = floats(&input, t);
            let n = v.len() / (b * full);
            Tensor::from_vec(first_steps(&v, b, full, steps), &[b, steps, n]).unwrap()
        };
        let grad_alphas = input.contains("grad_alphas").then(|| cut("grad_alphas"));
        let grads = decoder
            .backward(
                out.saved.as_ref().unwrap(),
                &cut("grad_logits"),
                grad_alphas.as_ref(),
            )
            .unwrap();
        let want = floats(&expected, "features.grad");
        assert_grad(
            &format!("{name}: features.grad"),
            &grads.features.to_vec_f32().unwrap(),
            &want,
            &want,
        );
        for ((param, _), g) in decoder.parameters().into_iter().zip(&grads.params) {
            assert_grad(
                &format!("{name}: {param}.grad"),
                &g.to_vec_f32().unwrap(),
                &floats(&expected, &format!("{param}.grad")),
                &grad_scale(&expected, &param),
            );
        }

        let max_len = meta(&input, "max_len");
        for (kind, beam) in [("greedy", 1), ("beam", meta(&input, "beam"))] {
            let search = decoder.search(max_len, beam).unwrap();
            let found = decoder
                .decode(&features, key_lengths.as_deref(), search)
                .unwrap();
            let (want_tokens, _) = expected.ints(&format!("{kind}_tokens")).unwrap();
            assert_eq!(found.tokens, want_tokens, "{name}: {kind} tokens");
            assert_close(
                &format!("{name}: {kind} scores"),
                &found.scores,
                &floats(&expected, &format!("{kind}_scores")),
                TOL,
            );
            if beam == 1 {
                assert_close(
                    &format!("{name}: greedy alphas"),
                    &found.alphas.to_vec_f32().unwrap(),
                    &floats(&expected, "greedy_alphas"),
                    TOL,
                );
            }
        }
    }
}

/// The fixture's inputs in the form `run` takes: features, captions, lengths (and key
/// lengths); `grad_logits` and `grad_alphas` in a gradient file.
fn split_input(case: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let input = load(case, "input");
    let f = input.float("features").unwrap();
    let mut tensors = vec![(
        "features",
        f.shape().to_vec(),
        Data::F32(f.to_vec_f32().unwrap()),
    )];
    for name in ["captions", "lengths", "key_lengths"] {
        if input.contains(name) {
            let (v, s) = input.ints(name).unwrap();
            tensors.push((name, s, Data::I64(v)));
        }
    }
    let x = dir.join("x.safetensors");
    write(&x, &tensors);
    let mut grads = Vec::new();
    for name in ["grad_logits", "grad_alphas"] {
        if input.contains(name) {
            let t = input.float(name).unwrap();
            grads.push((name, t.shape().to_vec(), Data::F32(t.to_vec_f32().unwrap())));
        }
    }
    let g = dir.join("g.safetensors");
    write(&g, &grads);
    (x, g)
}

#[test]
fn the_run_and_caption_commands_match_pytorch() {
    let dir = common::scratch("decoder-cli");
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let w = case.join("weights.safetensors");
        let (x, g) = split_input(&case, &dir);
        let y = dir.join("y.safetensors");
        let out = run(&w, &x, &y, &["--grad", g.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = TensorFile::load(&y).unwrap();
        let expected = load(&case, "expected");
        for t in [
            "logits",
            "alphas",
            "features.grad",
            "fc.weight.grad",
            "decode_step.weight_hh.grad",
        ] {
            assert_close(
                &format!("{name}: run {t}"),
                &floats(&got, t),
                &floats(&expected, t),
                TOL,
            );
        }
        let params = got.names().filter(|n| n.ends_with(".grad")).count();
        assert_eq!(
            params, 20,
            "{name}: features.grad and 19 parameter gradients"
        );
        std::fs::remove_file(&y).unwrap();

        let input = load(&case, "input");
        let f = input.float("features").unwrap();
        let mut keys = vec![(
            "features",
            f.shape().to_vec(),
            Data::F32(f.to_vec_f32().unwrap()),
        )];
        if let Some(k) = input
            .contains("key_lengths")
            .then(|| input.ints("key_lengths").unwrap())
        {
            keys.push(("key_lengths", k.1, Data::I64(k.0)));
        }
        let fpath = dir.join("f.safetensors");
        write(&fpath, &keys);
        let max_len = input.metadata("max_len").unwrap();
        for (kind, beam) in [("greedy", "1"), ("beam", input.metadata("beam").unwrap())] {
            let out = bin()
                .args(["caption", "--device", "cpu", "--weights"])
                .arg(&w)
                .arg("--features")
                .arg(&fpath)
                .arg("--output")
                .arg(&y)
                .args(["--beam", beam, "--max-len", max_len])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got = TensorFile::load(&y).unwrap();
            assert_eq!(
                got.ints("tokens").unwrap().0,
                expected.ints(&format!("{kind}_tokens")).unwrap().0,
                "{name}: caption --beam {beam}"
            );
            assert_eq!(got.contains("alphas"), beam == "1");
            std::fs::remove_file(&y).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tensor to write: name, shape, values.
type Named = (&'static str, Vec<usize>, Data);

#[test]
fn bad_decoder_input_is_one_line_and_no_output() {
    let dir = common::scratch("decoder-bad");
    let case = common::fixtures("decoder").join("relu_l7_v17_beam3_galpha");
    let w = case.join("weights.safetensors");
    let (b, t, l, d) = (4usize, 7usize, 7usize, 5usize);
    let features = || {
        (
            "features",
            vec![b, l, d],
            Data::F32(common::random(b * l * d, 1.0, 1)),
        )
    };
    let caption_ids = |first: i64, body: i64| {
        let mut ids = vec![body; b * t];
        for r in 0..b {
            ids[r * t] = first;
        }
        ("captions", vec![b, t], Data::I64(ids))
    };
    let lengths = |n: i64| ("lengths", vec![b], Data::I64(vec![n; b]));
    let y = dir.join("y.safetensors");
    let cases: Vec<(&str, Vec<Named>, &[&str])> = vec![
        (
            "unknown token",
            vec![features(), caption_ids(3, 17), lengths(5)],
            &["captions", "17", "0..17"],
        ),
        (
            "negative token",
            vec![features(), caption_ids(3, -2), lengths(5)],
            &["captions", "-2"],
        ),
        (
            "no start",
            vec![features(), caption_ids(4, 5), lengths(5)],
            &["<start>"],
        ),
        (
            "short",
            vec![features(), caption_ids(3, 5), lengths(1)],
            &["lengths", "2..=7"],
        ),
        (
            "long",
            vec![features(), caption_ids(3, 5), lengths(8)],
            &["lengths", "2..=7"],
        ),
        (
            "wrong D",
            vec![
                (
                    "features",
                    vec![b, l, 6],
                    Data::F32(common::random(b * l * 6, 1.0, 2)),
                ),
                caption_ids(3, 5),
                lengths(5),
            ],
            &["features", "[4, 7, 6]"],
        ),
        (
            "no lengths",
            vec![features(), caption_ids(3, 5)],
            &["lengths"],
        ),
        (
            "no features",
            vec![caption_ids(3, 5), lengths(5)],
            &["features"],
        ),
        (
            "stray",
            vec![
                features(),
                caption_ids(3, 5),
                lengths(5),
                ("query", vec![1], Data::F32(vec![1.0])),
            ],
            &["query"],
        ),
    ];
    for (what, tensors, mentions) in cases {
        let x = dir.join("x.safetensors");
        write(&x, &tensors);
        let out = run(&w, &x, &y, &[]);
        eprintln!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
        assert_fails(&out, &y, mentions);
    }
    // A gradient of the wrong vocabulary.
    let x = dir.join("x.safetensors");
    write(&x, &[features(), caption_ids(3, 5), lengths(5)]);
    let g = dir.join("g.safetensors");
    write(
        &g,
        &[(
            "grad_logits",
            vec![b, t - 1, 9],
            Data::F32(common::random(b * 6 * 9, 1.0, 3)),
        )],
    );
    assert_fails(
        &run(&w, &x, &y, &["--grad", g.to_str().unwrap()]),
        &y,
        &["grad_logits"],
    );
    // caption: a start id outside the vocabulary, and features of the wrong size.
    let f = dir.join("f.safetensors");
    write(&f, &[features()]);
    let caption = |extra: &[&str], features: &Path| {
        bin()
            .args(["caption", "--device", "cpu", "--weights"])
            .arg(&w)
            .arg("--features")
            .arg(features)
            .arg("--output")
            .arg(&y)
            .args(extra)
            .output()
            .unwrap()
    };
    assert_fails(&caption(&["--start", "17"], &f), &y, &["start", "17"]);
    assert_fails(&caption(&["--beam", "0"], &f), &y, &["beam"]);
    write(
        &f,
        &[(
            "features",
            vec![b, l, 6],
            Data::F32(common::random(b * l * 6, 1.0, 4)),
        )],
    );
    assert_fails(&caption(&[], &f), &y, &["features"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
