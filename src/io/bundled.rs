//! Files that ship with the crate (digits, checkpoints), found in its source tree or, when the
//! tree has moved (a binary run elsewhere), under the working directory, and read only once
//! their sha256 is the one recorded here.

use crate::error::{one_line, Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A bundled file: where it lies in the crate and what its bytes hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundled {
    /// The path under the crate's root.
    pub relative: &'static str,
    pub sha256: &'static str,
    /// A file larger than this many bytes is not this one, and is not read to its end.
    pub max_bytes: u64,
}

impl Bundled {
    /// The file in the crate's source tree (under the crate root at build time).
    pub fn in_crate(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(self.relative)
    }

    /// The file in the crate's source tree or, when the tree has moved, under the working
    /// directory.
    pub fn path(&self) -> PathBuf {
        let in_crate = self.in_crate();
        if !in_crate.is_file() && Path::new(self.relative).is_file() {
            return PathBuf::from(self.relative);
        }
        in_crate
    }

    /// The path, once the file's sha256 is checked.
    pub fn checked(&self) -> Result<PathBuf> {
        let path = self.path();
        self.read(&path)?;
        Ok(path)
    }

    /// The bytes at `path` (this file or a copy of it), once their sha256 is this file's.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let location = || one_line(&path.display().to_string());
        let mut bytes = Vec::new();
        // At most one byte past the limit: a device or a huge file is refused, not read.
        std::fs::File::open(path)
            .map_err(io)?
            .take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(Error::Data {
                location: location(),
                reason: format!(
                    "larger than {} bytes: not {}",
                    self.max_bytes, self.relative
                ),
            });
        }
        let hash = sha256_hex(&bytes);
        if hash != self.sha256 {
            return Err(Error::Data {
                location: location(),
                reason: format!(
                    "sha256 {hash}, expected {} (a corrupted, truncated or different file)",
                    self.sha256
                ),
            });
        }
        Ok(bytes)
    }
}

/// The sha256 of `bytes` in lower-case hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
