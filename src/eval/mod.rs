//! Caption quality scores as the COCO caption evaluation defines them, and checks of where a
//! decoder looked.
//!
//! - [`tokenize`]: the words of a caption (lower-cased, split on whitespace, punctuation
//!   trimmed from each word's ends).
//! - [`bleu`]: BLEU-1..4 over a corpus and per image, computed exactly as pycocoevalcap's
//!   `Bleu(4).compute_score` does (clipped n-gram counts, closest reference length, corpus
//!   totals, brevity penalty, its epsilons).
//! - [`exact_match`], [`word_error_rate`], [`edit_distance`]: word-level agreement with the
//!   closest reference.
//! - [`attention_in_box`]: the share of emitted words whose attention peak falls inside a
//!   target box.
//!
//! Every scorer takes one candidate per image and that image's references, as words. Words
//! are any `Eq` values: `String`s from [`tokenize`], `&str`s, or token ids. Bad input (no
//! images, a reference list per candidate missing, an image without references, non-finite
//! attention) is an `Err`, never a panic.

mod attention;
mod bleu;
mod tokenize;
mod word_errors;

pub use attention::{attention_in_box, peak_region, PixelBox, RegionGrid};
pub use bleu::{bleu, Bleu, MAX_N};
pub use tokenize::tokenize;
pub use word_errors::{edit_distance, exact_match, word_error_rate, ImageErrors, WordErrors};

use crate::error::{Error, Result};

/// How many of a number of items passed a check (captions matched exactly, words that looked
/// inside the box). Shares over parts of a corpus add up with `+` or `sum()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub hits: usize,
    pub total: usize,
}

impl Share {
    /// hits / total; NaN when total is 0 (no scorer returns such a share).
    pub fn rate(&self) -> f64 {
        self.hits as f64 / self.total as f64
    }
}

impl std::ops::Add for Share {
    type Output = Share;

    fn add(self, other: Share) -> Share {
        Share {
            hits: self.hits.saturating_add(other.hits),
            total: self.total.saturating_add(other.total),
        }
    }
}

impl std::iter::Sum for Share {
    fn sum<I: Iterator<Item = Share>>(iter: I) -> Share {
        iter.fold(Share::default(), |a, b| a + b)
    }
}

/// The checks every caption scorer makes: at least one image, one list of references per
/// candidate, and at least one reference per image (a reference may hold no words).
fn check_images<C, R>(scorer: &str, candidates: &[C], references: &[Vec<R>]) -> Result<()> {
    if candidates.is_empty() {
        return Err(Error::Config(format!("{scorer}: no candidate captions")));
    }
    if references.len() != candidates.len() {
        return Err(Error::shape(
            format!("{scorer}: references"),
            format!("[{}] (one list per candidate)", candidates.len()),
            &[references.len()],
        ));
    }
    if let Some(image) = references.iter().position(Vec::is_empty) {
        return Err(Error::Config(format!(
            "{scorer}: image {image} has no reference captions"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let parts = [Share { hits: 1, total: 4 }, Share { hits: 2, total: 2 }];
        let all: Share = parts.into_iter().sum();
        assert_eq!(all, Share { hits: 3, total: 6 });
        assert_eq!(all.rate(), 0.5);
    }

    #[test]
    fn image_checks_name_the_problem() {
        let refs = vec![vec![vec!["a"]], vec![vec!["b"]]];
        let e = check_images("bleu", &[vec!["a"]], &refs).unwrap_err();
        assert!(
            matches!(e, Error::Shape { ref got, .. } if got == &[2]),
            "{e}"
        );
        let none: [Vec<&str>; 0] = [];
        let e = check_images("bleu", &none, &refs[..0]).unwrap_err();
        assert_eq!(e.to_string(), "bleu: no candidate captions");
        let e = check_images("wer", &[vec!["a"], vec!["b"]], &[vec![vec!["a"]], vec![]]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "wer: image 1 has no reference captions"
        );
        assert!(check_images("bleu", &[vec!["a"], vec![]], &refs).is_ok());
    }
}
