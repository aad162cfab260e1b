// elementwise.cu — one-op kernels over [rows, cols] f32 views with leading dimensions: the
// building blocks of the naive (unfused) recurrent steps, one launch per elementwise op, as a
// framework without fusion would run them. `store_masked` is also the last step of an LSTM
// with projection.
//
// Variants (entry points):
//   gather_naive_f32      tmp = this step's rows of xw (0 for rows that have ended)
//   unary_naive_f32       y = act(x)               (tanh | relu | sigmoid)
//   binary_naive_f32      y = a op b               (add | mul | sub, and the activations'
//                                                   derivatives for the naive backward:
//                                                   a·(1 − b²), a·b·(1 − b), b > 0 ? a : 0)
//   add_bias_naive_T      y[r, c] += bias[c]
//   load_naive_T          y = float(x)             (a state into f32 scratch)
//   convert_naive_T       y = T(x)                 (f32 scratch into a GEMM operand)
//   store_masked_T        masked state update and output row (store_step in common.cuh)
#include "common.cuh"

extern "C" __global__ void gather_naive_f32(const float* xw, int ld_xw, float* tmp, int ld_tmp,
                                            const int* lengths, int batch, int cols, int st,
                                            int sb, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * cols) return;
    int b = idx / cols, c = idx - b * cols;
    int t = step_time(step, lengths[b], reverse);
    tmp[(long)b * ld_tmp + c] = t >= 0 ? xw[((long)t * st + (long)b * sb) * ld_xw + c] : 0.f;
}

extern "C" __global__ void unary_naive_f32(const float* x, int ldx, float* y, int ldy, int rows,
                                           int cols, int act) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * cols) return;
    int r = idx / cols, c = idx - r * cols;
    y[(long)r * ldy + c] = activate(x[(long)r * ldx + c], act);
}

extern "C" __global__ void binary_naive_f32(const float* a, int lda, const float* b, int ldb,
                                            float* y, int ldy, int rows, int cols, int op) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * cols) return;
    int r = idx / cols, c = idx - r * cols;
    float u = a[(long)r * lda + c], v = b[(long)r * ldb + c];
    float w;
    switch (op) {
        case OP_ADD: w = u + v; break;
        case OP_MUL: w = u * v; break;
        case OP_SUB: w = u - v; break;
        case OP_DTANH: w = u * (1.f - v * v); break;
        case OP_DSIGMOID: w = u * v * (1.f - v); break;
        default: w = v > 0.f ? u : 0.f; break;
    }
    y[(long)r * ldy + c] = w;
}

#define ADD_BIAS_NAIVE(S, T)                                                                     \
    extern "C" __global__ void add_bias_naive_##S(float* y, int ldy, const T* bias, int rows,    \
                                                  int cols) {                                    \
        int idx = blockIdx.x * blockDim.x + threadIdx.x;                                         \
        if (idx >= rows * cols) return;                                                          \
        int r = idx / cols, c = idx - r * cols;                                                  \
        y[(long)r * ldy + c] += to_float(bias[c]);                                               \
    }
FOR_EACH_DTYPE(ADD_BIAS_NAIVE)

#define LOAD_NAIVE(S, T)                                                                         \
    extern "C" __global__ void load_naive_##S(const T* x, float* y, int n) {                     \
        int idx = blockIdx.x * blockDim.x + threadIdx.x;                                         \
        if (idx < n) y[idx] = to_float(x[idx]);                                                  \
    }
FOR_EACH_DTYPE(LOAD_NAIVE)

#define CONVERT_NAIVE(S, T)                                                                      \
    extern "C" __global__ void convert_naive_##S(const float* x, T* y, int n) {                  \
        int idx = blockIdx.x * blockDim.x + threadIdx.x;                                         \
        if (idx < n) y[idx] = from_float<T>(x[idx]);                                             \
    }
FOR_EACH_DTYPE(CONVERT_NAIVE)

#define STORE_MASKED(S, T)                                                                       \
    extern "C" __global__ void store_masked_##S(const float* value, int ld_value,               \
                                                const T* h_prev, T* h_next, T* out,              \
                                                const int* lengths, int batch, int cols, int st, \
                                                int sb, int out_ld, int step, int reverse) {     \
        int idx = blockIdx.x * blockDim.x + threadIdx.x;                                         \
        if (idx >= batch * cols) return;                                                         \
        int b = idx / cols, j = idx - b * cols;                                                  \
        int t = step_time(step, lengths[b], reverse);                                            \
        store_step(value[(long)b * ld_value + j], h_prev, h_next, out, idx, b, j, t, step, st,   \
                   sb, out_ld);                                                                  \
    }
FOR_EACH_DTYPE(STORE_MASKED)
