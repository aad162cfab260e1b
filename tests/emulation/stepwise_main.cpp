// stepwise_main.cpp — runs one layer-direction through the stepwise fused kernel of rnn.cu,
// lstm.cu or gru.cu, built for the host after cuda_host.h and that kernel file, as the CUDA
// plan does: per step h_{t-1}·W_hhᵀ in f32 from the stored values (the GEMM before each
// launch), then one launch of STEP (the entry point for CELL and STORAGE; ACT for the RNN).
//
// The file format: io.h (the block count is unused here).
#include "io.h"

namespace {

typedef STORAGE T;
constexpr int GATES = CELL == 1 ? 4 : CELL == 2 ? 3 : 1;
constexpr unsigned THREADS = 256;

}  // namespace

int main(int argc, char** argv) {
    emu::Layer<T> l = emu::read_layer<T>(argc, argv, GATES);
    const int batch = l.batch, hidden = l.hidden, n = batch * hidden;
    // h and c ping-pong between steps, as the plan's buffers do.
    std::vector<T> h[2] = {l.h0.empty() ? emu::filled<T>(n, 0.f) : l.h0, emu::filled<T>(n, NAN)};
    std::vector<T> c[2] = {l.c0.empty() ? emu::filled<T>(n, 0.f) : l.c0, emu::filled<T>(n, NAN)};
    std::vector<float> hh((size_t)batch * GATES * hidden);
    for (int s = 0; s < l.seq_len; ++s) {
        const std::vector<T>& hp = h[s % 2];
        for (int b = 0; b < batch; ++b)
            for (int g = 0; g < GATES * hidden; ++g) {
                float sum = 0.f;
                for (int k = 0; k < hidden; ++k)
                    sum += to_float(hp[b * hidden + k]) * to_float(l.w_hh[(size_t)g * hidden + k]);
                hh[(size_t)b * GATES * hidden + g] = sum;
            }
        T *hn = h[(s + 1) % 2].data(), *cn = c[(s + 1) % 2].data();
        const T *b_ih = emu::data(l.b_ih), *b_hh = emu::data(l.b_hh);
        emu::launch((n + THREADS - 1) / THREADS, THREADS, 0, [&] {
#if CELL == 0
            STEP(l.xw.data(), hh.data(), b_ih, b_hh, hp.data(), hn, l.out.data(), l.lengths.data(),
                 batch, hidden, l.st, l.sb, hidden, s, l.reverse, ACT);
#elif CELL == 1
            STEP(l.xw.data(), hh.data(), b_ih, b_hh, c[s % 2].data(), cn, hp.data(), hn,
                 l.out.data(), (T*)nullptr, l.lengths.data(), batch, hidden, l.st, l.sb, hidden,
                 s, l.reverse);
#else
            STEP(l.xw.data(), hh.data(), b_ih, b_hh, hp.data(), hn, l.out.data(), l.lengths.data(),
                 batch, hidden, l.st, l.sb, hidden, s, l.reverse);
#endif
        });
    }
    l.h_n = h[l.seq_len % 2];
    if (CELL == 1) l.c_n = c[l.seq_len % 2];
    return emu::write_results(argv[2], l, 0);
}
