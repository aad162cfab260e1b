//! Inverted dropout (`ops::dropout`): the mask against a third implementation of the generator
//! (Python, in scripts/fixtures/make_pointwise_fixtures.py) and the values against PyTorch's
//! x · mask / (1 − p) and its gradient (tests/fixtures/pointwise/dropout.safetensors; torch's
//! own generator differs, so the fixture fixes the mask); the keep rate and the independence of
//! neighbours and seeds within 4σ on 10^5 elements; kernels/dropout.cu on the host emulation
//! and on CUDA giving the CPU's results bit for bit in every dtype, whatever the grid (the CUDA
//! tests skip without a GPU, and fail instead under FUSED_RNN_REQUIRE_GPU=1); p = 0, p = 1,
//! NaN, empty tensors and typed errors for a bad p.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::io::TensorFile;
use fused_rnn::ops::dropout::{dropout, dropout_backward, dropout_mask};
use fused_rnn::{DType, Device, Error, Tensor};

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Bitwise equality of two value lists (NaN equal to NaN of the same bits).
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {k}: {g} vs {w}");
    }
}

/// The threshold and scale the launcher passes for `p` (as `Rate` in src/ops/dropout/mod.rs).
fn rate(p: f32) -> (u64, f32) {
    let p = p as f64;
    let scale = if p == 1.0 {
        0.0
    } else {
        (1.0 / (1.0 - p)) as f32
    };
    ((p * 4_294_967_296.0).ceil() as u64, scale)
}

// ---
// Against the fixture: the mask exactly, the values as PyTorch computes them.

#[test]
fn dropout_matches_the_fixture_mask_and_pytorch() {
    let file = TensorFile::load(common::fixtures("pointwise").join("dropout.safetensors")).unwrap();
    let mut cases: Vec<&str> = file
        .names()
        .filter_map(|n| n.strip_suffix(".mask"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "expected the dropout fixtures");
    for case in cases {
        let meta = |k: &str| file.metadata(&format!("{case}.{k}")).unwrap();
        let p: f32 = meta("p").parse().unwrap();
        let seed: u64 = meta("seed").parse().unwrap();
        let get = |n: &str| file.float(&format!("{case}.{n}")).unwrap();
        let (mask, mask_shape) = file.ints(&format!("{case}.mask")).unwrap();
        let x = get("x");
        assert_eq!(mask_shape, x.shape());
        let ours = dropout_mask(x.numel(), p, seed).unwrap();
        let want: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
        assert_eq!(ours, want, "{case}: mask");
        for dtype in DType::ALL {
            let what = format!("{case} {dtype}");
            let tol = match dtype {
                DType::F32 => 1e-5,
                _ => common::tolerance(dtype),
            };
            let x = x.to(&Device::Cpu, dtype).unwrap();
            let grad_y = get("grad_y").to(&Device::Cpu, dtype).unwrap();
            let y = dropout(&x, p, seed).unwrap();
            assert_eq!((y.shape(), y.dtype()), (x.shape(), dtype), "{what}");
            let grad_x = dropout_backward(&grad_y, p, seed).unwrap();
            common::assert_close(&format!("{what} y"), &host(&y), &host(&get("y")), tol);
            let want_dx = host(&get("grad_x"));
            common::assert_close(&format!("{what} grad_x"), &host(&grad_x), &want_dx, tol);
            // The inputs have no zeros: a zero output is a dropped element.
            let kept: Vec<bool> = host(&y).iter().map(|&v| v != 0.0).collect();
            assert_eq!(kept, want, "{what}: the mask applied");
        }
    }
}

// ---
// Statistics.

/// Asserts |count − n·q| ≤ 4σ for a binomial count of n draws of probability q.
fn assert_binomial(what: &str, count: usize, n: usize, q: f64) {
    let (mean, sigma) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
    let z = (count as f64 - mean) / sigma.max(1e-12);
    assert!(
        z.abs() <= 4.0,
        "{what}: {count} of {n}, expected {mean:.0} ± {sigma:.1} (z = {z:.2})"
    );
}

#[test]
fn keep_rate_and_independence_are_within_four_sigma() {
    let n = 100_000;
    for (k, p) in [0.1f32, 0.3, 0.5, 0.9].into_iter().enumerate() {
        for seed in [0u64, 1, 0x243F_6A88_85A3_08D3, u64::MAX - k as u64] {
            let what = format!("p = {p}, seed {seed:#x}");
            let q = 1.0 - p as f64;
            let mask = dropout_mask(n, p, seed).unwrap();
            assert_binomial(&what, mask.iter().filter(|&&m| m).count(), n, q);
            // Neighbours (within and across Philox's groups of four) are independent.
            for lag in [1, 3, 4, 5] {
                let pairs = (n - lag) / lag;
                let both = (0..pairs)
                    .filter(|&i| mask[i * lag] && mask[i * lag + lag])
                    .count();
                assert_binomial(&format!("{what}, lag {lag}"), both, pairs, q * q);
            }
            // The next seed draws another mask: agreement p² + q², not 1.
            let other = dropout_mask(n, p, seed.wrapping_add(1)).unwrap();
            let same = mask.iter().zip(&other).filter(|(a, b)| a == b).count();
            let pf = p as f64;
            assert_binomial(&format!("{what}, next seed"), same, n, pf * pf + q * q);
        }
    }
}

#[test]
fn dropout_keeps_and_scales_exactly_and_is_reproducible() {
    let n = 4099;
    let x = common::random(n, 3.0, 5);
    let p = 0.3f32;
    let (_, scale) = rate(p);
    let mask = dropout_mask(n, p, 42).unwrap();
    let y = host(&dropout(&Tensor::from_f32(&x, &[n], DType::F32).unwrap(), p, 42).unwrap());
    for k in 0..n {
        // x · 0 keeps the sign of a dropped x, as in PyTorch.
        let want = x[k] * if mask[k] { scale } else { 0.0 };
        assert_eq!(y[k].to_bits(), want.to_bits(), "element {k}");
    }
    // The mask follows the flat index: any shape of as many elements, the backward, a rerun.
    let shaped = Tensor::from_f32(&x, &[1, 4099], DType::F32).unwrap();
    assert_same_bits("[1, 4099]", &host(&dropout(&shaped, p, 42).unwrap()), &y);
    assert_same_bits(
        "backward",
        &host(&dropout_backward(&shaped, p, 42).unwrap()),
        &y,
    );
    assert_eq!(dropout_mask(n, p, 42).unwrap(), mask);
    // A prefix of a longer tensor gets the same mask.
    assert_eq!(&dropout_mask(2 * n, p, 42).unwrap()[..n], &mask[..]);
    assert_ne!(dropout_mask(n, p, 43).unwrap(), mask);
}

#[test]
fn dropout_p0_copies_p1_zeroes_and_nan_spreads_as_in_pytorch() {
    let x = [1.5f32, -2.0, f32::NAN, f32::INFINITY, 0.25, -0.0, 7.0];
    for dtype in DType::ALL {
        let t = Tensor::from_f32(&x, &[7], dtype).unwrap();
        let stored = host(&t);
        assert_same_bits("p = 0", &host(&dropout(&t, 0.0, 3).unwrap()), &stored);
        assert!(dropout_mask(7, 0.0, 3).unwrap().iter().all(|&m| m));
        // p = 1: nothing kept; as torch's x · 0, NaN and infinities give NaN.
        let y = host(&dropout(&t, 1.0, 3).unwrap());
        for (k, (&v, &x)) in y.iter().zip(&stored).enumerate() {
            if x.is_finite() {
                assert_eq!(v, 0.0, "p = 1, element {k}");
            } else {
                assert!(v.is_nan(), "p = 1, element {k}: {v}");
            }
        }
        assert!(dropout_mask(7, 1.0, 3).unwrap().iter().all(|&m| !m));
        assert_eq!(host(&dropout_backward(&t, 1.0, 3).unwrap())[0], 0.0);
    }
}

#[test]
fn dropout_refuses_a_bad_p_and_handles_empty_tensors() {
    let x = Tensor::from_f32(&[1.0, 2.0], &[2], DType::F32).unwrap();
    for p in [-0.01, 1.0001, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for result in [dropout(&x, p, 1), dropout_backward(&x, p, 1)] {
            assert!(
                matches!(result, Err(Error::Config(_))),
                "p = {p}: {result:?}"
            );
        }
        assert!(matches!(dropout_mask(2, p, 1), Err(Error::Config(_))));
    }
    for dtype in DType::ALL {
        let empty = Tensor::from_f32(&[], &[4, 0], dtype).unwrap();
        let y = dropout(&empty, 0.5, 1).unwrap();
        assert_eq!((y.shape(), y.dtype()), (&[4, 0][..], dtype));
        assert_eq!(dropout_backward(&empty, 0.5, 1).unwrap().numel(), 0);
    }
    assert!(dropout_mask(0, 0.5, 1).unwrap().is_empty());
    assert!(matches!(
        dropout_mask(usize::MAX, 0.5, 1),
        Err(Error::TooLarge { .. })
    ));
}

// ---
// The kernel on the host emulation and on CUDA: the CPU's results bit for bit.

#[test]
fn dropout_kernel_on_the_host_gives_the_cpu_bits_on_any_grid() {
    let test = "dropout_kernel_on_the_host_gives_the_cpu_bits_on_any_grid";
    let names: Vec<String> = DType::ALL
        .iter()
        .map(|d| format!("dropout_apply_{d}"))
        .collect();
    let entries: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(kernels) = HostKernels::build(test, "dropout", &entries) else {
        return;
    };
    for dtype in DType::ALL {
        for (k, (n, p, seed)) in [
            (1usize, 0.5f32, 7u64),
            (7, 0.25, u64::MAX),
            (1029, 0.3, 0x243F_6A88_85A3_08D3),
            (4099, 0.9, 1 << 32),
            (33, 0.0, 5),
            (33, 1.0, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let x = common::rounded(common::random(n, 2.0, k as u64), dtype);
            let want =
                host(&dropout(&Tensor::from_f32(&x, &[n], dtype).unwrap(), p, seed).unwrap());
            let (threshold, scale) = rate(p);
            let groups = n.div_ceil(4);
            // As the launcher (one thread per group of four), on one block, on three.
            for blocks in [groups.div_ceil(256).min(1 << 16), 1, 3] {
                let out = kernels.run(
                    vec![
                        host_kernels::bytes(&x, dtype),
                        host_kernels::poisoned(n * dtype.size_in_bytes()),
                    ],
                    &[Launch {
                        entry: &format!("dropout_apply_{dtype}"),
                        grid: (blocks as u32, 1),
                        threads: 256,
                        shared: 0,
                        args: vec![
                            Arg::Buf(0),
                            Arg::Buf(1),
                            Arg::U64(n as u64),
                            Arg::U64(seed),
                            Arg::U64(threshold),
                            Arg::F32(scale),
                        ],
                    }],
                );
                let what = format!("{dtype} n = {n} p = {p} on {blocks} blocks");
                assert_same_bits(&what, &host_kernels::values(&out[1], dtype), &want);
            }
        }
    }
}

#[test]
fn dropout_on_cuda_gives_the_cpu_bits_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("dropout_on_cuda_gives_the_cpu_bits_for_every_dtype")
    else {
        return;
    };
    for dtype in DType::ALL {
        for (k, (shape, p, seed)) in [
            (&[1][..], 0.5f32, 7u64),
            (&[7], 0.25, u64::MAX),
            (&[3, 7, 33], 0.3, 0x243F_6A88_85A3_08D3),
            (&[129, 1000], 0.1, 1 << 32),
            (&[100_003], 0.5, 11),
            (&[33], 0.0, 5),
            (&[33], 1.0, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let n: usize = shape.iter().product();
            let x = common::rounded(common::random(n, 2.0, k as u64), dtype);
            let xc = Tensor::from_f32(&x, shape, dtype).unwrap();
            let xg = xc.to(&dev, dtype).unwrap();
            let what = format!("{dtype} {shape:?} p = {p}");
            let y = dropout(&xg, p, seed).unwrap();
            assert!(
                y.is_cuda() && y.dtype() == dtype && y.shape() == shape,
                "{what}"
            );
            let want = host(&dropout(&xc, p, seed).unwrap());
            assert_same_bits(&what, &host(&y), &want);
            let dx = dropout_backward(&xg, p, seed).unwrap();
            assert_same_bits(&format!("{what} backward"), &host(&dx), &want);
        }
    }
    let empty = Tensor::from_f32(&[], &[0], DType::BF16).unwrap();
    let y = dropout(&empty.to(&dev, DType::BF16).unwrap(), 0.5, 1).unwrap();
    assert_eq!((y.numel(), y.is_cuda()), (0, true));
}
