//! The CPU reference: f32 logits, each exponential once (the vectorised f32 exp, within 3e-7
//! relative), sums in f64.

use super::Loss;
use crate::error::Result;
use crate::ops::math_cpu::exp;
use crate::tensor::Tensor;

/// The loss and gradient of host logits [n, vocab] whose targets were checked and of which
/// `rows` count.
pub(super) fn softmax_cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    ignore: i64,
    rows: usize,
) -> Result<Loss> {
    let (n, vocab) = (logits.shape()[0], logits.shape()[1]);
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
        // e^(x − max) into the gradient row, its sum, then softmax − one-hot.
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for (gj, &v) in g.iter_mut().zip(row) {
            *gj = exp(v - max);
        }
        let sum: f64 = g.iter().map(|&e| e as f64).sum();
        total += max as f64 + sum.ln() - row[t as usize] as f64;
        let factor = (scale / sum) as f32;
        g.iter_mut().for_each(|gj| *gj *= factor);
        g[t as usize] -= scale as f32;
    }
    Ok(Loss {
        value: (total * scale) as f32,
        rows,
        grad: Tensor::from_vec(grad, &[n, vocab])?,
    })
}
