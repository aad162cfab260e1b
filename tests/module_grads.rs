//! Gradients by name and one optimiser call over a model: `nn::Grads` meets a model's
//! `Module::parameters` by name whatever order the backward passes produced them in, and
//! `Adam::step_module` updates exactly as `Adam::step` over the same tensors in order. Names
//! that do not meet are errors naming them.

mod common;

use fused_rnn::nn::{
    parameters_mut_of, parameters_of, Attention, AttentionConfig, Grads, Lstm, LstmConfig, Module,
};
use fused_rnn::ops::attention::Score;
use fused_rnn::train::Adam;
use fused_rnn::{DType, Device, Tensor};

/// An LSTM encoder and general attention over its outputs, as a model composes layers.
struct Model {
    encoder: Lstm,
    attention: Attention,
}

impl Model {
    fn random(seed: u64) -> Self {
        let cpu = Device::Cpu;
        let mut config = LstmConfig::new(5, 6);
        config.bidirectional = true;
        let attention = AttentionConfig {
            score: Score::General,
            query_size: 4,
            key_size: 12,
            attention_size: 0,
            bias: false,
        };
        Model {
            encoder: Lstm::random(config, &cpu, DType::F32, seed).unwrap(),
            attention: Attention::random(attention, &cpu, DType::F32, seed + 1).unwrap(),
        }
    }
}

impl Module for Model {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        parameters_of(&[("encoder.", &self.encoder), ("attention.", &self.attention)])
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        parameters_mut_of(vec![
            ("encoder.", &mut self.encoder),
            ("attention.", &mut self.attention),
        ])
    }
}

/// Every parameter's gradient of Σ context ⊙ g for one batch, by name (attention's first).
fn gradients(model: &Model) -> Grads {
    let (t, b) = (4, 3);
    let x = Tensor::from_vec(common::random(t * b * 5, 1.0, 3), &[t, b, 5]).unwrap();
    let (out, reserve) = model.encoder.forward_train(&x, None, None).unwrap();
    // Keys [B, T, 2H] from the encoder's [T, B, 2H].
    let o = out.output.to_vec_f32().unwrap();
    let keys: Vec<f32> = (0..b)
        .flat_map(|r| (0..t).flat_map(move |s| (0..12).map(move |j| (s, r, j))))
        .map(|(s, r, j)| o[(s * b + r) * 12 + j])
        .collect();
    let keys = Tensor::from_vec(keys, &[b, t, 12]).unwrap();
    let query = Tensor::from_vec(common::random(b * 4, 1.0, 4), &[b, 4]).unwrap();
    let g = Tensor::from_vec(common::random(b * 12, 1.0, 5), &[b, 12]).unwrap();
    let att = model
        .attention
        .backward(&keys, None, None, &query, &g)
        .unwrap();
    // Back to [T, B, 2H] for the encoder.
    let dk = att.keys.to_vec_f32().unwrap();
    let d_out: Vec<f32> = (0..t)
        .flat_map(|s| (0..b).flat_map(move |r| (0..12).map(move |j| (s, r, j))))
        .map(|(s, r, j)| dk[(r * t + s) * 12 + j])
        .collect();
    let d_out = Tensor::from_vec(d_out, &[t, b, 12]).unwrap();
    let enc = model
        .encoder
        .backward(&reserve, &d_out, None, None)
        .unwrap();
    let mut grads = Grads::new();
    let att_params = att.params.into_iter().map(|(_, t)| t);
    grads
        .add("attention.", &model.attention, att_params)
        .unwrap();
    grads
        .add("encoder.", &model.encoder, enc.into_params())
        .unwrap();
    grads
}

#[test]
fn step_module_updates_every_parameter_by_name() {
    let mut by_name = Model::random(1);
    let mut in_order = Model::random(1);
    let (mut adam_a, mut adam_b) = (Adam::new(0.01), Adam::new(0.01));
    for _ in 0..3 {
        let grads = gradients(&by_name);
        assert_eq!(grads.len(), by_name.parameters().len());
        adam_a.step_module(&mut by_name, &grads).unwrap();

        let grads = gradients(&in_order);
        let names: Vec<String> = in_order.parameters().into_iter().map(|(n, _)| n).collect();
        let ordered: Vec<&Tensor> = names.iter().map(|n| grads.get(n).unwrap()).collect();
        let mut params: Vec<&mut Tensor> = in_order
            .parameters_mut()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        adam_b.step(&mut params, &ordered).unwrap();
    }
    let before = Model::random(1);
    for (((name, a), (_, b)), (_, c)) in by_name
        .parameters()
        .into_iter()
        .zip(in_order.parameters())
        .zip(before.parameters())
    {
        let (a, b, c) = (
            a.to_vec_f32().unwrap(),
            b.to_vec_f32().unwrap(),
            c.to_vec_f32().unwrap(),
        );
        assert_eq!(a, b, "{name}");
        assert_ne!(a, c, "{name} was not updated");
    }
}

#[test]
fn gradients_that_do_not_meet_the_parameters_are_errors_naming_them() {
    let mut model = Model::random(2);
    let mut adam = Adam::new(0.01);
    let full = gradients(&model);

    // One missing.
    let mut missing = Grads::new();
    for (name, t) in full
        .iter()
        .filter(|(n, _)| *n != "encoder.bias_hh_l0_reverse")
    {
        missing
            .insert(name, t.to(&Device::Cpu, DType::F32).unwrap())
            .unwrap();
    }
    let err = adam.step_module(&mut model, &missing).unwrap_err();
    assert!(
        err.to_string().contains("encoder.bias_hh_l0_reverse"),
        "{err}"
    );

    // One that names no parameter.
    let mut stray = Grads::new();
    for (name, t) in full.iter() {
        stray
            .insert(name, t.to(&Device::Cpu, DType::F32).unwrap())
            .unwrap();
    }
    let extra = Tensor::from_vec(vec![1f32], &[1]).unwrap();
    stray.insert("decoder.weight", extra).unwrap();
    let err = adam.step_module(&mut model, &stray).unwrap_err();
    assert!(err.to_string().contains("decoder.weight"), "{err}");

    // The same name twice, a wrong count and a wrong shape.
    let one = || Tensor::from_vec(vec![1f32], &[1]).unwrap();
    let err = stray.insert("decoder.weight", one()).unwrap_err();
    assert!(err.to_string().contains("decoder.weight"), "{err}");
    let err = Grads::new()
        .add("attention.", &model.attention, [one(), one()])
        .unwrap_err();
    assert!(err.to_string().contains("2 gradients"), "{err}");
    let err = Grads::new()
        .add("encoder.", &model.encoder, (0..8).map(|_| one()))
        .unwrap_err();
    assert!(err.to_string().contains("encoder.weight_ih_l0"), "{err}");

    // Nothing was stepped by the failed calls.
    let fresh = Model::random(2);
    for ((name, a), (_, b)) in model.parameters().into_iter().zip(fresh.parameters()) {
        assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap(), "{name}");
    }
}

#[test]
fn a_parameter_replaced_by_one_of_another_shape_or_dtype_is_refused_before_any_work() {
    let mut model = Model::random(3);
    let x = Tensor::from_vec(common::random(2 * 3 * 5, 1.0, 1), &[2, 3, 5]).unwrap();
    for (name, t) in model.encoder.parameters_mut() {
        if name == "weight_hh_l0" {
            *t = Tensor::from_vec(vec![0.5f32; 24 * 5], &[24, 5]).unwrap();
        }
    }
    let err = model
        .encoder
        .forward(&x, None, None)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("weight_hh_l0"), "{err}");
    let reserve_err = model.encoder.forward_train(&x, None, None).err();
    assert!(reserve_err.is_some());

    let keys = Tensor::from_vec(common::random(3 * 2 * 12, 1.0, 2), &[3, 2, 12]).unwrap();
    for (_, t) in model.attention.parameters_mut() {
        *t = Tensor::from_f32(&t.to_vec_f32().unwrap(), t.shape(), DType::F16).unwrap();
    }
    let err = model
        .attention
        .keys(&keys, None, None)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("key_proj.weight"), "{err}");
}

#[test]
fn a_shared_parameters_gradients_accumulate() {
    let a = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    let b = Tensor::from_vec(vec![0.5f32, -2.0, 4.0], &[3]).unwrap();
    let mut grads = Grads::new();
    grads.accumulate("embedding.weight", a).unwrap();
    grads.accumulate("embedding.weight", b).unwrap();
    assert_eq!(grads.len(), 1);
    let sum = grads.get("embedding.weight").unwrap().to_vec_f32().unwrap();
    assert_eq!(sum, [1.5, 0.0, 7.0]);
    let wrong = Tensor::from_vec(vec![1f32; 4], &[4]).unwrap();
    let err = grads.accumulate("embedding.weight", wrong).unwrap_err();
    assert!(err.to_string().contains("embedding.weight"), "{err}");
    assert_eq!(
        grads.get("embedding.weight").unwrap().to_vec_f32().unwrap(),
        sum
    );
}
