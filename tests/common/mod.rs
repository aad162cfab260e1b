//! Helpers shared by the integration tests: one tolerance check, one device-or-skip, one
//! NVRTC-or-skip, and random data that is never all zeros.
#![allow(dead_code)]

pub mod cli;
pub mod host_kernels;
pub mod layers;

use fused_rnn::{DType, Device};
use rand::{Rng, SeedableRng};

/// True when the environment variable is set to 1: a skip then becomes a failure.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// CUDA device 0, or None after printing why (a failure under FUSED_RNN_REQUIRE_GPU=1).
/// Outputs the library allocates on it are NaN-poisoned before kernels write them.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(dev) => {
            dev.as_cuda().unwrap().set_poison_outputs(true);
            Some(dev)
        }
        Err(e) if required("FUSED_RNN_REQUIRE_GPU") => {
            panic!("{test}: FUSED_RNN_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// Whether NVRTC can be loaded; prints why not (a failure under FUSED_RNN_REQUIRE_NVRTC=1).
pub fn nvrtc_or_skip(test: &str) -> bool {
    match fused_rnn::nvrtc::version() {
        Ok(_) => true,
        Err(e) if required("FUSED_RNN_REQUIRE_NVRTC") => {
            panic!("{test}: FUSED_RNN_REQUIRE_NVRTC=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

/// `$CXX`, else `c++`, when it runs; None after printing why (a failure under
/// FUSED_RNN_REQUIRE_NVRTC=1, which CI sets: there every kernel test must run).
pub fn cxx_or_skip(test: &str) -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match std::process::Command::new(&cxx).arg("--version").output() {
        Ok(out) if out.status.success() => Some(cxx),
        result => {
            let why = format!("no C++ compiler `{cxx}` ({result:?})");
            if required("FUSED_RNN_REQUIRE_NVRTC") {
                panic!("{test}: FUSED_RNN_REQUIRE_NVRTC=1 but {why}");
            }
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// Tolerance relative to the reference's largest magnitude, per storage dtype.
pub fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 1e-2,
        DType::BF16 => 2e-2,
    }
}

/// Checks |got − ref| ≤ tol·max|ref| + tol·|ref| element-wise; NaN anywhere fails.
pub fn assert_close(what: &str, got: &[f32], reference: &[f32], tol: f32) {
    if let Some(failure) = mismatch(what, got, reference, tol) {
        panic!("{failure}");
    }
}

/// `assert_close`'s check, returning the first failing element's description instead of
/// panicking (for a test that reports every failing case at once).
pub fn mismatch(what: &str, got: &[f32], reference: &[f32], tol: f32) -> Option<String> {
    mismatch_at_scale(what, got, reference, tol, largest(reference))
}

/// The largest magnitude in `values`.
pub fn largest(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `mismatch` with the scale given: |got − ref| ≤ tol·scale + tol·|ref|.
pub fn mismatch_at_scale(
    what: &str,
    got: &[f32],
    reference: &[f32],
    tol: f32,
    scale: f32,
) -> Option<String> {
    if got.len() != reference.len() {
        return Some(format!("{what}: length differs"));
    }
    got.iter()
        .zip(reference)
        .enumerate()
        .find_map(|(k, (g, r))| {
            let err = (g - r).abs();
            let within = err <= tol * scale + tol * r.abs();
            // NaN in `got` makes `within` false, so it fails too.
            (!within).then(|| {
                format!(
                    "{what}: element {k}: got {g}, expected {r} (|diff| {err:e}, scale {scale:e}, \
                 tol {tol:e})"
                )
            })
        })
}

/// Values rounded to `dtype`, so that the CPU reference sees what the GPU stores.
pub fn rounded(values: Vec<f32>, dtype: DType) -> Vec<f32> {
    let shape = [values.len()];
    fused_rnn::Tensor::from_f32(&values, &shape, dtype)
        .unwrap()
        .to_vec_f32()
        .unwrap()
}

/// Values uniform in [-scale, scale), seeded; never all zeros.
pub fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    assert!(n == 0 || v.iter().any(|&x| x != 0.0));
    v
}

/// A fresh folder for test `name`'s files in the system temp directory (per process).
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fused-rnn-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fixture folder: relative to the working directory (cargo runs tests from the package
/// root; a bundled test binary runs from a copy of it), else the package root at build time.
pub fn fixtures(kind: &str) -> std::path::PathBuf {
    let relative = std::path::Path::new("tests/fixtures").join(kind);
    if relative.is_dir() {
        return relative;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

/// The persistent-kernel shapes `recurrent_cuda` runs, as (cell, hidden, batch): every cell,
/// H = 1, 7, 33, 129, 512, 1000 and 1024 (about the largest LSTM that fits in f32 at B = 16 on
/// an H100), 133, 265 and 397 (a last block with fewer units than the others), B from 1 to 64.
/// `kernels_compile` compiles each for every dtype with the H100's
/// SM count: the specialisations the GPU tests then use.
pub const PERSISTENT_SHAPES: &[(fused_rnn::Cell, usize, usize)] = {
    use fused_rnn::{Cell, Nonlinearity};
    const TANH: Cell = Cell::Rnn(Nonlinearity::Tanh);
    const RELU: Cell = Cell::Rnn(Nonlinearity::Relu);
    &[
        (TANH, 1, 1),
        (TANH, 7, 3),
        (RELU, 33, 7),
        (TANH, 129, 5),
        (TANH, 1000, 2),
        (RELU, 33, 4),
        (TANH, 512, 33),
        (Cell::Lstm, 1, 1),
        (Cell::Lstm, 7, 3),
        (Cell::Lstm, 33, 7),
        (Cell::Lstm, 129, 5),
        (Cell::Lstm, 1000, 2),
        (Cell::Lstm, 512, 64),
        (Cell::Lstm, 1024, 16),
        (Cell::Gru, 1, 1),
        (Cell::Gru, 7, 3),
        (Cell::Gru, 33, 7),
        (Cell::Gru, 129, 5),
        (Cell::Gru, 1000, 2),
        (Cell::Gru, 33, 4),
        (Cell::Gru, 512, 8),
        (TANH, 397, 3),
        (Cell::Lstm, 265, 9),
        (Cell::Gru, 133, 3),
    ]
};

/// Streaming multiprocessors of an H100 (SXM), the GPU the persistent specialisations are
/// compiled for in CI.
pub const H100_SMS: usize = 132;
