//! Tensors and their devices: a CUDA tensor carries its device, `Tensor::to` converts on the
//! device, and a caller's buffer can be lent for a call without giving it up. The CUDA tests
//! skip with a printed reason without a GPU (fail under FUSED_RNN_REQUIRE_GPU=1).

mod common;

use fused_rnn::nn::{Rnn, RnnConfig};
use fused_rnn::{DType, Device, Tensor};

#[test]
fn host_tensors_are_on_the_cpu() {
    let t = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    assert!(matches!(t.device(), Device::Cpu));
    assert!(t.cuda_device().is_err());
}

#[test]
fn to_converts_every_dtype_pair_on_the_device() {
    let Some(device) = common::cuda_or_skip("to_converts_every_dtype_pair_on_the_device") else {
        return;
    };
    let values = common::random(1000, 3.0, 11);
    for from in DType::ALL {
        let on = Tensor::from_vec(values.clone(), &[10, 100])
            .unwrap()
            .to(&device, from)
            .unwrap();
        for to in DType::ALL {
            let got = on.to(&device, to).unwrap();
            assert_eq!(got.dtype(), to);
            assert_eq!(got.shape(), &[10, 100]);
            assert!(got.cuda_device().is_ok());
            // Rounding to `from`, then to `to`, as the host path does.
            let want = common::rounded(common::rounded(values.clone(), from), to);
            assert_eq!(got.to_vec_f32().unwrap(), want, "{from} → {to}");
        }
    }
}

#[test]
fn a_lent_buffer_is_read_in_place_and_stays_the_lenders() {
    let Some(device) = common::cuda_or_skip("a_lent_buffer_is_read_in_place") else {
        return;
    };
    let cuda = device.as_cuda().unwrap();
    // The lender owns a buffer on a stream of its own, as another crate would, and lends a
    // window of it that starts past its first element.
    let lender = Device::cuda(0).unwrap();
    let lender_stream = lender.as_cuda().unwrap().stream().clone();
    let (t, b, i, h, offset) = (5, 3, 4, 7, 13);
    let values = common::random(offset + t * b * i + 2, 1.0, 5);
    let buffer = lender_stream.clone_htod(&values).unwrap();
    let rnn = Rnn::random(RnnConfig::new(i, h), &device, DType::F32, 9).unwrap();
    let out = {
        let x = Tensor::borrow_cuda_slice(&buffer, offset, &[t, b, i], cuda).unwrap();
        rnn.forward(&x, None, None).unwrap()
    };
    let window = &values[offset..offset + t * b * i];
    let reference = rnn.to(&Device::Cpu, DType::F32).unwrap();
    let x_host = Tensor::from_vec(window.to_vec(), &[t, b, i]).unwrap();
    let want = reference.forward(&x_host, None, None).unwrap();
    common::assert_close(
        "output",
        &out.output.to_vec_f32().unwrap(),
        &want.output.to_vec_f32().unwrap(),
        common::tolerance(DType::F32),
    );
    // Still the lender's, whole and unchanged.
    assert_eq!(lender_stream.clone_dtoh(&buffer).unwrap(), values);

    // A window past the buffer's end is an error naming it.
    let err = Tensor::borrow_cuda_slice(&buffer, offset + 3, &[t, b, i], cuda)
        .err()
        .expect("out of range");
    assert!(err.to_string().contains("borrowed view"), "{err}");
}
