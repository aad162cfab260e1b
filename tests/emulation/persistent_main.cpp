// persistent_main.cpp — runs the persistent kernel (built for the host after cuda_host.h and
// the specialised kernel source) on one layer-direction read from a file, and writes its
// results (the format: io.h).
#include "io.h"

int main(int argc, char** argv) {
    emu::Layer<T> l = emu::read_layer<T>(argc, argv, GATES);
    if (l.batch != BATCH || l.hidden != HIDDEN) emu::fail("the input's shape is not the kernel's");
    std::vector<float> hbuf(2 * (size_t)BATCH * HIDDEN, NAN);
    unsigned counter = 0;
    int failed = 0;
    emu::launch(l.blocks, THREADS, SHARED_BYTES, [&] {
        persistent_forward(l.xw.data(), l.w_hh.data(), emu::data(l.b_ih), emu::data(l.b_hh),
                           emu::data(l.h0), emu::data(l.c0), l.out.data(), l.h_n.data(),
                           l.c_n.data(), hbuf.data(), &counter, &failed, l.lengths.data(),
                           l.seq_len, l.st, l.sb, HIDDEN, l.reverse);
    });
    return emu::write_results(argv[2], l, failed);
}
