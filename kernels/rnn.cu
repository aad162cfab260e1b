// rnn.cu — the elementwise part of one Elman RNN step:
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh | relu.
//
// The GEMMs run in cuBLAS and arrive here in f32:
//   xw [rows, H]  W_ih x for every (t, b) of the layer-direction; row = t * st + b * sb, where
//                 (st, sb) = (B, 1) for sequence-first and (1, T) for batch-first layouts
//   hh [B, H]     W_hh h_{t-1} for this step
// State h_prev/h_next [B, H] and output rows (stride out_ld, this direction's columns) are in the
// storage dtype T. Lengths follow pack_padded_sequence: a row's state carries over once it has
// ended and its padded outputs are 0 (see step_time in common.cuh).
//
// Variants:
//   rnn_step_fused_T      one launch per step: both biases, activation, mask, output, next state.
//   rnn_naive_*           the same math as six launches (gather, add, bias, bias, activation,
//                         store) over an f32 scratch [B, H]: the baseline the benchmarks compare to.
#include "common.cuh"

// --- fused

template <typename T>
__device__ void rnn_step_fused(const float* __restrict__ xw, const float* __restrict__ hh,
                               const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                               const T* __restrict__ h_prev, T* __restrict__ h_next,
                               T* __restrict__ out, const int* __restrict__ lengths, int batch,
                               int hidden, int st, int sb, int out_ld, int step, int reverse,
                               int act) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    if (t >= 0) {
        long row = (long)t * st + (long)b * sb;
        float v = xw[row * hidden + j] + hh[idx];
        if (b_ih) v += to_float(b_ih[j]);
        if (b_hh) v += to_float(b_hh[j]);
        T h = from_float<T>(activate(v, act));
        h_next[idx] = h;
        out[row * out_ld + j] = h;
    } else {
        h_next[idx] = h_prev[idx];
        out[((long)step * st + (long)b * sb) * out_ld + j] = from_float<T>(0.f);
    }
}

#define RNN_STEP_FUSED(S, T)                                                                     \
    extern "C" __global__ void rnn_step_fused_##S(                                               \
        const float* xw, const float* hh, const T* b_ih, const T* b_hh, const T* h_prev,         \
        T* h_next, T* out, const int* lengths, int batch, int hidden, int st, int sb,            \
        int out_ld, int step, int reverse, int act) {                                            \
        rnn_step_fused<T>(xw, hh, b_ih, b_hh, h_prev, h_next, out, lengths, batch, hidden, st,   \
                          sb, out_ld, step, reverse, act);                                       \
    }
FOR_EACH_DTYPE(RNN_STEP_FUSED)

// --- naive: one kernel per elementwise op

// tmp = this step's row of xw (0 for rows that have ended).
extern "C" __global__ void rnn_naive_gather_f32(const float* xw, float* tmp, const int* lengths,
                                                int batch, int hidden, int st, int sb, int step,
                                                int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    tmp[idx] = t >= 0 ? xw[((long)t * st + (long)b * sb) * hidden + j] : 0.f;
}

// tmp += hh
extern "C" __global__ void rnn_naive_add_f32(float* tmp, const float* hh, int n) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) tmp[idx] += hh[idx];
}

// tmp = act(tmp)
extern "C" __global__ void rnn_naive_activation_f32(float* tmp, int n, int act) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) tmp[idx] = activate(tmp[idx], act);
}

// tmp[b, j] += bias[j]
#define RNN_NAIVE_ADD_BIAS(S, T)                                                                 \
    extern "C" __global__ void rnn_naive_add_bias_##S(float* tmp, const T* bias, int batch,      \
                                                      int hidden) {                              \
        int idx = blockIdx.x * blockDim.x + threadIdx.x;                                         \
        if (idx < batch * hidden) tmp[idx] += to_float(bias[idx % hidden]);                      \
    }
FOR_EACH_DTYPE(RNN_NAIVE_ADD_BIAS)

// Masked store of tmp into the next state and the output row; ended rows carry h and write 0.
template <typename T>
__device__ void rnn_naive_store(const float* tmp, const T* h_prev, T* h_next, T* out,
                                const int* lengths, int batch, int hidden, int st, int sb,
                                int out_ld, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    if (t >= 0) {
        T h = from_float<T>(tmp[idx]);
        h_next[idx] = h;
        out[((long)t * st + (long)b * sb) * out_ld + j] = h;
    } else {
        h_next[idx] = h_prev[idx];
        out[((long)step * st + (long)b * sb) * out_ld + j] = from_float<T>(0.f);
    }
}

#define RNN_NAIVE_STORE(S, T)                                                                    \
    extern "C" __global__ void rnn_naive_store_##S(const float* tmp, const T* h_prev, T* h_next, \
                                                   T* out, const int* lengths, int batch,        \
                                                   int hidden, int st, int sb, int out_ld,       \
                                                   int step, int reverse) {                      \
        rnn_naive_store<T>(tmp, h_prev, h_next, out, lengths, batch, hidden, st, sb, out_ld,     \
                           step, reverse);                                                       \
    }
FOR_EACH_DTYPE(RNN_NAIVE_STORE)
