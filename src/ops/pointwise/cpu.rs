//! The CPU reference: f32 arithmetic on the values read in f32, written back in the inputs'
//! dtype.

use super::BinaryOp;
use crate::error::Result;
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The activation's gradient from its output `y` and the output's gradient `dy`, as
/// `activation_derivative` in kernels/pointwise.cu.
#[inline(always)]
fn derivative(act: Activation, y: f32, dy: f32) -> f32 {
    match act {
        // `y <= 0 ? 0 : dy`: a NaN output passes the gradient on, as threshold_backward.
        Activation::Relu => {
            if y <= 0.0 {
                0.0
            } else {
                dy
            }
        }
        Activation::Sigmoid => dy * (1.0 - y) * y,
        Activation::Tanh => dy * (1.0 - y * y),
    }
}

pub(super) fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    let values = x.f32_values()?;
    // One loop per activation, each compiled (ReLU's vectorised) with its function inlined.
    let y = match act {
        Activation::Relu => map(&values, |v| Activation::Relu.apply(v)),
        Activation::Tanh => map(&values, |v| Activation::Tanh.apply(v)),
        Activation::Sigmoid => map(&values, |v| Activation::Sigmoid.apply(v)),
    };
    Tensor::from_f32_vec(y, x.shape(), x.dtype())
}

pub(super) fn activation_backward(y: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    let (ys, dys) = (y.f32_values()?, dy.f32_values()?);
    let dx = match act {
        Activation::Relu => map2(&ys, &dys, |y, dy| derivative(Activation::Relu, y, dy)),
        Activation::Tanh => map2(&ys, &dys, |y, dy| derivative(Activation::Tanh, y, dy)),
        Activation::Sigmoid => map2(&ys, &dys, |y, dy| derivative(Activation::Sigmoid, y, dy)),
    };
    Tensor::from_f32_vec(dx, y.shape(), y.dtype())
}

/// Elementwise passes over more values than this are shared among the worker threads.
const PARALLEL: usize = 1 << 15;

fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    if x.len() < PARALLEL {
        return x.iter().map(|&v| f(v)).collect();
    }
    x.par_iter()
        .with_min_len(PARALLEL / 2)
        .map(|&v| f(v))
        .collect()
}

fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    if a.len() < PARALLEL {
        return a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect();
    }
    (a.par_iter().zip(b.par_iter()))
        .with_min_len(PARALLEL / 2)
        .map(|(&a, &b)| f(a, b))
        .collect()
}

pub(super) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let y: Vec<f32> = (a.f32_values()?.iter())
        .zip(b.f32_values()?.iter())
        .map(|(&a, &b)| op.apply(a, b))
        .collect();
    Tensor::from_f32_vec(y, a.shape(), a.dtype())
}

pub(super) fn mul_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dy = dy.f32_values()?;
    let times = |t: &Tensor| -> Result<Tensor> {
        let v: Vec<f32> = (t.f32_values()?.iter())
            .zip(dy.iter())
            .map(|(&v, &g)| g * v)
            .collect();
        Tensor::from_f32_vec(v, t.shape(), t.dtype())
    };
    Ok((times(b)?, times(a)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above the size the threads share, each value is still its own activation and gradient,
    /// NaN included.
    #[test]
    fn large_activations_are_elementwise() {
        let n = 3 * PARALLEL + 17;
        let x: Vec<f32> = (0..n)
            .map(|i| match i % 1001 {
                0 => f32::NAN,
                k => k as f32 / 100.0 - 5.0,
            })
            .collect();
        let dy: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let xt = Tensor::from_vec(x.clone(), &[n]).unwrap();
        let dyt = Tensor::from_vec(dy.clone(), &[n]).unwrap();
        for act in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
            let y = activation(&xt, act).unwrap();
            let dx = activation_backward(&y, &dyt, act).unwrap();
            let (y, dx) = (
                y.host_slice::<f32>().unwrap(),
                dx.host_slice::<f32>().unwrap(),
            );
            for i in 0..n {
                let want = act.apply(x[i]);
                assert!(
                    y[i] == want || (y[i].is_nan() && want.is_nan()),
                    "{act:?} {i}"
                );
                let want = derivative(act, want, dy[i]);
                assert!(
                    dx[i] == want || (dx[i].is_nan() && want.is_nan()),
                    "{act:?} {i}"
                );
            }
        }
    }
}
