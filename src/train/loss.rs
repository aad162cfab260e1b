//! Softmax cross-entropy over a vocabulary, loss and gradient in one pass per row.

use super::cuda;
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
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != ignore && !(0..vocab as i64).contains(&t))
    {
        return Err(Error::Config(format!(
            "target {bad} is outside 0..{vocab} and not the ignore index {ignore}"
        )));
    }
    let rows = targets.iter().filter(|&&t| t != ignore).count();
    if logits.is_cuda() {
        let (value, grad) = cuda::softmax_cross_entropy(logits, targets, ignore, rows)?;
        return Ok(Loss { value, rows, grad });
    }
    let x = logits.host_slice::<f32>()?;
    let scale = 1.0 / rows.max(1) as f64;
    let mut grad = vec![0f32; n * vocab];
    let mut total = 0f64;
    // max(1): with no columns there are no rows to walk (every target was the ignore index).
    for ((row, g), &t) in x
        .chunks_exact(vocab.max(1))
        .zip(grad.chunks_exact_mut(vocab.max(1)))
        .zip(targets)
    {
        if t == ignore {
            continue;
        }
        // log-sum-exp with the maximum subtracted, then softmax − one-hot, in one pass.
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_z = max + sum.ln();
        total += log_z - row[t as usize] as f64;
        for (gj, &v) in g.iter_mut().zip(row) {
            *gj = ((v as f64 - log_z).exp() * scale) as f32;
        }
        g[t as usize] -= scale as f32;
    }
    Ok(Loss {
        value: (total * scale) as f32,
        rows,
        grad: Tensor::from_vec(grad, &[n, vocab])?,
    })
}
