//! Attention's backward on the CPU, in f64: the gradients of Σ context ⊙ grad_context with
//! respect to the query, the keys, the values and the parameters. The scores and weights are
//! recomputed from the inputs (as flash attention does) rather than kept from the forward:
//! they cost one pass over the keys, and a decoder then keeps nothing per step.

use super::Score;
use crate::error::Result;
use crate::ops::gemm_cpu::{linear, linear_backward, LinearSizes};

/// A bias that may be absent (empty).
fn bias(b: &[f64]) -> Option<&[f64]> {
    (!b.is_empty()).then_some(b)
}

/// The parameters in f64, PyTorch's shapes: w_q [A, Dq], b_q [A], w_k [A, Dk] (additive) or
/// [Dq, Dk] (general), b_k [A], v [A]; empty when the kind has none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params64 {
    pub w_q: Vec<f64>,
    pub b_q: Vec<f64>,
    pub w_k: Vec<f64>,
    pub b_k: Vec<f64>,
    pub v: Vec<f64>,
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub dq: usize,
    pub dk: usize,
    pub dv: usize,
}

impl Sizes {
    /// The key projection to `width` columns: B·L rows of Dk.
    fn key_side(&self, width: usize) -> LinearSizes {
        LinearSizes {
            rows: self.batch * self.keys,
            k: self.dk,
            n: width,
        }
    }

    /// The query projection to `width` columns: B·Tq rows of Dq.
    fn query_side(&self, width: usize) -> LinearSizes {
        LinearSizes {
            rows: self.batch * self.queries,
            k: self.dq,
            n: width,
        }
    }
}

/// The gradients, in the inputs' and parameters' shapes (parameters the kind lacks are empty).
#[derive(Debug, Clone)]
pub(crate) struct Grads {
    pub query: Vec<f64>,
    pub keys: Vec<f64>,
    /// None when the values are the keys (their gradient is then in `keys`).
    pub values: Option<Vec<f64>>,
    pub params: Params64,
}

/// The key side and query side of `score`: (kp [B·L, K], qp [B·Tq, K], K).
fn sides(
    score: Score,
    p: &Params64,
    s: &Sizes,
    q: &[f64],
    k: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    Ok(match score {
        Score::Additive => {
            let a = p.v.len();
            let kp = linear(k, &p.w_k, bias(&p.b_k), s.key_side(a))?;
            let qp = linear(q, &p.w_q, bias(&p.b_q), s.query_side(a))?;
            (kp, qp, a)
        }
        Score::General => (linear(k, &p.w_k, None, s.key_side(s.dq))?, q.to_vec(), s.dq),
        Score::Dot { .. } => (k.to_vec(), q.to_vec(), s.dq),
    })
}

fn score_of(score: Score, p: &Params64, qp: &[f64], kp: &[f64]) -> f64 {
    match score {
        Score::Additive => qp
            .iter()
            .zip(kp)
            .zip(&p.v)
            .map(|((a, b), v)| v * (a + b).tanh())
            .sum(),
        Score::General => qp.iter().zip(kp).map(|(a, b)| a * b).sum(),
        Score::Dot { scale } => scale as f64 * qp.iter().zip(kp).map(|(a, b)| a * b).sum::<f64>(),
    }
}

/// The masked softmax weights of one query over its row's first n keys, into `w` (reused).
fn weights(score: Score, p: &Params64, qp: &[f64], kp_row: &[f64], n: usize, w: &mut Vec<f64>) {
    let width = qp.len();
    w.clear();
    w.extend((0..n).map(|j| score_of(score, p, qp, &kp_row[j * width..(j + 1) * width])));
    let max = w.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    w.iter_mut().for_each(|x| *x = (*x - max).exp());
    let total: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= total);
}

/// The context [B·Tq, Dv] (for the finite-difference checks; `backward` recomputes what it needs).
#[cfg(test)]
pub(crate) fn context(
    score: Score,
    p: &Params64,
    s: &Sizes,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    lengths: &[usize],
) -> Vec<f64> {
    let (kp, qp, width) = sides(score, p, s, q, k).unwrap();
    let mut ctx = vec![0.0; s.batch * s.queries * s.dv];
    let mut w = Vec::new();
    for b in 0..s.batch {
        let kp_row = &kp[b * s.keys * width..(b + 1) * s.keys * width];
        for t in 0..s.queries {
            let r = b * s.queries + t;
            let qr = &qp[r * width..(r + 1) * width];
            weights(score, p, qr, kp_row, lengths[b], &mut w);
            for (j, wj) in w.iter().enumerate() {
                let vj = &v[(b * s.keys + j) * s.dv..][..s.dv];
                for (c, &x) in ctx[r * s.dv..(r + 1) * s.dv].iter_mut().zip(vj) {
                    *c += wj * x;
                }
            }
        }
    }
    ctx
}

/// The gradients of Σ context ⊙ grad_context. `values` None: the keys are the values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    score: Score,
    p: &Params64,
    s: &Sizes,
    q: &[f64],
    k: &[f64],
    values: Option<&[f64]>,
    lengths: &[usize],
    grad_context: &[f64],
) -> Result<Grads> {
    let v = values.unwrap_or(k);
    let (kp, qp, width) = sides(score, p, s, q, k)?;
    let (mut dkp, mut dqp) = (vec![0.0; kp.len()], vec![0.0; qp.len()]);
    let mut dv = vec![0.0; v.len()];
    let mut dscore_v = vec![0.0; p.v.len()];
    let (mut w, mut dw) = (Vec::new(), Vec::new());
    for b in 0..s.batch {
        let n = lengths[b];
        let kp_row = &kp[b * s.keys * width..(b + 1) * s.keys * width];
        for t in 0..s.queries {
            let r = b * s.queries + t;
            let qr = &qp[r * width..(r + 1) * width];
            weights(score, p, qr, kp_row, n, &mut w);
            let dctx = &grad_context[r * s.dv..(r + 1) * s.dv];
            // d weight_j = dctx · v_j; through the softmax, de_j = w_j (dw_j − Σ w dw).
            dw.clear();
            dw.extend((0..n).map(|j| {
                let vj = &v[(b * s.keys + j) * s.dv..][..s.dv];
                dctx.iter().zip(vj).map(|(a, c)| a * c).sum::<f64>()
            }));
            let mean: f64 = w.iter().zip(&dw).map(|(a, c)| a * c).sum();
            for j in 0..n {
                let de = w[j] * (dw[j] - mean);
                let vrow = &mut dv[(b * s.keys + j) * s.dv..][..s.dv];
                vrow.iter_mut().zip(dctx).for_each(|(x, &g)| *x += w[j] * g);
                let kj = &kp_row[j * width..(j + 1) * width];
                let dkj = &mut dkp[(b * s.keys + j) * width..][..width];
                let dq = &mut dqp[r * width..(r + 1) * width];
                match score {
                    Score::Additive => {
                        for a in 0..width {
                            let u = (qr[a] + kj[a]).tanh();
                            dscore_v[a] += de * u;
                            let da = de * p.v[a] * (1.0 - u * u);
                            dq[a] += da;
                            dkj[a] += da;
                        }
                    }
                    Score::General | Score::Dot { .. } => {
                        let scale = match score {
                            Score::Dot { scale } => scale as f64,
                            _ => 1.0,
                        };
                        for a in 0..width {
                            dq[a] += scale * de * kj[a];
                            dkj[a] += scale * de * qr[a];
                        }
                    }
                }
            }
        }
    }
    // Back through the projections: dx = dy · W, dW = dyᵀ · x, db = Σ dy, each one GEMM.
    // Back through the projections (a kind's missing bias gets no gradient).
    let mut grads = Params64::default();
    let (dq, mut dk) = match score {
        Score::Additive => {
            let a = p.v.len();
            let (has_bq, has_bk) = (!p.b_q.is_empty(), !p.b_k.is_empty());
            let (dq, dw_q, db_q) = linear_backward(&dqp, q, &p.w_q, s.query_side(a), has_bq)?;
            let (dk, dw_k, db_k) = linear_backward(&dkp, k, &p.w_k, s.key_side(a), has_bk)?;
            grads = Params64 {
                w_q: dw_q,
                b_q: db_q.unwrap_or_default(),
                w_k: dw_k,
                b_k: db_k.unwrap_or_default(),
                v: dscore_v,
            };
            (dq, dk)
        }
        Score::General => {
            let (dk, dw_k, _) = linear_backward(&dkp, k, &p.w_k, s.key_side(s.dq), false)?;
            grads.w_k = dw_k;
            (dqp, dk)
        }
        Score::Dot { .. } => (dqp, dkp),
    };
    let values = match values {
        Some(_) => Some(dv),
        None => {
            dk.iter_mut().zip(&dv).for_each(|(a, b)| *a += b);
            None
        }
    };
    Ok(Grads {
        query: dq,
        keys: dk,
        values,
        params: grads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(rng: &mut StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Every gradient against central differences of Σ context ⊙ g, for each kind, with and
    /// without values, masks including length 1, one and several queries per row.
    #[test]
    // Each element is changed, evaluated and restored in place, which iterators cannot borrow.
    #[allow(clippy::needless_range_loop)]
    fn gradients_match_finite_differences_for_every_kind() {
        let kinds = [Score::Additive, Score::General, Score::Dot { scale: 0.75 }];
        for (k, &score) in kinds.iter().enumerate() {
            for (queries, with_values) in [(1, true), (3, false)] {
                let mut rng = StdRng::seed_from_u64(10 * k as u64 + queries as u64);
                let (dq, dk) = (
                    4,
                    if score == Score::Additive || score == Score::General {
                        3
                    } else {
                        4
                    },
                );
                let dv = if with_values { 5 } else { dk };
                let s = Sizes {
                    batch: 3,
                    queries,
                    keys: 6,
                    dq,
                    dk,
                    dv,
                };
                let a = 5;
                let mut p = match score {
                    Score::Additive => Params64 {
                        w_q: random(&mut rng, a * dq),
                        b_q: random(&mut rng, a),
                        w_k: random(&mut rng, a * dk),
                        b_k: random(&mut rng, a),
                        v: random(&mut rng, a),
                    },
                    Score::General => Params64 {
                        w_k: random(&mut rng, dq * dk),
                        ..Default::default()
                    },
                    Score::Dot { .. } => Params64::default(),
                };
                let mut q = random(&mut rng, s.batch * queries * dq);
                let mut keys = random(&mut rng, s.batch * s.keys * dk);
                let mut values = random(&mut rng, s.batch * s.keys * dv);
                let lengths = [6, 1, 4];
                let g = random(&mut rng, s.batch * queries * dv);
                let loss = |p: &Params64, q: &[f64], keys: &[f64], values: &[f64]| {
                    let v = if with_values { values } else { keys };
                    let ctx = context(score, p, &s, q, keys, v, &lengths);
                    ctx.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>()
                };
                let grads = backward(
                    score,
                    &p,
                    &s,
                    &q,
                    &keys,
                    with_values.then_some(&values[..]),
                    &lengths,
                    &g,
                )
                .unwrap();
                const EPS: f64 = 1e-6;
                let what = format!("{score:?} Tq={queries} values={with_values}");
                let check = |name: &str, j: usize, analytic: f64, plus: f64, minus: f64| {
                    let numeric = (plus - minus) / (2.0 * EPS);
                    assert!(
                        (analytic - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
                        "{what} {name}[{j}]: analytic {analytic}, numeric {numeric}"
                    );
                };
                macro_rules! fd {
                    ($vec:expr, $name:expr, $grad:expr) => {
                        for j in 0..$vec.len() {
                            let x = $vec[j];
                            $vec[j] = x + EPS;
                            let plus = loss(&p, &q, &keys, &values);
                            $vec[j] = x - EPS;
                            let minus = loss(&p, &q, &keys, &values);
                            $vec[j] = x;
                            check($name, j, $grad[j], plus, minus);
                        }
                    };
                }
                fd!(q, "query", grads.query);
                fd!(keys, "keys", grads.keys);
                if with_values {
                    fd!(values, "values", grads.values.as_ref().unwrap());
                }
                let gp = grads.params.clone();
                fd!(p.w_q, "w_q", gp.w_q);
                fd!(p.b_q, "b_q", gp.b_q);
                fd!(p.w_k, "w_k", gp.w_k);
                fd!(p.b_k, "b_k", gp.b_k);
                fd!(p.v, "v", gp.v);
            }
        }
    }
}
