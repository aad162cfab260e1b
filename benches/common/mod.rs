//! Device and timing helpers shared by the benches.

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup};
use fused_rnn::device::CudaDevice;
use fused_rnn::Device;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CUDA device 0 (and its CudaDevice, for `on_gpu`), or None after printing why `what` is
/// skipped.
pub fn cuda_or_skip(what: &str) -> Option<(Device, Arc<CudaDevice>)> {
    match Device::cuda(0) {
        Ok(device) => {
            let cuda = device.as_cuda()?.clone();
            Some((device, cuda))
        }
        Err(e) => {
            eprintln!("skipping {what}: {e}");
            None
        }
    }
}

/// The GPU groups' settings: 10 samples, 0.1 s warm-up and `measure` of measurement (the GPU
/// runner's device time is short; the stream-synchronised times vary little).
pub fn gpu_settings(group: &mut BenchmarkGroup<'_, WallTime>, measure: Duration) {
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(measure);
    group.sample_size(10);
}

/// Times `iters` runs of `f` on the GPU: the stream is synchronised before the clock starts and
/// before it is read, so queued work is neither missed nor counted twice.
pub fn on_gpu(bench: &mut Bencher<'_>, cuda: &CudaDevice, mut f: impl FnMut()) {
    bench.iter_custom(|iters| {
        cuda.synchronize().unwrap();
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        cuda.synchronize().unwrap();
        start.elapsed()
    })
}
