//! A fully connected layer, PyTorch's nn.Linear: y = x Wᵀ + b for x [..., in], W [out, in],
//! b [out], y [..., out]; and its backward, dx = dy W, dW = dyᵀ x, db = Σ dy over the rows.
//!
//! The CPU runs the products in f32 (`gemm_cpu`), CUDA one cuBLASLt GEMM with the bias in its
//! epilogue for the forward (cuBLAS and a bias kernel where cuBLASLt has no algorithm), two
//! cuBLAS GEMMs and a column-sum kernel for the backward; f32 arithmetic, storage in the
//! inputs' dtype.

mod cpu;
mod cuda;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::gemm_cpu::LinearSizes;
use crate::size;
use crate::tensor::Tensor;

/// What `backward` returns: the gradients of Σ y ⊙ grad_y.
pub struct LinearGradients {
    /// The input's shape [..., in].
    pub input: Tensor,
    /// [out, in]
    pub weight: Tensor,
    /// [out], when the layer has a bias.
    pub bias: Option<Tensor>,
}

impl LinearGradients {
    /// The parameters' gradients in state_dict order (weight, bias), as `nn::Grads::add`
    /// takes them.
    pub fn into_params(self) -> Vec<Tensor> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }
}

/// The product's sizes and the leading dimensions of x (y's shape is `lead` + [out]).
struct Checked {
    sizes: LinearSizes,
    lead: Vec<usize>,
}

impl Checked {
    fn out_shape(&self) -> Vec<usize> {
        [self.lead.as_slice(), &[self.sizes.n]].concat()
    }
}

/// Checks `t` against `x`'s device and dtype.
fn same_place(x: &Tensor, t: &Tensor, name: &str) -> Result<()> {
    t.check_on(&x.device(), name)?;
    if t.dtype() != x.dtype() {
        return Err(Error::DType {
            tensor: name.into(),
            expected: format!("{} (the input's)", x.dtype()),
            got: t.dtype().name().into(),
        });
    }
    Ok(())
}

/// Shapes, devices and dtypes of x [..., in] and W [out, in].
fn check(x: &Tensor, weight: &Tensor) -> Result<Checked> {
    let &[n, k] = weight.shape() else {
        return Err(Error::shape("weight", "[out, in]", weight.shape()));
    };
    let lead = match x.shape().split_last() {
        Some((&last, lead)) if last == k => lead.to_vec(),
        _ => return Err(Error::shape("input", format!("[..., {k}]"), x.shape())),
    };
    same_place(x, weight, "weight")?;
    let rows = size::elements("input", &lead)?;
    size::elements("output", &[rows, n])?;
    Ok(Checked {
        sizes: LinearSizes { rows, k, n },
        lead,
    })
}

/// y [..., out] = x [..., in] · weightᵀ (+ bias), weight [out, in], bias [out]: nn.Linear's
/// forward. Every tensor on one device, in one dtype.
pub fn forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let c = check(x, weight)?;
    if let Some(b) = bias {
        if b.shape() != [c.sizes.n] {
            return Err(Error::shape("bias", format!("[{}]", c.sizes.n), b.shape()));
        }
        same_place(x, b, "bias")?;
    }
    let shape = c.out_shape();
    match x.device() {
        Device::Cpu => cpu::forward(x, weight, bias, c.sizes, &shape),
        Device::Cuda(dev) => cuda::forward(&dev, x, weight, bias, c.sizes, &shape),
    }
}

/// The gradients of `forward(x, weight, bias)` for grad_y [..., out]: the input's, the
/// weight's and, when `has_bias`, the bias's. Every tensor on one device, in one dtype.
pub fn backward(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
) -> Result<LinearGradients> {
    let g = gradients(x, weight, has_bias, grad_y, true)?;
    Ok(LinearGradients {
        input: g.input.expect("asked for"),
        weight: g.weight,
        bias: g.bias,
    })
}

/// The weight's and (when `has_bias`) the bias's gradients only, in state_dict order: for a
/// layer that reads the data, whose input needs no gradient, one product fewer.
pub fn param_backward(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
) -> Result<Vec<Tensor>> {
    let g = gradients(x, weight, has_bias, grad_y, false)?;
    Ok(std::iter::once(g.weight).chain(g.bias).collect())
}

/// What the backends compute: the input's gradient only when asked.
struct Computed {
    input: Option<Tensor>,
    weight: Tensor,
    bias: Option<Tensor>,
}

fn gradients(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    grad_y: &Tensor,
    input_grad: bool,
) -> Result<Computed> {
    let c = check(x, weight)?;
    let shape = c.out_shape();
    if grad_y.shape() != shape.as_slice() {
        return Err(Error::shape("grad_y", format!("{shape:?}"), grad_y.shape()));
    }
    same_place(x, grad_y, "grad_y")?;
    match x.device() {
        Device::Cpu => cpu::backward(x, weight, has_bias, grad_y, c.sizes, input_grad),
        Device::Cuda(dev) => cuda::backward(&dev, x, weight, has_bias, grad_y, c.sizes, input_grad),
    }
}
