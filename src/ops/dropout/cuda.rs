//! CUDA launcher of kernels/dropout.cu.

use super::Rate;
use crate::device::kernels::ids;
use crate::device::launch::{grid_stride, launch};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::Arc;

pub(super) fn apply(dev: &Arc<CudaDevice>, x: &Tensor, rate: Rate, seed: u64) -> Result<Tensor> {
    let n = x.numel();
    if n == 0 {
        return Tensor::from_cuda_data(dev.empty_data(x.dtype())?, x.shape(), dev);
    }
    let f = dev.function(ids::dropout::DROPOUT_APPLY, x.dtype())?;
    let stream = dev.stream();
    let out = dev.alloc_output_data(x.dtype(), n)?;
    let y = data_ptr(&out, stream);
    let (count, threshold, scale) = (n as u64, rate.threshold, rate.scale);
    reading(x.cuda_data()?, stream, |x| -> Result<()> {
        // SAFETY: x (the tensor's storage on `dev`) and y (allocated above) hold n elements of
        // the kernel's dtype; the kernel touches indices below n only (a thread per group of
        // four elements, grid-stride).
        unsafe {
            launch!(stream, &f, grid_stride(n.div_ceil(4)); x, y, count, seed, threshold, scale)
        };
        Ok(())
    })?;
    Tensor::from_cuda_data(out, x.shape(), dev)
}
