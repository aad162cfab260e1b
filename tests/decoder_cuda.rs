//! The attention decoder on CUDA against the CPU, fused and naive, in every storage dtype, on
//! the PyTorch fixtures' cases (odd sizes, L = 1 to 196, V to 1000, key masks, captions that end
//! early): teacher-forced logits and attention, every gradient, and greedy and beam decoding on
//! the device. Outputs are NaN-poisoned before the kernels write
//! them. Skips without a GPU (fails instead under FUSED_RNN_REQUIRE_GPU=1).

mod common;

use common::{assert_close, tolerance};
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{AttentionDecoder, Module};
use fused_rnn::{Algo, DType, Device, Indices, Tensor};

struct Case {
    name: String,
    decoder: TensorFile,
    features: Tensor,
    key_lengths: Option<Vec<usize>>,
    captions: (Vec<i32>, Vec<usize>),
    lengths: Vec<usize>,
    grad_alphas: bool,
}

fn cases() -> Vec<Case> {
    let mut dirs: Vec<_> = std::fs::read_dir(common::fixtures("decoder"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let input = TensorFile::load(dir.join("input.safetensors")).unwrap();
            let ints = |n: &str| -> Option<Vec<usize>> {
                input.contains(n).then(|| {
                    input
                        .ints(n)
                        .unwrap()
                        .0
                        .iter()
                        .map(|&v| v as usize)
                        .collect()
                })
            };
            let (ids, shape) = input.ints("captions").unwrap();
            Case {
                name: dir.file_name().unwrap().to_string_lossy().into(),
                decoder: TensorFile::load(dir.join("weights.safetensors")).unwrap(),
                features: input.float("features").unwrap(),
                key_lengths: ints("key_lengths"),
                captions: (ids.iter().map(|&v| v as i32).collect(), shape),
                lengths: ints("lengths").unwrap(),
                grad_alphas: input.contains("grad_alphas"),
            }
        })
        .collect()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

#[test]
fn cuda_matches_the_cpu_in_every_dtype() {
    let Some(gpu) = common::cuda_or_skip("decoder_cuda") else {
        return;
    };
    for case in cases() {
        for (dtype, algo) in DType::ALL
            .into_iter()
            .flat_map(|d| [Algo::Fused, Algo::Naive].map(move |a| (d, a)))
        {
            let what = format!("{} {dtype} {}", case.name, algo.name());
            let tol = tolerance(dtype).max(1e-4);
            let cpu =
                AttentionDecoder::from_state_dict(&case.decoder, "", &Device::Cpu, dtype).unwrap();
            let cuda = AttentionDecoder::from_state_dict(&case.decoder, "", &gpu, dtype)
                .unwrap()
                .with_algo(algo);
            let f_cpu = case.features.to(&Device::Cpu, dtype).unwrap();
            let f_gpu = case.features.to(&gpu, dtype).unwrap();
            let captions = Indices::from_vec(case.captions.0.clone(), &case.captions.1).unwrap();
            let keys = case.key_lengths.as_deref();
            let a = cpu
                .forward(&f_cpu, keys, &captions, &case.lengths, true)
                .unwrap();
            let b = cuda
                .forward(&f_gpu, keys, &captions, &case.lengths, true)
                .unwrap();
            assert!(b.logits.is_cuda() && b.logits.dtype() == dtype, "{what}");
            assert_close(
                &format!("{what}: logits"),
                &host(&b.logits),
                &host(&a.logits),
                tol,
            );
            assert_close(
                &format!("{what}: alphas"),
                &host(&b.alphas),
                &host(&a.alphas),
                tol,
            );

            let shape = a.logits.shape().to_vec();
            let n: usize = shape.iter().product();
            let grad = Tensor::from_vec(common::random(n, 1.0, 7), &shape).unwrap();
            let galpha_shape = a.alphas.shape().to_vec();
            let ga = Tensor::from_vec(
                common::random(galpha_shape.iter().product(), 1.0, 8),
                &galpha_shape,
            )
            .unwrap();
            let ga = case.grad_alphas.then_some(&ga);
            let on = |t: &Tensor, d: &Device| t.to(d, dtype).unwrap();
            let ga_cpu = ga.map(|g| on(g, &Device::Cpu));
            let ga_gpu = ga.map(|g| on(g, &gpu));
            let ga_ = cpu
                .backward(
                    a.saved.as_ref().unwrap(),
                    &on(&grad, &Device::Cpu),
                    ga_cpu.as_ref(),
                )
                .unwrap();
            let gb = cuda
                .backward(b.saved.as_ref().unwrap(), &on(&grad, &gpu), ga_gpu.as_ref())
                .unwrap();
            assert_close(
                &format!("{what}: features.grad"),
                &host(&gb.features),
                &host(&ga_.features),
                tol,
            );
            for ((name, _), (x, y)) in cpu
                .parameters()
                .into_iter()
                .zip(ga_.params.iter().zip(&gb.params))
            {
                if name == "attention.full_att.bias" {
                    // Zero but for rounding on both sides.
                    assert!(host(y)[0].abs() < 1e-3, "{what}: {name}");
                    continue;
                }
                assert_close(&format!("{what}: {name}.grad"), &host(y), &host(x), tol);
            }

            // The device search finds the CPU's captions (f32; the fixtures' margins are far
            // above its rounding), with their scores and attention.
            for beam in [1, 3] {
                let search = cpu.search(6, beam).unwrap();
                let x = cpu.decode(&f_cpu, keys, search).unwrap();
                let y = cuda.decode(&f_gpu, keys, search).unwrap();
                assert!(y.alphas.is_cuda() && y.scores.iter().all(|s| s.is_finite()));
                if dtype == DType::F32 {
                    assert_eq!(x.tokens, y.tokens, "{what}: beam {beam} tokens");
                    let (ys, xs) = (&y.scores, &x.scores);
                    assert_close(&format!("{what}: beam {beam} scores"), ys, xs, tol);
                    let (ya, xa) = (host(&y.alphas), host(&x.alphas));
                    assert_close(&format!("{what}: beam {beam} alphas"), &ya, &xa, tol);
                }
            }
        }
    }
    gpu.as_cuda().unwrap().check_errors().unwrap();
}
