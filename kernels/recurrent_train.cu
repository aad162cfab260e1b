// recurrent_train.cu — training of RNN, LSTM and GRU layers: the forward step that keeps what
// backpropagation needs, and the backward step that turns the gradient of h_t (and c_t) and
// the saved activations into gate gradients.
//
// Rows, layouts and lengths as in rnn.cu: row (t, b) of a [rows, ·] buffer is t·st + b·sb, and
// step s of a row of length len is time step_time(s, len, reverse). Per row the forward keeps,
// in f32 (whatever the storage dtype):
//   act   [rows, G·H]  the activated gates: RNN h; LSTM i, f, g, o; GRU r, z, n
//   aux   [rows, H]    LSTM c_t; GRU W_hn h_{t-1} + b_hn; unused by the RNN
//   hprev [rows, O]    h_{t-1} as the step read it (the W_hh gradient's right operand)
//   m     [rows, H]    an LSTM with projection: o ⊙ tanh(c_t), the W_hr gradient's operand
// Cell codes match `Cell` on the Rust side: 0 RNN, 1 LSTM, 2 GRU.
//
// Entry points:
//   recurrent_train_step_T     one fused forward step (one launch, as rnn/lstm/gru_step_fused)
//   recurrent_backward_step_f32  one fused backward step: gate gradients of every row into
//                              dgate (and the GRU's hidden-side dgate_h), this step's rows of
//                              them into dstep for the recurrent GEMM, dc carried back in place,
//                              and dh_next = the part of dh_{t-1} that is not W_hhᵀ·dstep
//   projection_backward_f32    an LSTM with projection: dh_t of the projected output, kept per
//                              row for the W_hr gradient, before the W_hr GEMM
//   mask_rows_f32, carry_masked_f32, scatter_rows_f32  the naive backward's masking ops
#include "common.cuh"

template <typename T>
__device__ void train_step(int cell, int act_code, const float* __restrict__ xw,
                           const float* __restrict__ hh, const T* __restrict__ b_ih,
                           const T* __restrict__ b_hh, const T* __restrict__ c_prev,
                           T* __restrict__ c_next, const T* __restrict__ h_prev,
                           T* __restrict__ h_next, T* __restrict__ out, T* __restrict__ proj,
                           float* __restrict__ act, float* __restrict__ aux,
                           float* __restrict__ hprev, float* __restrict__ m,
                           const int* __restrict__ lengths, int batch, int hidden,
                           int out_size, int st, int sb, int out_ld, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    int gates = cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1;
    int gw = gates * hidden;
    float h = 0.f, c = 0.f;
    if (t >= 0) {
        long row = (long)t * st + (long)b * sb;
        const float* x = xw + row * gw;
        const float* r = hh + (long)b * gw;
        float* a = act + row * gw;
        if (j < out_size) hprev[row * out_size + j] = to_float(h_prev[b * out_size + j]);
        if (cell == CELL_RNN) {
            h = activate(x[j] + r[j] + bias_at(b_ih, j) + bias_at(b_hh, j), act_code);
            a[j] = h;
        } else if (cell == CELL_LSTM) {
            float pre[4], g[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                int col = k * hidden + j;
                pre[k] = x[col] + r[col] + bias_at(b_ih, col) + bias_at(b_hh, col);
            }
            h = lstm_cell(pre, to_float(c_prev[idx]), g, c);
#pragma unroll
            for (int k = 0; k < 4; ++k) a[k * hidden + j] = g[k];
            aux[row * hidden + j] = c;
            if (proj) m[row * hidden + j] = h;
        } else {
            int jz = hidden + j, jn = 2 * hidden + j;
            float hn = r[jn] + bias_at(b_hh, jn), g[3];
            h = gru_cell(x[j] + bias_at(b_ih, j) + r[j] + bias_at(b_hh, j),
                         x[jz] + bias_at(b_ih, jz) + r[jz] + bias_at(b_hh, jz),
                         x[jn] + bias_at(b_ih, jn), hn, to_float(h_prev[idx]), g);
            a[j] = g[0];
            a[jz] = g[1];
            a[jn] = g[2];
            aux[row * hidden + j] = hn;
        }
    }
    if (cell == CELL_LSTM) store_step(c, c_prev, c_next, (T*)nullptr, idx, b, j, t, step, st, sb, out_ld);
    if (proj) {
        proj[idx] = from_float<T>(h);
    } else {
        store_step(h, h_prev, h_next, out, idx, b, j, t, step, st, sb, out_ld);
    }
}

#define TRAIN_STEP(S, T)                                                                         \
    extern "C" __global__ void recurrent_train_step_##S(                                         \
        int cell, int act_code, const float* xw, const float* hh, const T* b_ih, const T* b_hh,  \
        const T* c_prev, T* c_next, const T* h_prev, T* h_next, T* out, T* proj, float* act,     \
        float* aux, float* hprev, float* m, const int* lengths, int batch, int hidden,           \
        int out_size, int st, int sb, int out_ld, int step, int reverse) {                       \
        train_step<T>(cell, act_code, xw, hh, b_ih, b_hh, c_prev, c_next, h_prev, h_next, out,   \
                      proj, act, aux, hprev, m, lengths, batch, hidden, out_size, st, sb,        \
                      out_ld, step, reverse);                                                    \
    }
FOR_EACH_DTYPE(TRAIN_STEP)

// dh [B, H] is the gradient of h after this step (from later steps), dy [rows, ·] (leading
// dimension dy_ld, this direction's columns) the output's; with a projection, dm [B, H] holds
// the gradient of the pre-projection h instead of both, and the projection kernel has carried
// dh already. c0 [B, H] f32 may be null (zeros).
extern "C" __global__ void recurrent_backward_step_f32(
    int cell, int act_code, const float* __restrict__ act, const float* __restrict__ aux,
    const float* __restrict__ hprev, const float* __restrict__ c0, const float* __restrict__ dy,
    int dy_ld, const float* __restrict__ dh, float* __restrict__ dh_next, float* __restrict__ dc,
    const float* __restrict__ dm, float* __restrict__ dgate, float* __restrict__ dgate_h,
    float* __restrict__ dstep, const int* __restrict__ lengths, int batch, int hidden, int st,
    int sb, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * hidden) return;
    int b = idx / hidden, j = idx - b * hidden;
    int t = step_time(step, lengths[b], reverse);
    int gates = cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1;
    int gw = gates * hidden;
    float* ds = dstep + (long)b * gw;
    if (t < 0) {
        // An ended row carried its state through this step: its gradients pass unchanged.
        for (int k = 0; k < gates; ++k) ds[k * hidden + j] = 0.f;
        if (!dm) dh_next[idx] = dh[idx];
        return;
    }
    long row = (long)t * st + (long)b * sb;
    float dht = dm ? dm[idx] : dh[idx] + dy[row * dy_ld + j];
    const float* a = act + row * gw;
    float* dg = dgate + row * gw;
    float carry = 0.f;  // the part of dh_{t-1} that does not go through W_hh
    if (cell == CELL_RNN) {
        float h = a[j];
        float d = act_code == ACT_RELU ? (h > 0.f ? dht : 0.f) : dht * (1.f - h * h);
        dg[j] = d;
        ds[j] = d;
    } else if (cell == CELL_LSTM) {
        float i = a[j], f = a[hidden + j], g = a[2 * hidden + j], o = a[3 * hidden + j];
        float c = aux[row * hidden + j];
        float cp;
        if (step == 0) {
            cp = c0 ? c0[idx] : 0.f;
        } else {
            long prow = (long)(reverse ? t + 1 : t - 1) * st + (long)b * sb;
            cp = aux[prow * hidden + j];
        }
        float tc = tanhf(c);
        float dct = dc[idx] + dht * o * (1.f - tc * tc);
        dc[idx] = dct * f;
        float d[4] = {dct * g * i * (1.f - i), dct * cp * f * (1.f - f), dct * i * (1.f - g * g),
                      dht * tc * o * (1.f - o)};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            dg[k * hidden + j] = d[k];
            ds[k * hidden + j] = d[k];
        }
    } else {
        float r = a[j], z = a[hidden + j], n = a[2 * hidden + j];
        float hn = aux[row * hidden + j], hp = hprev[row * hidden + j];
        float dpn = dht * (1.f - z) * (1.f - n * n);
        float dpr = dpn * hn * r * (1.f - r);
        float dpz = dht * (hp - n) * z * (1.f - z);
        float* dgh = dgate_h + row * gw;
        dg[j] = dgh[j] = ds[j] = dpr;
        dg[hidden + j] = dgh[hidden + j] = ds[hidden + j] = dpz;
        dg[2 * hidden + j] = dpn;
        dgh[2 * hidden + j] = ds[2 * hidden + j] = dpn * r;
        carry = dht * z;
    }
    if (!dm) dh_next[idx] = carry;
}

// The gradient of an LSTM's projected h_t [B, O]: dh (later steps) + dy (the output's) for a
// running row, kept in dh_rows [rows, O] for the W_hr gradient and in dh_t [B, O] for the W_hr
// GEMM; an ended row's dh passes to dh_next unchanged.
extern "C" __global__ void projection_backward_f32(const float* dh, const float* dy, int dy_ld,
                                                   float* dh_t, float* dh_rows, float* dh_next,
                                                   const int* lengths, int batch, int out_size,
                                                   int st, int sb, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * out_size) return;
    int b = idx / out_size, o = idx - b * out_size;
    int t = step_time(step, lengths[b], reverse);
    if (t < 0) {
        dh_t[idx] = 0.f;
        dh_next[idx] = dh[idx];
        return;
    }
    long row = (long)t * st + (long)b * sb;
    float v = dh[idx] + dy[row * dy_ld + o];
    dh_t[idx] = v;
    dh_rows[row * out_size + o] = v;
    dh_next[idx] = 0.f;
}

// y[b, c] = 0 for the rows that have ended at this step ([B, cols] view, leading dimension ld).
extern "C" __global__ void mask_rows_f32(float* y, int ld, const int* lengths, int batch,
                                         int cols, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * cols) return;
    int b = idx / cols, c = idx - b * cols;
    if (step_time(step, lengths[b], reverse) < 0) y[(long)b * ld + c] = 0.f;
}

// out = value (0 when null) for a running row, prev for an ended one; [B, cols], may be in
// place (out == prev).
extern "C" __global__ void carry_masked_f32(const float* value, const float* prev, float* out,
                                            const int* lengths, int batch, int cols, int step,
                                            int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * cols) return;
    int b = idx / cols;
    bool running = step_time(step, lengths[b], reverse) >= 0;
    out[idx] = running ? (value ? value[idx] : 0.f) : prev[idx];
}

// dst[row(t, b), c] += src[b, c] for the running rows: a step's [B, cols] into [rows, ·].
extern "C" __global__ void scatter_rows_f32(const float* src, float* dst, int ld_dst,
                                            const int* lengths, int batch, int cols, int st,
                                            int sb, int step, int reverse) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * cols) return;
    int b = idx / cols, c = idx - b * cols;
    int t = step_time(step, lengths[b], reverse);
    if (t >= 0) dst[((long)t * st + (long)b * sb) * ld_dst + c] += src[idx];
}
