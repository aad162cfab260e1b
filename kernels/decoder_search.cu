// decoder_search.cu — greedy and beam search on the device, for the attention decoder
// (src/ops/decoder/cuda.rs). f32 only.
//
// Layout: N images × K rows, row r = n·K + j. An image's live hypotheses fill its first
// `rows[n]` rows in rank order (best first); the rest are idle. `slots[n]` is how many
// hypotheses it keeps per step: K less those finished with <end> (so at the first step one
// live row, the start, has K slots). Per step the decoder turns the
// live rows' inputs into logits [R, V] and attention [R, L]; then
//   search_row_top_f32   one block per live row: the log-softmax normaliser and the row's
//                        best K tokens (log-probabilities, ties to the lower token)
//   search_select_f32    one block per image: the best `slots[n]` of its rows' candidates by
//                        total score (ties to the lower rank·V + token), finishing those that
//                        end in <end> (or every one at the last step), writing the next inputs,
//                        the parents, the history and the count of live rows
//   search_reorder_f32   the state rows (h or c) gathered from the parents
// The host reads one int per step (the live count) and, at the end, the history, which it walks
// back from each image's best finished hypothesis.
#include "common.cuh"

#define SEARCH_NEG_INF __int_as_float(0xff800000)

// ---
// Whether (av, ai) comes before (bv, bi): larger first, NaN never before a number, ties to the
// lower index.
__device__ __forceinline__ bool search_before(float av, int ai, float bv, int bi) {
    if (av != av) return false;
    if (bv != bv) return true;
    return av > bv || (av == bv && ai < bi);
}

// The block's best (v, i) in `search_before` order; `scratch` holds 2·(blockDim.x / 32) words.
__device__ void search_block_best(float& v, int& i, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __float_as_int(__shfl_xor_sync(0xffffffffu, __int_as_float(i), o));
        if (search_before(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
        scratch[warps + warp] = __int_as_float(i);
    }
    __syncthreads();
    v = scratch[0];
    i = __float_as_int(scratch[warps]);
    for (int w = 1; w < warps; ++w) {
        float wv = scratch[w];
        int wi = __float_as_int(scratch[warps + w]);
        if (search_before(wv, wi, v, i)) {
            v = wv;
            i = wi;
        }
    }
}

// The block's sum of v; `scratch` as above.
__device__ float search_block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float s = 0.f;
    for (int w = 0; w < warps; ++w) s += scratch[w];
    return s;
}

// ---
// Per live row r (grid R): lse = max + log Σ exp(x − max), then K rounds each taking the best
// token after the previous one in `search_before` order. top_v [R, K] = x − lse, top_i [R, K].
// Rows at or past rows[r / K] are idle and skipped. Dynamic shared memory: 2·warps floats.
extern "C" __global__ void search_row_top_f32(const float* logits, const int* rows, int V, int K,
                                              float* top_v, int* top_i) {
    DYNAMIC_SHARED(float, red);
    long r = blockIdx.x;
    if ((int)(r % K) >= rows[r / K]) return;
    const float* x = logits + r * V;
    float m = SEARCH_NEG_INF;
    int mi = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        if (search_before(x[v], v, m, mi)) {
            m = x[v];
            mi = v;
        }
    }
    search_block_best(m, mi, red);
    float part = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) part += expf(x[v] - m);
    float lse = m + logf(search_block_sum(part, red));
    float last_v = 0.f;
    int last_i = -1;
    for (int k = 0; k < K; ++k) {
        float bv = SEARCH_NEG_INF;
        int bi = 0x7fffffff;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            if (last_i >= 0 && !search_before(last_v, last_i, x[v], v)) continue;
            if (search_before(x[v], v, bv, bi)) {
                bv = x[v];
                bi = v;
            }
        }
        search_block_best(bv, bi, red);
        if (threadIdx.x == 0) {
            // Fewer than K tokens (V < K) leave the rest at −inf, never chosen.
            top_v[r * K + k] = bi < V ? bv - lse : SEARCH_NEG_INF;
            top_i[r * K + k] = bi < V ? bi : 0;
        }
        last_v = bv;
        last_i = bi;
    }
}

// ---
// Per image n (grid N, one thread works; the block copies the attention rows). For its live
// rows n·K + j (j < rows[n], rank j, score scores[row]) and their candidates top_v/top_i,
// the best slots[n] candidates by total score (ties to the lower j·V + token) are taken in order:
//   - one ending in `end`, or any at the last step (step + 1 == max_len), finishes: appended to
//     the image's finished list fin_* [N, K] (score, step, parent rank, token), its attention
//     row to fin_alpha [N·K, L]; an <end> takes its slot for good (slots[n] shrinks);
//   - the others become the next live rows, in order: next_token, next_score, parent [R] (the
//     row extended), and the history at this step: hist_token, hist_parent [max_len, R] (the
//     parent's rank), hist_alpha [max_len, R, L] (the parent's attention this step); rows[n]
//     becomes their number.
// Scores are written to next_score (the caller swaps it with scores). live_count gets the number
// of live rows (the one value the host reads per step; zeroed by the caller).
// Dynamic shared memory: 2·K·K floats (the candidates' scores and flat indices).
extern "C" __global__ void search_select_f32(
    const float* top_v, const int* top_i, const float* scores, const float* alpha, int* rows,
    int* slots, int* fin_count, float* fin_score, int* fin_step, int* fin_parent, int* fin_token,
    float* fin_alpha, int* next_token, float* next_score, int* parent, int* hist_token,
    int* hist_parent, float* hist_alpha, int* live_count, int N, int K, int V, int L, int step,
    int max_len, int end) {
    DYNAMIC_SHARED(float, cand_v);
    int* cand_i = (int*)(cand_v + K * K);
    __shared__ int chosen_row[64], chosen_dst[64];  // K ≤ 64
    __shared__ int chosen_count;
    int n = blockIdx.x;
    int live = rows[n], keep = slots[n];
    long R = (long)N * K;
    if (threadIdx.x == 0) {
        int count = 0;
        for (int j = 0; j < live; ++j) {
            long row = (long)n * K + j;
            for (int k = 0; k < K; ++k) {
                cand_v[count] = scores[row] + top_v[row * K + k];
                cand_i[count] = j * V + top_i[row * K + k];
                ++count;
            }
        }
        // Selection of the best `live` candidates, in order.
        int taken = 0, next_live = 0, ended = 0;
        bool last = step + 1 >= max_len;
        for (int t = 0; t < keep && t < count; ++t) {
            int b = t;
            for (int c = t + 1; c < count; ++c) {
                if (search_before(cand_v[c], cand_i[c], cand_v[b], cand_i[b])) b = c;
            }
            float v = cand_v[b];
            int flat = cand_i[b];
            cand_v[b] = cand_v[t];
            cand_i[b] = cand_i[t];
            cand_v[t] = v;
            cand_i[t] = flat;
            if (v != v || v == SEARCH_NEG_INF) break;
            int j = flat / V, token = flat % V;
            long src = (long)n * K + j;
            if (token == end || last) {
                int f = fin_count[n]++;
                long at = (long)n * K + f;
                fin_score[at] = v;
                fin_step[at] = step;
                fin_parent[at] = j;
                fin_token[at] = token;
                chosen_row[taken] = (int)src;
                chosen_dst[taken] = -1 - f;
                ended += token == end;
            } else {
                long dst = (long)n * K + next_live;
                next_token[dst] = token;
                next_score[dst] = v;
                parent[dst] = (int)src;
                hist_token[(long)step * R + dst] = token;
                hist_parent[(long)step * R + dst] = j;
                chosen_row[taken] = (int)src;
                chosen_dst[taken] = next_live;
                ++next_live;
            }
            ++taken;
        }
        rows[n] = last ? 0 : next_live;
        slots[n] = last ? 0 : keep - ended;
        chosen_count = taken;
        if (next_live > 0 && !last) atomicAdd(live_count, next_live);
    }
    __syncthreads();
    // The attention rows of what was chosen: the parents' at this step.
    for (int c = 0; c < chosen_count; ++c) {
        long src = chosen_row[c];
        int dst = chosen_dst[c];
        float* out = dst >= 0 ? hist_alpha + ((long)step * R + (long)n * K + dst) * L
                              : fin_alpha + ((long)n * K + (-1 - dst)) * L;
        for (int l = threadIdx.x; l < L; l += blockDim.x) out[l] = alpha[src * L + l];
    }
}

// ---
// dst[r] = src[parent[r]] for the live rows (r % K < rows[r / K]); idle rows are zeroed.
extern "C" __global__ void search_reorder_f32(const float* src, const int* parent, const int* rows,
                                              float* dst, int N, int K, int H) {
    unsigned long long total = (unsigned long long)N * K * H;
    GRID_STRIDE_LOOP(i, total) {
        long r = i / H;
        int h = (int)(i % H);
        bool live = (int)(r % K) < rows[r / K];
        dst[i] = live ? src[(long)parent[r] * H + h] : 0.f;
    }
}
