//! Checkpoints: one safetensors file holding a model's parameters under PyTorch names, its
//! vocabularies and configuration in the metadata, written atomically (a temporary file, then a
//! rename).

use crate::error::{quoted, Error, Result};
use crate::io::{save, Data, TensorFile};
use crate::models::Vocab;
use crate::nn::{parameters_of, Module};
use std::path::Path;

/// Writes `model`'s parameters (as f32) with `metadata` (plus `model` = `kind`) to `path`.
pub(crate) fn write(
    path: &Path,
    kind: &str,
    model: &dyn Module,
    mut metadata: Vec<(String, String)>,
) -> Result<()> {
    let params = parameters_of(&[("", model)]);
    let tensors: Vec<(&str, Data)> = params
        .iter()
        .map(|(n, t)| (n.as_str(), Data::Float(t)))
        .collect();
    metadata.push(("model".into(), kind.into()));
    save(path, &tensors, &metadata)
}

/// The checkpoint at `path`, checked to hold a `kind` model.
pub(crate) fn open(path: &Path, kind: &str) -> Result<TensorFile> {
    let file = TensorFile::load(path)?;
    match file.metadata("model") {
        Some(k) if k == kind => Ok(file),
        found => Err(Error::Config(format!(
            "{}: not a {kind} checkpoint (metadata `model` is {})",
            path.display(),
            found.map_or("missing".into(), quoted)
        ))),
    }
}

/// Metadata `key`, required.
pub(crate) fn required<'a>(file: &'a TensorFile, key: &str) -> Result<&'a str> {
    file.metadata(key).ok_or_else(|| {
        Error::Config(format!(
            "{}: metadata `{key}` is missing",
            file.path().display()
        ))
    })
}

/// Metadata `key` parsed as JSON into `T`.
pub(crate) fn json<T: serde::de::DeserializeOwned>(file: &TensorFile, key: &str) -> Result<T> {
    serde_json::from_str(required(file, key)?).map_err(|e| {
        Error::Config(format!(
            "{}: metadata `{key}` is malformed: {e}",
            file.path().display()
        ))
    })
}

pub(crate) fn vocab(file: &TensorFile, key: &str) -> Result<Vocab> {
    Vocab::from_json(required(file, key)?)
        .map_err(|e| Error::Config(format!("{}: {key}: {e}", file.path().display())))
}

/// Refuses a tensor of `file` under none of `prefixes` (every model loads its parts by prefix).
pub(crate) fn only_under(file: &TensorFile, prefixes: &[&str]) -> Result<()> {
    match file
        .names()
        .find(|n| !prefixes.iter().any(|p| n.starts_with(p)))
    {
        Some(stray) => Err(Error::Config(format!(
            "{}: unexpected tensor {}",
            file.path().display(),
            quoted(stray)
        ))),
        None => Ok(()),
    }
}
