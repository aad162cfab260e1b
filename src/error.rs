//! The crate's one error type. Messages are single lines meant for users; NVRTC logs are kept
//! verbatim.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tensor}: expected shape {expected}, got {got:?}")]
    Shape {
        tensor: String,
        /// The expected shape, with names for the sizes that may vary (`[B, L, Dk]`).
        expected: String,
        got: Vec<usize>,
    },
    #[error("{tensor}: expected dtype {expected}, got {got}")]
    DType {
        tensor: String,
        expected: String,
        got: String,
    },
    /// An index (a token, a target, a row) outside the range it must fall in.
    #[error("{tensor}[{position}] = {value} is outside 0..{limit}")]
    Index {
        tensor: String,
        position: usize,
        value: i64,
        limit: usize,
    },
    #[error("{file}: missing tensor `{tensor}`")]
    MissingTensor { file: String, tensor: String },
    #[error("lengths: {0}")]
    Lengths(String),
    #[error("{0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write ({source})", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid safetensors file ({reason})", path.display())]
    Format { path: PathBuf, reason: String },
    /// A data set file, or an entry in one, that cannot be used: `location` names the file
    /// (and the entry), `reason` what is wrong.
    #[error("{location}: {reason}")]
    Data { location: String, reason: String },
    /// A value that is not finite where finite values are required; `index` is its position.
    #[error("{tensor}: contains {value} at {index:?}")]
    NonFinite {
        tensor: String,
        value: f32,
        index: Vec<usize>,
    },
    /// A size past what can be computed or allowed: `needed` and `limit` say how much.
    #[error("{what} needs {needed}, more than {limit}")]
    TooLarge {
        what: String,
        needed: String,
        limit: String,
    },
    /// A request that cannot be honoured here: an algorithm for a shape, device or kind that
    /// lacks it.
    #[error("{request}: {reason}")]
    Unsupported { request: String, reason: String },
    /// A kernel that ran but failed (not a driver call's error).
    #[error("kernel {kernel}: {reason}")]
    Kernel { kernel: String, reason: String },
    #[error("CUDA unavailable: {0}")]
    NoCuda(String),
    #[error("tensor is on {got} but the operation runs on {expected}")]
    DeviceMismatch { expected: String, got: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    #[error("cuBLASLt: {0}")]
    CublasLt(#[from] cudarc::cublaslt::result::CublasError),
    #[error("NVRTC: {0}")]
    Nvrtc(String),
}

impl Error {
    /// The first non-finite value of `values` (a tensor of shape `shape` named `tensor`) as an
    /// error, or Ok.
    pub fn check_finite(tensor: &str, values: &[f32], shape: &[usize]) -> Result<()> {
        let Some(flat) = values.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let mut index = vec![0; shape.len()];
        let mut rest = flat;
        for (i, &d) in index.iter_mut().zip(shape).rev() {
            *i = rest % d.max(1);
            rest /= d.max(1);
        }
        Err(Error::NonFinite {
            tensor: tensor.into(),
            value: values[flat],
            index,
        })
    }

    /// A shape error naming the tensor and both shapes.
    pub fn shape(tensor: impl Into<String>, expected: impl AsRef<str>, got: &[usize]) -> Self {
        Error::Shape {
            tensor: tensor.into(),
            expected: expected.as_ref().to_string(),
            got: got.to_vec(),
        }
    }
}

/// `text` (a name or value read from a file) in backquotes, with control and bidirectional
/// formatting characters escaped, so that an error message stays one line and cannot restyle
/// a terminal.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('`');
    for c in text.chars() {
        let bidi = matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// `message` with every control or bidirectional formatting character escaped: one line,
/// whatever it quotes.
pub fn one_line(message: &str) -> String {
    let quoted = quoted(message);
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_one_inert_line() {
        let evil = "evil\nsecond line \x1b[31mRED\x1b[0m\u{202e}";
        let q = quoted(evil);
        assert_eq!(q, "`evil\\nsecond line \\u{1b}[31mRED\\u{1b}[0m\\u{202e}`");
        assert!(!q.chars().any(|c| c.is_control()));
        assert_eq!(quoted("weight_ih_l0 ü"), "`weight_ih_l0 ü`");
        assert_eq!(one_line("a\tb"), "a\\tb");
    }

    #[test]
    fn check_finite_names_the_first_bad_index() {
        let mut v = vec![1.0f32; 24];
        assert!(Error::check_finite("x", &v, &[2, 3, 4]).is_ok());
        v[17] = f32::NAN;
        v[20] = f32::INFINITY;
        let e = Error::check_finite("x", &v, &[2, 3, 4]).unwrap_err();
        assert_eq!(e.to_string(), "x: contains NaN at [1, 1, 1]");
    }
}
