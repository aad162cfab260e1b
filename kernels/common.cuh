// common.cuh — device helpers shared by every kernel file.
//
// No CUDA headers: f16/bf16 are plain 16-bit storage types converted through inline PTX, so
// runtime NVRTC needs nothing but libnvrtc. Arithmetic is always f32. Outside NVRTC
// (__CUDA_ARCH__ undefined) the PTX helpers have host equivalents, for the emulation tests.
#ifndef FUSED_RNN_COMMON_CUH
#define FUSED_RNN_COMMON_CUH

#include "codes.cuh"

struct __align__(2) f16 { unsigned short bits; };
struct __align__(2) bf16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float to_float(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_float(bf16 x) {
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(((unsigned)x.bits) << 16));
    return f;
}
#else
// A host build (tests/emulation/cuda_host.h) converts in software.
inline float to_float(f16 x) { return emu::half_to_float(x.bits); }
inline float to_float(bf16 x) { return emu::bf16_to_float(x.bits); }
#endif

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
#ifdef __CUDA_ARCH__
template <> __device__ __forceinline__ f16 from_float<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}
#else
template <> inline f16 from_float<f16>(float x) { return {emu::float_to_half(x)}; }
template <> inline bf16 from_float<bf16>(float x) { return {emu::float_to_bf16(x)}; }
#endif

// ---
// Activations (codes in codes.cuh).

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ float activate(float x, int act) {
    // `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
    if (act == ACT_RELU) return x < 0.f ? 0.f : x;
    if (act == ACT_SIGMOID) return sigmoid(x);
    return tanhf(x);
}

// ---
// Cell updates, the same in the stepwise, training and persistent kernels.

// LSTM (PyTorch gate order i, f, g, o) from the gates' pre-activations and c_{t-1}: the
// activated gates into a, c_t into c; returns h_t = o ⊙ tanh(c_t).
__device__ __forceinline__ float lstm_cell(const float (&pre)[4], float c_prev, float (&a)[4],
                                           float& c) {
    a[0] = sigmoid(pre[0]);
    a[1] = sigmoid(pre[1]);
    a[2] = tanhf(pre[2]);
    a[3] = sigmoid(pre[3]);
    c = a[1] * c_prev + a[0] * a[2];
    return a[3] * tanhf(c);
}

// GRU (PyTorch gate order r, z, n) from the pre-activations of r and z, n's input side
// W_in x + b_in, its hidden side W_hn h + b_hn (which r multiplies) and h_{t-1}: r, z, n into
// a; returns h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}.
__device__ __forceinline__ float gru_cell(float r_pre, float z_pre, float n_input,
                                          float n_hidden, float h_prev, float (&a)[3]) {
    a[0] = sigmoid(r_pre);
    a[1] = sigmoid(z_pre);
    a[2] = tanhf(n_input + a[0] * n_hidden);
    return a[2] + a[1] * (h_prev - a[2]);
}

// A bias element, or 0 when the layer has no bias (null pointer).
template <typename T> __device__ __forceinline__ float bias_at(const T* bias, int k) {
    return bias ? to_float(bias[k]) : 0.f;
}

// ---
// Variable lengths (pack_padded_sequence semantics): step `s` of a row of length `len` is
// time `s` (forward) or `len - 1 - s` (reverse); -1 once the row has ended.
__device__ __forceinline__ int step_time(int s, int len, int reverse) {
    return s < len ? (reverse ? len - 1 - s : s) : -1;
}

// One step's masked state update for element (b, j) of a [B, cols] state: a row still running
// (t >= 0) takes `value` into the next state and into its output row at time t; an ended row
// carries its state and gets a 0 output at padded time `step`. `out` may be null (no output,
// e.g. the LSTM cell state).
template <typename T>
__device__ __forceinline__ void store_step(float value, const T* h_prev, T* h_next, T* out,
                                           int idx, int b, int j, int t, int step, int st,
                                           int sb, int out_ld) {
    if (t >= 0) {
        T h = from_float<T>(value);
        h_next[idx] = h;
        if (out) out[((long)t * st + (long)b * sb) * out_ld + j] = h;
    } else {
        h_next[idx] = h_prev[idx];
        if (out) out[((long)step * st + (long)b * sb) * out_ld + j] = from_float<T>(0.f);
    }
}

// The block's dynamic shared memory as `T* name` (host builds: the emulation's buffer).
#ifdef __CUDA_ARCH__
#define DYNAMIC_SHARED(T, name)                                                                  \
    extern __shared__ __align__(16) unsigned char name##_bytes[];                                \
    T* name = (T*)name##_bytes
#else
#define DYNAMIC_SHARED(T, name) T* name = (T*)emu::dynamic_shared()
#endif

// A grid-stride loop over 64-bit indices 0..n: any grid covers any n.
#define GRID_STRIDE_LOOP(i, n)                                                                   \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;       \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)

// ---
// The device's error record (CudaDevice::check_errors, src/device/errors.rs): ERROR_RECORD_WORDS
// ints {code, position, index, limit}. A kernel that meets an index outside 0..limit in device
// memory (ids the host never saw) does not follow it; it reports it here, and the first report
// since the last check wins. `code` says which kernel and tensor (ERROR_* of codes.cuh, passed
// in by the launcher), `position` is the id's position in its tensor.
__device__ __forceinline__ void report_bad_index(int* record, int code, int position, int index,
                                                 int limit) {
    if (atomicCAS(record, 0, code) == 0) {
        record[1] = position;
        record[2] = index;
        record[3] = limit;
    }
}

// Stamps `MACRO(suffix, type)` once per storage dtype; entry points are `{op}_{variant}_{suffix}`.
#define FOR_EACH_DTYPE(MACRO) MACRO(f32, float) MACRO(f16, f16) MACRO(bf16, bf16)

#endif
