//! Against PyTorch: every case in tests/fixtures/{rnn,lstm,gru,attention,grad} (made by the
//! scripts in scripts/fixtures/) through `run`, the same code path as the CLI; on the CPU, and
//! (the recurrent modules) on CUDA in f32 where there is a GPU. The `grad` cases also run the
//! backward (`run --grad`) and compare every gradient with float64 autograd.

mod common;

use fused_rnn::io::TensorFile;
use fused_rnn::run::{run, DeviceChoice, RunOptions};
use fused_rnn::{Algo, DType};

fn check_fixtures(kind: &str, device: DeviceChoice, algo: Algo, tol: f32) {
    let dir = common::fixtures(kind);
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "expected the {kind} fixtures in {}",
        dir.display()
    );
    let out_dir = common::scratch(&format!("fixtures-{kind}-{device:?}-{}", algo.name()));
    for case in &cases {
        let name = format!("{kind}/{}", case.file_name().unwrap().to_str().unwrap());
        let output = out_dir.join("out.safetensors");
        let grad = case.join("grad.safetensors");
        run(&RunOptions {
            weights: case.join("weights.safetensors"),
            input: case.join("input.safetensors"),
            output: output.clone(),
            device,
            dtype: None,
            batch_first: None,
            nonlinearity: None,
            algo,
            grad: grad.is_file().then_some(grad),
            allow_nonfinite: false,
            max_output: None,
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = TensorFile::load(&output).unwrap();
        let expected = TensorFile::load(case.join("expected.safetensors")).unwrap();
        let mut tensors: Vec<&str> = expected.names().collect();
        tensors.sort();
        let fixed: &[&str] = match kind {
            "lstm" => &["c_n", "h_n", "output"],
            "attention" => &["context", "weights"],
            "grad" => &[],
            _ => &["h_n", "output"],
        };
        if kind != "grad" {
            assert_eq!(tensors, fixed, "{name}");
        }
        let mut produced: Vec<&str> = got.names().collect();
        produced.sort();
        assert_eq!(produced, tensors, "{name}");
        for tensor in tensors {
            let g = got.float(tensor).unwrap_or_else(|e| panic!("{name}: {e}"));
            let e = expected.float(tensor).unwrap();
            assert_eq!(g.shape(), e.shape(), "{name}: {tensor} shape");
            common::assert_close(
                &format!("{name} ({device:?}, {}): {tensor}", algo.name()),
                &g.to_vec_f32().unwrap(),
                &e.to_vec_f32().unwrap(),
                tol,
            );
        }
    }
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn cpu_matches_pytorch_on_every_fixture() {
    for kind in ["rnn", "lstm", "gru", "attention", "grad"] {
        check_fixtures(kind, DeviceChoice::Cpu, Algo::Auto, 1e-5);
    }
}

#[test]
fn cuda_matches_pytorch_on_every_fixture() {
    if common::cuda_or_skip("cuda_matches_pytorch_on_every_fixture").is_none() {
        return;
    }
    for kind in ["rnn", "lstm", "gru"] {
        for algo in [Algo::Fused, Algo::Naive] {
            check_fixtures(
                kind,
                DeviceChoice::Cuda,
                algo,
                common::tolerance(DType::F32),
            );
        }
    }
}
