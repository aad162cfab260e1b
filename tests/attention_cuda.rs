//! CUDA attention, fused and naive, forward and backward, against the CPU reference for every
//! score kind and dtype, on odd shapes with key masks (length 1 included), one and many queries
//! per row, NaN-poisoned outputs. Skips with a printed reason without a GPU (fails instead under
//! FUSED_RNN_REQUIRE_GPU=1).

mod common;

use fused_rnn::io::TensorFile;
use fused_rnn::nn::{Attention, Module};
use fused_rnn::{Algo, DType, Device, Error, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Additive,
    General,
    Dot,
}

/// (B, L, Tq (0: one query per row, rank 2), Dq, Dk, Dv (0: values are the keys), A)
type Shape = (usize, usize, usize, usize, usize, usize, usize);

const SHAPES: &[Shape] = &[
    (1, 1, 0, 7, 7, 0, 5),
    (3, 7, 2, 33, 33, 9, 17),
    (2, 196, 0, 129, 129, 0, 64),
    (2, 1000, 3, 64, 64, 48, 33),
    (5, 33, 1, 1, 1, 1, 1),
];

/// Writes an attention state_dict with `kind` (and `scale` for dot) in its metadata.
fn write_weights(path: &std::path::Path, kind: Kind, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let mut meta = HashMap::new();
    let name = match kind {
        Kind::Additive => "additive",
        Kind::General => "general",
        Kind::Dot => {
            meta.insert("scale".to_string(), "0.37".to_string());
            "dot"
        }
    };
    meta.insert("kind".to_string(), name.to_string());
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

struct Case {
    weights: TensorFile,
    query: Tensor,
    keys: Tensor,
    values: Option<Tensor>,
    lengths: Vec<usize>,
}

fn case(kind: Kind, shape: Shape, dtype: DType, seed: u64, dir: &std::path::Path) -> Case {
    let (b, l, tq, dq, dk, dv, a) = shape;
    let dk = if kind == Kind::Dot { dq } else { dk };
    let r =
        |n: usize, scale: f32, s: u64| common::rounded(common::random(n, scale, seed + s), dtype);
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = match kind {
        Kind::Additive => vec![
            ("query_proj.weight", vec![a, dq], r(a * dq, 0.3, 1)),
            ("query_proj.bias", vec![a], r(a, 0.3, 2)),
            ("key_proj.weight", vec![a, dk], r(a * dk, 0.3, 3)),
            ("key_proj.bias", vec![a], r(a, 0.3, 4)),
            ("score.weight", vec![1, a], r(a, 1.0, 5)),
        ],
        Kind::General => vec![("key_proj.weight", vec![dq, dk], r(dq * dk, 0.3, 3))],
        Kind::Dot => vec![],
    };
    let path = dir.join(format!("{kind:?}-{seed}.safetensors"));
    write_weights(&path, kind, &tensors);
    let query_shape = if tq == 0 {
        vec![b, dq]
    } else {
        vec![b, tq, dq]
    };
    let nq = b * tq.max(1) * dq;
    let lengths = (0..b)
        .map(|i| [l, 1, l.div_ceil(2), l.saturating_sub(3).max(1)][i % 4])
        .collect();
    Case {
        weights: TensorFile::load(&path).unwrap(),
        query: Tensor::from_vec(r(nq, 1.0, 6), &query_shape).unwrap(),
        keys: Tensor::from_vec(r(b * l * dk, 1.0, 7), &[b, l, dk]).unwrap(),
        values: (dv > 0).then(|| Tensor::from_vec(r(b * l * dv, 1.0, 8), &[b, l, dv]).unwrap()),
        lengths,
    }
}

#[test]
fn fused_and_naive_match_the_cpu_for_every_kind_and_dtype() {
    let Some(device) =
        common::cuda_or_skip("fused_and_naive_match_the_cpu_for_every_kind_and_dtype")
    else {
        return;
    };
    let dir = common::scratch("attention_cuda");
    for (s, &shape) in SHAPES.iter().enumerate() {
        for kind in [Kind::Additive, Kind::General, Kind::Dot] {
            for dtype in DType::ALL {
                let seed = 1000 * s as u64 + 10 * kind as u64;
                let c = case(kind, shape, dtype, seed, &dir);
                let cpu = Attention::from_state_dict(&c.weights, &Device::Cpu, DType::F32).unwrap();
                let keys = cpu
                    .keys(&c.keys, c.values.as_ref(), Some(&c.lengths))
                    .unwrap();
                let want = cpu.attend(&keys, &c.query, true).unwrap();
                let want_context = want.context.to_vec_f32().unwrap();
                let want_weights = want.weights.unwrap().to_vec_f32().unwrap();
                for algo in [Algo::Fused, Algo::Naive] {
                    let what = format!("{kind:?} {shape:?} {} {}", dtype.name(), algo.name());
                    let mut gpu = Attention::from_state_dict(&c.weights, &device, dtype).unwrap();
                    gpu.set_algo(algo);
                    let keys = gpu
                        .keys(&c.keys, c.values.as_ref(), Some(&c.lengths))
                        .unwrap();
                    let tol = common::tolerance(dtype);
                    // Twice over the same keys: once with the weights, once without.
                    for want_w in [true, false] {
                        let got = gpu.attend(&keys, &c.query, want_w).unwrap();
                        assert_eq!(got.context.shape(), want.context.shape(), "{what}");
                        assert!(got.context.is_cuda(), "{what}: context left the device");
                        common::assert_close(
                            &format!("{what} context"),
                            &got.context.to_vec_f32().unwrap(),
                            &want_context,
                            tol,
                        );
                        match got.weights {
                            Some(w) => common::assert_close(
                                &format!("{what} weights"),
                                &w.to_vec_f32().unwrap(),
                                &want_weights,
                                tol,
                            ),
                            None => assert!(!want_w, "{what}: weights missing"),
                        }
                    }
                }
            }
        }
    }
}

/// The context (and weights) of `gpu` with `algo` against the CPU's, on `c`.
fn check_against_cpu(what: &str, c: &Case, device: &Device, dtype: DType, algo: Algo) {
    let cpu = Attention::from_state_dict(&c.weights, &Device::Cpu, DType::F32).unwrap();
    let cpu_keys = cpu
        .keys(&c.keys, c.values.as_ref(), Some(&c.lengths))
        .unwrap();
    let want = cpu.attend(&cpu_keys, &c.query, true).unwrap();
    let mut gpu = Attention::from_state_dict(&c.weights, device, dtype).unwrap();
    gpu.set_algo(algo);
    let keys = gpu
        .keys(&c.keys, c.values.as_ref(), Some(&c.lengths))
        .unwrap();
    let got = gpu.attend(&keys, &c.query, true).unwrap();
    let tol = common::tolerance(dtype);
    let pairs = [
        (&got.context, &want.context),
        (
            got.weights.as_ref().unwrap(),
            want.weights.as_ref().unwrap(),
        ),
    ];
    for (g, w) in pairs {
        common::assert_close(
            what,
            &g.to_vec_f32().unwrap(),
            &w.to_vec_f32().unwrap(),
            tol,
        );
    }
}

#[test]
fn long_sources_split_into_many_chunks_and_wide_queries_are_refused_clearly() {
    let Some(device) = common::cuda_or_skip(
        "long_sources_split_into_many_chunks_and_wide_queries_are_refused_clearly",
    ) else {
        return;
    };
    let dir = common::scratch("attention_cuda_long");
    // 70 000 keys: more chunks than the combine step has threads.
    let c = case(Kind::Dot, (2, 70_000, 0, 4, 4, 0, 1), DType::F32, 5, &dir);
    for algo in [Algo::Fused, Algo::Naive] {
        check_against_cpu(
            &format!("70 000 keys, {}", algo.name()),
            &c,
            &device,
            DType::F32,
            algo,
        );
    }
    // A 60 000-wide query needs more shared memory than a block may have.
    let c = case(
        Kind::Dot,
        (1, 3, 0, 60_000, 60_000, 0, 1),
        DType::F32,
        6,
        &dir,
    );
    let gpu = Attention::from_state_dict(&c.weights, &device, DType::F32).unwrap();
    let keys = gpu.keys(&c.keys, None, Some(&c.lengths)).unwrap();
    match gpu.attend(&keys, &c.query, false) {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("naive"), "{e}"),
        other => panic!("expected an Unsupported error, got {:?}", other.map(|_| ())),
    }
    check_against_cpu(
        "60 000-wide query, naive",
        &c,
        &device,
        DType::F32,
        Algo::Naive,
    );
}

#[test]
fn a_query_already_on_the_device_is_read_in_place_and_keys_are_reused() {
    let Some(device) =
        common::cuda_or_skip("a_query_already_on_the_device_is_read_in_place_and_keys_are_reused")
    else {
        return;
    };
    let dir = common::scratch("attention_cuda_steps");
    let c = case(
        Kind::Additive,
        (4, 50, 0, 24, 40, 0, 16),
        DType::BF16,
        9,
        &dir,
    );
    let mut cpu = Attention::from_state_dict(&c.weights, &Device::Cpu, DType::F32).unwrap();
    let mut gpu = Attention::from_state_dict(&c.weights, &device, DType::BF16).unwrap();
    // Parameters handed out on the GPU too, and replaced: the layer takes the new ones.
    let score = [0.5f32; 16];
    for layer in [&mut cpu, &mut gpu] {
        let (dtype, device) = (layer.dtype(), layer.device().clone());
        for (name, t) in layer.parameters_mut() {
            if name == "score.weight" {
                *t = Tensor::from_vec(score.to_vec(), &[1, 16])
                    .unwrap()
                    .to(&device, dtype)
                    .unwrap();
            }
        }
    }
    let cpu_keys = cpu.keys(&c.keys, None, Some(&c.lengths)).unwrap();
    let keys = gpu.keys(&c.keys, None, Some(&c.lengths)).unwrap();
    // Decoding steps: a fresh query each, the same keys.
    for step in 0..4u64 {
        let q = Tensor::from_vec(
            common::rounded(common::random(4 * 24, 1.0, 77 + step), DType::BF16),
            &[4, 24],
        )
        .unwrap();
        let want = cpu.attend(&cpu_keys, &q, false).unwrap();
        let on_device = q.to(&device, DType::BF16).unwrap();
        let got = gpu.attend(&keys, &on_device, false).unwrap();
        assert!(got.weights.is_none());
        common::assert_close(
            &format!("step {step}"),
            &got.context.to_vec_f32().unwrap(),
            &want.context.to_vec_f32().unwrap(),
            common::tolerance(DType::BF16),
        );
    }
}

/// The backward's shapes, as `SHAPES`: L 1, 7, 129 and 1000 (one chunk of keys per row, a
/// few, many), one and three queries per row, values apart or the keys themselves, odd sizes.
const BACKWARD_SHAPES: &[Shape] = &[
    (3, 1, 0, 7, 5, 0, 9),
    (3, 7, 3, 33, 17, 11, 13),
    (3, 129, 3, 65, 33, 0, 31),
    (3, 129, 0, 17, 9, 21, 5),
    (2, 1000, 0, 64, 48, 0, 40),
];

/// Relative to each gradient's largest magnitude. Looser than the forward's: the gradients
/// that feed cuBLAS pass through the storage dtype.
fn backward_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 | DType::BF16 => 2e-2,
    }
}

#[test]
fn backward_fused_and_naive_match_the_cpu_for_every_kind_and_dtype() {
    let Some(device) =
        common::cuda_or_skip("backward_fused_and_naive_match_the_cpu_for_every_kind_and_dtype")
    else {
        return;
    };
    let dir = common::scratch("attention_backward_cuda");
    for (s, &shape) in BACKWARD_SHAPES.iter().enumerate() {
        for kind in [Kind::Additive, Kind::General, Kind::Dot] {
            for dtype in DType::ALL {
                let seed = 50_000 + 1000 * s as u64 + 10 * kind as u64;
                let c = case(kind, shape, dtype, seed, &dir);
                let (b, tq) = (shape.0, shape.2);
                let dv = c.values.as_ref().unwrap_or(&c.keys).shape()[2];
                let context = if tq == 0 {
                    vec![b, dv]
                } else {
                    vec![b, tq, dv]
                };
                let n = context.iter().product();
                let grad = Tensor::from_vec(
                    common::rounded(common::random(n, 1.0, seed + 9), dtype),
                    &context,
                )
                .unwrap();
                let cpu = Attention::from_state_dict(&c.weights, &Device::Cpu, DType::F32).unwrap();
                let tol = backward_tolerance(dtype);
                for masked in [true, false] {
                    let lengths = masked.then_some(&c.lengths[..]);
                    let want = cpu
                        .backward(&c.keys, c.values.as_ref(), lengths, &c.query, &grad)
                        .unwrap();
                    // Unmasked, the inputs are already on the device in the dtype (read in place).
                    let moved = |t: &Tensor| t.to(&device, dtype).unwrap();
                    let on_device = (!masked).then(|| {
                        let v = c.values.as_ref().map(moved);
                        (moved(&c.query), moved(&c.keys), v, moved(&grad))
                    });
                    let (q, k, v, g) = match &on_device {
                        Some((q, k, v, g)) => (q, k, v.as_ref(), g),
                        None => (&c.query, &c.keys, c.values.as_ref(), &grad),
                    };
                    for algo in [Algo::Fused, Algo::Naive] {
                        let what = format!(
                            "{kind:?} {shape:?} {} {} masks={masked}",
                            dtype.name(),
                            algo.name()
                        );
                        let mut gpu =
                            Attention::from_state_dict(&c.weights, &device, dtype).unwrap();
                        gpu.set_algo(algo);
                        let got = gpu.backward(k, v, lengths, q, g).unwrap();
                        let check = |name: &str, got: &Tensor, want: &Tensor| {
                            let what = format!("{what} {name}");
                            assert_eq!(got.shape(), want.shape(), "{what}");
                            assert!(
                                got.is_cuda() && got.dtype() == dtype,
                                "{what}: not on the GPU in {dtype}"
                            );
                            common::assert_close(
                                &what,
                                &got.to_vec_f32().unwrap(),
                                &want.to_vec_f32().unwrap(),
                                tol,
                            );
                        };
                        check("d query", &got.query, &want.query);
                        check("d keys", &got.keys, &want.keys);
                        match (&got.values, &want.values) {
                            (Some(g), Some(w)) => check("d values", g, w),
                            (None, None) => {}
                            _ => panic!("{what}: d values present on one side only"),
                        }
                        let names = |p: &[(String, Tensor)]| -> Vec<String> {
                            p.iter().map(|(n, _)| n.clone()).collect()
                        };
                        assert_eq!(names(&got.params), names(&want.params), "{what}");
                        for ((name, g), (_, w)) in got.params.iter().zip(&want.params) {
                            check(name, g, w);
                        }
                    }
                }
            }
        }
    }
    // No persistent algorithm: a clear error, not a panic.
    let c = case(Kind::Dot, BACKWARD_SHAPES[1], DType::F32, 7, &dir);
    let mut gpu = Attention::from_state_dict(&c.weights, &device, DType::F32).unwrap();
    gpu.set_algo(Algo::Persistent);
    let grad = Tensor::from_vec(common::random(3 * 3 * 11, 1.0, 8), &[3, 3, 11]).unwrap();
    match gpu.backward(&c.keys, c.values.as_ref(), None, &c.query, &grad) {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("persistent"), "{e}"),
        other => panic!("expected an Unsupported error, got {:?}", other.map(|_| ())),
    }
}
