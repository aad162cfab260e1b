// reduce.cu — the sum and the mean over one dimension, and their backward. The input is
// viewed as x [outer, n, inner] (the reduced dimension in the middle); y [outer, inner].
// Storage in the dtype, accumulation in f32, deterministic: no atomics, every output element is
// summed by one block in an order fixed by the launch's `tile`.
//
// Variants (entry points, T = f32 | f16 | bf16; op codes REDUCE_* of codes.cuh):
//   reduce_forward_T    y[o, c] = Σ_k x[o, k, c]  (op REDUCE_SUM), or that sum / n (REDUCE_MEAN)
//   reduce_backward_T   dx[o, k, c] = dy[o, c]     (REDUCE_SUM), or dy[o, c] / n (REDUCE_MEAN)
//
// reduce_forward: a strip is `tile` consecutive output columns c of one o; a block of
// blockDim.x threads (a power of two, a multiple of `tile`, itself a power of two ≤ 32) takes
// strips blockIdx.x, blockIdx.x + gridDim.x, ... Thread t owns column lane = t % tile and rows
// k ≡ t / tile (mod blockDim.x / tile): a warp reads 32 / tile rows of `tile` columns, which
// for inner ≤ tile are 32 consecutive elements. The per-thread sums then meet in a tree in
// dynamic shared memory (blockDim.x floats).
#include "common.cuh"

// ---
// Forward.

template <typename T>
__device__ void reduce_forward(const T* x, T* y, unsigned long long outer, unsigned long long n,
                               unsigned long long inner, int tile, int op) {
    DYNAMIC_SHARED(float, part);
    const unsigned t = threadIdx.x, lane = t % tile, group = t / tile;
    const unsigned groups = blockDim.x / tile;
    const unsigned long long tiles = (inner + tile - 1) / tile, strips = outer * tiles;
    for (unsigned long long s = blockIdx.x; s < strips; s += gridDim.x) {
        const unsigned long long o = s / tiles, c = (s % tiles) * tile + lane;
        float acc = 0.f;
        if (c < inner) {
            const T* column = x + o * n * inner + c;
            for (unsigned long long k = group; k < n; k += groups)
                acc += to_float(column[k * inner]);
        }
        part[t] = acc;
        __syncthreads();
        for (unsigned half = groups / 2; half > 0; half /= 2) {
            if (group < half) part[t] += part[t + half * tile];
            __syncthreads();
        }
        if (group == 0 && c < inner) {
            const float total = part[t];
            y[o * inner + c] = from_float<T>(op == REDUCE_MEAN ? total / (float)n : total);
        }
        // The next strip overwrites `part`.
        __syncthreads();
    }
}

// ---
// Backward: every element of dx once (grid-stride), its dy broadcast over k.

template <typename T>
__device__ void reduce_backward(const T* dy, T* dx, unsigned long long total,
                                unsigned long long n, unsigned long long inner, int op) {
    const unsigned long long slab = n * inner;
    GRID_STRIDE_LOOP(i, total) {
        const float g = to_float(dy[(i / slab) * inner + i % inner]);
        dx[i] = from_float<T>(op == REDUCE_MEAN ? g / (float)n : g);
    }
}

// ---
// Entry points.
#define REDUCE_ENTRIES(S, T)                                                                     \
    extern "C" __global__ void reduce_forward_##S(const T* x, T* y, unsigned long long outer,    \
                                                  unsigned long long n,                          \
                                                  unsigned long long inner, int tile, int op) {  \
        reduce_forward(x, y, outer, n, inner, tile, op);                                         \
    }                                                                                            \
    extern "C" __global__ void reduce_backward_##S(const T* dy, T* dx, unsigned long long total, \
                                                   unsigned long long n,                         \
                                                   unsigned long long inner, int op) {           \
        reduce_backward(dy, dx, total, n, inner, op);                                            \
    }
FOR_EACH_DTYPE(REDUCE_ENTRIES)
