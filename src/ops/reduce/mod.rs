//! The sum and the mean over one dimension (PyTorch's `x.sum(dim)` and `x.mean(dim)` with
//! keepdim = false: the result's shape is x's without `dim`), and their backward, which
//! broadcasts the gradient back over `dim` (divided by its length for the mean).
//!
//! x is viewed as [outer, n, inner] with n = x.shape[dim]. Sums accumulate in f64 on the CPU
//! and in f32 on CUDA (kernels/reduce.cu), where each output is summed by one block in a fixed
//! order: results are reproducible, no atomics. A sum over a dimension of length 0 is 0; the
//! mean over one is refused with a shape error (PyTorch returns NaN), forward and backward.

mod cpu;
mod cuda;

use crate::device::kernels::codes;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Reductions (codes: `REDUCE_*` of kernels/codes.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduction {
    Sum,
    Mean,
}

impl Reduction {
    pub fn code(self) -> i32 {
        match self {
            Reduction::Sum => codes::REDUCE_SUM,
            Reduction::Mean => codes::REDUCE_MEAN,
        }
    }
}

/// A shape around its reduced dimension: [outer, n, inner].
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
}

impl View {
    /// `shape` (of the tensor named `name`) around `dim`, checked: `dim` in range, the element
    /// count representable, and n > 0 for a mean.
    fn of(name: &str, shape: &[usize], dim: usize, op: Reduction) -> Result<Self> {
        if dim >= shape.len() {
            return Err(Error::Config(format!(
                "{name}: dim {dim} is out of range for shape {shape:?} ({} dimensions)",
                shape.len()
            )));
        }
        // Every count the kernels and loops use, checked (a zero-size shape can still have
        // products past usize around its 0).
        crate::size::elements(name, shape)?;
        let outer = crate::size::elements(name, &shape[..dim])?;
        let inner = crate::size::elements(name, &shape[dim + 1..])?;
        crate::size::elements(name, &without(shape, dim))?;
        let n = shape[dim];
        if op == Reduction::Mean && n == 0 {
            let want = format!(
                "a non-zero length at dim {dim} (the mean of no elements is undefined; PyTorch \
                 gives NaN)"
            );
            return Err(Error::shape(name, want, shape));
        }
        Ok(View { outer, n, inner })
    }
}

/// `shape` without `dim` (in range).
fn without(shape: &[usize], dim: usize) -> Vec<usize> {
    let mut out = shape.to_vec();
    out.remove(dim);
    out
}

fn reduce(x: &Tensor, dim: usize, op: Reduction) -> Result<Tensor> {
    let view = View::of("x", x.shape(), dim, op)?;
    let shape = without(x.shape(), dim);
    if x.is_cuda() {
        cuda::reduce(x.cuda_device()?, x, view, &shape, op)
    } else {
        cpu::reduce(x, view, &shape, op)
    }
}

fn reduce_backward(grad_y: &Tensor, shape: &[usize], dim: usize, op: Reduction) -> Result<Tensor> {
    let view = View::of("x", shape, dim, op)?;
    let expected = without(shape, dim);
    if grad_y.shape() != expected.as_slice() {
        let want = format!("{expected:?} (x's shape {shape:?} without dim {dim})");
        return Err(Error::shape("grad_y", want, grad_y.shape()));
    }
    if grad_y.is_cuda() {
        cuda::reduce_backward(grad_y.cuda_device()?, grad_y, view, shape, op)
    } else {
        cpu::reduce_backward(grad_y, view, shape, op)
    }
}

/// The sum of `x` over dimension `dim`; the result has x's shape without `dim`.
pub fn sum(x: &Tensor, dim: usize) -> Result<Tensor> {
    reduce(x, dim, Reduction::Sum)
}

/// The mean of `x` over dimension `dim` (which must not have length 0); the result has x's
/// shape without `dim`.
pub fn mean(x: &Tensor, dim: usize) -> Result<Tensor> {
    reduce(x, dim, Reduction::Mean)
}

/// The gradient of `sum(x, dim)` for an x of `shape`: `grad_y` repeated along `dim`.
pub fn sum_backward(grad_y: &Tensor, shape: &[usize], dim: usize) -> Result<Tensor> {
    reduce_backward(grad_y, shape, dim, Reduction::Sum)
}

/// The gradient of `mean(x, dim)` for an x of `shape`: `grad_y` / n repeated along `dim`.
pub fn mean_backward(grad_y: &Tensor, shape: &[usize], dim: usize) -> Result<Tensor> {
    reduce_backward(grad_y, shape, dim, Reduction::Mean)
}
