//! The float types the CPU paths compute in: f32 for speed (the branch-free activations of
//! `math_cpu`), f64 for the reference the tests compare against. One generic body serves both,
//! so the reference checks the very code that runs.

use crate::ops::gemm_cpu::Scalar;
use crate::ops::math_cpu;

pub(crate) trait Real:
    Scalar
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Send
    + Sync
{
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn sigmoid(self) -> Self;
}

impl Real for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        math_cpu::exp(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        math_cpu::tanh(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        math_cpu::sigmoid(self)
    }
}

impl Real for f64 {
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + f64::exp(-self))
    }
}

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
