//! Storage dtypes and the element types that carry them. Arithmetic is f32 everywhere.

use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

/// How tensor elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// The name used in kernel entry points, flags and messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The storage type's name in the kernels (kernels/common.cuh).
    pub fn kernel_type(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Every supported dtype, for sweeps.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::Config(format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))
            })
    }
}

/// Host storage, one variant per dtype.
#[derive(Debug, Clone)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// Device storage, one variant per dtype.
#[derive(Debug)]
pub enum CudaData {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// An element type that can be stored in a tensor.
pub trait Element:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + std::fmt::Debug + 'static
{
    const DTYPE: DType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn wrap_host(v: Vec<Self>) -> HostData;
    fn wrap_cuda(s: CudaSlice<Self>) -> CudaData;
    fn host(d: &HostData) -> Option<&Vec<Self>>;
    fn host_mut(d: &mut HostData) -> Option<&mut Vec<Self>>;
    fn cuda(d: &CudaData) -> Option<&CudaSlice<Self>>;
    fn cuda_mut(d: &mut CudaData) -> Option<&mut CudaSlice<Self>>;
    fn into_cuda(d: CudaData) -> Option<CudaSlice<Self>>;
}

macro_rules! element {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn from_f32(x: f32) -> Self {
                $from(x)
            }
            fn to_f32(self) -> f32 {
                $to(self)
            }
            fn wrap_host(v: Vec<Self>) -> HostData {
                HostData::$variant(v)
            }
            fn wrap_cuda(s: CudaSlice<Self>) -> CudaData {
                CudaData::$variant(s)
            }
            fn host(d: &HostData) -> Option<&Vec<Self>> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn host_mut(d: &mut HostData) -> Option<&mut Vec<Self>> {
                match d {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn cuda(d: &CudaData) -> Option<&CudaSlice<Self>> {
                match d {
                    CudaData::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn cuda_mut(d: &mut CudaData) -> Option<&mut CudaSlice<Self>> {
                match d {
                    CudaData::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn into_cuda(d: CudaData) -> Option<CudaSlice<Self>> {
                match d {
                    CudaData::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32, |x| x, |x| x);
element!(f16, F16, f16::from_f32, f16::to_f32);
element!(bf16, BF16, bf16::from_f32, bf16::to_f32);

/// Runs `$body` with `$T` bound to the element type of `$dtype`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
        }
    };
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_f32(&self) -> Vec<f32> {
        with_dtype!(self.dtype(), T => T::host(self).unwrap().iter().map(|x| x.to_f32()).collect())
    }

    pub fn from_f32(values: &[f32], dtype: DType) -> HostData {
        with_dtype!(dtype, T => T::wrap_host(values.iter().map(|&x| T::from_f32(x)).collect()))
    }
}

impl CudaData {
    pub fn dtype(&self) -> DType {
        match self {
            CudaData::F32(_) => DType::F32,
            CudaData::F16(_) => DType::F16,
            CudaData::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CudaData::F32(s) => s.len(),
            CudaData::F16(s) => s.len(),
            CudaData::BF16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
