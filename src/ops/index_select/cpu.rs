//! The CPU reference (host ids, checked by the caller).

use super::Layout;
use crate::error::Result;
use crate::indices::Indices;
use crate::tensor::Tensor;

pub(super) fn index_select(
    x: &Tensor,
    ids: &Indices,
    l: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    let ids = ids.host_slice()?;
    let src = x.to_vec_f32()?;
    let mut out = Vec::with_capacity(l.outer * l.n_ids * l.inner);
    for o in 0..l.outer {
        for &id in ids {
            let start = (o * l.n_src + id as usize) * l.inner;
            out.extend_from_slice(&src[start..start + l.inner]);
        }
    }
    Tensor::from_f32(&out, shape, x.dtype())
}

pub(super) fn index_select_backward(
    grad_y: &Tensor,
    ids: &Indices,
    l: &Layout,
    shape: &[usize],
) -> Result<Tensor> {
    let ids = ids.host_slice()?;
    let g = grad_y.to_vec_f64()?;
    let mut acc = crate::size::zeros::<f64>("index_select_backward", l.outer * l.n_src * l.inner)?;
    for o in 0..l.outer {
        for (j, &id) in ids.iter().enumerate() {
            let from = (o * l.n_ids + j) * l.inner;
            let to = (o * l.n_src + id as usize) * l.inner;
            for (a, &v) in acc[to..to + l.inner]
                .iter_mut()
                .zip(&g[from..from + l.inner])
            {
                *a += v;
            }
        }
    }
    let out: Vec<f32> = acc.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(&out, shape, grad_y.dtype())
}
