//! CUDA fused, naive and persistent RNN, LSTM and GRU forward, and the fused and naive training
//! (forward_train and backward), against the CPU reference, for every dtype, on odd shapes, with
//! NaN-poisoned outputs. Skips with a printed reason without a GPU (fails instead under
//! FUSED_RNN_REQUIRE_GPU=1).

mod common;

use common::layers::{inputs, upstream, Case, Inputs, Kind, Layer};
use fused_rnn::nn::{Gru, GruConfig, Lstm, LstmConfig, Rnn, RnnConfig};
use fused_rnn::{Algo, DType, Device, Error, Nonlinearity, Precision, Tensor};

/// (kind, I, H, layers, bidirectional, batch_first, T, B, lengths, h0, bias)
type Row = (
    Kind,
    usize,
    usize,
    usize,
    bool,
    bool,
    usize,
    usize,
    bool,
    bool,
    bool,
);

const TANH: Kind = Kind::Rnn(Nonlinearity::Tanh);
const RELU: Kind = Kind::Rnn(Nonlinearity::Relu);
const LSTM: Kind = Kind::Lstm { proj: 0 };
const GRU: Kind = Kind::Gru;

const ROWS: &[Row] = &[
    (TANH, 5, 1, 1, false, false, 7, 1, false, false, true),
    (TANH, 3, 7, 2, true, true, 5, 3, true, true, true),
    (RELU, 33, 33, 1, true, false, 17, 7, true, false, true),
    (TANH, 16, 129, 3, false, false, 9, 5, true, true, false),
    (TANH, 7, 1000, 1, true, true, 4, 2, true, true, true),
    (RELU, 4, 33, 2, true, false, 1, 4, false, true, true),
    (LSTM, 5, 1, 1, false, false, 7, 1, false, false, true),
    (LSTM, 3, 7, 2, true, true, 5, 3, true, true, true),
    (LSTM, 33, 33, 1, true, false, 17, 7, true, false, true),
    (LSTM, 16, 129, 3, false, false, 9, 5, true, true, false),
    (LSTM, 7, 1000, 1, true, true, 4, 2, true, true, true),
    (
        Kind::Lstm { proj: 4 },
        5,
        9,
        2,
        true,
        false,
        6,
        4,
        true,
        true,
        true,
    ),
    (
        Kind::Lstm { proj: 7 },
        6,
        33,
        1,
        false,
        true,
        5,
        3,
        true,
        false,
        true,
    ),
    (
        Kind::Lstm { proj: 1 },
        4,
        2,
        3,
        true,
        false,
        1,
        2,
        false,
        true,
        true,
    ),
    (GRU, 5, 1, 1, false, false, 7, 1, false, false, true),
    (GRU, 3, 7, 2, true, true, 5, 3, true, true, true),
    (GRU, 33, 33, 1, true, false, 17, 7, true, false, true),
    (GRU, 16, 129, 3, false, false, 9, 5, true, true, false),
    (GRU, 7, 1000, 1, true, true, 4, 2, true, true, true),
    (GRU, 4, 33, 2, true, false, 1, 4, false, true, true),
    // Larger single layers for the persistent kernel: B up to 64, H up to 1024.
    (TANH, 8, 512, 1, false, true, 9, 33, true, true, true),
    (LSTM, 8, 512, 1, false, false, 9, 64, true, true, true),
    (LSTM, 8, 1024, 1, false, false, 9, 16, true, true, true),
    (GRU, 8, 512, 1, false, false, 9, 8, true, false, true),
    // H that leaves the last block fewer units than the others on 132 SMs (4, 3 and 2 units a
    // block, 1 in the last).
    (TANH, 3, 397, 1, false, false, 6, 3, true, true, true),
    (LSTM, 5, 265, 1, true, false, 6, 9, true, true, true),
    (GRU, 6, 133, 2, false, true, 5, 3, true, true, true),
];

fn case(row: &Row) -> Case {
    let &(kind, i, h, layers, bidirectional, batch_first, t, b, lengths, h0, bias) = row;
    Case {
        kind,
        i,
        h,
        layers,
        bidirectional,
        batch_first,
        t,
        b,
        lengths,
        h0,
        bias,
    }
}

/// Runs `gpu` on `inputs` (rounded to its dtype) and compares every result with the CPU's on
/// the same rounded parameters and inputs.
fn compare(what: &str, gpu: &Layer, device: &Device, dtype: DType, inputs: &Inputs) {
    let cpu = Device::Cpu;
    let (x, h0, c0, lengths) = inputs;
    let on_gpu = |t: &Option<Tensor>| t.as_ref().map(|t| t.to(device, dtype).unwrap());
    let (x_dev, h0_dev, c0_dev) = (x.to(device, dtype).unwrap(), on_gpu(h0), on_gpu(c0));
    let on_cpu = |t: &Option<Tensor>| t.as_ref().map(|t| t.to(&cpu, DType::F32).unwrap());
    let (x_ref, h0_ref, c0_ref) = (
        x_dev.to(&cpu, DType::F32).unwrap(),
        on_cpu(&h0_dev),
        on_cpu(&c0_dev),
    );
    let reference = gpu.to(&cpu, DType::F32, Algo::Auto);
    let want = reference.forward(&x_ref, h0_ref.as_ref(), c0_ref.as_ref(), lengths.as_deref());
    let got = gpu.forward(&x_dev, h0_dev.as_ref(), c0_dev.as_ref(), lengths.as_deref());
    assert_eq!(got.len(), want.len(), "{what}");
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g.shape(), w.shape(), "{what}: {name}");
        common::assert_close(
            &format!("{what}: {name}"),
            &g.to_vec_f32().unwrap(),
            &w.to_vec_f32().unwrap(),
            common::tolerance(dtype),
        );
    }
}

/// Every dtype and algo on one case. Each layer runs three times on the same shape: the later
/// calls replay the first call's graph with other inputs, states and lengths (partial → full →
/// partial), so nothing may leak between calls.
fn check_case(device: &Device, c: &Case, seed: u64) {
    let base = Layer::random(c, seed);
    let calls = [
        inputs(c, seed + 10, c.h0, c.lengths()),
        inputs(c, seed + 20, !c.h0, None),
        inputs(c, seed + 30, c.h0, c.lengths()),
    ];
    // An LSTM with a projection has no persistent kernel (forcing it is tested below).
    let persistent = !matches!(c.kind, Kind::Lstm { proj } if proj > 0);
    if persistent {
        let cell = c.kind.cell();
        assert!(
            common::PERSISTENT_SHAPES.contains(&(cell, c.h, c.b)),
            "{c:?}: add ({cell:?}, {}, {}) to common::PERSISTENT_SHAPES so that CI compiles it",
            c.h,
            c.b
        );
    }
    for dtype in DType::ALL {
        for algo in algos() {
            if algo == Algo::Persistent && !persistent {
                continue;
            }
            let gpu = base.to(device, dtype, algo);
            let what = format!("{c:?} {dtype} {}", algo.name());
            for (k, call) in calls.iter().enumerate() {
                compare(&format!("{what} (call {k})"), &gpu, device, dtype, call);
            }
            let (captured, errors) = gpu.capture_status();
            if algo == Algo::Persistent {
                // A cooperative launch may not be capturable; the plan then issues directly.
                println!("{what}: {captured} captured {errors:?}");
            } else {
                assert_eq!(
                    captured, 1,
                    "{what}: the forward pass was not captured: {errors:?}"
                );
            }
        }
    }
}

/// The algorithms to check: FUSED_RNN_TEST_ALGOS (comma-separated names) narrows them, e.g.
/// for running one under a sanitizer.
fn algos() -> Vec<Algo> {
    let all = vec![Algo::Fused, Algo::Naive, Algo::Persistent];
    match std::env::var("FUSED_RNN_TEST_ALGOS") {
        Ok(list) => all
            .into_iter()
            .filter(|a| list.split(',').any(|w| w.trim() == a.name()))
            .collect(),
        Err(_) => all,
    }
}

/// FUSED_RNN_TEST_MAX_HIDDEN skips the larger rows (a sanitizer run's time).
fn max_hidden() -> usize {
    std::env::var("FUSED_RNN_TEST_MAX_HIDDEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

#[test]
fn fused_naive_and_persistent_match_cpu_for_every_cell_and_dtype() {
    let Some(device) =
        common::cuda_or_skip("fused_naive_and_persistent_match_cpu_for_every_cell_and_dtype")
    else {
        return;
    };
    for (k, row) in ROWS.iter().enumerate() {
        let c = case(row);
        if c.h <= max_hidden() {
            check_case(&device, &c, 100 + k as u64);
        }
    }
}

/// Training on the GPU (fused and naive backward) against the CPU's, on the same rounded
/// parameters, inputs and upstream gradients; the first mismatch of each dtype and algorithm.
fn check_training(device: &Device, c: &Case, seed: u64) -> Vec<String> {
    let mut failures = Vec::new();
    let cpu = Device::Cpu;
    let base = Layer::random(c, seed);
    let inputs = inputs(c, seed + 10, c.h0, c.lengths());
    // Half the cases leave out h_n's and c_n's gradients (zeros).
    let upstream = upstream(c, seed + 20, seed.is_multiple_of(2));
    // A ReLU's derivative jumps at 0. Where a pre-activation lies within a 16-bit type's
    // rounding of 0, the GPU (which rounds every state it stores) and the CPU reference (which
    // does not) take different sides, and a whole term of a weight gradient differs (seen in
    // bf16 on an H100). ReLU layers are compared in f32.
    let dtypes: &[DType] = match c.kind {
        Kind::Rnn(Nonlinearity::Relu) => &[DType::F32],
        _ => &DType::ALL,
    };
    for &dtype in dtypes {
        let on_gpu = |t: &Tensor| t.to(device, dtype).unwrap();
        let on_cpu = |t: &Tensor| t.to(&cpu, DType::F32).unwrap();
        let (x, h0, c0, lengths) = &inputs;
        let gpu_inputs = (
            on_gpu(x),
            h0.as_ref().map(on_gpu),
            c0.as_ref().map(on_gpu),
            lengths.clone(),
        );
        let cpu_inputs = (
            on_cpu(&gpu_inputs.0),
            gpu_inputs.1.as_ref().map(on_cpu),
            gpu_inputs.2.as_ref().map(on_cpu),
            lengths.clone(),
        );
        let gpu_up: Vec<Tensor> = upstream.iter().map(on_gpu).collect();
        let cpu_up: Vec<Tensor> = gpu_up.iter().map(on_cpu).collect();
        let reference = base
            .to(device, dtype, Algo::Fused)
            .to(&cpu, DType::F32, Algo::Auto)
            .with_precision(Precision::F64);
        let want = reference.train(&cpu_inputs, &cpu_up);
        // f32 against the CPU's f64; the half types round every state they store.
        let tol = match dtype {
            DType::F32 => 1e-4,
            _ => 5e-2,
        };
        for algo in [Algo::Fused, Algo::Naive] {
            let got = base.to(device, dtype, algo).train(&gpu_inputs, &gpu_up);
            let names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
            assert_eq!(names, want.iter().map(|(n, _)| n).collect::<Vec<_>>());
            let first = got.iter().zip(&want).find_map(|((name, g), (_, w))| {
                let what = format!("{c:?} {dtype} {} training: {name}", algo.name());
                common::mismatch(&what, g, w, tol)
            });
            failures.extend(first);
        }
    }
    failures
}

#[test]
fn fused_and_naive_training_match_cpu_for_every_cell_and_dtype() {
    let Some(device) =
        common::cuda_or_skip("fused_and_naive_training_match_cpu_for_every_cell_and_dtype")
    else {
        return;
    };
    // Every case runs, so that one GPU run reports every failing one.
    let mut failures = Vec::new();
    for (k, row) in ROWS.iter().enumerate() {
        let c = case(row);
        if c.h <= max_hidden() {
            failures.extend(check_training(&device, &c, 500 + k as u64));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn caller_buffers_from_another_stream_are_read_before_they_are_freed() {
    let Some(device) = common::cuda_or_skip("caller_buffers_from_another_stream") else {
        return;
    };
    let cuda = device.as_cuda().unwrap();
    // A second device object on the same GPU owns another stream, as another crate would.
    let other = Device::cuda(0).unwrap();
    let other_stream = other.as_cuda().unwrap().stream().clone();
    let (t, b, i, h) = (6, 3, 5, 9);
    let values = common::random(t * b * i, 1.0, 7);
    let rnn = Rnn::random(RnnConfig::new(i, h), &device, DType::F32, 3).unwrap();
    let out = {
        let slice = other_stream.clone_htod(&values).unwrap();
        let x = Tensor::from_cuda_slice(slice, &[t, b, i], cuda).unwrap();
        rnn.forward(&x, None, Some(&[6, 2, 4])).unwrap()
        // `x` is dropped here, possibly before the copy out of it ran.
    };
    let out_slice = out.output.into_cuda_slice::<f32>().unwrap();
    let got = other_stream.clone_dtoh(&out_slice).unwrap();

    let reference = rnn.to(&Device::Cpu, DType::F32).unwrap();
    let x_host = Tensor::from_vec(values, &[t, b, i]).unwrap();
    let want = reference.forward(&x_host, None, Some(&[6, 2, 4])).unwrap();
    common::assert_close(
        "output",
        &got,
        &want.output.to_vec_f32().unwrap(),
        common::tolerance(DType::F32),
    );
    cuda.synchronize().unwrap();
}

#[test]
fn bad_inputs_are_typed_errors_on_every_device() {
    let devices: Vec<Device> = [
        Some(Device::Cpu),
        common::cuda_or_skip("bad_inputs (CUDA part)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    for device in devices {
        let dtype = if device.is_cuda() {
            DType::F16
        } else {
            DType::F32
        };
        let lstm = Lstm::random(LstmConfig::new(4, 8), &device, dtype, 1).unwrap();
        let x32 = Tensor::from_vec(common::random(3 * 2 * 4, 1.0, 1), &[3, 2, 4]).unwrap();
        let x = x32.to(&device, dtype).unwrap();
        let other_dtype = if device.is_cuda() {
            DType::F32
        } else {
            DType::F16
        };
        let err = |r: fused_rnn::Result<fused_rnn::nn::LstmOutput>| r.err().expect("an error");
        if device.is_cuda() {
            let wrong = x32.to(&device, other_dtype).unwrap();
            assert!(matches!(
                err(lstm.forward(&wrong, None, None)),
                Error::DType { .. }
            ));
            let host = x32.to(&Device::Cpu, dtype).unwrap();
            assert!(matches!(
                err(lstm.forward(&host, None, None)),
                Error::DeviceMismatch { .. }
            ));
        }
        assert!(matches!(
            err(lstm.forward(&x, None, Some(&[0, 3]))),
            Error::Lengths(_)
        ));
        assert!(matches!(
            err(lstm.forward(&x, None, Some(&[4, 3]))),
            Error::Lengths(_)
        ));
        assert!(matches!(
            err(lstm.forward(&x, None, Some(&[3]))),
            Error::Shape { .. }
        ));
        let h0 = Tensor::from_vec(vec![0.5; 2 * 8], &[1, 2, 8])
            .unwrap()
            .to(&device, dtype)
            .unwrap();
        let bad_c0 = Tensor::from_vec(vec![0.5; 8], &[1, 1, 8])
            .unwrap()
            .to(&device, dtype)
            .unwrap();
        assert!(matches!(
            err(lstm.forward(&x, Some((&h0, &bad_c0)), None)),
            Error::Shape { .. }
        ));
    }
}

#[test]
fn loaded_kernels_use_no_local_memory() {
    let Some(device) = common::cuda_or_skip("loaded_kernels_use_no_local_memory") else {
        return;
    };
    let cuda = device.as_cuda().unwrap();
    for kernel in fused_rnn::device::kernels::ENTRIES {
        for &dtype in kernel.dtypes {
            let entry = kernel.entry_point(dtype);
            let (regs, local) = cuda.function_resources(kernel.file, &entry).unwrap();
            println!(
                "{}.cu {entry}: {regs} registers, {local} B local",
                kernel.file
            );
            assert!(regs > 0, "{entry}: no register count");
            assert_eq!(
                local, 0,
                "{entry}: {local} B of local memory (stack or spills)"
            );
        }
    }
}

#[test]
fn auto_picks_persistent_where_it_fits_and_forcing_it_elsewhere_is_a_clear_error() {
    let Some(device) = common::cuda_or_skip("auto_picks_persistent_where_it_fits") else {
        return;
    };
    let x = |i: usize, b: usize| {
        Tensor::from_vec(common::random(4 * b * i, 1.0, 3), &[4, b, i])
            .unwrap()
            .to(&device, DType::BF16)
            .unwrap()
    };
    // Auto: persistent for a GRU at batch 1, and the reason it is not for a projected LSTM.
    let gru = Gru::random(GruConfig::new(7, 33), &device, DType::BF16, 1).unwrap();
    gru.forward(&x(7, 1), None, None).unwrap();
    let notes = gru.dispatch_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("persistent:"),
        "{notes:?}"
    );
    let mut config = LstmConfig::new(7, 33);
    config.proj_size = 5;
    let projected = Lstm::random(config, &device, DType::BF16, 1).unwrap();
    projected.forward(&x(7, 1), None, None).unwrap();
    let notes = projected.dispatch_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("proj_size"),
        "{notes:?}"
    );
    // Past Auto's batch limit the stepwise kernels run, and the note says why.
    let wide = Gru::random(GruConfig::new(7, 33), &device, DType::BF16, 1).unwrap();
    wide.forward(&x(7, 8), None, None).unwrap();
    let notes = wide.dispatch_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("stepwise"),
        "{notes:?}"
    );
    // Forced where it cannot run: an error naming the reason, before anything is launched.
    let forced = projected.with_algo(Algo::Persistent);
    match forced.forward(&x(7, 4), None, None) {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("proj_size"), "{e}"),
        other => panic!("expected an Unsupported error, got {:?}", other.map(|_| ())),
    }
    // 2048 f32 units at batch 16 need more shared memory per block than any GPU has.
    let big = Lstm::random(LstmConfig::new(8, 2048), &device, DType::F32, 1)
        .unwrap()
        .with_algo(Algo::Persistent);
    let x32 = Tensor::from_vec(common::random(4 * 16 * 8, 1.0, 4), &[4, 16, 8])
        .unwrap()
        .to(&device, DType::F32)
        .unwrap();
    match big.forward(&x32, None, None) {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("shared memory"), "{e}")
        }
        other => panic!("expected an Unsupported error, got {:?}", other.map(|_| ())),
    }
}
