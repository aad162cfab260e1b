// pointwise.cu — elementwise building blocks over flat tensors of n elements in the storage
// dtype, forward and backward: the activations (tanh, relu, sigmoid: the ACT_* codes and
// `activate` of common.cuh) and the binary ops of equal shapes (add, mul). Arithmetic is f32.
//
// Every kernel is grid-stride over 64-bit element indices (GRID_STRIDE_LOOP), so any grid
// covers any n; the launchers use `grid_stride` of src/device/launch.rs.
//
// Variants (entry points, T = f32 | f16 | bf16):
//   activation_forward_T    y = act(x)
//   activation_backward_T   dx from the output y and dy, as PyTorch's backward formulas:
//                           tanh dy·(1 − y²), sigmoid dy·(1 − y)·y, relu (threshold_backward)
//                           y <= 0 ? 0 : dy, so a NaN output passes the gradient on
//   binary_forward_T        y = a op b            (op: POINTWISE_ADD | POINTWISE_MUL of codes.cuh)
//   mul_backward_T          da = dy·b, db = dy·a  (one pass for both)
#include "common.cuh"

// ---
// Activations.

template <typename T>
__device__ void activation_forward(const T* x, T* y, unsigned long long n, int act) {
    GRID_STRIDE_LOOP(i, n) y[i] = from_float<T>(activate(to_float(x[i]), act));
}

__device__ __forceinline__ float activation_derivative(float y, float dy, int act) {
    if (act == ACT_RELU) return y <= 0.f ? 0.f : dy;
    if (act == ACT_SIGMOID) return dy * (1.f - y) * y;
    return dy * (1.f - y * y);
}

template <typename T>
__device__ void activation_backward(const T* y, const T* dy, T* dx, unsigned long long n,
                                    int act) {
    GRID_STRIDE_LOOP(i, n) {
        dx[i] = from_float<T>(activation_derivative(to_float(y[i]), to_float(dy[i]), act));
    }
}

// ---
// Binary ops of equal shapes.

template <typename T>
__device__ void binary_forward(const T* a, const T* b, T* y, unsigned long long n, int op) {
    GRID_STRIDE_LOOP(i, n) {
        float u = to_float(a[i]), v = to_float(b[i]);
        y[i] = from_float<T>(op == POINTWISE_MUL ? u * v : u + v);
    }
}

template <typename T>
__device__ void mul_backward(const T* a, const T* b, const T* dy, T* da, T* db,
                             unsigned long long n) {
    GRID_STRIDE_LOOP(i, n) {
        float g = to_float(dy[i]);
        da[i] = from_float<T>(g * to_float(b[i]));
        db[i] = from_float<T>(g * to_float(a[i]));
    }
}

// ---
// Entry points.
#define POINTWISE_ENTRIES(S, T)                                                                  \
    extern "C" __global__ void activation_forward_##S(const T* x, T* y, unsigned long long n,    \
                                                      int act) {                                 \
        activation_forward(x, y, n, act);                                                        \
    }                                                                                            \
    extern "C" __global__ void activation_backward_##S(const T* y, const T* dy, T* dx,           \
                                                       unsigned long long n, int act) {          \
        activation_backward(y, dy, dx, n, act);                                                  \
    }                                                                                            \
    extern "C" __global__ void binary_forward_##S(const T* a, const T* b, T* y,                  \
                                                  unsigned long long n, int op) {                \
        binary_forward(a, b, y, n, op);                                                          \
    }                                                                                            \
    extern "C" __global__ void mul_backward_##S(const T* a, const T* b, const T* dy, T* da,      \
                                                T* db, unsigned long long n) {                   \
        mul_backward(a, b, dy, da, db, n);                                                       \
    }
FOR_EACH_DTYPE(POINTWISE_ENTRIES)
