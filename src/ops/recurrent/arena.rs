//! Device buffers that a CUDA pass owns and reaches only through their addresses (launches take
//! addresses, see `device::ptr`). Dropping the arena frees them in stream order, after the work
//! enqueued on them.

use crate::device::{data_ptr, dev_ptr, reading, CudaDevice};
use crate::dtype::{CudaData, DType, Element};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;

pub(super) struct Arena<'a> {
    dev: &'a CudaDevice,
    f32s: Vec<CudaSlice<f32>>,
    data: Vec<CudaData>,
}

/// What an arena owned, kept for as long as its addresses are used.
pub(super) type Buffers = (Vec<CudaSlice<f32>>, Vec<CudaData>);

impl<'a> Arena<'a> {
    pub fn new(dev: &'a CudaDevice) -> Self {
        Arena {
            dev,
            f32s: Vec::new(),
            data: Vec::new(),
        }
    }

    fn keep_f32(&mut self, buf: CudaSlice<f32>) -> u64 {
        let ptr = dev_ptr(&buf, self.dev.stream());
        self.f32s.push(buf);
        ptr
    }

    fn keep_data(&mut self, buf: CudaData) -> u64 {
        let ptr = data_ptr(&buf, self.dev.stream());
        self.data.push(buf);
        ptr
    }

    /// `len` f32 elements that are written before they are read (NaN-filled when poisoning).
    pub fn f32(&mut self, len: usize) -> Result<u64> {
        let buf = self.dev.alloc_output::<f32>(len)?;
        Ok(self.keep_f32(buf))
    }

    /// `len` f32 zeros.
    pub fn f32_zeros(&mut self, len: usize) -> Result<u64> {
        let buf = self.dev.stream().alloc_zeros::<f32>(len.max(1))?;
        Ok(self.keep_f32(buf))
    }

    /// A copy of `host`.
    pub fn upload(&mut self, host: &[f32]) -> Result<u64> {
        let buf = self.dev.upload(host)?;
        Ok(self.keep_f32(buf))
    }

    /// `len` elements of `dtype` that are written before they are read.
    pub fn data(&mut self, dtype: DType, len: usize) -> Result<u64> {
        let buf = self.dev.alloc_output_data(dtype, len)?;
        Ok(self.keep_data(buf))
    }

    /// `len` zeros of `dtype`.
    pub fn data_zeros(&mut self, dtype: DType, len: usize) -> Result<u64> {
        let stream = self.dev.stream();
        let buf =
            crate::with_dtype!(dtype, T => T::wrap_cuda(stream.alloc_zeros::<T>(len.max(1))?));
        Ok(self.keep_data(buf))
    }

    /// A copy of a caller's tensor, taken in stream order: the caller may free theirs, on any
    /// stream, as soon as the call returns.
    pub fn copy_of(&mut self, t: &Tensor) -> Result<u64> {
        let ptr = self.data(t.dtype(), t.numel())?;
        let bytes = t.numel() * t.dtype().size_in_bytes();
        // SAFETY: `ptr` was just allocated with the tensor's size and dtype.
        reading(t.cuda_data()?, self.dev.stream(), |src| unsafe {
            self.dev.copy_async(ptr, src, bytes)
        })?;
        Ok(ptr)
    }

    pub fn into_buffers(self) -> Buffers {
        (self.f32s, self.data)
    }
}
