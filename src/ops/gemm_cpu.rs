//! CPU GEMM (matrixmultiply) in the same row-major terms as the cuBLAS wrapper.

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
    // SAFETY: the asserts above bound every element the strides reach in a, b and c.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            1,
            ldb as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}
