//! The CUDA training helpers against the CPU ones: Adam and AdamW over several steps (16-bit
//! parameters through their f32 master weights), gradient clipping, and the softmax
//! cross-entropy, for every dtype on odd sizes, with NaN-poisoned outputs. GPU tests skip with a
//! printed reason without a GPU (fail instead under FUSED_RNN_REQUIRE_GPU=1); the argument
//! checks run everywhere.

mod common;

use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Tensor};

/// Parameter shapes of the multi-tensor tests: a scalar, sizes that end mid-chunk, a matrix.
const SHAPES: &[&[usize]] = &[&[1], &[37], &[1001], &[3, 5]];
const IGNORE: i64 = -100;

fn host(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap()
}

fn on(dev: &Device, values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    host(values, shape).to(dev, dtype).unwrap()
}

/// Checks that `got` is `reference` rounded to `dtype`: within half a unit in the last place,
/// plus `slack` (relative) for a reference that differs from the GPU's f32 value by rounding.
fn assert_rounded(what: &str, got: &[f32], reference: &[f32], dtype: DType, slack: f32) {
    let half_ulp = match dtype {
        DType::F32 => 0.0,
        DType::F16 => 2f32.powi(-11),
        DType::BF16 => 2f32.powi(-8),
    };
    assert_eq!(got.len(), reference.len(), "{what}: length differs");
    for (k, (g, r)) in got.iter().zip(reference).enumerate() {
        let allowed = r.abs() * (half_ulp + slack) + 1e-7;
        assert!(
            (g - r).abs() <= allowed,
            "{what}: element {k}: got {g}, expected {r} rounded to {dtype} (allowed {allowed:e})"
        );
    }
}

/// Runs `steps` Adam steps on CUDA and on the CPU from the same values and gradients, then
/// replaces every parameter by a new buffer and runs `steps` more; compares after each half.
/// The new values lie far from the old ones, so every 16-bit parameter differs from its
/// master's rounding and the master must be read from it again (one that still matched would
/// keep its master).
fn adam_case(dev: &Device, dtype: DType, decoupled: bool, steps: u64) {
    let what = format!("{} {dtype}", if decoupled { "AdamW" } else { "Adam" });
    let make = |lr| {
        let mut adam = if decoupled {
            Adam::adamw(lr)
        } else {
            Adam::new(lr)
        };
        adam.weight_decay = 0.02;
        adam
    };
    let (mut gpu_adam, mut cpu_adam) = (make(0.01), make(0.01));
    let mut seed = 100;
    let mut fresh = |scale: f32, offset: f32| -> Vec<Vec<f32>> {
        SHAPES
            .iter()
            .map(|s| {
                seed += 1;
                let values = common::random(s.iter().product(), scale, seed);
                common::rounded(values.into_iter().map(|x| x + offset).collect(), dtype)
            })
            .collect()
    };
    for round in 0..2 {
        let start = fresh(1.0, 3.0 * round as f32);
        let mut gpu: Vec<Tensor> = start
            .iter()
            .zip(SHAPES)
            .map(|(v, s)| on(dev, v, s, dtype))
            .collect();
        let mut cpu: Vec<Tensor> = start.iter().zip(SHAPES).map(|(v, s)| host(v, s)).collect();
        for _ in 0..steps {
            let grads = fresh(0.5, 0.0);
            let gpu_grads: Vec<Tensor> = grads
                .iter()
                .zip(SHAPES)
                .map(|(v, s)| on(dev, v, s, dtype))
                .collect();
            let cpu_grads: Vec<Tensor> =
                grads.iter().zip(SHAPES).map(|(v, s)| host(v, s)).collect();
            let mut p: Vec<&mut Tensor> = gpu.iter_mut().collect();
            gpu_adam
                .step(&mut p, &gpu_grads.iter().collect::<Vec<_>>())
                .unwrap();
            let mut p: Vec<&mut Tensor> = cpu.iter_mut().collect();
            cpu_adam
                .step(&mut p, &cpu_grads.iter().collect::<Vec<_>>())
                .unwrap();
        }
        for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            let reference = c.to_vec_f32().unwrap();
            let stored = g.to_vec_f32().unwrap();
            let label = format!("{what}, round {round}, parameter {k}");
            match gpu_adam.master_weights(k).unwrap() {
                Some(master) => {
                    assert_ne!(dtype, DType::F32, "{label}: f32 has no master weights");
                    assert_rounded(
                        &format!("{label} master"),
                        &master,
                        &reference,
                        DType::F32,
                        2e-6,
                    );
                    assert_rounded(&label, &stored, &reference, dtype, 2e-6);
                }
                None => {
                    assert_eq!(dtype, DType::F32, "{label}: 16-bit needs master weights");
                    assert_rounded(&label, &stored, &reference, DType::F32, 2e-6);
                }
            }
        }
    }
}

#[test]
fn adam_and_adamw_match_the_cpu_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("adam_and_adamw_match_the_cpu_for_every_dtype") else {
        return;
    };
    for dtype in DType::ALL {
        for decoupled in [false, true] {
            adam_case(&dev, dtype, decoupled, 3);
        }
    }
}

#[test]
fn adam_on_cuda_checks_its_arguments() {
    let Some(dev) = common::cuda_or_skip("adam_on_cuda_checks_its_arguments") else {
        return;
    };
    let values = common::random(37, 1.0, 1);
    let mut p = on(&dev, &values, &[37], DType::BF16);
    let g32 = on(&dev, &values, &[37], DType::F32);
    let mut adam = Adam::new(0.1);
    let err = adam.step(&mut [&mut p], &[&g32]).unwrap_err();
    assert!(err.to_string().contains("dtype"), "{err}");
    let g = on(&dev, &values[..36], &[36], DType::BF16);
    assert!(adam.step(&mut [&mut p], &[&g]).is_err(), "wrong shape");
    let cpu_grad = host(&values, &[37]);
    assert!(
        adam.step(&mut [&mut p], &[&cpu_grad]).is_err(),
        "CPU gradient"
    );
    assert_eq!(adam.master_weights(0).unwrap(), None, "no step was taken");

    let g = on(&dev, &values, &[37], DType::BF16);
    adam.step(&mut [&mut p], &[&g]).unwrap();
    assert!(adam.master_weights(1).is_err(), "one parameter");
    let mut q = on(&dev, &values, &[37], DType::BF16);
    assert!(
        adam.step(&mut [&mut p, &mut q], &[&g, &g]).is_err(),
        "the parameters changed"
    );
    let mut cpu_param = host(&values, &[37]);
    assert!(
        adam.step(&mut [&mut cpu_param], &[&cpu_grad]).is_err(),
        "a CUDA Adam given CPU tensors"
    );
    let mut cpu_adam = Adam::new(0.1);
    cpu_adam.step(&mut [&mut cpu_param], &[&cpu_grad]).unwrap();
    assert!(
        cpu_adam.step(&mut [&mut p], &[&g]).is_err(),
        "a CPU Adam given CUDA tensors"
    );
}

#[test]
fn clipping_matches_the_cpu_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("clipping_matches_the_cpu_for_every_dtype") else {
        return;
    };
    // The last shape has more chunks than the norm's grid has blocks.
    let shapes: Vec<&[usize]> = SHAPES.iter().copied().chain([&[3_000_001][..]]).collect();
    for dtype in DType::ALL {
        for max_norm in [1e6, 0.5] {
            let values: Vec<Vec<f32>> = shapes
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    common::rounded(common::random(s.iter().product(), 0.01, k as u64), dtype)
                })
                .collect();
            let mut gpu: Vec<Tensor> = values
                .iter()
                .zip(&shapes)
                .map(|(v, s)| on(&dev, v, s, dtype))
                .collect();
            let mut cpu: Vec<Tensor> = values
                .iter()
                .zip(&shapes)
                .map(|(v, s)| host(v, s))
                .collect();
            let gpu_norm =
                clip_grad_norm(&mut gpu.iter_mut().collect::<Vec<_>>(), max_norm).unwrap();
            let cpu_norm =
                clip_grad_norm(&mut cpu.iter_mut().collect::<Vec<_>>(), max_norm).unwrap();
            let what = format!("{dtype}, max_norm {max_norm}");
            assert!(
                (gpu_norm - cpu_norm).abs() <= 1e-6 * cpu_norm,
                "{what}: norm {gpu_norm}, expected {cpu_norm}"
            );
            for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                let reference = c.to_vec_f32().unwrap();
                let got = g.to_vec_f32().unwrap();
                assert_rounded(
                    &format!("{what}, gradient {k}"),
                    &got,
                    &reference,
                    dtype,
                    2e-6,
                );
            }
        }
    }
}

/// `n` targets in 0..vocab, every third one ignored (all of them when `all_ignored`).
fn targets(n: usize, vocab: usize, all_ignored: bool, seed: u64) -> Vec<i64> {
    common::random(n, 1.0, seed)
        .iter()
        .enumerate()
        .map(|(r, x)| {
            if all_ignored || r % 3 == 1 {
                IGNORE
            } else {
                (((x + 1.0) / 2.0 * vocab as f32) as i64).min(vocab as i64 - 1)
            }
        })
        .collect()
}

#[test]
fn cross_entropy_matches_the_cpu_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("cross_entropy_matches_the_cpu_for_every_dtype") else {
        return;
    };
    let cases = [
        (5, 1, false),
        (7, 7, false),
        (5, 1000, false),
        (3, 5003, false),
        (4, 7, true),
    ];
    for dtype in DType::ALL {
        for (k, &(n, vocab, all_ignored)) in cases.iter().enumerate() {
            let what = format!("{dtype}, [{n}, {vocab}], all ignored: {all_ignored}");
            let logits = common::rounded(common::random(n * vocab, 3.0, 10 + k as u64), dtype);
            let t = targets(n, vocab, all_ignored, 20 + k as u64);
            let cpu = softmax_cross_entropy(&host(&logits, &[n, vocab]), &t, IGNORE).unwrap();
            let gpu_logits = on(&dev, &logits, &[n, vocab], dtype);
            let gpu = softmax_cross_entropy(&gpu_logits, &t, IGNORE).unwrap();
            assert_eq!(gpu.rows, cpu.rows, "{what}: rows");
            assert!(gpu.grad.is_cuda() && gpu.grad.dtype() == dtype, "{what}");
            assert_eq!(gpu.grad.shape(), &[n, vocab], "{what}");
            assert!(
                (gpu.value - cpu.value).abs() <= 1e-5 * cpu.value.abs().max(1.0),
                "{what}: loss {}, expected {}",
                gpu.value,
                cpu.value
            );
            let reference = cpu.grad.to_vec_f32().unwrap();
            let got = gpu.grad.to_vec_f32().unwrap();
            assert_rounded(&format!("{what}: gradient"), &got, &reference, dtype, 1e-5);
            for (r, &target) in t.iter().enumerate() {
                if target == IGNORE {
                    assert!(got[r * vocab..(r + 1) * vocab].iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}

#[test]
fn cross_entropy_checks_targets_before_any_kernel() {
    let logits = host(&common::random(3 * 4, 1.0, 3), &[3, 4]);
    let gpu = common::cuda_or_skip("cross_entropy_checks_targets_before_any_kernel")
        .map(|dev| logits.to(&dev, DType::BF16).unwrap());
    for x in [Some(&logits), gpu.as_ref()].into_iter().flatten() {
        for bad in [[0, 4, IGNORE], [-1, 0, 0], [0, 0, -99]] {
            let err = softmax_cross_entropy(x, &bad, IGNORE)
                .err()
                .expect("an error");
            assert!(err.to_string().contains("outside 0..4"), "{err}");
        }
        assert!(
            softmax_cross_entropy(x, &[0, 1], IGNORE).is_err(),
            "2 targets for 3 rows"
        );
        let flat = host(&common::random(4, 1.0, 4), &[4]);
        assert!(
            softmax_cross_entropy(&flat, &[0], IGNORE).is_err(),
            "rank 1"
        );
    }
}

#[test]
fn clipping_and_adam_check_their_arguments_on_the_cpu() {
    let mut p = host(&common::random(5, 1.0, 5), &[5]);
    let g = host(&common::random(4, 1.0, 6), &[4]);
    let mut adam = Adam::new(0.1);
    assert!(
        adam.step(&mut [&mut p], &[]).is_err(),
        "1 parameter, 0 gradients"
    );
    assert!(adam.step(&mut [&mut p], &[&g]).is_err(), "shapes differ");
    assert_eq!(
        adam.master_weights(0).unwrap(),
        None,
        "the CPU keeps no masters"
    );
    let mut half = Tensor::from_f32(&common::random(4, 1.0, 7), &[4], DType::F16).unwrap();
    assert!(
        clip_grad_norm(&mut [&mut half], 1.0).is_err(),
        "the CPU takes f32 gradients"
    );
    assert_eq!(clip_grad_norm(&mut [], 1.0).unwrap(), 0.0);
}
