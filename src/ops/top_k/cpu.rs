//! The CPU reference: a total order on (value, position) and a partial selection per row.

use crate::error::Result;
use crate::tensor::Tensor;
use std::cmp::Ordering;

/// Whether (a, i) comes before (b, j): larger first, NaN before every number, equal values
/// (NaNs all equal) by position.
fn order(a: f32, i: usize, b: f32, j: usize) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (true, true) => i.cmp(&j),
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal).then(i.cmp(&j)),
    }
}

pub(super) fn argmax(x: &Tensor, cols: usize) -> Result<Vec<i32>> {
    let values = x.to_vec_f32()?;
    Ok(values
        .chunks_exact(cols)
        .map(|row| {
            let best = (1..cols).fold(0, |best, j| {
                if order(row[j], j, row[best], best) == Ordering::Less {
                    j
                } else {
                    best
                }
            });
            // cols ≤ i32::MAX (checked by the caller).
            best as i32
        })
        .collect())
}

/// The values and positions of each row's first `k` elements, rows after rows.
pub(super) fn top_k(x: &Tensor, cols: usize, k: usize) -> Result<(Vec<f32>, Vec<i32>)> {
    let values = x.to_vec_f32()?;
    let rows = values.len() / cols;
    let mut out_values = Vec::with_capacity(rows * k);
    let mut out_indices = Vec::with_capacity(rows * k);
    let mut positions: Vec<usize> = Vec::with_capacity(cols);
    for row in values.chunks_exact(cols) {
        positions.clear();
        positions.extend(0..cols);
        let by_order = |&i: &usize, &j: &usize| order(row[i], i, row[j], j);
        if k < cols {
            positions.select_nth_unstable_by(k - 1, by_order);
        }
        let first = &mut positions[..k];
        first.sort_unstable_by(by_order);
        out_values.extend(first.iter().map(|&j| row[j]));
        out_indices.extend(first.iter().map(|&j| j as i32));
    }
    Ok((out_values, out_indices))
}
