//! The softmax cross-entropy's CUDA launcher (kernels/train.cu): every row's loss and gradient
//! in one launch, and one for the mean.

use crate::device::kernels::ids;
use crate::device::launch::{blocks, launch};
use crate::device::{data_ptr, dev_ptr, reading};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `softmax_cross_entropy` for CUDA logits [n, vocab] whose targets were checked and of which
/// `rows` count: the mean loss and its gradient, on the logits' device in their dtype.
pub(super) fn softmax_cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    ignore: i64,
    rows: usize,
) -> Result<(f32, Tensor)> {
    let &[n, vocab] = logits.shape() else {
        return Err(Error::shape("logits", "[N, V]", logits.shape()));
    };
    if n == 0 || vocab == 0 {
        return Err(Error::shape(
            "logits",
            "[N, V] with N, V > 0 on CUDA",
            &[n, vocab],
        ));
    }
    if n > i32::MAX as usize || vocab > i32::MAX as usize {
        return Err(Error::Config(format!(
            "logits [{n}, {vocab}] are too large for the CUDA cross-entropy (at most {} rows and \
             columns)",
            i32::MAX
        )));
    }
    let src = logits.cuda_data()?;
    let dev = logits.cuda_device()?;
    let dtype = logits.dtype();
    let stream = dev.stream();
    let targets_dev = dev.upload(targets)?;
    let grad = dev.alloc_output_data(dtype, n * vocab)?;
    let losses = dev.alloc_output::<f32>(n)?;
    let mean = dev.alloc_output::<f32>(1)?;
    let fused = dev.function(ids::train::CROSS_ENTROPY_FUSED, dtype)?;
    let combine = dev.function(ids::train::CROSS_ENTROPY_MEAN, DType::F32)?;
    let (targets_ptr, grad_ptr) = (dev_ptr(&targets_dev, stream), data_ptr(&grad, stream));
    let (losses_ptr, mean_ptr) = (dev_ptr(&losses, stream), dev_ptr(&mean, stream));
    let (rows_i, vocab_i) = (n as i32, vocab as i32);
    let scale = 1.0 / rows.max(1) as f64;
    let scale_f32 = scale as f32;
    reading(src, stream, |x| -> Result<()> {
        // SAFETY: logits and grad hold n·vocab elements of `dtype`, targets and losses n
        // elements, mean one; every target is `ignore` or in 0..vocab (checked by the caller).
        unsafe {
            launch!(dev.stream(), &fused, blocks(n);
                x, targets_ptr, grad_ptr, losses_ptr, vocab_i, ignore, scale_f32);
            launch!(dev.stream(), &combine, blocks(1); losses_ptr, rows_i, scale, mean_ptr);
        }
        Ok(())
    })?;
    let value = stream.clone_dtoh(&mean)?[0];
    Ok((value, Tensor::from_cuda_data(grad, &[n, vocab], dev)?))
}
