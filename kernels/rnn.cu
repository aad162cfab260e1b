// rnn.cu — the elementwise part of one Elman RNN step:
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh | relu.
//
// The GEMMs run in cuBLAS and arrive here in f32:
//   xw [rows, H]  W_ih x for every (t, b) of the layer-direction; row = t * st + b * sb, where
//                 (st, sb) = (B, 1) for sequence-first and (1, T) for batch-first layouts
//   hh [B, H]     W_hh h_{t-1} for this step
// State h_prev/h_next [B, H] and output rows (stride out_ld, this direction's columns) are in the
// storage dtype T. Lengths follow pack_padded_sequence (step_time, store_step in common.cuh).
//
// Variants:
//   rnn_step_fused_T   one launch per step: both biases, activation, mask, output, next state.
//   naive              the same math as six launches of elementwise.cu's kernels (gather, add,
//                      bias, bias, activation, masked store): the baseline.
#include "common.cuh"

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
    float v = 0.f;
    if (t >= 0) {
        long row = (long)t * st + (long)b * sb;
        v = activate(xw[row * hidden + j] + hh[idx] + bias_at(b_ih, j) + bias_at(b_hh, j), act);
    }
    store_step(v, h_prev, h_next, out, idx, b, j, t, step, st, sb, out_ld);
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
