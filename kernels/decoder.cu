// decoder.cu — the pieces of the show-attend-tell attention decoder (src/ops/decoder/) that the
// GEMMs do not do: per step the attention over a row's keys (scores, masked softmax, weighted
// sum, gated context) and the LSTM cell, forward and backward, and the small reshapes, means,
// gathers and sums around them. f32 only.
//
// Sizes: B rows, L keys, D key size, A attention size, H hidden, E embed, S steps,
// W = 4H + A + D: the width of the stacked step product g = h · [W_hh; decoder_att; f_beta]ᵀ,
// WITHOUT biases: columns [0, 4H) the gates i, f, g, o, [4H, 4H + A) the query,
// [4H + A, W) the context gate. Row-major f32; time-major [S, B, X] has row (t, b) at
// (t·B + b)·X. lens [B] int32 key lengths (1..=L); steps [B] int32 steps per row (caption
// length − 1): row b runs step t iff t < steps[b]. act: ACT_RELU or ACT_TANH (codes.cuh).
//
// Entry points (f32):
//   decoder_rows             y[r, j] = bias[j] (r < rows, j < n, row stride ld): a GEMM's output
//                            prefilled with its bias
//   decoder_mean             mean[b, d] = Σ_{l < lens[b]} f[b, l, d] / lens[b]
//   decoder_gather           x[(t, b), e] = emb[tokens[t, b], e], 0 on steps a row does not run
//   decoder_attend           one step's attention per row: q, α, awe, gate, ctx = gate ⊙ awe
//   decoder_cell             the LSTM cell from the gates' four shares, (c, h) and activations
//   decoder_batch_major      [S, B, X] → [B, S, X], 0 on steps a row does not run
//   decoder_time_major       [B, S, X] → [S, B, X], the same mask
//   decoder_cell_backward    one step's gate gradients dg[:, :4H], dc carried back
//   decoder_attend_backward  one step's dg[:, 4H:] and the keys' gradients (df, dp), full_att's
//                            gradients per row
//   decoder_column_sums      out[j] (+)= Σ_r x[r, j]: bias gradients
//   decoder_mean_backward    df[b, l, d] += dmean[b, d] / lens[b] for l < lens[b]
//   decoder_embedding_backward  demb[tokens[t, b], e] += dx[(t, b), e]: f32 atomics (the one
//                            kernel whose result may differ in its last bits from run to run)
//
// Launch geometry: blocks of BLOCK_THREADS threads (any multiple of 32 up to BLOCK_THREADS
// works). Elementwise kernels are grid-stride over 64-bit indices, so any grid covers any size.
// decoder_attend and decoder_attend_backward want one block per row (grid B) and loop over rows
// when the grid is smaller; their dynamic shared memory is (A + L) and (D + L) floats.
// decoder_column_sums takes 32 columns per block (grid ⌈n / 32⌉, or fewer blocks that loop)
// and no dynamic shared memory. A null `steps` means every row runs every step.
// Everything but decoder_embedding_backward sums in a fixed order: the same inputs give the
// same bits.
#include "attention.cuh"

// ---
// Helpers.

// d act / dx from the input x and the output u = act(x): relu 1 for x > 0 (else 0), tanh 1 − u².
__device__ __forceinline__ float activate_slope(float x, float u, int act) {
    if (act == ACT_RELU) return x > 0.f ? 1.f : 0.f;
    return 1.f - u * u;
}

// Whether row b runs step t (no `steps`: every row does).
__device__ __forceinline__ bool runs(const int* steps, int b, int t) {
    return steps == nullptr || t < steps[b];
}

#define DEC_NEG_MAX (-3.402823466e38f)

// ---
// Prefill, mean of the keys, embedding gather.

extern "C" __global__ void decoder_rows_f32(float* y, const float* bias, long long rows, int n,
                                            int ld) {
    GRID_STRIDE_LOOP(i, (unsigned long long)rows * n) {
        const unsigned long long r = i / n, j = i % n;
        y[r * ld + j] = bias[j];
    }
}

extern "C" __global__ void decoder_mean_f32(const float* f, const int* lens, float* mean, int B,
                                            int L, int D) {
    GRID_STRIDE_LOOP(i, (unsigned long long)B * D) {
        const long long b = i / D, d = i % D;
        const int n = lens[b];
        const float* col = f + b * L * D + d;
        float s = 0.f;
        for (int l = 0; l < n; ++l) s += col[(long long)l * D];
        mean[i] = s / (float)n;
    }
}

extern "C" __global__ void decoder_gather_f32(const float* emb, const int* tokens,
                                              const int* steps, float* x, int S, int B, int E,
                                              int ldx) {
    GRID_STRIDE_LOOP(i, (unsigned long long)S * B * E) {
        const long long tb = i / E, e = i % E, t = tb / B, b = tb % B;
        x[tb * ldx + e] = runs(steps, (int)b, (int)t) ? emb[(long long)tokens[tb] * E + e] : 0.f;
    }
}

// ---
// Attention, forward: one block per row r, attending to the keys of image i (image[r], or r).
// Shared memory (dynamic): q [A], then the scores [L] (α once normalised).
//   q    = g[r, 4H:4H+A] + b_da                                threads over a
//   e_l  = Σ_a w_fa[a] · act(p[i, l, a] + q[a]) + b_fa, l < n  a warp per key, lanes over a
//   α    = softmax of e over l < n, 0 for l ≥ n                warp 0
//   awe  = Σ_{l<n} α_l f[i, l, :]                              threads over d, l in order
//   gate = sigmoid(g[r, 4H+A:] + b_fb), ctx = gate ⊙ awe       threads over d
// A row past its steps gets zeros in q, α, awe, gate and ctx.

extern "C" __global__ void decoder_attend_f32(const float* g, const float* b_da,
                                              const float* b_fb, const float* p, const float* f,
                                              const float* w_fa, float b_fa, const int* lens,
                                              const int* steps, const int* image, int t, int B,
                                              int L, int D, int A, int H, int act, float* q,
                                              float* alpha, float* awe, float* gate, float* ctx,
                                              int ldctx) {
    DYNAMIC_SHARED(float, sq);
    float* se = sq + A;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const long long W = 4LL * H + A + D;
    for (int r = blockIdx.x; r < B; r += gridDim.x) {
        if (!runs(steps, r, t)) {
            for (int a = tid; a < A; a += blockDim.x) q[(long long)r * A + a] = 0.f;
            for (int l = tid; l < L; l += blockDim.x) alpha[(long long)r * L + l] = 0.f;
            for (int d = tid; d < D; d += blockDim.x) {
                awe[(long long)r * D + d] = 0.f;
                gate[(long long)r * D + d] = 0.f;
                ctx[(long long)r * ldctx + d] = 0.f;
            }
            continue;
        }
        const long long i = image ? image[r] : r;
        const int n = min(lens[i], L);
        const float* gr = g + r * W + 4LL * H;
        for (int a = tid; a < A; a += blockDim.x) {
            const float v = gr[a] + b_da[a];
            sq[a] = v;
            q[(long long)r * A + a] = v;
        }
        __syncthreads();

        for (int l = warp; l < n; l += warps) {
            const float* key = p + (i * L + l) * A;
            float e = 0.f;
            for (int a = lane; a < A; a += 32) e += w_fa[a] * activate(key[a] + sq[a], act);
            e = warp_sum(e);
            if (lane == 0) se[l] = e + b_fa;
        }
        __syncthreads();

        if (warp == 0) {
            float m = DEC_NEG_MAX;
            for (int l = lane; l < n; l += 32) m = fmaxf(m, se[l]);
            m = warp_max(m);
            float s = 0.f;
            for (int l = lane; l < n; l += 32) {
                const float x = expf(se[l] - m);
                se[l] = x;
                s += x;
            }
            s = warp_sum(s);
            const float inv = s > 0.f ? 1.f / s : 0.f;
            for (int l = lane; l < L; l += 32) {
                const float x = l < n ? se[l] * inv : 0.f;
                se[l] = x;
                alpha[(long long)r * L + l] = x;
            }
        }
        __syncthreads();

        const float* keys = f + i * L * D;
        for (int d = tid; d < D; d += blockDim.x) {
            float s = 0.f;
            for (int l = 0; l < n; ++l) s += se[l] * keys[(long long)l * D + d];
            const float gt = sigmoid(gr[A + d] + b_fb[d]);
            awe[(long long)r * D + d] = s;
            gate[(long long)r * D + d] = gt;
            ctx[(long long)r * ldctx + d] = gt * s;
        }
        // The next row overwrites the shared buffers.
        __syncthreads();
    }
}

// ---
// The LSTM cell (gates i, f, g, o): pre_k = xg + gc + g + bias (xg null: no input share),
// c = f ⊙ c_prev + i ⊙ g, h = o ⊙ tanh(c); the activated gates into acts when it is not null.

extern "C" __global__ void decoder_cell_f32(const float* xg, const float* gc, const float* g,
                                            const float* bias, const float* c_prev, float* c,
                                            float* h, float* acts, int B, int H, int W) {
    GRID_STRIDE_LOOP(idx, (unsigned long long)B * H) {
        const long long b = idx / H, j = idx % H;
        float pre[4], a[4], cell;
        for (int k = 0; k < 4; ++k) {
            const long long at = b * 4 * H + k * H + j;
            pre[k] = ((xg ? xg[at] : 0.f) + gc[at]) + g[b * W + k * H + j] + bias[k * H + j];
        }
        h[idx] = lstm_cell(pre, c_prev[idx], a, cell);
        c[idx] = cell;
        if (acts)
            for (int k = 0; k < 4; ++k) acts[b * 4 * H + k * H + j] = a[k];
    }
}

// ---
// Time-major ⇄ batch-major, zero on the steps a row does not run (grid-stride over the
// destination, so that writes are contiguous).

extern "C" __global__ void decoder_batch_major_f32(const float* src, const int* steps, float* dst,
                                                   int S, int B, int X) {
    GRID_STRIDE_LOOP(i, (unsigned long long)B * S * X) {
        const long long bt = i / X, k = i % X, b = bt / S, t = bt % S;
        dst[i] = t < steps[b] ? src[(t * B + b) * X + k] : 0.f;
    }
}

extern "C" __global__ void decoder_time_major_f32(const float* src, const int* steps, float* dst,
                                                  int S, int B, int X) {
    GRID_STRIDE_LOOP(i, (unsigned long long)S * B * X) {
        const long long tb = i / X, k = i % X, t = tb / B, b = tb % B;
        dst[i] = t < steps[b] ? src[(b * S + t) * X + k] : 0.f;
    }
}

// ---
// The cell's backward at step t. dh holds the gradient reaching h_t through the next step (read
// only: a GEMM overwrites it afterwards), dh_out the one from the output layer; dc carries the
// cell state's gradient back (dct · f). A row past its steps gets zero gate gradients and
// leaves dh, dc as they are.

extern "C" __global__ void decoder_cell_backward_f32(const float* dh_out, float* dh, float* dc,
                                                     const float* acts, const float* c_prev,
                                                     const float* c, const int* steps, int t,
                                                     float* dg, int B, int H, int W) {
    GRID_STRIDE_LOOP(idx, (unsigned long long)B * H) {
        const long long b = idx / H, j = idx % H;
        float* dgr = dg + b * W + j;
        if (!runs(steps, (int)b, t)) {
            for (int k = 0; k < 4; ++k) dgr[k * H] = 0.f;
            continue;
        }
        const float* ar = acts + b * 4 * H + j;
        const float i = ar[0], fg = ar[H], gg = ar[2 * H], o = ar[3 * H];
        const float dhv = dh[idx] + dh_out[idx];
        const float tc = tanhf(c[idx]);
        const float dct = dc[idx] + dhv * o * (1.f - tc * tc);
        dgr[0] = dct * gg * i * (1.f - i);
        dgr[H] = dct * c_prev[idx] * fg * (1.f - fg);
        dgr[2 * H] = dct * i * (1.f - gg * gg);
        dgr[3 * H] = dhv * tc * o * (1.f - o);
        dc[idx] = dct * fg;
    }
}

// ---
// Attention, backward at one step: one block per row b (its own keys). Shared memory
// (dynamic): dawe [D], then dα [L] (turned into de in place).
//   dawe_d = dctx_d gate_d, dg[b, 4H+A+d] = dctx_d awe_d gate_d (1 − gate_d)       (threads over d)
//   dα_l = dawe · f[b, l, :] (+ dalpha[b, l]), l < n                 (a warp per key, lanes over d)
//   s = Σ_l α_l dα_l, de_l = α_l (dα_l − s), dbfa[b] += Σ_l de_l                           (warp 0)
//   df[b, l, d] += α_l dawe_d                                                 (threads over (l, d))
//   with x = p[b, l, a] + q_a, u = act(x), dz = de_l w_fa[a] act'(x, u):
//   dp[b, l, a] += dz, dg[b, 4H+a] = Σ_l dz, dwfa[b, a] += Σ_l de_l u  (threads over a, l in order)
// A row past its steps gets zeros in dg[b, 4H:] and adds nothing.

extern "C" __global__ void decoder_attend_backward_f32(
    const float* dctx, const float* gate, const float* awe, const float* alpha, const float* q,
    const float* p, const float* f, const float* w_fa, const float* dalpha, const int* lens,
    const int* steps, int t, int B, int L, int D, int A, int H, int W, int act, float* dg,
    float* df, float* dp, float* dwfa, float* dbfa) {
    DYNAMIC_SHARED(float, sdawe);
    float* sde = sdawe + D;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        float* dgr = dg + (long long)b * W + 4LL * H;
        if (!runs(steps, (int)b, t)) {
            for (int k = tid; k < A + D; k += blockDim.x) dgr[k] = 0.f;
            continue;
        }
        const int n = min(lens[b], L);
        const long long rd = (long long)b * D, rl = (long long)b * L;
        for (int d = tid; d < D; d += blockDim.x) {
            const float dc = dctx[rd + d], gt = gate[rd + d];
            dgr[A + d] = dc * awe[rd + d] * gt * (1.f - gt);
            sdawe[d] = dc * gt;
        }
        __syncthreads();

        const float* keys = f + rl * D;
        for (int l = warp; l < n; l += warps) {
            const float* key = keys + (long long)l * D;
            float s = 0.f;
            for (int d = lane; d < D; d += 32) s += sdawe[d] * key[d];
            s = warp_sum(s);
            if (lane == 0) sde[l] = s + (dalpha ? dalpha[rl + l] : 0.f);
        }
        __syncthreads();

        if (warp == 0) {
            float s = 0.f;
            for (int l = lane; l < n; l += 32) s += alpha[rl + l] * sde[l];
            s = warp_sum(s);
            float sum = 0.f;
            for (int l = lane; l < n; l += 32) {
                const float de = alpha[rl + l] * (sde[l] - s);
                sde[l] = de;
                sum += de;
            }
            sum = warp_sum(sum);
            if (lane == 0) dbfa[b] += sum;
        }
        __syncthreads();

        float* dfr = df + rl * D;
        for (long long k = tid; k < (long long)n * D; k += blockDim.x)
            dfr[k] += alpha[rl + k / D] * sdawe[k % D];

        const float* pr = p + rl * A;
        float* dpr = dp + rl * A;
        for (int a = tid; a < A; a += blockDim.x) {
            const float qa = q[(long long)b * A + a], wa = w_fa[a];
            float dq = 0.f, dw = 0.f;
            for (int l = 0; l < n; ++l) {
                const float x = pr[(long long)l * A + a] + qa, u = activate(x, act);
                const float de = sde[l], dz = de * wa * activate_slope(x, u, act);
                dpr[(long long)l * A + a] += dz;
                dq += dz;
                dw += de * u;
            }
            dgr[a] = dq;
            dwfa[(long long)b * A + a] += dw;
        }
        // The next row overwrites the shared buffers.
        __syncthreads();
    }
}

// ---
// Column sums: 32 columns per block (a warp reads 32 consecutive values of a row), the block's
// warps taking every (blockDim.x / 32)-th row; the warps' partial sums are then added in warp
// order. Deterministic, no atomics. Blocks loop over column strips when the grid is smaller.

#define DEC_SUM_COLS 32

extern "C" __global__ void decoder_column_sums_f32(const float* x, long long rows, int n, int ld,
                                                   float* out, int accumulate) {
    __shared__ float partial[BLOCK_THREADS];
    const int lane = threadIdx.x % DEC_SUM_COLS, group = threadIdx.x / DEC_SUM_COLS;
    const int groups = blockDim.x / DEC_SUM_COLS;
    for (int strip = blockIdx.x; (long long)strip * DEC_SUM_COLS < n; strip += gridDim.x) {
        const int j = strip * DEC_SUM_COLS + lane;
        float s = 0.f;
        if (j < n)
            for (long long r = group; r < rows; r += groups) s += x[r * ld + j];
        partial[threadIdx.x] = s;
        __syncthreads();
        if (group == 0 && j < n) {
            float total = 0.f;
            for (int k = 0; k < groups; ++k) total += partial[k * DEC_SUM_COLS + lane];
            out[j] = (accumulate ? out[j] : 0.f) + total;
        }
        // The next strip overwrites `partial`.
        __syncthreads();
    }
}

// ---
// Backward of the mean and of the embedding gather.

extern "C" __global__ void decoder_mean_backward_f32(const float* dmean, const int* lens,
                                                     float* df, int B, int L, int D) {
    GRID_STRIDE_LOOP(i, (unsigned long long)B * L * D) {
        const long long bl = i / D, d = i % D, b = bl / L, l = bl % L;
        const int n = lens[b];
        if (l < n) df[i] += dmean[b * D + d] / (float)n;
    }
}

// f32 atomics: rows with the same token add into one row of demb in no fixed order.
extern "C" __global__ void decoder_embedding_backward_f32(const float* dx, const int* tokens,
                                                          const int* steps, float* demb, int S,
                                                          int B, int E, int ldx) {
    GRID_STRIDE_LOOP(i, (unsigned long long)S * B * E) {
        const long long tb = i / E, e = i % E, t = tb / B, b = tb % B;
        if (t < steps[b]) atomicAdd(&demb[(long long)tokens[tb] * E + e], dx[tb * ldx + e]);
    }
}
