//! `fused-rnn` as a user runs it: `info` and `run --device auto` work without a GPU, a good run
//! writes the output, and every bad input is one line on stderr, exit code 2 and no output file.

mod common;

use common::cli::{assert_fails, bin, run, write, Data};
use std::path::{Path, PathBuf};

/// The fixture case used as the valid base: tanh, 1 layer, I = 5, H = 7, B = 5, T = 8.
fn weights() -> PathBuf {
    common::fixtures("rnn").join("tanh_l1_lens/weights.safetensors")
}

/// Runs fixture case `case` (its weights and input) and loads the output, which must succeed.
fn run_ok(case: &Path, output: &Path, extra: &[&str]) -> fused_rnn::io::TensorFile {
    let (w, x) = (
        case.join("weights.safetensors"),
        case.join("input.safetensors"),
    );
    let out = run(&w, &x, output, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", case.display());
    fused_rnn::io::TensorFile::load(output).unwrap()
}

fn input_tensor(t: usize, b: usize, i: usize) -> (&'static str, Vec<usize>, Data) {
    (
        "input",
        vec![t, b, i],
        Data::F32(common::random(t * b * i, 1.0, 5)),
    )
}

#[test]
fn info_and_auto_device_work_anywhere() {
    let out = bin().arg("info").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("device:") && stdout.contains("rnn.cu"),
        "{stdout}"
    );

    let dir = common::scratch("cli-auto");
    let output = dir.join("y.safetensors");
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let out = bin()
        .args(["run", "--device", "auto", "--weights"])
        .arg(case.join("weights.safetensors"))
        .arg("--input")
        .arg(case.join("input.safetensors"))
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = fused_rnn::io::TensorFile::load(&output).unwrap();
    assert_eq!(y.shape("output"), Some(&[8usize, 5, 7][..]));
    assert_eq!(y.shape("h_n"), Some(&[1usize, 5, 7][..]));
}

#[test]
fn missing_tensor_is_named() {
    let dir = common::scratch("cli-missing");
    let (input, output) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    write(
        &input,
        &[("h0", vec![1, 5, 7], Data::F32(common::random(35, 1.0, 1)))],
    );
    assert_fails(
        &run(&weights(), &input, &output, &[]),
        &output,
        &["`input`"],
    );
}

#[test]
fn wrong_shapes_name_the_tensor_and_both_shapes() {
    let dir = common::scratch("cli-shape");
    let (input, output) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    write(&input, &[input_tensor(8, 5, 4)]);
    assert_fails(
        &run(&weights(), &input, &output, &[]),
        &output,
        &["input", "[T, B, 5]", "[8, 5, 4]"],
    );

    write(
        &input,
        &[
            input_tensor(8, 5, 5),
            ("h0", vec![2, 5, 7], Data::F32(common::random(70, 1.0, 2))),
        ],
    );
    assert_fails(
        &run(&weights(), &input, &output, &[]),
        &output,
        &["h0", "[1, 5, 7]", "[2, 5, 7]"],
    );
}

#[test]
fn lengths_outside_one_to_t_are_rejected() {
    let dir = common::scratch("cli-lengths");
    let (input, output) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    for bad in [
        vec![3, 0, 8, 1, 2],
        vec![3, 9, 8, 1, 2],
        vec![3, -1, 8, 1, 2],
    ] {
        write(
            &input,
            &[
                input_tensor(8, 5, 5),
                ("lengths", vec![5], Data::I64(bad.clone())),
            ],
        );
        assert_fails(
            &run(&weights(), &input, &output, &[]),
            &output,
            &["lengths"],
        );
    }
    write(
        &input,
        &[
            input_tensor(8, 5, 5),
            ("lengths", vec![4], Data::I64(vec![1, 2, 3, 4])),
        ],
    );
    assert_fails(
        &run(&weights(), &input, &output, &[]),
        &output,
        &["lengths", "[5]", "[4]"],
    );
}

#[test]
fn truncated_and_missing_files_are_errors() {
    let dir = common::scratch("cli-truncated");
    let (input, output) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    write(&input, &[input_tensor(8, 5, 5)]);
    let bytes = std::fs::read(weights()).unwrap();
    let cut = dir.join("w.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 17]).unwrap();
    assert_fails(
        &run(&cut, &input, &output, &[]),
        &output,
        &["w.safetensors", "not a valid safetensors"],
    );
    assert_fails(
        &run(&dir.join("absent.safetensors"), &input, &output, &[]),
        &output,
        &["absent.safetensors"],
    );
}

#[test]
fn non_finite_weights_and_cpu_half_precision_are_errors() {
    let dir = common::scratch("cli-nan");
    let (input, output) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    write(&input, &[input_tensor(3, 2, 4)]);
    let w = dir.join("w.safetensors");
    let mut w_hh = common::random(9, 0.5, 3);
    w_hh[4] = f32::NAN;
    write(
        &w,
        &[
            (
                "weight_ih_l0",
                vec![3, 4],
                Data::F32(common::random(12, 0.5, 4)),
            ),
            ("weight_hh_l0", vec![3, 3], Data::F32(w_hh)),
        ],
    );
    assert_fails(
        &run(&w, &input, &output, &[]),
        &output,
        &["weight_hh_l0", "NaN"],
    );
    assert_fails(
        &run(&weights(), &input, &output, &["--dtype", "f16"]),
        &output,
        &["f16"],
    );
}

#[test]
fn flags_override_metadata() {
    let dir = common::scratch("cli-flags");
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let (default, relu) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let input = case.join("input.safetensors");
    assert!(run(&weights(), &input, &default, &[]).status.success());
    assert!(run(&weights(), &input, &relu, &["--nonlinearity", "relu"])
        .status
        .success());
    let a = fused_rnn::io::TensorFile::load(&default)
        .unwrap()
        .float("output")
        .unwrap();
    let b = fused_rnn::io::TensorFile::load(&relu)
        .unwrap()
        .float("output")
        .unwrap();
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert!(a.iter().any(|v| *v < 0.0), "tanh output has negatives");
    assert!(b.iter().all(|v| *v >= 0.0), "relu output is non-negative");
    // batch_first flips the meaning of the first two input dims: [8, 5, 5] is then B=8, T=5,
    // and the case's h0 [1, 5, 7] no longer matches B.
    let out = run(
        &weights(),
        &input,
        &dir.join("c.safetensors"),
        &["--batch-first"],
    );
    assert_fails(
        &out,
        &dir.join("c.safetensors"),
        &["h0", "[1, 8, 7]", "[1, 5, 7]"],
    );
}

#[test]
fn lstm_and_gru_modules_run_and_reject_bad_states() {
    let dir = common::scratch("cli-lstm");
    let lstm = common::fixtures("lstm").join("proj_h9p4_l2_bi_lens_h0");
    let output = dir.join("y.safetensors");
    let y = run_ok(&lstm, &output, &[]);
    let names: Vec<&str> = y.names().collect();
    assert_eq!(names, ["c_n", "h_n", "output"]);

    // An LSTM needs h0 and c0 together, and takes no nonlinearity.
    let input = dir.join("x.safetensors");
    write(
        &input,
        &[
            (
                "input",
                vec![6, 4, 4],
                Data::F32(common::random(96, 1.0, 1)),
            ),
            ("h0", vec![4, 4, 4], Data::F32(common::random(64, 1.0, 2))),
        ],
    );
    let bad = dir.join("bad.safetensors");
    let w = lstm.join("weights.safetensors");
    assert_fails(&run(&w, &input, &bad, &[]), &bad, &["`c0`"]);
    let good_input = lstm.join("input.safetensors");
    assert_fails(
        &run(&w, &good_input, &bad, &["--nonlinearity", "relu"]),
        &bad,
        &["nonlinearity", "LSTM"],
    );

    let gru = common::fixtures("gru").join("l2_bi_lens");
    let y = run_ok(&gru, &output, &[]);
    assert_eq!(y.names().collect::<Vec<_>>(), ["h_n", "output"]);
}

#[test]
fn attention_modules_run_and_reject_bad_inputs() {
    let dir = common::scratch("cli-attention");
    let case = common::fixtures("attention").join("additive_tq4_nobias_lens");
    let w = case.join("weights.safetensors");
    let output = dir.join("y.safetensors");
    let y = run_ok(&case, &output, &[]);
    assert_eq!(y.shape("context"), Some(&[4usize, 4, 4][..]));
    assert_eq!(y.shape("weights"), Some(&[4usize, 4, 7][..]));

    // B = 4, L = 7, Dq = 6, Dk = 4 for this module and case.
    let input = dir.join("x.safetensors");
    let bad = dir.join("bad.safetensors");
    let query = || ("query", vec![4, 6], Data::F32(common::random(24, 1.0, 1)));
    let keys = |dk: usize| {
        (
            "keys",
            vec![4, 7, dk],
            Data::F32(common::random(28 * dk, 1.0, 2)),
        )
    };
    for lengths in [vec![3, 0, 7, 1], vec![3, 8, 7, 1]] {
        write(
            &input,
            &[query(), keys(4), ("lengths", vec![4], Data::I64(lengths))],
        );
        assert_fails(&run(&w, &input, &bad, &[]), &bad, &["lengths"]);
    }
    write(&input, &[query(), keys(5)]);
    assert_fails(
        &run(&w, &input, &bad, &[]),
        &bad,
        &["keys", "[B, L, 4]", "[4, 7, 5]"],
    );
    write(
        &input,
        &[
            ("query", vec![4, 5], Data::F32(common::random(20, 1.0, 1))),
            keys(4),
        ],
    );
    assert_fails(&run(&w, &input, &bad, &[]), &bad, &["query", "[4, 5]"]);
    write(&input, &[query()]);
    assert_fails(&run(&w, &input, &bad, &[]), &bad, &["`keys`"]);
    let good = case.join("input.safetensors");
    assert_fails(
        &run(&w, &good, &bad, &["--batch-first"]),
        &bad,
        &["--batch-first"],
    );
}

#[test]
fn grad_writes_every_gradient_and_rejects_bad_gradient_files() {
    let dir = common::scratch("cli-grad");
    let case = common::fixtures("grad").join("lstm_bi_h0");
    let (w, x) = (
        case.join("weights.safetensors"),
        case.join("input.safetensors"),
    );
    let output = dir.join("y.safetensors");
    let grad = case.join("grad.safetensors");
    let grad_arg = grad.to_str().unwrap();
    let y = run_ok(&case, &output, &["--grad", grad_arg]);
    for name in [
        "output",
        "h_n",
        "c_n",
        "input.grad",
        "h0.grad",
        "c0.grad",
        "weight_ih_l0.grad",
        "weight_hh_l0_reverse.grad",
        "bias_hh_l0_reverse.grad",
    ] {
        assert!(y.contains(name), "{name} missing");
    }

    // This LSTM: 1 layer, bidirectional, T = 5, B = 3, H = 4.
    let bad = dir.join("bad.safetensors");
    let g = dir.join("g.safetensors");
    let grad_output = |shape: Vec<usize>| {
        let n = shape.iter().product();
        ("grad_output", shape, Data::F32(common::random(n, 1.0, 9)))
    };
    let g_arg = g.to_str().unwrap();
    write(&g, &[grad_output(vec![5, 3, 7])]);
    assert_fails(
        &run(&w, &x, &bad, &["--grad", g_arg]),
        &bad,
        &["grad_output", "[5, 3, 8]", "[5, 3, 7]"],
    );
    write(
        &g,
        &[
            grad_output(vec![5, 3, 8]),
            ("grad_x", vec![1], Data::F32(vec![1.0])),
        ],
    );
    assert_fails(&run(&w, &x, &bad, &["--grad", g_arg]), &bad, &["grad_x"]);
    write(&g, &[("grad_h_n", vec![2, 3, 4], Data::F32(vec![0.5; 24]))]);
    assert_fails(
        &run(&w, &x, &bad, &["--grad", g_arg]),
        &bad,
        &["grad_output"],
    );
    // A 16-bit dtype needs the GPU; the CPU's backward computes in f32 storage.
    let half = bin()
        .args([
            "run",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--grad",
            grad_arg,
            "--weights",
        ])
        .arg(&w)
        .arg("--input")
        .arg(&x)
        .arg("--output")
        .arg(&bad)
        .output()
        .unwrap();
    assert_fails(&half, &bad, &["--grad", "--device cuda"]);
    let attention = common::fixtures("attention").join("additive_tq4_nobias_lens");
    assert_fails(
        &run(
            &attention.join("weights.safetensors"),
            &attention.join("input.safetensors"),
            &bad,
            &["--grad", grad_arg],
        ),
        &bad,
        &["unexpected tensor", "attention takes grad_context"],
    );
}

#[test]
fn a_cuda_algorithm_on_the_cpu_is_an_error() {
    let dir = common::scratch("cli-algo");
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let output = dir.join("y.safetensors");
    for algo in ["persistent", "fused", "naive"] {
        let out = run(
            &case.join("weights.safetensors"),
            &case.join("input.safetensors"),
            &output,
            &["--algo", algo],
        );
        assert_fails(&out, &output, &[&format!("--algo {algo}"), "CPU"]);
    }
    run_ok(&case, &output, &["--algo", "auto"]);
}
