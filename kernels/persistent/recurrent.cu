// persistent/recurrent.cu — a whole layer-direction's step loop in one launch: tanh/ReLU RNN,
// LSTM or GRU, with the block's slice of W_hh kept on-chip (registers, then shared memory) for
// the whole sequence.
//
// Specialised at run time (NVRTC; the host prepends the defines): CELL (CELL_RNN | CELL_LSTM |
// CELL_GRU), ACT (the RNN's activation code), HIDDEN, BATCH, UNITS (hidden units per block),
// STORAGE (float | f16 | bf16), TENSOR_CORES (0 | 1; 1 needs a 16-bit STORAGE, named by
// MMA_TYPE f16 | bf16), REG_STEPS (how many of a thread's K steps of W_hh it holds in
// registers; the rest is read from shared memory), for CUDA-core FMAs ROW_BLOCK (rows a warp
// accumulates at once), SHARED_BYTES (the dynamic shared memory the host launches with,
// checked against the layout below), VEC_STAGE (0 | 1: stage h with 16-byte loads; needs
// H % 4 == 0) and PREFETCH (0 | 1: load the next step's input side before the barrier). Not
// compiled at build time: it needs those defines.
//
// Block k owns hidden units [k·UNITS, (k+1)·UNITS) with all their gate rows (G per unit), so the
// cell update stays in the block and only h crosses blocks. Per step it
//   1. fetches its input side x·W_ih + biases and its units' h_{t-1} (latency hidden by 2–3),
//   2. stages all of h_{t-1} [B, H] into shared memory,
//   3. computes its rows of W_hh·h: with TENSOR_CORES, mma.sync m16n8k16 (f32 accumulate) with
//      the K range split across warps and the partial sums added in shared memory; otherwise
//      CUDA-core FMAs, one warp per ROW_BLOCK rows with lanes across H. A warp's part of W_hh
//      is the same at every step: its first REG_STEPS K steps stay in registers, loaded once
//      before the loop, and only the columns past them (from W_K0) are kept in shared memory,
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


#if !defined(CELL) || !defined(ACT) || !defined(HIDDEN) || !defined(BATCH) || !defined(UNITS) || \
    !defined(STORAGE) || !defined(TENSOR_CORES) || !defined(REG_STEPS) || !defined(SHARED_BYTES) || \
    !defined(VEC_STAGE) || !defined(PREFETCH)
#error "persistent/recurrent.cu needs the defines listed at its top"
#endif

#define GATES (CELL == CELL_LSTM ? 4 : CELL == CELL_GRU ? 3 : 1)
#define ROWS (GATES * UNITS)
#define THREADS 256
#define WARPS (THREADS / 32)
// Barrier polls before giving up: seconds, far past any step.
#define SPIN_LIMIT (1u << 26)

#if TENSOR_CORES
// Tiles of m16n8k16: rows padded to 16, batch to 8, K to 16; shared-memory rows of h are LD
// elements apart, 8 more than K so that a fragment's 8 rows fall in different banks.
#define ROWS_PAD ((ROWS + 15) / 16 * 16)
#define M_TILES (ROWS_PAD / 16)
#define BATCH_PAD ((BATCH + 7) / 8 * 8)
#define N_TILES (BATCH_PAD / 8)
#define K_PAD ((HIDDEN + 15) / 16 * 16)
#define LD (K_PAD + 8)
// Warp w takes K tiles w, w + WARPS, ...: K_STEPS of them at most; those past REG_STEPS start
// at column W_K0. W's shared rows are padded by 8 like h's.
#define K_STEPS ((K_PAD / 16 + WARPS - 1) / WARPS)
#define W_K0 (REG_STEPS * WARPS * 16)
#define W_COLS (W_K0 < K_PAD ? K_PAD - W_K0 : 0)
#define W_LD (W_COLS > 0 ? W_COLS + 8 : 0)
#else
#define ROWS_PAD ROWS
// A warp accumulates ROW_BLOCK rows for BATCH_CHUNK batch rows at once: at most 32
// accumulators per lane. Warp w takes rows from (w + p·WARPS)·ROW_BLOCK in pass p, and lane l
// columns l, l + 32, ...: K_STEPS of them; those past REG_STEPS start at column W_K0.
#if !defined(ROW_BLOCK)
#error "CUDA-core FMAs need ROW_BLOCK"
#endif
#define BATCH_CHUNK (BATCH < 32 / ROW_BLOCK ? BATCH : 32 / ROW_BLOCK)
static_assert(ROW_BLOCK * BATCH_CHUNK <= 32, "too many accumulators per lane");
#define ROW_PASSES ((ROWS + WARPS * ROW_BLOCK - 1) / (WARPS * ROW_BLOCK))
#define K_STEPS ((HIDDEN + 31) / 32)
#define W_K0 (REG_STEPS * 32)
#define W_COLS (W_K0 < HIDDEN ? HIDDEN - W_K0 : 0)
#define W_LD W_COLS
#endif
static_assert(REG_STEPS >= 0 && REG_STEPS <= K_STEPS, "REG_STEPS must be in 0..=K_STEPS");
// Register arrays need a length of at least 1; nothing reads past REG_STEPS.
#define REG_LEN (REG_STEPS > 0 ? REG_STEPS : 1)

static_assert(HIDDEN >= 1 && BATCH >= 1 && BATCH <= 64, "BATCH must be in 1..=64");
static_assert(UNITS >= 1 && UNITS <= HIDDEN, "UNITS must be in 1..=HIDDEN");
static_assert(CELL == CELL_RNN || CELL == CELL_LSTM || CELL == CELL_GRU, "unknown CELL");

typedef STORAGE T;

// Shared memory, in bytes from the start (the host computes the same total):
//   W    T   [ROWS_PAD, W_LD]: the columns of W_hh from W_K0 on (none when all fit registers)
//   H    T   [BATCH_PAD, LD] (tensor cores) or f32 [BATCH, HIDDEN]
//   PART f32 [WARPS, ROWS_PAD, BATCH_PAD] (tensor cores only)
//   then f32 gate sums sg and input sides sx [BATCH, ROWS], c and h_{t-1} of the block's units
//   sc and sp [BATCH, UNITS].
#define ALIGN16(x) (((x) + 15) / 16 * 16)
#define W_BYTES ALIGN16(ROWS_PAD * W_LD * (int)sizeof(T))
#if TENSOR_CORES
static_assert(sizeof(T) == 2, "tensor cores need 16-bit storage");
#define H_BYTES ALIGN16(BATCH_PAD * LD * 2)
#define PART_BYTES (WARPS * ROWS_PAD * BATCH_PAD * 4)
#else
#define H_BYTES (BATCH * HIDDEN * 4)
#define PART_BYTES 0
#endif
// The host computes the same total and launches with it (SHARED_BYTES).
static_assert(W_BYTES + H_BYTES + PART_BYTES + 4 * BATCH * (2 * ROWS + 2 * UNITS) == SHARED_BYTES,
              "the host's shared-memory size is not this layout's");

#ifdef __CUDA_ARCH__
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

__device__ __forceinline__ void back_off() { asm volatile("nanosleep.u32 64;"); }
#else
// The host build (tests/emulation/cuda_host.h): C++ atomics with the same ordering.
inline void add_release(unsigned* p, unsigned v) { emu::add_release(p, v); }
inline unsigned load_acquire(const unsigned* p) { return emu::load_acquire(p); }
inline float load_l2(const float* p) { return *p; }
inline void back_off() { emu::back_off(); }
#endif

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Polls *p until it reaches target: false when the wait gave up (the blocks were not all
// running). Polls at L2 speed first (a step is microseconds) and backs off only if it drags on.
__device__ __forceinline__ bool wait_at_least(const unsigned* p, unsigned target) {
    unsigned spins = 0;
    // Signed difference: the counter and the target may wrap (T·blocks past 2^32).
    while ((int)(load_acquire(p) - target) < 0) {
        if (++spins > SPIN_LIMIT) return false;
        if (spins > 4096) back_off();
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

#if VEC_STAGE
static_assert(HIDDEN % 4 == 0, "16-byte staging needs H to be a multiple of 4");
struct __align__(16) f32x4 {
    float x, y, z, w;
};
struct __align__(8) u32x2 {
    unsigned lo, hi;
};

__device__ __forceinline__ f32x4 load_l2_x4(const float* p) {
    f32x4 v;
#ifdef __CUDA_ARCH__
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
#else
    v = *(const f32x4*)p;
#endif
    return v;
}

// As stage_h from the previous step's hbuf half, 4 elements (of one batch row: H % 4 == 0) per
// 16-byte load, STAGE_GROUP_X4 loads in flight: twice the elements per L2 round trip as
// stage_h, in twice the registers.
#define STAGE_GROUP_X4 8
__device__ __forceinline__ void stage_h_x4(void* sh, const float* prev) {
    constexpr int QUADS = BATCH * HIDDEN / 4;
    for (int base = threadIdx.x; base < QUADS; base += THREADS * STAGE_GROUP_X4) {
        f32x4 v[STAGE_GROUP_X4];
#pragma unroll
        for (int g = 0; g < STAGE_GROUP_X4; ++g) {
            int i = base + g * THREADS;
            if (i < QUADS) v[g] = load_l2_x4(prev + 4 * i);
        }
#pragma unroll
        for (int g = 0; g < STAGE_GROUP_X4; ++g) {
            int i = base + g * THREADS;
            if (i >= QUADS) continue;
#if TENSOR_CORES
            // 4 elements of a row at an even column: one 8-byte store (LD·2 is a multiple of 16).
            int b = 4 * i / HIDDEN;
            *(u32x2*)((T*)sh + b * LD + 4 * i - b * HIDDEN) = {
                (unsigned)from_float<T>(v[g].x).bits | ((unsigned)from_float<T>(v[g].y).bits << 16),
                (unsigned)from_float<T>(v[g].z).bits | ((unsigned)from_float<T>(v[g].w).bits << 16)};
#else
            ((f32x4*)sh)[i] = v[g];
#endif
        }
    }
}
#endif

// Where element i = (b, r) of the block's input side [B, ROWS] is in xw at step s (local row
// r = g·UNITS + u is gate g of unit u0 + u), or -1 when the row has ended or the unit is past
// the last.
__device__ __forceinline__ long input_at(int i, int s, const int* lengths, int u0, int units,
                                         int st, int sb, int reverse) {
    const int b = i / ROWS, r = i - b * ROWS, g = r / UNITS, u = r - g * UNITS;
    const int t = step_time(s, lengths[b], reverse);
    if (t < 0 || u >= units) return -1;
    return ((long)t * st + (long)b * sb) * (GATES * HIDDEN) + g * HIDDEN + u0 + u;
}

// x·W_ih of element i plus its biases: b_ih, and b_hh but for the GRU's n gate (which the reset
// gate multiplies).
__device__ __forceinline__ float with_biases(float x, int i, const T* b_ih, const T* b_hh,
                                             int u0) {
    const int r = i % ROWS, g = r / UNITS, col = g * HIDDEN + u0 + r - g * UNITS;
    x += bias_at(b_ih, col);
    if (!(CELL == CELL_GRU && g == 2)) x += bias_at(b_hh, col);
    return x;
}

#if PREFETCH
// The next step's input side is loaded into registers before the grid barrier and stored to
// shared memory after it, so that its latency (xw is read once, from memory) overlaps the
// wait; the biases, the same at every step, stay in registers. Warps 1.. only: thread 0 fences
// at the barrier, which would wait for its loads. Element q of a thread is i = tid - 32 +
// q·PF_THREADS.
#define PF_THREADS (THREADS - 32)
#define PF_COUNT ((BATCH * ROWS + PF_THREADS - 1) / PF_THREADS)

struct Prefetch {
    float x[PF_COUNT];     // x·W_ih, in flight until store_input
    float bias[PF_COUNT];  // with_biases(0)
    bool running[PF_COUNT];
};

__device__ __forceinline__ void load_input_biases(Prefetch& pf, const T* b_ih, const T* b_hh,
                                                  int u0, int units) {
#pragma unroll
    for (int q = 0; q < PF_COUNT; ++q) {
        const int i = (int)threadIdx.x - 32 + q * PF_THREADS;
        // Units past the last block's `units` have no bias columns (they would read past G·H).
        if (i >= 0 && i < BATCH * ROWS && i % ROWS % UNITS < units)
            pf.bias[q] = with_biases(0.f, i, b_ih, b_hh, u0);
    }
}

__device__ __forceinline__ void fetch_input(Prefetch& pf, const float* xw, int s,
                                            const int* lengths, int u0, int units, int st,
                                            int sb, int reverse) {
    if (threadIdx.x < 32) return;
#pragma unroll
    for (int q = 0; q < PF_COUNT; ++q) {
        const int i = threadIdx.x - 32 + q * PF_THREADS;
        const long at = i < BATCH * ROWS ? input_at(i, s, lengths, u0, units, st, sb, reverse) : -1;
        pf.running[q] = at >= 0;
        if (at >= 0) pf.x[q] = xw[at];  // not read until store_input: the load stays in flight
    }
}

__device__ __forceinline__ void store_input(float* sx, const Prefetch& pf) {
    if (threadIdx.x < 32) return;
#pragma unroll
    for (int q = 0; q < PF_COUNT; ++q)
        if (pf.running[q]) sx[threadIdx.x - 32 + q * PF_THREADS] = pf.x[q] + pf.bias[q];
}
#endif

// Element (r, k) of the block's rows of W_hh: local row g·UNITS + u is global row
// g·HIDDEN + u0 + u. Rows past the last unit and the tiles' padding are zero.
__device__ __forceinline__ T w_at(const T* w_hh, int r, int k, int u0, int units) {
    const int g = r / UNITS, u = r - g * UNITS;
    const bool real = r < ROWS && k < HIDDEN && u < units;
    return real ? w_hh[((long)g * HIDDEN + u0 + u) * HIDDEN + k] : from_float<T>(0.f);
}

// The overflow of W_hh, columns W_K0.. of the block's rows, into shared memory.
__device__ __forceinline__ void load_shared_weights(T* sw, const T* w_hh, int u0, int units) {
#if W_LD > 0
    for (int i = threadIdx.x; i < ROWS_PAD * W_LD; i += THREADS) {
        const int r = i / W_LD, c = i - r * W_LD;
        sw[i] = w_at(w_hh, r, W_K0 + c, u0, units);
    }
#endif
}

#if TENSOR_CORES
__device__ __forceinline__ unsigned load_pair(const T* p) { return *(const unsigned*)p; }

// Elements (r, k) and (r, k + 1) of W_hh as an mma operand register (k in the low half).
__device__ __forceinline__ unsigned w_pair(const T* w_hh, int r, int k, int u0, int units) {
    return (unsigned)w_at(w_hh, r, k, u0, units).bits |
           ((unsigned)w_at(w_hh, r, k + 1, u0, units).bits << 16);
}

// A warp's A fragments (W_hh) of its first REG_STEPS K tiles, for every row tile.
struct WeightRegs {
    unsigned a[REG_LEN][M_TILES][4];
};

// d += a·b for one m16n8k16 tile (a: 4 registers of W, b: 2 of h; f32 accumulators).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
#ifndef __CUDA_ARCH__
    // The host build: the warp's fragments gathered and multiplied in f32.
    emu::mma_m16n8k16(d, a, b0, b1, [](unsigned short bits) { return to_float(T{bits}); });
#else
#define MMA_ASM(TY)                                                                              \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #TY "." #TY                           \
                 ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                    \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
#define MMA_EXPAND(TY) MMA_ASM(TY)
    MMA_EXPAND(MMA_TYPE);
#undef MMA_EXPAND
#undef MMA_ASM
#endif
}

// A lane's fragments follow the PTX layout: group g = lane/4 is the row (A) or batch column
// (B), t = lane%4 picks the K pair; a[0..4] are rows g and g + 8 at K pairs 2t and 2t + 8.
__device__ __forceinline__ void load_weights(WeightRegs& wr, const T* w_hh, int u0, int units) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < REG_STEPS; ++i) {
        const int k = (warp + i * WARPS) * 16 + 2 * t;  // past K_PAD: zeros, never used
#pragma unroll
        for (int m = 0; m < M_TILES; ++m) {
            const int r = m * 16 + g;
            wr.a[i][m][0] = w_pair(w_hh, r, k, u0, units);
            wr.a[i][m][1] = w_pair(w_hh, r + 8, k, u0, units);
            wr.a[i][m][2] = w_pair(w_hh, r, k + 8, u0, units);
            wr.a[i][m][3] = w_pair(w_hh, r + 8, k + 8, u0, units);
        }
    }
}

// The B fragments (h) of the K tile whose lane column is k.
__device__ __forceinline__ void load_h_fragments(unsigned (&bh)[N_TILES][2], const T* sh, int k) {
    const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int n = 0; n < N_TILES; ++n) {
        const T* hp = sh + (n * 8 + g) * LD + k;
        bh[n][0] = load_pair(hp);
        bh[n][1] = load_pair(hp + 8);
    }
}

// acc[n] += a · bh[n] for one row tile across the batch tiles.
__device__ __forceinline__ void mma_row_tile(float (&acc)[N_TILES][4], const unsigned* a,
                                             const unsigned (&bh)[N_TILES][2]) {
#pragma unroll
    for (int n = 0; n < N_TILES; ++n) mma_16816(acc[n], a, bh[n][0], bh[n][1]);
}

// sg[b, r] = W[r] · h[b] on tensor cores: each warp its K tiles (from registers, then from
// shared memory), then the warps' partial tiles added through PART.
__device__ __forceinline__ void rows_times_h(const WeightRegs& wr, const T* sw, const T* sh,
                                             float* part, float* sg) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    float acc[M_TILES][N_TILES][4];
#pragma unroll
    for (int m = 0; m < M_TILES; ++m)
#pragma unroll
        for (int n = 0; n < N_TILES; ++n)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[m][n][q] = 0.f;
    unsigned bh[N_TILES][2];
#pragma unroll
    for (int i = 0; i < REG_STEPS; ++i) {
        const int kt = warp + i * WARPS;
        if (kt >= K_PAD / 16) break;
        load_h_fragments(bh, sh, kt * 16 + 2 * t);
#pragma unroll
        for (int m = 0; m < M_TILES; ++m) mma_row_tile(acc[m], wr.a[i][m], bh);
    }
    for (int kt = warp + REG_STEPS * WARPS; kt < K_PAD / 16; kt += WARPS) {
        const int k = kt * 16 + 2 * t;
        load_h_fragments(bh, sh, k);
#pragma unroll
        for (int m = 0; m < M_TILES; ++m) {
            const T* wp = sw + (m * 16 + g) * W_LD + k - W_K0;
            const unsigned a[4] = {load_pair(wp), load_pair(wp + 8 * W_LD), load_pair(wp + 8),
                                   load_pair(wp + 8 * W_LD + 8)};
            mma_row_tile(acc[m], a, bh);
        }
    }
    float* mine = part + warp * ROWS_PAD * BATCH_PAD;
#pragma unroll
    for (int m = 0; m < M_TILES; ++m)
#pragma unroll
        for (int n = 0; n < N_TILES; ++n) {
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
// A warp's weights of its first REG_STEPS columns, for each pass's ROW_BLOCK rows, in f32.
struct WeightRegs {
    float w[ROW_PASSES][REG_LEN][ROW_BLOCK];
};

__device__ __forceinline__ void load_weights(WeightRegs& wr, const T* w_hh, int u0, int units) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int p = 0; p < ROW_PASSES; ++p)
#pragma unroll
        for (int i = 0; i < REG_STEPS; ++i)
#pragma unroll
            for (int q = 0; q < ROW_BLOCK; ++q)
                wr.w[p][i][q] =
                    to_float(w_at(w_hh, (warp + p * WARPS) * ROW_BLOCK + q, lane + 32 * i, u0, units));
}

// acc[q][b] += w[q] · h[b0 + b, k] for the chunk's batch rows.
__device__ __forceinline__ void fma_column(float (&acc)[ROW_BLOCK][BATCH_CHUNK],
                                           const float (&w)[ROW_BLOCK], const float* sh, int b0,
                                           int k) {
#pragma unroll
    for (int b = 0; b < BATCH_CHUNK; ++b) {
        float h = b0 + b < BATCH ? sh[(b0 + b) * HIDDEN + k] : 0.f;
#pragma unroll
        for (int q = 0; q < ROW_BLOCK; ++q) acc[q][b] += w[q] * h;
    }
}

// sg[b, r] = W[r] · h[b] on CUDA cores: ROW_BLOCK rows per warp, BATCH_CHUNK batch rows at a
// time, lanes across H (registers' columns, then shared memory's), then a warp sum per (row,
// batch row).
__device__ __forceinline__ void rows_times_h(const WeightRegs& wr, const T* sw, const float* sh,
                                             float*, float* sg) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Unrolled only to index the registers (passes are few then; each is long).
#if REG_STEPS > 0
#pragma unroll
#else
#pragma unroll 1
#endif
    for (int p = 0; p < ROW_PASSES; ++p) {
        const int r0 = (warp + p * WARPS) * ROW_BLOCK;
        if (r0 >= ROWS) break;
        for (int b0 = 0; b0 < BATCH; b0 += BATCH_CHUNK) {
            float acc[ROW_BLOCK][BATCH_CHUNK];
#pragma unroll
            for (int q = 0; q < ROW_BLOCK; ++q)
#pragma unroll
                for (int b = 0; b < BATCH_CHUNK; ++b) acc[q][b] = 0.f;
#pragma unroll
            for (int i = 0; i < REG_STEPS; ++i) {
                const int k = lane + 32 * i;
                if (k < HIDDEN) fma_column(acc, wr.w[p][i], sh, b0, k);
            }
            for (int k = W_K0 + lane; k < HIDDEN; k += 32) {
                float w[ROW_BLOCK];
#pragma unroll
                for (int q = 0; q < ROW_BLOCK; ++q)
                    w[q] = r0 + q < ROWS ? to_float(sw[(r0 + q) * W_LD + k - W_K0]) : 0.f;
                fma_column(acc, w, sh, b0, k);
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
#ifdef __CUDA_ARCH__
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int gave_up;
#else
    unsigned char* smem = emu::dynamic_shared();
    int& gave_up = emu::block_shared<int>();
#endif
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
    // The block's rows of W_hh, in registers and shared memory for the whole sequence.
    WeightRegs wr;
    load_weights(wr, w_hh, u0, units);
    load_shared_weights(sw, w_hh, u0, units);
#if TENSOR_CORES
    // h's padding (columns past H, rows past B) is never staged: zero it once.
    for (int i = tid; i < BATCH_PAD * LD; i += THREADS) ((T*)sh)[i] = from_float<T>(0.f);
#endif
    for (int i = tid; i < BATCH * UNITS; i += THREADS) {
        int b = i / UNITS, u = i - b * UNITS;
        sc[i] = (CELL == CELL_LSTM && c0 && u < units) ? to_float(c0[b * HIDDEN + u0 + u]) : 0.f;
    }
    __syncthreads();

#if PREFETCH
    Prefetch pf;
    load_input_biases(pf, b_ih, b_hh, u0, units);
    fetch_input(pf, xw, 0, lengths, u0, units, st, sb, reverse);
#endif
    for (int s = 0; s < seq_len; ++s) {
        const float* prev = hbuf + (long)((s + 1) & 1) * BATCH * HIDDEN;
        // 1. The input side, x·W_ih + b_ih (+ b_hh but for the GRU's n gate), and the units'
        //    own h_{t-1}, fetched first so that their latency hides behind 2 and 3.
#if PREFETCH
        store_input(sx, pf);
#else
        for (int i = tid; i < BATCH * ROWS; i += THREADS) {
            const long at = input_at(i, s, lengths, u0, units, st, sb, reverse);
            if (at >= 0) sx[i] = with_biases(xw[at], i, b_ih, b_hh, u0);
        }
#endif
        for (int i = tid; i < BATCH * UNITS; i += THREADS) {
            int b = i / UNITS, u = i - b * UNITS;
            if (u < units) sp[i] = h_prev_at(prev, h0, s, b * HIDDEN + u0 + u);
        }
        // 2.
#if VEC_STAGE
        if (s > 0)
            stage_h_x4(sh, prev);
        else
#endif
            stage_h(sh, prev, h0, s);
        __syncthreads();
        // 3.
#if TENSOR_CORES
        rows_times_h(wr, sw, (const T*)sh, part, sg);
#else
        rows_times_h(wr, sw, (const float*)sh, part, sg);
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
                const float pre[4] = {GATE(0), GATE(1), GATE(2), GATE(3)};
                float a[4], c;
                h = lstm_cell(pre, sc[i], a, c);
                sc[i] = c;
#else
                float a[3];
                h = gru_cell(GATE(0), GATE(1), sx[b * ROWS + 2 * UNITS + u],
                             sg[b * ROWS + 2 * UNITS + u] + bias_at(b_hh, 2 * HIDDEN + j), h_prev,
                             a);
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
#if PREFETCH
        if (s + 1 < seq_len) fetch_input(pf, xw, s + 1, lengths, u0, units, st, sb, reverse);
#endif
        if (s + 1 < seq_len && !grid_barrier(counter, (unsigned)s, failed, &gave_up)) return;
    }
}
