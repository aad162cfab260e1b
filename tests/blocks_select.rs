//! log_softmax (forward and backward), argmax and top_k:
//! - the CPU reference against PyTorch fixtures (tests/fixtures/select, made by
//!   scripts/fixtures/make_select_fixtures.py): float64 log_softmax and its autograd gradient,
//!   torch.argmax, and top_k against a stable sort with ties, ±0, ±inf and NaN placed on purpose;
//! - the CPU in f16/bf16 against the CPU in f32 on the same stored values;
//! - CUDA against the CPU for every dtype on odd sizes with poisoned outputs (skips without a
//!   GPU; fails under FUSED_RNN_REQUIRE_GPU=1);
//! - every new kernel on the host through the emulation (tests/common/host_kernels.rs), with
//!   the Rust launchers' geometry, against the CPU reference;
//! - bad inputs give typed errors, zero-size inputs empty results.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::{codes, ids};
use fused_rnn::io::TensorFile;
use fused_rnn::ops::log_softmax::{log_softmax, log_softmax_backward};
use fused_rnn::ops::top_k::{argmax, top_k, MAX_CUDA_K};
use fused_rnn::{DType, Device, Error, Indices, Tensor};
use rand::{Rng, SeedableRng};

/// Row lengths (V) and row counts of the sweeps.
const COLS: [usize; 6] = [1, 7, 33, 129, 1000, 10007];
const ROWS: [usize; 3] = [1, 3, 17];
/// The k of the top_k sweeps (those ≤ V): each variant (k ≤ 4, k ≤ 16, several passes of 16)
/// and its edges.
const KS: [usize; 11] = [1, 2, 3, 4, 5, 8, 16, 17, 31, 33, 64];
/// The kernels' block size and shared memory, as src/ops/{log_softmax,top_k}/cuda.rs launch
/// them.
const THREADS: u32 = codes::BLOCK_THREADS as u32;
const WARPS: usize = THREADS as usize / 32;
const LSM_SHARED: usize = 2 * WARPS * 4;
const SEL_SHARED: usize = 2 * WARPS * 8;

/// Compares row by row: a non-finite expected value must be matched exactly (NaN by NaN); a
/// finite one within tol·(the row's largest finite magnitude) + tol·|expected|.
fn assert_rows_close(what: &str, got: &[f32], want: &[f32], cols: usize, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (r, (g, w)) in got.chunks(cols).zip(want.chunks(cols)).enumerate() {
        let scale = w
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        for (j, (&a, &b)) in g.iter().zip(w).enumerate() {
            let ok = if b.is_finite() {
                (a - b).abs() <= tol * scale + tol * b.abs()
            } else {
                a == b || (a.is_nan() && b.is_nan())
            };
            assert!(
                ok,
                "{what}: [{r}, {j}]: got {a}, expected {b} (row scale {scale:e}, tol {tol:e})"
            );
        }
    }
}

/// Equal values, NaN equal to NaN (selected values are copies of stored ones).
fn assert_same_values(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || a == b || (a.is_nan() && b.is_nan()),
            "{what}: element {k}: got {a}, expected {b}"
        );
    }
}

fn fixture_files(prefix: &str) -> Vec<std::path::PathBuf> {
    let dir = common::fixtures("select");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".safetensors"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "the {prefix} fixtures in {}",
        dir.display()
    );
    files
}

fn name_of(path: &std::path::Path) -> String {
    path.file_stem().unwrap().to_str().unwrap().to_string()
}

fn last_dim(t: &Tensor) -> usize {
    *t.shape().last().unwrap()
}

fn ids(v: &[i64]) -> Vec<i32> {
    v.iter().map(|&i| i32::try_from(i).unwrap()).collect()
}

/// Runs every log_softmax fixture on `device` in f32.
fn check_log_softmax_fixtures(device: &Device) {
    for path in fixture_files("log_softmax_") {
        let name = name_of(&path);
        let f = TensorFile::load(&path).unwrap();
        let x = f.float("x").unwrap().to(device, DType::F32).unwrap();
        let grad_y = f.float("grad_y").unwrap().to(device, DType::F32).unwrap();
        let cols = last_dim(&x);
        let y = log_softmax(&x).unwrap();
        assert_eq!(y.shape(), x.shape(), "{name}: y's shape");
        let want_y = f.float("y").unwrap().to_vec_f32().unwrap();
        let tol = 1e-5;
        assert_rows_close(&name, &y.to_vec_f32().unwrap(), &want_y, cols, tol);
        let grad_x = log_softmax_backward(&y, &grad_y).unwrap();
        assert_eq!(grad_x.shape(), x.shape(), "{name}: grad_x's shape");
        let want = f.float("grad_x").unwrap().to_vec_f32().unwrap();
        let what = format!("{name} grad_x");
        assert_rows_close(&what, &grad_x.to_vec_f32().unwrap(), &want, cols, tol);
    }
}

/// Runs every argmax/top_k fixture on `device` in f32.
fn check_select_fixtures(device: &Device) {
    for path in fixture_files("select_") {
        let name = name_of(&path);
        let f = TensorFile::load(&path).unwrap();
        let x = f.float("x").unwrap().to(device, DType::F32).unwrap();
        let (want_arg, arg_shape) = f.ints("argmax").unwrap();
        let got = argmax(&x).unwrap();
        assert_eq!(got.shape(), &arg_shape[..], "{name}: argmax's shape");
        assert_eq!(got.to_vec().unwrap(), ids(&want_arg), "{name}: argmax");
        let (want_idx, idx_shape) = f.ints("indices").unwrap();
        let k = *idx_shape.last().unwrap();
        if device.as_cuda().is_some() && k > MAX_CUDA_K {
            continue;
        }
        let (values, indices) = top_k(&x, k).unwrap();
        assert_eq!(indices.shape(), &idx_shape[..], "{name}: indices' shape");
        assert_eq!(values.shape(), &idx_shape[..], "{name}: values' shape");
        assert_eq!(indices.to_vec().unwrap(), ids(&want_idx), "{name}: indices");
        let want_values = f.float("values").unwrap().to_vec_f32().unwrap();
        assert_same_values(&name, &values.to_vec_f32().unwrap(), &want_values);
    }
}

#[test]
fn log_softmax_matches_pytorch() {
    check_log_softmax_fixtures(&Device::Cpu);
}

#[test]
fn argmax_and_top_k_match_pytorch() {
    check_select_fixtures(&Device::Cpu);
}

/// Values of `n` elements: uniform in [-scale, scale) (`ties` false) or eight values
/// ±0.25, ±0.75, ... ±1.75 (many equal values, exact in every dtype, none zero).
fn data(n: usize, scale: f32, ties: bool, seed: u64) -> Vec<f32> {
    if !ties {
        return common::random(n, scale, seed);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random_range(-4i32..4) as f32 + 0.5) * 0.5)
        .collect();
    v
}

/// Special values in the rows of a [6, 33] `x`: −inf among finite values, all −inf, NaNs, +inf,
/// ±0 (equal maxima), a NaN last.
fn special_values(x: &mut [f32]) {
    x[2] = f32::NEG_INFINITY;
    x[33..66].fill(f32::NEG_INFINITY);
    x[66 + 5] = f32::NAN;
    x[66 + 20] = f32::NAN;
    x[99 + 3] = f32::INFINITY;
    x[132..165].fill(0.0);
    x[132 + 4] = -0.0;
    x[165 + 32] = f32::NAN;
}

/// The expected top-k of a host f32 row-major [rows, cols], by the documented order
/// (descending, NaN first, ties by lower index), from a stable sort.
fn stable_top_k(x: &[f32], cols: usize, k: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for row in x.chunks(cols) {
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&i, &j| match (row[i].is_nan(), row[j].is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => row[j].partial_cmp(&row[i]).unwrap(),
        });
        out.extend(order[..k].iter().map(|&j| j as i32));
    }
    out
}

#[test]
fn cpu_top_k_is_a_stable_sort_on_random_ties() {
    for (rows, cols) in [(3, 7), (17, 33), (3, 129), (1, 1000)] {
        let x = data(rows * cols, 1.0, true, (rows * cols) as u64);
        let t = Tensor::from_vec(x.clone(), &[rows, cols]).unwrap();
        for k in KS.iter().copied().chain([cols]).filter(|&k| k <= cols) {
            let (values, indices) = top_k(&t, k).unwrap();
            let want = stable_top_k(&x, cols, k);
            assert_eq!(indices.to_vec().unwrap(), want, "[{rows}, {cols}] k {k}");
            let want_values: Vec<f32> = want
                .iter()
                .enumerate()
                .map(|(n, &j)| x[(n / k) * cols + j as usize])
                .collect();
            assert_eq!(values.to_vec_f32().unwrap(), want_values);
        }
    }
}

#[test]
fn cpu_16_bit_storage_matches_f32_on_the_stored_values() {
    let (rows, cols) = (3, 129);
    for dtype in [DType::F16, DType::BF16] {
        let x = common::rounded(data(rows * cols, 3.0, false, 7), dtype);
        let g = common::rounded(data(rows * cols, 1.0, false, 8), dtype);
        let x16 = Tensor::from_f32(&x, &[rows, cols], dtype).unwrap();
        let g16 = Tensor::from_f32(&g, &[rows, cols], dtype).unwrap();
        let x32 = Tensor::from_vec(x.clone(), &[rows, cols]).unwrap();
        let y16 = log_softmax(&x16).unwrap();
        assert_eq!(y16.dtype(), dtype);
        let y32 = log_softmax(&x32).unwrap();
        let want = common::rounded(y32.to_vec_f32().unwrap(), dtype);
        assert_eq!(y16.to_vec_f32().unwrap(), want, "{dtype} log_softmax");
        let dx16 = log_softmax_backward(&y16, &g16).unwrap();
        assert_eq!(dx16.dtype(), dtype);
        let y16_wide = Tensor::from_vec(y16.to_vec_f32().unwrap(), &[rows, cols]).unwrap();
        let g32 = Tensor::from_vec(g.clone(), &[rows, cols]).unwrap();
        let dx32 = log_softmax_backward(&y16_wide, &g32).unwrap();
        let want = common::rounded(dx32.to_vec_f32().unwrap(), dtype);
        assert_eq!(
            dx16.to_vec_f32().unwrap(),
            want,
            "{dtype} log_softmax_backward"
        );
        let (values, indices) = top_k(&x16, 5).unwrap();
        let (v32, i32s) = top_k(&x32, 5).unwrap();
        assert_eq!(values.dtype(), dtype);
        assert_eq!(values.to_vec_f32().unwrap(), v32.to_vec_f32().unwrap());
        assert_eq!(indices.to_vec().unwrap(), i32s.to_vec().unwrap());
        let a16 = argmax(&x16).unwrap().to_vec().unwrap();
        assert_eq!(a16, argmax(&x32).unwrap().to_vec().unwrap());
    }
}

// ---
// CUDA against the CPU.

/// Checks every op on `x` (host f32 values of `shape`, stored in `dtype`) on CUDA against the
/// CPU on the same stored values.
fn check_cuda_case(dev: &Device, x: &[f32], g: &[f32], shape: &[usize], dtype: DType) {
    let cols = *shape.last().unwrap();
    let what = format!("{dtype} {shape:?}");
    let host_x = Tensor::from_f32(x, shape, dtype).unwrap();
    let host_g = Tensor::from_f32(g, shape, dtype).unwrap();
    let cuda_x = host_x.to(dev, dtype).unwrap();
    let cuda_g = host_g.to(dev, dtype).unwrap();
    let tol = common::tolerance(dtype);

    let y = log_softmax(&cuda_x).unwrap();
    assert!(
        y.is_cuda() && y.dtype() == dtype && y.shape() == shape,
        "{what}"
    );
    let want_y = log_softmax(&host_x).unwrap();
    let got_y = y.to_vec_f32().unwrap();
    let lsm = format!("{what} log_softmax");
    assert_rows_close(&lsm, &got_y, &want_y.to_vec_f32().unwrap(), cols, tol);
    // The backward from the same y on both devices.
    let dx = log_softmax_backward(&y, &cuda_g).unwrap();
    assert!(
        dx.is_cuda() && dx.dtype() == dtype && dx.shape() == shape,
        "{what}"
    );
    let host_y = Tensor::from_f32(&got_y, shape, dtype).unwrap();
    let want_dx = log_softmax_backward(&host_y, &host_g).unwrap();
    let bwd = format!("{what} log_softmax_backward");
    let got_dx = dx.to_vec_f32().unwrap();
    assert_rows_close(&bwd, &got_dx, &want_dx.to_vec_f32().unwrap(), cols, tol);

    let a = argmax(&cuda_x).unwrap();
    assert!(a.is_cuda(), "{what}: argmax stays on the device");
    let want_a = argmax(&host_x).unwrap();
    assert_eq!(a.shape(), want_a.shape(), "{what} argmax shape");
    assert_eq!(
        a.to_vec().unwrap(),
        want_a.to_vec().unwrap(),
        "{what} argmax"
    );

    for k in KS.iter().copied().filter(|&k| k <= cols) {
        let (values, indices) = top_k(&cuda_x, k).unwrap();
        assert!(values.is_cuda() && indices.is_cuda(), "{what} k {k}");
        let (want_v, want_i) = top_k(&host_x, k).unwrap();
        assert_eq!(indices.shape(), want_i.shape(), "{what} k {k}");
        assert_eq!(values.shape(), want_v.shape(), "{what} k {k}");
        assert_eq!(
            indices.to_vec().unwrap(),
            want_i.to_vec().unwrap(),
            "{what} top_k {k} indices"
        );
        let got_v = values.to_vec_f32().unwrap();
        assert_same_values(
            &format!("{what} top_k {k}"),
            &got_v,
            &want_v.to_vec_f32().unwrap(),
        );
    }
}

#[test]
fn cuda_matches_cpu_on_odd_sizes_every_dtype() {
    let Some(dev) = common::cuda_or_skip("cuda_matches_cpu_on_odd_sizes_every_dtype") else {
        return;
    };
    let mut seed = 100;
    for dtype in DType::ALL {
        for rows in ROWS {
            for cols in COLS {
                for ties in [false, true] {
                    seed += 2;
                    let n = rows * cols;
                    let x = data(n, 6.0, ties, seed);
                    let g = data(n, 1.0, false, seed + 1);
                    check_cuda_case(&dev, &x, &g, &[rows, cols], dtype);
                }
            }
        }
        // A rank-3 input, and special values in every row (±inf, NaN, ±0, equal maxima).
        let x = data(2 * 3 * 33, 2.0, true, 7);
        let g = data(2 * 3 * 33, 1.0, false, 8);
        check_cuda_case(&dev, &x, &g, &[2, 3, 33], dtype);
        let mut x = data(6 * 33, 2.0, true, 9);
        special_values(&mut x);
        let g = data(6 * 33, 1.0, false, 10);
        check_cuda_case(&dev, &x, &g, &[6, 33], dtype);
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(dev) = common::cuda_or_skip("cuda_matches_pytorch_fixtures") else {
        return;
    };
    check_log_softmax_fixtures(&dev);
    check_select_fixtures(&dev);
}

#[test]
fn cuda_bad_inputs_are_typed_errors() {
    let Some(dev) = common::cuda_or_skip("cuda_bad_inputs_are_typed_errors") else {
        return;
    };
    let x = Tensor::from_vec(data(3 * 100, 1.0, false, 3), &[3, 100]).unwrap();
    let cx = x.to(&dev, DType::F32).unwrap();
    let err = top_k(&cx, MAX_CUDA_K + 1).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // The CPU takes any k ≤ V.
    assert_eq!(top_k(&x, MAX_CUDA_K + 1).unwrap().1.shape(), &[3, 65]);
    let y = log_softmax(&cx).unwrap();
    let err = log_softmax_backward(&y, &x).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
    let err = log_softmax_backward(&y, &cx.to(&dev, DType::F16).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    // Zero-size inputs on the device: empty results there.
    let data = dev
        .as_cuda()
        .unwrap()
        .stream()
        .clone_htod(&vec![1f32; 8])
        .unwrap();
    let empty = Tensor::borrow_cuda_slice(&data, 0, &[0, 5], dev.as_cuda().unwrap()).unwrap();
    let y = log_softmax(&empty).unwrap();
    assert!(y.is_cuda() && y.shape() == [0, 5]);
    let a = argmax(&empty).unwrap();
    assert!(a.is_cuda() && a.shape() == [0] && a.to_vec().unwrap().is_empty());
    let (v, i) = top_k(&empty, 2).unwrap();
    assert!(v.is_cuda() && v.shape() == [0, 2] && i.shape() == [0, 2]);
    let no_cols = Tensor::borrow_cuda_slice(&data, 0, &[4, 0], dev.as_cuda().unwrap()).unwrap();
    assert_eq!(log_softmax(&no_cols).unwrap().shape(), &[4, 0]);
    assert!(matches!(argmax(&no_cols), Err(Error::Shape { .. })));
}

// ---
// Host emulation of the kernels.

/// The k of the emulated top_k runs: each variant and pass count (an emulated round switches
/// every thread's fiber a dozen times, so the host sweep is smaller than the GPU's).
const HOST_KS: [usize; 7] = [1, 2, 4, 5, 16, 17, 64];

/// (rows, V) of the emulated log_softmax sweep: every V and row count of the GPU sweep, fewer
/// pairs.
const HOST_SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 1),
    (17, 7),
    (3, 33),
    (1, 129),
    (17, 129),
    (3, 1000),
    (1, 10007),
    (3, 10007),
];

fn row_launch(entry: &str, rows: usize, shared: usize, args: Vec<Arg>) -> Launch<'_> {
    Launch {
        entry,
        grid: (rows as u32, 1),
        threads: THREADS,
        shared,
        args,
    }
}

#[test]
fn log_softmax_kernels_on_the_host() {
    let test = "log_softmax_kernels_on_the_host";
    let (fwd_kernel, bwd_kernel) = (
        ids::log_softmax::LOG_SOFTMAX_FUSED,
        ids::log_softmax::LOG_SOFTMAX_BACKWARD_FUSED,
    );
    let both = [fwd_kernel, bwd_kernel];
    let Some(kernels) = HostKernels::build_every_dtype(test, "log_softmax", &both) else {
        return;
    };
    let mut seed = 500;
    for dtype in DType::ALL {
        let (fwd, bwd) = (fwd_kernel.entry_point(dtype), bwd_kernel.entry_point(dtype));
        let width = dtype.size_in_bytes();
        let mut shapes: Vec<(usize, usize, bool)> =
            HOST_SHAPES.iter().map(|&(r, c)| (r, c, false)).collect();
        shapes.push((6, 33, true));
        for (rows, cols, special) in shapes {
            seed += 2;
            let n = rows * cols;
            let mut x = common::rounded(data(n, 6.0, false, seed), dtype);
            if special {
                // −inf among finite values, all −inf, NaN, +inf, a constant row.
                x[2] = f32::NEG_INFINITY;
                x[33..66].fill(f32::NEG_INFINITY);
                x[66 + 7] = f32::NAN;
                x[99 + 30] = f32::INFINITY;
                x[132..165].fill(0.5);
            }
            let g = common::rounded(data(n, 1.0, false, seed + 1), dtype);
            let out = kernels.run(
                vec![
                    host_kernels::bytes(&x, dtype),
                    host_kernels::poisoned(n * width),
                    host_kernels::bytes(&g, dtype),
                    host_kernels::poisoned(n * width),
                ],
                &[
                    row_launch(
                        &fwd,
                        rows,
                        LSM_SHARED,
                        vec![Arg::Buf(0), Arg::Buf(1), Arg::I32(cols as i32)],
                    ),
                    row_launch(
                        &bwd,
                        rows,
                        LSM_SHARED,
                        vec![Arg::Buf(1), Arg::Buf(2), Arg::Buf(3), Arg::I32(cols as i32)],
                    ),
                ],
            );
            let what = format!("{fwd} [{rows}, {cols}]");
            let tol = common::tolerance(dtype);
            let got_y = host_kernels::values(&out[1], dtype);
            let host_x = Tensor::from_f32(&x, &[rows, cols], dtype).unwrap();
            let want_y = log_softmax(&host_x).unwrap().to_vec_f32().unwrap();
            assert_rows_close(&what, &got_y, &want_y, cols, tol);
            let host_y = Tensor::from_f32(&got_y, &[rows, cols], dtype).unwrap();
            let host_g = Tensor::from_f32(&g, &[rows, cols], dtype).unwrap();
            let want_dx = log_softmax_backward(&host_y, &host_g)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let got_dx = host_kernels::values(&out[3], dtype);
            assert_rows_close(
                &format!("{bwd} [{rows}, {cols}]"),
                &got_dx,
                &want_dx,
                cols,
                tol,
            );
        }
    }
}

#[test]
fn top_k_kernels_on_the_host() {
    let test = "top_k_kernels_on_the_host";
    let (argmax_kernel, list4, list16) = (
        ids::top_k::ARGMAX_FUSED,
        ids::top_k::TOP_K_LIST4,
        ids::top_k::TOP_K_LIST16,
    );
    let all = [argmax_kernel, list4, list16];
    let Some(kernels) = HostKernels::build_every_dtype(test, "top_k", &all) else {
        return;
    };
    let mut seed = 900;
    for dtype in DType::ALL {
        let width = dtype.size_in_bytes();
        let arg = argmax_kernel.entry_point(dtype);
        let shapes = [
            (1, 1, true, false),
            (3, 7, false, false),
            (17, 33, true, false),
            (3, 129, true, false),
            (1, 1000, false, false),
            (3, 10007, true, false),
            (6, 33, true, true),
        ];
        for (rows, cols, ties, special) in shapes {
            seed += 1;
            let n = rows * cols;
            let mut x = common::rounded(data(n, 6.0, ties, seed), dtype);
            if special {
                special_values(&mut x);
            }
            let ks: Vec<usize> = HOST_KS.iter().copied().filter(|&k| k <= cols).collect();
            // Buffer 0: x; 1: argmax; then values and indices per k.
            let mut buffers = vec![
                host_kernels::bytes(&x, dtype),
                host_kernels::poisoned(rows * 4),
            ];
            let variants: Vec<String> = ks
                .iter()
                .map(|&k| if k <= 4 { list4 } else { list16 }.entry_point(dtype))
                .collect();
            let mut launches = vec![row_launch(
                &arg,
                rows,
                SEL_SHARED,
                vec![Arg::Buf(0), Arg::I32(cols as i32), Arg::Buf(1)],
            )];
            for (q, &k) in ks.iter().enumerate() {
                buffers.push(host_kernels::poisoned(rows * k * width));
                buffers.push(host_kernels::poisoned(rows * k * 4));
                launches.push(row_launch(
                    &variants[q],
                    rows,
                    SEL_SHARED,
                    vec![
                        Arg::Buf(0),
                        Arg::I32(cols as i32),
                        Arg::I32(k as i32),
                        Arg::Buf(2 + 2 * q),
                        Arg::Buf(3 + 2 * q),
                    ],
                ));
            }
            let out = kernels.run(buffers, &launches);
            let what = format!("{dtype} [{rows}, {cols}] ties {ties} special {special}");
            let host_x = Tensor::from_f32(&x, &[rows, cols], dtype).unwrap();
            let want_a = argmax(&host_x).unwrap().to_vec().unwrap();
            assert_eq!(host_kernels::ints(&out[1]), want_a, "{what}: argmax");
            for (q, &k) in ks.iter().enumerate() {
                let (want_v, want_i) = top_k(&host_x, k).unwrap();
                let got_i = host_kernels::ints(&out[3 + 2 * q]);
                assert_eq!(got_i, want_i.to_vec().unwrap(), "{what}: top_k {k}");
                let got_v = host_kernels::values(&out[2 + 2 * q], dtype);
                let v = format!("{what}: top_k {k} values");
                assert_same_values(&v, &got_v, &want_v.to_vec_f32().unwrap());
            }
        }
    }
}

// ---
// Bad inputs.

fn vector(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap()
}

#[test]
fn bad_inputs_are_typed_errors_and_zero_sizes_empty_results() {
    let scalar = vector(&[1.5], &[]);
    assert!(matches!(log_softmax(&scalar), Err(Error::Shape { .. })));
    assert!(matches!(argmax(&scalar), Err(Error::Shape { .. })));
    assert!(matches!(top_k(&scalar, 1), Err(Error::Shape { .. })));
    assert!(matches!(
        log_softmax_backward(&scalar, &scalar),
        Err(Error::Shape { .. })
    ));

    let x = vector(&data(3 * 7, 1.0, false, 1), &[3, 7]);
    for k in [0, 8, usize::MAX] {
        let err = top_k(&x, k).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "k = {k}: {err}");
        assert!(err.to_string().contains(&format!("k = {k}")), "{err}");
    }
    assert_eq!(top_k(&x, 7).unwrap().1.shape(), &[3, 7]);

    // backward: wrong shape, mixed dtypes.
    let y = log_softmax(&x).unwrap();
    let wrong = vector(&data(3 * 6, 1.0, false, 2), &[3, 6]);
    let err = log_softmax_backward(&y, &wrong).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { tensor, .. } if tensor == "grad_y"),
        "{err}"
    );
    let half = Tensor::from_f32(&data(21, 1.0, false, 3), &[3, 7], DType::F16).unwrap();
    let err = log_softmax_backward(&y, &half).unwrap_err();
    assert!(
        matches!(&err, Error::DType { tensor, .. } if tensor == "grad_y"),
        "{err}"
    );

    // Empty rows (V = 0): no position to return.
    let no_cols = vector(&[], &[3, 0]);
    assert!(matches!(argmax(&no_cols), Err(Error::Shape { .. })));
    assert!(matches!(top_k(&no_cols, 1), Err(Error::Shape { .. })));
    let y = log_softmax(&no_cols).unwrap();
    assert_eq!(y.shape(), &[3, 0]);
    assert_eq!(log_softmax_backward(&y, &no_cols).unwrap().shape(), &[3, 0]);

    // No rows: empty results of the right shapes.
    let no_rows = vector(&[], &[0, 5]);
    assert_eq!(log_softmax(&no_rows).unwrap().shape(), &[0, 5]);
    let a: Indices = argmax(&no_rows).unwrap();
    assert_eq!(a.shape(), &[0]);
    let (v, i) = top_k(&no_rows, 3).unwrap();
    assert_eq!((v.shape(), i.shape()), (&[0, 3][..], &[0, 3][..]));
    let (v, i) = top_k(&vector(&[], &[2, 0, 4]), 4).unwrap();
    assert_eq!((v.shape(), i.shape()), (&[2, 0, 4][..], &[2, 0, 4][..]));

    // A vector: one position, shape [].
    let v = vector(&[0.5, 3.0, 3.0, -1.0], &[4]);
    let a = argmax(&v).unwrap();
    assert_eq!((a.shape(), a.to_vec().unwrap()), (&[][..], vec![1]));
    let (values, indices) = top_k(&v, 3).unwrap();
    assert_eq!(indices.to_vec().unwrap(), [1, 2, 0]);
    assert_eq!(values.to_vec_f32().unwrap(), [3.0, 3.0, 0.5]);
}
