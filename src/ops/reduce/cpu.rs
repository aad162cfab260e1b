//! The CPU reference: sums in f64 over the values read in f32, results in the input's dtype.

use super::{Reduction, View};
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) fn reduce(x: &Tensor, v: View, shape: &[usize], op: Reduction) -> Result<Tensor> {
    if v.outer * v.inner == 0 {
        return Tensor::from_f32(&[], shape, x.dtype());
    }
    let values = x.to_vec_f32()?;
    let mut y = crate::size::zeros::<f32>("the reduction's result", v.outer * v.inner)?;
    let mut acc = vec![0f64; v.inner];
    for o in 0..v.outer {
        acc.fill(0.0);
        for k in 0..v.n {
            let row = &values[(o * v.n + k) * v.inner..][..v.inner];
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        for (out, &a) in y[o * v.inner..][..v.inner].iter_mut().zip(&acc) {
            *out = match op {
                Reduction::Sum => a as f32,
                Reduction::Mean => (a / v.n as f64) as f32,
            };
        }
    }
    Tensor::from_f32(&y, shape, x.dtype())
}

/// dx [outer, n, inner] of `shape`: dy [outer, inner] (over n for the mean) along n.
pub(super) fn reduce_backward(
    dy: &Tensor,
    v: View,
    shape: &[usize],
    op: Reduction,
) -> Result<Tensor> {
    if v.outer * v.n * v.inner == 0 {
        return Tensor::from_f32(&[], shape, dy.dtype());
    }
    let mut g = dy.to_vec_f32()?;
    if op == Reduction::Mean {
        g.iter_mut().for_each(|g| *g /= v.n as f32);
    }
    let mut dx = crate::size::zeros::<f32>("the reduction's gradient", v.outer * v.n * v.inner)?;
    for (slab, g) in dx
        .chunks_exact_mut(v.n * v.inner)
        .zip(g.chunks_exact(v.inner))
    {
        for row in slab.chunks_exact_mut(v.inner) {
            row.copy_from_slice(g);
        }
    }
    Tensor::from_f32(&dx, shape, dy.dtype())
}
