// dropout.cu — inverted dropout: y = x · keep / (1 − p), with the keep mask drawn from a
// counter-based generator, so that the backward recomputes it from the seed (no mask is
// stored) and the CPU reference (src/ops/dropout/cpu.rs) draws the same mask bit for bit.
//
// The mask: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11; the Random123 reference) with key (seed mod 2^32, seed / 2^32) and counter
// (g mod 2^32, g / 2^32, 0, 0) gives four 32-bit words r[0..4] for elements 4g .. 4g + 3;
// element i is kept when r[i % 4] >= threshold, where threshold = ⌈p · 2^32⌉ comes from the
// host (2^32 for p = 1: nothing kept). The mask depends on (seed, i) only: not on the dtype,
// the launch geometry or the tensor's shape. As PyTorch's x · mask · scale, a dropped NaN or
// infinity gives NaN.
//
// Variants (entry points, T = f32 | f16 | bf16):
//   dropout_apply_T   y = x · (kept ? scale : 0) over n elements: the forward on x and the
//                     backward on dy (the same mask). Grid-stride over groups of four.
#include "common.cuh"

// ---
// Philox4x32-10.

__device__ __forceinline__ unsigned philox_mul_hi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

// Ten rounds on counter c with key (k0, k1), the key bumped before each round after the first.
__device__ __forceinline__ void philox4x32_10(unsigned (&c)[4], unsigned k0, unsigned k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned hi0 = philox_mul_hi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        const unsigned hi1 = philox_mul_hi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        c[0] = hi1 ^ c[1] ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c[3] ^ k1;
        c[3] = lo0;
    }
}

// ---
// Dropout.

template <typename T>
__device__ void dropout_apply(const T* x, T* y, unsigned long long n, unsigned long long seed,
                              unsigned long long threshold, float scale) {
    const unsigned long long groups = n / 4 + (n % 4 != 0);
    GRID_STRIDE_LOOP(g, groups) {
        unsigned r[4] = {(unsigned)g, (unsigned)(g >> 32), 0u, 0u};
        philox4x32_10(r, (unsigned)seed, (unsigned)(seed >> 32));
        for (int j = 0; j < 4; ++j) {
            const unsigned long long i = 4 * g + j;
            if (i < n) y[i] = from_float<T>(to_float(x[i]) * (r[j] >= threshold ? scale : 0.f));
        }
    }
}

// ---
// Entry points.
#define DROPOUT_ENTRIES(S, T)                                                                    \
    extern "C" __global__ void dropout_apply_##S(const T* x, T* y, unsigned long long n,         \
                                                 unsigned long long seed,                        \
                                                 unsigned long long threshold, float scale) {    \
        dropout_apply(x, y, n, seed, threshold, scale);                                          \
    }
FOR_EACH_DTYPE(DROPOUT_ENTRIES)
