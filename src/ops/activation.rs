//! Elementwise activations, shared by the recurrent cells and the attention scores.

/// Elementwise activations. Codes match `ACT_*` in kernels/common.cuh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Tanh,
    Relu,
    Sigmoid,
}

impl Activation {
    pub fn code(self) -> i32 {
        match self {
            Activation::Tanh => 0,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
        }
    }

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
