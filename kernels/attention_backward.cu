// attention_backward.cu — the backward of soft attention (attention.cu): the gradients of
// Σ context ⊙ dctx with respect to the query side, the key side, the values and the additive
// score vector. Scores and weights are recomputed from the inputs, not kept from the forward.
//
// Shapes: as attention.cu (R = B·Tq rows, K the width of the scores' operands: A or Dq), plus
// dctx [R, Dv] in the storage dtype. Per row r and key j below the row's length n:
//   p = softmax(e),  dp_j = dctx_r · values_j,  ds_j = p_j (dp_j − Σ_i p_i dp_i)
// times `scale` for products; p and ds are 0 past n. Additive, with u = tanh(q_r + kp_j) and
// g = ds_j (1 − u²): dkp_j = v ⊙ Σ_r g, dq_r = v ⊙ Σ_j g, both biases get v ⊙ Σ g and the
// score vector Σ ds_j u. The rest is cuBLAS on the Rust side: d values = pᵀ · dctx; for
// products dq = ds · kp and dkp = dsᵀ · q; the projections' backward.
//
// Variants (entry points):
//   attend_backward_fused_T       one block per (row, chunk of keys): scores, dp and the
//                                 chunk's softmax sums; with one chunk also p (storage dtype)
//                                 and ds (f32 for additive scores, which the next kernel
//                                 reads, else the storage dtype for cuBLAS)
//   attend_backward_combine_T     the chunks of a row rescaled to one maximum; p and ds
//   additive_backward_fused_T     one block per (batch row, chunk of keys): the tanh backward;
//                                 dkp (storage dtype) and the chunk's partials of dq and sums
//   additive_finish_fused_T       the chunks' partials added: dq (storage dtype), the biases'
//                                 and the score vector's gradients
//   softmax_backward_naive_f32    ds = scale · p ⊙ (dp − Σ p dp) per row
//   tanh_backward_naive_f32       dx = dy ⊙ (1 − y²)
// The naive chain around the last two: the forward's naive kernels for p, then cuBLAS for dp,
// the outer product ds ⊗ v and the sums over keys, queries and rows (GEMMs with ones).
#include "attention.cuh"

// ---
// Fused scores → ds, flash-decoding style: the keys of a row are cut into `splits` chunks of
// `chunk`, one block (ATT_THREADS) per (row, chunk), so that even one query per row spreads
// over the GPU. A warp per key computes e_j and dp_j (lanes across K and Dv) into f32 scratch
// rows [R, L] (e, dp: any L fits), then the block reduces its chunk's m = max e,
// l = Σ e^(e-m) and c = Σ e^(e-m) dp. With one chunk it writes p and ds itself; otherwise it
// leaves (m, l, c) in `partial` [R, splits, 3] and attend_backward_combine rescales the chunks
// to one maximum and writes them. dsf may be the dp scratch itself (each thread rewrites the
// entries it read). Shared memory (dynamic, f32): q [K], v [K] (additive), dctx [Dv].

// p and ds of a row's keys from its e, dp, maximum m, 1 / Σ e^(e-m) and Σ p dp; 0 past n.
template <typename T>
__device__ __forceinline__ void write_row(const float* er, const float* dpr, float m, float inv,
                                          float c, float ds_scale, int n, int len, long row,
                                          T* probs, float* dsf, T* dst) {
    for (int j = threadIdx.x; j < len; j += ATT_THREADS) {
        float p = j < n ? expf(er[j] - m) * inv : 0.f;
        float ds = j < n ? ds_scale * p * (dpr[j] - c) : 0.f;
        probs[row * len + j] = from_float<T>(p);
        if (dsf) dsf[row * len + j] = ds;
        else dst[row * len + j] = from_float<T>(ds);
    }
}

template <typename T, typename Q>
__device__ void backward_chunk(const Q* q, const Q* kp, const T* values, const T* score_v,
                               const T* dctx, float scale, const int* lengths, int tq, int len,
                               int k, int dv, int mode, int chunk, int splits, float* e,
                               float* dp, float* partial, T* probs, float* dsf, T* dst) {
    extern __shared__ float smem[];
    __shared__ float slots[ATT_WARPS];
    int row = blockIdx.x, split = blockIdx.y, b = row / tq;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int n = lengths[b];
    int j0 = split * chunk, j1 = min(j0 + chunk, n);
    // Chunks past the row's length hold no keys; attend_backward_combine does not read them.
    if (j0 >= n) return;
    float* sq = smem;
    float* sv = sq + k;
    float* sg = sv + (mode == ATT_ADDITIVE ? k : 0);
    for (int a = tid; a < k; a += ATT_THREADS) {
        sq[a] = to_float(q[(long)row * k + a]);
        if (mode == ATT_ADDITIVE) sv[a] = to_float(score_v[a]);
    }
    for (int d = tid; d < dv; d += ATT_THREADS) sg[d] = to_float(dctx[(long)row * dv + d]);
    __syncthreads();

    const Q* keys = kp + (long)b * len * k;
    const T* vals = values + (long)b * len * dv;
    float* er = e + (long)row * len;
    float* dpr = dp + (long)row * len;
    for (int j = j0 + warp; j < j1; j += ATT_WARPS) {
        float s = score(sq, sv, keys + (long)j * k, k, lane, mode);
        float g = score(sg, sg, vals + (long)j * dv, dv, lane, ATT_PRODUCT);
        if (lane == 0) {
            er[j] = mode == ATT_ADDITIVE ? s : scale * s;
            dpr[j] = g;
        }
    }
    __syncthreads();

    // Subtracting the maximum keeps expf finite.
    float m = -3.402823466e38f;
    for (int j = j0 + tid; j < j1; j += ATT_THREADS) m = fmaxf(m, er[j]);
    m = block_reduce(m, slots, true);
    float l = 0.f, c = 0.f;
    for (int j = j0 + tid; j < j1; j += ATT_THREADS) {
        float x = expf(er[j] - m);
        l += x;
        c += x * dpr[j];
    }
    l = block_reduce(l, slots, false);
    c = block_reduce(c, slots, false);
    if (splits == 1) {
        float inv = 1.f / l;
        float ds_scale = mode == ATT_ADDITIVE ? 1.f : scale;
        write_row(er, dpr, m, inv, c * inv, ds_scale, n, len, row, probs, dsf, dst);
    } else if (tid == 0) {
        float* out = partial + ((long)row * splits + split) * 3;
        out[0] = m;
        out[1] = l;
        out[2] = c;
    }
}

// Additive scores read the f32 query and key sides (qf, kf), products the storage dtype's.
#define ATTEND_BACKWARD_FUSED(S, T)                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attend_backward_fused_##S(         \
        const float* qf, const float* kf, const T* qt, const T* kt, const T* values,            \
        const T* score_v, const T* dctx, float scale, const int* lengths, int tq, int len,     \
        int k, int dv, int mode, int chunk, int splits, float* e, float* dp, float* partial,   \
        T* probs, float* dsf, T* dst) {                                                          \
        if (mode == ATT_ADDITIVE)                                                                \
            backward_chunk<T, float>(qf, kf, values, score_v, dctx, scale, lengths, tq, len, k,\
                                     dv, mode, chunk, splits, e, dp, partial, probs, dsf, dst);  \
        else                                                                                     \
            backward_chunk<T, T>(qt, kt, values, score_v, dctx, scale, lengths, tq, len, k, dv,\
                                 mode, chunk, splits, e, dp, partial, probs, dsf, dst);          \
    }
FOR_EACH_DTYPE(ATTEND_BACKWARD_FUSED)

// The chunks of a row combined: with M the largest chunk maximum and f_s = e^(m_s - M),
// Σ e^(e-M) = Σ f_s l_s and Σ p dp = Σ f_s c_s / Σ f_s l_s; then p and ds of every key. One
// block (ATT_THREADS) per row.
template <typename T>
__device__ void backward_combine(const float* e, const float* dp, const float* partial,
                                 const int* lengths, int tq, int len, int chunk, int splits,
                                 float ds_scale, T* probs, float* dsf, T* dst) {
    __shared__ float slots[ATT_WARPS];
    int row = blockIdx.x, n = lengths[row / tq];
    int used = (n + chunk - 1) / chunk;
    const float* in = partial + (long)row * splits * 3;
    float m = -3.402823466e38f;
    for (int s = threadIdx.x; s < used; s += ATT_THREADS) m = fmaxf(m, in[s * 3]);
    m = block_reduce(m, slots, true);
    float l = 0.f, c = 0.f;
    for (int s = threadIdx.x; s < used; s += ATT_THREADS) {
        float f = expf(in[s * 3] - m);
        l += f * in[s * 3 + 1];
        c += f * in[s * 3 + 2];
    }
    float inv = 1.f / block_reduce(l, slots, false);
    c = block_reduce(c, slots, false) * inv;
    write_row(e + (long)row * len, dp + (long)row * len, m, inv, c, ds_scale, n, len, row, probs,
              dsf, dst);
}

#define ATTEND_BACKWARD_COMBINE(S, T)                                                            \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attend_backward_combine_##S(       \
        const float* e, const float* dp, const float* partial, const int* lengths, int tq,     \
        int len, int chunk, int splits, float ds_scale, T* probs, float* dsf, T* dst) {         \
        backward_combine<T>(e, dp, partial, lengths, tq, len, chunk, splits, ds_scale, probs,  \
                            dsf, dst);                                                           \
    }
FOR_EACH_DTYPE(ATTEND_BACKWARD_COMBINE)

// ---
// Additive tanh backward. One block (ATT_THREADS) per (batch row b, chunk of `chunk` keys),
// threads across A. A block owns dkp of its keys (it sums the Tq queries of b itself, so no
// two blocks write one element; keys past the row's length get 0) and leaves partials: dq
// [splits, R, A] and, per (b, chunk), v ⊙ Σ g and Σ ds·u in sums [B·splits, 2A]. With several
// queries per row dq takes a second pass that recomputes tanh, cheaper than keeping it.
template <typename T>
__device__ void additive_backward(const float* q, const float* kp, const float* ds,
                                  const T* score_v, const int* lengths, int tq, int len, int k,
                                  int chunk, int splits, T* dkp, float* dq_part, float* sums) {
    int b = blockIdx.x, split = blockIdx.y;
    long rows = (long)gridDim.x * tq;
    int n = lengths[b], j0 = split * chunk, j1 = min(j0 + chunk, len);
    int jn = max(j0, min(j1, n));
    const float* qb = q + (long)b * tq * k;
    const float* kb = kp + (long)b * len * k;
    const float* db = ds + (long)b * tq * len;
    T* out = dkp + (long)b * len * k;
    float* part = sums + ((long)b * splits + split) * 2 * k;
    for (int a = threadIdx.x; a < k; a += ATT_THREADS) {
        float va = to_float(score_v[a]), gsum = 0.f, usum = 0.f;
        for (int j = j0; j < jn; ++j) {
            float kpa = kb[(long)j * k + a], g = 0.f;
            for (int t = 0; t < tq; ++t) {
                float d = db[(long)t * len + j];
                float u = tanhf(qb[(long)t * k + a] + kpa);
                g += d * (1.f - u * u);
                usum += d * u;
            }
            gsum += g;
            out[(long)j * k + a] = from_float<T>(va * g);
        }
        for (int j = jn; j < j1; ++j) out[(long)j * k + a] = from_float<T>(0.f);
        part[a] = va * gsum;
        part[k + a] = usum;
        float* dq = dq_part + ((long)split * rows + (long)b * tq) * k + a;
        if (tq == 1) {
            dq[0] = va * gsum;
            continue;
        }
        for (int t = 0; t < tq; ++t) {
            float g = 0.f;
            for (int j = j0; j < jn; ++j) {
                float u = tanhf(qb[(long)t * k + a] + kb[(long)j * k + a]);
                g += db[(long)t * len + j] * (1.f - u * u);
            }
            dq[(long)t * k] = va * g;
        }
    }
}

#define ADDITIVE_BACKWARD_FUSED(S, T)                                                            \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) additive_backward_fused_##S(       \
        const float* q, const float* kp, const float* ds, const T* score_v, const int* lengths, \
        int tq, int len, int k, int chunk, int splits, T* dkp, float* dq_part, float* sums) {   \
        additive_backward<T>(q, kp, ds, score_v, lengths, tq, len, k, chunk, splits, dkp,       \
                             dq_part, sums);                                                     \
    }
FOR_EACH_DTYPE(ADDITIVE_BACKWARD_FUSED)

// The chunks' partials added. Blocks below `dq_blocks` add dq over the chunks, a thread per
// element; the others add the `parts` rows of sums [parts, 2A], 32 columns per block: lanes
// across columns (coalesced), warps across rows, then the warps' sums in shared memory.
// Columns below A are both biases' gradient (each written where non-null), the rest the score
// vector's.
template <typename T>
__device__ void additive_finish(const float* dq_part, const float* sums, int rows, int k,
                                int splits, int parts, int dq_blocks, T* dq, T* db_q, T* db_k,
                                T* dv) {
    __shared__ float part[ATT_WARPS][32];
    int tid = threadIdx.x;
    if ((int)blockIdx.x < dq_blocks) {
        long i = (long)blockIdx.x * ATT_THREADS + tid, n = (long)rows * k;
        if (i >= n) return;
        float s = 0.f;
        for (int c = 0; c < splits; ++c) s += dq_part[c * n + i];
        dq[i] = from_float<T>(s);
        return;
    }
    int lane = tid & 31, warp = tid >> 5;
    int col = ((int)blockIdx.x - dq_blocks) * 32 + lane;
    float s = 0.f;
    if (col < 2 * k) {
        for (int p = warp; p < parts; p += ATT_WARPS) s += sums[(long)p * 2 * k + col];
    }
    part[warp][lane] = s;
    __syncthreads();
    if (warp != 0 || col >= 2 * k) return;
    for (int w = 1; w < ATT_WARPS; ++w) s += part[w][lane];
    if (col < k) {
        if (db_q) db_q[col] = from_float<T>(s);
        if (db_k) db_k[col] = from_float<T>(s);
    } else {
        dv[col - k] = from_float<T>(s);
    }
}

#define ADDITIVE_FINISH_FUSED(S, T)                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) additive_finish_fused_##S(         \
        const float* dq_part, const float* sums, int rows, int k, int splits, int parts,       \
        int dq_blocks, T* dq, T* db_q, T* db_k, T* dv) {                                         \
        additive_finish<T>(dq_part, sums, rows, k, splits, parts, dq_blocks, dq, db_q, db_k,   \
                           dv);                                                                  \
    }
FOR_EACH_DTYPE(ADDITIVE_FINISH_FUSED)

// ---
// Naive.

// One block (ATT_THREADS) per row of p and dp [R, L]; ds gets 0 past the row's length.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    softmax_backward_naive_f32(const float* p, const float* dp, float* ds, const int* lengths,
                               int tq, int len, float scale) {
    __shared__ float slots[ATT_WARPS];
    int row = blockIdx.x, n = lengths[row / tq];
    const float* pr = p + (long)row * len;
    const float* dpr = dp + (long)row * len;
    float c = 0.f;
    for (int j = threadIdx.x; j < n; j += ATT_THREADS) c += pr[j] * dpr[j];
    c = block_reduce(c, slots, false);
    for (int j = threadIdx.x; j < len; j += ATT_THREADS)
        ds[(long)row * len + j] = j < n ? scale * pr[j] * (dpr[j] - c) : 0.f;
}

extern "C" __global__ void tanh_backward_naive_f32(const float* dy, const float* y, float* dx,
                                                   int n) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    float u = y[idx];
    dx[idx] = dy[idx] * (1.f - u * u);
}
