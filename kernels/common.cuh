// common.cuh — device helpers shared by every kernel file.
//
// No CUDA headers: f16/bf16 are plain 16-bit storage types converted through inline PTX, so
// runtime NVRTC needs nothing but libnvrtc. Arithmetic is always f32.
#ifndef FUSED_RNN_COMMON_CUH
#define FUSED_RNN_COMMON_CUH

struct __align__(2) f16 { unsigned short bits; };
struct __align__(2) bf16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
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

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
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

// ---
// Activations. Codes match `Nonlinearity` on the Rust side.
#define ACT_TANH 0
#define ACT_RELU 1

__device__ __forceinline__ float activate(float x, int act) {
    // `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
    return act == ACT_RELU ? (x < 0.f ? 0.f : x) : tanhf(x);
}

// ---
// Variable lengths (pack_padded_sequence semantics): step `s` of a row of length `len` is
// time `s` (forward) or `len - 1 - s` (reverse); -1 once the row has ended.
__device__ __forceinline__ int step_time(int s, int len, int reverse) {
    return s < len ? (reverse ? len - 1 - s : s) : -1;
}

// Stamps `MACRO(suffix, type)` once per storage dtype; entry points are `{op}_{variant}_{suffix}`.
#define FOR_EACH_DTYPE(MACRO) MACRO(f32, float) MACRO(f16, f16) MACRO(bf16, bf16)

#endif
