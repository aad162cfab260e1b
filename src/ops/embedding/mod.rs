//! A lookup table, PyTorch's nn.Embedding: `forward` gathers row ids[i] of weight [V, E] for
//! every id (y [ids.shape.., E]); `backward` sums grad_y's rows per id into a [V, E] gradient,
//! the padding id's row left zero (F.embedding's `padding_idx`).
//!
//! Ids are `Indices` (i32) on the weight's device. Host ids are checked on the host before
//! anything runs: an id outside 0..V is `Error::Index` naming its position (in the flattened
//! ids) and value. CUDA ids are never read by the host (a decoding loop keeps its tokens on the
//! device): the kernels do not follow a bad id — its output row is zeros and the backward adds
//! nothing for it — and record it in the device's error record, which
//! `CudaDevice::check_errors` turns into the same `Error::Index` (one small read, where the
//! caller chooses).
//!
//! The backward on CUDA adds with f32 atomics into an f32 accumulator (converted to the dtype
//! at the end), so with repeated ids the order of additions, and the last bits of the result,
//! may vary between runs. The CPU sums in f64.

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::size;
use crate::tensor::Tensor;

/// (V, E) of a table [V, E].
fn table(weight: &Tensor) -> Result<(usize, usize)> {
    match *weight.shape() {
        [vocab, dim] => Ok((vocab, dim)),
        _ => Err(Error::shape("weight", "[V, E]", weight.shape())),
    }
}

/// y [ids.shape.., E]: row ids[i] of weight [V, E] for every id. The ids on the weight's
/// device (see the module's notes for ids out of range on CUDA).
pub fn forward(weight: &Tensor, ids: &Indices) -> Result<Tensor> {
    let (vocab, dim) = table(weight)?;
    let device = weight.device();
    ids.check_on(&device, "ids")?;
    let shape = [ids.shape(), &[dim]].concat();
    size::elements("output", &shape)?;
    match device {
        Device::Cpu => cpu::forward(weight, ids, vocab, dim, &shape),
        Device::Cuda(dev) => cuda::forward(&dev, weight, ids, vocab, dim, &shape),
    }
}

/// The gradient of weight [vocab, E] for `forward(weight, ids)` given grad_y [ids.shape.., E]:
/// grad_y's rows summed per id, the `padding_idx` row zero. In grad_y's dtype, on its device
/// (the ids' too).
pub fn backward(
    ids: &Indices,
    grad_y: &Tensor,
    vocab: usize,
    padding_idx: Option<usize>,
) -> Result<Tensor> {
    let dim = match grad_y.shape().split_last() {
        Some((&dim, lead)) if lead == ids.shape() => dim,
        _ => {
            let want = format!(
                "{:?} + [E] (the ids' shape and the table's width)",
                ids.shape()
            );
            return Err(Error::shape("grad_y", want, grad_y.shape()));
        }
    };
    if let Some(p) = padding_idx.filter(|&p| p >= vocab) {
        return Err(Error::Config(format!(
            "padding_idx {p} is outside the vocabulary 0..{vocab}"
        )));
    }
    let device = grad_y.device();
    ids.check_on(&device, "ids")?;
    size::elements("the weight's gradient", &[vocab, dim])?;
    match device {
        Device::Cpu => cpu::backward(ids, grad_y, vocab, dim, padding_idx),
        Device::Cuda(dev) => cuda::backward(&dev, ids, grad_y, vocab, dim, padding_idx),
    }
}
