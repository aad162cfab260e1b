//! One attention decoding step (one query per row over precomputed keys), fused vs naive on
//! CUDA and the CPU reference: B 1 and 64, L 196 and 1000, D = Dq = Dk = Dv = A = 512, for the
//! additive, general and dot scores; CUDA in f32 and bf16.
//! Names: {fused|naive|cpu}_attention_{kind}_{dtype}/B{b}_L{l}_D{d}; throughput is in queries.
//! The backward (`attention_backward_cuda`): every gradient of one query per row, keys as the
//! values, B = 64, L = 196, D = 512, fused vs naive, named
//! {fused|naive}_attention_backward_{kind}_{dtype}/B64_L196_D512.
//! Without a GPU the CUDA groups print why and are skipped.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_rnn::io::{save_f32, TensorFile};
use fused_rnn::nn::Attention;
use fused_rnn::{Algo, DType, Device, Tensor};
use std::time::Duration;

mod common;

const D: usize = 512;
const KINDS: [&str; 3] = ["additive", "general", "dot"];
const SIZES: [(usize, usize); 4] = [(1, 196), (1, 1000), (64, 196), (64, 1000)];

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|k| (((k + seed) * 7919 % 2003) as f32 / 1001.5 - 1.0) * 0.1)
        .collect()
}

/// A state_dict of `kind` with every size D, written once to the temp directory (the kind is
/// inferred from the tensors present).
fn weights(kind: &str) -> TensorFile {
    let path = std::env::temp_dir().join(format!("fused-rnn-bench-attention-{kind}.safetensors"));
    let t = |shape: &[usize], seed| {
        Tensor::from_vec(values(shape.iter().product(), seed), shape).unwrap()
    };
    let (wq, bq, wk, bk, v) = (
        t(&[D, D], 1),
        t(&[D], 2),
        t(&[D, D], 3),
        t(&[D], 4),
        t(&[1, D], 5),
    );
    let tensors: Vec<(&str, &Tensor)> = match kind {
        "additive" => vec![
            ("query_proj.weight", &wq),
            ("query_proj.bias", &bq),
            ("key_proj.weight", &wk),
            ("key_proj.bias", &bk),
            ("score.weight", &v),
        ],
        "general" => vec![("key_proj.weight", &wk)],
        _ => vec![],
    };
    save_f32(&path, &tensors).unwrap();
    TensorFile::load(&path).unwrap()
}

fn inputs(device: &Device, dtype: DType, b: usize, l: usize) -> (Tensor, Tensor) {
    let keys = Tensor::from_vec(values(b * l * D, 7), &[b, l, D]).unwrap();
    let query = Tensor::from_vec(values(b * D, 11), &[b, D]).unwrap();
    (
        keys.to(device, dtype).unwrap(),
        query.to(device, dtype).unwrap(),
    )
}

fn cuda(c: &mut Criterion) {
    let Some((device, cuda)) = common::cuda_or_skip("the CUDA attention benchmarks") else {
        return;
    };
    let mut group = c.benchmark_group(format!("attention_step_cuda ({})", cuda.card()));
    common::gpu_settings(&mut group, Duration::from_millis(300));
    for kind in KINDS {
        let file = weights(kind);
        for dtype in [DType::F32, DType::BF16] {
            for (b, l) in SIZES {
                let (keys, query) = inputs(&device, dtype, b, l);
                let lengths: Vec<usize> = (0..b).map(|i| l - (i * 37) % l).collect();
                group.throughput(Throughput::Elements(b as u64));
                for algo in [Algo::Fused, Algo::Naive] {
                    let mut layer = Attention::from_state_dict(&file, &device, dtype).unwrap();
                    layer.set_algo(algo);
                    let prepared = layer.keys(&keys, None, Some(&lengths)).unwrap();
                    let id = BenchmarkId::new(
                        format!("{}_attention_{kind}_{dtype}", algo.name()),
                        format!("B{b}_L{l}_D{D}"),
                    );
                    group.bench_function(id, |bench| {
                        common::on_gpu(bench, &cuda, || {
                            drop(layer.attend(&prepared, &query, false).unwrap())
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn cuda_backward(c: &mut Criterion) {
    let Some((device, cuda)) = common::cuda_or_skip("the CUDA attention backward benchmarks")
    else {
        return;
    };
    let mut group = c.benchmark_group(format!("attention_backward_cuda ({})", cuda.card()));
    common::gpu_settings(&mut group, Duration::from_millis(300));
    let (b, l) = (64, 196);
    let lengths: Vec<usize> = (0..b).map(|i| l - (i * 37) % l).collect();
    for kind in KINDS {
        let file = weights(kind);
        for dtype in [DType::F32, DType::BF16] {
            let (keys, query) = inputs(&device, dtype, b, l);
            let grad = Tensor::from_vec(values(b * D, 13), &[b, D])
                .unwrap()
                .to(&device, dtype)
                .unwrap();
            group.throughput(Throughput::Elements(b as u64));
            for algo in [Algo::Fused, Algo::Naive] {
                let mut layer = Attention::from_state_dict(&file, &device, dtype).unwrap();
                layer.set_algo(algo);
                let id = BenchmarkId::new(
                    format!("{}_attention_backward_{kind}_{dtype}", algo.name()),
                    format!("B{b}_L{l}_D{D}"),
                );
                group.bench_function(id, |bench| {
                    common::on_gpu(bench, &cuda, || {
                        drop(
                            layer
                                .backward(&keys, None, Some(&lengths), &query, &grad)
                                .unwrap(),
                        )
                    })
                });
            }
        }
    }
    group.finish();
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_step_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for kind in KINDS {
        let layer = Attention::from_state_dict(&weights(kind), &Device::Cpu, DType::F32).unwrap();
        for (b, l) in SIZES {
            let (keys, query) = inputs(&Device::Cpu, DType::F32, b, l);
            let prepared = layer.keys(&keys, None, None).unwrap();
            group.throughput(Throughput::Elements(b as u64));
            let id = BenchmarkId::new(
                format!("cpu_attention_{kind}_f32"),
                format!("B{b}_L{l}_D{D}"),
            );
            group.bench_function(id, |bench| {
                bench.iter(|| layer.attend(&prepared, &query, false).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, cuda, cuda_backward, cpu);
criterion_main!(benches);
