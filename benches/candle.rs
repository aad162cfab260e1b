//! candle-nn's LSTM and GRU against fused-rnn's drop-in ones, both on candle tensors, at T 100,
//! B 32, I = H 256 on the CPU: inference (`seq` and `states_to_tensor`, the weights plain
//! tensors, so neither builds a graph) and a training step (the weights candle variables:
//! `seq`, `states_to_tensor`, and `backward()` of their sum). Names:
//! {candle_nn|fused}_{op}_{seq|train}; throughput is in timesteps.

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::RNN;
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const T: usize = 100;
const B: usize = 32;
const H: usize = 256;

/// candle-nn's layer and ours over the same weights: candle variables (`train`) or plain
/// tensors of the same values.
fn layers<L1: RNN, L2: RNN>(
    train: bool,
    theirs: impl Fn(VarBuilder) -> candle_core::Result<L1>,
    ours: impl Fn(VarBuilder) -> candle_core::Result<L2>,
) -> (L1, L2) {
    let map = VarMap::new();
    theirs(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu).pp("rnn")).unwrap();
    let vb = if train {
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)
    } else {
        let data = map.data().lock().unwrap();
        let plain = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()));
        VarBuilder::from_tensors(plain.collect(), DType::F32, &Device::Cpu)
    };
    (theirs(vb.pp("rnn")).unwrap(), ours(vb.pp("rnn")).unwrap())
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
    for (train, pass) in [(false, "seq"), (true, "train")] {
        let (a, b) = layers(
            train,
            |vb| candle_nn::lstm(H, H, Default::default(), vb),
            |vb| fused_rnn::candle::lstm(H, H, Default::default(), vb),
        );
        bench_one(c, &format!("candle_nn_lstm_{pass}"), &a, &x, train);
        bench_one(c, &format!("fused_lstm_{pass}"), &b, &x, train);
        let (a, b) = layers(
            train,
            |vb| candle_nn::gru(H, H, Default::default(), vb),
            |vb| fused_rnn::candle::gru(H, H, Default::default(), vb),
        );
        bench_one(c, &format!("candle_nn_gru_{pass}"), &a, &x, train);
        bench_one(c, &format!("fused_gru_{pass}"), &b, &x, train);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
