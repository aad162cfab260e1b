// attention.cu — soft attention over a source's keys: scores, a masked softmax, and the
// weighted sum of values, per (batch row, query).
//
// Shapes: q [B·Tq, K] (the query side: W_q q + b_q in f32 for additive scores, the query
// itself in the storage dtype otherwise), kp [B, L, K] (the key side, computed once per source), values [B, L, Dv],
// score_v [K] (additive only), lengths [B] int in 1..=L; context [B·Tq, Dv] and weights
// [B·Tq, L] (0 past the row's length) in the storage dtype.
//
// Scores (mode): ATT_ADDITIVE e_j = v · tanh(q + kp_j); ATT_PRODUCT e_j = scale · q · kp_j
// (general scores are products with kp = W k, dot scores with kp = k).
//
// Variants (entry points):
//   attend_fused_T              one block per (row, query, chunk of keys): scores into shared
//                               memory, a max-subtracted softmax, the context; weights written
//                               only when asked for (non-null)
//   attend_combine_T            the chunks of a row rescaled to one maximum and added
//   broadcast_add_naive_T       y[r, j, a] = q[r, a] + kp[b(r), j, a] (additive scores, naive)
//   masked_softmax_naive_f32    p = softmax(scale · e) over each row's first `length` scores
// The naive chain around them is cuBLAS: tanh (unary_naive_f32) and a GEMV with v for additive
// scores, a batched GEMM for products, and a batched GEMM for the context.
#include "attention.cuh"

// Context columns per lane per pass: a pass covers 32 · CTX_PER_LANE columns.
#define CTX_PER_LANE 8
#define CTX_PASS (32 * CTX_PER_LANE)

// ---
// Fused, flash-decoding style: the keys of a row are cut into `splits` chunks of `chunk`, one
// block (ATT_THREADS) per (row, chunk), so that a single decoding step still spreads over the
// GPU. A block computes its chunk's scores into shared memory, their maximum m, p_j = e^(e_j-m),
// l = Σ p_j and c = Σ p_j v_j. With one chunk it normalises and writes the context (and the
// weights) itself; otherwise it leaves (m, l, c) in `partial` [rows, splits, 2 + Dv] (and p in
// `probs` [rows, L] when the weights are wanted) and attend_combine rescales the chunks by
// e^(m - max m) and adds them. Scores never reach global memory unless the weights are asked
// for. Shared memory (dynamic, f32): q [K], v [K] (additive), p [chunk], the context partial
// sums [ATT_WARPS, CTX_PASS] and ATT_WARPS reduction slots.

template <typename T>
__device__ void attend_fused(const float* qf, const T* qt, const T* kp, const T* values,
                             const T* score_v, float scale, const int* lengths, int tq, int len,
                             int k, int dv, int mode, int chunk, int splits, float* partial,
                             float* probs, T* context, T* weights) {
    extern __shared__ float smem[];
    int row = blockIdx.x, split = blockIdx.y, b = row / tq;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int n = lengths[b];
    int j0 = split * chunk, j1 = min(j0 + chunk, n);
    // Chunks past the row's length hold no keys; attend_combine does not read them.
    if (j0 >= n) return;
    float* sq = smem;
    float* sv = sq + k;
    float* sp = sv + (mode == ATT_ADDITIVE ? k : 0);
    float* part = sp + chunk;
    float* slots = part + ATT_WARPS * CTX_PASS;
    for (int a = tid; a < k; a += ATT_THREADS) {
        sq[a] = qf ? qf[(long)row * k + a] : to_float(qt[(long)row * k + a]);
        if (mode == ATT_ADDITIVE) sv[a] = to_float(score_v[a]);
    }
    __syncthreads();

    // Scores: one warp per key.
    const T* keys = kp + (long)b * len * k;
    for (int j = j0 + warp; j < j1; j += ATT_WARPS) {
        float e = score(sq, sv, keys + (long)j * k, k, lane, mode);
        if (lane == 0) sp[j - j0] = mode == ATT_ADDITIVE ? e : scale * e;
    }
    __syncthreads();

    // The chunk's softmax terms; subtracting its maximum keeps expf finite.
    float m = -3.402823466e38f;
    for (int j = tid; j < j1 - j0; j += ATT_THREADS) m = fmaxf(m, sp[j]);
    m = block_reduce(m, slots, true);
    float s = 0.f;
    for (int j = tid; j < j1 - j0; j += ATT_THREADS) {
        float e = expf(sp[j] - m);
        sp[j] = e;
        s += e;
    }
    // The reduction's barriers also publish every sp[j] written above.
    float l = block_reduce(s, slots, false);
    float norm = splits == 1 ? 1.f / l : 1.f;
    if (splits == 1 && weights) {
        for (int j = tid; j < len; j += ATT_THREADS)
            weights[(long)row * len + j] = from_float<T>(j < n ? sp[j] * norm : 0.f);
    }
    if (splits > 1 && probs) {
        for (int j = tid; j < j1 - j0; j += ATT_THREADS) probs[(long)row * len + j0 + j] = sp[j];
    }
    float* out = partial + ((long)row * splits + split) * (2 + dv);
    if (splits > 1 && tid == 0) {
        out[0] = m;
        out[1] = l;
    }

    // Context: warps split the keys, lanes the columns; then the warps' sums are added.
    const T* vals = values + (long)b * len * dv;
    for (int d0 = 0; d0 < dv; d0 += CTX_PASS) {
        float acc[CTX_PER_LANE];
#pragma unroll
        for (int i = 0; i < CTX_PER_LANE; ++i) acc[i] = 0.f;
        for (int j = j0 + warp; j < j1; j += ATT_WARPS) {
            float p = sp[j - j0];
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
            if (splits == 1) context[(long)row * dv + d0 + d] = from_float<T>(c * norm);
            else out[2 + d0 + d] = c;
        }
        __syncthreads();
    }
}

#define ATTEND_FUSED(S, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attend_fused_##S(                  \
        const float* qf, const T* qt, const T* kp, const T* values, const T* score_v,            \
        float scale, const int* lengths, int tq, int len, int k, int dv, int mode, int chunk,    \
        int splits, float* partial, float* probs, T* context, T* weights) {                      \
        attend_fused<T>(qf, qt, kp, values, score_v, scale, lengths, tq, len, k, dv, mode,       \
                        chunk, splits, partial, probs, context, weights);                        \
    }
FOR_EACH_DTYPE(ATTEND_FUSED)

// The chunks of a row combined: with M the largest chunk maximum and f_s = e^(m_s - M), the
// context is Σ f_s c_s / Σ f_s l_s, and weight j of chunk s is f_s p_j / Σ f_s l_s. One block
// (ATT_THREADS) per row; dynamic shared memory: `splits` floats, padded (the loop over them is
// unrolled into wide loads that may read a few past the last).
template <typename T>
__device__ void attend_combine(const float* partial, const float* probs, const int* lengths,
                               int tq, int len, int dv, int chunk, int splits, T* context,
                               T* weights) {
    extern __shared__ float factor[];
    __shared__ float slots[ATT_WARPS];
    int row = blockIdx.x, n = lengths[row / tq];
    int used = (n + chunk - 1) / chunk;
    const float* in = partial + (long)row * splits * (2 + dv);
    float m = -3.402823466e38f;
    for (int s = threadIdx.x; s < used; s += ATT_THREADS) m = fmaxf(m, in[(long)s * (2 + dv)]);
    m = block_reduce(m, slots, true);
    float total = 0.f;
    for (int s = threadIdx.x; s < used; s += ATT_THREADS) {
        float f = expf(in[(long)s * (2 + dv)] - m);
        factor[s] = f;
        total += f * in[(long)s * (2 + dv) + 1];
    }
    float inv = 1.f / block_reduce(total, slots, false);
    for (int d = threadIdx.x; d < dv; d += ATT_THREADS) {
        float c = 0.f;
        for (int s = 0; s < used; ++s) c += factor[s] * in[(long)s * (2 + dv) + 2 + d];
        context[(long)row * dv + d] = from_float<T>(c * inv);
    }
    if (weights) {
        for (int j = threadIdx.x; j < len; j += ATT_THREADS) {
            float w = j < n ? probs[(long)row * len + j] * factor[j / chunk] * inv : 0.f;
            weights[(long)row * len + j] = from_float<T>(w);
        }
    }
}

#define ATTEND_COMBINE(S, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attend_combine_##S(                \
        const float* partial, const float* probs, const int* lengths, int tq, int len, int dv,  \
        int chunk, int splits, T* context, T* weights) {                                         \
        attend_combine<T>(partial, probs, lengths, tq, len, dv, chunk, splits, context, weights); \
    }
FOR_EACH_DTYPE(ATTEND_COMBINE)

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
