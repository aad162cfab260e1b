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

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// What the kernel and the reference need of p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// An element is kept when its 32-bit draw is at least this: ⌈p · 2^32⌉ (2^32 for p = 1).
    pub threshold: u64,
    /// 1 / (1 − p) in f32 (0 for p = 1, where nothing is kept).
    pub scale: f32,
}

impl Rate {
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Config(format!(
                "dropout: p = {p} is outside [0, 1] (the probability of dropping an element)"
            )));
        }
        let p = p as f64;
        // Exact: p has 24 significant bits, so p · 2^32 is a representable f64.
        let threshold = (p * 4_294_967_296.0).ceil() as u64;
        let scale = if p == 1.0 {
            0.0
        } else {
            (1.0 / (1.0 - p)) as f32
        };
        Ok(Rate { threshold, scale })
    }
}

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
    cpu::for_each_factor(numel, rate, seed, |i, factor| {
        mask[i] = (factor != 0.0) as u8
    });
    Ok(mask.into_iter().map(|m| m != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::cpu::philox4x32_10;
    use super::Rate;

    /// Random123's known answers for Philox4x32-10 (kat_vectors).
    #[test]
    fn philox_matches_the_reference_vectors() {
        let cases = [
            (
                [0u32; 4],
                [0u32; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (counter, key, want) in cases {
            assert_eq!(philox4x32_10(counter, key), want, "{counter:x?} {key:x?}");
        }
    }

    #[test]
    fn rates_round_p_up_to_the_draws() {
        assert_eq!(
            Rate::new(0.0).unwrap(),
            Rate {
                threshold: 0,
                scale: 1.0
            }
        );
        assert_eq!(
            Rate::new(1.0).unwrap(),
            Rate {
                threshold: 1 << 32,
                scale: 0.0
            }
        );
        assert_eq!(Rate::new(0.25).unwrap().threshold, 1 << 30);
        assert_eq!(Rate::new(0.25).unwrap().scale, 4.0 / 3.0);
        for p in [-0.1, 1.0 + f32::EPSILON, f32::NAN, f32::INFINITY] {
            assert!(Rate::new(p).is_err(), "{p}");
        }
    }

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
