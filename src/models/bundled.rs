//! The checkpoints that ship with the crate, each trained by `fused-rnn train` (the commands
//! are in `data/checkpoints/README.md`) and checked against its sha256 before it is loaded.

use crate::data::digits::sha256_hex;
use crate::error::{one_line, Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A bundled checkpoint: where it lies in the crate and what its bytes hash to.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The path under the crate's root.
    pub relative: &'static str,
    pub sha256: &'static str,
}

/// The captioner of the digit scenes.
pub const CAPTIONER: Bundled = Bundled {
    relative: "data/checkpoints/captioner-digits.safetensors",
    sha256: "438390e4211536b06e6f3e328c6f8d8f3f0abe06fd721c5e40088fa58d2fb8e8",
};

/// The date translator.
pub const TRANSLATOR: Bundled = Bundled {
    relative: "data/checkpoints/translator-dates.safetensors",
    sha256: "41dd14fc07b5f498ba32104e6e99f4b060e6a2ff9eb1e9d606f4a74cc99a8518",
};

/// A bundled file larger than this is not one of ours (each is under 10 MB).
const MAX_FILE: u64 = 10 << 20;

impl Bundled {
    /// The file in the crate's source tree or, when the tree has moved (a binary run
    /// elsewhere), under the working directory.
    pub fn path(&self) -> PathBuf {
        let in_crate = Path::new(env!("CARGO_MANIFEST_DIR")).join(self.relative);
        if !in_crate.is_file() && Path::new(self.relative).is_file() {
            return PathBuf::from(self.relative);
        }
        in_crate
    }

    /// The path, once the file's sha256 is checked.
    pub fn checked(&self) -> Result<PathBuf> {
        let path = self.path();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .map_err(io)?
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let hash = sha256_hex(&bytes);
        if hash != self.sha256 {
            return Err(Error::Data {
                location: one_line(&path.display().to_string()),
                reason: format!(
                    "sha256 {hash}, expected {} (a corrupted, truncated or different file)",
                    self.sha256
                ),
            });
        }
        Ok(path)
    }
}
