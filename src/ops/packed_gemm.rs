//! C = A·B for a B that is used many times: the recurrent step multiplies the same weights by a
//! small batch of h at every step. General GEMMs repack B on every call (for the step's
//! [32 × 256]·[256 × 512] that costs as much as the multiply); here B is packed once, in panels
//! of 16 columns each stored k-major, and the step only streams them.

/// Columns per panel: one AVX-512 vector of f32.
const LANES: usize = 16;
/// Panels per tile: the tile's stripe of B (2·16 columns × k) stays in L1 across row tiles.
const TILE_PANELS: usize = 2;

/// A [k, n] matrix packed for `matmul`.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// ⌈n/16⌉ panels of [k, 16], the last zero-padded.
    panels: Vec<f32>,
}

impl PackedB {
    /// B[i, j] = w[rows[j]·k + i]: the transpose of the rows `rows` of a row-major matrix with
    /// k columns (a PyTorch weight [out, in] gives B = Wᵀ restricted to those outputs).
    pub fn from_rows(w: &[f32], k: usize, rows: &[usize]) -> Self {
        let n = rows.len();
        let mut panels = vec![0f32; n.div_ceil(LANES) * k * LANES];
        for (j, &row) in rows.iter().enumerate() {
            let panel = &mut panels[(j / LANES) * k * LANES..][..k * LANES];
            for (i, &v) in w[row * k..(row + 1) * k].iter().enumerate() {
                panel[i * LANES + j % LANES] = v;
            }
        }
        Self { k, n, panels }
    }

    /// c[m, n] = a[m, k]·B, row-major with leading dimensions lda and ldc; c's columns past n
    /// are untouched.
    pub fn matmul(&self, m: usize, a: &[f32], lda: usize, c: &mut [f32], ldc: usize) {
        if m == 0 || self.n == 0 {
            return;
        }
        assert!(self.k == 0 || a.len() >= (m - 1) * lda + self.k);
        assert!(c.len() >= (m - 1) * ldc + self.n);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; the asserts above bound a (read only when k > 0)
                // and c as `avx512::matmul` requires.
                return unsafe { avx512::matmul(self, m, a.as_ptr(), lda, c.as_mut_ptr(), ldc) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { matmul_avx2(self, m, a, lda, c, ldc) };
            }
        }
        matmul_portable(self, m, a, lda, c, ldc)
    }
}

/// Runs `$tile::<MR, NP>` over every tile of C, MR rows by NP panels, largest tiles first.
macro_rules! for_each_tile {
    ($b:expr, $m:expr, $tile:ident, $($arg:expr),*) => {{
        let panels = $b.n.div_ceil(LANES);
        let mut p = 0;
        while p < panels {
            let np = TILE_PANELS.min(panels - p);
            let mut r = 0;
            while r < $m {
                let mr = match $m - r {
                    12.. => 12,
                    8.. => 8,
                    4.. => 4,
                    2.. => 2,
                    _ => 1,
                };
                match (mr, np) {
                    (12, 2) => $tile::<12, 2>($b, r, p, $($arg),*),
                    (8, 2) => $tile::<8, 2>($b, r, p, $($arg),*),
                    (4, 2) => $tile::<4, 2>($b, r, p, $($arg),*),
                    (2, 2) => $tile::<2, 2>($b, r, p, $($arg),*),
                    (1, 2) => $tile::<1, 2>($b, r, p, $($arg),*),
                    (12, _) => $tile::<12, 1>($b, r, p, $($arg),*),
                    (8, _) => $tile::<8, 1>($b, r, p, $($arg),*),
                    (4, _) => $tile::<4, 1>($b, r, p, $($arg),*),
                    (2, _) => $tile::<2, 1>($b, r, p, $($arg),*),
                    _ => $tile::<1, 1>($b, r, p, $($arg),*),
                }
                r += mr;
            }
            p += np;
        }
    }};
}

/// The tile of rows [r, r + MR) and panels [p, p + NP), in plain Rust.
#[inline(always)]
fn tile_portable<const MR: usize, const NP: usize>(
    b: &PackedB,
    r: usize,
    p: usize,
    a: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let k = b.k;
    let mut acc = [[[0f32; LANES]; NP]; MR];
    for i in 0..k {
        for q in 0..NP {
            let w = &b.panels[(p + q) * k * LANES + i * LANES..][..LANES];
            for (row, acc_row) in acc.iter_mut().enumerate() {
                let x = a[(r + row) * lda + i];
                for (s, &w) in acc_row[q].iter_mut().zip(w) {
                    *s += x * w;
                }
            }
        }
    }
    for (row, acc_row) in acc.iter().enumerate() {
        for (q, lanes) in acc_row.iter().enumerate() {
            let col = (p + q) * LANES;
            let width = LANES.min(b.n - col);
            c[(r + row) * ldc + col..][..width].copy_from_slice(&lanes[..width]);
        }
    }
}

fn matmul_portable(b: &PackedB, m: usize, a: &[f32], lda: usize, c: &mut [f32], ldc: usize) {
    for_each_tile!(b, m, tile_portable, a, lda, c, ldc);
}

/// The portable tiles compiled for AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matmul_avx2(b: &PackedB, m: usize, a: &[f32], lda: usize, c: &mut [f32], ldc: usize) {
    matmul_portable(b, m, a, lda, c, ldc)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedB, LANES, TILE_PANELS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F; p < ⌈n/16⌉ and r + MR ≤ m; unless k is 0, a holds rows
    /// [r, r + MR) of k columns at stride lda; c holds the same rows of n columns at stride ldc.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const MR: usize, const NP: usize>(
        b: &PackedB,
        r: usize,
        p: usize,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let k = b.k;
        // SAFETY: `panels` holds ⌈n/16⌉·k·16 values and p < ⌈n/16⌉ (the caller's contract), so
        // the offset stays inside it (or one past its end when k is 0).
        let panels = unsafe { b.panels.as_ptr().add(p * k * LANES) };
        // Row r of a, only read when k > 0: wrapping, since with k = 0 `a` may be an empty
        // slice's pointer that no offset may leave.
        let a = a.wrapping_add(r * lda);
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        for i in 0..k {
            let mut w = [_mm512_setzero_ps(); NP];
            for (q, w) in w.iter_mut().enumerate() {
                // SAFETY: for_each_tile gives p + q < ⌈n/16⌉, and i < k: the 16 values at
                // (p + q)·k·16 + i·16 lie in `panels` (AVX-512F: the caller's contract).
                *w = unsafe { _mm512_loadu_ps(panels.add(q * k * LANES + i * LANES)) };
            }
            for (row, acc_row) in acc.iter_mut().enumerate() {
                // SAFETY: k > 0 here, so by the caller's contract row r + row < m of a holds
                // column i < k.
                let x = _mm512_set1_ps(unsafe { *a.add(row * lda + i) });
                for (s, &w) in acc_row.iter_mut().zip(&w) {
                    *s = _mm512_fmadd_ps(x, w, *s);
                }
            }
        }
        for (row, acc_row) in acc.iter().enumerate() {
            for (q, &lanes) in acc_row.iter().enumerate() {
                let col = (p + q) * LANES;
                // SAFETY: row r + row < m and col < n (p + q < ⌈n/16⌉), so the address is in
                // c (the caller's contract); a full store writes columns [col, col + 16) only
                // when col + 16 ≤ n, else the mask keeps the n - col < 16 columns that exist.
                unsafe {
                    let dst = c.add((r + row) * ldc + col);
                    match b.n - col {
                        LANES.. => _mm512_storeu_ps(dst, lanes),
                        width => _mm512_mask_storeu_ps(dst, (1u16 << width) - 1, lanes),
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; unless k is 0, a holds m rows of k columns at stride lda
    /// ((m-1)·lda + k values); c holds m rows of n columns at stride ldc ((m-1)·ldc + n).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul(
        b: &PackedB,
        m: usize,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: for_each_tile calls `tile` with r + MR ≤ m and p + NP ≤ ⌈n/16⌉; the CPU
        // features and the extents of a and c are this function's own contract.
        unsafe { for_each_tile!(b, m, tile, a, lda, c, ldc) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape and a partial last panel, against the definition, on every path this
    /// CPU has.
    #[test]
    fn matmul_matches_the_definition() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 7, 5),
            (13, 33, 17),
            (32, 64, 48),
            (27, 19, 100),
        ] {
            let w: Vec<f32> = (0..(n + 3) * k)
                .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let rows: Vec<usize> = (0..n).map(|j| (j * 5 + 2) % (n + 3)).collect();
            let lda = k + 2;
            let a: Vec<f32> = (0..m * lda)
                .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let packed = PackedB::from_rows(&w, k, &rows);
            let ldc = n + 4;
            let want: Vec<f32> = (0..m * ldc)
                .map(|idx| {
                    let (i, j) = (idx / ldc, idx % ldc);
                    if j >= n {
                        return -7.0;
                    }
                    (0..k).map(|x| a[i * lda + x] * w[rows[j] * k + x]).sum()
                })
                .collect();
            let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
            let mut c = vec![-7.0; m * ldc];
            packed.matmul(m, &a, lda, &mut c, ldc);
            paths.push(("best", c));
            let mut c = vec![-7.0; m * ldc];
            matmul_portable(&packed, m, &a, lda, &mut c, ldc);
            paths.push(("portable", c));
            for (path, got) in paths {
                for (idx, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{path} m={m} k={k} n={n} at {idx}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
