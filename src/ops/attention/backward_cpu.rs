//! Attention's backward on the CPU: the gradients of Σ context ⊙ grad_context with respect to
//! the query, the keys, the values and the parameters. The scores and weights are recomputed
//! from the inputs (as flash attention does) rather than kept from the forward: they cost one
//! pass over the keys, and a decoder then keeps nothing per step. It computes in f32 (the path
//! that runs; the score vector's gradient, a sum over every query and key, in f64) or f64 (the
//! reference the tests hold it to), one generic body.

use super::Score;
use crate::error::Result;
use crate::ops::gemm_cpu::{linear, linear_backward, LinearSizes};
use crate::ops::math_cpu::{dot, Real};

/// A bias that may be absent (empty).
fn bias<T>(b: &[T]) -> Option<&[T]> {
    (!b.is_empty()).then_some(b)
}

/// The parameters, PyTorch's shapes: w_q [A, Dq], b_q [A], w_k [A, Dk] (additive) or
/// [Dq, Dk] (general), b_k [A], v [A]; empty when the kind has none.
#[derive(Debug, Clone)]
pub(crate) struct Params<T> {
    pub w_q: Vec<T>,
    pub b_q: Vec<T>,
    pub w_k: Vec<T>,
    pub b_k: Vec<T>,
    pub v: Vec<T>,
}

impl<T> Default for Params<T> {
    fn default() -> Self {
        Params {
            w_q: Vec::new(),
            b_q: Vec::new(),
            w_k: Vec::new(),
            b_k: Vec::new(),
            v: Vec::new(),
        }
    }
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
pub(crate) struct Grads<T> {
    pub query: Vec<T>,
    pub keys: Vec<T>,
    /// None when the values are the keys (their gradient is then in `keys`).
    pub values: Option<Vec<T>>,
    pub params: Params<T>,
}

/// The key side and query side of `score`: (kp [B·L, K], qp [B·Tq, K], K).
type Sides<T> = (Vec<T>, Vec<T>, usize);

fn sides<T: Real>(score: Score, p: &Params<T>, s: &Sizes, q: &[T], k: &[T]) -> Result<Sides<T>> {
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

fn score_of<T: Real>(score: Score, p: &Params<T>, qp: &[T], kp: &[T]) -> T {
    match score {
        Score::Additive => {
            let mut e = T::default();
            for ((&a, &b), &v) in qp.iter().zip(kp).zip(&p.v) {
                e += v * (a + b).tanh();
            }
            e
        }
        Score::General => dot(qp, kp),
        Score::Dot { scale } => T::from_f32(scale) * dot(qp, kp),
    }
}

/// The masked softmax weights of one query over its row's first n keys, into `w` (reused).
fn weights<T: Real>(score: Score, p: &Params<T>, qp: &[T], kp_row: &[T], n: usize, w: &mut Vec<T>) {
    let width = qp.len();
    w.clear();
    w.extend((0..n).map(|j| score_of(score, p, qp, &kp_row[j * width..(j + 1) * width])));
    let max = w.iter().fold(
        T::from_f64(f64::NEG_INFINITY),
        |m, &x| if x > m { x } else { m },
    );
    w.iter_mut().for_each(|x| *x = (*x - max).exp());
    let total = w.iter().fold(0f64, |t, x| t + x.to_f64());
    let inv = T::from_f64(1.0 / total);
    w.iter_mut().for_each(|x| *x *= inv);
}

/// The context [B·Tq, Dv] (for the finite-difference checks; `backward` recomputes what it needs).
#[cfg(test)]
pub(crate) fn context(
    score: Score,
    p: &Params<f64>,
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
pub(crate) fn backward<T: Real>(
    score: Score,
    p: &Params<T>,
    s: &Sizes,
    q: &[T],
    k: &[T],
    values: Option<&[T]>,
    lengths: &[usize],
    grad_context: &[T],
) -> Result<Grads<T>> {
    let v = values.unwrap_or(k);
    let (kp, qp, width) = sides(score, p, s, q, k)?;
    let (mut dkp, mut dqp) = (vec![T::default(); kp.len()], vec![T::default(); qp.len()]);
    let mut dv = vec![T::default(); v.len()];
    // A sum over every query and key: kept in f64.
    let mut dscore_v = vec![0f64; p.v.len()];
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
            dw.extend((0..n).map(|j| dot(dctx, &v[(b * s.keys + j) * s.dv..][..s.dv])));
            let mean = dot(&w, &dw);
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
                            dscore_v[a] += (de * u).to_f64();
                            let da = de * p.v[a] * (T::ONE - u * u);
                            dq[a] += da;
                            dkj[a] += da;
                        }
                    }
                    Score::General | Score::Dot { .. } => {
                        let scale = match score {
                            Score::Dot { scale } => T::from_f32(scale),
                            _ => T::ONE,
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
    let mut grads = Params::default();
    let (dq, mut dk) = match score {
        Score::Additive => {
            let a = p.v.len();
            let (has_bq, has_bk) = (!p.b_q.is_empty(), !p.b_k.is_empty());
            let (dq, dw_q, db_q) = linear_backward(&dqp, q, &p.w_q, s.query_side(a), has_bq)?;
            let (dk, dw_k, db_k) = linear_backward(&dkp, k, &p.w_k, s.key_side(a), has_bk)?;
            grads = Params {
                w_q: dw_q,
                b_q: db_q.unwrap_or_default(),
                w_k: dw_k,
                b_k: db_k.unwrap_or_default(),
                v: dscore_v.into_iter().map(T::from_f64).collect(),
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
            dk.iter_mut().zip(&dv).for_each(|(a, &b)| *a += b);
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
                    Score::Additive => Params {
                        w_q: random(&mut rng, a * dq),
                        b_q: random(&mut rng, a),
                        w_k: random(&mut rng, a * dk),
                        b_k: random(&mut rng, a),
                        v: random(&mut rng, a),
                    },
                    Score::General => Params {
                        w_k: random(&mut rng, dq * dk),
                        ..Default::default()
                    },
                    Score::Dot { .. } => Params::default(),
                };
                let mut q = random(&mut rng, s.batch * queries * dq);
                let mut keys = random(&mut rng, s.batch * s.keys * dk);
                let mut values = random(&mut rng, s.batch * s.keys * dv);
                let lengths = [6, 1, 4];
                let g = random(&mut rng, s.batch * queries * dv);
                let loss = |p: &Params<f64>, q: &[f64], keys: &[f64], values: &[f64]| {
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

    /// The f32 path against the f64 reference on odd sizes with long rows of keys: every
    /// gradient within 1e-4 of its largest magnitude.
    #[test]
    fn f32_matches_f64_for_every_kind() {
        let kinds = [Score::Additive, Score::General, Score::Dot { scale: 0.3 }];
        for (k, &score) in kinds.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(100 + k as u64);
            let dq = 17;
            let dk = if score == Score::Additive || score == Score::General {
                13
            } else {
                dq
            };
            let s = Sizes {
                batch: 3,
                queries: 2,
                keys: 333,
                dq,
                dk,
                dv: 9,
            };
            let a = 11;
            let p = match score {
                Score::Additive => Params {
                    w_q: random(&mut rng, a * dq),
                    b_q: random(&mut rng, a),
                    w_k: random(&mut rng, a * dk),
                    b_k: random(&mut rng, a),
                    v: random(&mut rng, a),
                },
                Score::General => Params {
                    w_k: random(&mut rng, dq * dk),
                    ..Default::default()
                },
                Score::Dot { .. } => Params::default(),
            };
            let q = random(&mut rng, s.batch * s.queries * dq);
            let keys = random(&mut rng, s.batch * s.keys * dk);
            let values = random(&mut rng, s.batch * s.keys * s.dv);
            let g = random(&mut rng, s.batch * s.queries * s.dv);
            let lengths = [333, 1, 200];
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let p32 = Params {
                w_q: f32s(&p.w_q),
                b_q: f32s(&p.b_q),
                w_k: f32s(&p.w_k),
                b_k: f32s(&p.b_k),
                v: f32s(&p.v),
            };
            let g64 = backward(score, &p, &s, &q, &keys, Some(&values), &lengths, &g).unwrap();
            let (q32, k32, v32, gr32) = (f32s(&q), f32s(&keys), f32s(&values), f32s(&g));
            let g32 = backward(score, &p32, &s, &q32, &k32, Some(&v32), &lengths, &gr32).unwrap();
            let pairs = [
                ("query", &g32.query, &g64.query),
                ("keys", &g32.keys, &g64.keys),
                (
                    "values",
                    g32.values.as_ref().unwrap(),
                    g64.values.as_ref().unwrap(),
                ),
                ("w_q", &g32.params.w_q, &g64.params.w_q),
                ("b_q", &g32.params.b_q, &g64.params.b_q),
                ("w_k", &g32.params.w_k, &g64.params.w_k),
                ("b_k", &g32.params.b_k, &g64.params.b_k),
                ("v", &g32.params.v, &g64.params.v),
            ];
            for (name, got, want) in pairs {
                let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
                let worst = got
                    .iter()
                    .zip(want.iter())
                    .map(|(&a, &b)| (a as f64 - b).abs() / scale)
                    .fold(0.0, f64::max);
                assert_eq!(got.len(), want.len());
                assert!(worst < 1e-4, "{score:?} {name}: {worst:e}");
            }
        }
    }
}
