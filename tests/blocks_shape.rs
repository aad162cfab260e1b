//! The shape building blocks — `concat`, `split`, `index_select` and their backward passes:
//! 1. against PyTorch (tests/fixtures/shape, made by scripts/fixtures/make_shape_fixtures.py:
//!    torch.cat, torch.split, torch.index_select with repeated ids, forward and float64
//!    autograd backward) on the CPU, and on CUDA where there is a GPU;
//! 2. CUDA against the CPU in every dtype on odd sizes with poisoned outputs, device ids
//!    out of range (zeros, then `check_errors`);
//! 3. the kernels on the host (the generic emulation driver), launched as the launchers
//!    launch them, against the CPU reference, ids out of range included;
//! 4. bad inputs: typed errors, never panics.

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::codes::{ERROR_INDEX_SELECT, ERROR_INDEX_SELECT_BACKWARD};
use fused_rnn::device::kernels::ids;
use fused_rnn::io::TensorFile;
use fused_rnn::ops::concat::{concat, concat_backward, split, split_backward};
use fused_rnn::ops::index_select::{index_select, index_select_backward};
use fused_rnn::{DType, Device, Error, Indices, Tensor};

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn tensor(values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(values, shape, dtype).unwrap()
}

/// A seeded random tensor (never zeros) of `shape` in `dtype`.
fn random(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let n = shape.iter().product();
    tensor(&common::random(n, 1.0, seed), shape, dtype)
}

fn indices(values: &[i32]) -> Indices {
    Indices::from_vec(values.to_vec(), &[values.len()]).unwrap()
}

// ---
// 1. PyTorch fixtures.

/// Every fixture file's name and contents.
fn fixtures() -> Vec<(String, TensorFile)> {
    let dir = common::fixtures("shape");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 12,
        "expected the shape fixtures in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap().to_string();
            (name, TensorFile::load(&p).unwrap())
        })
        .collect()
}

/// The tensors `prefix0`, `prefix1`, ... of `file`, in order.
fn numbered(file: &TensorFile, prefix: &str, suffix: &str) -> Vec<Tensor> {
    (0..)
        .map(|k| format!("{prefix}{k}{suffix}"))
        .take_while(|name| file.contains(name))
        .map(|name| file.float(&name).unwrap())
        .collect()
}

/// Checks `got` (on any device) against the fixture's `expected`, shape and values.
fn check(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.shape(), expected.shape(), "{what}: shape");
    common::assert_close(what, &host(got), &host(expected), 1e-5);
}

/// Runs every fixture on `device` (inputs moved there in f32) against PyTorch's values.
fn run_fixtures(device: &Device) {
    let on = |t: &Tensor| t.to(device, DType::F32).unwrap();
    for (name, file) in fixtures() {
        let what = |t: &str| format!("{name} ({}): {t}", device.name());
        let dim: usize = file.metadata("dim").unwrap().parse().unwrap();
        match file.metadata("op").unwrap() {
            "concat" => {
                let pieces: Vec<Tensor> = numbered(&file, "in", "").iter().map(on).collect();
                let refs: Vec<&Tensor> = pieces.iter().collect();
                let out = concat(&refs, dim).unwrap();
                check(&what("out"), &out, &file.float("out").unwrap());
                let sizes: Vec<usize> = pieces.iter().map(|p| p.shape()[dim]).collect();
                let grads = concat_backward(&on(&file.float("g").unwrap()), dim, &sizes).unwrap();
                let expected = numbered(&file, "in", ".grad");
                assert_eq!(grads.len(), expected.len());
                for (k, (g, e)) in grads.iter().zip(&expected).enumerate() {
                    check(&what(&format!("in{k}.grad")), g, e);
                }
            }
            "split" => {
                let sizes: Vec<usize> = file
                    .metadata("sizes")
                    .unwrap()
                    .split(',')
                    .map(|s| s.parse().unwrap())
                    .collect();
                let outs = split(&on(&file.float("x").unwrap()), dim, &sizes).unwrap();
                let expected = numbered(&file, "out", "");
                assert_eq!(outs.len(), expected.len());
                for (k, (o, e)) in outs.iter().zip(&expected).enumerate() {
                    check(&what(&format!("out{k}")), o, e);
                }
                let gs: Vec<Tensor> = numbered(&file, "g", "").iter().map(on).collect();
                let refs: Vec<&Tensor> = gs.iter().collect();
                let grad = split_backward(&refs, dim).unwrap();
                check(&what("x.grad"), &grad, &file.float("x.grad").unwrap());
            }
            "index_select" => {
                let x = on(&file.float("x").unwrap());
                let (values, shape) = file.ints("ids").unwrap();
                let values: Vec<i32> = values.iter().map(|&v| v as i32).collect();
                let ids = Indices::from_vec(values, &shape).unwrap();
                let ids = ids.to(device).unwrap();
                let out = index_select(&x, dim, &ids).unwrap();
                check(&what("out"), &out, &file.float("out").unwrap());
                let g = on(&file.float("g").unwrap());
                let grad = index_select_backward(&g, dim, &ids, x.shape()[dim]).unwrap();
                check(&what("x.grad"), &grad, &file.float("x.grad").unwrap());
            }
            op => panic!("{name}: unknown op {op}"),
        }
    }
}

#[test]
fn cpu_matches_pytorch() {
    run_fixtures(&Device::Cpu);
}

#[test]
fn cuda_matches_pytorch() {
    let Some(dev) = common::cuda_or_skip("cuda_matches_pytorch") else {
        return;
    };
    run_fixtures(&dev);
}

// ---
// 2. CUDA against the CPU.

/// (piece shapes, dim) of the concat and split cases: every dimension, one piece, more pieces
/// than one launch takes (4), odd sizes, and a decoder step's [embedding; context].
fn concat_cases() -> Vec<(Vec<Vec<usize>>, usize)> {
    vec![
        (vec![vec![1, 7, 33], vec![7, 7, 33], vec![3, 7, 33]], 0),
        (vec![vec![3, 1, 129], vec![3, 33, 129]], 1),
        (vec![vec![7, 5, 1], vec![7, 5, 33], vec![7, 5, 7]], 2),
        (vec![vec![33, 129], vec![33, 257]], 1),
        (vec![vec![1000]], 0),
        (
            (1..=9).map(|k| vec![3, 2 * k - 1, 7]).collect::<Vec<_>>(),
            1,
        ),
        ((1..=5).map(|k| vec![5, 3 * k]).collect::<Vec<_>>(), 1),
    ]
}

/// Checks that `got` (CUDA) holds exactly `expected` (the CPU's), shape and bits: a copy
/// changes nothing, and a poisoned element left unwritten is NaN.
fn check_exact(what: &str, got: &Tensor, expected: &Tensor) {
    assert!(got.is_cuda(), "{what}: not on CUDA");
    assert_eq!(got.shape(), expected.shape(), "{what}: shape");
    assert_eq!(got.dtype(), expected.dtype(), "{what}: dtype");
    let (g, e) = (host(got), host(expected));
    for (k, (a, b)) in g.iter().zip(&e).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {k}: {a} vs {b}"
        );
    }
}

#[test]
fn cuda_concat_and_split_match_the_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_concat_and_split_match_the_cpu") else {
        return;
    };
    for dtype in DType::ALL {
        for (case, (shapes, dim)) in concat_cases().into_iter().enumerate() {
            let what = |op: &str| format!("{op} case {case} ({dtype}, dim {dim})");
            let cpu: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(k, s)| random(s, dtype, 100 * case as u64 + k as u64))
                .collect();
            let gpu: Vec<Tensor> = cpu.iter().map(|t| t.to(&dev, dtype).unwrap()).collect();
            let cpu_refs: Vec<&Tensor> = cpu.iter().collect();
            let gpu_refs: Vec<&Tensor> = gpu.iter().collect();
            let whole = concat(&cpu_refs, dim).unwrap();
            check_exact(&what("concat"), &concat(&gpu_refs, dim).unwrap(), &whole);
            check_exact(
                &what("split_backward"),
                &split_backward(&gpu_refs, dim).unwrap(),
                &whole,
            );
            let sizes: Vec<usize> = shapes.iter().map(|s| s[dim]).collect();
            let whole_gpu = whole.to(&dev, dtype).unwrap();
            for (op, pieces) in [
                ("split", split(&whole_gpu, dim, &sizes).unwrap()),
                (
                    "concat_backward",
                    concat_backward(&whole_gpu, dim, &sizes).unwrap(),
                ),
            ] {
                assert_eq!(pieces.len(), cpu.len(), "{}", what(op));
                for (k, (got, expected)) in pieces.iter().zip(&cpu).enumerate() {
                    check_exact(&format!("{} piece {k}", what(op)), got, expected);
                }
            }
        }
    }
}

/// (source shape, dim, ids) of the index_select cases: beams (rows of h, repeated parents),
/// every dimension, a single id, more ids than rows.
fn index_cases() -> Vec<(Vec<usize>, usize, Vec<i32>)> {
    vec![
        (vec![7, 129], 0, vec![3, 0, 3, 6, 3, 1, 2]),
        (vec![33, 7, 5], 0, vec![32]),
        (vec![3, 33, 7], 1, vec![32, 0, 5, 5, 5, 17, 1]),
        (
            vec![5, 3, 129],
            2,
            (0..33).map(|k| (k * 7 + 3) % 129).collect(),
        ),
        (vec![7, 3], 0, (0..1000).map(|k| (k * 5) % 7).collect()),
    ]
}

#[test]
fn cuda_index_select_matches_the_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_index_select_matches_the_cpu") else {
        return;
    };
    for dtype in DType::ALL {
        for (case, (shape, dim, values)) in index_cases().into_iter().enumerate() {
            let what = |op: &str| format!("{op} case {case} ({dtype}, dim {dim})");
            let x = random(&shape, dtype, 7 + case as u64);
            let host_ids = indices(&values);
            let gpu_ids = host_ids.to(&dev).unwrap();
            let y = index_select(&x, dim, &host_ids).unwrap();
            let got = index_select(&x.to(&dev, dtype).unwrap(), dim, &gpu_ids).unwrap();
            check_exact(&what("index_select"), &got, &y);

            let g = random(y.shape(), dtype, 70 + case as u64);
            let expected = index_select_backward(&g, dim, &host_ids, shape[dim]).unwrap();
            let g_gpu = g.to(&dev, dtype).unwrap();
            let got = index_select_backward(&g_gpu, dim, &gpu_ids, shape[dim]).unwrap();
            assert!(got.is_cuda());
            assert_eq!(got.shape(), expected.shape(), "{}", what("backward"));
            assert_eq!(got.dtype(), dtype);
            common::assert_close(
                &what("index_select_backward"),
                &host(&got),
                &host(&expected),
                common::tolerance(dtype),
            );
        }
    }
    dev.as_cuda().unwrap().check_errors().unwrap();
}

#[test]
fn cuda_ids_out_of_range_give_zeros_and_a_recorded_error() {
    let Some(dev) = common::cuda_or_skip("cuda_ids_out_of_range_give_zeros_and_a_recorded_error")
    else {
        return;
    };
    let cuda = dev.as_cuda().unwrap();
    cuda.check_errors().unwrap();
    for dtype in DType::ALL {
        let x = random(&[5, 33], dtype, 3);
        let xs = host(&x);
        let x_gpu = x.to(&dev, dtype).unwrap();
        let bad = indices(&[1, 5, 4, -3, 0]).to(&dev).unwrap();
        let y = host(&index_select(&x_gpu, 0, &bad).unwrap());
        for (j, id) in [1i32, 5, 4, -3, 0].into_iter().enumerate() {
            let row = &y[j * 33..(j + 1) * 33];
            if (0..5).contains(&id) {
                let k = id as usize;
                assert_eq!(row, &xs[k * 33..(k + 1) * 33], "{dtype}: row {j}");
            } else {
                assert!(row.iter().all(|&v| v == 0.0), "{dtype}: row {j}: {row:?}");
            }
        }
        match cuda.check_errors() {
            Err(Error::Index {
                value,
                position,
                limit: 5,
                ..
            }) => assert!(
                (value, position) == (5, 1) || (value, position) == (-3, 3),
                "{dtype}: {value} at {position}"
            ),
            other => panic!("{dtype}: expected an index error, got {other:?}"),
        }
        cuda.check_errors()
            .expect("the record is cleared by a check");

        // The backward skips the bad ids and adds the others.
        let g = random(&[5, 33], dtype, 4);
        let gs = host(&g);
        let grad = index_select_backward(&g.to(&dev, dtype).unwrap(), 0, &bad, 5).unwrap();
        let grad = host(&grad);
        let mut expected = vec![0f32; 5 * 33];
        // (row of x, row of g): ids[0] = 1, ids[2] = 4, ids[4] = 0.
        for (row, from) in [(1usize, 0usize), (4, 2), (0, 4)] {
            expected[row * 33..(row + 1) * 33].copy_from_slice(&gs[from * 33..(from + 1) * 33]);
        }
        common::assert_close(&format!("{dtype}: backward"), &grad, &expected, 0.0);
        assert!(matches!(
            cuda.check_errors(),
            Err(Error::Index { limit: 5, .. })
        ));
    }
}

#[test]
fn cuda_inputs_on_two_devices_are_errors() {
    let Some(dev) = common::cuda_or_skip("cuda_inputs_on_two_devices_are_errors") else {
        return;
    };
    let cpu = random(&[3, 5], DType::F32, 1);
    let gpu = cpu.to(&dev, DType::F32).unwrap();
    let mismatch = |r: Result<Tensor, Error>| matches!(r, Err(Error::DeviceMismatch { .. }));
    assert!(mismatch(concat(&[&gpu, &cpu], 0)));
    assert!(mismatch(concat(&[&cpu, &gpu], 1)));
    assert!(mismatch(split_backward(&[&gpu, &cpu], 0)));
    let host_ids = indices(&[0, 2]);
    let gpu_ids = host_ids.to(&dev).unwrap();
    assert!(mismatch(index_select(&gpu, 0, &host_ids)));
    assert!(mismatch(index_select(&cpu, 0, &gpu_ids)));
    assert!(mismatch(index_select_backward(&gpu, 1, &host_ids, 5)));
    // Mixed dtypes on one device.
    let half = cpu.to(&dev, DType::F16).unwrap();
    assert!(matches!(
        concat(&[&gpu, &half], 0),
        Err(Error::DType { .. })
    ));
}

#[test]
fn cuda_zero_sizes_give_empty_results() {
    let Some(dev) = common::cuda_or_skip("cuda_zero_sizes_give_empty_results") else {
        return;
    };
    for dtype in DType::ALL {
        let a = random(&[3, 5], dtype, 1);
        let gpu = a.to(&dev, dtype).unwrap();
        let pieces = split(&gpu, 1, &[0, 5, 0]).unwrap();
        let shapes: Vec<&[usize]> = pieces.iter().map(|p| p.shape()).collect();
        assert_eq!(shapes, [&[3, 0][..], &[3, 5], &[3, 0]], "{dtype}");
        assert!(pieces.iter().all(|p| p.is_cuda() && p.dtype() == dtype));
        assert_eq!(host(&pieces[1]), host(&a), "{dtype}");
        let refs: Vec<&Tensor> = pieces.iter().collect();
        let joined = concat(&refs, 1).unwrap();
        assert_eq!(joined.shape(), [3, 5]);
        assert_eq!(host(&joined), host(&a), "{dtype}");
        let none = concat(&[&pieces[0], &pieces[2]], 1).unwrap();
        assert_eq!(none.shape(), [3, 0]);
        assert!(host(&none).is_empty());

        let no_ids = indices(&[]).to(&dev).unwrap();
        let picked = index_select(&gpu, 1, &no_ids).unwrap();
        assert_eq!(picked.shape(), [3, 0]);
        let grad = index_select_backward(&picked, 1, &no_ids, 5).unwrap();
        assert_eq!((grad.shape(), grad.dtype()), (&[3, 5][..], dtype));
        assert!(host(&grad).iter().all(|&v| v == 0.0), "{dtype}");
    }
    dev.as_cuda().unwrap().check_errors().unwrap();
}

// ---
// 3. The kernels on the host (tests/common/host_kernels.rs), launched as the Rust launchers
// launch them, against the CPU reference.

/// A grid-stride launch over `n` elements (`grid_stride` in src/device/launch.rs).
fn grid_stride(entry: &str, n: usize, args: Vec<Arg>) -> Launch<'_> {
    Launch {
        entry,
        grid: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1),
        threads: 256,
        shared: 0,
        args,
    }
}

/// The launches of src/ops/concat/cuda.rs's `copy`: the non-empty pieces (buffers `pieces`,
/// runs of `widths` per row) in groups of four, unused slots pointing at the whole with width
/// 0; `split` 0 gathers into buffer `whole`, 1 scatters from it.
fn concat_launches<'a>(
    entry: &'a str,
    rows: usize,
    widths: &[usize],
    whole: usize,
    pieces: &[usize],
    split: i32,
) -> Vec<Launch<'a>> {
    let mut column = 0;
    let runs: Vec<(usize, usize, usize)> = pieces
        .iter()
        .zip(widths)
        .filter_map(|(&buf, &w)| {
            let run = (buf, w, column);
            column += w;
            (w > 0).then_some(run)
        })
        .collect();
    let whole_width = widths.iter().sum::<usize>() as u64;
    runs.chunks(4)
        .map(|group| {
            let mut args = vec![
                Arg::Buf(whole),
                Arg::U64(whole_width),
                Arg::U64(group[0].2 as u64),
                Arg::U64(rows as u64),
            ];
            for slot in 0..4 {
                let (buf, w) = group.get(slot).map_or((whole, 0), |&(b, w, _)| (b, w));
                args.extend([Arg::Buf(buf), Arg::U64(w as u64)]);
            }
            args.push(Arg::I32(split));
            let width: usize = group.iter().map(|&(_, w, _)| w).sum();
            grid_stride(entry, rows * width, args)
        })
        .collect()
}

#[test]
fn concat_kernel_on_the_host_matches_the_cpu() {
    let test = "concat_kernel_on_the_host_matches_the_cpu";
    let entries: Vec<String> = DType::ALL
        .iter()
        .map(|&d| ids::concat::CONCAT_COPY.entry_point(d))
        .collect();
    let names: Vec<&str> = entries.iter().map(|e| e.as_str()).collect();
    let Some(kernels) = HostKernels::build(test, "concat", &names) else {
        return;
    };
    // (piece shapes, dim): six pieces with an empty one (two launches, the empty piece in
    // none), the decoder's last-dimension case over two blocks, dim 0.
    let cases: Vec<(Vec<Vec<usize>>, usize)> = vec![
        (
            [1, 0, 2, 3, 1, 2].iter().map(|&n| vec![3, n, 5]).collect(),
            1,
        ),
        (vec![vec![7, 33], vec![7, 1], vec![7, 9]], 1),
        (vec![vec![2, 3, 7], vec![1, 3, 7], vec![4, 3, 7]], 0),
    ];
    for (entry, dtype) in entries.iter().zip(DType::ALL) {
        for (case, (shapes, dim)) in cases.iter().enumerate() {
            let what = format!("{entry} case {case}");
            let pieces: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(k, s)| random(s, dtype, 10 * case as u64 + k as u64))
                .collect();
            let refs: Vec<&Tensor> = pieces.iter().collect();
            let whole = concat(&refs, *dim).unwrap();
            let rows: usize = shapes[0][..*dim].iter().product();
            let inner: usize = shapes[0][dim + 1..].iter().product();
            let widths: Vec<usize> = shapes.iter().map(|s| s[*dim] * inner).collect();
            let width = dtype.size_in_bytes();
            let bufs: Vec<usize> = (1..=pieces.len()).collect();

            // Gather: the pieces into a poisoned whole.
            let mut buffers = vec![host_kernels::poisoned(whole.numel() * width)];
            buffers.extend(pieces.iter().map(|p| host_kernels::bytes(&host(p), dtype)));
            let launches = concat_launches(entry, rows, &widths, 0, &bufs, 0);
            assert_eq!(
                launches.len(),
                widths.iter().filter(|&&w| w > 0).count().div_ceil(4)
            );
            let out = kernels.run(buffers, &launches);
            assert_eq!(
                host_kernels::values(&out[0], dtype),
                host(&whole),
                "{what}: gather"
            );

            // Scatter: the whole into poisoned pieces.
            let mut buffers = vec![host_kernels::bytes(&host(&whole), dtype)];
            buffers.extend(
                pieces
                    .iter()
                    .map(|p| host_kernels::poisoned(p.numel() * width)),
            );
            let launches = concat_launches(entry, rows, &widths, 0, &bufs, 1);
            let out = kernels.run(buffers, &launches);
            for (k, p) in pieces.iter().enumerate() {
                let got = host_kernels::values(&out[k + 1], dtype);
                assert_eq!(got, host(p), "{what}: scatter piece {k}");
            }
        }
    }
}

#[test]
fn index_select_kernels_on_the_host_match_the_cpu() {
    let test = "index_select_kernels_on_the_host_match_the_cpu";
    let both = [
        ids::index_select::INDEX_SELECT,
        ids::index_select::INDEX_SELECT_BACKWARD,
    ];
    let Some(kernels) = HostKernels::build_every_dtype(test, "index_select", &both) else {
        return;
    };
    // (source shape, dim, ids): beams (repeated rows), the middle and last dimensions.
    let cases: Vec<(Vec<usize>, usize, Vec<i32>)> = vec![
        (vec![7, 33], 0, vec![3, 0, 3, 6, 3, 1, 2]),
        (vec![3, 7, 5], 1, vec![6, 6, 1, 0, 2]),
        (vec![2, 3, 9], 2, vec![8, 0, 8, 8, 4, 1, 7]),
    ];
    for dtype in DType::ALL {
        let (forward, backward) = (
            ids::index_select::INDEX_SELECT.entry_point(dtype),
            ids::index_select::INDEX_SELECT_BACKWARD.entry_point(dtype),
        );
        for (case, (shape, dim, values)) in cases.iter().enumerate() {
            let what = format!("{dtype} case {case}");
            let dim = *dim;
            let x = random(shape, dtype, 5 + case as u64);
            let y = index_select(&x, dim, &indices(values)).unwrap();
            let g = random(y.shape(), dtype, 50 + case as u64);
            let grad = index_select_backward(&g, dim, &indices(values), shape[dim]).unwrap();
            let rows: usize = shape[..dim].iter().product();
            let inner: usize = shape[dim + 1..].iter().product();
            let sizes = [
                Arg::U64(rows as u64),
                Arg::I32(shape[dim] as i32),
                Arg::I32(values.len() as i32),
                Arg::U64(inner as u64),
            ];

            // Forward into a poisoned y, then the backward into a zeroed f32 accumulator.
            let buffers = vec![
                host_kernels::bytes(&host(&x), dtype),
                host_kernels::poisoned(y.numel() * dtype.size_in_bytes()),
                host_kernels::bytes_i32(values),
                host_kernels::bytes_i32(&[0; 4]),
                host_kernels::bytes(&host(&g), dtype),
                host_kernels::bytes(&vec![0.0; x.numel()], DType::F32),
            ];
            let mut forward_args = vec![Arg::Buf(0), Arg::Buf(1), Arg::Buf(2), Arg::Buf(3)];
            forward_args.push(Arg::I32(ERROR_INDEX_SELECT));
            forward_args.extend(sizes);
            let mut backward_args = vec![Arg::Buf(4), Arg::Buf(5), Arg::Buf(2), Arg::Buf(3)];
            backward_args.push(Arg::I32(ERROR_INDEX_SELECT_BACKWARD));
            backward_args.extend(sizes);
            let out = kernels.run(
                buffers,
                &[
                    grid_stride(&forward, y.numel(), forward_args),
                    grid_stride(&backward, g.numel(), backward_args),
                ],
            );
            assert_eq!(host_kernels::values(&out[1], dtype), host(&y), "{what}");
            assert_eq!(host_kernels::ints(&out[3]), [0; 4], "{what}: no error");
            // The launcher converts the f32 accumulator to the dtype.
            let acc = common::rounded(host_kernels::values(&out[5], DType::F32), dtype);
            common::assert_close(
                &format!("{what}: backward"),
                &acc,
                &host(&grad),
                common::tolerance(dtype),
            );
        }

        // Ids out of range, on either side: zeros (nothing added), one report, no access out
        // of bounds (the driver's guard bytes).
        let x = random(&[5, 7], dtype, 9);
        let values = [1, 5, 4, -3, 0];
        let good = [(0usize, 1usize), (2, 4), (4, 0)];
        let g = random(&[5, 7], dtype, 10);
        let sizes = [Arg::U64(1), Arg::I32(5), Arg::I32(5), Arg::U64(7)];
        let buffers = vec![
            host_kernels::bytes(&host(&x), dtype),
            host_kernels::poisoned(35 * dtype.size_in_bytes()),
            host_kernels::bytes_i32(&values),
            host_kernels::bytes_i32(&[0; 4]),
            host_kernels::bytes(&host(&g), dtype),
            host_kernels::bytes(&[0.0; 35], DType::F32),
        ];
        let mut forward_args = vec![Arg::Buf(0), Arg::Buf(1), Arg::Buf(2), Arg::Buf(3)];
        forward_args.push(Arg::I32(ERROR_INDEX_SELECT));
        forward_args.extend(sizes);
        let mut backward_args = vec![Arg::Buf(4), Arg::Buf(5), Arg::Buf(2), Arg::Buf(6)];
        backward_args.push(Arg::I32(ERROR_INDEX_SELECT_BACKWARD));
        backward_args.extend(sizes);
        let mut buffers_with_second_record = buffers;
        buffers_with_second_record.push(host_kernels::bytes_i32(&[0; 4]));
        let out = kernels.run(
            buffers_with_second_record,
            &[
                grid_stride(&forward, 35, forward_args),
                grid_stride(&backward, 35, backward_args),
            ],
        );
        let (xs, y) = (host(&x), host_kernels::values(&out[1], dtype));
        let (gs, acc) = (host(&g), host_kernels::values(&out[5], DType::F32));
        for j in 0..5 {
            let row = &y[j * 7..(j + 1) * 7];
            match good.iter().find(|&&(at, _)| at == j) {
                Some(&(_, id)) => {
                    assert_eq!(row, &xs[id * 7..(id + 1) * 7], "{dtype}: row {j}");
                    assert_eq!(&acc[id * 7..(id + 1) * 7], &gs[j * 7..(j + 1) * 7]);
                }
                None => assert!(row.iter().all(|&v| v == 0.0), "{dtype}: row {j}: {row:?}"),
            }
        }
        for id in [2, 3] {
            assert!(
                acc[id * 7..(id + 1) * 7].iter().all(|&v| v == 0.0),
                "{dtype}"
            );
        }
        for (record, code) in [
            (&out[3], ERROR_INDEX_SELECT),
            (&out[6], ERROR_INDEX_SELECT_BACKWARD),
        ] {
            let record = host_kernels::ints(record);
            assert!(
                record == [code, 1, 5, 5] || record == [code, 3, -3, 5],
                "{dtype}: error record {record:?}"
            );
        }
    }
}

// ---
// 4. Bad inputs on the CPU (the checks run before any dispatch, so they are the CUDA ones).

#[test]
fn bad_inputs_are_typed_errors() {
    let a = random(&[3, 5], DType::F32, 1);
    let b = random(&[3, 2], DType::F32, 2);
    let c = random(&[4, 5], DType::F32, 3);
    let half = random(&[3, 2], DType::F16, 4);
    let flat = random(&[15], DType::F32, 5);

    let shape_err = |r: Result<Tensor, Error>, tensor: &str| match r {
        Err(Error::Shape { tensor: t, .. }) => assert_eq!(t, tensor),
        other => panic!("expected a shape error naming {tensor}, got {other:?}"),
    };
    // concat: empty list, dim out of range, other dims differ, ranks differ, dtypes differ.
    assert!(matches!(concat(&[], 0), Err(Error::Config(_))));
    assert!(matches!(split_backward(&[], 0), Err(Error::Config(_))));
    shape_err(concat(&[&a, &b], 2), "tensors[0]");
    shape_err(concat(&[&a, &c], 1), "tensors[1]");
    shape_err(concat(&[&a, &flat], 0), "tensors[1]");
    shape_err(split_backward(&[&a, &c], 1), "grads[1]");
    match concat(&[&a, &half], 1) {
        Err(Error::DType { tensor, got, .. }) => {
            assert_eq!((tensor.as_str(), got.as_str()), ("tensors[1]", "f16"));
        }
        other => panic!("expected a dtype error, got {other:?}"),
    }

    // split: dim out of range, sizes that do not sum to the dim.
    let split_err = |r: Result<Vec<Tensor>, Error>, tensor: &str| match r {
        Err(Error::Shape { tensor: t, .. }) => assert_eq!(t, tensor),
        other => panic!("expected a shape error naming {tensor}, got {other:?}"),
    };
    split_err(split(&a, 2, &[1, 2]), "x");
    split_err(split(&a, 1, &[2, 2]), "x");
    split_err(split(&a, 1, &[2, 4]), "x");
    split_err(split(&a, 1, &[]), "x");
    split_err(split(&a, 1, &[usize::MAX, 6]), "x");
    split_err(concat_backward(&a, 0, &[1, 1]), "grad_y");

    // index_select: dim out of range, ids out of range (either end), ids not 1-D.
    shape_err(index_select(&a, 2, &indices(&[0])), "x");
    for (values, position, index) in [
        (vec![0, 3], 1, 3i64),
        (vec![2, 1, -1], 2, -1),
        (vec![i32::MAX], 0, i32::MAX as i64),
        (vec![i32::MIN, 0], 0, i32::MIN as i64),
    ] {
        match index_select(&a, 0, &indices(&values)) {
            Err(Error::Index {
                tensor,
                value: i,
                position: p,
                limit: 3,
            }) => {
                assert_eq!((tensor.as_str(), i, p), ("ids", index, position));
            }
            other => panic!("{values:?}: expected an index error, got {other:?}"),
        }
    }
    let square = Indices::from_vec(vec![0, 1, 1, 0], &[2, 2]).unwrap();
    shape_err(index_select(&a, 0, &square), "ids");

    // index_select_backward: grad_y's dim disagrees with the ids, ids past size_of_dim.
    shape_err(index_select_backward(&a, 0, &indices(&[0, 1]), 3), "grad_y");
    shape_err(
        index_select_backward(&a, 2, &indices(&[0, 1, 2]), 3),
        "grad_y",
    );
    assert!(matches!(
        index_select_backward(&a, 0, &indices(&[0, 1, 4]), 5),
        Ok(t) if t.shape() == [5, 5]
    ));
    assert!(matches!(
        index_select_backward(&a, 0, &indices(&[0, 1, 4]), 4),
        Err(Error::Index {
            value: 4,
            position: 2,
            limit: 4,
            ..
        })
    ));
}

#[test]
fn zero_sizes_give_empty_results_on_the_cpu() {
    let a = random(&[3, 5], DType::BF16, 1);
    let empty = Tensor::from_f32(&[], &[3, 0], DType::BF16).unwrap();
    let joined = concat(&[&empty, &a, &empty], 1).unwrap();
    assert_eq!(joined.shape(), [3, 5]);
    assert_eq!(host(&joined), host(&a));
    let none = concat(&[&empty, &empty], 1).unwrap();
    assert_eq!(none.shape(), [3, 0]);

    let pieces = split(&a, 1, &[0, 5, 0]).unwrap();
    let shapes: Vec<&[usize]> = pieces.iter().map(|p| p.shape()).collect();
    assert_eq!(shapes, [&[3, 0][..], &[3, 5], &[3, 0]]);
    assert_eq!(host(&pieces[1]), host(&a));
    let rows = Tensor::from_f32(&[], &[0, 5], DType::F32).unwrap();
    let halves = split(&rows, 1, &[2, 3]).unwrap();
    assert_eq!(halves[1].shape(), [0, 3]);
    assert!(split(&empty, 1, &[]).unwrap().is_empty());

    let picked = index_select(&a, 1, &indices(&[])).unwrap();
    assert_eq!(picked.shape(), [3, 0]);
    let grad = index_select_backward(&picked, 1, &indices(&[]), 5).unwrap();
    assert_eq!(grad.shape(), [3, 5]);
    assert!(host(&grad).iter().all(|&v| v == 0.0));
    // Ids into an empty dimension are all out of range.
    assert!(matches!(
        index_select(&empty, 1, &indices(&[0])),
        Err(Error::Index { limit: 0, .. })
    ));
}

#[test]
fn the_cpu_keeps_every_dtype() {
    for dtype in DType::ALL {
        let a = random(&[2, 3], dtype, 1);
        let b = random(&[2, 7], dtype, 2);
        let joined = concat(&[&a, &b], 1).unwrap();
        assert_eq!(joined.dtype(), dtype);
        let back = split(&joined, 1, &[3, 7]).unwrap();
        assert_eq!(host(&back[0]), host(&a));
        assert_eq!(host(&back[1]), host(&b));
        let y = index_select(&joined, 0, &indices(&[1, 1, 0])).unwrap();
        assert_eq!(y.dtype(), dtype);
        let g = index_select_backward(&y, 0, &indices(&[1, 1, 0]), 2).unwrap();
        assert_eq!(g.dtype(), dtype);
        // Row 1 picked twice: its gradient is twice the row (exact in every dtype).
        let (gv, jv) = (host(&g), host(&joined));
        for k in 0..10 {
            assert_eq!(gv[10 + k], 2.0 * jv[10 + k], "{dtype}");
            assert_eq!(gv[k], jv[k], "{dtype}");
        }
    }
}
