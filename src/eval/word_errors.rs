//! Word-level agreement of a candidate caption with its closest reference: the word edit
//! distance, the word error rate over a corpus, and exact matches (a distance of 0).

use crate::error::{Error, Result};

use super::Share;

/// The fewest word insertions, deletions and substitutions that turn `candidate` into
/// `reference` (Levenshtein distance over words).
pub fn edit_distance<W: PartialEq>(candidate: &[W], reference: &[W]) -> usize {
    // One row of the table: row[j] = distance between the candidate's prefix so far and
    // reference[..j].
    let mut row: Vec<usize> = (0..=reference.len()).collect();
    for (i, c) in candidate.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, r) in reference.iter().enumerate() {
            let substitute = diagonal + usize::from(c != r);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[reference.len()]
}

/// One image's part of a word error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageErrors {
    /// The index of the closest reference among the image's references.
    pub reference: usize,
    /// The edit distance to it.
    pub edits: usize,
    /// Its words.
    pub reference_words: usize,
}

/// Word error rate over a corpus: `edits / reference_words`.
#[derive(Debug, Clone, PartialEq)]
pub struct WordErrors {
    pub rate: f64,
    /// Edits summed over images.
    pub edits: usize,
    /// The chosen references' words summed over images.
    pub reference_words: usize,
    pub per_image: Vec<ImageErrors>,
}

/// The word error rate of `candidates[i]` against `references[i]`: per image, the reference
/// the candidate is fewest edits from (ties to the longer reference, which gives the lower
/// rate, then to the first); then total edits / total words of those references. It can
/// exceed 1 (a candidate longer than its references).
///
/// Errors: no candidates, a reference list count other than the candidates', an image with
/// no references, or chosen references holding no words at all (the rate is undefined).
pub fn word_error_rate<W: PartialEq>(
    candidates: &[Vec<W>],
    references: &[Vec<Vec<W>>],
) -> Result<WordErrors> {
    super::check_images("word error rate", candidates, references)?;
    let mut per_image = Vec::with_capacity(candidates.len());
    let (mut edits, mut reference_words) = (0usize, 0usize);
    for (candidate, refs) in candidates.iter().zip(references) {
        let best = refs
            .iter()
            .enumerate()
            .map(|(index, r)| ImageErrors {
                reference: index,
                edits: edit_distance(candidate, r),
                reference_words: r.len(),
            })
            .min_by_key(|e| (e.edits, std::cmp::Reverse(e.reference_words), e.reference))
            .ok_or_else(|| Error::Config("word error rate: an image has no references".into()))?;
        // Each sum is at most the words held in memory.
        edits = edits.saturating_add(best.edits);
        reference_words = reference_words.saturating_add(best.reference_words);
        per_image.push(best);
    }
    if reference_words == 0 {
        return Err(Error::Config(
            "word error rate: the closest references hold no words".into(),
        ));
    }
    Ok(WordErrors {
        rate: edits as f64 / reference_words as f64,
        edits,
        reference_words,
        per_image,
    })
}

/// How many candidates equal one of their image's references word for word.
///
/// Errors: as [`word_error_rate`]'s input checks.
pub fn exact_match<W: PartialEq>(
    candidates: &[Vec<W>],
    references: &[Vec<Vec<W>>],
) -> Result<Share> {
    super::check_images("exact match", candidates, references)?;
    let hits = candidates
        .iter()
        .zip(references)
        .filter(|(candidate, refs)| refs.iter().any(|r| r == *candidate))
        .count();
    Ok(Share {
        hits,
        total: candidates.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        text.split_whitespace().collect()
    }

    #[test]
    fn edit_distance_by_hand() {
        let d = |a: &str, b: &str| edit_distance(&words(a), &words(b));
        assert_eq!(d("", ""), 0);
        assert_eq!(d("a b c", ""), 3);
        assert_eq!(d("", "a b"), 2);
        assert_eq!(d("a b c", "a b c"), 0);
        // One substitution.
        assert_eq!(d("a cat sat", "a dog sat"), 1);
        // One deletion, one insertion.
        assert_eq!(d("a big cat sat", "a cat sat down"), 2);
        // Reversal of four distinct words: two substitutions are not enough, four are.
        assert_eq!(d("a b c d", "d c b a"), 4);
        // kitten → sitting, by letters: the textbook 3.
        let k: Vec<char> = "kitten".chars().collect();
        let s: Vec<char> = "sitting".chars().collect();
        assert_eq!(edit_distance(&k, &s), 3);
        assert_eq!(edit_distance(&s, &k), 3);
    }

    #[test]
    fn word_error_rate_by_hand() {
        let candidates = vec![
            words("a dog runs on grass"),
            words("a cat"),
            words("two men play chess in a park"),
        ];
        let references = vec![
            // 1 edit from the first (insert "the"), 3 from the second.
            vec![words("a dog runs on the grass"), words("a dog is running")],
            // 1 edit from both: the longer (3 words) is chosen.
            vec![words("the cat"), words("a cat sits")],
            // 3 edits from the first (deletions), 2 from the second (substitutions).
            vec![
                words("two men play chess"),
                words("two men playing chess in the park"),
            ],
        ];
        let w = word_error_rate(&candidates, &references).unwrap();
        assert_eq!(
            w.per_image,
            [
                ImageErrors {
                    reference: 0,
                    edits: 1,
                    reference_words: 6
                },
                ImageErrors {
                    reference: 1,
                    edits: 1,
                    reference_words: 3
                },
                ImageErrors {
                    reference: 1,
                    edits: 2,
                    reference_words: 7
                },
            ]
        );
        assert_eq!(edit_distance(&candidates[1], &references[1][0]), 1);
        assert_eq!(edit_distance(&candidates[2], &references[2][0]), 3);
        assert_eq!((w.edits, w.reference_words), (4, 16));
        assert_eq!(w.rate, 0.25);
    }

    #[test]
    fn ties_go_to_the_longer_reference() {
        // "a b" is 1 edit from "a" and from "a b c": the longer gives 1/3, not 1/1.
        let w = word_error_rate(&[words("a b")], &[vec![words("a"), words("a b c")]]).unwrap();
        assert_eq!(w.per_image[0].reference, 1);
        assert_eq!(w.rate, 1.0 / 3.0);
    }

    #[test]
    fn rate_can_exceed_one_and_empty_candidates_count_deletions() {
        let w = word_error_rate(
            &[words("a b c d e"), words("")],
            &[vec![words("x")], vec![words("p q")]],
        )
        .unwrap();
        assert_eq!((w.edits, w.reference_words), (5 + 2, 1 + 2));
        assert_eq!(w.rate, 7.0 / 3.0);
    }

    #[test]
    fn exact_match_by_hand() {
        let m = exact_match(
            &[words("a dog"), words("a cat"), words(""), words("A cat")],
            &[
                vec![words("the dog"), words("a dog")],
                vec![words("a cat sits")],
                vec![words("x"), words("")],
                vec![words("a cat")],
            ],
        )
        .unwrap();
        assert_eq!(m, Share { hits: 2, total: 4 });
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = word_error_rate(&[words("")], &[vec![words("")]]).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = word_error_rate(&[words("a")], &[]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = exact_match(&[words("a"), words("b")], &[vec![words("a")], vec![]]).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let none: [Vec<&str>; 0] = [];
        assert!(exact_match(&none, &[]).is_err());
    }
}
