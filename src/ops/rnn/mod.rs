//! Elman RNN forward (nn.RNN semantics): checks, then the CPU or CUDA path.
//!
//! Layout: `input` is [T, B, I] (or [B, T, I] when batch_first); row (t, b) of any [rows, ·]
//! buffer is `t * st + b * sb` with (st, sb) = (B, 1) or (1, T), so batch-first data is never
//! transposed. `output` is [T, B, D·H] (or [B, T, D·H]); `h_n` is [L·D, B, H].

mod cpu;
mod cuda;

pub(crate) use cuda::PlanCache;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The RNN's nonlinearity. Codes match `ACT_*` in kernels/common.cuh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    #[default]
    Tanh,
    Relu,
}

impl Nonlinearity {
    pub fn name(self) -> &'static str {
        match self {
            Nonlinearity::Tanh => "tanh",
            Nonlinearity::Relu => "relu",
        }
    }

    pub(crate) fn code(self) -> i32 {
        match self {
            Nonlinearity::Tanh => 0,
            Nonlinearity::Relu => 1,
        }
    }

    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Nonlinearity::Tanh => crate::ops::math_cpu::tanh(x),
            // `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
            Nonlinearity::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
        }
    }
}

impl std::str::FromStr for Nonlinearity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tanh" => Ok(Nonlinearity::Tanh),
            "relu" => Ok(Nonlinearity::Relu),
            _ => Err(Error::Config(format!(
                "unknown nonlinearity `{s}` (expected tanh or relu)"
            ))),
        }
    }
}

/// Which CUDA implementation runs the sequence loop. The CPU has one implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algo {
    /// The fastest implementation for the shape: currently `Fused`.
    #[default]
    Auto,
    /// Per step one recurrent GEMM and one fused elementwise kernel.
    Fused,
    /// Per step one recurrent GEMM and one kernel per elementwise op: the baseline.
    Naive,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Fused => "fused",
            Algo::Naive => "naive",
        }
    }
}

impl std::str::FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [Algo::Auto, Algo::Fused, Algo::Naive]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown algo `{s}` (expected auto, fused or naive)"
                ))
            })
    }
}

/// Weights of one layer-direction, in PyTorch's shapes: w_ih [H, in], w_hh [H, H], biases [H].
pub struct DirectionWeights {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Option<Tensor>,
    pub b_hh: Option<Tensor>,
}

/// Sizes of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub seq_len: usize,
    pub batch: usize,
    pub input_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub dirs: usize,
    pub batch_first: bool,
}

impl Dims {
    pub fn rows(&self) -> usize {
        self.seq_len * self.batch
    }

    /// (st, sb): the row of (t, b) is t·st + b·sb.
    pub fn strides(&self) -> (usize, usize) {
        if self.batch_first {
            (1, self.seq_len)
        } else {
            (self.batch, 1)
        }
    }

    pub fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.dirs * self.hidden
        }
    }

    pub fn output_shape(&self) -> Vec<usize> {
        let width = self.dirs * self.hidden;
        if self.batch_first {
            vec![self.batch, self.seq_len, width]
        } else {
            vec![self.seq_len, self.batch, width]
        }
    }

    pub fn state_shape(&self) -> Vec<usize> {
        vec![self.layers * self.dirs, self.batch, self.hidden]
    }
}

/// Time index of step `s` for a row of length `len` (pack_padded_sequence semantics: the
/// reverse direction starts at the row's last valid step), or None once the row has ended.
/// Mirrors `step_time` in kernels/common.cuh.
pub(crate) fn step_time(s: usize, len: usize, reverse: bool) -> Option<usize> {
    (s < len).then(|| if reverse { len - 1 - s } else { s })
}

/// Checks lengths (each in 1..=T, one per batch row); none means every row has length T.
pub fn check_lengths(
    lengths: Option<&[usize]>,
    batch: usize,
    seq_len: usize,
) -> Result<Vec<usize>> {
    let Some(lengths) = lengths else {
        return Ok(vec![seq_len; batch]);
    };
    if lengths.len() != batch {
        return Err(Error::shape(
            "lengths",
            format!("[{batch}]"),
            &[lengths.len()],
        ));
    }
    for (b, &len) in lengths.iter().enumerate() {
        if len == 0 || len > seq_len {
            return Err(Error::Lengths(format!(
                "lengths[{b}] = {len} is outside 1..={seq_len} (the sequence length)"
            )));
        }
    }
    Ok(lengths.to_vec())
}

/// One checked forward call: everything both paths need.
pub(crate) struct Call<'a> {
    pub act: Nonlinearity,
    pub dims: Dims,
    /// L·D layer-directions in PyTorch order (layer-major, forward before reverse), already
    /// checked against `dims`.
    pub weights: &'a [DirectionWeights],
    pub input: &'a Tensor,
    pub h0: Option<&'a Tensor>,
    pub lengths: &'a [usize],
}

/// Runs the forward pass on `device`; returns (output, h_n). `plans` caches the CUDA graphs
/// of the layer the weights belong to.
pub(crate) fn forward(
    device: &Device,
    algo: Algo,
    call: &Call<'_>,
    plans: &PlanCache,
) -> Result<(Tensor, Tensor)> {
    call.input.check_on(device, "input")?;
    if let Some(h0) = call.h0 {
        h0.check_on(device, "h0")?;
    }
    match device {
        Device::Cpu => cpu::forward(call),
        Device::Cuda(dev) => cuda::forward(dev, algo, call, plans),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_direction_starts_at_each_rows_last_valid_step() {
        let forward: Vec<_> = (0..5).map(|s| step_time(s, 3, false)).collect();
        assert_eq!(forward, [Some(0), Some(1), Some(2), None, None]);
        let reverse: Vec<_> = (0..5).map(|s| step_time(s, 3, true)).collect();
        assert_eq!(reverse, [Some(2), Some(1), Some(0), None, None]);
    }

    #[test]
    fn lengths_must_be_one_per_row_within_one_to_t() {
        assert_eq!(check_lengths(None, 2, 4).unwrap(), [4, 4]);
        assert_eq!(check_lengths(Some(&[1, 4]), 2, 4).unwrap(), [1, 4]);
        assert!(check_lengths(Some(&[0, 4]), 2, 4).is_err());
        assert!(check_lengths(Some(&[5, 4]), 2, 4).is_err());
        assert!(check_lengths(Some(&[4]), 2, 4).is_err());
    }

    #[test]
    fn relu_keeps_nan_like_torch() {
        assert!(Nonlinearity::Relu.apply(f32::NAN).is_nan());
        assert_eq!(Nonlinearity::Relu.apply(-2.0), 0.0);
        assert_eq!(Nonlinearity::Relu.apply(3.0), 3.0);
    }
}
