//! RNN forward, fused vs naive on CUDA (H 256 and 1024, B 1 and 64, T 128, every dtype) and the
//! CPU path. Names: {fused|naive|cpu}_rnn_{dtype}/H{h}_B{b}_T{t}. Throughput is in timesteps.
//! Without a GPU the CUDA group prints why and is skipped.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_rnn::nn::{Rnn, RnnConfig};
use fused_rnn::{Algo, DType, Device, Tensor};
use std::time::{Duration, Instant};

const T: usize = 128;

fn input(device: &Device, dtype: DType, b: usize, i: usize) -> Tensor {
    let x: Vec<f32> = (0..T * b * i)
        .map(|k| ((k * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect();
    Tensor::from_vec(x, &[T, b, i])
        .unwrap()
        .to(device, dtype)
        .unwrap()
}

fn cuda(c: &mut Criterion) {
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping the CUDA RNN benchmarks: {e}");
            return;
        }
    };
    let cuda = device.as_cuda().unwrap().clone();
    let mut group = c.benchmark_group(format!("rnn_forward_cuda ({})", cuda.card()));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    for dtype in DType::ALL {
        for h in [256, 1024] {
            for b in [1, 64] {
                let x = input(&device, dtype, b, h);
                group.throughput(Throughput::Elements(T as u64));
                for algo in [Algo::Fused, Algo::Naive] {
                    let rnn = Rnn::random(RnnConfig::new(h, h), &device, dtype, 1)
                        .unwrap()
                        .with_algo(algo);
                    let id = BenchmarkId::new(
                        format!("{}_rnn_{dtype}", algo.name()),
                        format!("H{h}_B{b}_T{T}"),
                    );
                    group.bench_function(id, |bench| {
                        bench.iter_custom(|iters| {
                            cuda.synchronize().unwrap();
                            let start = Instant::now();
                            for _ in 0..iters {
                                rnn.forward(&x, None, None).unwrap();
                            }
                            cuda.synchronize().unwrap();
                            start.elapsed()
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn cpu(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("rnn_forward_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for (h, b) in [(256, 1), (256, 64)] {
        let x = input(&device, DType::F32, b, h);
        let rnn = Rnn::random(RnnConfig::new(h, h), &device, DType::F32, 1).unwrap();
        group.throughput(Throughput::Elements(T as u64));
        let id = BenchmarkId::new("cpu_rnn_f32", format!("H{h}_B{b}_T{T}"));
        group.bench_function(id, |bench| {
            bench.iter(|| rnn.forward(&x, None, None).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, cuda, cpu);
criterion_main!(benches);
