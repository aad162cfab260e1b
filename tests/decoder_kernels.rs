//! kernels/decoder.cu on the host emulation (tests/common/host_kernels.rs) against float64
//! references written here from the kernels' definitions: every entry point on odd sizes
//! (B 3, L 1/7/33, D 5, A 7, H 3, S 4, and some past a block), rows past their steps, key
//! lengths below L, both attention activations, rows attending to other rows' keys (beam
//! search), outputs poisoned (NaN, and left NaN where a kernel must not write) or, where a
//! kernel accumulates, prefilled with random values; the launchers' geometry and smaller grids
//! and blocks that make every loop wrap. Skips with a printed reason without a C++ compiler
//! (fails instead under FUSED_RNN_REQUIRE_NVRTC=1).

mod common;

use common::host_kernels::{self, Arg, HostKernels, Launch};
use fused_rnn::device::kernels::{codes, ids, Kernel};
use fused_rnn::DType;
use rand::{Rng, SeedableRng};

const THREADS: u32 = codes::BLOCK_THREADS as u32;
const TOL: f32 = 1e-5;

// Sizes of the attention and cell cases.
const B: usize = 3;
const D: usize = 5;
const A: usize = 7;
const H: usize = 3;
const E: usize = 4;
const S: usize = 4;
const W: usize = 4 * H + A + D;
/// Steps per row: row 1 stops after one step, row 2 one step early.
const STEPS: [i32; B] = [4, 1, 3];
/// Key counts and each's lengths per row (one full, the others shorter).
const KEYS: [(usize, [i32; B]); 3] = [(1, [1, 1, 1]), (7, [7, 3, 5]), (33, [33, 1, 17])];

fn entry(k: Kernel) -> String {
    k.entry_point(DType::F32)
}

/// Builds `kernels` of decoder.cu for the host, or None after printing why not.
fn build(test: &str, kernels: &[Kernel]) -> Option<HostKernels> {
    let names: Vec<String> = kernels.iter().map(|&k| entry(k)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    HostKernels::build(test, "decoder", &names)
}

/// Buffers of one run, by index.
#[derive(Default)]
struct Buffers(Vec<Vec<u8>>);

impl Buffers {
    fn f32(&mut self, values: &[f32]) -> usize {
        self.0.push(host_kernels::bytes(values, DType::F32));
        self.0.len() - 1
    }
    fn i32(&mut self, values: &[i32]) -> usize {
        self.0.push(host_kernels::bytes_i32(values));
        self.0.len() - 1
    }
    fn poisoned(&mut self, floats: usize) -> usize {
        self.0.push(host_kernels::poisoned(floats * 4));
        self.0.len() - 1
    }
}

fn floats(out: &[Vec<u8>], k: usize) -> Vec<f32> {
    host_kernels::values(&out[k], DType::F32)
}

fn launch(
    entry: &str,
    grid: usize,
    threads: u32,
    shared_floats: usize,
    args: Vec<Arg>,
) -> Launch<'_> {
    Launch {
        entry,
        grid: (grid as u32, 1),
        threads,
        shared: shared_floats * 4,
        args,
    }
}

/// (grid, threads) for a grid-stride kernel over n elements: the launcher's, and one block of
/// one warp that strides over everything.
fn strides(n: usize) -> [(usize, u32); 2] {
    [(n.div_ceil(THREADS as usize).max(1), THREADS), (1, 32)]
}

/// (grid, threads) for a kernel of one block per row: the launcher's, fewer blocks than rows
/// (blocks loop), and single-warp blocks (every loop over a, d and l wraps).
fn per_row(rows: usize) -> [(usize, u32); 3] {
    [(rows, THREADS), (2.min(rows), THREADS), (2.min(rows), 32)]
}

/// Compares `got` with `want` within TOL of want's largest magnitude: where `want` is the
/// poison (NaN), `got` must still hold it bit for bit (the kernel must not write there).
fn check(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (mut g, mut w) = (got.to_vec(), Vec::with_capacity(want.len()));
    for (k, &x) in want.iter().enumerate() {
        if x.is_nan() {
            assert_eq!(
                got[k].to_bits(),
                u32::MAX,
                "{what}: element {k} was written ({})",
                got[k]
            );
            g[k] = 0.0;
            w.push(0.0);
        } else {
            w.push(x as f32);
        }
    }
    common::assert_close(what, &g, &w, TOL);
}

fn wide(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| x as f64).collect()
}

/// Uniform in [lo, hi), seeded.
fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn ints(n: usize, below: i32, seed: u64) -> Vec<i32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..below)).collect()
}

fn act_code(relu: bool) -> i32 {
    if relu {
        codes::ACT_RELU
    } else {
        codes::ACT_TANH
    }
}

fn act(x: f64, relu: bool) -> f64 {
    match relu {
        true if x < 0.0 => 0.0,
        true => x,
        false => x.tanh(),
    }
}

fn slope(x: f64, u: f64, relu: bool) -> f64 {
    match relu {
        true if x > 0.0 => 1.0,
        true => 0.0,
        false => 1.0 - u * u,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn runs(steps: Option<&[i32]>, b: usize, t: usize) -> bool {
    steps.is_none_or(|s| (t as i32) < s[b])
}

// ---
// Prefill, mean, gather, reshapes and their backward.

#[test]
fn decoder_elementwise_kernels_on_the_host_match_the_reference() {
    use ids::decoder::*;
    let test = "decoder_elementwise_kernels_on_the_host_match_the_reference";
    let Some(kernels) = build(
        test,
        &[
            DECODER_ROWS,
            DECODER_MEAN,
            DECODER_MEAN_BACKWARD,
            DECODER_GATHER,
            DECODER_EMBEDDING_BACKWARD,
            DECODER_BATCH_MAJOR,
            DECODER_TIME_MAJOR,
        ],
    ) else {
        return;
    };

    // decoder_rows: n columns of rows of stride ld; the other columns untouched.
    let rows_entry = entry(DECODER_ROWS);
    for (rows, n, ld) in [(1, 1, 1), (5, 7, 9), (300, 3, 4)] {
        let bias = common::random(n, 1.0, 1);
        for (grid, threads) in strides(rows * n) {
            let mut buf = Buffers::default();
            let (y, b) = (buf.poisoned(rows * ld), buf.f32(&bias));
            let args = vec![
                Arg::Buf(y),
                Arg::Buf(b),
                Arg::U64(rows as u64),
                Arg::I32(n as i32),
                Arg::I32(ld as i32),
            ];
            let out = kernels.run(buf.0, &[launch(&rows_entry, grid, threads, 0, args)]);
            let want: Vec<f64> = (0..rows * ld)
                .map(|k| match k % ld {
                    j if j < n => bias[j] as f64,
                    _ => f64::NAN,
                })
                .collect();
            let what = format!("decoder_rows [{rows}, {n}] ld {ld} on {grid}×{threads}");
            check(&what, &floats(&out, y), &want);
        }
    }

    // decoder_mean and decoder_mean_backward over each row's valid keys.
    let (mean_entry, mean_back) = (entry(DECODER_MEAN), entry(DECODER_MEAN_BACKWARD));
    for &(l, lens) in &KEYS {
        let f = common::random(B * l * D, 1.0, 2);
        let dmean = common::random(B * D, 1.0, 3);
        let df0 = common::random(B * l * D, 1.0, 4);
        let mut want_mean = vec![0.0; B * D];
        let mut want_df = wide(&df0);
        for b in 0..B {
            let n = lens[b] as usize;
            for d in 0..D {
                let s: f64 = (0..n).map(|k| f[(b * l + k) * D + d] as f64).sum();
                want_mean[b * D + d] = s / n as f64;
                for k in 0..n {
                    want_df[(b * l + k) * D + d] += dmean[b * D + d] as f64 / n as f64;
                }
            }
        }
        for (grid, threads) in strides(B * l * D) {
            let mut buf = Buffers::default();
            let (fb, lb, mb) = (buf.f32(&f), buf.i32(&lens), buf.poisoned(B * D));
            let (dmb, dfb) = (buf.f32(&dmean), buf.f32(&df0));
            let sizes = [B, l, D].map(|x| Arg::I32(x as i32));
            let out = kernels.run(
                buf.0,
                &[
                    launch(
                        &mean_entry,
                        grid,
                        threads,
                        0,
                        [
                            vec![Arg::Buf(fb), Arg::Buf(lb), Arg::Buf(mb)],
                            sizes.to_vec(),
                        ]
                        .concat(),
                    ),
                    launch(
                        &mean_back,
                        grid,
                        threads,
                        0,
                        [
                            vec![Arg::Buf(dmb), Arg::Buf(lb), Arg::Buf(dfb)],
                            sizes.to_vec(),
                        ]
                        .concat(),
                    ),
                ],
            );
            let what = format!("L {l} on {grid}×{threads}");
            check(
                &format!("decoder_mean {what}"),
                &floats(&out, mb),
                &want_mean,
            );
            check(
                &format!("decoder_mean_backward {what}"),
                &floats(&out, dfb),
                &want_df,
            );
        }
    }

    // decoder_gather into the first E columns of x [S·B, E + D], and its backward with
    // repeated tokens.
    let (gather, scatter) = (entry(DECODER_GATHER), entry(DECODER_EMBEDDING_BACKWARD));
    let (vocab, ldx) = (6, E + D);
    let emb = common::random(vocab * E, 1.0, 5);
    let tokens = ints(S * B, vocab as i32, 6);
    let dx = common::random(S * B * ldx, 1.0, 7);
    let demb0 = common::random(vocab * E, 1.0, 8);
    for steps in [Some(&STEPS[..]), None] {
        let mut want_x = vec![f64::NAN; S * B * ldx];
        let mut want_demb = wide(&demb0);
        for t in 0..S {
            for b in 0..B {
                let (r, id) = (t * B + b, tokens[t * B + b] as usize);
                for e in 0..E {
                    want_x[r * ldx + e] = match runs(steps, b, t) {
                        true => emb[id * E + e] as f64,
                        false => 0.0,
                    };
                    if runs(steps, b, t) {
                        want_demb[id * E + e] += dx[r * ldx + e] as f64;
                    }
                }
            }
        }
        for (grid, threads) in strides(S * B * E) {
            let mut buf = Buffers::default();
            let (eb, tb, xb) = (buf.f32(&emb), buf.i32(&tokens), buf.poisoned(S * B * ldx));
            let sb = steps.map(|s| buf.i32(s));
            let (dxb, db) = (buf.f32(&dx), buf.f32(&demb0));
            let steps_arg = sb.map_or(Arg::Null, Arg::Buf);
            let sizes = [S, B, E, ldx].map(|x| Arg::I32(x as i32));
            let mut launches = vec![launch(
                &gather,
                grid,
                threads,
                0,
                [
                    vec![Arg::Buf(eb), Arg::Buf(tb), steps_arg, Arg::Buf(xb)],
                    sizes.to_vec(),
                ]
                .concat(),
            )];
            // The backward always has the steps.
            if steps.is_some() {
                launches.push(launch(
                    &scatter,
                    grid,
                    threads,
                    0,
                    [
                        vec![Arg::Buf(dxb), Arg::Buf(tb), steps_arg, Arg::Buf(db)],
                        sizes.to_vec(),
                    ]
                    .concat(),
                ));
            }
            let out = kernels.run(buf.0, &launches);
            let what = format!("steps {steps:?} on {grid}×{threads}");
            check(
                &format!("decoder_gather {what}"),
                &floats(&out, xb),
                &want_x,
            );
            if steps.is_some() {
                let got = floats(&out, db);
                check(
                    &format!("decoder_embedding_backward {what}"),
                    &got,
                    &want_demb,
                );
            }
        }
    }

    // Time-major [S, B, X] → batch-major [B, S, X] and back, masked by the steps.
    let (to_batch, to_time) = (entry(DECODER_BATCH_MAJOR), entry(DECODER_TIME_MAJOR));
    for (x, steps) in [(5, STEPS), (300, [0, 4, 2])] {
        let src = common::random(S * B * x, 1.0, 9);
        let mut want_bm = vec![0.0; S * B * x];
        let mut want_tm = vec![0.0; S * B * x];
        for t in 0..S {
            for b in 0..B {
                if (t as i32) < steps[b] {
                    for k in 0..x {
                        want_bm[(b * S + t) * x + k] = src[(t * B + b) * x + k] as f64;
                        want_tm[(t * B + b) * x + k] = src[(b * S + t) * x + k] as f64;
                    }
                }
            }
        }
        for (grid, threads) in strides(S * B * x) {
            let mut buf = Buffers::default();
            let (sr, st) = (buf.f32(&src), buf.i32(&steps));
            let (bm, tm) = (buf.poisoned(S * B * x), buf.poisoned(S * B * x));
            let sizes = [S, B, x].map(|v| Arg::I32(v as i32));
            let args = |dst| {
                [
                    vec![Arg::Buf(sr), Arg::Buf(st), Arg::Buf(dst)],
                    sizes.to_vec(),
                ]
            };
            let out = kernels.run(
                buf.0,
                &[
                    launch(&to_batch, grid, threads, 0, args(bm).concat()),
                    launch(&to_time, grid, threads, 0, args(tm).concat()),
                ],
            );
            let what = format!("X {x} steps {steps:?} on {grid}×{threads}");
            check(
                &format!("decoder_batch_major {what}"),
                &floats(&out, bm),
                &want_bm,
            );
            check(
                &format!("decoder_time_major {what}"),
                &floats(&out, tm),
                &want_tm,
            );
        }
    }
}

#[test]
fn decoder_column_sums_on_the_host_match_the_reference() {
    let test = "decoder_column_sums_on_the_host_match_the_reference";
    let Some(kernels) = build(test, &[ids::decoder::DECODER_COLUMN_SUMS]) else {
        return;
    };
    let name = entry(ids::decoder::DECODER_COLUMN_SUMS);
    // (rows, n, ld): no rows, one, a strip and a half, several strips of many rows.
    for (rows, n, ld) in [
        (0, 5, 5),
        (1, 1, 3),
        (7, 33, 40),
        (1000, 70, 70),
        (300, 3, 5),
    ] {
        let x = common::random(rows * ld, 1.0, 10);
        let prior = common::random(n, 1.0, 11);
        for accumulate in [false, true] {
            let want: Vec<f64> = (0..n)
                .map(|j| {
                    let s: f64 = (0..rows).map(|r| x[r * ld + j] as f64).sum();
                    s + if accumulate { prior[j] as f64 } else { 0.0 }
                })
                .collect();
            let strips = n.div_ceil(32);
            for (grid, threads) in [(strips, THREADS), (1, THREADS), (2, 64)] {
                let mut buf = Buffers::default();
                let xb = buf.f32(&x);
                let ob = match accumulate {
                    true => buf.f32(&prior),
                    false => buf.poisoned(n),
                };
                let args = vec![
                    Arg::Buf(xb),
                    Arg::U64(rows as u64),
                    Arg::I32(n as i32),
                    Arg::I32(ld as i32),
                    Arg::Buf(ob),
                    Arg::I32(accumulate as i32),
                ];
                let out = kernels.run(buf.0, &[launch(&name, grid, threads, 0, args)]);
                let what = format!(
                    "decoder_column_sums [{rows}, {n}] ld {ld} accumulate {accumulate} on \
                     {grid}×{threads}"
                );
                check(&what, &floats(&out, ob), &want);
            }
        }
    }
}

// ---
// Attention and the cell, forward.

/// One attention case's inputs: `rows` rows attending to `images` sets of `l` keys.
struct Attention {
    rows: usize,
    l: usize,
    /// [rows, W], the stacked product without biases
    g: Vec<f32>,
    b_da: Vec<f32>,
    b_fb: Vec<f32>,
    /// [images, L, A], [images, L, D]
    p: Vec<f32>,
    f: Vec<f32>,
    w_fa: Vec<f32>,
    b_fa: f32,
    /// per image
    lens: Vec<i32>,
}

impl Attention {
    fn new(rows: usize, l: usize, lens: &[i32], seed: u64) -> Self {
        let images = lens.len();
        Attention {
            rows,
            l,
            g: common::random(rows * W, 1.0, seed),
            b_da: common::random(A, 0.5, seed + 1),
            b_fb: common::random(D, 0.5, seed + 2),
            p: common::random(images * l * A, 1.0, seed + 3),
            f: common::random(images * l * D, 1.0, seed + 4),
            w_fa: common::random(A, 1.0, seed + 5),
            b_fa: 0.25,
            lens: lens.to_vec(),
        }
    }

    /// q, α, awe, gate, ctx of every row at step t.
    fn reference(
        &self,
        image: Option<&[i32]>,
        steps: Option<&[i32]>,
        t: usize,
        relu: bool,
    ) -> [Vec<f64>; 5] {
        let (rows, l) = (self.rows, self.l);
        let mut q = vec![0.0; rows * A];
        let mut alpha = vec![0.0; rows * l];
        let mut awe = vec![0.0; rows * D];
        let mut gate = vec![0.0; rows * D];
        let mut ctx = vec![0.0; rows * D];
        for r in (0..rows).filter(|&r| runs(steps, r, t)) {
            let i = image.map_or(r, |im| im[r] as usize);
            let n = self.lens[i] as usize;
            for a in 0..A {
                q[r * A + a] = self.g[r * W + 4 * H + a] as f64 + self.b_da[a] as f64;
            }
            let e: Vec<f64> = (0..n)
                .map(|k| {
                    let key = &self.p[(i * l + k) * A..][..A];
                    let s: f64 = (0..A)
                        .map(|a| self.w_fa[a] as f64 * act(key[a] as f64 + q[r * A + a], relu))
                        .sum();
                    s + self.b_fa as f64
                })
                .collect();
            let m = e.iter().fold(f64::MIN, |m, &x| m.max(x));
            let z: f64 = e.iter().map(|x| (x - m).exp()).sum();
            for k in 0..n {
                alpha[r * l + k] = (e[k] - m).exp() / z;
            }
            for d in 0..D {
                let s: f64 = (0..n)
                    .map(|k| alpha[r * l + k] * self.f[(i * l + k) * D + d] as f64)
                    .sum();
                let gt = sigmoid(self.g[r * W + 4 * H + A + d] as f64 + self.b_fb[d] as f64);
                awe[r * D + d] = s;
                gate[r * D + d] = gt;
                ctx[r * D + d] = gt * s;
            }
        }
        [q, alpha, awe, gate, ctx]
    }
}

/// The rows of an attention case: how many, the key lengths of the images they attend to, which
/// image each attends to (None: its own), and their steps (None: every row runs).
struct Rows<'a> {
    kind: &'static str,
    rows: usize,
    lens: &'a [i32],
    image: Option<&'a [i32]>,
    steps: Option<&'a [i32]>,
}

#[test]
fn decoder_attend_on_the_host_matches_the_reference() {
    let test = "decoder_attend_on_the_host_matches_the_reference";
    let Some(kernels) = build(test, &[ids::decoder::DECODER_ATTEND]) else {
        return;
    };
    let name = entry(ids::decoder::DECODER_ATTEND);
    // ctx goes into columns [E, E + D) of the LSTM input x [rows, E + D].
    let ldx = E + D;
    for &(l, lens) in &KEYS {
        for relu in [true, false] {
            // Teacher forcing: every row its own keys, rows past their steps; beam search: four
            // hypotheses over three images, no steps.
            let beam_lens = [lens[2], lens[0], lens[1]];
            let cases = [
                Rows {
                    kind: "own keys",
                    rows: B,
                    lens: &lens,
                    image: None,
                    steps: Some(&STEPS),
                },
                Rows {
                    kind: "beam",
                    rows: 4,
                    lens: &beam_lens,
                    image: Some(&[2, 0, 2, 1]),
                    steps: None,
                },
            ];
            for Rows {
                kind,
                rows,
                lens,
                image,
                steps,
            } in cases
            {
                let case = Attention::new(rows, l, lens, 20 + l as u64);
                let x0 = common::random(rows * ldx, 1.0, 30);
                for t in [0, 1, 3] {
                    let [q, alpha, awe, gate, ctx] = case.reference(image, steps, t, relu);
                    let mut want_x = wide(&x0);
                    for r in 0..rows {
                        for d in 0..D {
                            want_x[r * ldx + E + d] = ctx[r * D + d];
                        }
                    }
                    for (grid, threads) in per_row(rows) {
                        let mut buf = Buffers::default();
                        let inputs = [
                            &case.g, &case.b_da, &case.b_fb, &case.p, &case.f, &case.w_fa,
                        ]
                        .map(|v| Arg::Buf(buf.f32(v)));
                        let lb = buf.i32(&case.lens);
                        let sb = steps.map_or(Arg::Null, |s| Arg::Buf(buf.i32(s)));
                        let ib = image.map_or(Arg::Null, |s| Arg::Buf(buf.i32(s)));
                        let (qb, ab) = (buf.poisoned(rows * A), buf.poisoned(rows * l));
                        let (wb, gb) = (buf.poisoned(rows * D), buf.poisoned(rows * D));
                        let xb = buf.f32(&x0);
                        let mut args = inputs.to_vec();
                        args.extend([Arg::F32(case.b_fa), Arg::Buf(lb), sb, ib]);
                        args.extend([t, rows, l, D, A, H].map(|v| Arg::I32(v as i32)));
                        args.extend([Arg::I32(act_code(relu)), Arg::Buf(qb), Arg::Buf(ab)]);
                        args.extend([Arg::Buf(wb), Arg::Buf(gb), Arg::BufAt(xb, E * 4)]);
                        args.push(Arg::I32(ldx as i32));
                        let out = kernels.run(buf.0, &[launch(&name, grid, threads, A + l, args)]);
                        let what = format!(
                            "decoder_attend {kind} L {l} relu {relu} t {t} on {grid}×{threads}"
                        );
                        check(&format!("{what} q"), &floats(&out, qb), &q);
                        check(&format!("{what} alpha"), &floats(&out, ab), &alpha);
                        check(&format!("{what} awe"), &floats(&out, wb), &awe);
                        check(&format!("{what} gate"), &floats(&out, gb), &gate);
                        check(&format!("{what} ctx in x"), &floats(&out, xb), &want_x);
                    }
                }
            }
        }
    }
}

#[test]
fn decoder_cell_on_the_host_matches_the_reference() {
    let test = "decoder_cell_on_the_host_matches_the_reference";
    let Some(kernels) = build(test, &[ids::decoder::DECODER_CELL]) else {
        return;
    };
    let name = entry(ids::decoder::DECODER_CELL);
    // (rows, hidden, the stacked width): the attention sizes, and more units than a block.
    for (rows, h, w) in [(B, H, W), (5, 70, 4 * 70 + 9)] {
        let xg = common::random(rows * 4 * h, 1.0, 40);
        let gc = common::random(rows * 4 * h, 1.0, 41);
        let g = common::random(rows * w, 1.0, 42);
        let bias = common::random(4 * h, 1.0, 43);
        let c_prev = common::random(rows * h, 1.0, 44);
        for (with_x, with_acts) in [(true, true), (false, true), (true, false)] {
            let mut want_c = vec![0.0; rows * h];
            let mut want_h = vec![0.0; rows * h];
            let mut want_acts = vec![f64::NAN; rows * 4 * h];
            for b in 0..rows {
                for j in 0..h {
                    let pre = |k: usize| {
                        let at = b * 4 * h + k * h + j;
                        let x = if with_x { xg[at] as f64 } else { 0.0 };
                        x + gc[at] as f64 + g[b * w + k * h + j] as f64 + bias[k * h + j] as f64
                    };
                    let gates = [
                        sigmoid(pre(0)),
                        sigmoid(pre(1)),
                        pre(2).tanh(),
                        sigmoid(pre(3)),
                    ];
                    let c = gates[1] * c_prev[b * h + j] as f64 + gates[0] * gates[2];
                    want_c[b * h + j] = c;
                    want_h[b * h + j] = gates[3] * c.tanh();
                    if with_acts {
                        for (k, &v) in gates.iter().enumerate() {
                            want_acts[b * 4 * h + k * h + j] = v;
                        }
                    }
                }
            }
            for (grid, threads) in strides(rows * h) {
                let mut buf = Buffers::default();
                let xb = with_x.then(|| buf.f32(&xg));
                let inputs = [&gc, &g, &bias, &c_prev].map(|v| Arg::Buf(buf.f32(v)));
                let (cb, hb, ab) = (
                    buf.poisoned(rows * h),
                    buf.poisoned(rows * h),
                    buf.poisoned(rows * 4 * h),
                );
                let mut args = vec![xb.map_or(Arg::Null, Arg::Buf)];
                args.extend(inputs);
                args.extend([Arg::Buf(cb), Arg::Buf(hb)]);
                args.push(if with_acts { Arg::Buf(ab) } else { Arg::Null });
                args.extend([rows, h, w].map(|v| Arg::I32(v as i32)));
                let out = kernels.run(buf.0, &[launch(&name, grid, threads, 0, args)]);
                let what = format!(
                    "decoder_cell [{rows}, {h}] xg {with_x} acts {with_acts} on {grid}×{threads}"
                );
                check(&format!("{what} c"), &floats(&out, cb), &want_c);
                check(&format!("{what} h"), &floats(&out, hb), &want_h);
                check(&format!("{what} acts"), &floats(&out, ab), &want_acts);
            }
        }
    }
}

// ---
// Backward.

#[test]
fn decoder_cell_backward_on_the_host_matches_the_reference() {
    let test = "decoder_cell_backward_on_the_host_matches_the_reference";
    let Some(kernels) = build(test, &[ids::decoder::DECODER_CELL_BACKWARD]) else {
        return;
    };
    let name = entry(ids::decoder::DECODER_CELL_BACKWARD);
    for (rows, h, w, steps) in [
        (B, H, W, STEPS.to_vec()),
        (5, 70, 4 * 70 + 9, vec![2, 0, 4, 1, 3]),
    ] {
        let dh_out = common::random(rows * h, 1.0, 50);
        let dh = common::random(rows * h, 1.0, 51);
        let dc0 = common::random(rows * h, 1.0, 52);
        // Activations as the forward leaves them: i, f, o in (0, 1), g in (−1, 1).
        let acts: Vec<f32> = uniform(rows * 4 * h, 0.02, 0.98, 53)
            .iter()
            .enumerate()
            .map(|(k, &v)| if (k / h) % 4 == 2 { 2.0 * v - 1.0 } else { v })
            .collect();
        let c_prev = common::random(rows * h, 1.0, 54);
        let c = common::random(rows * h, 1.5, 55);
        for t in [0i32, 1, 3] {
            let mut want_dg = vec![f64::NAN; rows * w];
            let mut want_dc = wide(&dc0);
            for b in 0..rows {
                for j in 0..h {
                    let dg = |k: usize| b * w + k * h + j;
                    if t >= steps[b] {
                        (0..4).for_each(|k| want_dg[dg(k)] = 0.0);
                        continue;
                    }
                    let at = |k: usize| acts[b * 4 * h + k * h + j] as f64;
                    let (i, f, gg, o) = (at(0), at(1), at(2), at(3));
                    let x = b * h + j;
                    let dhv = dh[x] as f64 + dh_out[x] as f64;
                    let tc = (c[x] as f64).tanh();
                    let dct = dc0[x] as f64 + dhv * o * (1.0 - tc * tc);
                    want_dg[dg(0)] = dct * gg * i * (1.0 - i);
                    want_dg[dg(1)] = dct * c_prev[x] as f64 * f * (1.0 - f);
                    want_dg[dg(2)] = dct * i * (1.0 - gg * gg);
                    want_dg[dg(3)] = dhv * tc * o * (1.0 - o);
                    want_dc[x] = dct * f;
                }
            }
            for (grid, threads) in strides(rows * h) {
                let mut buf = Buffers::default();
                let [dob, dhb, dcb, ab, cpb, cb] =
                    [&dh_out, &dh, &dc0, &acts, &c_prev, &c].map(|v| buf.f32(v));
                let sb = buf.i32(&steps);
                let dgb = buf.poisoned(rows * w);
                let mut args = [dob, dhb, dcb, ab, cpb, cb, sb].map(Arg::Buf).to_vec();
                args.extend([Arg::I32(t), Arg::Buf(dgb)]);
                args.extend([rows, h, w].map(|v| Arg::I32(v as i32)));
                let out = kernels.run(buf.0, &[launch(&name, grid, threads, 0, args)]);
                let what = format!("decoder_cell_backward [{rows}, {h}] t {t} on {grid}×{threads}");
                check(&format!("{what} dg"), &floats(&out, dgb), &want_dg);
                check(&format!("{what} dc"), &floats(&out, dcb), &want_dc);
                check(
                    &format!("{what} dh (read only)"),
                    &floats(&out, dhb),
                    &wide(&dh),
                );
            }
        }
    }
}

#[test]
fn decoder_attend_backward_on_the_host_matches_the_reference() {
    let test = "decoder_attend_backward_on_the_host_matches_the_reference";
    let Some(kernels) = build(test, &[ids::decoder::DECODER_ATTEND_BACKWARD]) else {
        return;
    };
    let name = entry(ids::decoder::DECODER_ATTEND_BACKWARD);
    for &(l, lens) in &KEYS {
        let seed = 60 + l as u64;
        let dctx = common::random(B * D, 1.0, seed);
        let gate = uniform(B * D, 0.02, 0.98, seed + 1);
        let awe = common::random(B * D, 1.0, seed + 2);
        // α: a softmax over each row's valid keys, 0 past them.
        let mut alpha = uniform(B * l, 0.1, 1.0, seed + 3);
        for b in 0..B {
            let n = lens[b] as usize;
            let z: f32 = alpha[b * l..b * l + n].iter().sum();
            alpha[b * l..(b + 1) * l]
                .iter_mut()
                .enumerate()
                .for_each(|(k, x)| *x = if k < n { *x / z } else { 0.0 });
        }
        let q = common::random(B * A, 1.0, seed + 4);
        let p = common::random(B * l * A, 1.0, seed + 5);
        let f = common::random(B * l * D, 1.0, seed + 6);
        let w_fa = common::random(A, 1.0, seed + 7);
        let dalpha = common::random(B * l, 1.0, seed + 8);
        // The accumulated outputs' prior values.
        let df0 = common::random(B * l * D, 1.0, seed + 9);
        let dp0 = common::random(B * l * A, 1.0, seed + 10);
        let dwfa0 = common::random(B * A, 1.0, seed + 11);
        let dbfa0 = common::random(B, 1.0, seed + 12);
        for relu in [true, false] {
            for with_dalpha in [true, false] {
                for t in [0, 1, 3] {
                    let mut want_dg = vec![f64::NAN; B * W];
                    let (mut want_df, mut want_dp) = (wide(&df0), wide(&dp0));
                    let (mut want_dwfa, mut want_dbfa) = (wide(&dwfa0), wide(&dbfa0));
                    for b in 0..B {
                        let dg = &mut want_dg[b * W + 4 * H..(b + 1) * W];
                        if t as i32 >= STEPS[b] {
                            dg.fill(0.0);
                            continue;
                        }
                        let n = lens[b] as usize;
                        let x = |k: usize| b * D + k;
                        let dawe: Vec<f64> = (0..D)
                            .map(|d| dctx[x(d)] as f64 * gate[x(d)] as f64)
                            .collect();
                        for d in 0..D {
                            let (dc, gt) = (dctx[x(d)] as f64, gate[x(d)] as f64);
                            dg[A + d] = dc * awe[x(d)] as f64 * gt * (1.0 - gt);
                        }
                        let dal: Vec<f64> = (0..n)
                            .map(|k| {
                                let s: f64 = (0..D)
                                    .map(|d| dawe[d] * f[(b * l + k) * D + d] as f64)
                                    .sum();
                                s + if with_dalpha {
                                    dalpha[b * l + k] as f64
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let al = |k: usize| alpha[b * l + k] as f64;
                        let s: f64 = (0..n).map(|k| al(k) * dal[k]).sum();
                        let de: Vec<f64> = (0..n).map(|k| al(k) * (dal[k] - s)).collect();
                        want_dbfa[b] += de.iter().sum::<f64>();
                        for k in 0..n {
                            for d in 0..D {
                                want_df[(b * l + k) * D + d] += al(k) * dawe[d];
                            }
                        }
                        for a in 0..A {
                            let (mut dq, mut dw) = (0.0, 0.0);
                            for (k, &de) in de.iter().enumerate() {
                                let at = (b * l + k) * A + a;
                                let xv = p[at] as f64 + q[b * A + a] as f64;
                                let u = act(xv, relu);
                                let dz = de * w_fa[a] as f64 * slope(xv, u, relu);
                                want_dp[at] += dz;
                                dq += dz;
                                dw += de * u;
                            }
                            dg[a] = dq;
                            want_dwfa[b * A + a] += dw;
                        }
                    }
                    for (grid, threads) in per_row(B) {
                        let mut buf = Buffers::default();
                        let inputs =
                            [&dctx, &gate, &awe, &alpha, &q, &p, &f, &w_fa].map(|v| buf.f32(v));
                        let dab = with_dalpha.then(|| buf.f32(&dalpha));
                        let (lb, sb) = (buf.i32(&lens), buf.i32(&STEPS));
                        let dgb = buf.poisoned(B * W);
                        let outs = [&df0, &dp0, &dwfa0, &dbfa0].map(|v| buf.f32(v));
                        let mut args = inputs.map(Arg::Buf).to_vec();
                        args.push(dab.map_or(Arg::Null, Arg::Buf));
                        args.extend([Arg::Buf(lb), Arg::Buf(sb)]);
                        args.extend([t, B, l, D, A, H, W].map(|v| Arg::I32(v as i32)));
                        args.extend([Arg::I32(act_code(relu)), Arg::Buf(dgb)]);
                        args.extend(outs.map(Arg::Buf));
                        let out = kernels.run(buf.0, &[launch(&name, grid, threads, D + l, args)]);
                        let what = format!(
                            "decoder_attend_backward L {l} relu {relu} dalpha {with_dalpha} t {t} \
                             on {grid}×{threads}"
                        );
                        check(&format!("{what} dg"), &floats(&out, dgb), &want_dg);
                        let wants = [&want_df, &want_dp, &want_dwfa, &want_dbfa];
                        for (k, label) in ["df", "dp", "dwfa", "dbfa"].iter().enumerate() {
                            check(&format!("{what} {label}"), &floats(&out, outs[k]), wants[k]);
                        }
                    }
                }
            }
        }
    }
}
