//! `fused_rnn::candle` on the CPU: the drop-in layers against candle-nn's own (every method of
//! `candle_nn::rnn::RNN`), the PyTorch-style layers and attention against the PyTorch fixtures
//! (outputs, and gradients through candle's `backward()`), training with a candle optimiser,
//! and bad input.
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::rnn::RNN;
use candle_nn::{LSTMConfig, Optimizer, VarBuilder, VarMap};
use fused_rnn::io::TensorFile;
use fused_rnn::nn::{GruConfig, LstmConfig, RecurrentSpec, RnnConfig};
use fused_rnn::Cell;
use std::collections::HashMap;
use std::path::Path;

const CPU: Device = Device::Cpu;

/// Largest |a − b| over |b|'s largest (1 when that is below 1).
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Values that are not zero and not all alike (never test on zeros).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &CPU).unwrap()
}

/// Every variable of `map` drawn afresh (candle-nn's biases start at zero, which would hide
/// a bias used wrongly), variable k from seed `seed + k`.
fn randomise(map: &VarMap, seed: u64) {
    for (k, var) in map.all_vars().iter().enumerate() {
        var.set(&random(var.dims(), seed + k as u64)).unwrap();
    }
}

#[test]
fn drop_in_lstm_equals_candle_nn_in_every_rnn_method() {
    let (b, t, i, h) = (3, 7, 5, 9);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let theirs = candle_nn::lstm(i, h, LSTMConfig::default(), vb.pp("enc")).unwrap();
    let ours = fused_rnn::candle::lstm(i, h, LSTMConfig::default(), vb.pp("enc")).unwrap();
    randomise(&map, 10);
    let x = random(&[b, t, i], 1);

    let zero = ours.zero_state(b).unwrap();
    let their_zero = theirs.zero_state(b).unwrap();
    assert_eq!(zero.h.dims(), their_zero.h.dims());
    assert_eq!(
        zero.c.to_vec2::<f32>().unwrap(),
        their_zero.c.to_vec2::<f32>().unwrap()
    );

    let (s_ours, s_theirs) = (ours.seq(&x).unwrap(), theirs.seq(&x).unwrap());
    assert_eq!(s_ours.len(), t);
    for (k, (a, b)) in s_ours.iter().zip(&s_theirs).enumerate() {
        assert!(max_diff(&a.h, &b.h) < 1e-5, "seq h at step {k}");
        assert!(max_diff(&a.c, &b.c) < 1e-5, "seq c at step {k}");
    }
    // The same from plain tensors, which need no gradient: the pass runs outside the graph.
    let plain = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let plain = VarBuilder::from_tensors(plain, DType::F32, &CPU);
    let untracked = fused_rnn::candle::lstm(i, h, LSTMConfig::default(), plain.pp("enc")).unwrap();
    for (k, (a, b)) in untracked.seq(&x).unwrap().iter().zip(&s_theirs).enumerate() {
        assert!(!a.h.track_op(), "untracked h");
        assert!(max_diff(&a.h, &b.h) < 1e-5, "untracked seq h at step {k}");
        assert!(max_diff(&a.c, &b.c) < 1e-5, "untracked seq c at step {k}");
    }
    let stacked = ours.states_to_tensor(&s_ours).unwrap();
    assert_eq!(stacked.dims(), &[b, t, h]);
    assert!(max_diff(&stacked, &theirs.states_to_tensor(&s_theirs).unwrap()) < 1e-5);

    let init = candle_nn::rnn::LSTMState::new(random(&[b, h], 2), random(&[b, h], 3));
    let (a, b_) = (
        ours.seq_init(&x, &init).unwrap(),
        theirs.seq_init(&x, &init).unwrap(),
    );
    for (k, (p, q)) in a.iter().zip(&b_).enumerate() {
        assert!(max_diff(&p.h, &q.h) < 1e-5, "seq_init h at step {k}");
        assert!(max_diff(&p.c, &q.c) < 1e-5, "seq_init c at step {k}");
    }
    let none = Tensor::zeros((b, 0, i), DType::F32, &CPU).unwrap();
    assert_eq!(
        ours.seq(&none).unwrap().len(),
        theirs.seq(&none).unwrap().len()
    );
    let x0 = x.narrow(1, 2, 1).unwrap().squeeze(1).unwrap();
    let (p, q) = (
        ours.step(&x0, &init).unwrap(),
        theirs.step(&x0, &init).unwrap(),
    );
    assert!(
        max_diff(&p.h, &q.h) < 1e-5 && max_diff(&p.c, &q.c) < 1e-5,
        "step"
    );
}

#[test]
fn drop_in_lstm_reads_candles_names_for_any_layer_and_direction() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let config = LSTMConfig {
        layer_idx: 2,
        direction: candle_nn::rnn::Direction::Backward,
        ..LSTMConfig::default()
    };
    fused_rnn::candle::lstm(4, 6, config, vb.pp("rnn")).unwrap();
    let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "rnn.bias_hh_l2_reverse",
            "rnn.bias_ih_l2_reverse",
            "rnn.weight_hh_l2_reverse",
            "rnn.weight_ih_l2_reverse"
        ]
    );
}

#[test]
fn drop_in_gru_equals_candle_nn_in_every_rnn_method() {
    let (b, t, i, h) = (4, 6, 7, 5);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let config = candle_nn::GRUConfig::default();
    let theirs = candle_nn::gru(i, h, config, vb.pp("g")).unwrap();
    let ours = fused_rnn::candle::gru(i, h, config, vb.pp("g")).unwrap();
    randomise(&map, 20);
    let x = random(&[b, t, i], 4);
    assert_eq!(ours.zero_state(b).unwrap().h.dims(), &[b, h]);
    let (s_ours, s_theirs) = (ours.seq(&x).unwrap(), theirs.seq(&x).unwrap());
    for (k, (a, b)) in s_ours.iter().zip(&s_theirs).enumerate() {
        assert!(max_diff(&a.h, &b.h) < 1e-5, "seq h at step {k}");
    }
    // candle-nn concatenates a GRU's states along dimension 1; so do we.
    let cat = ours.states_to_tensor(&s_ours).unwrap();
    assert_eq!(cat.dims(), &[b, t * h]);
    assert!(max_diff(&cat, &theirs.states_to_tensor(&s_theirs).unwrap()) < 1e-5);
    let init = candle_nn::rnn::GRUState {
        h: random(&[b, h], 5),
    };
    let (a, b_) = (
        ours.seq_init(&x, &init).unwrap(),
        theirs.seq_init(&x, &init).unwrap(),
    );
    for (k, (p, q)) in a.iter().zip(&b_).enumerate() {
        assert!(max_diff(&p.h, &q.h) < 1e-5, "seq_init at step {k}");
    }
    let x0 = x.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let (p, q) = (
        ours.step(&x0, &init).unwrap(),
        theirs.step(&x0, &init).unwrap(),
    );
    assert!(max_diff(&p.h, &q.h) < 1e-5, "step");
}

/// A fixture case's tensors, its module's sizes, and the parameters as candle variables.
struct Case {
    name: String,
    spec: RecurrentSpec,
    input: HashMap<String, Tensor>,
    expected: HashMap<String, Tensor>,
    grad: Option<HashMap<String, Tensor>>,
    params: HashMap<String, Var>,
}

fn load_case(dir: &Path) -> Case {
    let read = |f: &str| candle_core::safetensors::load(dir.join(f), &CPU).unwrap();
    let spec =
        RecurrentSpec::infer(&TensorFile::load(dir.join("weights.safetensors")).unwrap()).unwrap();
    let params = read("weights.safetensors")
        .into_iter()
        .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
        .collect();
    let grad_file = dir.join("grad.safetensors");
    Case {
        name: dir.display().to_string(),
        spec,
        input: read("input.safetensors"),
        expected: read("expected.safetensors"),
        grad: grad_file.is_file().then(|| read("grad.safetensors")),
        params,
    }
}

/// What a layer returned: output, h_n and, for an LSTM, c_n.
type Returned = (Tensor, Tensor, Option<Tensor>);

/// Builds the case's module over candle tensors and runs it on `input`: with its parameters
/// as variables (`tracked`: the pass enters candle's graph) or as plain tensors.
fn run_case(
    case: &Case,
    tracked: bool,
    input: &Tensor,
    h0: Option<&Tensor>,
    c0: Option<&Tensor>,
) -> Returned {
    let tensors = case
        .params
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor();
            (k.clone(), if tracked { t.clone() } else { t.detach() })
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &CPU);
    let s = &case.spec;
    let lengths: Option<Vec<usize>> = case.input.get("lengths").map(|l| {
        l.to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    });
    let lengths = lengths.as_deref();
    match s.cell {
        Cell::Lstm => {
            let config = LstmConfig {
                input_size: s.input_size,
                hidden_size: s.hidden_size,
                proj_size: s.proj_size,
                num_layers: s.num_layers,
                bias: s.bias,
                batch_first: s.batch_first,
                bidirectional: s.bidirectional,
            };
            let layer = fused_rnn::candle::Lstm::new(config, vb).unwrap();
            let state = h0.zip(c0);
            let out = layer.forward(input, state, lengths).unwrap();
            (out.output, out.h_n, Some(out.c_n))
        }
        Cell::Gru => {
            let config = GruConfig {
                input_size: s.input_size,
                hidden_size: s.hidden_size,
                num_layers: s.num_layers,
                bias: s.bias,
                batch_first: s.batch_first,
                bidirectional: s.bidirectional,
            };
            let out = fused_rnn::candle::Gru::new(config, vb)
                .unwrap()
                .forward(input, h0, lengths)
                .unwrap();
            (out.output, out.h_n, None)
        }
        Cell::Rnn(nonlinearity) => {
            let config = RnnConfig {
                input_size: s.input_size,
                hidden_size: s.hidden_size,
                num_layers: s.num_layers,
                nonlinearity,
                bias: s.bias,
                batch_first: s.batch_first,
                bidirectional: s.bidirectional,
            };
            let out = fused_rnn::candle::Rnn::new(config, vb)
                .unwrap()
                .forward(input, h0, lengths)
                .unwrap();
            (out.output, out.h_n, None)
        }
    }
}

fn cases(kind: &str) -> Vec<Case> {
    let mut dirs: Vec<_> = std::fs::read_dir(common::fixtures(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 7, "expected the {kind} fixtures");
    // The attention cases among the gradients are not recurrent modules.
    dirs.retain(|d| {
        !d.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("attn_")
    });
    dirs.iter().map(|d| load_case(d)).collect()
}

#[test]
fn layers_over_candle_tensors_equal_the_pytorch_fixtures() {
    let mut checked = 0;
    for kind in ["lstm", "gru", "rnn"] {
        for case in cases(kind) {
            for tracked in [false, true] {
                let (output, h_n, c_n) = run_case(
                    &case,
                    tracked,
                    &case.input["input"],
                    case.input.get("h0"),
                    case.input.get("c0"),
                );
                let e = &case.expected;
                let name = format!("{} (tracked: {tracked})", case.name);
                assert!(max_diff(&output, &e["output"]) < 1e-5, "{name}: output");
                assert!(max_diff(&h_n, &e["h_n"]) < 1e-5, "{name}: h_n");
                if let Some(c_n) = c_n {
                    assert!(max_diff(&c_n, &e["c_n"]) < 1e-5, "{name}: c_n");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} cases");
}

#[test]
fn gradients_through_candle_backward_equal_pytorch_autograd() {
    let mut checked = 0;
    for case in cases("grad") {
        let grad = case
            .grad
            .as_ref()
            .expect("every gradient case has grad.safetensors");
        let input = Var::from_tensor(&case.input["input"]).unwrap();
        let h0 = case.input.get("h0").map(|t| Var::from_tensor(t).unwrap());
        let c0 = case.input.get("c0").map(|t| Var::from_tensor(t).unwrap());
        let (output, h_n, c_n) = run_case(
            &case,
            true,
            input.as_tensor(),
            h0.as_ref().map(|v| v.as_tensor()),
            c0.as_ref().map(|v| v.as_tensor()),
        );
        let dot = |a: &Tensor, name: &str| -> Option<Tensor> {
            grad.get(name).map(|g| (a * g).unwrap().sum_all().unwrap())
        };
        let mut loss = dot(&output, "grad_output").expect("grad_output");
        for term in [
            dot(&h_n, "grad_h_n"),
            c_n.as_ref().and_then(|c| dot(c, "grad_c_n")),
        ]
        .into_iter()
        .flatten()
        {
            loss = (loss + term).unwrap();
        }
        let grads = loss.backward().unwrap();
        let mut wants: Vec<(String, &Tensor)> = vec![("input".into(), input.as_tensor())];
        wants.extend(h0.iter().map(|v| ("h0".to_string(), v.as_tensor())));
        wants.extend(c0.iter().map(|v| ("c0".to_string(), v.as_tensor())));
        wants.extend(case.params.iter().map(|(k, v)| (k.clone(), v.as_tensor())));
        // As the CLI's fixture test: a fraction of the case's largest gradient.
        let scale = case
            .expected
            .iter()
            .filter(|(k, _)| k.ends_with(".grad"))
            .map(|(_, t)| {
                t.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .fold(1e-6f32, f32::max);
        for (name, var) in wants {
            let want = &case.expected[&format!("{name}.grad")];
            let got = grads
                .get(var)
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.name));
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap() / scale;
            assert!(diff < 1e-4, "{}: {name}.grad off by {diff}", case.name);
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked} gradients");
}

#[test]
fn a_candle_optimiser_trains_a_layer() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let mut config = LstmConfig::new(3, 8);
    config.num_layers = 2;
    config.bidirectional = true;
    config.batch_first = true;
    let layer = fused_rnn::candle::Lstm::new(config, vb.pp("lstm")).unwrap();
    let head = candle_nn::linear(16, 1, vb.pp("head")).unwrap();
    let mut opt = candle_nn::AdamW::new_lr(map.all_vars(), 2e-2).unwrap();
    // Regress the sum of each sequence's first feature, lengths varying.
    let x = random(&[6, 5, 3], 7);
    let lengths = [5, 3, 1, 4, 5, 2];
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..5).map(move |t| if t < l { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (6, 5), &CPU).unwrap();
    let target = (x.narrow(2, 0, 1).unwrap().squeeze(2).unwrap() * &mask)
        .unwrap()
        .sum(1)
        .unwrap();
    let loss = |_: ()| {
        let out = layer.forward(&x, None, Some(&lengths)).unwrap();
        let last = out.h_n.narrow(0, 2, 2).unwrap(); // the top layer's two directions
        let last = Tensor::cat(&[last.get(0).unwrap(), last.get(1).unwrap()], 1).unwrap();
        let y = candle_nn::Module::forward(&head, &last)
            .unwrap()
            .squeeze(1)
            .unwrap();
        (y - &target).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    let first = loss(()).to_scalar::<f32>().unwrap();
    for _ in 0..60 {
        opt.backward_step(&loss(())).unwrap();
    }
    let last = loss(()).to_scalar::<f32>().unwrap();
    assert!(last < first * 0.2, "loss {first} -> {last}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let layer = fused_rnn::candle::Lstm::new(LstmConfig::new(3, 4), vb).unwrap();
    let x = random(&[5, 2, 3], 1);
    let wrong_width = random(&[5, 2, 4], 1);
    let err = layer
        .forward(&wrong_width, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input"), "{err}");
    let err = layer
        .forward(&x.to_dtype(DType::F64).unwrap(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("F64"), "{err}");
    let err = layer
        .forward(&x, None, Some(&[5, 9]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("length"), "{err}");
    let bad_h0 = random(&[1, 3, 4], 2);
    let c0 = random(&[1, 2, 4], 3);
    let err = layer
        .forward(&x, Some((&bad_h0, &c0)), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("h0"), "{err}");
    let err =
        fused_rnn::candle::Lstm::new(LstmConfig::new(3, 0), VarBuilder::zeros(DType::F32, &CPU))
            .err()
            .expect("hidden size 0 refused")
            .to_string();
    assert!(err.contains("hidden_size"), "{err}");
}

/// An attention fixture's layer config, from its weights and input (None for the cases with a
/// bias on one projection only, which `AttentionConfig` cannot express).
fn attention_config(
    weights: &HashMap<String, Tensor>,
    meta: &TensorFile,
    input: &HashMap<String, Tensor>,
) -> Option<fused_rnn::nn::AttentionConfig> {
    use fused_rnn::ops::attention::Score;
    let dims = |name: &str| weights[name].dims().to_vec();
    let dk = *input["keys"].dims().last().unwrap();
    let dq = *input["query"].dims().last().unwrap();
    let (score, attention_size, bias) = match meta.metadata("kind").unwrap() {
        "additive" => {
            let (qb, kb) = (
                weights.contains_key("query_proj.bias"),
                weights.contains_key("key_proj.bias"),
            );
            if qb != kb {
                return None;
            }
            (Score::Additive, dims("query_proj.weight")[0], qb)
        }
        "general" => (Score::General, 0, false),
        _ => {
            let scale = meta.metadata("scale").map_or(1.0, |s| s.parse().unwrap());
            (Score::Dot { scale }, 0, false)
        }
    };
    Some(fused_rnn::nn::AttentionConfig {
        score,
        query_size: dq,
        key_size: dk,
        attention_size,
        bias,
    })
}

#[test]
fn attention_over_candle_tensors_equals_pytorch_with_gradients() {
    let (mut forward, mut gradients) = (0, 0);
    for kind in ["attention", "grad"] {
        let mut dirs: Vec<_> = std::fs::read_dir(common::fixtures(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let case = p.file_name().unwrap().to_str().unwrap();
                p.is_dir() && (kind == "attention" || case.starts_with("attn_"))
            })
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir.display().to_string();
            let read = |f: &str| candle_core::safetensors::load(dir.join(f), &CPU).unwrap();
            let weights = read("weights.safetensors");
            let meta = TensorFile::load(dir.join("weights.safetensors")).unwrap();
            let input = read("input.safetensors");
            let expected = read("expected.safetensors");
            let Some(config) = attention_config(&weights, &meta, &input) else {
                assert!(
                    name.contains("bias"),
                    "{name}: only one-sided biases are left out"
                );
                continue;
            };
            let vars: HashMap<String, Var> = weights
                .iter()
                .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap()))
                .collect();
            let tensors = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let layer = fused_rnn::candle::Attention::new(
                config,
                VarBuilder::from_tensors(tensors, DType::F32, &CPU),
            )
            .unwrap();
            let (query, keys) = (
                Var::from_tensor(&input["query"]).unwrap(),
                Var::from_tensor(&input["keys"]).unwrap(),
            );
            let values = input.get("values").map(|v| Var::from_tensor(v).unwrap());
            let lengths: Option<Vec<usize>> = input.get("lengths").map(|l| {
                l.to_vec1::<i64>()
                    .unwrap()
                    .into_iter()
                    .map(|v| v as usize)
                    .collect()
            });
            let out = layer
                .forward(
                    query.as_tensor(),
                    keys.as_tensor(),
                    values.as_ref().map(|v| v.as_tensor()),
                    lengths.as_deref(),
                )
                .unwrap();
            assert!(
                max_diff(&out.context, &expected["context"]) < 1e-5,
                "{name}: context"
            );
            if let Some(w) = expected.get("weights") {
                assert!(max_diff(&out.weights, w) < 1e-5, "{name}: weights");
            }
            forward += 1;
            if kind == "grad" {
                let grad = read("grad.safetensors");
                let loss = (&out.context * &grad["grad_context"])
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let mut wants: Vec<(String, &Tensor)> = vec![
                    ("query".into(), query.as_tensor()),
                    ("keys".into(), keys.as_tensor()),
                ];
                wants.extend(values.iter().map(|v| ("values".to_string(), v.as_tensor())));
                wants.extend(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor())));
                for (what, var) in wants {
                    let want = &expected[&format!("{what}.grad")];
                    let got = grads
                        .get(var)
                        .unwrap_or_else(|| panic!("{name}: no gradient for {what}"));
                    assert!(max_diff(got, want) < 1e-5, "{name}: {what}.grad");
                    gradients += 1;
                }
            }
        }
    }
    assert!(
        forward >= 12 && gradients >= 10,
        "{forward} forward cases, {gradients} gradients"
    );
}

#[test]
fn half_precision_layers_run_on_the_cpu_in_f32_and_answer_in_their_dtype() {
    let config = {
        let mut c = LstmConfig::new(6, 10);
        c.bidirectional = true;
        c
    };
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let full = fused_rnn::candle::Lstm::new(config, vb).unwrap();
    let x = random(&[4, 3, 6], 9);
    let want = full.forward(&x, None, Some(&[4, 2, 1])).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let tensors = full
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(dtype).unwrap()))
            .collect();
        let half =
            fused_rnn::candle::Lstm::new(config, VarBuilder::from_tensors(tensors, dtype, &CPU))
                .unwrap();
        let got = half
            .forward(&x.to_dtype(dtype).unwrap(), None, Some(&[4, 2, 1]))
            .unwrap();
        assert_eq!(got.output.dtype(), dtype);
        let got = got.output.to_dtype(DType::F32).unwrap();
        assert!(max_diff(&got, &want.output) < 2e-2, "{dtype:?}");
        let err = half.forward(&x, None, None).unwrap_err().to_string();
        assert!(err.contains("F32"), "{err}");
    }
}

/// The same layers on candle's CUDA tensors against the CPU, outputs and gradients.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_layers_equal_the_cpu_with_gradients() {
    if common::cuda_or_skip("cuda_layers_equal_the_cpu_with_gradients").is_none() {
        return;
    }
    let gpu = Device::new_cuda(0).unwrap();
    let mut config = LstmConfig::new(5, 12);
    config.num_layers = 2;
    config.bidirectional = true;
    let map = VarMap::new();
    let cpu_layer =
        fused_rnn::candle::Lstm::new(config, VarBuilder::from_varmap(&map, DType::F32, &CPU))
            .unwrap();
    let on_gpu: HashMap<String, Tensor> = cpu_layer
        .parameters()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                Var::from_tensor(&t.to_device(&gpu).unwrap())
                    .unwrap()
                    .as_tensor()
                    .clone(),
            )
        })
        .collect();
    let gpu_layer = fused_rnn::candle::Lstm::new(
        config,
        VarBuilder::from_tensors(on_gpu.clone(), DType::F32, &gpu),
    )
    .unwrap();
    let x = Var::from_tensor(&random(&[7, 3, 5], 11)).unwrap();
    let xg = Var::from_tensor(&x.to_device(&gpu).unwrap()).unwrap();
    let lengths = [7, 4, 1];
    let a = cpu_layer
        .forward(x.as_tensor(), None, Some(&lengths))
        .unwrap();
    let b = gpu_layer
        .forward(xg.as_tensor(), None, Some(&lengths))
        .unwrap();
    let host = |t: &Tensor| t.to_device(&CPU).unwrap();
    assert!(max_diff(&host(&b.output), &a.output) < 1e-4, "output");
    assert!(max_diff(&host(&b.c_n), &a.c_n) < 1e-4, "c_n");
    let ga = a
        .output
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = b
        .output
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(
        max_diff(
            &host(gb.get(xg.as_tensor()).unwrap()),
            ga.get(x.as_tensor()).unwrap()
        ) < 1e-4,
        "input grad"
    );
    for (name, t) in cpu_layer.parameters() {
        let want = ga.get(&t).unwrap();
        let got = host(gb.get(&on_gpu[&name]).unwrap());
        assert!(max_diff(&got, want) < 1e-4, "{name} grad");
    }
}

/// Σ states_to_tensor(seq(x))² through `backward()`: the gradient of every parameter and of
/// the input, from candle-nn's layer and from ours over the same variables.
fn drop_in_gradients<L1: RNN, L2: RNN>(theirs: &L1, ours: &L2, map: &VarMap, x: &Var) {
    let grads = |loss: Tensor| loss.backward().unwrap();
    let loss = |t: Tensor| t.sqr().unwrap().sum_all().unwrap();
    let a = grads(loss(
        theirs
            .states_to_tensor(&theirs.seq(x.as_tensor()).unwrap())
            .unwrap(),
    ));
    let b = grads(loss(
        ours.states_to_tensor(&ours.seq(x.as_tensor()).unwrap())
            .unwrap(),
    ));
    let mut checked = 0;
    for var in map.all_vars().iter().chain([x]) {
        let (want, got) = (
            a.get(var.as_tensor()).unwrap(),
            b.get(var.as_tensor()).unwrap(),
        );
        assert!(max_diff(got, want) < 1e-4, "gradient of {:?}", var.dims());
        checked += 1;
    }
    assert_eq!(checked, 5);
    // Some of the states, not all: stacked as candle-nn stacks them.
    let (sa, sb) = (
        theirs.seq(x.as_tensor()).unwrap(),
        ours.seq(x.as_tensor()).unwrap(),
    );
    let (ta, tb) = (
        theirs.states_to_tensor(&sa[1..]).unwrap(),
        ours.states_to_tensor(&sb[1..]).unwrap(),
    );
    assert!(max_diff(&tb, &ta) < 1e-5, "a part of the states");
}

#[test]
fn drop_in_layers_train_as_candle_nns_do() {
    let (b, t, i, h) = (3, 6, 4, 7);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let theirs = candle_nn::lstm(i, h, LSTMConfig::default(), vb.pp("l")).unwrap();
    let ours = fused_rnn::candle::lstm(i, h, LSTMConfig::default(), vb.pp("l")).unwrap();
    randomise(&map, 30);
    let x = Var::from_tensor(&random(&[b, t, i], 12)).unwrap();
    drop_in_gradients(&theirs, &ours, &map, &x);

    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let config = candle_nn::GRUConfig::default();
    let theirs = candle_nn::gru(i, h, config, vb.pp("g")).unwrap();
    let ours = fused_rnn::candle::gru(i, h, config, vb.pp("g")).unwrap();
    randomise(&map, 40);
    drop_in_gradients(&theirs, &ours, &map, &x);
}

#[test]
fn stepping_the_drop_in_lstm_trains_as_candle_nns_does() {
    let (b, i, h) = (2, 3, 5);
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &CPU);
    let theirs = candle_nn::lstm(i, h, LSTMConfig::default(), vb.pp("s")).unwrap();
    let ours = fused_rnn::candle::lstm(i, h, LSTMConfig::default(), vb.pp("s")).unwrap();
    randomise(&map, 50);
    let xs: Vec<Tensor> = (0..4).map(|k| random(&[b, i], 60 + k)).collect();
    // A decoder's loop: each step's h and c feed the next; the loss reads both at the end.
    fn run<L: RNN<State = candle_nn::rnn::LSTMState>>(layer: &L, xs: &[Tensor]) -> Tensor {
        let mut state = layer.zero_state(xs[0].dim(0).unwrap()).unwrap();
        for x in xs {
            state = layer.step(x, &state).unwrap();
        }
        (state.h.sqr().unwrap().sum_all().unwrap() + state.c.sum_all().unwrap()).unwrap()
    }
    let (a, g) = (run(&theirs, &xs), run(&ours, &xs));
    assert!(max_diff(&g, &a) < 1e-5, "loss");
    let (ga, gb) = (a.backward().unwrap(), g.backward().unwrap());
    for var in map.all_vars() {
        let (want, got) = (
            ga.get(var.as_tensor()).unwrap(),
            gb.get(var.as_tensor()).unwrap(),
        );
        assert!(max_diff(got, want) < 1e-4, "gradient of {:?}", var.dims());
    }
}
