//! nn.Linear and nn.Embedding (`ops::linear`, `ops::embedding`, and the layers over them): the
//! CPU reference against PyTorch fixtures (forward and backward), CUDA against the CPU on every
//! dtype with odd sizes and poisoned outputs (cuBLASLt and its fallback), kernels/linear.cu and
//! kernels/embedding.cu on the host through the emulation, and bad inputs.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::codes::{
    ERROR_EMBEDDING, ERROR_EMBEDDING_BACKWARD, ERROR_RECORD_WORDS, LINEAR_GRAD_COLS,
    LINEAR_GRAD_ROWS,
};
use fused_rnn::device::kernels::ids;
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{Embedding, Linear};
use fused_rnn::ops::{embedding, linear};
use fused_rnn::{DType, Device, Error, Indices, Tensor};
use std::path::PathBuf;

/// The bias gradient's block (columns × row lanes), as the launcher sizes it.
const GRAD_COLS: usize = LINEAR_GRAD_COLS as usize;
const GRAD_ROWS: usize = LINEAR_GRAD_ROWS as usize;

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// A host tensor of `dtype` holding `values` (rounded to it).
fn tensor(values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(values, shape, dtype).unwrap()
}

/// Compares shapes, then values to `tol` of the reference's largest magnitude.
fn close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    common::assert_close(what, &host(got), &host(want), tol);
}

// ---------------------------------------------------------------------------------------------
// PyTorch fixtures (scripts/fixtures/make_linear_fixtures.py)

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::fixtures("linear"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

fn check_linear_fixture(f: &TensorFile, case: &str) {
    let x = f.float("input").unwrap();
    let bias = f.contains("bias").then(|| f.float("bias").unwrap());
    let layer = Linear {
        weight: f.float("weight").unwrap(),
        bias,
    };
    let g = f.float("grad_output").unwrap();
    let y = layer.forward(&x).unwrap();
    close(
        &format!("{case}: output"),
        &y,
        &f.float("output").unwrap(),
        1e-5,
    );
    let grads = layer.backward(&x, &g).unwrap();
    let want = |name: &str| f.float(name).unwrap();
    close(
        &format!("{case}: input.grad"),
        &grads.input,
        &want("input.grad"),
        1e-5,
    );
    close(
        &format!("{case}: weight.grad"),
        &grads.weight,
        &want("weight.grad"),
        1e-5,
    );
    match (&grads.bias, f.contains("bias.grad")) {
        (Some(db), true) => close(&format!("{case}: bias.grad"), db, &want("bias.grad"), 1e-5),
        (None, false) => {}
        (got, _) => panic!(
            "{case}: a bias gradient {:?}",
            got.as_ref().map(|t| t.shape())
        ),
    }
}

fn check_embedding_fixture(f: &TensorFile, case: &str) {
    let (ids, shape) = f.ints("ids").unwrap();
    let ids = Indices::from_vec(ids.iter().map(|&i| i as i32).collect(), &shape).unwrap();
    let padding_idx = f.metadata("padding_idx").map(|p| p.parse().unwrap());
    let layer = Embedding {
        weight: f.float("weight").unwrap(),
        padding_idx,
    };
    let y = layer.forward(&ids).unwrap();
    // A gather copies values: exact.
    assert_eq!(
        y.shape(),
        f.shape("output").unwrap(),
        "{case}: output shape"
    );
    assert_eq!(
        host(&y),
        host(&f.float("output").unwrap()),
        "{case}: output"
    );
    let dw = layer
        .backward(&ids, &f.float("grad_output").unwrap())
        .unwrap();
    let want = f.float("weight.grad").unwrap();
    close(&format!("{case}: weight.grad"), &dw, &want, 1e-5);
    if let Some(p) = padding_idx {
        let dim = want.shape()[1];
        assert!(
            host(&dw)[p * dim..(p + 1) * dim].iter().all(|&v| v == 0.0),
            "{case}: the padding row has no gradient"
        );
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    let files = fixture_files();
    assert_eq!(files.len(), 8, "the fixtures of make_linear_fixtures.py");
    for path in files {
        let f = TensorFile::load(&path).unwrap();
        let case = path.file_stem().unwrap().to_string_lossy().to_string();
        match f.metadata("kind") {
            Some("linear") => check_linear_fixture(&f, &case),
            Some("embedding") => check_embedding_fixture(&f, &case),
            other => panic!("{case}: kind {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CUDA against the CPU

/// (leading dimensions of x, in, out, bias): odd sizes, 1×1, no bias, a 1-D input, a long
/// reduction, an aligned shape (cuBLASLt's tensor-core kernels), and the zero sizes.
const LINEAR_CASES: &[(&[usize], usize, usize, bool)] = &[
    (&[129], 7, 33, true),
    (&[129], 7, 33, false),
    (&[3, 43], 7, 33, true),
    (&[1], 1, 1, true),
    (&[1], 1, 1, false),
    (&[], 5, 3, true),
    (&[7], 1000, 1, true),
    (&[33], 64, 128, true),
    (&[5], 0, 4, true),
    (&[0], 3, 4, true),
    (&[4], 3, 0, true),
];

/// Random x, W, b and grad_y for a case, rounded to `dtype`, as host f32 tensors.
fn linear_problem(
    (lead, input, output, bias): (&[usize], usize, usize, bool),
    dtype: DType,
    seed: u64,
) -> (Tensor, Tensor, Option<Tensor>, Tensor) {
    let rows: usize = lead.iter().product();
    let bound = 1.0 / (input.max(1) as f32).sqrt();
    let f32t = |v: Vec<f32>, shape: &[usize]| tensor(&common::rounded(v, dtype), shape, DType::F32);
    let x = f32t(
        common::random(rows * input, 1.0, seed),
        &[lead, &[input]].concat(),
    );
    let w = f32t(
        common::random(output * input, bound, seed + 1),
        &[output, input],
    );
    let b = bias.then(|| f32t(common::random(output, bound, seed + 2), &[output]));
    let g = f32t(
        common::random(rows * output, 1.0, seed + 3),
        &[lead, &[output]].concat(),
    );
    (x, w, b, g)
}

#[test]
fn cuda_linear_matches_cpu_on_every_dtype() {
    let Some(dev) = common::cuda_or_skip("cuda_linear_matches_cpu_on_every_dtype") else {
        return;
    };
    let cuda = dev.as_cuda().unwrap();
    let mut failures = Vec::new();
    for lt in [true, false] {
        cuda.set_cublaslt(lt);
        for (k, &case) in LINEAR_CASES.iter().enumerate() {
            for dtype in DType::ALL {
                let (x, w, b, g) = linear_problem(case, dtype, 10 * k as u64);
                let y_ref = linear::forward(&x, &w, b.as_ref()).unwrap();
                let grads_ref = linear::backward(&x, &w, b.is_some(), &g).unwrap();
                let on = |t: &Tensor| t.to(&dev, dtype).unwrap();
                let (xd, wd, gd) = (on(&x), on(&w), on(&g));
                let bd = b.as_ref().map(on);
                let y = linear::forward(&xd, &wd, bd.as_ref()).unwrap();
                let grads = linear::backward(&xd, &wd, bd.is_some(), &gd).unwrap();
                let tol = common::tolerance(dtype);
                let name = |what: &str| format!("{case:?} {dtype} cublaslt {lt}: {what}");
                let mut compare = |what: &str, got: &Tensor, want: &Tensor| {
                    assert!(got.is_cuda() && got.dtype() == dtype, "{}", name(what));
                    assert_eq!(got.shape(), want.shape(), "{}", name(what));
                    failures.extend(common::mismatch(&name(what), &host(got), &host(want), tol));
                };
                compare("output", &y, &y_ref);
                compare("input.grad", &grads.input, &grads_ref.input);
                compare("weight.grad", &grads.weight, &grads_ref.weight);
                assert_eq!(grads.bias.is_some(), case.3);
                if let (Some(db), Some(want)) = (&grads.bias, &grads_ref.bias) {
                    compare("bias.grad", db, want);
                }
            }
        }
    }
    cuda.set_cublaslt(true);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An input, then a bias, one element past an aligned address (2 bytes for 16-bit dtypes):
/// cuBLASLt must find an algorithm for that alignment or leave the work to the fallback, never
/// misread.
#[test]
fn cuda_linear_reads_misaligned_operands() {
    let Some(dev) = common::cuda_or_skip("cuda_linear_reads_misaligned_operands") else {
        return;
    };
    let cuda = dev.as_cuda().unwrap();
    let (rows, input, output) = (33, 16, 24);
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        let (x, w, b, _) = linear_problem((&[rows], input, output, true), dtype, 77);
        let b = b.unwrap();
        let want = linear::forward(&x, &w, Some(&b)).unwrap();
        let wd = w.to(&dev, dtype).unwrap();
        // [pad, values...] on the device, the values lent from element 1.
        let padded = |t: &Tensor| {
            let v = [vec![0.5], host(t)].concat();
            tensor(&v, &[v.len()], dtype).to(&dev, dtype).unwrap()
        };
        let (xp, bp) = (padded(&x), padded(&b));
        let (xd, bd) = (x.to(&dev, dtype).unwrap(), b.to(&dev, dtype).unwrap());
        for shifted in ["input", "bias"] {
            let got = fused_rnn::with_dtype!(dtype, T => {
                let (whole, shape) = match shifted {
                    "input" => (&xp, vec![rows, input]),
                    _ => (&bp, vec![output]),
                };
                let slice = whole.cuda_slice::<T>().unwrap();
                let view = Tensor::borrow_cuda_slice(slice, 1, &shape, cuda).unwrap();
                match shifted {
                    "input" => linear::forward(&view, &wd, Some(&bd)).unwrap(),
                    _ => linear::forward(&xd, &wd, Some(&view)).unwrap(),
                }
            });
            let what = format!("{dtype}, {shifted} misaligned");
            close(&what, &got, &want, common::tolerance(dtype));
        }
    }
}

/// The layers on a device: parameters made there, forward and backward through the ops.
#[test]
fn cuda_layers_match_their_cpu_copies() {
    let Some(dev) = common::cuda_or_skip("cuda_layers_match_their_cpu_copies") else {
        return;
    };
    for dtype in DType::ALL {
        let tol = common::tolerance(dtype);
        let lin = Linear::random(7, 33, true, &dev, dtype, 3).unwrap();
        assert!(lin.weight.is_cuda() && lin.weight.dtype() == dtype);
        let cpu = Linear {
            weight: lin.weight.to(&Device::Cpu, DType::F32).unwrap(),
            bias: lin
                .bias
                .as_ref()
                .map(|b| b.to(&Device::Cpu, DType::F32).unwrap()),
        };
        let x = tensor(&common::random(5 * 7, 1.0, 4), &[5, 7], DType::F32);
        let x = tensor(
            &host(&x.to(&Device::Cpu, dtype).unwrap()),
            &[5, 7],
            DType::F32,
        );
        close(
            &format!("Linear {dtype}"),
            &lin.forward(&x.to(&dev, dtype).unwrap()).unwrap(),
            &cpu.forward(&x).unwrap(),
            tol,
        );
        let emb = Embedding::random(11, 9, Some(4), &dev, dtype, 5).unwrap();
        let cpu_emb = Embedding {
            weight: emb.weight.to(&Device::Cpu, DType::F32).unwrap(),
            padding_idx: Some(4),
        };
        let ids = Indices::from_vec(vec![4, 0, 10, 4, 3, 3], &[2, 3]).unwrap();
        let y = emb.forward(&ids.to(&dev).unwrap()).unwrap();
        assert_eq!(host(&y), host(&cpu_emb.forward(&ids).unwrap()));
        let g = tensor(&common::random(6 * 9, 1.0, 6), &[2, 3, 9], dtype);
        close(
            &format!("Embedding {dtype}"),
            &emb.backward(&ids.to(&dev).unwrap(), &g.to(&dev, dtype).unwrap())
                .unwrap(),
            &cpu_emb
                .backward(&ids, &g.to(&Device::Cpu, DType::F32).unwrap())
                .unwrap(),
            tol,
        );
    }
}

/// (vocab, dim, ids shape, padding): odd sizes, 1×1, a row wider than a block, more ids than
/// grid.y's limit (the kernels' stride over ids).
const EMBEDDING_CASES: &[(usize, usize, &[usize], Option<usize>)] = &[
    (129, 33, &[7, 13], Some(5)),
    (1, 1, &[1], None),
    (7, 1000, &[3, 3], Some(0)),
    (4099, 2, &[70_000], None),
    (5, 3, &[0], Some(1)),
];

/// Seeded ids in [0, vocab), every row of a small table drawn, with repeats.
fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<i32> {
    common::random(n, 1.0, seed)
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let r = ((u + 1.0) * 0.5 * vocab as f32) as usize;
            (if i < vocab { i } else { r.min(vocab - 1) }) as i32
        })
        .collect()
}

#[test]
fn cuda_embedding_matches_cpu_on_every_dtype() {
    let Some(dev) = common::cuda_or_skip("cuda_embedding_matches_cpu_on_every_dtype") else {
        return;
    };
    let mut failures = Vec::new();
    for (k, &(vocab, dim, shape, pad)) in EMBEDDING_CASES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let ids = Indices::from_vec(random_ids(n, vocab, k as u64), shape).unwrap();
        let ids_d = ids.to(&dev).unwrap();
        for dtype in DType::ALL {
            let w = tensor(
                &common::rounded(common::random(vocab * dim, 1.0, 100 + k as u64), dtype),
                &[vocab, dim],
                DType::F32,
            );
            let g_shape = [shape, &[dim]].concat();
            let g = tensor(
                &common::rounded(common::random(n * dim, 1.0, 200 + k as u64), dtype),
                &g_shape,
                DType::F32,
            );
            let name = format!("V {vocab} E {dim} ids {shape:?} {dtype}");
            let y = embedding::forward(&w.to(&dev, dtype).unwrap(), &ids_d).unwrap();
            assert!(y.is_cuda() && y.dtype() == dtype && y.shape() == g_shape.as_slice());
            // A gather copies stored values: exact.
            let want = embedding::forward(&w, &ids).unwrap();
            if host(&y) != host(&want) {
                failures.push(format!("{name}: forward differs"));
            }
            let dw = embedding::backward(&ids_d, &g.to(&dev, dtype).unwrap(), vocab, pad).unwrap();
            assert!(dw.is_cuda() && dw.dtype() == dtype && dw.shape() == [vocab, dim]);
            let want = embedding::backward(&ids, &g, vocab, pad).unwrap();
            let tol = common::tolerance(dtype);
            failures.extend(common::mismatch(&name, &host(&dw), &host(&want), tol));
        }
    }
    // Every id was in range: nothing was reported.
    dev.as_cuda().unwrap().check_errors().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// CUDA ids outside the vocabulary: zero rows and no gradient, never an access out of bounds,
/// and the device's error record names one of them (forward and backward apart).
#[test]
fn cuda_embedding_ids_out_of_range_are_zero_rows_and_a_checked_error() {
    let test = "cuda_embedding_ids_out_of_range_are_zero_rows_and_a_checked_error";
    let Some(dev) = common::cuda_or_skip(test) else {
        return;
    };
    let (vocab, dim) = (6, 5);
    let raw = vec![2, -1, 5, 6, 0, i32::MAX, 2, i32::MIN];
    let bad = |id: i32| !(0..vocab as i32).contains(&id);
    let ids = Indices::from_vec(raw.clone(), &[2, 4]).unwrap();
    let ids_d = ids.to(&dev).unwrap();
    // The reference: bad ids replaced by 0, their rows zeroed (forward) or their gradient
    // rows zeroed (backward).
    let fixed = Indices::from_vec(
        raw.iter().map(|&i| if bad(i) { 0 } else { i }).collect(),
        &[2, 4],
    )
    .unwrap();
    let keep: Vec<f32> = raw
        .iter()
        .flat_map(|&i| std::iter::repeat_n(if bad(i) { 0.0 } else { 1.0 }, dim))
        .collect();
    let masked = |v: Vec<f32>| -> Vec<f32> { v.iter().zip(&keep).map(|(a, m)| a * m).collect() };
    let w = tensor(
        &common::random(vocab * dim, 1.0, 1),
        &[vocab, dim],
        DType::F32,
    );
    let g = tensor(&common::random(8 * dim, 1.0, 2), &[2, 4, dim], DType::F32);
    let cuda = dev.as_cuda().unwrap();
    cuda.check_errors().unwrap();
    // The first report wins, and blocks run in any order: any bad id may be the one named.
    let reported = |what: &str, want: &str| match cuda.check_errors() {
        Err(Error::Index {
            tensor,
            position,
            value,
            limit,
        }) => {
            assert_eq!((tensor.as_str(), limit), (want, vocab), "{what}");
            assert!(
                bad(raw[position]) && raw[position] as i64 == value,
                "{what}: {position}"
            );
        }
        other => panic!("{what}: expected a bad id reported, got {other:?}"),
    };
    let y = embedding::forward(&w.to(&dev, DType::F32).unwrap(), &ids_d).unwrap();
    assert_eq!(
        host(&y),
        masked(host(&embedding::forward(&w, &fixed).unwrap()))
    );
    reported("forward", "embedding ids");
    cuda.check_errors().unwrap();
    let g_masked = tensor(&masked(host(&g)), &[2, 4, dim], DType::F32);
    let dw = embedding::backward(&ids_d, &g.to(&dev, DType::F32).unwrap(), vocab, Some(2)).unwrap();
    let want = embedding::backward(&fixed, &g_masked, vocab, Some(2)).unwrap();
    close("backward", &dw, &want, common::tolerance(DType::F32));
    reported("backward", "embedding_backward ids");
    // Mixed devices.
    let cpu_w = w;
    assert!(matches!(
        embedding::forward(&cpu_w, &ids_d),
        Err(Error::DeviceMismatch { .. })
    ));
    let x = tensor(&common::random(3, 1.0, 3), &[1, 3], DType::F32);
    let lw = tensor(&common::random(6, 1.0, 4), &[2, 3], DType::F32);
    assert!(matches!(
        linear::forward(&x.to(&dev, DType::F32).unwrap(), &lw, None),
        Err(Error::DeviceMismatch { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The kernels on the host (tests/common/host_kernels.rs), with the launchers' geometry

/// `linear_bias` after a product in f32 (and with no product: in = 0), and `linear_bias_grad`,
/// against the CPU reference.
#[test]
fn linear_kernels_match_cpu_on_the_host() {
    let test = "linear_kernels_match_cpu_on_the_host";
    let (bias_kernel, grad_kernel) = (ids::linear::LINEAR_BIAS, ids::linear::LINEAR_BIAS_GRAD);
    let kernels = [bias_kernel, grad_kernel];
    let Some(kernels) = HostKernels::build_every_dtype(test, "linear", &kernels) else {
        return;
    };
    // (rows, in, out, bias)
    let cases = [
        (129, 7, 33, true),
        (1, 1, 1, true),
        (5, 0, 4, true),
        (3, 0, 300, false),
        (300, 3, 70, true),
        (0, 2, 5, true),
    ];
    for (rows, input, output, with_bias) in cases {
        for dtype in DType::ALL {
            let name = format!("rows {rows} in {input} out {output} bias {with_bias} {dtype}");
            let (x, w, b, g) =
                linear_problem((&[rows], input, output, with_bias), dtype, rows as u64);
            let size = dtype.size_in_bytes();
            let tol = common::tolerance(dtype);
            // Forward: the product of no bias in f32, then the epilogue kernel.
            let acc = host(&linear::forward(&x, &w, None).unwrap());
            let want = linear::forward(&x, &w, b.as_ref()).unwrap();
            let forward = Launch {
                entry: &bias_kernel.entry_point(dtype),
                grid: (output.div_ceil(256) as u32, rows.min(65535) as u32),
                threads: 256,
                shared: 0,
                args: vec![
                    if input > 0 { Arg::Buf(0) } else { Arg::Null },
                    if with_bias { Arg::Buf(1) } else { Arg::Null },
                    Arg::Buf(2),
                    Arg::I32(rows as i32),
                    Arg::I32(output as i32),
                ],
            };
            let bias = b.as_ref().map_or(vec![], host);
            if rows * output > 0 {
                let out = kernels.run(
                    vec![
                        host_kernels::bytes(&acc, DType::F32),
                        host_kernels::bytes(&bias, dtype),
                        host_kernels::poisoned(rows * output * size),
                    ],
                    &[forward],
                );
                let got = host_kernels::values(&out[2], dtype);
                common::assert_close(&format!("{name}: output"), &got, &host(&want), tol);
            }
            // Backward: the bias gradient.
            if !with_bias || output == 0 {
                continue;
            }
            let want = linear::backward(&x, &w, true, &g).unwrap().bias.unwrap();
            let out = kernels.run(
                vec![
                    host_kernels::bytes(&host(&g), dtype),
                    host_kernels::poisoned(output * size),
                ],
                &[Launch {
                    entry: &grad_kernel.entry_point(dtype),
                    grid: (output.div_ceil(GRAD_COLS) as u32, 1),
                    threads: 256,
                    shared: GRAD_COLS * GRAD_ROWS * 4,
                    args: vec![
                        Arg::Buf(0),
                        Arg::Buf(1),
                        Arg::I32(rows as i32),
                        Arg::I32(output as i32),
                    ],
                }],
            );
            let got = host_kernels::values(&out[1], dtype);
            common::assert_close(&format!("{name}: bias.grad"), &got, &host(&want), tol);
        }
    }
}

/// The gather and the scatter into an f32 accumulator against the CPU reference, ids out of
/// range included (skipped, and one of them in the error record).
#[test]
fn embedding_kernels_match_cpu_on_the_host() {
    let test = "embedding_kernels_match_cpu_on_the_host";
    let (gather, scatter) = (
        ids::embedding::EMBEDDING_GATHER,
        ids::embedding::EMBEDDING_SCATTER,
    );
    let Some(kernels) = HostKernels::build_every_dtype(test, "embedding", &[gather, scatter])
    else {
        return;
    };
    let grid = |n: usize, dim: usize| (dim.div_ceil(256) as u32, n.min(65535) as u32);
    // (vocab, dim, n, padding, with ids out of range)
    let cases = [
        (129, 33, 91, Some(5), false),
        (1, 1, 1, None, false),
        (7, 300, 9, Some(0), false),
        (6, 5, 8, Some(2), true),
    ];
    for (vocab, dim, n, pad, with_bad) in cases {
        let mut ids = random_ids(n, vocab, n as u64);
        if with_bad {
            ids[1] = -1;
            ids[3] = vocab as i32;
            ids[5] = i32::MIN;
        }
        let bad = |id: i32| !(0..vocab as i32).contains(&id);
        // The reference: bad ids replaced by 0, their output rows and gradient rows zeroed.
        let fixed: Vec<i32> = ids.iter().map(|&i| if bad(i) { 0 } else { i }).collect();
        let fixed = Indices::from_vec(fixed, &[n]).unwrap();
        let keep: Vec<f32> = ids
            .iter()
            .flat_map(|&i| std::iter::repeat_n(if bad(i) { 0.0 } else { 1.0 }, dim))
            .collect();
        let masked = |v: &[f32]| -> Vec<f32> { v.iter().zip(&keep).map(|(a, k)| a * k).collect() };
        for dtype in DType::ALL {
            let name = format!("V {vocab} E {dim} n {n} {dtype}");
            let size = dtype.size_in_bytes();
            let w = common::rounded(common::random(vocab * dim, 1.0, 7), dtype);
            let g = common::rounded(common::random(n * dim, 1.0, 8), dtype);
            let (n_i, dim_i, vocab_i) = (n as i32, dim as i32, vocab as i32);
            let out = kernels.run(
                vec![
                    host_kernels::bytes(&w, dtype),
                    host_kernels::bytes_i32(&ids),
                    host_kernels::poisoned(n * dim * size),
                    host_kernels::bytes(&g, dtype),
                    vec![0; vocab * dim * 4],
                    host_kernels::bytes_i32(&[0; ERROR_RECORD_WORDS as usize]),
                    host_kernels::bytes_i32(&[0; ERROR_RECORD_WORDS as usize]),
                ],
                &[
                    Launch {
                        entry: &gather.entry_point(dtype),
                        grid: grid(n, dim),
                        threads: 256,
                        shared: 0,
                        args: vec![
                            Arg::Buf(0),
                            Arg::Buf(1),
                            Arg::Buf(2),
                            Arg::Buf(5),
                            Arg::I32(ERROR_EMBEDDING),
                            Arg::I32(n_i),
                            Arg::I32(dim_i),
                            Arg::I32(vocab_i),
                        ],
                    },
                    Launch {
                        entry: &scatter.entry_point(dtype),
                        grid: grid(n, dim),
                        threads: 256,
                        shared: 0,
                        args: vec![
                            Arg::Buf(3),
                            Arg::Buf(1),
                            Arg::Buf(4),
                            Arg::Buf(6),
                            Arg::I32(ERROR_EMBEDDING_BACKWARD),
                            Arg::I32(n_i),
                            Arg::I32(dim_i),
                            Arg::I32(vocab_i),
                            Arg::I32(pad.map_or(-1, |p| p as i32)),
                        ],
                    },
                ],
            );
            let table = tensor(&w, &[vocab, dim], DType::F32);
            let want = masked(&host(&embedding::forward(&table, &fixed).unwrap()));
            assert_eq!(host_kernels::values(&out[2], dtype), want, "{name}: gather");
            let grad = tensor(&masked(&g), &[n, dim], DType::F32);
            let want = embedding::backward(&fixed, &grad, vocab, pad).unwrap();
            let got = host_kernels::values(&out[4], DType::F32);
            common::assert_close(&format!("{name}: scatter"), &got, &host(&want), 2e-5);
            for (record, code) in [
                (&out[5], ERROR_EMBEDDING),
                (&out[6], ERROR_EMBEDDING_BACKWARD),
            ] {
                let record = host_kernels::ints(record);
                if with_bad {
                    // {code, position, id, vocab}: blocks run in any order, any bad id may win.
                    let p = record[1] as usize;
                    assert_eq!(record[0], code, "{name}: {record:?}");
                    assert!(bad(ids[p]) && record[2] == ids[p], "{name}: {record:?}");
                    assert_eq!(record[3], vocab_i, "{name}: {record:?}");
                } else {
                    assert_eq!(record, [0; 4], "{name}: nothing reported");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: typed errors, never a panic

fn f32s(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    tensor(&common::random(n, 1.0, n as u64 + 1), shape, DType::F32)
}

#[test]
fn bad_linear_inputs_are_typed_errors() {
    let (x, w, b, g) = (f32s(&[4, 3]), f32s(&[5, 3]), f32s(&[5]), f32s(&[4, 5]));
    let shape_err = |r: fused_rnn::Result<Tensor>, tensor: &str| match r {
        Err(Error::Shape { tensor: t, .. }) => assert_eq!(t, tensor),
        other => panic!("expected a shape error naming {tensor}, got {other:?}"),
    };
    shape_err(linear::forward(&x, &f32s(&[15]), None), "weight");
    shape_err(linear::forward(&x, &f32s(&[1, 5, 3]), None), "weight");
    shape_err(linear::forward(&f32s(&[4, 4]), &w, None), "input");
    shape_err(linear::forward(&f32s(&[]), &w, None), "input");
    shape_err(linear::forward(&x, &w, Some(&f32s(&[4]))), "bias");
    shape_err(linear::forward(&x, &w, Some(&f32s(&[1, 5]))), "bias");
    let half = |t: &Tensor| t.to(&Device::Cpu, DType::F16).unwrap();
    let dtype_err = |r: fused_rnn::Result<Tensor>, tensor: &str| match r {
        Err(Error::DType { tensor: t, .. }) => assert_eq!(t, tensor),
        other => panic!("expected a dtype error naming {tensor}, got {other:?}"),
    };
    dtype_err(linear::forward(&x, &half(&w), None), "weight");
    dtype_err(linear::forward(&x, &w, Some(&half(&b))), "bias");
    dtype_err(linear::forward(&half(&x), &w, None), "weight");
    let backward = |x: &Tensor, g: &Tensor| linear::backward(x, &w, true, g).map(|r| r.input);
    shape_err(backward(&x, &f32s(&[4, 4])), "grad_y");
    shape_err(backward(&x, &f32s(&[2, 2, 5])), "grad_y");
    shape_err(backward(&f32s(&[4, 2]), &g), "input");
    dtype_err(backward(&x, &half(&g)), "grad_y");
    // The layer reports the same.
    let layer = Linear {
        weight: w,
        bias: Some(f32s(&[6])),
    };
    shape_err(layer.forward(&x), "bias");
    // Zero sizes give empty results.
    let empty = linear::forward(&f32s(&[0, 3]), &layer.weight, None).unwrap();
    assert_eq!(empty.shape(), [0, 5]);
    let no_inputs = Linear {
        weight: f32s(&[5, 0]),
        bias: Some(b.to(&Device::Cpu, DType::F32).unwrap()),
    };
    let y = no_inputs.forward(&f32s(&[2, 0])).unwrap();
    assert_eq!(host(&y), [host(&b), host(&b)].concat(), "y = b for in = 0");
}

#[test]
fn bad_embedding_inputs_are_typed_errors() {
    let w = f32s(&[6, 3]);
    let ids = |v: Vec<i32>, shape: &[usize]| Indices::from_vec(v, shape).unwrap();
    let good = ids(vec![0, 5, 2, 2], &[2, 2]);
    let config = |r: fused_rnn::Result<Tensor>, needle: &str| match r {
        Err(Error::Config(msg)) => assert!(msg.contains(needle), "{msg} lacks {needle}"),
        other => panic!("expected a Config error with {needle}, got {other:?}"),
    };
    // (position, value, limit) of the first id out of range, in the flattened ids.
    let index = |r: fused_rnn::Result<Tensor>, want: (usize, i64, usize)| match r {
        Err(Error::Index {
            tensor,
            position,
            value,
            limit,
        }) => assert_eq!(
            (tensor.as_str(), position, value, limit),
            ("ids", want.0, want.1, want.2)
        ),
        other => panic!("expected an index error {want:?}, got {other:?}"),
    };
    index(embedding::forward(&w, &ids(vec![0, 6], &[2])), (1, 6, 6));
    index(
        embedding::forward(&w, &ids(vec![0, 1, 2, -3], &[2, 2])),
        (3, -3, 6),
    );
    index(
        embedding::forward(&w, &ids(vec![i32::MIN], &[1])),
        (0, i32::MIN.into(), 6),
    );
    assert!(matches!(
        embedding::forward(&f32s(&[6, 3, 1]), &good),
        Err(Error::Shape { .. })
    ));
    let g = f32s(&[2, 2, 3]);
    config(embedding::backward(&good, &g, 6, Some(6)), "padding_idx 6");
    index(embedding::backward(&good, &g, 5, None), (1, 5, 5));
    for bad in [&[4, 3][..], &[2, 2], &[2, 2, 3, 1], &[2, 1, 3]] {
        assert!(
            matches!(
                embedding::backward(&good, &f32s(bad), 6, None),
                Err(Error::Shape { .. })
            ),
            "grad_y {bad:?}"
        );
    }
    // The layer: a padding index outside the table, a gradient of another width or dtype.
    assert!(matches!(
        Embedding::random(4, 2, Some(4), &Device::Cpu, DType::F32, 1),
        Err(Error::Config(_))
    ));
    let layer = Embedding {
        weight: w,
        padding_idx: Some(1),
    };
    assert!(matches!(
        layer.backward(&good, &f32s(&[2, 2, 4])),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        layer.backward(&good, &g.to(&Device::Cpu, DType::BF16).unwrap()),
        Err(Error::DType { .. })
    ));
    // No ids: an empty result and a zero gradient.
    let none = ids(vec![], &[0, 4]);
    assert_eq!(layer.forward(&none).unwrap().shape(), [0, 4, 3]);
    let dw = layer.backward(&none, &f32s(&[0, 4, 3])).unwrap();
    assert!(host(&dw).iter().all(|&v| v == 0.0) && dw.shape() == [6, 3]);
}

/// `nn::Embedding::random` draws N(0, 1) (not a uniform of the same variance) and zeroes the
/// padding row; the layers keep their parameters' device and dtype.
#[test]
fn random_layers_follow_pytorch_defaults() {
    let emb = Embedding::random(200, 50, Some(7), &Device::Cpu, DType::BF16, 9).unwrap();
    assert_eq!(emb.weight.dtype(), DType::BF16);
    let v = host(&emb.weight);
    assert!(v[7 * 50..8 * 50].iter().all(|&x| x == 0.0));
    let var = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / (v.len() - 50) as f64;
    assert!((var - 1.0).abs() < 0.05, "variance {var}");
    assert!(v.iter().any(|&x| x.abs() > 3.0), "normal tails");
    let lin = Linear::random(16, 9, true, &Device::Cpu, DType::F16, 2).unwrap();
    let bound = 0.25 + 1e-3;
    assert!(host(&lin.weight).iter().all(|&x| x.abs() <= bound));
    assert!(host(lin.bias.as_ref().unwrap())
        .iter()
        .all(|&x| x.abs() <= bound));
    assert_eq!(lin.bias.as_ref().unwrap().dtype(), DType::F16);
}
