// lstm.cu — the elementwise part of one LSTM step (PyTorch gate order i, f, g, o):
//   i, f, o = σ(·), g = tanh(·) of W_ih x + b_ih + W_hh h + b_hh (each H wide)
//   c' = f ⊙ c + i ⊙ g,   h' = o ⊙ tanh(c')   (then h' = W_hr h' with a projection)
//
// Inputs as in rnn.cu, with xw [rows, 4H] and hh [B, 4H] in f32. The cell state c [B, H] and h
// are stored in T; c' is computed in f32 and h' from the f32 c'.
//
// Variants:
//   lstm_step_fused_T   one launch per step: biases, gates, cell update, mask, output, h and c.
//                       With a projection (proj != null) it writes o ⊙ tanh(c') to `proj` [B, H]
//                       instead; the projection GEMM and elementwise.cu's store_masked follow.
//   naive               the same math as ~15 launches of elementwise.cu's kernels: the baseline.
#include "common.cuh"

template <typename T>
__device__ void lstm_step_fused(const float* __restrict__ xw, const float* __restrict__ hh,
                                const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                const T* __restrict__ c_prev, T* __restrict__ c_next,
                                const T* __restrict__ h_prev, T* __restrict__ h_next,
                                T* __restrict__ out, T* __restrict__ proj,
                                const int* __restrict__ lengths, int batch, int hidden, int st,
                                int sb, int out_ld, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    float c = 0.f, h = 0.f;
    if (t >= 0) {
        long row = (long)t * st + (long)b * sb;
        const float* x = xw + row * 4 * hidden;
        const float* r = hh + (long)b * 4 * hidden;
        float pre[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            int g = k * hidden + j;
            pre[k] = x[g] + r[g] + bias_at(b_ih, g) + bias_at(b_hh, g);
        }
        float a[4];
        h = lstm_cell(pre, to_float(c_prev[idx]), a, c);
    }
    store_step(c, c_prev, c_next, (T*)nullptr, idx, b, j, t, step, st, sb, out_ld);
    if (proj) {
        proj[idx] = from_float<T>(h);
    } else {
        store_step(h, h_prev, h_next, out, idx, b, j, t, step, st, sb, out_ld);
    }
}

#define LSTM_STEP_FUSED(S, T)                                                                    \
    extern "C" __global__ void lstm_step_fused_##S(                                              \
        const float* xw, const float* hh, const T* b_ih, const T* b_hh, const T* c_prev,         \
        T* c_next, const T* h_prev, T* h_next, T* out, T* proj, const int* lengths, int batch,   \
        int hidden, int st, int sb, int out_ld, int step, int reverse) {                         \
        lstm_step_fused<T>(xw, hh, b_ih, b_hh, c_prev, c_next, h_prev, h_next, out, proj,        \
                           lengths, batch, hidden, st, sb, out_ld, step, reverse);               \
    }
FOR_EACH_DTYPE(LSTM_STEP_FUSED)
