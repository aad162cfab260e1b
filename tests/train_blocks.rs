//! The training building blocks on the CPU: Linear and Embedding backward, the softmax
//! cross-entropy against values PyTorch gives, gradient clipping, Adam and AdamW steps.

mod common;

use fused_rnn::nn::{Embedding, Linear, Module};
use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Indices, Precision, Tensor};

fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

#[test]
fn linear_gradients_match_finite_differences() {
    let mut lin = Linear::random(5, 3, true, &Device::Cpu, DType::F32, 7).unwrap();
    let x = t(common::random(2 * 4 * 5, 1.0, 1), &[2, 4, 5]);
    let g = t(common::random(2 * 4 * 3, 1.0, 2), &[2, 4, 3]);
    let grads = lin.backward(&x, &g).unwrap();
    let gv = host(&g);
    let loss = |lin: &Linear, x: &Tensor| -> f64 {
        let y = host(&lin.forward(x).unwrap());
        y.iter().zip(&gv).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    const EPS: f32 = 1e-2;
    // The loss is linear in every input and parameter, so differences are exact up to rounding.
    let check = |name: &str, analytic: &[f32], numeric: Vec<f64>| {
        for (k, (a, n)) in analytic.iter().zip(numeric).enumerate() {
            assert!((*a as f64 - n).abs() < 1e-3, "{name}[{k}]: {a} vs {n}");
        }
    };
    let mut xv = host(&x);
    let numeric: Vec<f64> = (0..xv.len())
        .map(|k| {
            let v = xv[k];
            xv[k] = v + EPS;
            let plus = loss(&lin, &t(xv.clone(), x.shape()));
            xv[k] = v - EPS;
            let minus = loss(&lin, &t(xv.clone(), x.shape()));
            xv[k] = v;
            (plus - minus) / (2.0 * EPS as f64)
        })
        .collect();
    check("input", &host(&grads.input), numeric);
    for (name, analytic) in [
        ("weight", host(&grads.weight)),
        ("bias", host(grads.bias.as_ref().unwrap())),
    ] {
        let numeric: Vec<f64> = (0..analytic.len())
            .map(|k| {
                let nudge = |lin: &mut Linear, d: f32| {
                    let mut params = lin.parameters_mut();
                    let p = params.iter_mut().find(|(n, _)| n == name).unwrap();
                    p.1.host_slice_mut::<f32>().unwrap()[k] += d;
                };
                nudge(&mut lin, EPS);
                let plus = loss(&lin, &x);
                nudge(&mut lin, -2.0 * EPS);
                let minus = loss(&lin, &x);
                nudge(&mut lin, EPS);
                (plus - minus) / (2.0 * EPS as f64)
            })
            .collect();
        check(name, &analytic, numeric);
    }
}

#[test]
fn embedding_gradients_sum_rows_per_token_and_skip_padding() {
    let emb = Embedding::random(5, 2, Some(0), &Device::Cpu, DType::F32, 3).unwrap();
    assert_eq!(
        &host(&emb.weight)[0..2],
        &[0.0, 0.0],
        "the padding row starts at zero"
    );
    let tokens = Indices::from_vec(vec![3, 0, 3, 1], &[2, 2]).unwrap();
    let y = emb.forward(&tokens).unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(&host(&y)[0..2], &host(&emb.weight)[6..8]);
    let g = t(vec![1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 5.0, 6.0], &[2, 2, 2]);
    let dw = host(&emb.backward(&tokens, &g).unwrap());
    assert_eq!(dw, vec![0.0, 0.0, 5.0, 6.0, 0.0, 0.0, 4.0, 6.0, 0.0, 0.0]);
    assert!(
        emb.forward(&Indices::from_vec(vec![5], &[1]).unwrap())
            .is_err(),
        "a token outside the vocabulary is an error"
    );
}

#[test]
fn cross_entropy_matches_pytorch_and_ignores_rows() {
    // torch.nn.functional.cross_entropy(torch.tensor([[1., 2., 3.], [0., 0., 0.], [2., -1., .5]]),
    //     torch.tensor([2, -100, 0])) = 0.32276...: rows 0 and 2 count, the mean of 0.40760596
    // and 0.24131...; the gradient is (softmax - one-hot) / 2 on those rows.
    let logits = t(vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 2.0, -1.0, 0.5], &[3, 3]);
    let loss = softmax_cross_entropy(&logits, &[2, -100, 0], -100).unwrap();
    let row0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
    let row2 = (2f64.exp() + (-1f64).exp() + 0.5f64.exp()).ln() - 2.0;
    assert_eq!(loss.rows, 2);
    assert!(
        (loss.value as f64 - (row0 + row2) / 2.0).abs() < 1e-6,
        "{}",
        loss.value
    );
    let g = host(&loss.grad);
    let z0 = 1f64.exp() + 2f64.exp() + 3f64.exp();
    let want0 = [
        1f64.exp() / z0 / 2.0,
        2f64.exp() / z0 / 2.0,
        (3f64.exp() / z0 - 1.0) / 2.0,
    ];
    for (a, b) in g[0..3].iter().zip(want0) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
    assert_eq!(&g[3..6], &[0.0, 0.0, 0.0]);
    assert!(
        softmax_cross_entropy(&logits, &[3, 0, 0], -100).is_err(),
        "target out of range"
    );
}

#[test]
fn clipping_and_adam_steps_follow_pytorch() {
    let mut a = t(vec![3.0], &[1]);
    let mut b = t(vec![4.0], &[1]);
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((host(&a)[0] - 0.6).abs() < 1e-5 && (host(&b)[0] - 0.8).abs() < 1e-5);

    // One step from p = 1 with g = 0.5 and lr = 0.1: m̂ = 0.5, v̂ = 0.25, so p = 1 - 0.1.
    let g = t(vec![0.5], &[1]);
    let mut p = t(vec![1.0], &[1]);
    let mut adam = Adam::new(0.1);
    adam.step(&mut [&mut p], &[&g]).unwrap();
    assert!((host(&p)[0] - 0.9).abs() < 1e-6, "{}", host(&p)[0]);
    // AdamW first decays p by lr·wd = 0.001.
    let mut p = t(vec![1.0], &[1]);
    let mut adamw = Adam::adamw(0.1);
    adamw.step(&mut [&mut p], &[&g]).unwrap();
    assert!((host(&p)[0] - 0.899).abs() < 1e-6, "{}", host(&p)[0]);
}

#[test]
fn backward_with_another_modules_reserve_is_an_error() {
    use fused_rnn::nn::{Gru, GruConfig};
    use fused_rnn::Error;
    let a = Gru::random(GruConfig::new(3, 4), &Device::Cpu, DType::F32, 1).unwrap();
    let b = Gru::random(GruConfig::new(3, 5), &Device::Cpu, DType::F32, 2).unwrap();
    let x = t(common::random(2 * 2 * 3, 1.0, 4), &[2, 2, 3]);
    let (_, reserve) = a.forward_train(&x, None, None).unwrap();
    let g = t(common::random(2 * 2 * 5, 1.0, 5), &[2, 2, 5]);
    match b.backward(&reserve, &g, None) {
        Err(Error::Config(msg)) => assert!(msg.contains("reserve"), "{msg}"),
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn reserve_bytes_is_known_before_the_call() {
    use fused_rnn::nn::{Lstm, LstmConfig};
    let mut config = LstmConfig::new(3, 5);
    config.num_layers = 2;
    config.bidirectional = true;
    config.proj_size = 2;
    let (t_len, b) = (4, 3);
    let x = t(common::random(t_len * b * 3, 1.0, 2), &[t_len, b, 3]);
    let f32_layer = Lstm::random(config, &Device::Cpu, DType::F32, 1).unwrap();
    let f64_layer = f32_layer
        .to(&Device::Cpu, DType::F32)
        .unwrap()
        .with_precision(Precision::F64);
    for (lstm, each) in [(f32_layer, 4), (f64_layer, 8)] {
        let expected = lstm.reserve_bytes(t_len, b);
        let (_, reserve) = lstm.forward_train(&x, None, None).unwrap();
        assert_eq!(reserve.bytes(), expected);
        assert_eq!(each * reserve.len(), expected);
        assert!(expected > 0);
    }
}

/// Adam resumed from a snapshot takes the same steps as the optimizer it was read from.
#[test]
fn adam_resumes_from_a_snapshot() {
    let mut a = Linear::random(6, 4, true, &Device::Cpu, DType::F32, 3).unwrap();
    let grads = |seed: u64| -> fused_rnn::nn::Grads {
        let mut g = fused_rnn::nn::Grads::new();
        let w = t(common::random(24, 1.0, seed), &[4, 6]);
        let b = t(common::random(4, 1.0, seed + 1), &[4]);
        g.add(
            "",
            &Linear::random(6, 4, true, &Device::Cpu, DType::F32, 3).unwrap(),
            vec![w, b],
        )
        .unwrap();
        g
    };
    let mut adam = Adam::new(0.01);
    for s in 0..3 {
        adam.step_module(&mut a, &grads(10 + s)).unwrap();
    }
    let snapshot = adam.snapshot().unwrap();
    assert_eq!(snapshot.steps, 3);
    assert_eq!(snapshot.moments.len(), 2);
    let mut b = Linear::random(6, 4, true, &Device::Cpu, DType::F32, 99).unwrap();
    for ((_, to), (_, from)) in b.parameters_mut().into_iter().zip(a.parameters()) {
        *to = from.to(&Device::Cpu, DType::F32).unwrap();
    }
    let mut resumed = Adam::new(0.01);
    resumed.restore(&mut b, snapshot.clone()).unwrap();
    for s in 3..6 {
        adam.step_module(&mut a, &grads(10 + s)).unwrap();
        resumed.step_module(&mut b, &grads(10 + s)).unwrap();
    }
    for ((_, x), (_, y)) in a.parameters().into_iter().zip(b.parameters()) {
        assert_eq!(host(x), host(y));
    }
    // A snapshot for other parameters is refused.
    let mut other = Linear::random(5, 4, true, &Device::Cpu, DType::F32, 1).unwrap();
    let err = Adam::new(0.01)
        .restore(&mut other, snapshot)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer state"), "{err}");
}
