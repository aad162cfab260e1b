//! The show-attend-tell decoder on the CPU at the CPU size (B 32, L 49, D 128,
//! A = H = E = 128, V 1000, T 16; caption lengths 2 + 7b mod 15, row 0 at 16, as
//! `scripts/torch_decoder_bench.py` uses):
//!   cpu_decoder_train_step_f32: teacher-forced forward, loss (cross-entropy + attention
//!     penalty), backward and Adam: one training step of `models::Captioner` on features;
//!   cpu_decoder_greedy_f32 / cpu_decoder_beam3_f32: decoding 15 tokens for 32 images.
//! Compare with `python3 scripts/torch_decoder_bench.py --threads 2` (and `--greedy`).
//! On CUDA (when a GPU is present) at B 64, L 196, D 512, A = H = E = 512, V 10000, T 20, all
//! captions full length, f32: {fused|naive}_decoder_train_step_f32 (as above, on the device)
//! and {fused|naive}_decoder_greedy_f32 (up to 19 tokens for 64 images); compare with
//! `python3 scripts/torch_decoder_bench.py --device cuda --large --full-length` (and `--greedy`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_rnn::models::{Captioner, CaptionerConfig, Input, Vocab};
use fused_rnn::nn::{AttentionActivation, EncoderLayers};
use fused_rnn::train::Adam;
use fused_rnn::{Algo, DType, Device, Indices, Tensor};
use std::time::Duration;

mod common;

const B: usize = 32;
const L: usize = 49;
const D: usize = 128;
const H: usize = 128;
const V: usize = 1000;
const T: usize = 16;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|k| ((k + seed) * 7919 % 2003) as f32 / 1001.5 - 1.0)
        .collect()
}

fn decoder(c: &mut Criterion) {
    let vocab = Vocab::new((4..V).map(|w| format!("w{w}"))).unwrap();
    let config = CaptionerConfig {
        image: None,
        encoder: EncoderLayers::default(),
        features: D,
        attention: H,
        hidden: H,
        embed: H,
        activation: AttentionActivation::Relu,
        dropout: 0.0,
    };
    let mut model = Captioner::random(config, vocab, &Device::Cpu, DType::F32, 1).unwrap();
    let features = Tensor::from_vec(values(B * L * D, 3), &[B, L, D]).unwrap();
    let mut lengths: Vec<usize> = (0..B).map(|b| 2 + 7 * b % (T - 1)).collect();
    lengths[0] = T;
    let ids: Vec<usize> = (0..B * T)
        .map(|k| if k % T == 0 { 1 } else { 4 + k * 31 % (V - 4) })
        .collect();
    let captions = Indices::from_usize(&ids, &[B, T]).unwrap();
    let tokens: usize = lengths.iter().map(|n| n - 1).sum();
    let mut adam = Adam::new(4e-4);
    let size = format!("B{B}_L{L}_D{D}_H{H}_V{V}_T{T}");

    let mut group = c.benchmark_group("decoder_cpu");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function(
        BenchmarkId::new("cpu_decoder_train_step_f32", &size),
        |bench| {
            bench.iter(|| {
                model
                    .train_step(
                        Input::Features(&features),
                        &captions,
                        &lengths,
                        &mut adam,
                        1.0,
                        None,
                    )
                    .unwrap()
            })
        },
    );
    group.throughput(Throughput::Elements(B as u64));
    for beam in [1, 3] {
        let name = match beam {
            1 => "cpu_decoder_greedy_f32".to_string(),
            k => format!("cpu_decoder_beam{k}_f32"),
        };
        group.bench_function(BenchmarkId::new(name, &size), |bench| {
            bench.iter(|| {
                model
                    .caption(Input::Features(&features), T - 1, beam)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn decoder_cuda(c: &mut Criterion) {
    let Some((device, cuda)) = common::cuda_or_skip("the CUDA decoder benchmarks") else {
        return;
    };
    let (b, l, d, h, v, t) = (64, 196, 512, 512, 10_000, 20);
    let vocab = Vocab::new((4..v).map(|w| format!("w{w}"))).unwrap();
    let config = CaptionerConfig {
        image: None,
        encoder: EncoderLayers::default(),
        features: d,
        attention: h,
        hidden: h,
        embed: h,
        activation: AttentionActivation::Relu,
        dropout: 0.0,
    };
    let features = Tensor::from_vec(values(b * l * d, 3), &[b, l, d])
        .unwrap()
        .to(&device, DType::F32)
        .unwrap();
    let lengths = vec![t; b];
    let ids: Vec<usize> = (0..b * t)
        .map(|k| if k % t == 0 { 1 } else { 4 + k * 31 % (v - 4) })
        .collect();
    let captions = Indices::from_usize(&ids, &[b, t]).unwrap();
    let size = format!("B{b}_L{l}_D{d}_H{h}_V{v}_T{t}");
    let mut group = c.benchmark_group(format!("decoder_cuda ({})", cuda.card()));
    common::gpu_settings(&mut group, Duration::from_secs(2));
    group.throughput(Throughput::Elements((b * (t - 1)) as u64));
    for algo in [Algo::Fused, Algo::Naive] {
        let mut model = Captioner::random(config.clone(), vocab.clone(), &device, DType::F32, 1)
            .unwrap()
            .with_algo(algo);
        let mut adam = Adam::new(4e-4);
        let id = BenchmarkId::new(format!("{}_decoder_train_step_f32", algo.name()), &size);
        group.bench_function(id, |bench| {
            common::on_gpu(bench, &cuda, || {
                model
                    .train_step(
                        Input::Features(&features),
                        &captions,
                        &lengths,
                        &mut adam,
                        1.0,
                        None,
                    )
                    .unwrap();
            })
        });
    }
    group.throughput(Throughput::Elements(b as u64));
    for algo in [Algo::Fused, Algo::Naive] {
        let model = Captioner::random(config.clone(), vocab.clone(), &device, DType::F32, 1)
            .unwrap()
            .with_algo(algo);
        let id = BenchmarkId::new(format!("{}_decoder_greedy_f32", algo.name()), &size);
        group.bench_function(id, |bench| {
            common::on_gpu(bench, &cuda, || {
                model.caption(Input::Features(&features), t - 1, 1).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decoder, decoder_cuda);
criterion_main!(benches);
