//! Raw device addresses for kernel and cuBLAS arguments. Launches take addresses (not slices)
//! so that offsets into a buffer (a direction's columns, a layer's state slot) cost nothing;
//! every launch site states in a `SAFETY:` line why its addresses and sizes are valid.

use crate::dtype::{CudaData, DType};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

/// The device address of `slice`.
pub(crate) fn dev_ptr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    slice.device_ptr(stream).0
}

/// The device address of `data`, whatever its dtype.
pub(crate) fn data_ptr(data: &CudaData, stream: &CudaStream) -> u64 {
    match data {
        CudaData::F32(s) => dev_ptr(s, stream),
        CudaData::F16(s) => dev_ptr(s, stream),
        CudaData::BF16(s) => dev_ptr(s, stream),
    }
}

/// A row-major matrix operand: device address, leading dimension (elements), dtype.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef {
    pub ptr: u64,
    pub ld: usize,
    pub dtype: DType,
}

impl MatRef {
    pub fn of(data: &CudaData, ld: usize, stream: &CudaStream) -> Self {
        MatRef {
            ptr: data_ptr(data, stream),
            ld,
            dtype: data.dtype(),
        }
    }
}

/// Runs `f` with the address of `data` for reading on `stream`, and records the read for
/// cudarc's cross-stream tracking after `f` has enqueued its work (a buffer from another
/// stream is then not freed before that work ran).
pub(crate) fn reading<R>(data: &CudaData, stream: &CudaStream, f: impl FnOnce(u64) -> R) -> R {
    match data {
        CudaData::F32(s) => {
            let (ptr, _record) = s.device_ptr(stream);
            f(ptr)
        }
        CudaData::F16(s) => {
            let (ptr, _record) = s.device_ptr(stream);
            f(ptr)
        }
        CudaData::BF16(s) => {
            let (ptr, _record) = s.device_ptr(stream);
            f(ptr)
        }
    }
}

/// As `reading`, for a buffer `f` writes: later readers on other streams wait for the write.
pub(crate) fn writing<R>(data: &mut CudaData, stream: &CudaStream, f: impl FnOnce(u64) -> R) -> R {
    match data {
        CudaData::F32(s) => {
            let (ptr, _record) = s.device_ptr_mut(stream);
            f(ptr)
        }
        CudaData::F16(s) => {
            let (ptr, _record) = s.device_ptr_mut(stream);
            f(ptr)
        }
        CudaData::BF16(s) => {
            let (ptr, _record) = s.device_ptr_mut(stream);
            f(ptr)
        }
    }
}
