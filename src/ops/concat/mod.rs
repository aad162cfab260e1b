//! Concatenation and splitting along any dimension: `concat` is torch.cat, `split` is
//! torch.split with a list of sizes, and each is the other's backward (`concat_backward`,
//! `split_backward`).
//!
//! Every tensor is viewed as [outer, n_k, inner] around the dimension `dim`: outer is the
//! product of the dimensions before it, inner of those after it, which must agree between the
//! pieces; n_k is piece k's size along `dim` and the whole has Σ n_k. Per outer row, piece k is
//! a contiguous run of n_k · inner elements, so both directions are one strided copy: on the
//! CPU a copy of runs, on CUDA one kernel (kernels/concat.cu) that gathers or scatters up to
//! four pieces per launch, their addresses passed as kernel parameters (see cuda.rs). The
//! decoder's [embedding; context] along the last dimension is one launch per step, with
//! nothing uploaded or read back.
//!
//! Storage f32, f16 or bf16; values are copied exactly. All tensors of a call on one device in
//! one dtype. A result (or piece) with no elements is returned without launching.

mod cpu;
mod cuda;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How a whole tensor and its pieces sit around the cut dimension.
pub(crate) struct Layout {
    /// The product of the dimensions before `dim`.
    pub outer: usize,
    /// The product of the dimensions after `dim`.
    pub inner: usize,
    /// Each piece's size along `dim`.
    pub sizes: Vec<usize>,
}

impl Layout {
    /// Each piece's run per outer row, in elements (n_k · inner).
    pub fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        self.sizes.iter().map(|&n| n * self.inner)
    }

    /// The whole's row, in elements (Σ n_k · inner).
    pub fn whole_width(&self) -> usize {
        self.widths().sum()
    }
}

/// The shape of `shape` with `dim` of size `n`.
fn with_dim(shape: &[usize], dim: usize, n: usize) -> Vec<usize> {
    let mut shape = shape.to_vec();
    shape[dim] = n;
    shape
}

/// The error for a `dim` past the rank of `tensor`.
fn dim_error(tensor: &str, dim: usize, shape: &[usize]) -> Error {
    Error::shape(
        tensor,
        format!("at least {} dimensions (dim {dim})", dim + 1),
        shape,
    )
}

/// Checks `tensors` (named `name[k]`) for a concatenation along `dim`; returns the layout and
/// the result's shape. Element counts are checked: the pieces exist, but their sum might not
/// fit a count.
fn concat_layout(tensors: &[&Tensor], dim: usize, name: &str) -> Result<(Layout, Vec<usize>)> {
    let Some(first) = tensors.first() else {
        return Err(Error::Config(format!(
            "concat: {name} is empty; there is nothing to concatenate"
        )));
    };
    let shape = first.shape();
    if dim >= shape.len() {
        return Err(dim_error(&format!("{name}[0]"), dim, shape));
    }
    let device = first.device();
    let dtype = first.dtype();
    let mut sizes = Vec::with_capacity(tensors.len());
    for (k, t) in tensors.iter().enumerate() {
        let tensor = format!("{name}[{k}]");
        t.check_on(&device, &tensor)?;
        if t.dtype() != dtype {
            return Err(Error::DType {
                tensor,
                expected: format!("{dtype} (the dtype of {name}[0])"),
                got: t.dtype().name().into(),
            });
        }
        let s = t.shape();
        let agrees = s.len() == shape.len()
            && s.iter()
                .zip(shape)
                .enumerate()
                .all(|(d, (a, b))| d == dim || a == b);
        if !agrees {
            let mut want: Vec<String> = shape.iter().map(|n| n.to_string()).collect();
            want[dim] = "_".into();
            let want = format!("[{}] (as {name}[0] but along dim {dim})", want.join(", "));
            return Err(Error::shape(tensor, want, s));
        }
        sizes.push(s[dim]);
    }
    let total = sizes
        .iter()
        .try_fold(0usize, |n, &s| n.checked_add(s))
        .ok_or_else(|| Error::TooLarge {
            what: format!("concat of {name} along dim {dim}"),
            needed: "a size past usize".into(),
            limit: "a count can hold (2^64)".into(),
        })?;
    let out_shape = with_dim(shape, dim, total);
    crate::size::elements("concat result", &out_shape)?;
    let layout = Layout {
        outer: shape[..dim].iter().product(),
        inner: shape[dim + 1..].iter().product(),
        sizes,
    };
    Ok((layout, out_shape))
}

fn concat_named(tensors: &[&Tensor], dim: usize, name: &str) -> Result<Tensor> {
    let (layout, shape) = concat_layout(tensors, dim, name)?;
    if tensors[0].is_cuda() {
        cuda::concat(tensors, &layout, &shape)
    } else {
        cpu::concat(tensors, &layout, &shape)
    }
}

fn split_named(x: &Tensor, dim: usize, sizes: &[usize], name: &str) -> Result<Vec<Tensor>> {
    let shape = x.shape();
    if dim >= shape.len() {
        return Err(dim_error(name, dim, shape));
    }
    let sum = sizes.iter().try_fold(0usize, |n, &s| n.checked_add(s));
    if sum != Some(shape[dim]) {
        return Err(Error::shape(
            name,
            format!("a size along dim {dim} equal to the sum of the split sizes {sizes:?}"),
            shape,
        ));
    }
    let layout = Layout {
        outer: shape[..dim].iter().product(),
        inner: shape[dim + 1..].iter().product(),
        sizes: sizes.to_vec(),
    };
    let shapes: Vec<Vec<usize>> = sizes.iter().map(|&n| with_dim(shape, dim, n)).collect();
    if x.is_cuda() {
        cuda::split(x, &layout, &shapes)
    } else {
        cpu::split(x, &layout, &shapes)
    }
}

/// torch.cat(tensors, dim): the tensors joined along `dim`. They must have one rank, agree in
/// every other dimension, and share a device and a dtype.
pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    concat_named(tensors, dim, "tensors")
}

/// torch.split(x, sizes, dim) with a list of sizes: consecutive pieces of `x` along `dim`,
/// piece k of size `sizes[k]` there. The sizes must sum to `x`'s size along `dim`.
pub fn split(x: &Tensor, dim: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    split_named(x, dim, sizes, "x")
}

/// The backward of `concat`: the gradient of each input is its slice of `grad_y` along `dim`,
/// `sizes` being the inputs' sizes there (a split, on the same kernel).
pub fn concat_backward(grad_y: &Tensor, dim: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    split_named(grad_y, dim, sizes, "grad_y")
}

/// The backward of `split`: the gradient of `x` is the pieces' gradients joined along `dim`
/// (a concat, on the same kernel).
pub fn split_backward(grads: &[&Tensor], dim: usize) -> Result<Tensor> {
    concat_named(grads, dim, "grads")
}
