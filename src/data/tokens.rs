//! Caption words and the vocabulary built from them.

use crate::error::Result;
use crate::models::Vocab;
use std::collections::HashMap;

/// The one tokenizer: captions are split into words as the evaluation splits them, so that the
/// vocabulary and the scores see the same words.
pub use crate::eval::tokenize;

/// A vocabulary of the words that occur at least `min_count` times in `captions` (each a list
/// of words), by descending count, ties in alphabetical (byte) order: the same captions give
/// the same ids whatever their order. The special tokens come first (`models::Vocab`); a
/// caption word spelled like one of them is not added again. An empty word or one holding
/// whitespace is an error.
pub fn build_vocab<C, S>(captions: impl IntoIterator<Item = C>, min_count: usize) -> Result<Vocab>
where
    C: AsRef<[S]>,
    S: AsRef<str>,
{
    let specials = Vocab::new(std::iter::empty::<&str>())?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for caption in captions {
        for word in caption.as_ref() {
            *counts.entry(word.as_ref().to_string()).or_default() += 1;
        }
    }
    let mut words: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(w, n)| {
            *n >= min_count.max(1) && !(0..specials.len()).any(|id| specials.word(id) == Some(w))
        })
        .collect();
    words.sort_by(|(a, na), (b, nb)| nb.cmp(na).then_with(|| a.cmp(b)));
    Vocab::new(words.into_iter().map(|(w, _)| w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_orders_by_count_then_alphabet_and_drops_rare_words() {
        let captions = [
            tokenize("three seven one"),
            tokenize("one one seven"),
            tokenize("zebra <unk> apple"),
        ];
        let v = build_vocab(&captions, 1).unwrap();
        // one ×3, seven ×2, then apple, three, unk, zebra ×1 alphabetically ("<unk>" tokenizes
        // to "unk", an ordinary word).
        let words: Vec<&str> = (4..v.len()).map(|i| v.word(i).unwrap()).collect();
        assert_eq!(words, ["one", "seven", "apple", "three", "unk", "zebra"]);
        let v2 = build_vocab(captions.iter().rev(), 2).unwrap();
        assert_eq!(v2.len(), 6);
        assert_eq!(v2.word(4), Some("one"));
        assert_eq!(v2.word(5), Some("seven"));
        // Specials given as words are not added twice; whitespace is refused.
        let v3 = build_vocab([vec!["<end>", "a"]], 1).unwrap();
        assert_eq!(v3.len(), 5);
        assert!(build_vocab([vec!["a b"]], 1).is_err());
    }
}
