//! Reading and writing safetensors files.
//!
//! Floating tensors (F64, F32, F16, BF16) are read as host f32 tensors; integer tensors (I64,
//! I32) as i64 values. A file is read by the size its header declares, never to its end, so a
//! device or a pipe that never ends is an error, not a hang. Writing streams to a temporary
//! file beside the target that is renamed into place, so a failed or interrupted run never
//! leaves a half-written output (`abandon_writes` removes what is in flight, for a signal
//! handler).

use super::temporary::Temporary;
use crate::error::{one_line, quoted, Error, Result};
use crate::size;
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype as StDtype, Metadata, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// safetensors' own bound on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

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
        reason: one_line(&reason.to_string()),
    }
}

fn decode(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Values> {
    fn words<const W: usize, T>(bytes: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(W)
            .map(|c| f(c.try_into().expect("chunks of W bytes")))
            .collect()
    }
    let bytes = view.data();
    Ok(match view.dtype() {
        StDtype::F32 => Values::Float(words(bytes, f32::from_le_bytes)),
        StDtype::F64 => Values::Float(words(bytes, |w| f64::from_le_bytes(w) as f32)),
        StDtype::F16 => Values::Float(words(bytes, |w| half::f16::from_le_bytes(w).to_f32())),
        StDtype::BF16 => Values::Float(words(bytes, |w| half::bf16::from_le_bytes(w).to_f32())),
        StDtype::I64 => Values::Int(words(bytes, i64::from_le_bytes)),
        StDtype::I32 => Values::Int(words(bytes, |w| i64::from(i32::from_le_bytes(w)))),
        other => {
            return Err(format_err(
                path,
                format!("tensor {} has unsupported dtype {other:?}", quoted(name)),
            ))
        }
    })
}

/// The whole file, read by the sizes its header declares (the 8-byte header length, the
/// header, then exactly the tensor data the header describes), and the header's metadata.
fn read_declared(path: &Path) -> Result<(Vec<u8>, HashMap<String, String>)> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(std::io::Error::from(ErrorKind::IsADirectory)));
    }
    // Pipes and devices have no length to check against; they are read as far as declared.
    let file_len = meta.is_file().then_some(meta.len());
    let truncated = |what: &str| format_err(path, format!("truncated: {what}"));
    let read_exact = |file: &mut File, buf: &mut [u8], what: &str| match file.read_exact(buf) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(truncated(what)),
        other => other.map_err(io_err),
    };
    let mut prefix = [0u8; 8];
    read_exact(
        &mut file,
        &mut prefix,
        "shorter than the 8-byte header length",
    )?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER {
        return Err(format_err(
            path,
            format!("header length {header_len} is over the format's limit of {MAX_HEADER}"),
        ));
    }
    if file_len.is_some_and(|len| 8 + header_len > len) {
        return Err(truncated(&format!(
            "the header declares {header_len} bytes, the file holds {}",
            file_len.unwrap_or(0)
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    read_exact(&mut file, &mut header, "ends inside the header")?;
    let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| format_err(path, e))?;
    let data_len = metadata.data_len() as u64;
    let total = (8 + header_len)
        .checked_add(data_len)
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| format_err(path, "the declared tensor data overflows"))?;
    if let Some(len) = file_len {
        let held = len - 8 - header_len;
        if data_len > held {
            return Err(truncated(&format!(
                "the header declares {data_len} bytes of tensor data, the file holds {held}"
            )));
        }
        if data_len < held {
            let extra = held - data_len;
            return Err(format_err(
                path,
                format!("{extra} bytes follow the last tensor's data"),
            ));
        }
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(total)
        .map_err(|_| Error::TooLarge {
            what: format!("{}: reading", path.display()),
            needed: size::human(total as u64),
            limit: "what this process can allocate".into(),
        })?;
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&header);
    file.take(data_len)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() != total {
        return Err(truncated(&format!(
            "the header declares {data_len} bytes of tensor data, the file holds {}",
            bytes.len() - 8 - header.len()
        )));
    }
    Ok((bytes, metadata.metadata().clone().unwrap_or_default()))
}

impl TensorFile {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (bytes, metadata) = read_declared(path)?;
        // Checks what the header declares against the data (offsets, sizes, dtypes).
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

/// A tensor to write: a floating tensor (stored as f32) or int64 values with their shape.
#[derive(Clone, Copy)]
pub enum Data<'a> {
    Float(&'a Tensor),
    Int(&'a [i64], &'a [usize]),
}

impl Data<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Data::Float(t) => t.shape(),
            Data::Int(_, shape) => shape,
        }
    }

    fn numel(&self) -> usize {
        match self {
            Data::Float(t) => t.numel(),
            Data::Int(values, _) => values.len(),
        }
    }
}

/// The safetensors header for `tensors` (f32 or i64), in order, with `metadata`, padded to 8
/// bytes.
fn header(tensors: &[(&str, Data)], metadata: &[(String, String)]) -> Result<Vec<u8>> {
    let mut entries = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        if let Data::Int(values, shape) = t {
            if size::elements(name, shape)? != values.len() {
                return Err(Error::shape(
                    *name,
                    format!("{} values", values.len()),
                    shape,
                ));
            }
        }
        let (dtype, width) = match t {
            Data::Float(_) => ("F32", 4),
            Data::Int(..) => ("I64", 8),
        };
        let end = size::bytes(name, t.numel(), width)?
            .checked_add(offset)
            .ok_or_else(|| Error::TooLarge {
                what: "the output file".into(),
                needed: "more bytes".into(),
                limit: "a count can hold (2^64)".into(),
            })?;
        let entry =
            serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [offset, end]});
        // A repeated name or the format's own key would make a file nothing can read.
        if *name == "__metadata__" || entries.insert(name.to_string(), entry).is_some() {
            return Err(Error::Config(format!(
                "cannot save two tensors named {}, or one named __metadata__",
                quoted(name)
            )));
        }
        offset = end;
    }
    if !metadata.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        entries.insert("__metadata__".into(), serde_json::Value::Object(map));
    }
    let mut json = serde_json::to_vec(&entries).expect("a map of strings and numbers");
    json.resize(json.len().next_multiple_of(8), b' ');
    Ok(json)
}

/// `values` as little-endian bytes, a block at a time.
fn write_f32s(out: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    let mut block = Vec::with_capacity(4 << 14);
    for chunk in values.chunks(1 << 14) {
        block.clear();
        block.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        out.write_all(&block)?;
    }
    Ok(())
}

/// Writes tensors as f32 (converting from any dtype and device) to `path`, atomically: the
/// file appears whole or not at all, and an existing file is replaced only by a complete one.
pub fn save_f32(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let data: Vec<(&str, Data)> = tensors.iter().map(|(n, t)| (*n, Data::Float(t))).collect();
    save(path, &data, &[])
}

/// As `save_f32`, with int64 tensors beside the floating ones and `metadata` in the header
/// (what a checkpoint's vocabulary and configuration travel in).
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, Data)],
    metadata: &[(String, String)],
) -> Result<()> {
    let path = path.as_ref();
    let header = header(tensors, metadata)?;
    let tmp = Temporary::create(path)?;
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::with_capacity(1 << 20, tmp.file());
    out.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&header))
        .map_err(write_err)?;
    for (_, t) in tensors {
        let written = match t {
            Data::Float(t) => match t.host_slice::<f32>() {
                Ok(values) => write_f32s(&mut out, values),
                Err(_) => write_f32s(&mut out, &t.to_vec_f32()?),
            },
            Data::Int(values, _) => values.chunks(1 << 13).try_for_each(|c| {
                out.write_all(&c.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
            }),
        };
        written.map_err(write_err)?;
    }
    out.into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    tmp.persist(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_reader_could_not_tell_apart_are_refused() {
        let dir = std::env::temp_dir().join(format!("fused-rnn-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("y.safetensors");
        let t = Tensor::from_vec(vec![1.5f32, -2.0], &[2]).unwrap();
        for names in [["a", "a"], ["a", "__metadata__"]] {
            let tensors = [(names[0], &t), (names[1], &t)];
            assert!(save_f32(&path, &tensors).is_err(), "{names:?}");
            assert!(!path.exists());
        }
        save_f32(&path, &[("a", &t), ("b", &t)]).unwrap();
        let file = TensorFile::load(&path).unwrap();
        assert_eq!(file.float("b").unwrap().to_vec_f32().unwrap(), [1.5, -2.0]);
        let ids = [3i64, -1, 1 << 40];
        let meta = [("vocab".to_string(), "[\"a\"]".to_string())];
        save(
            &path,
            &[("t", Data::Float(&t)), ("ids", Data::Int(&ids, &[1, 3]))],
            &meta,
        )
        .unwrap();
        let file = TensorFile::load(&path).unwrap();
        assert_eq!(file.ints("ids").unwrap(), (ids.to_vec(), vec![1, 3]));
        assert_eq!(file.metadata("vocab"), Some("[\"a\"]"));
        assert!(save(&path, &[("ids", Data::Int(&ids, &[2, 2]))], &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
