//! The sum and the mean over one dimension and their backward (`ops::reduce`): the CPU
//! reference against PyTorch (tests/fixtures/pointwise/reduce.safetensors, made by
//! scripts/fixtures/make_pointwise_fixtures.py) in every dtype; kernels/reduce.cu on the host
//! emulation and on CUDA against the CPU in every dtype on odd shapes (every tile width, strips
//! that loop, a zero-length dimension) with poisoned outputs, and reproducible bit for bit (the
//! CUDA tests skip without a GPU, and fail instead under FUSED_RNN_REQUIRE_GPU=1); typed errors
//! for bad arguments.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::codes;
use fused_rnn::io::TensorFile;
use fused_rnn::ops::reduce;
use fused_rnn::{DType, Device, Error, Tensor};

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn without(shape: &[usize], dim: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s.remove(dim);
    s
}

// ---
// PyTorch parity of the CPU reference.

#[test]
fn sum_and_mean_match_pytorch_forward_and_backward() {
    let file = TensorFile::load(common::fixtures("pointwise").join("reduce.safetensors")).unwrap();
    let mut cases: Vec<&str> = file
        .names()
        .filter_map(|n| n.strip_suffix(".grad_y"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "expected the reduce fixtures");
    for case in cases {
        let dim: usize = file
            .metadata(&format!("{case}.dim"))
            .unwrap()
            .parse()
            .unwrap();
        let mean = case.starts_with("mean_");
        assert!(mean || case.starts_with("sum_"), "{case}");
        for dtype in DType::ALL {
            let what = format!("{case} {dtype}");
            let get = |n: &str| file.float(&format!("{case}.{n}")).unwrap();
            let x = get("x").to(&Device::Cpu, dtype).unwrap();
            let grad_y = get("grad_y").to(&Device::Cpu, dtype).unwrap();
            let (y, grad_x) = if mean {
                let y = reduce::mean(&x, dim).unwrap();
                (y, reduce::mean_backward(&grad_y, x.shape(), dim).unwrap())
            } else {
                let y = reduce::sum(&x, dim).unwrap();
                (y, reduce::sum_backward(&grad_y, x.shape(), dim).unwrap())
            };
            assert_eq!(y.shape(), without(x.shape(), dim), "{what}");
            assert_eq!(
                (grad_x.shape(), grad_x.dtype()),
                (x.shape(), dtype),
                "{what}"
            );
            let tol = match dtype {
                DType::F32 => 1e-5,
                _ => common::tolerance(dtype),
            };
            common::assert_close(&format!("{what} y"), &host(&y), &host(&get("y")), tol);
            let want_dx = host(&get("grad_x"));
            common::assert_close(&format!("{what} grad_x"), &host(&grad_x), &want_dx, tol);
        }
    }
}

// ---
// The kernels on the host emulation against the CPU reference.

/// Output columns per strip, as `tile` in src/ops/reduce/cuda.rs.
fn tile(inner: usize) -> usize {
    inner.next_power_of_two().min(32)
}

/// (outer, n, inner): every tile width (1, 2, 8, 32 with three strips per row), n past a
/// block, a zero-length dimension (the sum is 0).
const HOST_VIEWS: &[(usize, usize, usize)] = &[
    (3, 129, 1),
    (2, 300, 2),
    (2, 7, 5),
    (1, 33, 65),
    (4, 0, 3),
    (1, 1, 1),
];

#[test]
fn reduce_kernels_on_the_host_match_the_cpu() {
    let test = "reduce_kernels_on_the_host_match_the_cpu";
    let names: Vec<String> = DType::ALL
        .iter()
        .flat_map(|d| ["reduce_forward", "reduce_backward"].map(|op| format!("{op}_{d}")))
        .collect();
    let entries: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(kernels) = HostKernels::build(test, "reduce", &entries) else {
        return;
    };
    for dtype in DType::ALL {
        let (d, width, tol) = (
            dtype.name(),
            dtype.size_in_bytes(),
            common::tolerance(dtype),
        );
        for (k, &(outer, n, inner)) in HOST_VIEWS.iter().enumerate() {
            let shape = [outer, n, inner];
            let x = common::rounded(common::random(outer * n * inner, 1.0, k as u64), dtype);
            let g = common::rounded(common::random(outer * inner, 1.0, 50 + k as u64), dtype);
            let xt = Tensor::from_f32(&x, &shape, dtype).unwrap();
            let gt = Tensor::from_f32(&g, &[outer, inner], dtype).unwrap();
            let tile = tile(inner);
            let strips = outer * inner.div_ceil(tile);
            // As the launcher (one block per strip), and on two blocks whose strips loop.
            for blocks in [strips.min(1 << 16), 2] {
                for (code, op) in [(codes::REDUCE_SUM, "sum"), (codes::REDUCE_MEAN, "mean")] {
                    if op == "mean" && n == 0 {
                        continue;
                    }
                    let what = format!("{op} {dtype} [{outer}, {n}, {inner}] on {blocks} blocks");
                    let (forward, backward) = (
                        format!("reduce_forward_{d}"),
                        format!("reduce_backward_{d}"),
                    );
                    let total = outer * n * inner;
                    let mut launches = vec![Launch {
                        entry: &forward,
                        grid: (blocks as u32, 1),
                        threads: 256,
                        shared: 256 * 4,
                        args: vec![
                            Arg::Buf(0),
                            Arg::Buf(1),
                            Arg::U64(outer as u64),
                            Arg::U64(n as u64),
                            Arg::U64(inner as u64),
                            Arg::I32(tile as i32),
                            Arg::I32(code),
                        ],
                    }];
                    if total > 0 {
                        launches.push(Launch {
                            entry: &backward,
                            grid: (total.div_ceil(256).min(1 << 16) as u32, 1),
                            threads: 256,
                            shared: 0,
                            args: vec![
                                Arg::Buf(2),
                                Arg::Buf(3),
                                Arg::U64(total as u64),
                                Arg::U64(n as u64),
                                Arg::U64(inner as u64),
                                Arg::I32(code),
                            ],
                        });
                    }
                    let out = kernels.run(
                        vec![
                            host_kernels::bytes(&x, dtype),
                            host_kernels::poisoned(outer * inner * width),
                            host_kernels::bytes(&g, dtype),
                            host_kernels::poisoned(total * width),
                        ],
                        &launches,
                    );
                    let (y, dx) = if op == "sum" {
                        (reduce::sum(&xt, 1), reduce::sum_backward(&gt, &shape, 1))
                    } else {
                        (reduce::mean(&xt, 1), reduce::mean_backward(&gt, &shape, 1))
                    };
                    let got = host_kernels::values(&out[1], dtype);
                    common::assert_close(&what, &got, &host(&y.unwrap()), tol);
                    let got = host_kernels::values(&out[3], dtype);
                    let what = format!("{what} backward");
                    common::assert_close(&what, &got, &host(&dx.unwrap()), tol);
                }
            }
        }
    }
}

// ---
// CUDA against the CPU.

/// Shapes and the dims reduced: rows (inner 1) long and short, columns of every tile width,
/// many strips, a middle dimension of length 1.
const CUDA_CASES: &[(&[usize], &[usize])] = &[
    (&[1], &[0]),
    (&[7], &[0]),
    (&[4099], &[0]),
    (&[3, 7], &[0, 1]),
    (&[5, 1, 33], &[0, 1, 2]),
    (&[2, 3, 7, 5], &[0, 1, 2, 3]),
    (&[33, 129], &[0, 1]),
    (&[1000, 3], &[0, 1]),
    (&[4, 2000], &[0, 1]),
    (&[129, 17, 9], &[1]),
];

#[test]
fn reduce_on_cuda_matches_the_cpu_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("reduce_on_cuda_matches_the_cpu_for_every_dtype") else {
        return;
    };
    for dtype in DType::ALL {
        let tol = common::tolerance(dtype);
        for (k, &(shape, dims)) in CUDA_CASES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = common::rounded(common::random(n, 1.0, k as u64), dtype);
            let xc = Tensor::from_f32(&x, shape, dtype).unwrap();
            let xg = xc.to(&dev, dtype).unwrap();
            for &dim in dims {
                let out_shape = without(shape, dim);
                let m: usize = out_shape.iter().product();
                let g = common::rounded(common::random(m, 1.0, 100 + k as u64), dtype);
                let gc = Tensor::from_f32(&g, &out_shape, dtype).unwrap();
                let gg = gc.to(&dev, dtype).unwrap();
                let check = |what: &str, got: Tensor, want: Tensor| {
                    let what = format!("{what} {dtype} {shape:?} dim {dim}");
                    assert!(got.is_cuda(), "{what}: the result left the device");
                    assert_eq!((got.shape(), got.dtype()), (want.shape(), dtype), "{what}");
                    common::assert_close(&what, &host(&got), &host(&want), tol);
                };
                check(
                    "sum",
                    reduce::sum(&xg, dim).unwrap(),
                    reduce::sum(&xc, dim).unwrap(),
                );
                check(
                    "mean",
                    reduce::mean(&xg, dim).unwrap(),
                    reduce::mean(&xc, dim).unwrap(),
                );
                check(
                    "sum_backward",
                    reduce::sum_backward(&gg, shape, dim).unwrap(),
                    reduce::sum_backward(&gc, shape, dim).unwrap(),
                );
                check(
                    "mean_backward",
                    reduce::mean_backward(&gg, shape, dim).unwrap(),
                    reduce::mean_backward(&gc, shape, dim).unwrap(),
                );
            }
            // No atomics: the same call gives the same bits.
            let again = |dim| host(&reduce::sum(&xg, dim).unwrap());
            assert_eq!(
                again(0),
                again(0),
                "sum {dtype} {shape:?} is not reproducible"
            );
        }
    }
}

#[test]
fn reduce_on_cuda_handles_zero_lengths() {
    let Some(dev) = common::cuda_or_skip("reduce_on_cuda_handles_zero_lengths") else {
        return;
    };
    let g = Tensor::from_f32(&[1.0, 2.0], &[2], DType::F32).unwrap();
    let g_gpu = g.to(&dev, DType::F32).unwrap();
    let r = reduce::sum_backward(&g_gpu, &[2, 3], 1).unwrap();
    assert_eq!(host(&r), [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    for dtype in DType::ALL {
        // A sum over a zero-length dimension gives zeros.
        let empty = Tensor::from_f32(&[], &[3, 0, 2], dtype).unwrap();
        let empty = empty.to(&dev, dtype).unwrap();
        let s = reduce::sum(&empty, 1).unwrap();
        assert_eq!((s.shape(), host(&s)), (&[3, 2][..], vec![0.0; 6]));
        assert_eq!(reduce::sum(&empty, 0).unwrap().shape(), &[0, 2]);
        assert!(matches!(reduce::mean(&empty, 1), Err(Error::Shape { .. })));
    }
}

// ---
// Bad arguments and edge cases.

#[test]
fn reduce_refuses_bad_arguments_with_typed_errors() {
    let x = Tensor::from_f32(&common::random(6, 1.0, 1), &[2, 3], DType::F32).unwrap();
    let scalar = Tensor::from_f32(&[1.0], &[], DType::F32).unwrap();
    for result in [
        reduce::sum(&x, 2),
        reduce::mean(&x, 7),
        reduce::sum(&scalar, 0),
        reduce::sum_backward(&x, &[2, 3], 2),
        reduce::mean_backward(&scalar, &[], 0),
    ] {
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    }
    // grad_y must have x's shape without dim.
    let g = Tensor::from_f32(&[1.0, 2.0], &[2], DType::F32).unwrap();
    for result in [
        reduce::sum_backward(&g, &[2, 3], 0),
        reduce::mean_backward(&g, &[3, 2], 1),
        reduce::sum_backward(&g, &[2, 1, 3], 1),
    ] {
        match result {
            Err(Error::Shape { tensor, .. }) => assert_eq!(tensor, "grad_y"),
            other => panic!("{other:?}"),
        }
    }
    // The mean over a zero-length dimension is refused (PyTorch gives NaN); the sum is 0.
    let empty = Tensor::from_f32(&[], &[3, 0, 2], DType::BF16).unwrap();
    assert!(matches!(reduce::mean(&empty, 1), Err(Error::Shape { .. })));
    let g6 = Tensor::from_f32(&[1.0; 6], &[3, 2], DType::F32).unwrap();
    assert!(matches!(
        reduce::mean_backward(&g6, &[3, 0, 2], 1),
        Err(Error::Shape { .. })
    ));
    let s = reduce::sum(&empty, 1).unwrap();
    assert_eq!(
        (s.shape(), s.dtype(), host(&s)),
        (&[3, 2][..], DType::BF16, vec![0.0; 6])
    );
    let dx = reduce::sum_backward(&g6, &[3, 0, 2], 1).unwrap();
    assert_eq!(dx.shape(), &[3, 0, 2]);
    assert_eq!(reduce::mean(&empty, 0).unwrap().shape(), &[0, 2]);
    // Zero-size shapes whose other products overflow: an error, neither a panic nor a loop.
    let huge = Tensor::from_f32(&[], &[0, 1 << 40, 1 << 40], DType::F32).unwrap();
    assert!(matches!(reduce::sum(&huge, 0), Err(Error::TooLarge { .. })));
    assert_eq!(reduce::sum(&huge, 1).unwrap().shape(), &[0, 1 << 40]);
    let wide = Tensor::from_f32(&[], &[1 << 40, 0, 1 << 30], DType::F32).unwrap();
    assert!(matches!(reduce::sum(&wide, 1), Err(Error::TooLarge { .. })));
    // A gradient that would need more memory than there is: an error, not an abort.
    let big = reduce::sum_backward(&g, &[2, 1 << 61], 1);
    assert!(matches!(big, Err(Error::TooLarge { .. })), "{big:?}");
    // A rank-1 sum gives a scalar (shape []).
    let v = Tensor::from_f32(&[1.0, 2.0, 4.0], &[3], DType::F16).unwrap();
    let s = reduce::sum(&v, 0).unwrap();
    assert_eq!((s.shape(), host(&s)), (&[][..], vec![7.0]));
    let m = reduce::mean_backward(&Tensor::from_f32(&[3.0], &[], DType::F32).unwrap(), &[3], 0);
    assert_eq!(host(&m.unwrap()), [1.0, 1.0, 1.0]);
}
