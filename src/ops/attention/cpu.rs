//! CPU reference: the key projection as one GEMM per source (f32), then per (row, query) the
//! scores, a max-subtracted masked softmax and the weighted sum of values, accumulated in f64:
//! scores reach magnitudes in the hundreds, where f32 sums and a fast tanh lose the 1e-5 the
//! reference must hold.

use super::{Attended, Keys, Params, Score};
use crate::error::Result;
use crate::ops::gemm_cpu;
use crate::size;
use crate::tensor::Tensor;

fn values(t: &Tensor) -> Result<&[f32]> {
    t.host_slice::<f32>()
}

/// out[r, :] = x[r, :] · Wᵀ (+ b) for a weight W [n, k] (`rows` rows of x).
fn linear(x: &[f32], rows: usize, w: &Tensor, b: Option<&Tensor>) -> Result<Vec<f32>> {
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let b = b.map(values).transpose()?;
    let sizes = gemm_cpu::LinearSizes { rows, k, n };
    gemm_cpu::linear(&x[..rows * k], values(w)?, b, sizes)
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

/// Σ a·b in f64 over eight running sums: one sum is a chain of dependent adds that the
/// compiler may not reorder, eight let it vectorise.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut sums = [0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            sums[k] += x[k] as f64 * y[k] as f64;
        }
    }
    sums.iter().sum::<f64>() + tail
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
    let mut context = size::zeros::<f32>("context", batch * tq * dv)?;
    let mut weights = size::zeros::<f32>("attention weights", batch * tq * len)?;
    let (mut scores, mut ctx) = (vec![0f64; len], vec![0f64; dv]);
    for b in 0..batch {
        let n = keys.lengths[b];
        for t in 0..tq {
            let qrow = &qp[(b * tq + t) * kdim..(b * tq + t + 1) * kdim];
            for (j, e) in scores[..n].iter_mut().enumerate() {
                let krow = &kp[(b * len + j) * kdim..(b * len + j + 1) * kdim];
                *e = match v {
                    Some(v) => qrow
                        .iter()
                        .zip(krow)
                        .zip(v)
                        .map(|((&a, &c), &v)| (a as f64 + c as f64).tanh() * v as f64)
                        .sum(),
                    None => scale as f64 * dot(qrow, krow),
                };
            }
            // Subtracting the maximum keeps exp finite for any score magnitude.
            let max = scores[..n].iter().fold(f64::NEG_INFINITY, |m, &e| m.max(e));
            let mut total = 0f64;
            for e in &mut scores[..n] {
                *e = (*e - max).exp();
                total += *e;
            }
            ctx.fill(0.0);
            let w = &mut weights[(b * tq + t) * len..(b * tq + t + 1) * len];
            for (j, (e, w)) in scores[..n].iter().zip(w.iter_mut()).enumerate() {
                let p = e / total;
                *w = p as f32;
                let vrow = &vals[(b * len + j) * dv..(b * len + j + 1) * dv];
                for (c, &x) in ctx.iter_mut().zip(vrow) {
                    *c += p * x as f64;
                }
            }
            let out = &mut context[(b * tq + t) * dv..(b * tq + t + 1) * dv];
            for (o, &c) in out.iter_mut().zip(ctx.iter()) {
                *o = c as f32;
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
