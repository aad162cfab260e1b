//! The crate's one error type. Messages are single lines meant for users; NVRTC logs are kept
//! verbatim.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tensor}: expected shape {expected}, got {got}")]
    Shape {
        tensor: String,
        expected: String,
        got: String,
    },
    #[error("{tensor}: expected dtype {expected}, got {got}")]
    DType {
        tensor: String,
        expected: String,
        got: String,
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
    #[error("{}: not a valid safetensors file ({reason})", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("CUDA unavailable: {0}")]
    NoCuda(String),
    #[error("tensor is on {got} but the operation runs on {expected}")]
    DeviceMismatch { expected: String, got: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    #[error("NVRTC: {0}")]
    Nvrtc(String),
}

impl Error {
    /// A shape error naming the tensor and both shapes.
    pub fn shape(tensor: impl Into<String>, expected: impl AsRef<str>, got: &[usize]) -> Self {
        Error::Shape {
            tensor: tensor.into(),
            expected: expected.as_ref().to_string(),
            got: format!("{got:?}"),
        }
    }
}
