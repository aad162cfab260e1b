// attention.cuh — what the soft-attention kernels (attention.cu, attention_backward.cu) share:
// the score modes, the block size, warp and block reductions, and one key's score.
#ifndef FUSED_RNN_ATTENTION_CUH
#define FUSED_RNN_ATTENTION_CUH
#include "common.cuh"

// Score modes (ATT_ADDITIVE, ATT_PRODUCT) are in codes.cuh.
#define ATT_THREADS BLOCK_THREADS
#define ATT_WARPS (ATT_THREADS / 32)

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

// e_j for one key: lanes across K, four independent sums so that four loads are in flight.
template <typename T>
__device__ __forceinline__ float score(const float* sq, const float* sv, const T* key, int k,
                                       int lane, int mode) {
    float e0 = 0.f, e1 = 0.f, e2 = 0.f, e3 = 0.f;
    int a = lane;
    if (mode == ATT_ADDITIVE) {
        for (; a + 96 < k; a += 128) {
            float k0 = to_float(key[a]), k1 = to_float(key[a + 32]);
            float k2 = to_float(key[a + 64]), k3 = to_float(key[a + 96]);
            e0 += sv[a] * tanhf(sq[a] + k0);
            e1 += sv[a + 32] * tanhf(sq[a + 32] + k1);
            e2 += sv[a + 64] * tanhf(sq[a + 64] + k2);
            e3 += sv[a + 96] * tanhf(sq[a + 96] + k3);
        }
        for (; a < k; a += 32) e0 += sv[a] * tanhf(sq[a] + to_float(key[a]));
    } else {
        for (; a + 96 < k; a += 128) {
            float k0 = to_float(key[a]), k1 = to_float(key[a + 32]);
            float k2 = to_float(key[a + 64]), k3 = to_float(key[a + 96]);
            e0 += sq[a] * k0;
            e1 += sq[a + 32] * k1;
            e2 += sq[a + 64] * k2;
            e3 += sq[a + 96] * k3;
        }
        for (; a < k; a += 32) e0 += sq[a] * to_float(key[a]);
    }
    return warp_sum((e0 + e1) + (e2 + e3));
}

#endif
