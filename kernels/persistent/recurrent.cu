// persistent/recurrent.cu — a whole layer-direction's step loop in one launch: tanh/ReLU RNN,
// LSTM or GRU, with the block's slice of W_hh kept in shared memory for the whole sequence.
//
// Specialised at run time (NVRTC; the host prepends the defines): CELL (CELL_RNN | CELL_LSTM |
// CELL_GRU), ACT (the RNN's activation code), HIDDEN, BATCH, UNITS (hidden units per block),
// STORAGE (float | f16 | bf16) and TENSOR_CORES (0 | 1; 1 needs a 16-bit STORAGE, named by
// MMA_TYPE f16 | bf16). Not compiled at build time: it needs those defines.
//
// Block k owns hidden units [k·UNITS, (k+1)·UNITS) with all their gate rows (G per unit), so the
// cell update stays in the block and only h crosses blocks. Per step it
//   1. fetches its input side x·W_ih + biases and its units' h_{t-1} (latency hidden by 2–3),
//   2. stages all of h_{t-1} [B, H] into shared memory,
//   3. computes its rows of W_hh·h: with TENSOR_CORES, mma.sync m16n8k16 (f32 accumulate) with
//      the K range split across warps and the partial sums added in shared memory; otherwise
//      CUDA-core FMAs, one warp per ROW_BLOCK rows with lanes across H,
//   4. applies the same pointwise update as the stepwise kernels (gates, cell, length mask,
//      output) and publishes its units of h_t in `hbuf` [2, B, H] f32,
//   5. meets the other blocks at a grid barrier: a counter every block adds 1 to per step.
//      (Measured on an H100 against a flag per block and against flags next to the data, each
//      h element tagged with its step and polled: the counter was fastest; BENCHMARKS.md.)
// The launch is cooperative, so all blocks are co-resident; a wait that never ends is still
// bounded, and then sets `failed` instead of hanging.
//
// Shapes: xw [rows, G·H] f32 (the input projection, both layouts via st/sb), w_hh [G·H, H],
// b_ih/b_hh [G·H] (or null), h0/h_n [B, H], c0/c_n [B, H] (LSTM; c0 may be null), out rows of
// out_ld elements (this direction's columns), lengths [B] in 1..=T.
#include "common.cuh"

#define CELL_RNN 0
#define CELL_LSTM 1
#define CELL_GRU 2

#if !defined(CELL) || !defined(ACT) || !defined(HIDDEN) || !defined(BATCH) || !defined(UNITS) || \
    !defined(STORAGE) || !defined(TENSOR_CORES)
#error "persistent/recurrent.cu needs CELL, ACT, HIDDEN, BATCH, UNITS, STORAGE, TENSOR_CORES"
#endif

#define GATES (CELL == CELL_LSTM ? 4 : CELL == CELL_GRU ? 3 : 1)
#define ROWS (GATES * UNITS)
#define THREADS 256
#define WARPS (THREADS / 32)
// Barrier polls before giving up: seconds, far past any step.
#define SPIN_LIMIT (1u << 26)

#if TENSOR_CORES
// Tiles of m16n8k16: rows padded to 16, batch to 8, K to 16; shared-memory rows of W and h are
// LD elements apart, 8 more than K so that a fragment's 8 rows fall in different banks.
#define ROWS_PAD ((ROWS + 15) / 16 * 16)
#define BATCH_PAD ((BATCH + 7) / 8 * 8)
#define K_PAD ((HIDDEN + 15) / 16 * 16)
#define LD (K_PAD + 8)
#else
#define ROWS_PAD ROWS
#define LD HIDDEN
// A warp accumulates ROW_BLOCK rows for BATCH_CHUNK batch rows at once: at most 32
// accumulators per lane.
#define ROW_BLOCK (BATCH <= 8 ? 4 : BATCH <= 16 ? 2 : 1)
#define BATCH_CHUNK (BATCH < 32 / ROW_BLOCK ? BATCH : 32 / ROW_BLOCK)
static_assert(ROW_BLOCK * BATCH_CHUNK <= 32, "too many accumulators per lane");
#endif

static_assert(HIDDEN >= 1 && BATCH >= 1 && BATCH <= 64, "BATCH must be in 1..=64");
static_assert(UNITS >= 1 && UNITS <= HIDDEN, "UNITS must be in 1..=HIDDEN");
static_assert(CELL == CELL_RNN || CELL == CELL_LSTM || CELL == CELL_GRU, "unknown CELL");

typedef STORAGE T;

// Shared memory, in bytes from the start (the host computes the same total):
//   W    T   [ROWS_PAD, LD]
//   H    T   [BATCH_PAD, LD] (tensor cores) or f32 [BATCH, HIDDEN]
//   PART f32 [WARPS, ROWS_PAD, BATCH_PAD] (tensor cores only)
//   then f32 gate sums sg and input sides sx [BATCH, ROWS], c and h_{t-1} of the block's units
//   sc and sp [BATCH, UNITS].
#define ALIGN16(x) (((x) + 15) / 16 * 16)
#define W_BYTES ALIGN16(ROWS_PAD * LD * (int)sizeof(T))
#if TENSOR_CORES
static_assert(sizeof(T) == 2, "tensor cores need 16-bit storage");
#define H_BYTES ALIGN16(BATCH_PAD * LD * 2)
#define PART_BYTES (WARPS * ROWS_PAD * BATCH_PAD * 4)
#else
#define H_BYTES (BATCH * HIDDEN * 4)
#define PART_BYTES 0
#endif

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

// Polls *p until it reaches target: false when the wait gave up (the blocks were not all
// running). Polls at L2 speed first (a step is microseconds) and backs off only if it drags on.
__device__ __forceinline__ bool wait_at_least(const unsigned* p, unsigned target) {
    unsigned spins = 0;
    while (load_acquire(p) < target) {
        if (++spins > SPIN_LIMIT) return false;
        if (spins > 4096) asm volatile("nanosleep.u32 64;");
    }
    return true;
}

// After a step, every block's writes before the call are visible to every block after it: the
// block's threads meet, one thread publishes with a release add and waits with acquire loads,
// and the block meets again. Returns false when the wait gave up, after setting `failed`.
__device__ bool grid_barrier(unsigned* counter, unsigned step, int* failed, int* gave_up) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        add_release(counter, 1u);
        if (!wait_at_least(counter, (step + 1) * gridDim.x)) {
            atomicExch(failed, 1);
            *gave_up = 1;
        }
        __threadfence();
    }
    __syncthreads();
    return !*gave_up;
}

// Element i of h_{t-1} [B, H]: h0 at the first step, else the previous step's hbuf half (read
// from L2: other blocks wrote it).
__device__ __forceinline__ float h_prev_at(const float* prev, const T* h0, int s, int i) {
    return s == 0 ? (h0 ? to_float(h0[i]) : 0.f) : load_l2(prev + i);
}

// All of h_{t-1} into shared memory. Loads go out in groups of STAGE_GROUP before any is used,
// so that their L2 round trips overlap (each is a volatile asm: the compiler keeps the order).
#define STAGE_GROUP 16
__device__ __forceinline__ void stage_h(void* sh, const float* prev, const T* h0, int s) {
    for (int base = threadIdx.x; base < BATCH * HIDDEN; base += THREADS * STAGE_GROUP) {
        float v[STAGE_GROUP];
#pragma unroll
        for (int g = 0; g < STAGE_GROUP; ++g) {
            int i = base + g * THREADS;
            v[g] = i < BATCH * HIDDEN ? h_prev_at(prev, h0, s, i) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < STAGE_GROUP; ++g) {
            int i = base + g * THREADS;
            if (i >= BATCH * HIDDEN) continue;
#if TENSOR_CORES
            int b = i / HIDDEN;
            ((T*)sh)[b * LD + i - b * HIDDEN] = from_float<T>(v[g]);
#else
            ((float*)sh)[i] = v[g];
#endif
        }
    }
}

#if TENSOR_CORES
__device__ __forceinline__ unsigned load_pair(const T* p) { return *(const unsigned*)p; }

// d += a·b for one m16n8k16 tile (a: 4 registers of W, b: 2 of h; f32 accumulators).
__device__ __forceinline__ void mma_16816(float* d, unsigned a0, unsigned a1, unsigned a2,
                                          unsigned a3, unsigned b0, unsigned b1) {
#define MMA_ASM(TY)                                                                              \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #TY "." #TY                           \
                 ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                    \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                \
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
#define MMA_EXPAND(TY) MMA_ASM(TY)
    MMA_EXPAND(MMA_TYPE);
#undef MMA_EXPAND
#undef MMA_ASM
}

// sg[b, r] = W[r] · h[b] on tensor cores. Warp w takes K tiles w, w + WARPS, ...; a lane holds
// the fragments of the PTX layout (group g = lane/4 is the row / batch column, t = lane%4 picks
// the K pair); the warps' partial tiles are then added through PART.
__device__ __forceinline__ void rows_times_h(const T* sw, const T* sh, float* part, float* sg) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    float acc[ROWS_PAD / 16][BATCH_PAD / 8][4];
#pragma unroll
    for (int m = 0; m < ROWS_PAD / 16; ++m)
#pragma unroll
        for (int n = 0; n < BATCH_PAD / 8; ++n)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[m][n][q] = 0.f;
    for (int kt = warp; kt < K_PAD / 16; kt += WARPS) {
        const int k = kt * 16 + 2 * t;
        unsigned bh[BATCH_PAD / 8][2];
#pragma unroll
        for (int n = 0; n < BATCH_PAD / 8; ++n) {
            const T* hp = sh + (n * 8 + g) * LD + k;
            bh[n][0] = load_pair(hp);
            bh[n][1] = load_pair(hp + 8);
        }
#pragma unroll
        for (int m = 0; m < ROWS_PAD / 16; ++m) {
            const T* wp = sw + (m * 16 + g) * LD + k;
            unsigned a0 = load_pair(wp), a1 = load_pair(wp + 8 * LD);
            unsigned a2 = load_pair(wp + 8), a3 = load_pair(wp + 8 * LD + 8);
#pragma unroll
            for (int n = 0; n < BATCH_PAD / 8; ++n)
                mma_16816(acc[m][n], a0, a1, a2, a3, bh[n][0], bh[n][1]);
        }
    }
    float* mine = part + warp * ROWS_PAD * BATCH_PAD;
#pragma unroll
    for (int m = 0; m < ROWS_PAD / 16; ++m)
#pragma unroll
        for (int n = 0; n < BATCH_PAD / 8; ++n) {
            const int r = m * 16 + g, c = n * 8 + 2 * t;
            mine[r * BATCH_PAD + c] = acc[m][n][0];
            mine[r * BATCH_PAD + c + 1] = acc[m][n][1];
            mine[(r + 8) * BATCH_PAD + c] = acc[m][n][2];
            mine[(r + 8) * BATCH_PAD + c + 1] = acc[m][n][3];
        }
    __syncthreads();
    for (int i = threadIdx.x; i < BATCH * ROWS; i += THREADS) {
        const int b = i / ROWS, r = i - b * ROWS;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) v += part[(w * ROWS_PAD + r) * BATCH_PAD + b];
        sg[i] = v;
    }
}
#else
// sg[b, r] = W[r] · h[b] on CUDA cores: ROW_BLOCK rows per warp, BATCH_CHUNK batch rows at a
// time, lanes across H, then a warp sum per (row, batch row).
__device__ __forceinline__ void rows_times_h(const T* sw, const float* sh, float*, float* sg) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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
                    w[q] = r0 + q < ROWS ? to_float(sw[(r0 + q) * LD + k]) : 0.f;
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
}
#endif

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    persistent_forward(const float* xw, const T* w_hh, const T* b_ih, const T* b_hh,
                       const T* h0, const T* c0, T* out, T* h_n, T* c_n, float* hbuf,
                       unsigned* counter, int* failed, const int* lengths, int seq_len, int st,
                       int sb, int out_ld, int reverse) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int gave_up;
    T* sw = (T*)smem;
    void* sh = smem + W_BYTES;
    float* part = (float*)(smem + W_BYTES + H_BYTES);
    float* sg = (float*)(smem + W_BYTES + H_BYTES + PART_BYTES);
    float* sx = sg + BATCH * ROWS;
    float* sc = sx + BATCH * ROWS;
    float* sp = sc + BATCH * UNITS;
    const int tid = threadIdx.x;
    const int u0 = blockIdx.x * UNITS;
    const int units = min(UNITS, HIDDEN - u0);
    if (tid == 0) gave_up = 0;
    // The block's rows of W_hh: local row g·UNITS + u is global row g·HIDDEN + u0 + u. Rows past
    // the last unit and the padding are zero.
    for (int i = tid; i < ROWS_PAD * LD; i += THREADS) {
        int r = i / LD, k = i - r * LD, g = r / UNITS, u = r - g * UNITS;
        bool real = r < ROWS && k < HIDDEN && u < units;
        sw[i] = real ? w_hh[((long)g * HIDDEN + u0 + u) * HIDDEN + k] : from_float<T>(0.f);
    }
#if TENSOR_CORES
    // h's padding (columns past H, rows past B) is never staged: zero it once.
    for (int i = tid; i < BATCH_PAD * LD; i += THREADS) ((T*)sh)[i] = from_float<T>(0.f);
#endif
    for (int i = tid; i < BATCH * UNITS; i += THREADS) {
        int b = i / UNITS, u = i - b * UNITS;
        sc[i] = (CELL == CELL_LSTM && c0 && u < units) ? to_float(c0[b * HIDDEN + u0 + u]) : 0.f;
    }
    __syncthreads();

    for (int s = 0; s < seq_len; ++s) {
        const float* prev = hbuf + (long)((s + 1) & 1) * BATCH * HIDDEN;
        // 1. The input side, x·W_ih + b_ih (+ b_hh but for the GRU's n gate), and the units'
        //    own h_{t-1}, fetched first so that their latency hides behind 2 and 3.
        for (int i = tid; i < BATCH * ROWS; i += THREADS) {
            int b = i / ROWS, r = i - b * ROWS, g = r / UNITS, u = r - g * UNITS;
            int t = step_time(s, lengths[b], reverse);
            if (t < 0 || u >= units) continue;
            int col = g * HIDDEN + u0 + u;
            float x = xw[((long)t * st + (long)b * sb) * (GATES * HIDDEN) + col] + bias_at(b_ih, col);
            if (!(CELL == CELL_GRU && g == 2)) x += bias_at(b_hh, col);
            sx[i] = x;
        }
        for (int i = tid; i < BATCH * UNITS; i += THREADS) {
            int b = i / UNITS, u = i - b * UNITS;
            if (u < units) sp[i] = h_prev_at(prev, h0, s, b * HIDDEN + u0 + u);
        }
        // 2.
        stage_h(sh, prev, h0, s);
        __syncthreads();
        // 3.
#if TENSOR_CORES
        rows_times_h(sw, (const T*)sh, part, sg);
#else
        rows_times_h(sw, (const float*)sh, part, sg);
#endif
        __syncthreads();

        // 4. The pointwise update of the block's units, as the stepwise kernels do it.
        float* next = hbuf + (long)(s & 1) * BATCH * HIDDEN;
        for (int i = tid; i < BATCH * UNITS; i += THREADS) {
            int b = i / UNITS, u = i - b * UNITS;
            if (u >= units) continue;
            int j = u0 + u;
            int t = step_time(s, lengths[b], reverse);
            float h_prev = sp[i], h = h_prev;
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
        // 5.
        if (s + 1 < seq_len && !grid_barrier(counter, (unsigned)s, failed, &gave_up)) return;
    }
}
