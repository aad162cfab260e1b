//! The library's promise that for any shape a caller can construct the public API answers with
//! a `Result`, `Ok` or `Err`, and never panics: a panic takes a training loop or a server down
//! where an `Err` would have named the tensor and both shapes.
//!
//! Every public CPU entry point is called around valid calls, one argument at a time replaced by
//! each shape of rank 0 to 4 over the dimensions {0, 1, 3}, by near misses of the right shape,
//! and by zero-element shapes with huge dimensions beside the zero; configurations, lengths and
//! sizes go to 0 and to sizes no machine holds. Each call runs under `catch_unwind`; every
//! panic is kept with the call, its message and its location, and the test fails listing them
//! all, so one run reports everything. Calls that ask for more memory than any machine has run
//! in a child process whose allocations have a budget: a size the library fails to refuse
//! aborts the child, which is reported with where it allocated, instead of this test.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod budget;
mod child;
mod harness;
mod isolated;
mod recurrent;
mod shapes;
mod tensor;
mod training;

use attention::check_attention;
use budget::{BUDGET, CHILD_BUDGET};
use child::{CASE_VAR, PANIC_MARK};
use harness::{collected, install_hook, Sweep};
use isolated::{check_isolated, isolated_calls};
use recurrent::check_recurrent;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tensor::check_tensor;
use training::{check_adam, check_clip, check_embedding, check_linear, check_loss};

/// One call of `isolated_calls`, with allocations over a budget refused: what `check_isolated`
/// runs this binary for, as its child with `CASE_VAR` set.
#[test]
#[ignore = "a child process of every_shape_gets_a_result_not_a_panic"]
fn isolated_call() {
    // Run alone (`--include-ignored`) it has nothing to do.
    let Ok(index) = std::env::var(CASE_VAR) else {
        return;
    };
    install_hook();
    let (_, run) = isolated_calls().swap_remove(index.parse().unwrap());
    BUDGET.store(CHILD_BUDGET, Relaxed);
    let outcome = collected(run);
    BUDGET.store(0, Relaxed);
    if let Err(panic) = outcome {
        println!("{PANIC_MARK}panicked: {panic}");
    }
}

/// A part of the sweep: its name and what it calls.
type Part = (&'static str, fn(&mut Sweep));

#[test]
fn every_shape_gets_a_result_not_a_panic() {
    install_hook();
    let start = Instant::now();
    let mut sweep = Sweep::default();
    let parts: [Part; 9] = [
        ("Tensor", check_tensor),
        ("Rnn, Lstm, Gru", check_recurrent),
        ("Attention", check_attention),
        ("Linear", check_linear),
        ("Embedding", check_embedding),
        ("softmax_cross_entropy", check_loss),
        ("clip_grad_norm", check_clip),
        ("Adam", check_adam),
        ("in child processes", check_isolated),
    ];
    for (name, part) in parts {
        let (calls, errors, panics, at) = (
            sweep.calls,
            sweep.errors,
            sweep.panics.len(),
            Instant::now(),
        );
        part(&mut sweep);
        let calls = sweep.calls - calls;
        let failed = (sweep.errors - errors) + (sweep.panics.len() - panics);
        eprintln!(
            "{name}: {calls} calls, {} Ok, in {:.1?}",
            calls - failed,
            at.elapsed()
        );
    }
    eprintln!(
        "{} calls in {:.1?}: {} Ok, {} Err, {} panicked or died",
        sweep.calls,
        start.elapsed(),
        sweep.calls - sweep.errors - sweep.panics.len(),
        sweep.errors,
        sweep.panics.len()
    );
    assert!(
        sweep.panics.is_empty(),
        "{} of {} calls panicked or died (a Result was due):\n{}",
        sweep.panics.len(),
        sweep.calls,
        sweep.panics.join("\n")
    );
}
