//! The captioner's image encoder (`nn::PatchEncoder`, with and without its stem of convolutions
//! and its hidden layer) against
//! PyTorch (float64, `scripts/fixtures/make_encoder_fixtures.py`): keys and every parameter's
//! gradient, on the CPU and on CUDA.

mod common;

use common::assert_close;
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{EncoderLayers, ImageShape, Module, PatchEncoder};
use fused_rnn::{DType, Device};

/// Within 1e-5 of the reference's largest magnitude (f32 against float64).
const TOL: f32 = 1e-5;

fn cases() -> Vec<TensorFile> {
    let mut paths: Vec<_> = std::fs::read_dir(common::fixtures("encoder"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "encoder fixtures missing");
    paths.iter().map(|p| TensorFile::load(p).unwrap()).collect()
}

fn floats(file: &TensorFile, name: &str) -> Vec<f32> {
    file.float(name).unwrap().to_vec_f32().unwrap()
}

fn check(device: &Device, dtype: DType, tol: f32) {
    for file in cases() {
        let case = file
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let shape: ImageShape = serde_json::from_str(file.metadata("image").unwrap()).unwrap();
        let dim = file.shape("encoder.proj.weight").unwrap()[0];
        let encoder = PatchEncoder::load(&file, "encoder.", shape, dim, device, dtype).unwrap();
        let convs: Vec<usize> = (0..)
            .map_while(|i| {
                file.shape(&format!("encoder.conv.{i}.weight"))
                    .map(|s| s[0])
            })
            .collect();
        let layers = EncoderLayers {
            convs,
            hidden: file.shape("encoder.window.weight").map(|s| s[0]),
        };
        assert_eq!(encoder.layers(), layers, "{case}");
        let (keys, saved) = encoder.forward(&floats(&file, "images"), true).unwrap();
        assert_eq!(keys.shape(), file.shape("keys").unwrap(), "{case}");
        assert_close(
            &format!("{case} keys"),
            &keys.to_vec_f32().unwrap(),
            &floats(&file, "keys"),
            tol,
        );
        let grad_keys = file.float("grad_keys").unwrap().to(device, dtype).unwrap();
        let grads = encoder.backward(&saved.unwrap(), &grad_keys).unwrap();
        let names = encoder.parameters();
        assert_eq!(grads.len(), names.len(), "{case}");
        for ((name, _), grad) in names.iter().zip(&grads) {
            assert_close(
                &format!("{case} grad {name}"),
                &grad.to_vec_f32().unwrap(),
                &floats(&file, &format!("grad.encoder.{name}")),
                tol,
            );
        }
    }
}

#[test]
fn the_encoder_and_its_gradients_equal_pytorch_on_the_cpu() {
    check(&Device::Cpu, DType::F32, TOL);
}

#[test]
fn the_encoder_and_its_gradients_equal_pytorch_on_cuda() {
    let Some(gpu) = common::cuda_or_skip("encoder_fixtures") else {
        return;
    };
    check(&gpu, DType::F32, TOL);
}
