// persistent/recurrent.cu — a whole layer-direction's step loop in one launch: tanh/ReLU RNN,
// LSTM or GRU, with the block's slice of W_hh kept in shared memory for the whole sequence.
//
// Specialised at run time (NVRTC; the host prepends the defines): CELL (CELL_RNN | CELL_LSTM |
// CELL_GRU), ACT (the RNN's activation code), HIDDEN, BATCH, UNITS (hidden units per block),
// STORAGE (float | f16 | bf16). Not compiled at build time: it needs those defines.
//
// Block k owns hidden units [k·UNITS, (k+1)·UNITS) with all their gate rows (G per unit), so the
// cell update stays in the block and only h crosses blocks. Per step it stages h_{t-1} [B, H]
// into shared memory as f32, computes its rows of W_hh·h (one warp per ROW_BLOCK rows, lanes
// across H, one accumulator per (row, batch row) of a chunk), applies the same pointwise update as the
// stepwise kernels (both biases, gates, cell, length mask, output), publishes its units of h_t
// in `hbuf` [2, B, H] f32, and meets the other blocks at a grid barrier: a counter that every
// block increments once per step. The launch is cooperative, so all blocks are co-resident; a
// wait that never ends is still bounded, and then sets `failed` instead of hanging.
//
// Shapes: xw [rows, G·H] f32 (the input projection, both layouts via st/sb), w_hh [G·H, H],
// b_ih/b_hh [G·H] (or null), h0/h_n [B, H], c0/c_n [B, H] (LSTM; c0 may be null), out rows of
// out_ld elements (this direction's columns), lengths [B] in 1..=T.
#include "common.cuh"

#define CELL_RNN 0
#define CELL_LSTM 1
#define CELL_GRU 2

#if !defined(CELL) || !defined(ACT) || !defined(HIDDEN) || !defined(BATCH) || !defined(UNITS) || \
    !defined(STORAGE)
#error "persistent/recurrent.cu needs CELL, ACT, HIDDEN, BATCH, UNITS and STORAGE"
#endif

#define GATES (CELL == CELL_LSTM ? 4 : CELL == CELL_GRU ? 3 : 1)
#define ROWS (GATES * UNITS)
#define NBLOCKS ((HIDDEN + UNITS - 1) / UNITS)
#define THREADS 256
#define WARPS (THREADS / 32)
// A warp accumulates ROW_BLOCK rows for BATCH_CHUNK batch rows at once: at most 32
// accumulators per lane.
#define ROW_BLOCK (BATCH <= 8 ? 4 : BATCH <= 16 ? 2 : 1)
#define BATCH_CHUNK (BATCH < 32 / ROW_BLOCK ? BATCH : 32 / ROW_BLOCK)
// Barrier polls before giving up (each after a short sleep): seconds, far past any step.
#define SPIN_LIMIT (1u << 26)

static_assert(HIDDEN >= 1 && BATCH >= 1 && BATCH <= 64, "BATCH must be in 1..=64");
static_assert(UNITS >= 1 && UNITS <= HIDDEN, "UNITS must be in 1..=HIDDEN");
static_assert(CELL == CELL_RNN || CELL == CELL_LSTM || CELL == CELL_GRU, "unknown CELL");
static_assert(ROW_BLOCK * BATCH_CHUNK <= 32, "too many accumulators per lane");

typedef STORAGE T;

__device__ __forceinline__ void add_release(unsigned* p, unsigned v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" : : "l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float load_l2(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Every block's writes before the call are visible to every block after it: the block's
// threads meet, one thread publishes with a release add and waits with acquire loads, and the
// block meets again. Returns false when the wait gave up (the blocks were not all running).
__device__ bool grid_barrier(unsigned* counter, unsigned target, int* failed, int* gave_up) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        add_release(counter, 1u);
        unsigned spins = 0;
        while (load_acquire(counter) < target) {
            if (++spins > SPIN_LIMIT) {
                atomicExch(failed, 1);
                *gave_up = 1;
                break;
            }
            // Poll at L2 speed first (a step is microseconds); back off only if it drags on.
            if (spins > 4096) asm volatile("nanosleep.u32 64;");
        }
        __threadfence();
    }
    __syncthreads();
    return !*gave_up;
}

// sh = h_{t-1} as f32. Loads go out in groups of STAGE_GROUP before any is used, so that their
// L2 round trips overlap (each load is a volatile asm: the compiler keeps their order).
#define STAGE_GROUP 8
__device__ __forceinline__ void stage_h(float* sh, const float* prev, const T* h0, int s) {
    const int tid = threadIdx.x;
    if (s == 0) {
        for (int i = tid; i < BATCH * HIDDEN; i += THREADS) sh[i] = h0 ? to_float(h0[i]) : 0.f;
        return;
    }
    for (int base = tid; base < BATCH * HIDDEN; base += THREADS * STAGE_GROUP) {
        float v[STAGE_GROUP];
#pragma unroll
        for (int g = 0; g < STAGE_GROUP; ++g) {
            int i = base + g * THREADS;
            v[g] = i < BATCH * HIDDEN ? load_l2(prev + i) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < STAGE_GROUP; ++g) {
            int i = base + g * THREADS;
            if (i < BATCH * HIDDEN) sh[i] = v[g];
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    persistent_forward(const float* xw, const T* w_hh, const T* b_ih, const T* b_hh,
                       const T* h0, const T* c0, T* out, T* h_n, T* c_n, float* hbuf,
                       unsigned* counter, int* failed, const int* lengths, int seq_len, int st,
                       int sb, int out_ld, int reverse) {
    extern __shared__ float smem[];
    __shared__ int gave_up;
    T* sw = (T*)smem;                                        // [ROWS, HIDDEN]
    float* sh = smem + (ROWS * HIDDEN * sizeof(T) + 15) / 16 * 4;  // [BATCH, HIDDEN]
    float* sg = sh + BATCH * HIDDEN;                        // [BATCH, ROWS]
    float* sx = sg + BATCH * ROWS;                          // [BATCH, ROWS]
    float* sc = sx + BATCH * ROWS;                          // [BATCH, UNITS]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int u0 = blockIdx.x * UNITS;
    const int units = min(UNITS, HIDDEN - u0);
    if (tid == 0) gave_up = 0;
    // The block's rows of W_hh: local row g·UNITS + u is global row g·HIDDEN + u0 + u; rows past
    // the last unit are zero.
    for (int i = tid; i < ROWS * HIDDEN; i += THREADS) {
        int r = i / HIDDEN, k = i - r * HIDDEN, g = r / UNITS, u = r - g * UNITS;
        sw[i] = u < units ? w_hh[((long)g * HIDDEN + u0 + u) * HIDDEN + k] : from_float<T>(0.f);
    }
    for (int i = tid; i < BATCH * UNITS; i += THREADS) {
        int b = i / UNITS, u = i - b * UNITS;
        sc[i] = (CELL == CELL_LSTM && c0 && u < units) ? to_float(c0[b * HIDDEN + u0 + u]) : 0.f;
    }

    for (int s = 0; s < seq_len; ++s) {
        // This step's input side, x·W_ih + b_ih (+ b_hh but for the GRU's n gate), fetched first
        // so that its latency hides behind the staging and the matvec.
        for (int i = tid; i < BATCH * ROWS; i += THREADS) {
            int b = i / ROWS, r = i - b * ROWS, g = r / UNITS, u = r - g * UNITS;
            int t = step_time(s, lengths[b], reverse);
            if (t < 0 || u >= units) continue;
            int col = g * HIDDEN + u0 + u;
            float x = xw[((long)t * st + (long)b * sb) * (GATES * HIDDEN) + col] + bias_at(b_ih, col);
            if (!(CELL == CELL_GRU && g == 2)) x += bias_at(b_hh, col);
            sx[i] = x;
        }
        // h_{t-1}: h0 at the first step, else the previous step's hbuf half (read from L2: other
        // blocks wrote it).
        stage_h(sh, hbuf + (long)((s + 1) & 1) * BATCH * HIDDEN, h0, s);
        __syncthreads();

        // sg[b, r] = W_hh[r] · h[b]: ROW_BLOCK rows per warp, BATCH_CHUNK batch rows at a time.
        for (int r0 = warp * ROW_BLOCK; r0 < ROWS; r0 += WARPS * ROW_BLOCK) {
            for (int b0 = 0; b0 < BATCH; b0 += BATCH_CHUNK) {
                float acc[ROW_BLOCK][BATCH_CHUNK];
#pragma unroll
                for (int q = 0; q < ROW_BLOCK; ++q)
#pragma unroll
                    for (int b = 0; b < BATCH_CHUNK; ++b) acc[q][b] = 0.f;
                for (int k = lane; k < HIDDEN; k += 32) {
                    float w[ROW_BLOCK];
#pragma unroll
                    for (int q = 0; q < ROW_BLOCK; ++q)
                        w[q] = r0 + q < ROWS ? to_float(sw[(r0 + q) * HIDDEN + k]) : 0.f;
#pragma unroll
                    for (int b = 0; b < BATCH_CHUNK; ++b) {
                        float h = b0 + b < BATCH ? sh[(b0 + b) * HIDDEN + k] : 0.f;
#pragma unroll
                        for (int q = 0; q < ROW_BLOCK; ++q) acc[q][b] += w[q] * h;
                    }
                }
#pragma unroll
                for (int q = 0; q < ROW_BLOCK; ++q)
#pragma unroll
                    for (int b = 0; b < BATCH_CHUNK; ++b) {
                        float v = warp_sum(acc[q][b]);
                        if (lane == 0 && r0 + q < ROWS && b0 + b < BATCH)
                            sg[(b0 + b) * ROWS + r0 + q] = v;
                    }
            }
        }
        __syncthreads();

        // The pointwise update of the block's units, as the stepwise kernels do it.
        float* next = hbuf + (long)(s & 1) * BATCH * HIDDEN;
        for (int i = tid; i < BATCH * UNITS; i += THREADS) {
            int b = i / UNITS, u = i - b * UNITS;
            if (u >= units) continue;
            int j = u0 + u;
            int t = step_time(s, lengths[b], reverse);
            float h_prev = sh[b * HIDDEN + j], h = h_prev;
            if (t >= 0) {
                // Gate g's sum: the input side (biases in) plus W_hh·h.
#define GATE(g) (sx[b * ROWS + (g) * UNITS + u] + sg[b * ROWS + (g) * UNITS + u])
#if CELL == CELL_RNN
                h = activate(GATE(0), ACT);
#elif CELL == CELL_LSTM
                float ig = sigmoid(GATE(0)), fg = sigmoid(GATE(1));
                float gg = tanhf(GATE(2)), og = sigmoid(GATE(3));
                float c = fg * sc[i] + ig * gg;
                sc[i] = c;
                h = og * tanhf(c);
#else
                float r = sigmoid(GATE(0)), z = sigmoid(GATE(1));
                float n = tanhf(sx[b * ROWS + 2 * UNITS + u] +
                                r * (sg[b * ROWS + 2 * UNITS + u] + bias_at(b_hh, 2 * HIDDEN + j)));
                h = n + z * (h_prev - n);
#endif
#undef GATE
                out[((long)t * st + (long)b * sb) * out_ld + j] = from_float<T>(h);
            } else {
                // pad_packed_sequence: an ended row's outputs are 0 and its state carries.
                out[((long)s * st + (long)b * sb) * out_ld + j] = from_float<T>(0.f);
            }
            next[b * HIDDEN + j] = h;
            if (s + 1 == seq_len) {
                h_n[b * HIDDEN + j] = from_float<T>(h);
                if (CELL == CELL_LSTM) c_n[b * HIDDEN + j] = from_float<T>(sc[i]);
            }
        }
        if (s + 1 < seq_len && !grid_barrier(counter, (unsigned)(s + 1) * NBLOCKS, failed, &gave_up))
            return;
    }
}
