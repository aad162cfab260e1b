//! Recurrent forward, fused vs naive (and persistent) on CUDA and the CPU path.
//!   CUDA: RNN (H 256, 1024; B 1, 64; T 128) in every dtype; LSTM and GRU (H 256, 1024;
//!         B 1, 16, 256; T 128) in f32 and bf16.
//!   CUDA persistent vs fused vs naive, f32 and bf16: LSTM H 768 B 16 T 1024, LSTM H 1024 B 1
//!         T 256, GRU H 512 B 8 T 512, tanh RNN H 1024 B 4 T 1000.
//!   CPU:  RNN H 256, B 1 and 64, T 128; LSTM and GRU H 256, B 32, T 100.
//! Names: {fused|naive|cpu}_{op}_{dtype}/H{h}_B{b}_T{t}; throughput is in timesteps. Without a
//! GPU the CUDA groups print why and are skipped.

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use fused_rnn::nn::{Gru, GruConfig, Lstm, LstmConfig, Rnn, RnnConfig};
use fused_rnn::{Algo, DType, Device, Tensor};
use std::time::Duration;

mod common;

#[derive(Clone, Copy)]
enum Op {
    Rnn,
    Lstm,
    Gru,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Rnn => "rnn",
            Op::Lstm => "lstm",
            Op::Gru => "gru",
        }
    }

    /// A one-layer module with I = H, and a closure running its forward pass.
    fn forward(self, device: &Device, dtype: DType, h: usize, algo: Algo) -> Box<dyn Fn(&Tensor)> {
        match self {
            Op::Rnn => {
                let m = Rnn::random(RnnConfig::new(h, h), device, dtype, 1).unwrap();
                let m = m.with_algo(algo);
                Box::new(move |x| drop(m.forward(x, None, None).unwrap()))
            }
            Op::Lstm => {
                let m = Lstm::random(LstmConfig::new(h, h), device, dtype, 1).unwrap();
                let m = m.with_algo(algo);
                Box::new(move |x| drop(m.forward(x, None, None).unwrap()))
            }
            Op::Gru => {
                let m = Gru::random(GruConfig::new(h, h), device, dtype, 1).unwrap();
                let m = m.with_algo(algo);
                Box::new(move |x| drop(m.forward(x, None, None).unwrap()))
            }
        }
    }
}

fn input(device: &Device, dtype: DType, t: usize, b: usize, i: usize) -> Tensor {
    let x: Vec<f32> = (0..t * b * i)
        .map(|k| ((k * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect();
    Tensor::from_vec(x, &[t, b, i])
        .unwrap()
        .to(device, dtype)
        .unwrap()
}

fn cuda_group(
    c: &mut Criterion,
    device: &Device,
    op: Op,
    dtypes: &[DType],
    sizes: &[(usize, usize)],
    t: usize,
) {
    let cuda = device.as_cuda().unwrap().clone();
    let mut group = c.benchmark_group(format!("{}_forward_cuda ({})", op.name(), cuda.card()));
    common::gpu_settings(&mut group, Duration::from_millis(500));
    group.throughput(Throughput::Elements(t as u64));
    for &dtype in dtypes {
        for &(h, b) in sizes {
            let x = input(device, dtype, t, b, h);
            for algo in [Algo::Fused, Algo::Naive] {
                let forward = op.forward(device, dtype, h, algo);
                let id = BenchmarkId::new(
                    format!("{}_{}_{dtype}", algo.name(), op.name()),
                    format!("H{h}_B{b}_T{t}"),
                );
                group.bench_function(id, |bench| common::on_gpu(bench, &cuda, || forward(&x)));
            }
        }
    }
    group.finish();
}

fn cuda(c: &mut Criterion) {
    let Some((device, _)) = common::cuda_or_skip("the CUDA recurrent benchmarks") else {
        return;
    };
    let gated = [
        (256, 1),
        (256, 16),
        (256, 256),
        (1024, 1),
        (1024, 16),
        (1024, 256),
    ];
    let rnn = [(256, 1), (256, 64), (1024, 1), (1024, 64)];
    cuda_group(c, &device, Op::Rnn, &DType::ALL, &rnn, 128);
    let dtypes = [DType::F32, DType::BF16];
    cuda_group(c, &device, Op::Lstm, &dtypes, &gated, 128);
    cuda_group(c, &device, Op::Gru, &dtypes, &gated, 128);
}

/// The persistent kernel's shapes, persistent vs fused vs naive, in f32 and bf16.
fn persistent(c: &mut Criterion) {
    let Some((device, cuda)) = common::cuda_or_skip("the persistent benchmarks") else {
        return;
    };
    // FUSED_RNN_PERSISTENT picks a kernel variant; its runs are labelled with it.
    let variant = std::env::var("FUSED_RNN_PERSISTENT")
        .map(|v| format!(" [{v}]"))
        .unwrap_or_default();
    let mut group = c.benchmark_group(format!(
        "persistent_forward_cuda ({}){variant}",
        cuda.card()
    ));
    common::gpu_settings(&mut group, Duration::from_millis(500));
    let shapes = [
        (Op::Lstm, 768, 16, 1024),
        (Op::Lstm, 1024, 1, 256),
        (Op::Gru, 512, 8, 512),
        (Op::Rnn, 1024, 4, 1000),
    ];
    for (op, h, b, t) in shapes {
        group.throughput(Throughput::Elements(t as u64));
        for dtype in [DType::F32, DType::BF16] {
            let x = input(&device, dtype, t, b, h);
            for algo in [Algo::Persistent, Algo::Fused, Algo::Naive] {
                let forward = op.forward(&device, dtype, h, algo);
                let id = BenchmarkId::new(
                    format!("{}_{}_{dtype}", algo.name(), op.name()),
                    format!("H{h}_B{b}_T{t}"),
                );
                group.bench_function(id, |bench| common::on_gpu(bench, &cuda, || forward(&x)));
            }
        }
    }
    group.finish();
}

fn cpu_case(group: &mut BenchmarkGroup<'_, WallTime>, op: Op, h: usize, b: usize, t: usize) {
    let device = Device::Cpu;
    let x = input(&device, DType::F32, t, b, h);
    let forward = op.forward(&device, DType::F32, h, Algo::Auto);
    group.throughput(Throughput::Elements(t as u64));
    let id = BenchmarkId::new(format!("cpu_{}_f32", op.name()), format!("H{h}_B{b}_T{t}"));
    group.bench_function(id, |bench| bench.iter(|| forward(&x)));
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("recurrent_forward_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    cpu_case(&mut group, Op::Rnn, 256, 1, 128);
    cpu_case(&mut group, Op::Rnn, 256, 64, 128);
    cpu_case(&mut group, Op::Lstm, 256, 32, 100);
    cpu_case(&mut group, Op::Gru, 256, 32, 100);
    group.finish();
}

criterion_group!(benches, cuda, persistent, cpu);
criterion_main!(benches);
