// top_k.cu — argmax and the k largest values over the last dimension, one block per row.
//
// Shapes: x [rows, cols] in the storage dtype (leading dimensions folded into rows); argmax
// writes indices [rows] (i32), top_k values [rows, k] (the dtype, exactly the stored inputs)
// and indices [rows, k], each row in descending order. No backward: the outputs are positions.
//
// Order: a value comes before another when it is larger, NaN counting as larger than every
// number (as torch.argmax and torch.topk do), and among equal values (NaNs all equal, −0 = +0)
// the lower index comes first. argmax is the first element of that order: the first index of
// the maximum, as torch.argmax on the CPU; top_k's ties are deterministic in the same way
// (torch.topk leaves their order unspecified).
//
// Method (FasterTransformer's beam-search top-k): each thread keeps the first KT elements of
// its strided slice of the row in that order, in registers (sorted, by insertion), then k
// rounds of a block argmax over the threads' list heads each take the next element of the row;
// the thread that owned it drops its head. A round is a warp shuffle reduction and one
// __syncthreads (the warps' slots are double-buffered). For k > KT the row is scanned again,
// keeping only the elements after the last one taken, KT at a time. Cost per row: ⌈k/KT⌉ reads
// of the row with about KT compares per inserted element, and k rounds. This beats k plain
// argmax passes (k reads of the row) for the k ≤ 16 of beam search, and needs no shared memory
// beyond the slots.
//
// Variants (entry points):
//   argmax_fused_T       KT = 1, one round; indices only
//   top_k_list4_T        KT = 4, for k ≤ 4
//   top_k_list16_T       KT = 16, for k ≤ 64 (one scan per 16)
#include "common.cuh"

#define SEL_THREADS BLOCK_THREADS
#define SEL_WARPS (SEL_THREADS / 32)
#define SEL_NEG_INF __int_as_float(0xff800000)
// The index of an empty list slot: after every real element (indices are below INT_MAX).
#define SEL_NONE 0x7fffffff

// ---
// Whether (av, ai) comes before (bv, bi) in the order above.
__device__ __forceinline__ bool sel_before(float av, int ai, float bv, int bi) {
    bool a_nan = av != av, b_nan = bv != bv;
    if (a_nan || b_nan) return a_nan && (!b_nan || ai < bi);
    return av > bv || (av == bv && ai < bi);
}

// The first min(k, KT) elements (after `last`, when last_i >= 0) of the row are found.
template <typename T, int KT>
__device__ __forceinline__ void sel_row(const T* x, int cols, int k, T* values, int* indices) {
    DYNAMIC_SHARED(float, slot_v);  // [2][SEL_WARPS] values, then [2][SEL_WARPS] indices
    int* slot_i = (int*)(slot_v + 2 * SEL_WARPS);
    long row = blockIdx.x;
    const T* xr = x + row * cols;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float last_v = 0.f;
    int last_i = -1;  // the last element taken; -1: none yet
    int round = 0;
    for (int done = 0; done < k;) {
        // This thread's first KT elements after `last`, in order.
        float lv[KT];
        int li[KT];
#pragma unroll
        for (int q = 0; q < KT; ++q) {
            lv[q] = SEL_NEG_INF;
            li[q] = SEL_NONE;
        }
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = to_float(xr[j]);
            if (!sel_before(v, j, lv[KT - 1], li[KT - 1])) continue;
            if (last_i >= 0 && !sel_before(last_v, last_i, v, j)) continue;
            // Insertion: j is above every index held, so v goes after its equals.
            bool moving = true;
#pragma unroll
            for (int q = KT - 1; q > 0; --q) {
                if (moving && sel_before(v, j, lv[q - 1], li[q - 1])) {
                    lv[q] = lv[q - 1];
                    li[q] = li[q - 1];
                } else if (moving) {
                    lv[q] = v;
                    li[q] = j;
                    moving = false;
                }
            }
            if (moving) {
                lv[0] = v;
                li[0] = j;
            }
        }
        int take = min(KT, k - done);
        for (int r = 0; r < take; ++r, ++round) {
            float bv = lv[0];
            int bi = li[0];
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                int oi = __float_as_int(__shfl_xor_sync(0xffffffffu, __int_as_float(bi), o));
                if (sel_before(ov, oi, bv, bi)) {
                    bv = ov;
                    bi = oi;
                }
            }
            // Double buffering: a warp writing round r + 1's slots cannot overwrite round r's
            // before every thread has passed round r + 1's barrier, after its reads of round r.
            int buf = (round & 1) * SEL_WARPS;
            if (lane == 0) {
                slot_v[buf + warp] = bv;
                slot_i[buf + warp] = bi;
            }
            __syncthreads();
            bv = slot_v[buf];
            bi = slot_i[buf];
            for (int w = 1; w < SEL_WARPS; ++w) {
                if (sel_before(slot_v[buf + w], slot_i[buf + w], bv, bi)) {
                    bv = slot_v[buf + w];
                    bi = slot_i[buf + w];
                }
            }
            if (threadIdx.x == 0) {
                long at = row * k + done + r;
                indices[at] = bi;
                if (values) values[at] = xr[bi];
            }
            // The owner of the element taken (a real index: k ≤ cols) drops its head.
            if ((unsigned)bi % blockDim.x == threadIdx.x) {
#pragma unroll
                for (int q = 0; q + 1 < KT; ++q) {
                    lv[q] = lv[q + 1];
                    li[q] = li[q + 1];
                }
                lv[KT - 1] = SEL_NEG_INF;
                li[KT - 1] = SEL_NONE;
            }
            last_v = bv;
            last_i = bi;
        }
        done += take;
    }
}

// ---
// Entry points. Shared memory: 2·SEL_WARPS floats and 2·SEL_WARPS ints.
#define TOP_K(S, T)                                                                              \
    extern "C" __global__ void argmax_fused_##S(const T* x, int cols, int* indices) {            \
        sel_row<T, 1>(x, cols, 1, (T*)0, indices);                                               \
    }                                                                                            \
    extern "C" __global__ void top_k_list4_##S(const T* x, int cols, int k, T* values,           \
                                               int* indices) {                                   \
        sel_row<T, 4>(x, cols, k, values, indices);                                              \
    }                                                                                            \
    extern "C" __global__ void top_k_list16_##S(const T* x, int cols, int k, T* values,          \
                                                int* indices) {                                  \
        sel_row<T, 16>(x, cols, k, values, indices);                                             \
    }
FOR_EACH_DTYPE(TOP_K)
