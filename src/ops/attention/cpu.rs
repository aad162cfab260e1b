//! CPU reference, f32: the key projection as one GEMM per source, then per (row, query) the
//! scores, a max-subtracted masked softmax, and the weighted sum of values.

use super::{Attended, Keys, Params, Score};
use crate::error::Result;
use crate::ops::gemm_cpu::{gemm_ab, transpose};
use crate::ops::math_cpu::{exp, tanh};
use crate::tensor::Tensor;

fn values(t: &Tensor) -> Result<&[f32]> {
    t.host_slice::<f32>()
}

/// out[r, :] = x[r, :] · Wᵀ (+ b) for a row-major weight W [n, k].
fn linear(x: &[f32], rows: usize, w: &Tensor, b: Option<&Tensor>) -> Result<Vec<f32>> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let wt = transpose(values(w)?, n, k);
    let mut out = vec![0f32; rows * n];
    if let Some(b) = b {
        let b = values(b)?;
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(b);
        }
    }
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    gemm_ab(rows, n, k, x, k, &wt, n, &mut out, n, beta, usize::MAX);
    Ok(out)
}

/// The key side of `score`, once per source: keys [B, L, Dk] → [B, L, K].
pub(crate) fn project_keys(score: Score, params: &Params, keys: &Tensor) -> Result<Tensor> {
    let &[b, l, dk] = keys.shape() else {
        unreachable!("checked by the layer")
    };
    let k = values(keys)?;
    match (score, &params.w_k) {
        (Score::Dot { .. }, _) | (_, None) => Tensor::from_vec(k.to_vec(), &[b, l, dk]),
        (_, Some(w)) => {
            let out = linear(k, b * l, w, params.b_k.as_ref())?;
            Tensor::from_vec(out, &[b, l, w.shape()[0]])
        }
    }
}

/// Attends every query of `query` [B, Tq, Dq] over `keys`.
pub(crate) fn attend(
    score: Score,
    params: &Params,
    keys: &Keys,
    query: &Tensor,
    want_weights: bool,
) -> Result<Attended> {
    let &[batch, tq, _] = query.shape() else {
        unreachable!("checked by the layer")
    };
    let (len, dv) = (keys.len(), keys.value_size());
    let kdim = keys.projected.shape()[2];
    let q = values(query)?;
    let kp = values(&keys.projected)?;
    let vals = values(&keys.values)?;
    // The query side: W_q q + b_q for additive scores, the query itself otherwise.
    let qp = match (score, &params.w_q) {
        (Score::Additive, Some(w)) => linear(q, batch * tq, w, params.b_q.as_ref())?,
        _ => q.to_vec(),
    };
    let v = match (score, &params.v) {
        (Score::Additive, Some(v)) => Some(values(v)?),
        _ => None,
    };
    let scale = match score {
        Score::Dot { scale } => scale,
        _ => 1.0,
    };
    let mut context = vec![0f32; batch * tq * dv];
    let mut weights = vec![0f32; batch * tq * len];
    let mut sum = vec![0f32; kdim];
    for b in 0..batch {
        let n = keys.lengths[b];
        for t in 0..tq {
            let qrow = &qp[(b * tq + t) * kdim..(b * tq + t + 1) * kdim];
            let w = &mut weights[(b * tq + t) * len..(b * tq + t + 1) * len];
            for (j, e) in w[..n].iter_mut().enumerate() {
                let krow = &kp[(b * len + j) * kdim..(b * len + j + 1) * kdim];
                *e = match v {
                    Some(v) => {
                        for ((s, &a), &c) in sum.iter_mut().zip(qrow).zip(krow) {
                            *s = tanh(a + c);
                        }
                        sum.iter().zip(v).map(|(s, v)| s * v).sum()
                    }
                    None => scale * qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f32>(),
                };
            }
            // Subtracting the maximum keeps exp finite for any score magnitude.
            let max = w[..n].iter().fold(f32::NEG_INFINITY, |m, &e| m.max(e));
            let mut total = 0f32;
            for e in &mut w[..n] {
                *e = exp(*e - max);
                total += *e;
            }
            let ctx = &mut context[(b * tq + t) * dv..(b * tq + t + 1) * dv];
            for (j, e) in w[..n].iter_mut().enumerate() {
                *e /= total;
                let vrow = &vals[(b * len + j) * dv..(b * len + j + 1) * dv];
                for (c, &x) in ctx.iter_mut().zip(vrow) {
                    *c += *e * x;
                }
            }
        }
    }
    Ok(Attended {
        context: Tensor::from_vec(context, &[batch, tq, dv])?,
        weights: want_weights
            .then(|| Tensor::from_vec(weights, &[batch, tq, len]))
            .transpose()?,
    })
}
