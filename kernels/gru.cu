// gru.cu — the elementwise part of one GRU step (PyTorch gate order r, z, n):
//   r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 − z) ⊙ n + z ⊙ h
//
// Inputs as in rnn.cu, with xw [rows, 3H] and hh [B, 3H] in f32; the reset gate multiplies the
// recurrent part of n after its bias, so the two halves stay separate up to here.
//
// Variants:
//   gru_step_fused_T   one launch per step: biases, gates, update, mask, output, next state.
//   naive              the same math as 13 launches of elementwise.cu's kernels: the baseline.
#include "common.cuh"

template <typename T>
__device__ void gru_step_fused(const float* __restrict__ xw, const float* __restrict__ hh,
                               const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                               const T* __restrict__ h_prev, T* __restrict__ h_next,
                               T* __restrict__ out, const int* __restrict__ lengths, int batch,
                               int hidden, int st, int sb, int out_ld, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    float h = 0.f;
    if (t >= 0) {
        long row = (long)t * st + (long)b * sb;
        const float* x = xw + row * 3 * hidden;
        const float* r = hh + (long)b * 3 * hidden;
        int jz = hidden + j, jn = 2 * hidden + j;
        float a[3];
        h = gru_cell(x[j] + bias_at(b_ih, j) + r[j] + bias_at(b_hh, j),
                     x[jz] + bias_at(b_ih, jz) + r[jz] + bias_at(b_hh, jz),
                     x[jn] + bias_at(b_ih, jn), r[jn] + bias_at(b_hh, jn),
                     to_float(h_prev[idx]), a);
    }
    store_step(h, h_prev, h_next, out, idx, b, j, t, step, st, sb, out_ld);
}

#define GRU_STEP_FUSED(S, T)                                                                     \
    extern "C" __global__ void gru_step_fused_##S(                                               \
        const float* xw, const float* hh, const T* b_ih, const T* b_hh, const T* h_prev,         \
        T* h_next, T* out, const int* lengths, int batch, int hidden, int st, int sb,            \
        int out_ld, int step, int reverse) {                                                     \
        gru_step_fused<T>(xw, hh, b_ih, b_hh, h_prev, h_next, out, lengths, batch, hidden, st,   \
                          sb, out_ld, step, reverse);                                            \
    }
FOR_EACH_DTYPE(GRU_STEP_FUSED)
