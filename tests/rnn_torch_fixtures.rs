//! The CPU path against PyTorch: every case in tests/fixtures/rnn (made by
//! scripts/fixtures/make_rnn_fixtures.py) through `run`, the same code path as the CLI.

mod common;

use fused_rnn::io::TensorFile;
use fused_rnn::run::{run, DeviceChoice, RunOptions};
use fused_rnn::Algo;

#[test]
fn cpu_matches_pytorch_on_every_fixture() {
    let dir = common::fixtures("rnn");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the RNN fixtures in {}",
        dir.display()
    );
    let out_dir = std::env::temp_dir().join(format!("fused-rnn-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let output = out_dir.join(format!("{name}.safetensors"));
        run(&RunOptions {
            weights: case.join("weights.safetensors"),
            input: case.join("input.safetensors"),
            output: output.clone(),
            device: DeviceChoice::Cpu,
            dtype: None,
            batch_first: None,
            nonlinearity: None,
            algo: Algo::Auto,
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = TensorFile::load(&output).unwrap();
        let expected = TensorFile::load(case.join("expected.safetensors")).unwrap();
        for tensor in ["output", "h_n"] {
            let g = got.float(tensor).unwrap();
            let e = expected.float(tensor).unwrap();
            assert_eq!(g.shape(), e.shape(), "{name}: {tensor} shape");
            common::assert_close(
                &format!("{name}: {tensor}"),
                &g.to_vec_f32().unwrap(),
                &e.to_vec_f32().unwrap(),
                1e-5,
            );
        }
    }
    std::fs::remove_dir_all(&out_dir).ok();
}
