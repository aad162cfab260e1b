//! Elementwise activations, shared by the recurrent cells and the attention scores.

use crate::device::kernels::codes;

/// Elementwise activations (codes: `ACT_*` of kernels/codes.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Tanh,
    Relu,
    Sigmoid,
}

impl Activation {
    pub fn code(self) -> i32 {
        match self {
            Activation::Tanh => codes::ACT_TANH,
            Activation::Relu => codes::ACT_RELU,
            Activation::Sigmoid => codes::ACT_SIGMOID,
        }
    }

    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        use crate::ops::math_cpu::{sigmoid, tanh};
        match self {
            Activation::Tanh => tanh(x),
            // `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            // Not 0.5 + 0.5·tanh(x/2): that loses the relative accuracy of small values.
            Activation::Sigmoid => sigmoid(x),
        }
    }
}
