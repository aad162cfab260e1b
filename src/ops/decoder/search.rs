//! The bookkeeping of greedy and beam search, apart from the model: which hypotheses live, which
//! have finished, and each step's choices, kept as back-pointers so that a step costs the same
//! however long the captions are. Greedy is a beam of one.

use super::Search;
use crate::ops::math_cpu::Real;
use std::cmp::Ordering::Greater;

/// A live hypothesis: the row of the next step's input.
pub(super) struct Hyp {
    pub image: usize,
    /// The token it ends in: the next step's input.
    pub token: usize,
    score: f64,
    /// Its last choice in `history` (none before the first step).
    entry: Option<usize>,
}

/// One step's choices: for each, the choice it extends in the step before and the token, and
/// the attention [choices, L] that produced it.
struct Choices {
    parent: Vec<Option<usize>>,
    token: Vec<usize>,
    alpha: Vec<f32>,
}

struct Done {
    score: f64,
    step: usize,
    entry: usize,
}

pub(super) struct Beams {
    search: Search,
    keys: usize,
    vocab: usize,
    /// Live hypotheses, grouped by image, each group in rank order.
    live: Vec<Hyp>,
    /// Per image: hypotheses it may still keep (the beam less those finished).
    slots: Vec<usize>,
    done: Vec<Vec<Done>>,
    history: Vec<Choices>,
    /// Scratch reused every step: an image's candidates (score, rank·V + token), a row's best.
    candidates: Vec<(f64, usize)>,
    top: Vec<usize>,
    /// The next step's live list, built while `live` is read, and each one's parent row.
    next: Vec<Hyp>,
    parents: Vec<usize>,
}

/// tokens [N, max_len] (−1 after the caption), scores [N], alphas [N, max_len, L].
pub(super) struct Finished {
    pub tokens: Vec<i64>,
    pub scores: Vec<f32>,
    pub alphas: Vec<f32>,
}

impl Beams {
    pub fn new(images: usize, search: Search, keys: usize, vocab: usize) -> Self {
        Beams {
            search,
            keys,
            vocab,
            live: (0..images)
                .map(|image| Hyp {
                    image,
                    token: search.start,
                    score: 0.0,
                    entry: None,
                })
                .collect(),
            slots: vec![search.beam; images],
            done: (0..images).map(|_| Vec::new()).collect(),
            history: Vec::with_capacity(search.max_len),
            candidates: Vec::new(),
            top: Vec::new(),
            next: Vec::new(),
            parents: Vec::new(),
        }
    }

    /// The hypotheses to extend next, one per input row.
    pub fn live(&self) -> &[Hyp] {
        &self.live
    }

    /// Extends the live hypotheses given each one's log-probabilities `logp` [rows, V] and
    /// attention `alpha` [rows, L]. Returns, for each new live hypothesis, the row it extends.
    pub fn advance<T: Real>(&mut self, logp: &[T], alpha: &[T]) -> &[usize] {
        let (v, l) = (self.vocab, self.keys);
        let step = self.history.len();
        let last = step + 1 == self.search.max_len;
        let mut choices = Choices {
            parent: Vec::new(),
            token: Vec::new(),
            alpha: Vec::new(),
        };
        let mut live = std::mem::take(&mut self.next);
        live.clear();
        self.parents.clear();
        let mut first = 0;
        while first < self.live.len() {
            let image = self.live[first].image;
            let end = first
                + self.live[first..]
                    .iter()
                    .take_while(|hyp| hyp.image == image)
                    .count();
            let k = self.slots[image];
            // The best k of all extensions come from each hypothesis' own best k.
            let candidates = &mut self.candidates;
            candidates.clear();
            for (rank, row) in (first..end).enumerate() {
                let base = self.live[row].score;
                best(&logp[row * v..(row + 1) * v], k, &mut self.top);
                for &token in &self.top {
                    candidates.push((base + logp[row * v + token].to_f64(), rank * v + token));
                }
            }
            candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            for &(score, flat) in candidates.iter().take(k) {
                let (row, token) = (first + flat / v, flat % v);
                let entry = choices.token.len();
                choices.parent.push(self.live[row].entry);
                choices.token.push(token);
                choices
                    .alpha
                    .extend(alpha[row * l..(row + 1) * l].iter().map(|a| a.to_f32()));
                if token == self.search.end || last {
                    self.done[image].push(Done { score, step, entry });
                    self.slots[image] -= usize::from(token == self.search.end);
                } else {
                    live.push(Hyp {
                        image,
                        token,
                        score,
                        entry: Some(entry),
                    });
                    self.parents.push(row);
                }
            }
            first = end;
        }
        self.history.push(choices);
        self.next = std::mem::replace(&mut self.live, live);
        &self.parents
    }

    /// Each image's best finished hypothesis, read back through the steps.
    pub fn finish(self) -> Finished {
        let (n, max_len, l) = (self.done.len(), self.search.max_len, self.keys);
        let mut out = Finished {
            tokens: vec![-1; n * max_len],
            scores: vec![f32::NAN; n],
            alphas: vec![0.0; n * max_len * l],
        };
        for (image, done) in self.done.iter().enumerate() {
            // The first of the highest: finished earlier, then better ranked.
            let Some(best) = done.iter().fold(None::<&Done>, |b, d| match b {
                Some(b) if b.score >= d.score => Some(b),
                _ => Some(d),
            }) else {
                continue;
            };
            out.scores[image] = best.score as f32;
            let mut entry = Some(best.entry);
            for step in (0..=best.step).rev() {
                let e = entry.expect("a choice before every step but the first");
                let choices = &self.history[step];
                out.tokens[image * max_len + step] = choices.token[e] as i64;
                out.alphas[(image * max_len + step) * l..][..l]
                    .copy_from_slice(&choices.alpha[e * l..(e + 1) * l]);
                entry = choices.parent[e];
            }
        }
        out
    }
}

/// The `k` highest entries of `row` into `top`, ties to the lower index (NaN never chosen).
fn best<T: Real>(row: &[T], k: usize, top: &mut Vec<usize>) {
    top.clear();
    for (i, &x) in row.iter().enumerate() {
        let beats_last = top.len() < k || x.partial_cmp(&row[top[k - 1]]) == Some(Greater);
        if !beats_last {
            continue;
        }
        let at = top.partition_point(|&j| row[j] >= x);
        if at < k && !x.to_f64().is_nan() {
            top.insert(at, i);
            top.truncate(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_keeps_the_highest_with_ties_to_the_lower_index() {
        let row = [0.5f32, 2.0, 2.0, f32::NAN, -1.0, 3.0, 2.0];
        let mut top = Vec::new();
        for (k, want) in [(3, &[5, 1, 2][..]), (1, &[5]), (10, &[5, 1, 2, 6, 0, 4])] {
            best(&row, k, &mut top);
            assert_eq!(top, want);
        }
    }

    /// Two images, beam 2, vocabulary 3 with end = 2: the bookkeeping by hand.
    #[test]
    fn beams_finish_shrink_and_read_back() {
        let search = Search {
            start: 0,
            end: 2,
            max_len: 3,
            beam: 2,
        };
        let mut beams = Beams::new(2, search, 1, 3);
        let ln = |p: [f64; 3]| p.map(f64::ln);
        // Step 0: image 0 → tokens 2 (end, 0.6) and 1 (0.3); image 1 → 1 (0.5), 0 (0.4).
        let logp = [ln([0.1, 0.3, 0.6]), ln([0.4, 0.5, 0.1])].concat();
        let parents = beams.advance(&logp, &[0.25, 0.75]);
        assert_eq!(parents, [0, 1, 1]);
        let live: Vec<(usize, usize)> = beams.live().iter().map(|h| (h.image, h.token)).collect();
        assert_eq!(live, [(0, 1), (1, 1), (1, 0)]);
        // Step 1: image 0 has one slot left: 0.3·0.9 = 0.27 < 0.6 finishes with end anyway;
        // image 1: from token 1 (0.5): 0.5·0.8 end; from token 0 (0.4): 0.4·0.9 = 0.36 token 1.
        let logp = [
            ln([0.05, 0.05, 0.9]),
            ln([0.1, 0.1, 0.8]),
            ln([0.05, 0.9, 0.05]),
        ]
        .concat();
        let parents = beams.advance(&logp, &[0.5, 0.5, 0.5]);
        assert_eq!(parents, [2]);
        // Step 2 (the last): image 1's live hypothesis finishes at max_len.
        let parents = beams.advance(&ln([0.2, 0.7, 0.1]), &[1.0]);
        assert!(parents.is_empty() && beams.live().is_empty());
        let out = beams.finish();
        assert_eq!(out.tokens, [2, -1, -1, 1, 2, -1]);
        assert!((out.scores[0] as f64 - 0.6f64.ln()).abs() < 1e-6);
        assert!((out.scores[1] as f64 - 0.4f64.ln()).abs() < 1e-6);
        assert_eq!(out.alphas, [0.25, 0.0, 0.0, 0.75, 0.5, 0.0]);
    }
}
