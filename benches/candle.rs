//! candle-nn's LSTM and GRU against fused-rnn's drop-in ones, both on candle tensors: `seq`
//! (with `states_to_tensor`) at T 100, B 32, I = H 256 on the CPU, and a training step
//! (forward and candle's `backward()`) at the same size. Names: {candle_nn|fused}_{op}_{pass};
//! throughput is in timesteps.

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::RNN;
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const T: usize = 100;
const B: usize = 32;
const H: usize = 256;

/// candle-nn's layer and ours over the same variables.
fn layers<L1: RNN, L2: RNN>(
    theirs: impl Fn(VarBuilder) -> candle_core::Result<L1>,
    ours: impl Fn(VarBuilder) -> candle_core::Result<L2>,
) -> (L1, L2, VarMap) {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let a = theirs(vb.pp("rnn")).unwrap();
    let b = ours(vb.pp("rnn")).unwrap();
    (a, b, map)
}

fn bench_one<L: RNN>(c: &mut Criterion, name: &str, layer: &L, x: &Tensor, train: bool) {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(T as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    group.bench_function(format!("H{H}_B{B}_T{T}"), |bench| {
        bench.iter(|| {
            let hs = layer.states_to_tensor(&layer.seq(x).unwrap()).unwrap();
            if train {
                drop(hs.sum_all().unwrap().backward().unwrap());
            }
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let x = Tensor::randn(0f32, 1.0, (B, T, H), &Device::Cpu).unwrap();
    let (a, b, _map) = layers(
        |vb| candle_nn::lstm(H, H, Default::default(), vb),
        |vb| fused_rnn::candle::lstm(H, H, Default::default(), vb),
    );
    for (train, pass) in [(false, "seq"), (true, "train")] {
        bench_one(c, &format!("candle_nn_lstm_{pass}"), &a, &x, train);
        bench_one(c, &format!("fused_lstm_{pass}"), &b, &x, train);
    }
    let (a, b, _map) = layers(
        |vb| candle_nn::gru(H, H, Default::default(), vb),
        |vb| fused_rnn::candle::gru(H, H, Default::default(), vb),
    );
    for (train, pass) in [(false, "seq"), (true, "train")] {
        bench_one(c, &format!("candle_nn_gru_{pass}"), &a, &x, train);
        bench_one(c, &format!("fused_gru_{pass}"), &b, &x, train);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
