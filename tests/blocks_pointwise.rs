//! The pointwise building blocks (`ops::pointwise`: sigmoid, tanh, relu, add, mul, and their
//! backward): the CPU reference against PyTorch (tests/fixtures/pointwise, made by
//! scripts/fixtures/make_pointwise_fixtures.py) in every dtype, NaN and infinities included;
//! kernels/pointwise.cu on the host emulation and on CUDA against the CPU in every dtype on odd
//! sizes with poisoned outputs (the CUDA tests skip without a GPU, and fail instead under
//! FUSED_RNN_REQUIRE_GPU=1); typed errors for bad arguments.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::codes;
use fused_rnn::io::TensorFile;
use fused_rnn::ops::pointwise;
use fused_rnn::{DType, Device, Error, Result, Tensor};

type Forward = fn(&Tensor) -> Result<Tensor>;
type Backward = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// (name, forward, backward from the output, the kernels' ACT_* code).
const ACTIVATIONS: [(&str, Forward, Backward, i32); 3] = [
    (
        "sigmoid",
        pointwise::sigmoid,
        pointwise::sigmoid_backward,
        codes::ACT_SIGMOID,
    ),
    (
        "tanh",
        pointwise::tanh,
        pointwise::tanh_backward,
        codes::ACT_TANH,
    ),
    (
        "relu",
        pointwise::relu,
        pointwise::relu_backward,
        codes::ACT_RELU,
    ),
];

/// Odd sizes, one past a block, and one of several grid-stride blocks.
const SIZES: &[&[usize]] = &[&[1], &[7], &[33], &[129], &[3, 7, 33], &[257], &[4099]];

fn fixture(file: &str) -> TensorFile {
    TensorFile::load(common::fixtures("pointwise").join(file)).unwrap()
}

/// The case names of a fixture file (tensor `<case>.<name>`) that start with `op`.
fn cases(file: &TensorFile, op: &str) -> Vec<String> {
    let mut cases: Vec<String> = file
        .names()
        .filter_map(|n| n.strip_suffix(".grad_y"))
        .filter(|c| c.starts_with(&format!("{op}_")))
        .map(String::from)
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no {op} cases in {}",
        file.path().display()
    );
    cases
}

fn load(file: &TensorFile, case: &str, name: &str, dtype: DType) -> Tensor {
    let t = file.float(&format!("{case}.{name}")).unwrap();
    t.to(&Device::Cpu, dtype).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// The fixtures' tolerance: 1e-5 of the largest magnitude in f32 (PyTorch parity), the
/// storage tolerance in 16-bit dtypes (the inputs are rounded to them first).
fn fixture_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        _ => common::tolerance(dtype),
    }
}

/// As `common::assert_close`, where NaN must meet NaN and an infinity the same infinity; the
/// finite values are compared relative to the largest finite reference.
fn assert_close_special(what: &str, got: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    let scale = reference
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    for (k, (&g, &r)) in got.iter().zip(reference).enumerate() {
        let ok = if r.is_nan() {
            g.is_nan()
        } else if r.is_infinite() {
            g == r
        } else {
            (g - r).abs() <= tol * scale + tol * r.abs()
        };
        assert!(ok, "{what}: element {k}: got {g}, expected {r}");
    }
}

// ---
// PyTorch parity of the CPU reference.

#[test]
fn activations_match_pytorch_forward_and_backward() {
    let file = fixture("activations.safetensors");
    for (name, forward, backward, _) in ACTIVATIONS {
        for case in cases(&file, name) {
            for dtype in DType::ALL {
                let what = format!("{case} {dtype}");
                let x = load(&file, &case, "x", dtype);
                let grad_y = load(&file, &case, "grad_y", dtype);
                let y = forward(&x).unwrap();
                assert_eq!(y.shape(), x.shape(), "{what}");
                assert_eq!(y.dtype(), dtype, "{what}");
                let grad_x = backward(&y, &grad_y).unwrap();
                let tol = fixture_tolerance(dtype);
                let want_y = host(&file.float(&format!("{case}.y")).unwrap());
                // A 16-bit y loses 1 − y near saturation (as it does in PyTorch), so there the
                // backward is checked against the float64 formula on the stored y and grad_y.
                let want_dx = if dtype == DType::F32 {
                    host(&file.float(&format!("{case}.grad_x")).unwrap())
                } else {
                    let formula = |y: f64, g: f64| match name {
                        "sigmoid" => g * (1.0 - y) * y,
                        "tanh" => g * (1.0 - y * y),
                        _ => {
                            if y <= 0.0 {
                                0.0
                            } else {
                                g
                            }
                        }
                    };
                    (host(&y).into_iter().zip(host(&grad_y)))
                        .map(|(y, g)| formula(y as f64, g as f64) as f32)
                        .collect()
                };
                assert_close_special(&format!("{what} y"), &host(&y), &want_y, tol);
                assert_close_special(&format!("{what} grad_x"), &host(&grad_x), &want_dx, tol);
            }
        }
    }
}

#[test]
fn add_and_mul_match_pytorch_forward_and_backward() {
    let file = fixture("binary.safetensors");
    for op in ["add", "mul"] {
        for case in cases(&file, op) {
            for dtype in DType::ALL {
                let what = format!("{case} {dtype}");
                let a = load(&file, &case, "a", dtype);
                let b = load(&file, &case, "b", dtype);
                let grad_y = load(&file, &case, "grad_y", dtype);
                let tol = fixture_tolerance(dtype);
                let want = |n: &str| host(&file.float(&format!("{case}.{n}")).unwrap());
                let (y, grad_a, grad_b) = if op == "add" {
                    // add's gradient is grad_y for both inputs (no function of its own).
                    let y = pointwise::add(&a, &b).unwrap();
                    (y, host(&grad_y), host(&grad_y))
                } else {
                    let y = pointwise::mul(&a, &b).unwrap();
                    let (ga, gb) = pointwise::mul_backward(&a, &b, &grad_y).unwrap();
                    (y, host(&ga), host(&gb))
                };
                assert_eq!((y.shape(), y.dtype()), (a.shape(), dtype), "{what}");
                common::assert_close(&format!("{what} y"), &host(&y), &want("y"), tol);
                common::assert_close(&format!("{what} grad_a"), &grad_a, &want("grad_a"), tol);
                common::assert_close(&format!("{what} grad_b"), &grad_b, &want("grad_b"), tol);
            }
        }
    }
}

// ---
// The kernels on the host emulation against the CPU reference.

/// A grid-stride launch as `grid_stride` in src/device/launch.rs makes it (capped at 2^16
/// blocks), or with `blocks` blocks when given (fewer than the elements need: threads loop).
fn grid_stride<'a>(entry: &'a str, n: usize, blocks: Option<u32>, args: Vec<Arg>) -> Launch<'a> {
    let full = n.div_ceil(256).clamp(1, 1 << 16) as u32;
    Launch {
        entry,
        grid: (blocks.unwrap_or(full), 1),
        threads: 256,
        shared: 0,
        args,
    }
}

#[test]
fn pointwise_kernels_on_the_host_match_the_cpu() {
    let test = "pointwise_kernels_on_the_host_match_the_cpu";
    let names: Vec<String> = DType::ALL
        .iter()
        .flat_map(|d| {
            [
                "activation_forward",
                "activation_backward",
                "binary_forward",
                "mul_backward",
            ]
            .map(|op| format!("{op}_{}", d.name()))
        })
        .collect();
    let entries: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(kernels) = HostKernels::build(test, "pointwise", &entries) else {
        return;
    };
    // 1029 elements: five blocks, the last one partly idle; also on two blocks that loop.
    let n = 1029;
    for dtype in DType::ALL {
        let tol = common::tolerance(dtype);
        let (d, width) = (dtype.name(), dtype.size_in_bytes());
        let x = common::rounded(common::random(n, 4.0, 1), dtype);
        let g = common::rounded(common::random(n, 1.0, 2), dtype);
        let xt = Tensor::from_f32(&x, &[n], dtype).unwrap();
        let gt = Tensor::from_f32(&g, &[n], dtype).unwrap();
        for blocks in [None, Some(2)] {
            let what = |op: &str| format!("{op} {dtype} on {blocks:?} blocks");
            let count = Arg::U64(n as u64);
            for (name, forward, backward, code) in ACTIVATIONS {
                let (fwd, bwd) = (
                    format!("activation_forward_{d}"),
                    format!("activation_backward_{d}"),
                );
                let y = forward(&xt).unwrap();
                let dx = backward(&y, &gt).unwrap();
                let out = kernels.run(
                    vec![
                        host_kernels::bytes(&x, dtype),
                        host_kernels::poisoned(n * width),
                        host_kernels::bytes(&host(&y), dtype),
                        host_kernels::bytes(&g, dtype),
                        host_kernels::poisoned(n * width),
                    ],
                    &[
                        grid_stride(&fwd, n, blocks, {
                            vec![Arg::Buf(0), Arg::Buf(1), count, Arg::I32(code)]
                        }),
                        grid_stride(&bwd, n, blocks, {
                            vec![Arg::Buf(2), Arg::Buf(3), Arg::Buf(4), count, Arg::I32(code)]
                        }),
                    ],
                );
                let got_y = host_kernels::values(&out[1], dtype);
                let got_dx = host_kernels::values(&out[4], dtype);
                common::assert_close(&what(name), &got_y, &host(&y), tol);
                common::assert_close(&what(&format!("{name}_backward")), &got_dx, &host(&dx), tol);
            }
            let b = common::rounded(common::random(n, 2.0, 3), dtype);
            let bt = Tensor::from_f32(&b, &[n], dtype).unwrap();
            let (binary, mul_backward) =
                (format!("binary_forward_{d}"), format!("mul_backward_{d}"));
            // binary_forward of buffers 0 and 1 into `out` with `code`.
            let binary_into = |out: usize, code: i32| {
                let args = vec![
                    Arg::Buf(0),
                    Arg::Buf(1),
                    Arg::Buf(out),
                    count,
                    Arg::I32(code),
                ];
                grid_stride(&binary, n, blocks, args)
            };
            let out = kernels.run(
                vec![
                    host_kernels::bytes(&x, dtype),
                    host_kernels::bytes(&b, dtype),
                    host_kernels::bytes(&g, dtype),
                    host_kernels::poisoned(n * width),
                    host_kernels::poisoned(n * width),
                    host_kernels::poisoned(n * width),
                    host_kernels::poisoned(n * width),
                ],
                &[
                    binary_into(3, codes::POINTWISE_ADD),
                    binary_into(4, codes::POINTWISE_MUL),
                    grid_stride(&mul_backward, n, blocks, {
                        let bufs = (0..2).chain(2..3).chain(5..7).map(Arg::Buf);
                        bufs.chain([count]).collect()
                    }),
                ],
            );
            let (ga, gb) = pointwise::mul_backward(&xt, &bt, &gt).unwrap();
            for (k, op, want) in [
                (3, "add", pointwise::add(&xt, &bt).unwrap()),
                (4, "mul", pointwise::mul(&xt, &bt).unwrap()),
                (5, "mul_backward a", ga),
                (6, "mul_backward b", gb),
            ] {
                let got = host_kernels::values(&out[k], dtype);
                common::assert_close(&what(op), &got, &host(&want), tol);
            }
        }
    }
}

// ---
// CUDA against the CPU.

#[test]
fn pointwise_on_cuda_matches_the_cpu_for_every_dtype() {
    let Some(dev) = common::cuda_or_skip("pointwise_on_cuda_matches_the_cpu_for_every_dtype")
    else {
        return;
    };
    for dtype in DType::ALL {
        let tol = common::tolerance(dtype);
        for (k, &shape) in SIZES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let seed = 10 * k as u64;
            let values = |scale, s| common::rounded(common::random(n, scale, seed + s), dtype);
            let cpu = |v: &[f32]| Tensor::from_f32(v, shape, dtype).unwrap();
            let (x, g, b) = (values(4.0, 1), values(1.0, 2), values(2.0, 3));
            let (xc, gc, bc) = (cpu(&x), cpu(&g), cpu(&b));
            let gpu = |t: &Tensor| t.to(&dev, dtype).unwrap();
            let (xg, gg, bg) = (gpu(&xc), gpu(&gc), gpu(&bc));
            let check = |what: &str, got: &Tensor, want: &Tensor| {
                assert!(got.is_cuda(), "{what}: the result left the device");
                assert_eq!((got.shape(), got.dtype()), (want.shape(), dtype), "{what}");
                let what = format!("{what} {dtype} {shape:?}");
                common::assert_close(&what, &host(got), &host(want), tol);
            };
            for (name, forward, backward, _) in ACTIVATIONS {
                let (y_cpu, y_gpu) = (forward(&xc).unwrap(), forward(&xg).unwrap());
                check(name, &y_gpu, &y_cpu);
                // The backward from one output, so that only the backward differs.
                let y_from_cpu = gpu(&y_cpu);
                let dx_cpu = backward(&y_cpu, &gc).unwrap();
                check(
                    &format!("{name}_backward"),
                    &backward(&y_from_cpu, &gg).unwrap(),
                    &dx_cpu,
                );
            }
            check(
                "add",
                &pointwise::add(&xg, &bg).unwrap(),
                &pointwise::add(&xc, &bc).unwrap(),
            );
            check(
                "mul",
                &pointwise::mul(&xg, &bg).unwrap(),
                &pointwise::mul(&xc, &bc).unwrap(),
            );
            let (da, db) = pointwise::mul_backward(&xg, &bg, &gg).unwrap();
            let (da_c, db_c) = pointwise::mul_backward(&xc, &bc, &gc).unwrap();
            check("mul_backward a", &da, &da_c);
            check("mul_backward b", &db, &db_c);
        }
    }
}

#[test]
fn pointwise_on_cuda_keeps_nan_and_infinities_as_the_cpu() {
    let Some(dev) = common::cuda_or_skip("pointwise_on_cuda_keeps_nan_and_infinities_as_the_cpu")
    else {
        return;
    };
    let x = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        30.0,
        -30.0,
        0.5,
    ];
    let g: Vec<f32> = (0..x.len()).map(|k| k as f32 - 3.5).collect();
    for dtype in DType::ALL {
        let xc = Tensor::from_f32(&x, &[x.len()], dtype).unwrap();
        let gc = Tensor::from_f32(&g, &[g.len()], dtype).unwrap();
        for (name, forward, backward, _) in ACTIVATIONS {
            let y = forward(&xc).unwrap();
            let y_gpu = forward(&xc.to(&dev, dtype).unwrap()).unwrap();
            let tol = common::tolerance(dtype);
            assert_close_special(&format!("{name} {dtype}"), &host(&y_gpu), &host(&y), tol);
            let dx = backward(&y, &gc).unwrap();
            let dx_gpu =
                backward(&y.to(&dev, dtype).unwrap(), &gc.to(&dev, dtype).unwrap()).unwrap();
            let what = format!("{name}_backward {dtype}");
            assert_close_special(&what, &host(&dx_gpu), &host(&dx), tol);
        }
    }
}

#[test]
fn pointwise_on_cuda_checks_devices_and_handles_empty_tensors() {
    let Some(dev) =
        common::cuda_or_skip("pointwise_on_cuda_checks_devices_and_handles_empty_tensors")
    else {
        return;
    };
    let a = Tensor::from_f32(&[1.0, 2.0], &[2], DType::F32).unwrap();
    let a_gpu = a.to(&dev, DType::F32).unwrap();
    for result in [
        pointwise::add(&a_gpu, &a).map(|_| ()),
        pointwise::mul(&a, &a_gpu).map(|_| ()),
        pointwise::mul_backward(&a_gpu, &a_gpu, &a).map(|_| ()),
        pointwise::sigmoid_backward(&a_gpu, &a).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::DeviceMismatch { .. })),
            "{result:?}"
        );
    }
    for dtype in DType::ALL {
        // Zero-size CUDA tensors in, zero-size CUDA tensors out, without a launch.
        let empty = Tensor::from_f32(&[], &[3, 0], dtype).unwrap();
        let empty = empty.to(&dev, dtype).unwrap();
        assert_eq!(
            host(&empty.to(&dev, DType::F32).unwrap()),
            Vec::<f32>::new()
        );
        for (_, forward, backward, _) in ACTIVATIONS {
            let y = forward(&empty).unwrap();
            assert_eq!(
                (y.shape(), y.dtype(), y.is_cuda()),
                (&[3, 0][..], dtype, true)
            );
            assert_eq!(backward(&y, &empty).unwrap().shape(), &[3, 0]);
        }
        assert_eq!(pointwise::mul(&empty, &empty).unwrap().shape(), &[3, 0]);
    }
}

// ---
// Bad arguments.

#[test]
fn pointwise_ops_refuse_bad_arguments_with_typed_errors() {
    let t = |n: usize, shape: &[usize], dtype| {
        Tensor::from_f32(&common::random(n, 1.0, 9), shape, dtype).unwrap()
    };
    let a = t(6, &[2, 3], DType::F32);
    let b_shape = t(6, &[3, 2], DType::F32);
    let b_len = t(7, &[7], DType::F32);
    let b_dtype = t(6, &[2, 3], DType::F16);
    for b in [&b_shape, &b_len] {
        for result in [
            pointwise::add(&a, b),
            pointwise::mul(&a, b),
            pointwise::sigmoid_backward(&a, b),
            pointwise::tanh_backward(&a, b),
            pointwise::relu_backward(&a, b),
            pointwise::mul_backward(&a, &a, b).map(|r| r.0),
            pointwise::mul_backward(&a, b, &a).map(|r| r.0),
        ] {
            assert!(matches!(result, Err(Error::Shape { .. })), "{result:?}");
        }
    }
    for result in [
        pointwise::add(&a, &b_dtype),
        pointwise::mul(&b_dtype, &a),
        pointwise::relu_backward(&a, &b_dtype),
        pointwise::mul_backward(&a, &a, &b_dtype).map(|r| r.0),
    ] {
        match result {
            Err(Error::DType { tensor, .. }) => assert!(["a", "b", "grad_y"].contains(&&*tensor)),
            other => panic!("{other:?}"),
        }
    }
    // Zero-size tensors give zero-size results of their shape and dtype.
    for dtype in DType::ALL {
        let empty = Tensor::from_f32(&[], &[0, 5], dtype).unwrap();
        for (_, forward, backward, _) in ACTIVATIONS {
            let y = forward(&empty).unwrap();
            assert_eq!((y.shape(), y.dtype()), (&[0, 5][..], dtype));
            assert_eq!(backward(&y, &empty).unwrap().shape(), &[0, 5]);
        }
        let (da, db) = pointwise::mul_backward(&empty, &empty, &empty).unwrap();
        assert_eq!((da.numel(), db.numel()), (0, 0));
    }
}
