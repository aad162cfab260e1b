//! Inverted dropout: y = x · keep / (1 − p), each element kept with probability 1 − p, and
//! its backward dx = dy · keep / (1 − p) with the same mask, recomputed from the seed.
//!
//! The mask comes from a counter-based generator (Philox4x32-10, see kernels/dropout.cu) keyed
//! by the seed and counted by the element's flat index: the same seed gives the same mask on
//! the CPU and on CUDA, in every dtype, whatever the launch geometry, and nothing needs to be
//! stored between forward and backward. PyTorch's own generator differs, so masks do not match
//! torch's for a seed; the formula does.
//!
//! p = 0 keeps everything (y = x), p = 1 drops everything (y = 0); p outside [0, 1] or NaN is an
//! error. As PyTorch's `x · mask · scale`, a dropped NaN or infinity gives NaN.

mod cpu;
mod cuda;

use crate::error::Result;
use crate::ops::philox::{for_each_factor, Rate};
use crate::tensor::Tensor;

fn apply(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let rate = Rate::new(p)?;
    if x.is_cuda() {
        cuda::apply(x.cuda_device()?, x, rate, seed)
    } else {
        cpu::apply(x, rate, seed)
    }
}

/// Inverted dropout of `x` with drop probability `p` and the mask of `seed`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    apply(x, p, seed)
}

/// The gradient of `dropout(x, p, seed)`: `grad_y` through the same mask and scale.
pub fn dropout_backward(grad_y: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    apply(grad_y, p, seed)
}

/// The mask `dropout` applies to the first `numel` elements (row-major) of any tensor for
/// `p` and `seed`: true where an element is kept. Computed on the host.
pub fn dropout_mask(numel: usize, p: f32, seed: u64) -> Result<Vec<bool>> {
    let rate = Rate::new(p)?;
    let mut mask = crate::size::zeros::<u8>("dropout mask", numel)?;
    for_each_factor(numel, rate, seed, |i, factor| {
        mask[i] = (factor != 0.0) as u8
    });
    Ok(mask.into_iter().map(|m| m != 0).collect())
}

#[cfg(test)]
mod tests {
    /// The kernel's source states the same constants.
    #[test]
    fn kernel_uses_the_same_generator() {
        let source = crate::device::kernels::image("dropout").unwrap().source;
        for constant in ["0x9E3779B9u", "0xBB67AE85u", "0xD2511F53u", "0xCD9E8D57u"] {
            assert!(
                source.contains(constant),
                "kernels/dropout.cu lacks {constant}"
            );
        }
    }
}
