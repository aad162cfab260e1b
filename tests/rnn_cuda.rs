//! CUDA fused and naive RNN forward against the CPU reference, for every dtype, on odd shapes,
//! with NaN-poisoned outputs. Skips with a printed reason without a GPU (fails instead under
//! FUSED_RNN_REQUIRE_GPU=1).

mod common;

use fused_rnn::nn::{Rnn, RnnConfig};
use fused_rnn::{Algo, DType, Device, Nonlinearity, Tensor};

#[derive(Debug, Clone, Copy)]
struct Case {
    i: usize,
    h: usize,
    layers: usize,
    bidirectional: bool,
    batch_first: bool,
    t: usize,
    b: usize,
    lengths: bool,
    h0: bool,
    bias: bool,
    relu: bool,
}

const CASES: &[Case] = &[
    Case {
        i: 5,
        h: 1,
        layers: 1,
        bidirectional: false,
        batch_first: false,
        t: 7,
        b: 1,
        lengths: false,
        h0: false,
        bias: true,
        relu: false,
    },
    Case {
        i: 3,
        h: 7,
        layers: 2,
        bidirectional: true,
        batch_first: true,
        t: 5,
        b: 3,
        lengths: true,
        h0: true,
        bias: true,
        relu: false,
    },
    Case {
        i: 33,
        h: 33,
        layers: 1,
        bidirectional: true,
        batch_first: false,
        t: 17,
        b: 7,
        lengths: true,
        h0: false,
        bias: true,
        relu: true,
    },
    Case {
        i: 16,
        h: 129,
        layers: 3,
        bidirectional: false,
        batch_first: false,
        t: 9,
        b: 5,
        lengths: true,
        h0: true,
        bias: false,
        relu: false,
    },
    Case {
        i: 7,
        h: 1000,
        layers: 1,
        bidirectional: true,
        batch_first: true,
        t: 4,
        b: 2,
        lengths: true,
        h0: true,
        bias: true,
        relu: false,
    },
    Case {
        i: 4,
        h: 33,
        layers: 2,
        bidirectional: true,
        batch_first: false,
        t: 1,
        b: 4,
        lengths: false,
        h0: true,
        bias: true,
        relu: true,
    },
];

impl Case {
    fn config(&self) -> RnnConfig {
        RnnConfig {
            input_size: self.i,
            hidden_size: self.h,
            num_layers: self.layers,
            nonlinearity: if self.relu {
                Nonlinearity::Relu
            } else {
                Nonlinearity::Tanh
            },
            bias: self.bias,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }

    /// Unsorted lengths with a 1 and a full-length row.
    fn lengths(&self) -> Option<Vec<usize>> {
        self.lengths.then(|| {
            (0..self.b)
                .map(|r| [1, self.t, self.t.div_ceil(2)][r % 3])
                .collect()
        })
    }
}

/// One call's inputs: (x, h0, lengths), on the host in f32.
type Inputs = (Tensor, Option<Tensor>, Option<Vec<usize>>);

fn inputs(case: &Case, seed: u64, with_h0: bool, lengths: Option<Vec<usize>>) -> Inputs {
    let dirs = if case.bidirectional { 2 } else { 1 };
    let x_shape = if case.batch_first {
        [case.b, case.t, case.i]
    } else {
        [case.t, case.b, case.i]
    };
    let x = Tensor::from_vec(
        common::random(case.t * case.b * case.i, 1.0, seed),
        &x_shape,
    )
    .unwrap();
    let h0_shape = [case.layers * dirs, case.b, case.h];
    let h0 = with_h0.then(|| {
        Tensor::from_vec(
            common::random(h0_shape.iter().product(), 0.5, seed + 1),
            &h0_shape,
        )
        .unwrap()
    });
    (x, h0, lengths)
}

/// Runs `gpu` on `inputs` (rounded to its dtype) and compares with the CPU on the same
/// rounded parameters and inputs.
fn compare(what: &str, gpu: &Rnn, inputs: &Inputs) {
    let (cpu, device, dtype) = (Device::Cpu, gpu.device().clone(), gpu.dtype());
    let (x, h0, lengths) = inputs;
    let x_dev = x.to(&device, dtype).unwrap();
    let h0_dev = h0.as_ref().map(|h| h.to(&device, dtype).unwrap());
    let x_ref = x_dev.to(&cpu, DType::F32).unwrap();
    let h0_ref = h0_dev.as_ref().map(|h| h.to(&cpu, DType::F32).unwrap());
    let reference = gpu.to(&cpu, DType::F32).unwrap();
    let want = reference
        .forward(&x_ref, h0_ref.as_ref(), lengths.as_deref())
        .unwrap();
    let got = gpu
        .forward(&x_dev, h0_dev.as_ref(), lengths.as_deref())
        .unwrap();
    assert_eq!(got.output.shape(), want.output.shape(), "{what}");
    assert_eq!(got.h_n.shape(), want.h_n.shape(), "{what}");
    let tol = common::tolerance(dtype);
    for (name, g, w) in [
        ("output", &got.output, &want.output),
        ("h_n", &got.h_n, &want.h_n),
    ] {
        common::assert_close(
            &format!("{what}: {name}"),
            &g.to_vec_f32().unwrap(),
            &w.to_vec_f32().unwrap(),
            tol,
        );
    }
}

/// Every dtype and algo on one case. Each layer runs twice on the same shape: the second call
/// replays the first call's graph with other inputs, h0 and lengths, so nothing may leak
/// between calls.
fn check_case(device: &Device, case: &Case, seed: u64) {
    let base = Rnn::random(case.config(), &Device::Cpu, DType::F32, seed).unwrap();
    let first = inputs(case, seed + 10, !case.h0, None);
    let second = inputs(case, seed + 20, case.h0, case.lengths());
    for dtype in DType::ALL {
        for algo in [Algo::Fused, Algo::Naive] {
            let gpu = base.to(device, dtype).unwrap().with_algo(algo);
            let what = format!("{case:?} {dtype} {}", algo.name());
            compare(&format!("{what} (first call)"), &gpu, &first);
            compare(&format!("{what} (replay)"), &gpu, &second);
            assert_eq!(
                gpu.captured_graphs(),
                1,
                "{what}: the forward pass was not captured"
            );
        }
    }
}

#[test]
fn fused_and_naive_match_cpu_for_every_dtype() {
    let Some(device) = common::cuda_or_skip("fused_and_naive_match_cpu_for_every_dtype") else {
        return;
    };
    for (k, case) in CASES.iter().enumerate() {
        check_case(&device, case, 100 + k as u64);
    }
}

#[test]
fn caller_owned_device_buffers_pass_through_without_copies() {
    let Some(device) =
        common::cuda_or_skip("caller_owned_device_buffers_pass_through_without_copies")
    else {
        return;
    };
    let cuda = device.as_cuda().unwrap();
    let (t, b, i, h) = (6, 3, 5, 9);
    let values = common::random(t * b * i, 1.0, 7);
    let slice = cuda.stream().clone_htod(&values).unwrap();
    let x = Tensor::from_cuda_slice(slice, &[t, b, i]).unwrap();
    let rnn = Rnn::random(RnnConfig::new(i, h), &device, DType::F32, 3).unwrap();
    let out = rnn.forward(&x, None, Some(&[6, 2, 4])).unwrap();
    let out_slice = out.output.into_cuda_slice::<f32>().unwrap();
    assert_eq!(out_slice.len(), t * b * h);

    let cpu = Device::Cpu;
    let reference = rnn.to(&cpu, DType::F32).unwrap();
    let x_host = Tensor::from_vec(values, &[t, b, i]).unwrap();
    let want = reference.forward(&x_host, None, Some(&[6, 2, 4])).unwrap();
    let got = cuda.stream().clone_dtoh(&out_slice).unwrap();
    common::assert_close(
        "output",
        &got,
        &want.output.to_vec_f32().unwrap(),
        common::tolerance(DType::F32),
    );
}

#[test]
fn bad_inputs_are_errors_on_cuda() {
    let Some(device) = common::cuda_or_skip("bad_inputs_are_errors_on_cuda") else {
        return;
    };
    let rnn = Rnn::random(RnnConfig::new(4, 8), &device, DType::F16, 1).unwrap();
    let x32 = Tensor::from_vec(common::random(3 * 2 * 4, 1.0, 1), &[3, 2, 4]).unwrap();
    let x_wrong_dtype = x32.to(&device, DType::F32).unwrap();
    assert!(
        rnn.forward(&x_wrong_dtype, None, None).is_err(),
        "dtype mismatch"
    );
    let x_host = x32.to(&Device::Cpu, DType::F16).unwrap();
    assert!(
        rnn.forward(&x_host, None, None).is_err(),
        "host tensor on a CUDA layer"
    );
    let x = x32.to(&device, DType::F16).unwrap();
    assert!(rnn.forward(&x, None, Some(&[0, 3])).is_err(), "length 0");
    assert!(rnn.forward(&x, None, Some(&[4, 3])).is_err(), "length > T");
}

#[test]
fn loaded_kernels_use_no_local_memory() {
    let Some(device) = common::cuda_or_skip("loaded_kernels_use_no_local_memory") else {
        return;
    };
    let cuda = device.as_cuda().unwrap();
    for (op, dtypes) in common::RNN_ENTRY_POINTS {
        for &dtype in *dtypes {
            let entry = fused_rnn::device::kernels::entry_point(op, dtype);
            let (regs, local) = cuda.function_resources("rnn", &entry).unwrap();
            println!("{entry}: {regs} registers, {local} B local");
            assert!(regs > 0, "{entry}: no register count");
            assert_eq!(
                local, 0,
                "{entry}: {local} B of local memory (stack or spills)"
            );
        }
    }
}
