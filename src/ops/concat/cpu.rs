//! The CPU reference: per outer row, each piece's run copied to or from its columns of the
//! whole row (values read as f32 and written back in the dtype, which is exact).

use super::Layout;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) fn concat(tensors: &[&Tensor], layout: &Layout, shape: &[usize]) -> Result<Tensor> {
    let pieces = tensors
        .iter()
        .map(|t| t.f32_values())
        .collect::<Result<Vec<_>>>()?;
    let widths: Vec<usize> = layout.widths().collect();
    let mut out = Vec::with_capacity(layout.outer * layout.whole_width());
    for row in 0..layout.outer {
        for (piece, &w) in pieces.iter().zip(&widths) {
            out.extend_from_slice(&piece[row * w..(row + 1) * w]);
        }
    }
    Tensor::from_f32_vec(out, shape, tensors[0].dtype())
}

pub(super) fn split(x: &Tensor, layout: &Layout, shapes: &[Vec<usize>]) -> Result<Vec<Tensor>> {
    let whole = x.f32_values()?;
    let widths: Vec<usize> = layout.widths().collect();
    let whole_width = layout.whole_width();
    let mut pieces: Vec<Vec<f32>> = widths
        .iter()
        .map(|&w| Vec::with_capacity(layout.outer * w))
        .collect();
    for row in whole.chunks_exact(whole_width.max(1)).take(layout.outer) {
        let mut start = 0;
        for (piece, &w) in pieces.iter_mut().zip(&widths) {
            piece.extend_from_slice(&row[start..start + w]);
            start += w;
        }
    }
    pieces
        .into_iter()
        .zip(shapes)
        .map(|(values, shape)| Tensor::from_f32_vec(values, shape, x.dtype()))
        .collect()
}
