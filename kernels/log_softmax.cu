// log_softmax.cu — log-softmax over the last dimension and its backward, one block per row.
//
// Shapes: x, y, grad_y, grad_x are [rows, cols] in the storage dtype (the caller's tensor viewed
// with every leading dimension folded into rows); arithmetic in f32.
//
//   y[r, j]      = x[r, j] − log Σ_i e^(x[r, i])
//   grad_x[r, j] = grad_y[r, j] − e^(y[r, j]) · Σ_i grad_y[r, i]        (PyTorch's formula)
//
// Non-finite inputs follow PyTorch's two-pass formula (max m, then Σ e^(x − m)): a row holding
// a NaN or a +inf, or made only of −inf, is NaN throughout; a −inf among finite values gives
// −inf.
//
// Variants (entry points):
//   log_softmax_fused_T            one pass keeps a running maximum and rescaled sum per
//                                  thread (combined across the block), a second writes y
//   log_softmax_backward_fused_T   one pass sums grad_y, a second writes grad_x
#include "common.cuh"

#define LSM_THREADS BLOCK_THREADS
#define LSM_WARPS (LSM_THREADS / 32)
#define LSM_NEG_INF __int_as_float(0xff800000)
#define LSM_POS_INF __int_as_float(0x7f800000)
#define LSM_NAN __int_as_float(0x7fffffff)

// ---
// Running log-sum-exp: s is Σ e^(x − m) over the values seen, m their maximum (−inf: none
// counted yet). A NaN value makes s NaN, which every later step keeps.

// Adds one value: one exponential per value.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.f;
        m = x;
    } else if (x != LSM_NEG_INF) {
        s += expf(x - m);
    }
}

// Folds (m2, s2) into (m, s). Two empty sums (m = m2 = −inf) add their s, so that a NaN
// marker survives.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float top = fmaxf(m, m2);
    if (top == LSM_NEG_INF) {
        s += s2;
        return;
    }
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// The block's (m, s) in every thread, combined in a fixed order; `slots` holds 2·LSM_WARPS
// floats.
__device__ __forceinline__ void lse_block(float& m, float& s, float* slots) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        slots[warp] = m;
        slots[LSM_WARPS + warp] = s;
    }
    __syncthreads();
    m = slots[0];
    s = slots[LSM_WARPS];
    for (int w = 1; w < LSM_WARPS; ++w) lse_merge(m, s, slots[w], slots[LSM_WARPS + w]);
}

// ---
// Forward. log Z = m + log s; a +inf maximum makes log Z NaN (x − m is NaN there in the
// two-pass formula), and an all −inf row gives log Z = −inf, so y = −inf − (−inf) = NaN.
#define LOG_SOFTMAX(S, T)                                                                        \
    extern "C" __global__ void log_softmax_fused_##S(const T* x, T* y, int cols) {               \
        DYNAMIC_SHARED(float, slots);                                                            \
        long row = blockIdx.x;                                                                   \
        const T* xr = x + row * cols;                                                            \
        T* yr = y + row * cols;                                                                  \
        float m = LSM_NEG_INF, s = 0.f;                                                          \
        for (int j = threadIdx.x; j < cols; j += blockDim.x) lse_add(m, s, to_float(xr[j]));     \
        lse_block(m, s, slots);                                                                  \
        float log_s = m == LSM_POS_INF ? LSM_NAN : logf(s);                                      \
        for (int j = threadIdx.x; j < cols; j += blockDim.x)                                     \
            yr[j] = from_float<T>((to_float(xr[j]) - m) - log_s);                                \
    }
FOR_EACH_DTYPE(LOG_SOFTMAX)

// ---
// Backward: Σ grad_y per row (f32, per thread then warps, the warps in a fixed order), then
// grad_x = grad_y − e^y · Σ.
#define LOG_SOFTMAX_BACKWARD(S, T)                                                               \
    extern "C" __global__ void log_softmax_backward_fused_##S(const T* y, const T* dy, T* dx,    \
                                                              int cols) {                        \
        DYNAMIC_SHARED(float, slots);                                                            \
        long row = blockIdx.x;                                                                   \
        const T* yr = y + row * cols;                                                            \
        const T* dyr = dy + row * cols;                                                          \
        T* dxr = dx + row * cols;                                                                \
        float sum = 0.f;                                                                         \
        for (int j = threadIdx.x; j < cols; j += blockDim.x) sum += to_float(dyr[j]);            \
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);           \
        if ((threadIdx.x & 31) == 0) slots[threadIdx.x >> 5] = sum;                              \
        __syncthreads();                                                                         \
        sum = slots[0];                                                                          \
        for (int w = 1; w < LSM_WARPS; ++w) sum += slots[w];                                     \
        for (int j = threadIdx.x; j < cols; j += blockDim.x)                                     \
            dxr[j] = from_float<T>(to_float(dyr[j]) - expf(to_float(yr[j])) * sum);             \
    }
FOR_EACH_DTYPE(LOG_SOFTMAX_BACKWARD)
