//! Softmax cross-entropy over a vocabulary, loss and gradient in one pass per row: the targets
//! checked here, then `cpu.rs` (f64 sums) or `cuda.rs` (one launch for every row, one for the
//! mean).

mod cpu;
mod cuda;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The mean loss over the rows whose target is not ignored, and its gradient.
pub struct Loss {
    pub value: f32,
    /// Rows that counted.
    pub rows: usize,
    /// d loss / d logits [N, V]: (softmax − one-hot) / rows, zero on ignored rows; on the logits'
    /// device, in their dtype.
    pub grad: Tensor,
}

/// PyTorch's `cross_entropy(logits, targets, ignore_index=ignore, reduction="mean")` for
/// logits [N, V] and N targets; a target outside 0..V that is not `ignore` is an error. With no
/// row counted the loss is 0 (PyTorch gives NaN).
///
/// CUDA logits (f32, f16 or bf16; N, V ≥ 1) take one launch for every row's loss and gradient
/// (f32 math) and one for the mean (f64 sum); targets are checked here before they are copied.
pub fn softmax_cross_entropy(logits: &Tensor, targets: &[i64], ignore: i64) -> Result<Loss> {
    let &[n, vocab] = logits.shape() else {
        return Err(Error::shape("logits", "[N, V]", logits.shape()));
    };
    if targets.len() != n {
        return Err(Error::shape("targets", format!("[{n}]"), &[targets.len()]));
    }
    if let Some((position, &value)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != ignore && !(0..vocab as i64).contains(&t))
    {
        return Err(Error::Index {
            tensor: format!("targets (ignore index {ignore})"),
            position,
            value,
            limit: vocab,
        });
    }
    let rows = targets.iter().filter(|&&t| t != ignore).count();
    if logits.is_cuda() {
        let (value, grad) = cuda::softmax_cross_entropy(logits, targets, ignore, rows)?;
        return Ok(Loss { value, rows, grad });
    }
    cpu::softmax_cross_entropy(logits, targets, ignore, rows)
}
