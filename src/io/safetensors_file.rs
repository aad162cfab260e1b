//! Reading and writing safetensors files.
//!
//! Floating tensors (F64, F32, F16, BF16) are read as host f32 tensors; integer tensors (I64,
//! I32) as i64 values. Writing goes to a temporary file that is renamed into place, so a failed
//! run never leaves a half-written output.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

struct Entry {
    shape: Vec<usize>,
    values: Values,
}

/// The tensors and metadata of one safetensors file, loaded into host memory.
pub struct TensorFile {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    metadata: HashMap<String, String>,
}

fn format_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn decode(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Values> {
    let bytes = view.data();
    let floats = |width: usize, f: &dyn Fn(&[u8]) -> f32| -> Vec<f32> {
        bytes.chunks_exact(width).map(f).collect()
    };
    Ok(match view.dtype() {
        StDtype::F32 => Values::Float(floats(4, &|c| f32::from_le_bytes(c.try_into().unwrap()))),
        StDtype::F64 => Values::Float(floats(8, &|c| {
            f64::from_le_bytes(c.try_into().unwrap()) as f32
        })),
        StDtype::F16 => Values::Float(floats(2, &|c| {
            half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()
        })),
        StDtype::BF16 => Values::Float(floats(2, &|c| {
            half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()
        })),
        StDtype::I64 => Values::Int(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        StDtype::I32 => Values::Int(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
        ),
        other => {
            return Err(format_err(
                path,
                format!("tensor `{name}` has unsupported dtype {other:?}"),
            ))
        }
    })
}

impl TensorFile {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format_err(path, e))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(path, e))?;
        let mut entries = BTreeMap::new();
        for (name, view) in st.tensors() {
            let values = decode(path, &name, &view)?;
            entries.insert(
                name,
                Entry {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(|s| s.as_str())
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.path.display().to_string(),
            tensor: name.into(),
        })
    }

    /// A floating tensor as a host f32 tensor.
    pub fn float(&self, name: &str) -> Result<Tensor> {
        let entry = self.entry(name)?;
        match &entry.values {
            Values::Float(v) => Tensor::from_vec(v.clone(), &entry.shape),
            Values::Int(_) => Err(Error::DType {
                tensor: name.into(),
                expected: "a floating type".into(),
                got: "an integer type".into(),
            }),
        }
    }

    /// An integer tensor's values and shape.
    pub fn ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let entry = self.entry(name)?;
        match &entry.values {
            Values::Int(v) => Ok((v.clone(), entry.shape.clone())),
            Values::Float(_) => Err(Error::DType {
                tensor: name.into(),
                expected: "int64".into(),
                got: "a floating type".into(),
            }),
        }
    }
}

/// Writes tensors as f32 (converting from any dtype and device) to `path`, atomically.
pub fn save_f32(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let values = t.to_vec_f32()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.to_string(), t.shape().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(path, e))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("output"),
        std::process::id()
    ));
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format_err(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(e)
    })
}
