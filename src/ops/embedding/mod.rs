//! A lookup table, PyTorch's nn.Embedding: `forward` gathers row ids[i] of weight [V, E] for
//! every id (y [ids.shape.., E]); `backward` sums grad_y's rows per id into a [V, E] gradient,
//! the padding id's row left zero (F.embedding's `padding_idx`).
//!
//! Ids are `Indices` (i32) on the weight's device. On the CPU an id outside [0, V) is an error
//! before any work. On CUDA the ids are not read back before the kernels run (that would wait
//! for the device on every call): an id out of range gathers a row of zeros and adds no
//! gradient, and nothing is read or written out of bounds. `check_ids` gives the CPU's error
//! for CUDA ids too (one small kernel and a read back of a flag); call it where ids come from
//! outside (a data set, a user) rather than from the model's own argmax.

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::size;
use crate::tensor::Tensor;

/// Ids on `device` (the same CUDA context for CUDA devices).
fn check_ids_on(ids: &Indices, device: &Device) -> Result<()> {
    let same = match (&ids.device(), device) {
        (Device::Cpu, Device::Cpu) => true,
        (Device::Cuda(a), Device::Cuda(b)) => a.context().cu_ctx() == b.context().cu_ctx(),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            expected: device.name(),
            got: format!("ids on {}", ids.device().name()),
        })
    }
}

/// The error for id `id` at flat position `position` of the ids.
fn out_of_range(position: usize, id: i32, vocab: usize) -> Error {
    Error::Index {
        tensor: "ids".into(),
        position,
        value: id.into(),
        limit: vocab,
    }
}

/// The first id outside [0, vocab) of host ids, as an error.
fn check_host_ids(ids: &[i32], vocab: usize) -> Result<()> {
    match ids
        .iter()
        .position(|&id| usize::try_from(id).map_or(true, |id| id >= vocab))
    {
        Some(flat) => Err(out_of_range(flat, ids[flat], vocab)),
        None => Ok(()),
    }
}

/// `Error::Index` for the first id outside [0, vocab) (its position in the flattened ids). Host ids are checked here;
/// CUDA ids by a kernel whose one-flag result is read back (this waits for the device).
pub fn check_ids(ids: &Indices, vocab: usize) -> Result<()> {
    match ids.device() {
        Device::Cpu => check_host_ids(ids.host_slice()?, vocab),
        Device::Cuda(dev) => {
            if cuda::any_out_of_range(&dev, ids, vocab)? {
                check_host_ids(&ids.to_vec()?, vocab)
            } else {
                Ok(())
            }
        }
    }
}

/// (V, E) of a table [V, E].
fn table(weight: &Tensor) -> Result<(usize, usize)> {
    match *weight.shape() {
        [vocab, dim] => Ok((vocab, dim)),
        _ => Err(Error::shape("weight", "[V, E]", weight.shape())),
    }
}

/// y [ids.shape.., E]: row ids[i] of weight [V, E] for every id. The ids on the weight's
/// device (see the module's notes for ids out of range).
pub fn forward(weight: &Tensor, ids: &Indices) -> Result<Tensor> {
    let (vocab, dim) = table(weight)?;
    let device = weight.device();
    check_ids_on(ids, &device)?;
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
    check_ids_on(ids, &device)?;
    size::elements("the weight's gradient", &[vocab, dim])?;
    match device {
        Device::Cpu => cpu::backward(ids, grad_y, vocab, dim, padding_idx),
        Device::Cuda(dev) => cuda::backward(&dev, ids, grad_y, vocab, dim, padding_idx),
    }
}
