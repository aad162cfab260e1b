//! CPU GEMM (the `gemm` crate, with its AVX-512 kernels where the CPU has them).
//!
//! Weights are passed transposed (`[k, n]`, row-major), so that the product is computed as the
//! column-major Cᵀ = Bᵀ·Aᵀ with unit stride along its long side: the form the crate runs fastest
//! (about twice the row-major A·Bᵀ for the recurrent step's small batch).

/// The element types `gemm_ab` runs in (the crate dispatches on the type).
pub(crate) trait Scalar: Copy + Default + PartialEq + std::ops::AddAssign + 'static {
    const ONE: Self;
}

impl Scalar for f32 {
    const ONE: Self = 1.0;
}

impl Scalar for f64 {
    const ONE: Self = 1.0;
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
    // One thread per 2^18 multiply-adds, up to the machine's: small products lose to the
    // threads' overhead.
    let work = m.saturating_mul(n).saturating_mul(k) >> 18;
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(work)
        .min(max_threads);
    let parallelism = match threads {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
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

/// y[rows, n] = x[rows, k] · W[n, k]ᵀ (+ b) for a row-major weight W: nn.Linear.
pub(crate) fn linear<T: Scalar>(x: &[T], k: usize, w: &[T], b: Option<&[T]>) -> Vec<T> {
    let (rows, n) = (x.len() / k, w.len() / k);
    let mut y = vec![T::default(); rows * n];
    if let Some(b) = b {
        for row in y.chunks_exact_mut(n) {
            row.copy_from_slice(b);
        }
    }
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
    y
}

/// The gradients of `linear` for dy [rows, n]: (dx [rows, k], dW [n, k], db [n]), each one
/// GEMM or sum over every row.
pub(crate) fn linear_backward<T: Scalar>(
    dy: &[T],
    x: &[T],
    k: usize,
    w: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (rows, n) = (x.len() / k, w.len() / k);
    let mut dx = vec![T::default(); rows * k];
    gemm_ab(
        rows,
        k,
        n,
        dy,
        n,
        w,
        k,
        &mut dx,
        k,
        T::default(),
        usize::MAX,
    );
    let mut dw = vec![T::default(); n * k];
    let dy_t = transpose(dy, rows, n);
    gemm_ab(
        n,
        k,
        rows,
        &dy_t,
        rows,
        x,
        k,
        &mut dw,
        k,
        T::default(),
        usize::MAX,
    );
    let mut db = vec![T::default(); n];
    for row in dy.chunks_exact(n) {
        db.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
    }
    (dx, dw, db)
}

/// The transpose of a row-major [rows, cols] matrix.
pub(crate) fn transpose<T: Scalar>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); rows * cols];
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
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
    }
}
