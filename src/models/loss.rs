//! The captioning loss of "Show, Attend and Tell": cross-entropy over every caption token (the
//! mean over the batch's tokens, as `DecoderWithAttention`'s training packs them) plus the doubly
//! stochastic attention penalty λ·mean_b,l (1 − Σ_t α_tl)², which asks every key to be attended
//! about once over the caption.

use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::tensor::Tensor;
use crate::train::softmax_cross_entropy;

/// Ignored targets: steps past a row's caption.
const IGNORE: i64 = -1;

pub struct CaptionLoss {
    /// cross_entropy + penalty
    pub value: f32,
    pub cross_entropy: f32,
    pub penalty: f32,
    /// Tokens the cross-entropy averaged over.
    pub tokens: usize,
    /// [B, S, V]
    pub grad_logits: Tensor,
    /// [B, S, L]; none when λ is 0.
    pub grad_alphas: Option<Tensor>,
}

/// The targets [B·S] of teacher forcing: captions[b, t + 1] for t < lengths[b] − 1, else ignored.
pub fn targets(captions: &Indices, lengths: &[usize], steps: usize) -> Result<Vec<i64>> {
    let &[batch, t] = captions.shape() else {
        return Err(Error::shape("captions", "[B, T]", captions.shape()));
    };
    if lengths.len() != batch || lengths.iter().any(|&n| n < 2 || n > t || n - 1 > steps) {
        return Err(Error::Lengths(format!(
            "{lengths:?} do not fit captions of {t} tokens decoded for {steps} steps"
        )));
    }
    let ids = captions.to_vec()?;
    let mut out = vec![IGNORE; batch * steps];
    for (b, &n) in lengths.iter().enumerate() {
        for s in 0..n - 1 {
            out[b * steps + s] = ids[b * t + s + 1] as i64;
        }
    }
    Ok(out)
}

/// The loss of a teacher-forced decoder output, `logits` [B, S, V] and `alphas` [B, S, L],
/// against `captions` [B, T] with `lengths` (counting `<start>` and `<end>`), with the
/// attention penalty weighted by `alpha_c` (λ; 1 in the paper's code).
pub fn caption_loss(
    logits: Tensor,
    alphas: &Tensor,
    captions: &Indices,
    lengths: &[usize],
    alpha_c: f32,
) -> Result<CaptionLoss> {
    let &[batch, steps, vocab] = logits.shape() else {
        return Err(Error::shape("logits", "[B, S, V]", logits.shape()));
    };
    let &[_, _, keys] = alphas.shape() else {
        return Err(Error::shape("alphas", "[B, S, L]", alphas.shape()));
    };
    if alphas.shape()[..2] != [batch, steps] {
        let want = format!("[{batch}, {steps}, L]");
        return Err(Error::shape("alphas", want, alphas.shape()));
    }
    let targets = targets(captions, lengths, steps)?;
    let (dtype, device) = (logits.dtype(), logits.device());
    let ce = softmax_cross_entropy(&logits.reshape(&[batch * steps, vocab])?, &targets, IGNORE)?;
    let grad_logits = ce.grad.reshape(&[batch, steps, vocab])?;
    let mut penalty = 0.0;
    let grad_alphas = if alpha_c != 0.0 {
        let a = alphas.to_vec_f32()?;
        let mut sums = vec![0f64; batch * keys];
        for b in 0..batch {
            for t in 0..steps {
                for l in 0..keys {
                    sums[b * keys + l] += a[(b * steps + t) * keys + l] as f64;
                }
            }
        }
        let count = (batch * keys).max(1) as f64;
        penalty =
            (alpha_c as f64 * sums.iter().map(|s| (1.0 - s).powi(2)).sum::<f64>() / count) as f32;
        let mut g = vec![0f32; batch * steps * keys];
        for b in 0..batch {
            for t in 0..lengths[b] - 1 {
                for l in 0..keys {
                    g[(b * steps + t) * keys + l] =
                        (alpha_c as f64 * 2.0 * (sums[b * keys + l] - 1.0) / count) as f32;
                }
            }
        }
        Some(Tensor::from_f32(&g, &[batch, steps, keys], dtype)?.to(&device, dtype)?)
    } else {
        None
    };
    Ok(CaptionLoss {
        value: ce.value + penalty,
        cross_entropy: ce.value,
        penalty,
        tokens: ce.rows,
        grad_logits,
        grad_alphas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_penalty_and_its_gradient_match_the_formula() {
        // B = 1, S = 2, L = 2, V = 3; the caption has one step (lengths 2): the second step's
        // attention is zero, as the decoder leaves it.
        let logits = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.0, 0.0, 0.0], &[1, 2, 3]).unwrap();
        let alphas = Tensor::from_vec(vec![0.25f32, 0.75, 0.0, 0.0], &[1, 2, 2]).unwrap();
        let captions = Indices::from_vec(vec![1, 2, 0], &[1, 3]).unwrap();
        let loss = caption_loss(logits, &alphas, &captions, &[2], 2.0).unwrap();
        // λ·mean((1 − 0.25)², (1 − 0.75)²) = 2·(0.5625 + 0.0625)/2
        assert!((loss.penalty - 0.625).abs() < 1e-6);
        let lse = (0.5f64.exp() + (-1f64).exp() + 2f64.exp()).ln();
        assert!((loss.cross_entropy as f64 - (lse - 2.0)).abs() < 1e-6);
        assert_eq!(loss.tokens, 1);
        let g = loss.grad_alphas.unwrap().to_vec_f32().unwrap();
        // dλ·mean/dα_l = λ·2(Σ_t α_l − 1)/(B·L), on the row's steps only.
        assert_eq!(g, [-1.5, -0.5, 0.0, 0.0]);
        let gl = loss.grad_logits.to_vec_f32().unwrap();
        assert!(gl[3..].iter().all(|&x| x == 0.0));
    }
}
