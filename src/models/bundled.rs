//! The checkpoints that ship with the crate, each trained by `fused-rnn train` (the commands
//! are in `data/checkpoints/README.md`) and checked against its sha256 before it is loaded.

pub use crate::io::Bundled;

/// Checkpoints are under 10 MB each.
const MAX_BYTES: u64 = 10 << 20;

/// The captioner of the digit scenes.
pub const CAPTIONER: Bundled = Bundled {
    relative: "data/checkpoints/captioner-digits.safetensors",
    sha256: "438390e4211536b06e6f3e328c6f8d8f3f0abe06fd721c5e40088fa58d2fb8e8",
    max_bytes: MAX_BYTES,
};

/// The date translator.
pub const TRANSLATOR: Bundled = Bundled {
    relative: "data/checkpoints/translator-dates.safetensors",
    sha256: "41dd14fc07b5f498ba32104e6e99f4b060e6a2ff9eb1e9d606f4a74cc99a8518",
    max_bytes: MAX_BYTES,
};
