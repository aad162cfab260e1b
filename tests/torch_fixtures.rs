//! Against PyTorch: every case in tests/fixtures/{rnn,lstm,gru,attention,grad} (made by the
//! scripts in scripts/fixtures/) through `fused-rnn run`; on the CPU, and
//! (the recurrent modules) on CUDA in f32 where there is a GPU. The `grad` cases also run the
//! backward (`run --grad`) and compare every gradient with float64 autograd.

mod common;

use fused_rnn::io::TensorFile;
use fused_rnn::{Algo, DType};

/// `device` is `--device`'s value.
fn check_fixtures(kind: &str, device: &str, algo: Algo, tol: f32) {
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
    let out_dir = common::scratch(&format!("fixtures-{kind}-{device}-{}", algo.name()));
    for case in &cases {
        let name = format!("{kind}/{}", case.file_name().unwrap().to_str().unwrap());
        let output = out_dir.join("out.safetensors");
        let grad = case.join("grad.safetensors");
        let mut command = common::cli::bin();
        command
            .args([
                "run",
                "--device",
                device,
                "--algo",
                algo.name(),
                "--weights",
            ])
            .arg(case.join("weights.safetensors"))
            .arg("--input")
            .arg(case.join("input.safetensors"))
            .arg("--output")
            .arg(&output);
        if grad.is_file() {
            command.arg("--grad").arg(&grad);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
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
                &format!("{name} ({device}, {}): {tensor}", algo.name()),
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
        check_fixtures(kind, "cpu", Algo::Auto, 1e-5);
    }
}

#[test]
fn cuda_matches_pytorch_on_every_fixture() {
    if common::cuda_or_skip("cuda_matches_pytorch_on_every_fixture").is_none() {
        return;
    }
    for kind in ["rnn", "lstm", "gru"] {
        for algo in [Algo::Fused, Algo::Naive] {
            check_fixtures(kind, "cuda", algo, common::tolerance(DType::F32));
        }
    }
}
