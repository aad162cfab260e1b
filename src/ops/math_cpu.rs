//! Vectorisable f32 activations for the CPU path. libm's tanhf and expf are scalar calls per
//! element and dominated the CPU step's elementwise part; these are branch-free, so loops over
//! them compile to SIMD. tanh is Eigen's rational approximation (clamped at ±7.905, where it
//! reaches 1 in f32); exp is Cephes' range reduction and polynomial, with the rounding done by
//! adding 1.5·2²³ so that no libm call is left.

use crate::ops::gemm_cpu::Scalar;
use std::ops::{Add, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The float types the CPU paths compute in: f32 (the default, with the activations below)
/// and f64 (the reference the f32 path is checked against). One generic body serves both, so
/// the reference checks the very code that runs.
pub(crate) trait Real:
    Scalar
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + SubAssign
    + MulAssign
{
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn sigmoid(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        tanh(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        sigmoid(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
}

/// Defines `$name` to run `$body` (a function of the same arguments) compiled for the widest
/// vector extension this CPU has: the build targets baseline x86-64, whose SSE2 leaves most of
/// the vector width unused. Only what `$body` inlines is compiled wider, so its helpers are
/// `#[inline(always)]`.
macro_rules! widest {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$t:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:ident;) => {
        $(#[$meta])*
        $vis fn $name<$t: $bound>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<$t: $bound>($($arg: $ty),*) -> $ret {
                    $body::<$t>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<$t: $bound>($($arg: $ty),*) -> $ret {
                    $body::<$t>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512::<$t>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2::<$t>($($arg),*) };
                }
            }
            $body::<$t>($($arg),*)
        }
    };
}
pub(crate) use widest;

/// The column sums of `rows` [n, width] row-major, added into `sums`, accumulated in f64 so
/// that a bias gradient over thousands of rows keeps f32 accuracy where its terms cancel.
pub(crate) fn add_column_sums<T: Real>(sums: &mut [T], rows: &[T], width: usize) {
    let mut acc: Vec<f64> = sums.iter().map(|s| s.to_f64()).collect();
    for row in rows.chunks_exact(width.max(1)) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v.to_f64());
    }
    sums.iter_mut()
        .zip(acc)
        .for_each(|(s, a)| *s = T::from_f64(a));
}

/// Σ a_i b_i, in eight interleaved partial sums: they vectorise (a single running sum may not
/// be reordered), and each sums an eighth of the terms.
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let mut acc = [T::default(); 8];
    let (head, tail) = (n / 8 * 8, n % 8);
    for (x, y) in a[..head].chunks_exact(8).zip(b[..head].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    for k in 0..tail {
        acc[k] += a[head + k] * b[head + k];
    }
    let (lo, hi) = acc.split_at(4);
    let mut s = T::default();
    for k in 0..4 {
        s += lo[k] + hi[k];
    }
    s
}

/// y += alpha · x.
#[inline(always)]
pub(crate) fn axpy<T: Real>(y: &mut [T], alpha: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// tanh(x) to within 5e-7 absolute and relative; NaN stays NaN.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A: [f32; 7] = [
        4.893_524_6e-3,
        6.372_619_3e-4,
        1.485_722_4e-5,
        5.122_297e-8,
        -8.604_672e-11,
        2.000_188e-13,
        -2.760_768_5e-16,
    ];
    const B: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347e-4, 1.198_258_4e-6];
    // f32::clamp keeps NaN (min/max would turn it into a bound).
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = A[6];
    for &a in A[..6].iter().rev() {
        p = p * x2 + a;
    }
    let mut q = B[3];
    for &b in B[..3].iter().rev() {
        q = q * x2 + b;
    }
    x * p / q
}

/// e^x to within 3e-7 relative for x in [-87, 88] (clamped outside); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const P: [f32; 6] = [
        1.987_569_2e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // 2^n from the integer in `shifted`'s mantissa: n + 127 into the exponent field.
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// The logistic function 1 / (1 + e^-x), with exp's relative accuracy.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_and_sigmoid_are_within_3e7_relative() {
        let mut worst = (0f64, 0f64);
        for k in -870_000..=880_000 {
            let x = k as f32 * 1e-4;
            let want = (x as f64).exp();
            let err = (super::exp(x) as f64 - want).abs() / want;
            let s_want = 1.0 / (1.0 + (-x as f64).exp());
            let s_err = (super::sigmoid(x) as f64 - s_want).abs() / s_want;
            worst = (worst.0.max(err), worst.1.max(s_err));
        }
        assert!(
            worst.0 < 3e-7 && worst.1 < 3e-7,
            "max relative errors {worst:?}"
        );
        assert!(super::exp(f32::NAN).is_nan() && super::sigmoid(f32::NAN).is_nan());
        assert_eq!(super::sigmoid(-200.0).min(1e-30), super::sigmoid(-200.0));
        assert_eq!(super::sigmoid(200.0), 1.0);
    }

    #[test]
    fn tanh_is_within_5e7_of_libm() {
        let mut worst = 0f64;
        for k in -200_000..=200_000 {
            let x = k as f32 * 6e-5;
            let want = (x as f64).tanh();
            let err = (super::tanh(x) as f64 - want).abs() / want.abs().max(1e-30);
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert_eq!(super::tanh(40.0), 1.0);
        assert_eq!(super::tanh(-40.0), -1.0);
        assert!(super::tanh(f32::NAN).is_nan());
    }
}
