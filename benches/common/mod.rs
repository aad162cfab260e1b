//! Timing shared by the benches.

use criterion::Bencher;
use fused_rnn::device::CudaDevice;
use std::time::Instant;

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
