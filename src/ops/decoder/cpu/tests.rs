//! The generic CPU body checked against itself: the f64 backward against central differences of
//! the f64 forward, the f32 path against the f64 one, and decoding against teacher forcing of
//! what it decoded.

use super::*;

fn random(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Case {
    dims: Dims,
    act: Activation,
    lens: Vec<usize>,
    len: usize,
    lengths: Vec<usize>,
    t: usize,
    /// Dropout before fc (its mask fixed by a seed).
    dropout: Option<f32>,
}

impl Case {
    fn small(act: Activation) -> Self {
        Case {
            dims: Dims {
                features: 3,
                attention: 4,
                hidden: 3,
                embed: 2,
                vocab: 5,
            },
            act,
            lens: vec![4, 1, 3],
            len: 4,
            lengths: vec![4, 2, 3],
            t: 5,
            dropout: None,
        }
    }

    fn params(&self, seed: u64) -> Vec<Vec<f64>> {
        self.dims
            .shapes()
            .iter()
            .enumerate()
            .map(|(i, s)| random(s.iter().product(), 0.6, seed + i as u64))
            .collect()
    }

    fn features(&self, seed: u64) -> Vec<f32> {
        let n = self.lens.len() * self.len * self.dims.features;
        random(n, 1.0, seed).iter().map(|&x| x as f32).collect()
    }

    fn captions(&self) -> Vec<i32> {
        let v = self.dims.vocab as i32;
        (0..self.lens.len() * self.t)
            .map(|i| (i as i32 * 7 + 3) % v)
            .collect()
    }

    fn steps(&self) -> usize {
        self.lengths.iter().max().unwrap() - 1
    }
}

fn to<T: Real>(p: &[Vec<f64>]) -> Vec<Vec<T>> {
    p.iter()
        .map(|v| v.iter().map(|&x| T::from_f64(x)).collect())
        .collect()
}

/// Σ logits ⊙ gl + Σ alphas ⊙ ga (batch-major upstream gradients).
fn loss(run: &Run<f64>, gl: &[f32], ga: &[f32]) -> f64 {
    let l = run.logits_batch_major().unwrap();
    let a = run.alphas_batch_major().unwrap();
    // Recomputed in f64 from the time-major buffers for accuracy.
    let (b, s) = (run.batch, run.steps);
    let mut total = 0.0;
    for t in 0..s {
        for r in 0..b {
            for (k, &g) in gl[(r * s + t) * run.vocab..][..run.vocab]
                .iter()
                .enumerate()
            {
                total += run.logits[(t * b + r) * run.vocab + k] * g as f64;
            }
            for (k, &g) in ga[(r * s + t) * run.keys..][..run.keys].iter().enumerate() {
                total += run.alpha[(t * b + r) * run.keys + k] * g as f64;
            }
        }
    }
    assert_eq!((l.len(), a.len()), (b * s * run.vocab, b * s * run.keys));
    total
}

fn upstream(case: &Case, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (b, s) = (case.lens.len(), case.steps());
    let gl = random(b * s * case.dims.vocab, 1.0, seed);
    let ga = random(b * s * case.len, 1.0, seed + 1);
    let f = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect();
    (f(gl), f(ga))
}

fn run<T: Real>(case: &Case, p: &[Vec<f64>], features: &[f32]) -> (Weights<T>, Run<T>) {
    let w = Weights::from_values(to::<T>(p), case.dims, case.act);
    let dropout = case
        .dropout
        .map(|p| super::super::Dropout::new(p, 11).unwrap());
    let r = forward(
        &w,
        features,
        &case.lens,
        &case.captions(),
        &case.lengths,
        case.steps(),
        dropout,
    )
    .unwrap();
    (w, r)
}

#[test]
fn f64_gradients_match_central_differences() {
    for (act, dropout) in [(Activation::Relu, None), (Activation::Tanh, Some(0.4))] {
        let case = Case {
            dropout,
            ..Case::small(act)
        };
        let p = case.params(10);
        let features = case.features(3);
        let (gl, ga) = upstream(&case, 20);
        let (w, r) = run::<f64>(&case, &p, &features);
        if dropout.is_some() {
            let kept = run::<f64>(
                &Case {
                    dropout: None,
                    ..Case::small(act)
                },
                &p,
                &features,
            )
            .1;
            assert_ne!(r.logits, kept.logits, "dropout changes the logits");
        }
        let grads = backward(&w, &r, &gl, Some(&ga)).unwrap();
        let eps = 1e-6;
        let at = |p: &[Vec<f64>], f: &[f32]| loss(&run::<f64>(&case, p, f).1, &gl, &ga);
        for (i, name) in super::super::NAMES.iter().enumerate() {
            for k in 0..p[i].len() {
                let mut plus = p.clone();
                plus[i][k] += eps;
                let mut minus = p.clone();
                minus[i][k] -= eps;
                let numeric = (at(&plus, &features) - at(&minus, &features)) / (2.0 * eps);
                let got = grads.params[i][k];
                assert!(
                    (got - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{act:?} {name}[{k}]: {got} vs {numeric}"
                );
            }
        }
        // The features are f32 inputs: step them by an f32-representable amount.
        let eps = 1.0 / 1024.0;
        for k in 0..features.len() {
            let mut plus = features.clone();
            plus[k] += eps;
            let mut minus = features.clone();
            minus[k] -= eps;
            let numeric = (at(&p, &plus) - at(&p, &minus)) / (2.0 * eps as f64);
            let got = grads.features[k];
            assert!(
                (got - numeric).abs() < 1e-4 * (1.0 + numeric.abs()),
                "{act:?} features[{k}]: {got} vs {numeric}"
            );
        }
    }
}

fn worst(got: &[f32], want: &[f64]) -> f64 {
    worst_at(got, want, largest(want))
}

fn largest(values: &[f64]) -> f64 {
    values.iter().fold(1e-30f64, |m, x| m.max(x.abs()))
}

fn worst_at(got: &[f32], want: &[f64], scale: f64) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn f32_matches_f64_on_odd_sizes() {
    let case = Case {
        dims: Dims {
            features: 33,
            attention: 17,
            hidden: 29,
            embed: 7,
            vocab: 101,
        },
        act: Activation::Relu,
        lens: vec![49, 7, 1, 30, 49],
        len: 49,
        lengths: vec![9, 2, 6, 9, 4],
        t: 11,
        dropout: Some(0.25),
    };
    let p = case.params(40);
    let features = case.features(41);
    let (gl, ga) = upstream(&case, 42);
    let (w64, r64) = run::<f64>(&case, &p, &features);
    let (w32, r32) = run::<f32>(&case, &p, &features);
    let g64 = backward(&w64, &r64, &gl, Some(&ga)).unwrap();
    let g32 = backward(&w32, &r32, &gl, Some(&ga)).unwrap();
    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let checks = [
        (
            "logits",
            r32.logits_batch_major().unwrap(),
            f64s(r64.logits_batch_major().unwrap()),
        ),
        (
            "alphas",
            r32.alphas_batch_major().unwrap(),
            f64s(r64.alphas_batch_major().unwrap()),
        ),
    ];
    for (what, got, want) in &checks {
        let e = worst(got, want);
        assert!(e < 1e-5, "{what}: {e:e}");
    }
    let to32 = |v: &[f32]| v.to_vec();
    let e = worst(&to32(&g32.features), &g64.features);
    assert!(e < 1e-4, "features: {e:e}");
    for (i, name) in super::super::NAMES.iter().enumerate() {
        // full_att's bias shifts every score alike, which the softmax cancels: its gradient is
        // zero but for rounding, so it is measured against its weight's.
        let scale = match *name {
            "attention.full_att.bias" => largest(&g64.params[i - 1]),
            _ => largest(&g64.params[i]),
        };
        let e = worst_at(&g32.params[i], &g64.params[i], scale);
        assert!(e < 1e-4, "{name}: {e:e}");
    }
}

#[test]
fn greedy_decoding_agrees_with_teacher_forcing_its_own_tokens() {
    let case = Case {
        dims: Dims {
            features: 6,
            attention: 5,
            hidden: 8,
            embed: 4,
            vocab: 13,
        },
        act: Activation::Tanh,
        lens: vec![7, 3, 5, 7],
        len: 7,
        lengths: vec![],
        t: 0,
        dropout: None,
    };
    let mut p = case.params(50);
    // Scale fc up so the argmax is clear.
    p[17].iter_mut().for_each(|x| *x *= 6.0);
    let features = case.features(51);
    let w = Weights::<f64>::from_values(to::<f64>(&p), case.dims, case.act);
    let max_len = 6;
    for end in 0..case.dims.vocab {
        let search = Search {
            start: 1,
            end,
            max_len,
            beam: 1,
        };
        let found = decode(&w, &features, &case.lens, search).unwrap();
        let batch = case.lens.len();
        // Teacher-force <start> + the decoded tokens.
        let mut captions = vec![0i32; batch * (max_len + 1)];
        let mut lengths = Vec::new();
        for b in 0..batch {
            let toks: Vec<i64> = found.tokens[b * max_len..(b + 1) * max_len]
                .iter()
                .copied()
                .take_while(|&t| t >= 0)
                .collect();
            assert!(!toks.is_empty());
            let ended = toks.last() == Some(&(end as i64));
            assert!(ended || toks.len() == max_len, "row {b}: {toks:?}");
            assert!(!toks[..toks.len() - 1].contains(&(end as i64)));
            captions[b * (max_len + 1)] = 1;
            for (i, &t) in toks.iter().enumerate() {
                captions[b * (max_len + 1) + i + 1] = t as i32;
            }
            lengths.push(toks.len() + 1);
        }
        let steps = lengths.iter().max().unwrap() - 1;
        let tf = forward(&w, &features, &case.lens, &captions, &lengths, steps, None).unwrap();
        let (v, l) = (case.dims.vocab, case.len);
        for (b, &n) in lengths.iter().enumerate() {
            let mut score = 0.0;
            for t in 0..n - 1 {
                let mut row = tf.logits[(t * batch + b) * v..][..v].to_vec();
                log_softmax(&mut row);
                let tok = found.tokens[b * max_len + t] as usize;
                let argmax = (0..v).fold(0, |m, k| if row[k] > row[m] { k } else { m });
                assert_eq!(tok, argmax, "end {end} row {b} step {t}");
                score += row[tok];
                let a_tf = &tf.alpha[(t * batch + b) * l..][..l];
                let a_dec = &found.alphas[(b * max_len + t) * l..][..l];
                for (x, y) in a_tf.iter().zip(a_dec) {
                    assert!((*x as f32 - y).abs() < 1e-6);
                }
            }
            assert!((score as f32 - found.scores[b]).abs() < 1e-5);
            for t in n - 1..max_len {
                assert!(found.alphas[(b * max_len + t) * l..][..l]
                    .iter()
                    .all(|&a| a == 0.0));
            }
        }
    }
}

/// A beam wide enough to keep every hypothesis is exhaustive search: it must find the best of
/// all captions, scored here one by one by teacher forcing.
#[test]
fn a_beam_that_keeps_everything_finds_the_best_caption() {
    let case = Case {
        dims: Dims {
            features: 5,
            attention: 6,
            hidden: 7,
            embed: 3,
            vocab: 4,
        },
        act: Activation::Relu,
        lens: vec![3],
        len: 3,
        lengths: vec![],
        t: 0,
        dropout: None,
    };
    let mut p = case.params(60);
    p[17].iter_mut().for_each(|x| *x *= 3.0);
    let features = case.features(61);
    let w = Weights::<f64>::from_values(to::<f64>(&p), case.dims, case.act);
    let (v, end, max_len) = (4, 2, 4);
    // Every caption: tokens other than <end>, then <end> or the length limit.
    let mut captions: Vec<Vec<usize>> = Vec::new();
    let mut open: Vec<Vec<usize>> = vec![vec![]];
    for n in 1..=max_len {
        let mut next = Vec::new();
        for prefix in &open {
            for tok in 0..v {
                let c = [&prefix[..], &[tok]].concat();
                if tok == end || n == max_len {
                    captions.push(c);
                } else {
                    next.push(c);
                }
            }
        }
        open = next;
    }
    let rows = captions.len();
    let ids: Vec<i32> = captions
        .iter()
        .flat_map(|c| {
            let mut row = vec![0i32; max_len + 1];
            for (i, &t) in c.iter().enumerate() {
                row[i + 1] = t as i32;
            }
            row
        })
        .collect();
    let lengths: Vec<usize> = captions.iter().map(|c| c.len() + 1).collect();
    let many: Vec<f32> = (0..rows).flat_map(|_| features.iter().copied()).collect();
    let tf = forward(&w, &many, &vec![3; rows], &ids, &lengths, max_len, None).unwrap();
    let score = |r: usize| -> f64 {
        (0..captions[r].len())
            .map(|t| {
                let mut row = tf.logits[(t * rows + r) * v..][..v].to_vec();
                log_softmax(&mut row);
                row[captions[r][t]]
            })
            .sum()
    };
    let best = (0..rows).fold(0, |b, r| if score(r) > score(b) { r } else { b });
    let search = Search {
        start: 0,
        end,
        max_len,
        beam: 64,
    };
    let found = decode(&w, &features, &case.lens, search).unwrap();
    let got: Vec<usize> = found
        .tokens
        .iter()
        .take_while(|&&t| t >= 0)
        .map(|&t| t as usize)
        .collect();
    assert_eq!(got, captions[best]);
    assert!((found.scores[0] as f64 - score(best)).abs() < 1e-6);
    // A narrower beam finds a caption no better.
    for beam in [1, 2, 3] {
        let found = decode(&w, &features, &case.lens, Search { beam, ..search }).unwrap();
        assert!(found.scores[0] as f64 <= score(best) + 1e-9);
    }
}
