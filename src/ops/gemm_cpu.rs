//! CPU GEMM (the `gemm` crate) in the same row-major terms as the cuBLAS wrapper.

/// c[m, n] = a[m, k] · b[n, k]ᵀ + beta · c, all row-major with leading dimensions lda, ldb, ldc.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_abt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (a.len() >= (m - 1) * lda + k && b.len() >= (n - 1) * ldb + k));
    assert!(c.len() >= (m - 1) * ldc + n);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallelism = if threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every element the strides reach in a, b and c.
    // gemm computes dst = alpha·dst + beta·lhs·rhs: alpha is our beta, its beta is 1.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            ldb as isize,
            1,
            beta,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
