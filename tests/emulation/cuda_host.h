// cuda_host.h — just enough of CUDA to build a kernel of this crate as C++20 for the host and
// run it, so that its indexing, tiling and per-step logic are tested without a GPU.
//
// A grid runs with one OS thread per block (every block resident, as a cooperative launch
// guarantees) and the block's CUDA threads as fibers on it, switched at __syncthreads and at
// warp collectives (__shfl_xor_sync, mma). A fiber runs until it waits, so the order in which
// threads run between two barriers is fixed, not the GPU's: races are not found here, and
// memory ordering on hardware is not tested. Dynamic shared memory starts as 0xFF bytes (NaN in
// f32, f16 and bf16), so a read of a word nothing wrote shows in the results; static
// `__shared__` variables are thread-locals of the block's OS thread.
//
// Kernels keep their PTX behind `#ifdef __CUDA_ARCH__` and call emu:: in its place.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

using std::min;

namespace emu {

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};

inline thread_local Dim3 thread_idx, block_idx, grid_dim, block_dim;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "emulation: %s (block %u, thread %u)\n", what, block_idx.x, thread_idx.x);
    std::exit(3);
}

// ---
// Fibers of one block.

enum class Wait { Running, Warp, Block, Done };

// Words a lane contributes to one warp collective (an mma's A and B fragments, or a shuffle's
// value).
constexpr int SLOT_WORDS = 6;

struct Block {
    ucontext_t scheduler;
    std::vector<ucontext_t> contexts;
    std::vector<std::vector<char>> stacks;
    std::vector<Wait> waits;
    // Two generations of warp slots [2][threads][SLOT_WORDS]: a lane reads generation g after
    // the collective releases, and no lane can write g again before every lane has arrived at
    // g + 1, so every read of g is done by then.
    std::vector<uint32_t> slots;
    std::vector<unsigned> generation;  // per thread: warp collectives done
    std::vector<unsigned char> shared;
    alignas(16) unsigned char statics[16];
    std::function<void()> body;
};

inline thread_local Block* block;

inline void switch_to_scheduler(Wait why) {
    block->waits[thread_idx.x] = why;
    if (swapcontext(&block->contexts[thread_idx.x], &block->scheduler) != 0) fail("swapcontext");
}

inline void fiber_main() {
    block->body();
    switch_to_scheduler(Wait::Done);
}

// Runs the block's fibers until all are done: each runs until it waits; a warp whose 32 lanes
// all wait at a collective, or a block whose every live thread waits at __syncthreads, goes on.
inline void run_block(unsigned threads) {
    Block& b = *block;
    constexpr size_t STACK = 256 * 1024;
    b.contexts.resize(threads);
    b.stacks.resize(threads);
    b.waits.assign(threads, Wait::Running);
    b.slots.assign(2 * threads * SLOT_WORDS, 0);
    b.generation.assign(threads, 0);
    for (unsigned t = 0; t < threads; ++t) {
        b.stacks[t].resize(STACK);
        getcontext(&b.contexts[t]);
        b.contexts[t].uc_stack.ss_sp = b.stacks[t].data();
        b.contexts[t].uc_stack.ss_size = STACK;
        b.contexts[t].uc_link = nullptr;
        makecontext(&b.contexts[t], fiber_main, 0);
    }
    for (;;) {
        for (unsigned t = 0; t < threads; ++t) {
            if (b.waits[t] != Wait::Running) continue;
            thread_idx = {t, 0, 0};
            if (swapcontext(&b.scheduler, &b.contexts[t]) != 0) fail("swapcontext");
        }
        bool released = false, all_done = true, all_at_block = true;
        for (unsigned w = 0; w < threads / 32; ++w) {
            const auto lane = b.waits.begin() + 32 * w;
            if (std::all_of(lane, lane + 32, [](Wait x) { return x == Wait::Warp; })) {
                std::fill(lane, lane + 32, Wait::Running);
                released = true;
            }
        }
        for (Wait x : b.waits) {
            all_done &= x == Wait::Done;
            all_at_block &= x == Wait::Done || x == Wait::Block;
        }
        if (all_done) return;
        if (released) continue;
        if (!all_at_block) fail("deadlock: a warp collective some lanes never reached");
        for (Wait& x : b.waits)
            if (x == Wait::Block) x = Wait::Running;
    }
}

// Launches `kernel` on a grid of `grid` blocks of `threads` with `shared` bytes of dynamic
// shared memory.
inline void launch(Dim3 grid, unsigned threads, size_t shared, const std::function<void()>& kernel) {
    if (threads % 32 != 0) fail("block size not a multiple of 32");
    std::vector<std::thread> blocks;
    for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
            blocks.emplace_back([=] {
                Block b;
                b.shared.assign(shared, 0xFF);
                std::memset(b.statics, 0xFF, sizeof b.statics);
                b.body = kernel;
                block = &b;
                block_idx = {x, y, 0};
                grid_dim = {grid.x, grid.y, 1};
                block_dim = {threads, 1, 1};
                run_block(threads);
            });
        }
    for (auto& t : blocks) t.join();
}

inline void launch(unsigned grid, unsigned threads, size_t shared,
                   const std::function<void()>& kernel) {
    launch(Dim3{grid, 1, 1}, threads, shared, kernel);
}

inline unsigned char* dynamic_shared() { return block->shared.data(); }

// The block's one static shared variable.
template <typename V> V& block_shared() {
    static_assert(sizeof(V) <= sizeof(Block::statics));
    return *reinterpret_cast<V*>(block->statics);
}

// ---
// Synchronisation.

inline void syncthreads() { switch_to_scheduler(Wait::Block); }

// This lane's slot of the current generation, then (after `collective`) every lane's.
inline uint32_t* my_slot() {
    const unsigned t = thread_idx.x;
    return &block->slots[((block->generation[t] & 1) * block_dim.x + t) * SLOT_WORDS];
}

// Waits until the warp's 32 lanes have written their slots; returns the warp's 32 slots of
// this generation.
inline const uint32_t* collective() {
    const unsigned t = thread_idx.x, warp0 = t & ~31u;
    const unsigned gen = block->generation[t]++;
    switch_to_scheduler(Wait::Warp);
    return &block->slots[((gen & 1) * block_dim.x + warp0) * SLOT_WORDS];
}

inline float shfl_xor(float x, int mask) {
    std::memcpy(my_slot(), &x, 4);
    const uint32_t* lanes = collective();
    float v;
    std::memcpy(&v, lanes + ((thread_idx.x & 31) ^ mask) * SLOT_WORDS, 4);
    return v;
}

inline void add_release(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned>(*p).fetch_add(v, std::memory_order_release);
}

inline unsigned load_acquire(const unsigned* p) {
    return std::atomic_ref<unsigned>(*const_cast<unsigned*>(p)).load(std::memory_order_acquire);
}

inline void back_off() { std::this_thread::yield(); }

// ---
// 16-bit floats (round to nearest even, as cvt.rn).

inline float half_to_float(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return (float)h;
}

inline unsigned short float_to_half(float x) {
    _Float16 h = (_Float16)x;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

inline float bf16_to_float(unsigned short bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline unsigned short float_to_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if (std::isnan(x)) return 0x7FC0;
    u += 0x7FFF + ((u >> 16) & 1);
    return (unsigned short)(u >> 16);
}

// ---
// mma.sync.aligned.m16n8k16.row.col.f32 with 16-bit inputs, from the PTX ISA's fragment
// layout: lane l, group g = l / 4, t = l % 4. A (16 × 16, row-major) a0..a3 hold (g, 2t..2t+1),
// (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..); B (16 × 8) b0, b1 hold (2t..2t+1, g) and
// (2t + 8.., g); C and D hold (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1). In each
// 32-bit register the lower k is in the low half.
template <typename Decode>
inline void mma_m16n8k16(float* d, const unsigned* a, unsigned b0, unsigned b1, Decode decode) {
    uint32_t* mine = my_slot();
    std::memcpy(mine, a, 16);
    mine[4] = b0;
    mine[5] = b1;
    const uint32_t* lanes = collective();
    auto half = [&](unsigned lane, int reg, int k) {
        const uint32_t word = lanes[lane * SLOT_WORDS + reg];
        return decode((unsigned short)(k & 1 ? word >> 16 : word & 0xFFFF));
    };
    // A(row, k): lane 4·(row % 8) + (k % 8) / 2, register (row ≥ 8) + 2·(k ≥ 8).
    auto a_at = [&](int row, int k) {
        return half(4 * (row % 8) + (k % 8) / 2, (row >= 8) + 2 * (k >= 8), k);
    };
    // B(k, col): lane 4·col + (k % 8) / 2, register 4 + (k ≥ 8).
    auto b_at = [&](int k, int col) { return half(4 * col + (k % 8) / 2, 4 + (k >= 8), k); };
    const int lane = thread_idx.x & 31, g = lane / 4, t = lane % 4;
    for (int q = 0; q < 4; ++q) {
        const int row = g + 8 * (q / 2), col = 2 * t + q % 2;
        float sum = 0.f;
        for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
        d[q] += sum;
    }
}

}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define gridDim emu::grid_dim
#define blockDim emu::block_dim

inline void __syncthreads() { emu::syncthreads(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline float __shfl_xor_sync(unsigned mask, float x, int lane_mask) {
    if (mask != 0xFFFFFFFFu) emu::fail("__shfl_xor_sync with a partial mask");
    return emu::shfl_xor(x, lane_mask);
}
inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline int atomicCAS(int* p, int compare, int v) {
    std::atomic_ref<int>(*p).compare_exchange_strong(compare, v);
    return compare;
}

// A block is one OS thread, its CUDA threads fibers on it, and every launch starts new threads:
// a thread-local variable is exactly one block's shared variable.
#define __shared__ static thread_local

// Bit casts between float and 32-bit integers (CUDA intrinsics).
inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, 4);
    return i;
}
