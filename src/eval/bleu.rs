//! BLEU as the COCO caption evaluation computes it: pycocoevalcap's `bleu/bleu_scorer.py`
//! (`Bleu(4).compute_score(gts, res)`, which scores with option "closest"), step for step.
//!
//! Per image, with the candidate's n-grams of order k = 1..=4:
//! - correct_k = Σ over the candidate's distinct k-grams of min(count in the candidate, the
//!   most times any one reference holds it) (clipping);
//! - guess_k = max(0, len − k + 1), the candidate's k-grams;
//! - the effective reference length is the length of the reference closest to the
//!   candidate's, ties to the shorter.
//!
//! A score from totals (correct, guess, candidate length c, reference length r) is
//! BLEU-n = (Π_{k≤n} (correct_k + tiny) / (guess_k + small))^(1/n), tiny = 1e-15 and
//! small = 1e-9, times the brevity penalty exp(1 − 1/ratio) when ratio =
//! (c + tiny) / (r + small) is below 1. Per-image scores use each image's counts; the corpus
//! scores sum the counts and lengths over images first (so they are not a mean of the
//! per-image scores). An empty candidate scores 0. As small > tiny, a candidate exactly as
//! long as its reference still pays a penalty of about exp(−1e-9/r), and a precision with no
//! correct n-gram is about 1e-15/guess, not 0: both as in pycocoevalcap.

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::{Error, Result};

/// The highest n-gram order scored: BLEU-1..4.
pub const MAX_N: usize = 4;

/// pycocoevalcap's epsilons: `tiny` keeps a precision with no correct n-gram finite but
/// tiny, `small` keeps a division by no n-grams finite.
const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// BLEU-1..4 of a corpus of candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    /// BLEU-1..4 from the counts summed over every image (pycocoevalcap's `score`).
    pub corpus: [f64; MAX_N],
    /// BLEU-1..4 of each image on its own, in input order (pycocoevalcap's `scores`,
    /// transposed: theirs is one list per order).
    pub per_image: Vec<[f64; MAX_N]>,
    /// The candidates' words in total.
    pub candidate_words: usize,
    /// The effective (closest) reference lengths in total.
    pub reference_words: usize,
}

/// What BLEU needs to know about one image, or a corpus of them.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    candidate: usize,
    reference: usize,
    guess: [usize; MAX_N],
    correct: [usize; MAX_N],
}

impl Counts {
    fn add(&mut self, other: &Counts) -> Result<()> {
        let sum = |a: usize, b: usize| {
            a.checked_add(b).ok_or_else(|| Error::TooLarge {
                what: "bleu: word counts".into(),
                needed: "more".into(),
                limit: usize::MAX.to_string(),
            })
        };
        self.candidate = sum(self.candidate, other.candidate)?;
        self.reference = sum(self.reference, other.reference)?;
        for k in 0..MAX_N {
            self.guess[k] = sum(self.guess[k], other.guess[k])?;
            self.correct[k] = sum(self.correct[k], other.correct[k])?;
        }
        Ok(())
    }

    /// BLEU-1..4, in pycocoevalcap's order of operations (the same for one image and for the
    /// corpus).
    fn score(&self) -> [f64; MAX_N] {
        let mut scores = [0.0; MAX_N];
        let mut product = 1.0f64;
        for (k, score) in scores.iter_mut().enumerate() {
            product *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            *score = product.powf(1.0 / (k + 1) as f64);
        }
        let ratio = (self.candidate as f64 + TINY) / (self.reference as f64 + SMALL);
        if ratio < 1.0 {
            let penalty = (1.0 - 1.0 / ratio).exp();
            for score in &mut scores {
                *score *= penalty;
            }
        }
        scores
    }
}

/// How often each n-gram of order 1..=MAX_N occurs in `words`.
fn ngrams<W: Eq + Hash>(words: &[W]) -> HashMap<&[W], usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_N.min(words.len()) {
        for gram in words.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn image_counts<W: Eq + Hash>(candidate: &[W], references: &[Vec<W>]) -> Counts {
    let mut most: HashMap<&[W], usize> = HashMap::new();
    for reference in references {
        for (gram, count) in ngrams(reference) {
            let m = most.entry(gram).or_insert(0);
            *m = (*m).max(count);
        }
    }
    let length = candidate.len();
    // Closest length, ties to the shorter (`min((abs(l - testlen), l))`); references is not
    // empty (checked by the caller).
    let reference = references
        .iter()
        .map(Vec::len)
        .min_by_key(|&l| (l.abs_diff(length), l))
        .unwrap_or(0);
    let mut counts = Counts {
        candidate: length,
        reference,
        ..Counts::default()
    };
    for (k, guess) in counts.guess.iter_mut().enumerate() {
        *guess = length.saturating_sub(k);
    }
    for (gram, count) in ngrams(candidate) {
        counts.correct[gram.len() - 1] += count.min(most.get(gram).copied().unwrap_or(0));
    }
    counts
}

/// BLEU-1..4 of `candidates[i]` against `references[i]` for every image i, corpus-level and
/// per image, as pycocoevalcap's `Bleu(4).compute_score` computes them from the same words
/// (see the module doc).
///
/// Errors: no candidates, a reference list count other than the candidates', an image with
/// no references. An empty candidate or reference is valid (an empty candidate scores 0).
///
/// ```
/// use fused_rnn::eval::{bleu, tokenize};
/// # fn main() -> fused_rnn::Result<()> {
/// let candidates = vec![tokenize("a dog runs on the grass")];
/// let references = vec![vec![tokenize("A dog runs on the grass."), tokenize("A brown dog.")]];
/// let scores = bleu(&candidates, &references)?;
/// assert!((scores.corpus[3] - 1.0).abs() < 1e-9);
/// # Ok(()) }
/// ```
pub fn bleu<W: Eq + Hash>(candidates: &[Vec<W>], references: &[Vec<Vec<W>>]) -> Result<Bleu> {
    super::check_images("bleu", candidates, references)?;
    let mut total = Counts::default();
    let mut per_image = Vec::with_capacity(candidates.len());
    for (candidate, refs) in candidates.iter().zip(references) {
        let counts = image_counts(candidate, refs);
        total.add(&counts)?;
        per_image.push(counts.score());
    }
    Ok(Bleu {
        corpus: total.score(),
        per_image,
        candidate_words: total.candidate,
        reference_words: total.reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        text.split_whitespace().collect()
    }

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() <= 1e-12, "got {got}, want {want}");
    }

    /// The brevity penalty for c candidate words against r reference words. Since small >
    /// tiny, equal lengths still pay a little (exp(-1e-9 / r) or so), as in pycocoevalcap.
    fn penalty(c: f64, r: f64) -> f64 {
        let ratio = (c + TINY) / (r + SMALL);
        if ratio < 1.0 {
            (1.0 - 1.0 / ratio).exp()
        } else {
            1.0
        }
    }

    /// Papineni et al.'s clipping example: seven "the" against references holding it at most
    /// twice give a unigram precision of 2/7.
    #[test]
    fn clips_counts_by_the_most_any_one_reference_holds() {
        let c = image_counts(
            &words("the the the the the the the"),
            &[
                words("the cat is on the mat"),
                words("there is a cat on the mat"),
            ],
        );
        assert_eq!(c.correct, [2, 0, 0, 0]);
        assert_eq!(c.guess, [7, 6, 5, 4]);
        assert_eq!((c.candidate, c.reference), (7, 7));
        let p1 = (2.0 + TINY) / (7.0 + SMALL);
        close(c.score()[0], p1 * penalty(7.0, 7.0));
        assert!(penalty(7.0, 7.0) < 1.0);
        // No correct bigram: the epsilon keeps BLEU-2 tiny but not 0.
        let p2 = p1 * (TINY / (6.0 + SMALL));
        close(c.score()[1], p2.sqrt() * penalty(7.0, 7.0));
        assert!(c.score()[1] > 0.0);
    }

    #[test]
    fn closest_reference_length_ties_to_the_shorter() {
        let refs = [words("a b c d e f g"), words("a b c d e f g h i")];
        // 8 words: 7 and 9 are both one away.
        let c = image_counts(&words("a b c d e f g h"), &refs);
        assert_eq!(c.reference, 7);
        let c = image_counts(&words("a b c d e f g h i j"), &refs);
        assert_eq!(c.reference, 9);
        let c = image_counts(&words("a"), &refs);
        assert_eq!(c.reference, 7);
    }

    /// A candidate that is a prefix of its only reference: every precision is 1, so each
    /// score is the brevity penalty exp(1 - r/c) (up to the epsilons).
    #[test]
    fn brevity_penalty_for_short_candidates() {
        let b = bleu(
            &[words("a man rides a horse")],
            &[vec![words("a man rides a horse on a beach at dawn")]],
        )
        .unwrap();
        let penalty = (1.0f64 - 10.0 / 5.0).exp();
        for k in 0..MAX_N {
            assert!((b.corpus[k] - penalty).abs() < 1e-9, "{:?}", b.corpus);
            assert_eq!(b.per_image[0][k], b.corpus[k]);
        }
        assert_eq!((b.candidate_words, b.reference_words), (5, 10));
    }

    /// The corpus score sums counts before dividing; it is not the mean of the images'.
    #[test]
    fn corpus_sums_counts_over_images() {
        let b = bleu(
            &[words("a b"), words("c d e f")],
            &[vec![words("a b")], vec![words("c d x y")]],
        )
        .unwrap();
        // Unigrams: (2 + 2) correct of (2 + 4); lengths 6 and 6.
        close(
            b.corpus[0],
            (4.0 + TINY) / (6.0 + SMALL) * penalty(6.0, 6.0),
        );
        close(
            b.per_image[0][0],
            (2.0 + TINY) / (2.0 + SMALL) * penalty(2.0, 2.0),
        );
        close(
            b.per_image[1][0],
            (2.0 + TINY) / (4.0 + SMALL) * penalty(4.0, 4.0),
        );
        // Bigrams: (1 + 1) of (1 + 3).
        let p2 = (4.0 + TINY) / (6.0 + SMALL) * ((2.0 + TINY) / (4.0 + SMALL));
        close(b.corpus[1], p2.sqrt() * penalty(6.0, 6.0));
    }

    #[test]
    fn empty_candidate_scores_zero_and_words_may_be_ids() {
        let b = bleu(
            &[vec![], vec![3u32, 1, 4]],
            &[vec![vec![1]], vec![vec![3, 1, 4]]],
        )
        .unwrap();
        assert_eq!(b.per_image[0], [0.0; MAX_N]);
        assert!((b.per_image[1][2] - 1.0).abs() < 1e-9);
        assert!(b.corpus[0] > 0.0 && b.corpus[0] < 1.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let none: [Vec<&str>; 0] = [];
        assert!(matches!(bleu(&none, &[]), Err(Error::Config(_))));
        let e = bleu(&[words("a")], &[vec![words("a")], vec![words("b")]]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = bleu(&[words("a")], &[vec![]]).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
    }
}
