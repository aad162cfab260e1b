//! The keep masks of dropout: Philox4x32-10 (kernels/dropout.cu's generator, written again in
//! Rust: the same words in the same order, so that CPU and CUDA masks agree bit for bit) keyed
//! by the seed and counted by the element's flat index. Shared by the ops that drop: `dropout`
//! and the decoder's dropout before `fc`.

use crate::error::{Error, Result};

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

const MUL: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const BUMP: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32-10 of `counter` under `key`: ten rounds, the key bumped before each round after
/// the first.
pub(crate) fn philox4x32_10(mut c: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(BUMP[0]);
            key[1] = key[1].wrapping_add(BUMP[1]);
        }
        let p0 = MUL[0] as u64 * c[0] as u64;
        let p1 = MUL[1] as u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ key[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ key[1],
            p0 as u32,
        ];
    }
    c
}

/// Calls `f(i, factor)` for every element i < n, where factor is `rate.scale` for a kept
/// element and 0 for a dropped one.
pub(crate) fn for_each_factor(n: usize, rate: Rate, seed: u64, mut f: impl FnMut(usize, f32)) {
    let key = [seed as u32, (seed >> 32) as u32];
    for g in 0..n.div_ceil(4) {
        let g64 = g as u64;
        let r = philox4x32_10([g64 as u32, (g64 >> 32) as u32, 0, 0], key);
        for (j, &word) in r.iter().enumerate() {
            let i = 4 * g + j;
            if i < n {
                let kept = word as u64 >= rate.threshold;
                f(i, if kept { rate.scale } else { 0.0 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
