//! The CPU reference: rows copied by id; the gradient summed per id in f64 and rounded to
//! grad_y's dtype. Ids are checked before any work.

use crate::error::Result;
use crate::indices::Indices;
use crate::size;
use crate::tensor::Tensor;

pub(super) fn forward(
    weight: &Tensor,
    ids: &Indices,
    vocab: usize,
    dim: usize,
    shape: &[usize],
) -> Result<Tensor> {
    ids.check_host_range(vocab, "ids")?;
    let host = ids.host_slice()?;
    let w = weight.to_vec_f32()?;
    let mut y = size::zeros::<f32>("the embedding's output", host.len() * dim)?;
    if dim > 0 {
        for (row, &id) in y.chunks_exact_mut(dim).zip(host) {
            let id = id as usize;
            row.copy_from_slice(&w[id * dim..(id + 1) * dim]);
        }
    }
    Tensor::from_f32(&y, shape, weight.dtype())
}

pub(super) fn backward(
    ids: &Indices,
    grad_y: &Tensor,
    vocab: usize,
    dim: usize,
    padding_idx: Option<usize>,
) -> Result<Tensor> {
    ids.check_host_range(vocab, "ids")?;
    let host = ids.host_slice()?;
    let mut sums = size::zeros::<f64>("the weight's gradient", vocab * dim)?;
    if dim > 0 {
        let g = grad_y.to_vec_f32()?;
        for (row, &id) in g.chunks_exact(dim).zip(host) {
            let id = id as usize;
            if Some(id) == padding_idx {
                continue;
            }
            sums[id * dim..(id + 1) * dim]
                .iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += f64::from(v));
        }
    }
    let dw: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
    Tensor::from_f32(&dw, &[vocab, dim], grad_y.dtype())
}
