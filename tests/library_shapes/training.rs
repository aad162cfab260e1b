//! The training parts of the sweep: Linear, Embedding, softmax_cross_entropy, clip_grad_norm
//! and Adam around valid calls.

use crate::harness::Sweep;
use crate::shapes::{
    around, dims, list, maybe, pairs, shared, small, tensor, tensors, tensors_around, DIMS, MAX,
};
use fused_rnn::nn::{Embedding, Linear};
use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Indices, Tensor};

// ---------------------------------------------------------------------------------------------
// Linear and Embedding

/// One Linear made directly (any weight and bias shape), its forward and its backward.
fn linear_calls(sweep: &mut Sweep, w: &[usize], b: Option<&[usize]>, x: &[usize], gy: &[usize]) {
    let layer = Linear {
        weight: tensor(w),
        bias: b.map(tensor),
    };
    let name = || format!("Linear {{ weight {}, bias {} }}", dims(w), maybe(b));
    let (x, gy) = (shared(x), shared(gy));
    sweep.call(
        || format!("{}.forward({})", name(), dims(x.shape())),
        || layer.forward(x),
    );
    sweep.call(
        || {
            format!(
                "{}.backward({}, {})",
                name(),
                dims(x.shape()),
                dims(gy.shape())
            )
        },
        || layer.backward(x, gy),
    );
}

/// Linear's constructor over every size, then forward and backward around valid layers.
pub(crate) fn check_linear(sweep: &mut Sweep) {
    for (i, o) in pairs(&DIMS) {
        for bias in [false, true] {
            sweep.call(
                || format!("Linear::random({i}, {o}, bias {bias})"),
                || Linear::random(i, o, bias, &Device::Cpu, DType::F32, 3),
            );
        }
    }
    for (out, inp, with_bias) in [(1, 1, true), (3, 1, false), (1, 3, true), (3, 3, true)] {
        let (w, b) = (vec![out, inp], vec![out]);
        let (x, gy) = (vec![3, inp], vec![3, out]);
        let bias = with_bias.then_some(b.as_slice());
        for ws in around(&w) {
            linear_calls(sweep, &ws, bias, &x, &gy);
        }
        for bs in around(&b) {
            linear_calls(sweep, &w, Some(&bs), &x, &gy);
        }
        for xs in around(&x) {
            // The gradient of the output this input gives, when it has one.
            let g = match xs.split_last() {
                Some((_, lead)) if small(lead) => [lead, &[out]].concat(),
                _ => gy.clone(),
            };
            linear_calls(sweep, &w, bias, &xs, &g);
        }
        for gs in around(&gy) {
            linear_calls(sweep, &w, bias, &x, &gs);
        }
    }
}

/// One Embedding made directly (any weight shape, any padding index), its forward of `tokens`
/// as `shape` and its backward from `gy`.
fn embedding_calls(
    sweep: &mut Sweep,
    (weight, pad): (&[usize], Option<usize>),
    tokens: &[usize],
    shape: &[usize],
    gy: &[usize],
) {
    let table = Embedding {
        weight: tensor(weight),
        padding_idx: pad,
    };
    let name = || format!("Embedding {{ weight {}, padding {pad:?} }}", dims(weight));
    let gy = shared(gy);
    // Tokens past i32 or a shape of another count are refused when the ids are made.
    let ids = || Indices::from_usize(tokens, shape);
    sweep.call(
        || format!("{}.forward({}, {})", name(), dims(tokens), dims(shape)),
        || table.forward(&ids()?),
    );
    sweep.call(
        || {
            format!(
                "{}.backward({}, {})",
                name(),
                dims(tokens),
                dims(gy.shape())
            )
        },
        || table.backward(&ids()?, gy),
    );
}

/// Embedding's constructor over every size and padding index, then forward and backward
/// around valid tables.
pub(crate) fn check_embedding(sweep: &mut Sweep) {
    let paddings = |vocab: usize| {
        let last = vocab.saturating_sub(1);
        [None, Some(0), Some(last), Some(vocab), Some(MAX)]
    };
    for (vocab, dim) in pairs(&DIMS) {
        for pad in paddings(vocab) {
            sweep.call(
                || format!("Embedding::random({vocab}, {dim}, padding {pad:?})"),
                || Embedding::random(vocab, dim, pad, &Device::Cpu, DType::F32, 5),
            );
        }
    }
    for (vocab, dim) in [(1, 1), (3, 3), (3, 1), (1, 3)] {
        let tokens: Vec<usize> = (0..vocab).chain([0]).collect();
        let n = tokens.len();
        let table = [vocab, dim];
        for pad in paddings(vocab) {
            for ws in around(&table) {
                embedding_calls(sweep, (&ws, pad), &tokens, &[n], &[n, dim]);
            }
        }
        let token_sets = [
            vec![],
            vec![vocab],
            vec![MAX],
            vec![0; 5],
            vec![vocab - 1; 2],
        ];
        for t in &token_sets {
            embedding_calls(sweep, (&table, None), t, &[t.len()], &[t.len(), dim]);
        }
        for shape in around(&[n]) {
            embedding_calls(sweep, (&table, Some(0)), &tokens, &shape, &[n, dim]);
        }
        for gs in around(&[n, dim]) {
            embedding_calls(sweep, (&table, Some(0)), &tokens, &[n], &gs);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loss, clipping, Adam

/// softmax_cross_entropy for logits of every sweep shape, with targets of the length the
/// logits' first dimension gives (and one more): valid, ignored, out of range.
pub(crate) fn check_loss(sweep: &mut Sweep) {
    for logits in tensors_around(&[3, 3]) {
        let shape = logits.shape();
        let n = shape.first().map_or(1, |&n| n.min(8));
        let vocab = shape.get(1).map_or(0, |&v| v.min(1 << 20) as i64);
        for ignore in [-100, 0, i64::MIN] {
            let mixed = (0..n).map(|r| [0, ignore, vocab - 1][r % 3]).collect();
            let mut target_sets = vec![vec![], mixed, vec![0; n + 1]];
            for value in [ignore, 0, vocab - 1, vocab, -1, i64::MAX, i64::MIN] {
                target_sets.push(vec![value; n]);
            }
            target_sets.sort();
            target_sets.dedup();
            for targets in target_sets {
                sweep.call(
                    || {
                        let args = format!("{}, targets {targets:?}", dims(shape));
                        format!("softmax_cross_entropy(logits {args}, ignore {ignore})")
                    },
                    || softmax_cross_entropy(logits, &targets, ignore),
                );
            }
        }
    }
}

pub(crate) fn check_clip(sweep: &mut Sweep) {
    let mut lists: Vec<Vec<Vec<usize>>> = vec![vec![]];
    lists.extend(around(&[3]).into_iter().map(|s| vec![s]));
    lists.extend(around(&[3, 3]).into_iter().map(|s| vec![vec![3], s]));
    for shapes in &lists {
        for max_norm in [1.0, 1e-30, 0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut grads = tensors(shapes);
            let mut refs: Vec<&mut Tensor> = grads.iter_mut().collect();
            sweep.call(
                || format!("clip_grad_norm({}, {max_norm})", list(shapes)),
                || clip_grad_norm(&mut refs, max_norm),
            );
        }
    }
    let mut mixed = [
        tensor(&[3]),
        tensor(&[3]).to(&Device::Cpu, DType::F16).unwrap(),
    ];
    let mut refs: Vec<&mut Tensor> = mixed.iter_mut().collect();
    sweep.call(
        || "clip_grad_norm([f32 [3], f16 [3]], 1)".into(),
        || clip_grad_norm(&mut refs, 1.0),
    );
}

/// One optimizer step's (param shapes, grad shapes).
type Step<'a> = (&'a [Vec<usize>], &'a [Vec<usize>]);

/// Steps of one Adam (AdamW when `decoupled`).
fn adam_steps(sweep: &mut Sweep, decoupled: bool, steps: &[Step<'_>]) {
    let mut adam = if decoupled {
        Adam::adamw(1e-2)
    } else {
        Adam::new(1e-2)
    };
    let mut history = Vec::new();
    for &(ps, gs) in steps {
        let mut params = tensors(ps);
        let grads = tensors(gs);
        let mut p: Vec<&mut Tensor> = params.iter_mut().collect();
        let g: Vec<&Tensor> = grads.iter().collect();
        history.push(format!("step(params {}, grads {})", list(ps), list(gs)));
        let name = if decoupled { "AdamW" } else { "Adam" };
        sweep.call(
            || format!("{name}: {}", history.join(", then ")),
            || adam.step(&mut p, &g),
        );
    }
}

/// Adam with param and grad lists of other lengths, grads of every shape, and parameters that
/// change between steps.
pub(crate) fn check_adam(sweep: &mut Sweep) {
    let base = [vec![3, 3], vec![3]];
    let three = [vec![3, 3], vec![3], vec![3]];
    for decoupled in [false, true] {
        for grads in [&base[..0], &base[..1], &three] {
            adam_steps(sweep, decoupled, &[(&base, grads)]);
        }
        for g in around(&[3, 3]) {
            adam_steps(sweep, decoupled, &[(&base, &[g, vec![3]])]);
        }
        for p in around(&[3]) {
            let changed = [vec![3, 3], p];
            adam_steps(sweep, decoupled, &[(&base, &base), (&changed, &changed)]);
            adam_steps(sweep, decoupled, &[(&changed, &changed), (&base, &base)]);
        }
        adam_steps(sweep, decoupled, &[(&base, &base), (&three, &three)]);
        adam_steps(
            sweep,
            decoupled,
            &[(&base, &base), (&base[..1], &base[..1])],
        );
    }
    let mut params = [tensor(&[3])];
    let grads = [tensor(&[3]).to(&Device::Cpu, DType::BF16).unwrap()];
    let mut p: Vec<&mut Tensor> = params.iter_mut().collect();
    sweep.call(
        || "Adam: step(params [f32 [3]], grads [bf16 [3]])".into(),
        || Adam::new(1e-3).step(&mut p, &[&grads[0]]),
    );
}
