//! kernels/decoder_search.cu on the host emulation: a whole beam search driven step by step
//! through `search_row_top_f32`, `search_select_f32` and `search_reorder_f32` (the launches
//! `ops::decoder`'s CUDA search makes), with a toy model whose logits depend on each
//! hypothesis' last token and the step, against a plain search written here from the definition
//! (each step the best `slots` extensions of the live hypotheses; <end> finishes and takes its
//! slot; at max_len every kept one finishes; the best finished wins, ties to the earlier).

mod common;

use common::host_kernels::{bytes, bytes_i32, ints, values, Arg, HostKernels, Launch};
use fused_rnn::DType;

const V: usize = 11;
const L: usize = 3;
const H: usize = 5;

/// The toy model's log-probabilities after `token` at `step`.
fn logits(table: &[f32], token: usize, step: usize) -> Vec<f32> {
    (0..V)
        .map(|v| table[token * V + v] * (1.0 + 0.25 * step as f32) + 0.1 * (v * step % 3) as f32)
        .collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// The plain search: each image's best (tokens, score).
fn reference(
    table: &[f32],
    n: usize,
    k: usize,
    start: usize,
    end: usize,
    max_len: usize,
) -> Vec<(Vec<usize>, f64)> {
    (0..n)
        .map(|_| {
            let mut live: Vec<(Vec<usize>, f64)> = vec![(vec![start], 0.0)];
            let mut slots = k;
            let mut done: Vec<(Vec<usize>, f64)> = Vec::new();
            for step in 0..max_len {
                let mut cands = Vec::new();
                for (rank, (seq, score)) in live.iter().enumerate() {
                    let lp = log_softmax(&logits(table, *seq.last().unwrap(), step));
                    for (tok, p) in lp.iter().enumerate() {
                        cands.push((score + p, rank * V + tok));
                    }
                }
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut next = Vec::new();
                for &(score, flat) in cands.iter().take(slots) {
                    let (rank, tok) = (flat / V, flat % V);
                    let mut seq = live[rank].0.clone();
                    seq.push(tok);
                    if tok == end || step + 1 == max_len {
                        slots -= usize::from(tok == end);
                        done.push((seq, score));
                    } else {
                        next.push((seq, score));
                    }
                }
                live = next;
                if live.is_empty() {
                    break;
                }
            }
            let best = done
                .iter()
                .fold(None::<&(Vec<usize>, f64)>, |b, d| match b {
                    Some(b) if b.1 >= d.1 => Some(b),
                    _ => Some(d),
                });
            let (seq, score) = best.unwrap().clone();
            (seq[1..].to_vec(), score)
        })
        .collect()
}

#[test]
fn a_device_beam_search_matches_the_definition() {
    let test = "decoder_search_kernels";
    let entries = [
        "search_row_top_f32",
        "search_select_f32",
        "search_reorder_f32",
    ];
    let Some(kernels) = HostKernels::build(test, "decoder_search", &entries) else {
        return;
    };
    let table = common::random(V * V, 3.0, 5);
    let (start, end) = (0, 4);
    for (n, k, max_len) in [(3, 1, 6), (2, 3, 5), (3, 4, 7), (1, 11, 4)] {
        let what = format!("N {n} K {k} max_len {max_len}");
        let rows = n * k;
        let want = reference(&table, n, k, start, end, max_len);
        // Buffers (see the kernels' arguments).
        let f = |v: &[f32]| bytes(v, DType::F32);
        let i = |v: &[i32]| bytes_i32(v);
        let mut buf = vec![
            f(&vec![0.0; rows * V]),                                 // 0 logits
            i(&vec![1; n]),                                          // 1 rows
            i(&vec![k as i32; n]),                                   // 2 slots
            f(&vec![0.0; rows * k]),                                 // 3 top_v
            i(&vec![0; rows * k]),                                   // 4 top_i
            f(&vec![0.0; rows]),                                     // 5 scores
            f(&vec![0.0; rows * L]),                                 // 6 alpha
            i(&vec![0; n]),                                          // 7 fin_count
            f(&vec![0.0; rows]),                                     // 8 fin_score
            i(&vec![0; rows]),                                       // 9 fin_step
            i(&vec![0; rows]),                                       // 10 fin_parent
            i(&vec![0; rows]),                                       // 11 fin_token
            f(&vec![0.0; rows * L]),                                 // 12 fin_alpha
            i(&vec![start as i32; rows]),                            // 13 next_token (the tokens)
            f(&vec![0.0; rows]),                                     // 14 next_score
            i(&vec![0; rows]),                                       // 15 parent
            i(&vec![-1; max_len * rows]),                            // 16 hist_token
            i(&vec![0; max_len * rows]),                             // 17 hist_parent
            f(&vec![0.0; max_len * rows * L]),                       // 18 hist_alpha
            i(&[0]),                                                 // 19 live_count
            f(&(0..rows * H).map(|x| x as f32).collect::<Vec<_>>()), // 20 state
            f(&vec![f32::NAN; rows * H]),                            // 21 reordered state
        ];
        for step in 0..max_len {
            // The toy model reads each live row's token; the attention row names the row.
            let live = ints(&buf[1]);
            let tokens = ints(&buf[13]);
            let mut lg = vec![f32::NAN; rows * V];
            let mut alpha = vec![0f32; rows * L];
            for (img, &count) in live.iter().enumerate() {
                for j in 0..count as usize {
                    let r = img * k + j;
                    lg[r * V..(r + 1) * V].copy_from_slice(&logits(
                        &table,
                        tokens[r] as usize,
                        step,
                    ));
                    alpha[r * L..(r + 1) * L].copy_from_slice(&[r as f32, step as f32, 1.0]);
                }
            }
            buf[0] = f(&lg);
            buf[6] = f(&alpha);
            buf[19] = i(&[0]);
            let launches = [
                Launch {
                    entry: "search_row_top_f32",
                    grid: (rows as u32, 1),
                    threads: 256,
                    shared: 2 * 8 * 4,
                    args: vec![
                        Arg::Buf(0),
                        Arg::Buf(1),
                        Arg::I32(V as i32),
                        Arg::I32(k as i32),
                        Arg::Buf(3),
                        Arg::Buf(4),
                    ],
                },
                Launch {
                    entry: "search_select_f32",
                    grid: (n as u32, 1),
                    threads: 256,
                    shared: 2 * k * k * 4,
                    args: [
                        3, 4, 5, 6, 1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                    ]
                    .map(Arg::Buf)
                    .into_iter()
                    .chain([n, k, V, L, step, max_len, end].map(|x| Arg::I32(x as i32)))
                    .collect(),
                },
                Launch {
                    entry: "search_reorder_f32",
                    grid: (2, 1),
                    threads: 256,
                    shared: 0,
                    args: vec![
                        Arg::Buf(20),
                        Arg::Buf(15),
                        Arg::Buf(1),
                        Arg::Buf(21),
                        Arg::I32(n as i32),
                        Arg::I32(k as i32),
                        Arg::I32(H as i32),
                    ],
                },
            ];
            buf = kernels.run(buf, &launches);
            // The reorder gathered each live row's parent state, zeroed idle rows.
            let (live, parent) = (ints(&buf[1]), ints(&buf[15]));
            let (before, after) = (values(&buf[20], DType::F32), values(&buf[21], DType::F32));
            for r in 0..rows {
                let p = parent[r] as usize;
                let want: Vec<f32> = match (r % k) < live[r / k] as usize {
                    true => before[p * H..(p + 1) * H].to_vec(),
                    false => vec![0.0; H],
                };
                assert_eq!(
                    after[r * H..(r + 1) * H],
                    want[..],
                    "{what}: step {step} row {r}"
                );
            }
            buf.swap(5, 14);
            let count = ints(&buf[19])[0];
            assert_eq!(count, live.iter().sum::<i32>(), "{what}: live count");
            if count == 0 {
                break;
            }
        }
        // Walk back from each image's best finished hypothesis.
        let (counts, fin_score) = (ints(&buf[7]), values(&buf[8], DType::F32));
        let (fin_step, fin_parent, fin_token) = (ints(&buf[9]), ints(&buf[10]), ints(&buf[11]));
        let (fin_alpha, hist_token, hist_parent) =
            (values(&buf[12], DType::F32), ints(&buf[16]), ints(&buf[17]));
        let hist_alpha = values(&buf[18], DType::F32);
        for img in 0..n {
            let c = counts[img] as usize;
            assert!(c >= 1 && c <= k, "{what}: {c} finished");
            let best = (0..c).fold(0, |b, x| {
                if fin_score[img * k + x] > fin_score[img * k + b] {
                    x
                } else {
                    b
                }
            });
            let at = img * k + best;
            let last = fin_step[at] as usize;
            let mut seq = vec![0usize; last + 1];
            seq[last] = fin_token[at] as usize;
            // The finished entry's attention is its parent row's at that step.
            let parent_row = img * k + fin_parent[at] as usize;
            assert_eq!(
                fin_alpha[at * L..at * L + 2],
                [parent_row as f32, last as f32],
                "{what}"
            );
            let mut rank = fin_parent[at] as usize;
            for step in (0..last).rev() {
                let r = step * rows + img * k + rank;
                seq[step] = hist_token[r] as usize;
                assert_eq!(
                    hist_alpha[r * L + 1],
                    step as f32,
                    "{what}: attention history"
                );
                rank = hist_parent[r] as usize;
            }
            assert_eq!(seq, want[img].0, "{what}: image {img}");
            assert!(
                (fin_score[at] as f64 - want[img].1).abs() < 1e-4,
                "{what}: score"
            );
        }
    }
}
