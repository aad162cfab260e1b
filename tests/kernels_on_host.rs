//! The recurrent kernels built for the host with a C++ compiler and tests/emulation/cuda_host.h
//! (a grid's blocks run as threads, a block's CUDA threads as fibers), against the CPU
//! reference: the persistent kernel (kernels/persistent/recurrent.cu) in every variant
//! (`FUSED_RNN_PERSISTENT`) and the stepwise fused kernels (rnn.cu, lstm.cu, gru.cu, with the
//! per-step GEMM done on the host), for every cell and dtype, both directions, both layouts,
//! lengths, on shapes whose last persistent block has fewer units than the others and on one
//! of a single unit. This checks the kernels' indexing, tiling, the split of W_hh between
//! registers and shared memory, staging, prefetching and the per-step update without a GPU;
//! not their speed, races or memory ordering on hardware (`recurrent_cuda` and
//! compute-sanitizer do that on a GPU). Skips with a printed reason without a C++ compiler
//! (fails instead under FUSED_RNN_REQUIRE_NVRTC=1, which CI sets). The elementwise kernels
//! run through the generic driver (tests/common/host_kernels.rs), as every building block's
//! kernels do in their own tests.

mod common;

use common::host_kernels::{self, compile, emulation_dir, Arg, HostKernels, Launch};
use common::layers::{inputs, Case, Kind, Layer};
use fused_rnn::ops::recurrent::persistent::Spec;
use fused_rnn::{Cell, DType, Nonlinearity, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One shape on a GPU of `sms` multiprocessors (which sets the units per block).
struct Shape {
    case: Case,
    sms: usize,
}

/// Variants for every dtype, then for bf16 only (CUDA-core FMAs instead of tensor cores).
/// `regs=40` and `regs=60` hold part of a thread's W_hh in registers and the rest in shared
/// memory at H = 36 and 132.
const VARIANTS: &[&str] = &[
    "smem",
    "regs",
    "regs=40",
    "regs=60",
    "vec,prefetch",
    "regs,vec,prefetch",
];
const BF16_VARIANTS: &[&str] = &["fma", "fma,regs=40,vec,prefetch"];

fn shapes(kind: Kind) -> Vec<Shape> {
    let case = |h, t, b, batch_first, lengths, h0, bias| Case {
        kind,
        i: 5,
        h,
        layers: 1,
        bidirectional: true,
        batch_first,
        t,
        b,
        lengths,
        h0,
        bias,
    };
    vec![
        // 8 units a block, 4 in the last; H % 4 == 0 (16-byte staging); lengths.
        Shape {
            case: case(36, 5, 3, false, true, true, true),
            sms: 5,
        },
        // Two batch tiles on tensor cores, batch-first, no bias, no h0; 6 units a block, 3 in
        // the last.
        Shape {
            case: case(21, 3, 9, true, false, false, false),
            sms: 4,
        },
        // Two batch chunks with CUDA-core FMAs (B > 32 / ROW_BLOCK), five batch tiles on
        // tensor cores; 5 units a block, 4 in the last.
        Shape {
            case: case(14, 2, 33, false, true, true, true),
            sms: 3,
        },
        // One unit, one row, ended after its first step.
        Shape {
            case: case(1, 3, 1, false, true, true, true),
            sms: 1,
        },
        // 27 units a block, 24 in the last; more than 8 K tiles (two per warp).
        Shape {
            case: case(132, 2, 2, false, true, true, true),
            sms: 5,
        },
    ]
}

/// cuda_host.h copied into `dir` and precompiled there (half of each build's time).
fn precompile_header(cxx: &str, dir: &Path) {
    let header = dir.join("cuda_host.h");
    std::fs::copy(emulation_dir().join("cuda_host.h"), &header).unwrap();
    let gch = dir.join("cuda_host.h.gch");
    compile(
        cxx,
        "cuda_host.h",
        &[
            "-x".as_ref(),
            "c++-header".as_ref(),
            header.as_os_str(),
            "-o".as_ref(),
            gch.as_os_str(),
        ],
    );
}

/// A kernel built for the host with its driver, which runs one layer-direction
/// (tests/emulation/io.h).
struct Kernel {
    name: String,
    exe: PathBuf,
}

/// `source` (a kernel and its defines) and `driver` built in `dir` as `name` (after
/// `precompile_header`).
fn build(cxx: &str, dir: &Path, name: String, source: &str, driver: &str) -> Kernel {
    let source = format!(
        "#include \"cuda_host.h\"\n{source}\n#include \"{}\"\n",
        emulation_dir().join(driver).display()
    );
    let (cpp, exe) = (dir.join(name.clone() + ".cpp"), dir.join(&name));
    std::fs::write(&cpp, source).unwrap();
    compile(
        cxx,
        &name,
        &["-o".as_ref(), exe.as_os_str(), cpp.as_os_str()],
    );
    Kernel { name, exe }
}

fn persistent(cxx: &str, dir: &Path, spec: &Spec) -> Kernel {
    build(cxx, dir, spec.name(), &spec.source(), "persistent_main.cpp")
}

/// The stepwise fused kernel of `kind` in `dtype`: its kernel file and entry point.
fn stepwise(cxx: &str, dir: &Path, kind: Kind, dtype: DType) -> Kernel {
    let (file, code, act) = match kind {
        // ACT_TANH and ACT_RELU of common.cuh.
        Kind::Rnn(Nonlinearity::Tanh) => ("rnn", 0, 0),
        Kind::Rnn(Nonlinearity::Relu) => ("rnn", 0, 1),
        Kind::Lstm { .. } => ("lstm", 1, 0),
        Kind::Gru => ("gru", 2, 0),
    };
    let storage = dtype.kernel_type();
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let entry = format!("{file}_step_fused_{}", dtype.name());
    let source = format!(
        "#include \"{}\"\n#define CELL {code}\n#define ACT {act}\n#define STORAGE {storage}\n\
         #define STEP {entry}\n",
        kernels.join(format!("{file}.cu")).display(),
    );
    build(
        cxx,
        dir,
        format!("{entry}_act{act}"),
        &source,
        "stepwise_main.cpp",
    )
}

fn bytes_f32(out: &mut Vec<u8>, values: &[f32]) {
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

fn bytes_i32(out: &mut Vec<u8>, values: &[i32]) {
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

/// Direction `d`'s [B, H] slice of a [2, B, H] state.
fn direction(state: &Option<Tensor>, d: usize) -> Option<Vec<f32>> {
    state.as_ref().map(|t| {
        let v = t.to_vec_f32().unwrap();
        let n = v.len() / 2;
        v[d * n..(d + 1) * n].to_vec()
    })
}

/// One case in one dtype: the CPU reference's results, and each direction's input file for
/// the drivers (tests/emulation/io.h).
struct Problem {
    want: Vec<(&'static str, Tensor)>,
    inputs: [PathBuf; 2],
}

/// Parameters and inputs of `c` rounded to `dtype`, so that the CPU sees what the kernels
/// store; the input side x·W_ihᵀ computed as the GEMM before the kernels does; a persistent
/// grid of `blocks` (the stepwise driver sizes its own).
fn problem(c: &Case, dtype: DType, blocks: usize, seed: u64, dir: &Path) -> Problem {
    let round = |t: &Tensor| {
        let values = common::rounded(t.to_vec_f32().unwrap(), dtype);
        Tensor::from_vec(values, t.shape()).unwrap()
    };
    let mut layer = Layer::random(c, seed);
    for (_, t) in layer.parameters_mut() {
        *t = round(t);
    }
    let params: HashMap<String, Vec<f32>> = layer
        .parameters_mut()
        .into_iter()
        .map(|(name, t)| (name, t.to_vec_f32().unwrap()))
        .collect();
    let (x, h0, c0, lengths) = inputs(c, seed + 1, c.h0, c.lengths());
    let (x, h0, c0) = (round(&x), h0.map(|t| round(&t)), c0.map(|t| round(&t)));
    let want = layer.forward(&x, h0.as_ref(), c0.as_ref(), lengths.as_deref());
    let lengths: Vec<i32> = match &lengths {
        Some(l) => l.iter().map(|&l| l as i32).collect(),
        None => vec![c.t as i32; c.b],
    };
    let x = x.to_vec_f32().unwrap();
    let (gh, rows) = (c.kind.cell().gates() * c.h, c.t * c.b);
    let (st, sb) = if c.batch_first { (1, c.t) } else { (c.b, 1) };
    let inputs = [0, 1].map(|d| {
        let suffix = if d == 0 { "" } else { "_reverse" };
        let param = |name: &str| &params[&format!("{name}_l0{suffix}")];
        let w_ih = param("weight_ih");
        let xw: Vec<f32> = (0..rows * gh)
            .map(|k| {
                let (r, j) = (k / gh, k % gh);
                (0..c.i).map(|i| x[r * c.i + i] * w_ih[j * c.i + i]).sum()
            })
            .collect();
        let (h0, c0) = (direction(&h0, d), direction(&c0, d));
        let flags = c.bias as i32 | (h0.is_some() as i32) << 1 | (c0.is_some() as i32) << 2;
        let mut bytes = Vec::new();
        let header = [c.t, rows, st, sb, d, blocks].map(|v| v as i32);
        bytes_i32(&mut bytes, &header);
        bytes_i32(&mut bytes, &[flags, c.b as i32, c.h as i32]);
        bytes_f32(&mut bytes, &xw);
        bytes_f32(&mut bytes, param("weight_hh"));
        if c.bias {
            bytes_f32(&mut bytes, param("bias_ih"));
            bytes_f32(&mut bytes, param("bias_hh"));
        }
        for state in [&h0, &c0].into_iter().flatten() {
            bytes_f32(&mut bytes, state);
        }
        bytes_i32(&mut bytes, &lengths);
        let file = dir.join(format!("in{d}"));
        std::fs::write(&file, bytes).unwrap();
        file
    });
    Problem { want, inputs }
}

/// The layer's results with each direction run by `kernel`: output, h_n and c_n laid out as
/// the module returns them.
fn emulate(kernel: &Kernel, c: &Case, p: &Problem, dir: &Path) -> Vec<(&'static str, Vec<f32>)> {
    let (h, rows) = (c.h, c.t * c.b);
    let mut output = vec![0f32; rows * 2 * h];
    let mut h_n = vec![0f32; 2 * c.b * h];
    let mut c_n = vec![0f32; 2 * c.b * h];
    for (d, input) in p.inputs.iter().enumerate() {
        let out_file = dir.join(format!("out{d}"));
        let run = Command::new(&kernel.exe)
            .arg(input)
            .arg(&out_file)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{} direction {d}: {}",
            kernel.name,
            String::from_utf8_lossy(&run.stderr)
        );
        let words = std::fs::read(&out_file).unwrap();
        let values: Vec<f32> = words
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes(w.try_into().unwrap()))
            .collect();
        let (out, rest) = values.split_at(rows * h);
        let (hn, rest) = rest.split_at(c.b * h);
        let (cn, failed) = rest.split_at(c.b * h);
        // The failure word is an i32.
        assert_eq!(
            failed[0].to_bits(),
            0,
            "{}: the grid barrier gave up",
            kernel.name
        );
        for r in 0..rows {
            output[(r * 2 + d) * h..][..h].copy_from_slice(&out[r * h..][..h]);
        }
        h_n[d * c.b * h..][..c.b * h].copy_from_slice(hn);
        c_n[d * c.b * h..][..c.b * h].copy_from_slice(cn);
    }
    let mut named = vec![("output", output), ("h_n", h_n)];
    if c.kind.cell() == Cell::Lstm {
        named.push(("c_n", c_n));
    }
    named
}

/// The stepwise kernel and every persistent variant of `kind`, in every dtype, on every shape;
/// failures are collected and reported together.
fn check(kind: Kind, test: &str) {
    let Some(cxx) = common::cxx_or_skip(test) else {
        return;
    };
    let dir = common::scratch(test);
    precompile_header(&cxx, &dir);
    let mut failures = Vec::new();
    let mut built = 0;
    for dtype in DType::ALL {
        let stepwise = stepwise(&cxx, &dir, kind, dtype);
        let extra = if dtype == DType::BF16 {
            BF16_VARIANTS
        } else {
            &[]
        };
        for (k, shape) in shapes(kind).iter().enumerate() {
            let c = &shape.case;
            let spec = Spec::new(kind.cell(), c.h, c.b, dtype, shape.sms);
            let p = problem(c, dtype, spec.blocks(), 7 + 100 * k as u64, &dir);
            let mut persistent_kernels = Vec::new();
            let mut sources = Vec::new();
            for &variant in VARIANTS.iter().chain(extra) {
                let spec = spec.with_variant(variant).unwrap();
                let source = spec.source();
                // A budget too small to hold anything builds the shared-memory kernel again.
                if !sources.contains(&source) {
                    sources.push(source);
                    persistent_kernels.push((persistent(&cxx, &dir, &spec), variant));
                }
            }
            built += persistent_kernels.len();
            let all = persistent_kernels.iter().map(|(k, v)| (k, *v));
            for (kernel, variant) in std::iter::once((&stepwise, "stepwise")).chain(all) {
                let got = emulate(kernel, c, &p, &dir);
                for ((name, g), (_, w)) in got.iter().zip(&p.want) {
                    let what = format!("{} ({variant}) H={} B={}: {name}", kernel.name, c.h, c.b);
                    let w = w.to_vec_f32().unwrap();
                    if let Some(f) = common::mismatch(&what, g, &w, common::tolerance(dtype)) {
                        failures.push(f);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "{test}: {built} host builds of the persistent kernel and 3 of the stepwise kernel match \
         the CPU"
    );
}

#[test]
fn tanh_rnn_kernels_match_cpu_on_the_host() {
    check(
        Kind::Rnn(Nonlinearity::Tanh),
        "tanh_rnn_kernels_match_cpu_on_the_host",
    );
}

#[test]
fn relu_rnn_kernels_match_cpu_on_the_host() {
    check(
        Kind::Rnn(Nonlinearity::Relu),
        "relu_rnn_kernels_match_cpu_on_the_host",
    );
}

#[test]
fn lstm_kernels_match_cpu_on_the_host() {
    check(Kind::Lstm { proj: 0 }, "lstm_kernels_match_cpu_on_the_host");
}

#[test]
fn gru_kernels_match_cpu_on_the_host() {
    check(Kind::Gru, "gru_kernels_match_cpu_on_the_host");
}

/// elementwise.cu's conversions (what `Tensor::to` runs between dtypes on a device) and its
/// naive activations, through the generic host driver, against the host's own rounding.
#[test]
fn elementwise_kernels_match_the_host_on_the_host() {
    let test = "elementwise_kernels_match_the_host_on_the_host";
    let entries = [
        "load_naive_f16",
        "load_naive_bf16",
        "convert_naive_f16",
        "convert_naive_bf16",
    ];
    let Some(kernels) = HostKernels::build(
        test,
        "elementwise",
        &[&entries[..], &["unary_naive_f32"]].concat(),
    ) else {
        return;
    };
    let n = 1029;
    let x = common::random(n, 4.0, 3);
    fn launch(entry: &str, n: usize, args: Vec<Arg>) -> Launch<'_> {
        let grid = ((n as u32).div_ceil(256), 1);
        Launch {
            entry,
            grid,
            threads: 256,
            shared: 0,
            args,
        }
    }
    for dtype in [DType::F16, DType::BF16] {
        let suffix = dtype.name();
        let (load, convert) = (
            format!("load_naive_{suffix}"),
            format!("convert_naive_{suffix}"),
        );
        let buffers = vec![
            host_kernels::bytes(&x, DType::F32),
            host_kernels::poisoned(n * 2),
            host_kernels::poisoned(n * 4),
        ];
        let out = kernels.run(
            buffers,
            &[
                launch(
                    &convert,
                    n,
                    vec![Arg::Buf(0), Arg::Buf(1), Arg::I32(n as i32)],
                ),
                launch(&load, n, vec![Arg::Buf(1), Arg::Buf(2), Arg::I32(n as i32)]),
            ],
        );
        let want = common::rounded(x.clone(), dtype);
        assert_eq!(host_kernels::values(&out[1], dtype), want, "{convert}");
        assert_eq!(host_kernels::values(&out[2], DType::F32), want, "{load}");
    }
    // ACT_TANH, ACT_RELU, ACT_SIGMOID over a [7, 147] view with leading dimension 150.
    let (rows, cols, ld) = (7, 147, 150);
    let input = common::random(rows * ld, 3.0, 5);
    for (act, f) in [
        (0, f32::tanh as fn(f32) -> f32),
        (1, |v: f32| v.max(0.0)),
        (2, |v: f32| 1.0 / (1.0 + (-v).exp())),
    ] {
        let out = kernels.run(
            vec![
                host_kernels::bytes(&input, DType::F32),
                host_kernels::poisoned(rows * ld * 4),
            ],
            &[launch(
                "unary_naive_f32",
                rows * cols,
                vec![
                    Arg::Buf(0),
                    Arg::I32(ld as i32),
                    Arg::Buf(1),
                    Arg::I32(ld as i32),
                    Arg::I32(rows as i32),
                    Arg::I32(cols as i32),
                    Arg::I32(act),
                ],
            )],
        );
        let got = host_kernels::values(&out[1], DType::F32);
        for r in 0..rows {
            for c in 0..ld {
                let g = got[r * ld + c];
                if c < cols {
                    let w = f(input[r * ld + c]);
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "act {act} [{r}, {c}]: {g} vs {w}"
                    );
                } else {
                    assert!(
                        g.is_nan(),
                        "act {act} wrote [{r}, {c}] past the view's columns"
                    );
                }
            }
        }
    }
}
