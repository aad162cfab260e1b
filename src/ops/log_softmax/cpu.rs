//! The CPU reference: f32 storage values, sums and the logarithm in f64.

use crate::error::Result;
use crate::tensor::Tensor;

/// log_softmax of every row of `cols` values: the two-pass formula (maximum m, then
/// Σ e^(x − m)), whose IEEE arithmetic gives torch's results on non-finite inputs.
pub(super) fn log_softmax(x: &Tensor, cols: usize) -> Result<Tensor> {
    let values = x.to_vec_f32()?;
    let mut out = crate::size::zeros::<f32>("log_softmax output", values.len())?;
    for (xr, yr) in values.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        // A NaN is the maximum once seen (f32::max would skip it).
        let m = xr.iter().fold(
            f32::NEG_INFINITY,
            |m, &v| {
                if m.is_nan() || v <= m {
                    m
                } else {
                    v
                }
            },
        );
        let m = f64::from(m);
        let log_s = xr
            .iter()
            .map(|&v| (f64::from(v) - m).exp())
            .sum::<f64>()
            .ln();
        for (y, &v) in yr.iter_mut().zip(xr) {
            *y = ((f64::from(v) - m) - log_s) as f32;
        }
    }
    Tensor::from_f32(&out, x.shape(), x.dtype())
}

/// grad_x = grad_y − e^y · Σ grad_y per row of `cols` values.
pub(super) fn log_softmax_backward(y: &Tensor, grad_y: &Tensor, cols: usize) -> Result<Tensor> {
    let ys = y.to_vec_f32()?;
    let dys = grad_y.to_vec_f32()?;
    let mut out = crate::size::zeros::<f32>("log_softmax_backward output", ys.len())?;
    for ((yr, dyr), dxr) in ys
        .chunks_exact(cols)
        .zip(dys.chunks_exact(cols))
        .zip(out.chunks_exact_mut(cols))
    {
        let sum: f64 = dyr.iter().map(|&g| f64::from(g)).sum();
        for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
            *dx = (f64::from(dy) - f64::from(y).exp() * sum) as f32;
        }
    }
    Tensor::from_f32(&out, y.shape(), y.dtype())
}
