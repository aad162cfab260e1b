//! A word vocabulary: ids for words, with the four special tokens first (`<pad>` 0, `<start>` 1,
//! `<end>` 2, `<unk>` 3), saved in a checkpoint's metadata as a JSON list.

use crate::error::{quoted, Error, Result};
use crate::indices::Indices;
use std::collections::HashMap;

pub const PAD: usize = 0;
pub const START: usize = 1;
pub const END: usize = 2;
pub const UNKNOWN: usize = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<start>", "<end>", "<unk>"];

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Vocab {
    /// The specials, then `words` in order (each once; a special among them is an error).
    pub fn new<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Result<Self> {
        let all: Vec<String> = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain(words.into_iter().map(|w| w.as_ref().to_string()))
            .collect();
        Vocab::from_list(all)
    }

    /// A full list as `to_json` writes it: the specials first, then distinct words.
    fn from_list(words: Vec<String>) -> Result<Self> {
        if words.len() < SPECIALS.len() || words[..SPECIALS.len()] != SPECIALS {
            return Err(Error::Config(format!(
                "a vocabulary begins with {}",
                SPECIALS.join(", ")
            )));
        }
        let mut ids = HashMap::with_capacity(words.len());
        for (id, w) in words.iter().enumerate() {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "vocabulary word {id} ({}) is empty or holds whitespace",
                    quoted(w)
                )));
            }
            if ids.insert(w.clone(), id).is_some() {
                return Err(Error::Config(format!(
                    "vocabulary word {} appears twice",
                    quoted(w)
                )));
            }
        }
        Ok(Vocab { words, ids })
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of `word`, `<unk>`'s when it is not in the vocabulary.
    pub fn id(&self, word: &str) -> usize {
        self.ids.get(word).copied().unwrap_or(UNKNOWN)
    }

    pub fn word(&self, id: usize) -> Option<&str> {
        self.words.get(id).map(String::as_str)
    }

    /// `<start>`, the ids of `words`, `<end>`.
    pub fn encode<S: AsRef<str>>(&self, words: &[S]) -> Vec<usize> {
        let mut ids = vec![START];
        ids.extend(words.iter().map(|w| self.id(w.as_ref())));
        ids.push(END);
        ids
    }

    /// Captions as ids [B, T] (each `encode`d, padded with `<pad>` to the longest) with their
    /// lengths, as `Captioner::train_step` takes them.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        captions: &[Vec<S>],
    ) -> Result<(Indices, Vec<usize>)> {
        let encoded: Vec<Vec<usize>> = captions.iter().map(|c| self.encode(c)).collect();
        let t = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![PAD; encoded.len() * t];
        for (row, e) in ids.chunks_exact_mut(t.max(1)).zip(&encoded) {
            row[..e.len()].copy_from_slice(e);
        }
        let lengths = encoded.iter().map(Vec::len).collect();
        Ok((Indices::from_usize(&ids, &[encoded.len(), t])?, lengths))
    }

    /// The words of `ids` up to `<end>`, without the specials `<start>` and `<pad>`.
    pub fn decode(&self, ids: &[usize]) -> Vec<&str> {
        ids.iter()
            .take_while(|&&id| id != END)
            .filter(|&&id| id != START && id != PAD)
            .map(|&id| self.word(id).unwrap_or("<unk>"))
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.words).expect("a list of strings")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let words: Vec<String> = serde_json::from_str(text).map_err(|e| {
            Error::Config(format!("the vocabulary is not a JSON list of words: {e}"))
        })?;
        Vocab::from_list(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknowns_map_to_unk() {
        let v = Vocab::new(["one", "two"]).unwrap();
        assert_eq!(v.len(), 6);
        assert_eq!(
            v.encode(&["two", "zebra", "one"]),
            [START, 5, UNKNOWN, 4, END]
        );
        assert_eq!(v.decode(&[START, 5, 4, END, 4]), ["two", "one"]);
        assert_eq!(Vocab::from_json(&v.to_json()).unwrap(), v);
        assert!(Vocab::new(["one", "one"]).is_err());
        assert!(Vocab::new(["<end>"]).is_err());
        assert!(Vocab::new(["a b"]).is_err());
        assert!(Vocab::from_json("[\"<pad>\"]").is_err());
        assert!(Vocab::from_json("{}").is_err());
    }
}
