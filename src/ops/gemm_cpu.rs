//! CPU GEMM (the `gemm` crate, with its AVX-512 kernels where the CPU has them).
//!
//! Weights are passed transposed (`[k, n]`, row-major), so that the product is computed as the
//! column-major Cᵀ = Bᵀ·Aᵀ with unit stride along its long side: the form the crate runs fastest
//! (about twice the row-major A·Bᵀ for the recurrent step's small batch).

use crate::error::Result;
use crate::size;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The element types `gemm_ab` runs in (the crate dispatches on the type).
pub(crate) trait Scalar:
    Copy + Default + PartialEq + std::ops::AddAssign + bytemuck::Zeroable + Send + Sync + 'static
{
    const ONE: Self;
}

impl Scalar for f32 {
    const ONE: Self = 1.0;
}

impl Scalar for f64 {
    const ONE: Self = 1.0;
}

/// The cores this process may use, read once: the standard library reads cgroup files each
/// time, which costs more than a small product.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One thread per 2^18 multiply-adds, up to the machine's and `max_threads`: small products
/// lose to the threads' overhead.
fn parallelism(m: usize, n: usize, k: usize, max_threads: usize) -> gemm::Parallelism {
    let work = m.saturating_mul(n).saturating_mul(k) >> 18;
    let threads = cores().min(work).min(max_threads);
    match threads {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    }
}

/// c[m, n] = a[k, m]ᵀ · b[k, n] (c overwritten), all row-major and dense: a gradient summed
/// over the k rows, read in place instead of transposed first.
pub(crate) fn gemm_atb<T: Scalar>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    gemm_atb_strided(m, n, k, a, m, b, n, c);
}

/// As `gemm_atb`, with a's and b's rows `lda` and `ldb` apart (the leading columns of wider
/// row-major matrices); c stays dense.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_atb_strided<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
) {
    assert!(c.len() >= m * n);
    // SAFETY: gemm_atb_into writes only initialised values.
    gemm_atb_into(m, n, k, a, lda, b, ldb, unsafe {
        as_output(&mut c[..m * n])
    });
}

/// `gemm_atb` into a new buffer, which the product writes whole (no zeros written first).
pub(crate) fn gemm_atb_new<T: Scalar>(
    what: &str,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
) -> Result<Vec<T>> {
    let len = size::elements(what, &[m, n])?;
    // SAFETY: gemm_atb_into writes all m·n elements.
    unsafe { size::filled(what, len, |c| gemm_atb_into(m, n, k, a, m, b, n, c)) }
}

/// The body of `gemm_atb_strided`: writes all of c[m, n] (its first m·n values), reading none
/// of it. A long sum (a weight gradient over every row of a batch) is cut in two halves, one
/// per thread, added at the end: the crate shares a product among its threads by rows and
/// columns of c, which for a few thousand values of c over thousands of rows leaves the second
/// thread nearly idle. Always two halves, so that the sums do not depend on the machine.
#[allow(clippy::too_many_arguments)]
fn gemm_atb_into<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [MaybeUninit<T>],
) {
    const LONG: usize = 1024;
    let c = &mut c[..m * n];
    if k < LONG || (m * n * k) >> 20 == 0 {
        return gemm_atb_part(m, n, k, a, lda, b, ldb, c, usize::MAX);
    }
    let half = k / 2;
    let threads = cores().div_ceil(2);
    let mut rest = vec![T::default(); m * n];
    // SAFETY: gemm_atb_part writes only initialised values.
    let rest_out = unsafe { as_output(&mut rest) };
    rayon::join(
        || gemm_atb_part(m, n, half, a, lda, b, ldb, c, threads),
        || {
            let (a, b) = (&a[half * lda..], &b[half * ldb..]);
            gemm_atb_part(m, n, k - half, a, lda, b, ldb, rest_out, threads)
        },
    );
    for (c, &r) in c.iter_mut().zip(&rest) {
        // SAFETY: the first half's product wrote every value of c.
        unsafe { *c.assume_init_mut() += r };
    }
}

/// `values` as a buffer for a product to overwrite.
///
/// # Safety
/// Only initialised values may be written through the result.
unsafe fn as_output<T>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: a T is a valid MaybeUninit<T> of the same layout; the caller writes only Ts.
    unsafe { &mut *(values as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// gemm_atb over k rows into c [m·n values], on at most `max_threads` threads.
#[allow(clippy::too_many_arguments)]
fn gemm_atb_part<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [MaybeUninit<T>],
    max_threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= m && ldb >= n && c.len() >= m * n);
    assert!(k == 0 || (a.len() >= (k - 1) * lda + m && b.len() >= (k - 1) * ldb + n));
    if k == 0 {
        c[..m * n].iter_mut().for_each(|c| {
            c.write(T::default());
        });
        return;
    }
    // SAFETY: the asserts bound every element the strides reach. Element (i, j) of c is at
    // i·n + j, (i, l) of aᵀ at l·lda + i, (l, j) of b at l·ldb + j. gemm computes
    // dst = alpha·dst + beta·lhs·rhs; dst is not read (alpha unused), so all of it is written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().cast::<T>(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            1,
            ldb as isize,
            T::default(),
            T::ONE,
            false,
            false,
            false,
            parallelism(m, n, k, max_threads),
        );
    }
}

/// c[m, n] = a[m, k] · bt[k, n] + beta · c, all row-major with leading dimensions lda, ldb, ldc,
/// on at most `max_threads` threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_ab<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    bt: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    beta: T,
    max_threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (a.len() >= (m - 1) * lda + k && bt.len() >= (k - 1) * ldb + n));
    assert!(c.len() >= (m - 1) * ldc + n);
    let parallelism = parallelism(m, n, k, max_threads);
    // SAFETY: the asserts above bound every element the strides reach in a, bt and c.
    // Cᵀ [n, m] column-major is c; Bᵀ [n, k] column-major is bt; Aᵀ [k, m] column-major is a.
    // gemm computes dst = alpha·dst + beta·lhs·rhs: alpha is our beta, its beta is 1.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            c.as_mut_ptr(),
            ldc as isize,
            1,
            beta != T::default(),
            bt.as_ptr(),
            ldb as isize,
            1,
            a.as_ptr(),
            lda as isize,
            1,
            beta,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Sizes of nn.Linear's product: `rows` rows of `k` inputs to `n` outputs.
#[derive(Clone, Copy)]
pub(crate) struct LinearSizes {
    pub rows: usize,
    pub k: usize,
    pub n: usize,
}

/// y[rows, n] = x[rows, k] · W[n, k]ᵀ (+ b) for a row-major weight W: nn.Linear.
pub(crate) fn linear<T: Scalar>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    s: LinearSizes,
) -> Result<Vec<T>> {
    let LinearSizes { rows, k, n } = s;
    let len = size::elements("the product", &[rows, n])?;
    let mut y = match b {
        // SAFETY: every row is written with the bias (n values).
        Some(b) => unsafe {
            assert_eq!(b.len(), n);
            size::filled("the product", len, |y| {
                for row in y.chunks_exact_mut(n.max(1)) {
                    for (y, &b) in row.iter_mut().zip(b) {
                        y.write(b);
                    }
                }
            })?
        },
        None => size::zeros("the product", len)?,
    };
    let beta = if b.is_some() { T::ONE } else { T::default() };
    gemm_ab(
        rows,
        n,
        k,
        x,
        k,
        &transpose(w, n, k),
        n,
        &mut y,
        n,
        beta,
        usize::MAX,
    );
    Ok(y)
}

/// dx, dW and (with a bias) db.
pub(crate) type LinearGradients<T> = (Vec<T>, Vec<T>, Option<Vec<T>>);

/// The gradients of `linear` for dy [rows, n]: (dx [rows, k], dW [n, k], db [n]), each one
/// GEMM or sum over every row; db only `with_bias`.
pub(crate) fn linear_backward<T: Scalar>(
    dy: &[T],
    x: &[T],
    w: &[T],
    s: LinearSizes,
    with_bias: bool,
) -> Result<LinearGradients<T>> {
    let dx = linear_input_grad(dy, w, s)?;
    let (dw, db) = linear_param_grads(dy, x, s, with_bias)?;
    Ok((dx, dw, db))
}

/// dx [rows, k] = dy [rows, n] · W [n, k].
pub(crate) fn linear_input_grad<T: Scalar>(dy: &[T], w: &[T], s: LinearSizes) -> Result<Vec<T>> {
    let LinearSizes { rows, k, n } = s;
    if rows == 0 || k == 0 {
        return Ok(Vec::new());
    }
    assert!(n == 0 || (dy.len() >= (rows - 1) * n + n && w.len() >= (n - 1) * k + k));
    if n == 0 {
        return size::zeros("the input gradient", size::elements("dx", &[rows, k])?);
    }
    let len = size::elements("dx", &[rows, k])?;
    // SAFETY: dx is [rows, k] dense, written whole by gemm (dst not read); the assert bounds
    // dy [rows, n] and W [n, k]. Cᵀ [k, rows] column-major is dx, Wᵀ [k, n] column-major is
    // W, dyᵀ [n, rows] column-major is dy.
    unsafe {
        size::filled("the input gradient", len, |dx| {
            gemm::gemm(
                k,
                rows,
                n,
                dx.as_mut_ptr().cast::<T>(),
                k as isize,
                1,
                false,
                w.as_ptr(),
                k as isize,
                1,
                dy.as_ptr(),
                n as isize,
                1,
                T::default(),
                T::ONE,
                false,
                false,
                false,
                parallelism(rows, k, n, usize::MAX),
            )
        })
    }
}

/// dW [n, k] = dyᵀ · x and, `with_bias`, db [n] = Σ dy over the rows.
pub(crate) fn linear_param_grads<T: Scalar>(
    dy: &[T],
    x: &[T],
    s: LinearSizes,
    with_bias: bool,
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    let LinearSizes { rows, k, n } = s;
    let dw = gemm_atb_new("the weight gradient", n, k, rows, dy, x)?;
    let db = match with_bias {
        true => {
            let mut db = size::zeros("the bias gradient", n)?;
            for row in dy.chunks_exact(n.max(1)).take(rows) {
                db.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
            }
            Some(db)
        }
        false => None,
    };
    Ok((dw, db))
}

/// The transpose of a row-major [rows, cols] matrix, in tiles: element by element, every
/// write to the transpose touches another cache line, and for a [1024, 256] weight that cost
/// a millisecond. Large ones are shared among the worker threads, a band of the transpose's
/// rows each.
pub(crate) fn transpose<T: Scalar>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    assert!(w.len() >= rows * cols);
    let mut t = vec![T::default(); rows * cols];
    // An empty matrix may still have 2^40 rows to step through.
    if t.is_empty() {
        return t;
    }
    // Band i: the transpose's rows (w's columns) from i·TILE, written tile by tile.
    let band = |(i, out): (usize, &mut [T])| {
        let c0 = i * TILE;
        for r0 in (0..rows).step_by(TILE) {
            for (c, row) in (c0..).zip(out.chunks_exact_mut(rows)) {
                for (r, x) in (r0..).zip(&mut row[r0..(r0 + TILE).min(rows)]) {
                    *x = w[r * cols + c];
                }
            }
        }
    };
    if rows * cols >= 1 << 15 {
        t.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        t.chunks_mut(TILE * rows).enumerate().for_each(band);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_ab_matches_the_definition_with_strides_and_beta() {
        let (m, n, k) = (3, 5, 4);
        let (lda, ldb, ldc) = (6, 7, 9);
        let a: Vec<f32> = (0..m * lda).map(|i| (i % 7) as f32 - 3.0).collect();
        let bt: Vec<f32> = (0..k * ldb).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let mut c: Vec<f32> = (0..m * ldc).map(|i| i as f32).collect();
        let before = c.clone();
        gemm_ab(m, n, k, &a, lda, &bt, ldb, &mut c, ldc, 2.0, 2);
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|p| a[i * lda + p] * bt[p * ldb + j]).sum();
                let want = 2.0 * before[i * ldc + j] + dot;
                assert!((c[i * ldc + j] - want).abs() < 1e-5, "({i}, {j})");
            }
            // Columns past n are untouched.
            assert_eq!(
                c[i * ldc + n..(i + 1) * ldc],
                before[i * ldc + n..(i + 1) * ldc]
            );
        }
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        // Several tiles, partial ones at both edges.
        let (rows, cols) = (37, 70);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&w, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], w[r * cols + c], "({r}, {c})");
            }
        }
    }

    #[test]
    fn gemm_atb_matches_the_definition() {
        // Long enough to be cut in two halves (and for the crate's blocking), short, and empty.
        for (m, n, k) in [(37, 29, 3001), (5, 3, 7), (4, 6, 0)] {
            let a: Vec<f64> = (0..k * m).map(|i| (i % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i % 11) as f64 * 0.25 - 1.0).collect();
            let mut c = vec![f64::NAN; m * n];
            gemm_atb(m, n, k, &a, &b, &mut c);
            let new = gemm_atb_new("c", m, n, k, &a, &b).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|l| a[l * m + i] * b[l * n + j]).sum();
                    assert!((c[i * n + j] - want).abs() < 1e-9, "{m}×{n}×{k} ({i}, {j})");
                    assert_eq!(new[i * n + j], c[i * n + j]);
                }
            }
        }
    }
}
