//! Forward + backward through `forward_train` and `backward`:
//!   CPU: an LSTM (H 256, B 32, T 100, and H 1024, B 64, T 128 when FUSED_RNN_BENCH_LARGE=1,
//!   which takes minutes), and an attention step's backward (B 64, L 196, D 512, general
//!   scores). Names: cpu_{op}_train_f32/{shape}; throughput in time steps or queries.
//!   CUDA (when a GPU is present): LSTM and GRU at H 1024, B 64, T 128 and LSTM at H 256, B 32,
//!   T 100, fused vs naive backward, f32 and bf16. Names: {algo}_{op}_train_{dtype}/{shape}.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_rnn::io::{save_f32, TensorFile};
use fused_rnn::nn::{Attention, Gru, GruConfig, Lstm, LstmConfig};
use fused_rnn::{Algo, DType, Device, Tensor};
use std::time::Duration;

mod common;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|k| (((k + seed) * 7919 % 2003) as f32 / 1001.5 - 1.0) * 0.1)
        .collect()
}

fn lstm(c: &mut Criterion) {
    let mut group = c.benchmark_group("lstm_train_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let mut shapes = vec![(256, 32, 100)];
    if std::env::var("FUSED_RNN_BENCH_LARGE").is_ok_and(|v| v == "1") {
        shapes.push((1024, 64, 128));
    }
    for (h, b, t) in shapes {
        let layer = Lstm::random(LstmConfig::new(h, h), &Device::Cpu, DType::F32, 1).unwrap();
        let x = Tensor::from_vec(values(t * b * h, 3), &[t, b, h]).unwrap();
        let g = Tensor::from_vec(values(t * b * h, 5), &[t, b, h]).unwrap();
        group.throughput(Throughput::Elements(t as u64));
        let id = BenchmarkId::new("cpu_lstm_train_f32", format!("H{h}_B{b}_T{t}"));
        group.bench_function(id, |bench| {
            bench.iter(|| {
                let (_, reserve) = layer.forward_train(&x, None, None).unwrap();
                layer.backward(&reserve, &g, None, None).unwrap()
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    const D: usize = 512;
    let (b, l) = (64, 196);
    let path = std::env::temp_dir().join("fused-rnn-bench-training-attention.safetensors");
    let w = Tensor::from_vec(values(D * D, 1), &[D, D]).unwrap();
    save_f32(&path, &[("key_proj.weight", &w)]).unwrap();
    let layer =
        Attention::from_state_dict(&TensorFile::load(&path).unwrap(), &Device::Cpu, DType::F32)
            .unwrap();
    let keys = Tensor::from_vec(values(b * l * D, 7), &[b, l, D]).unwrap();
    let query = Tensor::from_vec(values(b * D, 11), &[b, D]).unwrap();
    let grad = Tensor::from_vec(values(b * D, 13), &[b, D]).unwrap();
    let mut group = c.benchmark_group("attention_train_cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(b as u64));
    let id = BenchmarkId::new("cpu_attention_general_train_f32", format!("B{b}_L{l}_D{D}"));
    group.bench_function(id, |bench| {
        bench.iter(|| layer.backward(&keys, None, None, &query, &grad).unwrap())
    });
    group.finish();
}

/// One training step's forward and backward on CUDA, fused vs naive.
fn recurrent_cuda(c: &mut Criterion) {
    let Some((device, cuda)) = common::cuda_or_skip("the CUDA training benchmarks") else {
        return;
    };
    let mut group = c.benchmark_group(format!("recurrent_train_cuda ({})", cuda.card()));
    common::gpu_settings(&mut group, Duration::from_millis(800));
    for (op, h, b, t) in [
        ("lstm", 1024, 64, 128),
        ("gru", 1024, 64, 128),
        ("lstm", 256, 32, 100),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let x = Tensor::from_vec(values(t * b * h, 3), &[t, b, h])
                .unwrap()
                .to(&device, dtype)
                .unwrap();
            let g = Tensor::from_vec(values(t * b * h, 5), &[t, b, h])
                .unwrap()
                .to(&device, dtype)
                .unwrap();
            group.throughput(Throughput::Elements(t as u64));
            for algo in [Algo::Fused, Algo::Naive] {
                let id = BenchmarkId::new(
                    format!("{}_{op}_train_{dtype}", algo.name()),
                    format!("H{h}_B{b}_T{t}"),
                );
                if op == "lstm" {
                    let layer = Lstm::random(LstmConfig::new(h, h), &device, dtype, 1)
                        .unwrap()
                        .with_algo(algo);
                    group.bench_function(id, |bench| {
                        common::on_gpu(bench, &cuda, || {
                            let (_, reserve) = layer.forward_train(&x, None, None).unwrap();
                            layer.backward(&reserve, &g, None, None).unwrap();
                        })
                    });
                } else {
                    let layer = Gru::random(GruConfig::new(h, h), &device, dtype, 1)
                        .unwrap()
                        .with_algo(algo);
                    group.bench_function(id, |bench| {
                        common::on_gpu(bench, &cuda, || {
                            let (_, reserve) = layer.forward_train(&x, None, None).unwrap();
                            layer.backward(&reserve, &g, None).unwrap();
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, lstm, attention, recurrent_cuda);
criterion_main!(benches);
