//! A caption data set on disk, recognised by what its folder holds: one Karpathy split file
//! (`dataset_*.json`, images under the folder), or COCO caption files `captions_<split>*.json`
//! (split from the name: `train`, `val` or `test`), each with its images in the folder named
//! after it without `captions_` and `.json` (`captions_val2014.json` → `val2014/`) or, where
//! that folder does not exist, in the data set's folder itself.

use super::captions::CaptionedImage;
use super::split::Split;
use super::{coco, karpathy};
use crate::error::{quoted, Error, Result};
use std::path::{Path, PathBuf};

/// Every image of the data set in `dir`, in file order (Karpathy) or by split, then file
/// order (COCO). A folder holding neither kind, or more than one Karpathy file, is an error
/// that says what was looked for.
pub fn open(dir: impl AsRef<Path>) -> Result<Vec<CaptionedImage>> {
    let dir = dir.as_ref();
    let shown = || quoted(&dir.display().to_string());
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let karpathy: Vec<&String> = names.iter().filter(|n| n.starts_with("dataset_")).collect();
    match karpathy.as_slice() {
        [one] => return karpathy::read(dir.join(one), dir),
        [] => {}
        many => {
            return Err(Error::Config(format!(
                "{}: {} Karpathy split files ({}); a data set folder holds one",
                shown(),
                many.len(),
                many.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    let mut images = Vec::new();
    let mut found = false;
    for name in names.iter().filter(|n| n.starts_with("captions_")) {
        let stem = &name["captions_".len()..name.len() - ".json".len()];
        let split = [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .find(|s| stem.starts_with(s.name()))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: {} names no split (captions_train…, captions_val… or captions_test…)",
                    shown(),
                    quoted(name)
                ))
            })?;
        let folder: PathBuf = dir.join(stem);
        let root = if folder.is_dir() {
            folder
        } else {
            dir.to_path_buf()
        };
        images.extend(coco::read(dir.join(name), root, split)?);
        found = true;
    }
    if !found {
        return Err(Error::Config(format!(
            "{}: no caption data set (a Karpathy file dataset_*.json, or COCO files \
             captions_<split>*.json)",
            shown()
        )));
    }
    Ok(images)
}
