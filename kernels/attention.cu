// attention.cu — soft attention over a source's keys: scores, a masked softmax, and the
// weighted sum of values, per (batch row, query).
//
// Shapes: q [B·Tq, K] f32 (the query side: W_q q + b_q for additive scores, the query itself
// otherwise), kp [B, L, K] (the key side, computed once per source), values [B, L, Dv],
// score_v [K] (additive only), lengths [B] int in 1..=L; context [B·Tq, Dv] and weights
// [B·Tq, L] (0 past the row's length) in the storage dtype.
//
// Scores (mode): ATT_ADDITIVE e_j = v · tanh(q + kp_j); ATT_PRODUCT e_j = scale · q · kp_j
// (general scores are products with kp = W k, dot scores with kp = k).
//
// Variants (entry points):
//   attend_fused_T              one block per (row, query): scores into shared memory, a
//                               max-subtracted softmax, the context; weights written only when
//                               asked for (non-null)
//   broadcast_add_naive_T       y[r, j, a] = q[r, a] + kp[b(r), j, a] (additive scores, naive)
//   masked_softmax_naive_f32    p = softmax(scale · e) over each row's first `length` scores
// The naive chain around them is cuBLAS: tanh (unary_naive_f32) and a GEMV with v for additive
// scores, a batched GEMM for products, and a batched GEMM for the context.
#include "common.cuh"

#define ATT_ADDITIVE 0
#define ATT_PRODUCT 1

#define ATT_THREADS 256
#define ATT_WARPS (ATT_THREADS / 32)
// Context columns per lane per pass: a pass covers 32 · CTX_PER_LANE columns.
#define CTX_PER_LANE 8
#define CTX_PASS (32 * CTX_PER_LANE)

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// The sum (or max) of every thread's `x`, returned to all; `slots` holds ATT_WARPS floats.
__device__ __forceinline__ float block_reduce(float x, float* slots, bool is_max) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    x = is_max ? warp_max(x) : warp_sum(x);
    if (lane == 0) slots[warp] = x;
    __syncthreads();
    float r = slots[0];
    for (int w = 1; w < ATT_WARPS; ++w) r = is_max ? fmaxf(r, slots[w]) : r + slots[w];
    __syncthreads();
    return r;
}

// ---
// Fused. Shared memory (dynamic, f32): q [K], v [K] (additive), p [L], the context partial sums
// [ATT_WARPS, CTX_PASS] and ATT_WARPS reduction slots. Launch: grid B·Tq, block ATT_THREADS.
template <typename T>
__device__ void attend_fused(const float* q, const T* kp, const T* values, const T* score_v,
                             float scale, const int* lengths, int tq, int len, int k, int dv,
                             int mode, T* context, T* weights) {
    extern __shared__ float smem[];
    int row = blockIdx.x, b = row / tq;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int n = lengths[b];
    float* sq = smem;
    float* sv = sq + k;
    float* sp = sv + (mode == ATT_ADDITIVE ? k : 0);
    float* part = sp + len;
    float* slots = part + ATT_WARPS * CTX_PASS;
    for (int a = tid; a < k; a += ATT_THREADS) {
        sq[a] = q[(long)row * k + a];
        if (mode == ATT_ADDITIVE) sv[a] = to_float(score_v[a]);
    }
    __syncthreads();

    // Scores: one warp per key, lanes across K.
    const T* keys = kp + (long)b * len * k;
    for (int j = warp; j < n; j += ATT_WARPS) {
        const T* key = keys + (long)j * k;
        float e = 0.f;
        if (mode == ATT_ADDITIVE) {
            for (int a = lane; a < k; a += 32) e += sv[a] * tanhf(sq[a] + to_float(key[a]));
        } else {
            for (int a = lane; a < k; a += 32) e += sq[a] * to_float(key[a]);
        }
        e = warp_sum(e);
        if (lane == 0) sp[j] = mode == ATT_ADDITIVE ? e : scale * e;
    }
    __syncthreads();

    // Softmax over the first n scores; subtracting the maximum keeps expf finite.
    float m = -3.402823466e38f;
    for (int j = tid; j < n; j += ATT_THREADS) m = fmaxf(m, sp[j]);
    m = block_reduce(m, slots, true);
    float s = 0.f;
    for (int j = tid; j < n; j += ATT_THREADS) {
        float e = expf(sp[j] - m);
        sp[j] = e;
        s += e;
    }
    // The reduction's barriers also publish every sp[j] written above.
    float inv = 1.f / block_reduce(s, slots, false);
    if (weights) {
        for (int j = tid; j < len; j += ATT_THREADS)
            weights[(long)row * len + j] = from_float<T>(j < n ? sp[j] * inv : 0.f);
    }

    // Context: warps split the keys, lanes the columns; then the warps' partial sums are added.
    const T* vals = values + (long)b * len * dv;
    for (int d0 = 0; d0 < dv; d0 += CTX_PASS) {
        float acc[CTX_PER_LANE];
#pragma unroll
        for (int i = 0; i < CTX_PER_LANE; ++i) acc[i] = 0.f;
        for (int j = warp; j < n; j += ATT_WARPS) {
            float p = sp[j];
            const T* v = vals + (long)j * dv + d0;
#pragma unroll
            for (int i = 0; i < CTX_PER_LANE; ++i) {
                int d = lane + 32 * i;
                if (d0 + d < dv) acc[i] += p * to_float(v[d]);
            }
        }
#pragma unroll
        for (int i = 0; i < CTX_PER_LANE; ++i) part[warp * CTX_PASS + lane + 32 * i] = acc[i];
        __syncthreads();
        for (int d = tid; d < CTX_PASS && d0 + d < dv; d += ATT_THREADS) {
            float c = 0.f;
            for (int w = 0; w < ATT_WARPS; ++w) c += part[w * CTX_PASS + d];
            context[(long)row * dv + d0 + d] = from_float<T>(c * inv);
        }
        __syncthreads();
    }
}

#define ATTEND_FUSED(S, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                    \
        attend_fused_##S(const float* q, const T* kp, const T* values, const T* score_v,        \
                         float scale, const int* lengths, int tq, int len, int k, int dv,        \
                         int mode, T* context, T* weights) {                                     \
        attend_fused<T>(q, kp, values, score_v, scale, lengths, tq, len, k, dv, mode, context,   \
                        weights);                                                                \
    }
FOR_EACH_DTYPE(ATTEND_FUSED)

// ---
// Naive.
#define BROADCAST_ADD_NAIVE(S, T)                                                                \
    extern "C" __global__ void broadcast_add_naive_##S(const float* q, const T* kp, float* y,    \
                                                       int rows, int tq, int len, int k) {       \
        long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;                                  \
        if (idx >= (long)rows * len * k) return;                                                 \
        int a = idx % k;                                                                         \
        long rj = idx / k;                                                                       \
        int j = rj % len, r = rj / len, b = r / tq;                                              \
        y[idx] = q[(long)r * k + a] + to_float(kp[((long)b * len + j) * k + a]);                 \
    }
FOR_EACH_DTYPE(BROADCAST_ADD_NAIVE)

// One block (ATT_THREADS) per row of e [rows, len]; p gets 0 past the row's length.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    masked_softmax_naive_f32(const float* e, float* p, const int* lengths, int tq, int len,
                             float scale) {
    __shared__ float slots[ATT_WARPS];
    int row = blockIdx.x, n = lengths[row / tq];
    const float* er = e + (long)row * len;
    float* pr = p + (long)row * len;
    float m = -3.402823466e38f;
    for (int j = threadIdx.x; j < n; j += ATT_THREADS) m = fmaxf(m, scale * er[j]);
    m = block_reduce(m, slots, true);
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += ATT_THREADS) s += expf(scale * er[j] - m);
    float inv = 1.f / block_reduce(s, slots, false);
    for (int j = threadIdx.x; j < len; j += ATT_THREADS)
        pr[j] = j < n ? expf(scale * er[j] - m) * inv : 0.f;
}
