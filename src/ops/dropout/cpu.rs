//! The CPU reference, with the generator of kernels/dropout.cu written again in Rust: the same
//! words in the same order, so that masks agree bit for bit.

use super::Rate;
use crate::error::Result;
use crate::tensor::Tensor;

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
pub(super) fn for_each_factor(n: usize, rate: Rate, seed: u64, mut f: impl FnMut(usize, f32)) {
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

pub(super) fn apply(x: &Tensor, rate: Rate, seed: u64) -> Result<Tensor> {
    let mut values = x.to_vec_f32()?;
    for_each_factor(values.len(), rate, seed, |i, factor| values[i] *= factor);
    Tensor::from_f32(&values, x.shape(), x.dtype())
}
