//! The calls that must refuse sizes no machine holds, each run in a child process with an
//! allocation budget.

use crate::child::run_isolated;
use crate::common::layers::Kind;
use crate::harness::Sweep;
use crate::recurrent::{case, describe, Module};
use crate::shapes::{dims, num, small, tensor, HUGE, MAX};
use fused_rnn::nn::{Embedding, Linear};
use fused_rnn::{DType, Device, Nonlinearity};

type IsolatedCall = (String, Box<dyn Fn() -> fused_rnn::Result<()>>);

/// Calls whose arguments ask for more memory than exists (parameters of 2^40 and more
/// elements, results of 2^40 columns), or pair zero-element tensors with huge dimensions in
/// every argument: the library must refuse the first before allocating, and answer the
/// second without allocating by the huge dimension.
pub(crate) fn isolated_calls() -> Vec<IsolatedCall> {
    let mut calls: Vec<IsolatedCall> = Vec::new();
    let mut add = |call: String, run: Box<dyn Fn() -> fused_rnn::Result<()>>| {
        calls.push((call, run));
    };
    let kinds = [
        Kind::Rnn(Nonlinearity::Tanh),
        Kind::Lstm { proj: 0 },
        Kind::Lstm { proj: 1 },
        Kind::Gru,
    ];
    let sizes = [
        (1, HUGE, 1),
        (HUGE, 1, 1),
        (3, 3, HUGE),
        (1, 3, MAX / 16),
        (HUGE, HUGE, HUGE),
        (MAX, 3, 1),
        (1, MAX, 1),
    ];
    for kind in kinds {
        for s in sizes {
            let c = case(kind, s, (true, false, true));
            let run = move || Module::random(&c, DType::F32).map(drop);
            add(format!("{}::random", describe(&c)), Box::new(run));
        }
    }
    let linear = [
        (HUGE, 1, true),
        (1, HUGE, true),
        (0, HUGE, true),
        (HUGE, 0, true),
        (MAX, MAX, false),
    ];
    for (i, o, bias) in linear {
        let run = move || Linear::random(i, o, bias, &Device::Cpu, DType::F32, 3).map(drop);
        let call = format!("Linear::random({}, {}, bias {bias})", num(i), num(o));
        add(call, Box::new(run));
    }
    // (weight, x, grad_y) with a dimension of 2^40: the first two forwards have 2^40 output
    // columns (to be refused); every other result has no element (to be made without
    // allocating by the huge dimension).
    let products: [(&[usize], &[usize], &[usize]); 5] = [
        (&[HUGE, 0], &[1, 0], &[1, HUGE]),
        (&[HUGE, 0], &[3, 1, 0], &[3, 1, HUGE]),
        (&[0, HUGE], &[0, HUGE], &[0, 0]),
        (&[0, HUGE], &[1, 0, HUGE], &[1, 0, 0]),
        (&[HUGE, 0], &[0, 0], &[0, HUGE]),
    ];
    for (w, x, gy) in products {
        let layer = || Linear {
            weight: tensor(w),
            bias: None,
        };
        let name = format!("Linear {{ weight {}, bias None }}", dims(w));
        let run = move || layer().forward(&tensor(x)).map(drop);
        add(format!("{name}.forward({})", dims(x)), Box::new(run));
        if small(gy) {
            let run = move || layer().backward(&tensor(x), &tensor(gy)).map(drop);
            let call = format!("{name}.backward({}, {})", dims(x), dims(gy));
            add(call, Box::new(run));
        }
    }
    let tables = [
        (HUGE, 1, None),
        (1, HUGE, None),
        (HUGE, 0, Some(HUGE - 1)),
        (0, HUGE, None),
        (HUGE, HUGE, None),
    ];
    for (vocab, dim, pad) in tables {
        let run = move || Embedding::random(vocab, dim, pad, &Device::Cpu, DType::F32, 5).map(drop);
        let call = format!(
            "Embedding::random({}, {}, padding {pad:?})",
            num(vocab),
            num(dim)
        );
        add(call, Box::new(run));
    }
    calls
}

pub(crate) fn check_isolated(sweep: &mut Sweep) {
    for (index, (call, _)) in isolated_calls().iter().enumerate() {
        sweep.calls += 1;
        if let Err(why) = run_isolated(index) {
            sweep
                .panics
                .push(format!("{call} (in a child process): {why}"));
        }
    }
}
