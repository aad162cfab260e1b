//! An image with its captions, as the Karpathy and COCO readers give it, and the checks they
//! share.

use super::images::{self, Channels};
use super::scenes::BoundingBox;
use super::split::Split;
use super::tokens::tokenize;
use crate::error::{one_line, quoted, Error, Result};
use serde::de::DeserializeOwned;
use std::path::{Component, Path, PathBuf};

/// One image of a caption data set.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionedImage {
    /// Karpathy's `imgid` (its position when absent) or COCO's image `id`.
    pub id: u64,
    /// The image file (checked to exist when the data set was read).
    pub path: PathBuf,
    pub split: Split,
    /// Each caption as words (never empty), in the file's order.
    pub captions: Vec<Vec<String>>,
    /// Each caption as written (Karpathy's `raw`, COCO's `caption`; the words joined by spaces
    /// where a Karpathy file gives only tokens).
    pub raw: Vec<String>,
    /// Labelled boxes, where the file gives them (the digit scenes: each digit's box).
    pub boxes: Vec<LabelledBox>,
}

/// A box in an image with its label (for the digit scenes, the digit 0..=9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledBox {
    pub bbox: BoundingBox,
    pub label: u32,
}

impl CaptionedImage {
    /// The image's pixels resized to `height`×`width` ([`images::load`]): [C, H, W] in [0, 1].
    pub fn pixels(&self, height: usize, width: usize, channels: Channels) -> Result<Vec<f32>> {
        images::load(&self.path, height, width, channels)
    }
}

/// `path` as error messages show it: one line, whatever it holds.
pub(super) fn shown(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// The JSON file `json` as a `T`; when it is not one, an error saying it is not `kind`.
pub(super) fn read_json<T: DeserializeOwned>(json: &Path, kind: &str) -> Result<T> {
    let text = std::fs::read_to_string(json).map_err(|source| Error::Io {
        path: json.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        location: shown(json),
        reason: format!("not {kind} ({})", one_line(&e.to_string())),
    })
}

/// The entry named by `location` in errors, `file: what`.
pub(super) fn entry_error(location: &str, reason: impl Into<String>) -> Error {
    Error::Data {
        location: location.to_string(),
        reason: reason.into(),
    }
}

/// A caption's words: `tokens` when given, else `raw` tokenized. Empty words, words holding
/// whitespace and captions of no words are errors.
pub(super) fn caption_words(
    location: &str,
    raw: Option<&str>,
    tokens: Option<&[String]>,
) -> Result<Vec<String>> {
    let words = match (tokens, raw) {
        (Some(t), _) => t.to_vec(),
        (None, Some(r)) => tokenize(r),
        (None, None) => return Err(entry_error(location, "neither `raw` nor `tokens`")),
    };
    if words.is_empty() {
        return Err(entry_error(location, "an empty caption"));
    }
    if let Some(w) = words
        .iter()
        .find(|w| w.is_empty() || w.chars().any(char::is_whitespace))
    {
        return Err(entry_error(
            location,
            format!("the word {} is empty or holds whitespace", quoted(w)),
        ));
    }
    Ok(words)
}

/// `root` joined with the relative path `parts`, checked to name a file. An absolute part or
/// one holding `..` is refused: a data set names files under its image folder.
pub(super) fn image_path(location: &str, root: &Path, parts: &[&str]) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for part in parts {
        let p = Path::new(part);
        if p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(entry_error(
                location,
                format!("the path {} leaves the image folder", quoted(part)),
            ));
        }
        path.push(p);
    }
    if !path.is_file() {
        return Err(entry_error(
            location,
            format!("no image file {}", quoted(&path.display().to_string())),
        ));
    }
    Ok(path)
}
