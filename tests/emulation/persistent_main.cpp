// persistent_main.cpp — runs the persistent kernel (built for the host after cuda_host.h and the
// specialised kernel source) on one layer-direction read from a file, and writes its results.
//
// Input, little-endian: i32 seq_len, rows (T·B), st, sb, reverse, blocks, and flags (1: biases,
// 2: h0, 4: c0); then f32 xw [rows, G·H], w_hh [G·H, H], b_ih and b_hh [G·H] (flag 1), h0
// [B, H] (flag 2), c0 [B, H] (flag 4), and i32 lengths [B]. 16-bit values are already exact
// in the storage type. Output: f32 out [rows, H], h_n [B, H], c_n [B, H] (0 but for the LSTM),
// then i32 failed. Outputs start as NaN: the kernel must write every element.
#include <fstream>
#include <iterator>

namespace {

struct Reader {
    std::vector<char> bytes;
    size_t at = 0;

    template <typename V> std::vector<V> take(size_t n) {
        if (at + n * sizeof(V) > bytes.size()) emu::fail("input file too short");
        std::vector<V> v(n);
        std::memcpy(v.data(), bytes.data() + at, n * sizeof(V));
        at += n * sizeof(V);
        return v;
    }
};

std::vector<T> storage(const std::vector<float>& v) {
    std::vector<T> s(v.size());
    for (size_t i = 0; i < v.size(); ++i) s[i] = from_float<T>(v[i]);
    return s;
}

void put(std::ofstream& out, const std::vector<T>& v) {
    for (const T& x : v) {
        const float f = to_float(x);
        out.write(reinterpret_cast<const char*>(&f), 4);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) emu::fail("usage: kernel INPUT OUTPUT");
    std::ifstream in(argv[1], std::ios::binary);
    Reader r{{std::istreambuf_iterator<char>(in), {}}};
    const auto header = r.take<int>(7);
    const int seq_len = header[0], rows = header[1], st = header[2], sb = header[3],
              reverse = header[4], blocks = header[5], flags = header[6];
    const size_t gh = (size_t)GATES * HIDDEN, bh = (size_t)BATCH * HIDDEN;
    const auto xw = r.take<float>(rows * gh);
    const auto w_hh = storage(r.take<float>(gh * HIDDEN));
    std::vector<T> b_ih, b_hh, h0, c0;
    if (flags & 1) {
        b_ih = storage(r.take<float>(gh));
        b_hh = storage(r.take<float>(gh));
    }
    if (flags & 2) h0 = storage(r.take<float>(bh));
    if (flags & 4) c0 = storage(r.take<float>(bh));
    const auto lengths = r.take<int>(BATCH);
    if (r.at != r.bytes.size()) emu::fail("input file too long");

    const T nan = from_float<T>(NAN);
    std::vector<T> out(rows * (size_t)HIDDEN, nan), h_n(bh, nan), c_n(bh, from_float<T>(0.f));
    if (CELL == CELL_LSTM) c_n.assign(bh, nan);
    std::vector<float> hbuf(2 * bh, NAN);
    unsigned counter = 0;
    int failed = 0;
    auto data = [](const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); };
    emu::launch(blocks, THREADS, SHARED_BYTES, [&] {
        persistent_forward(xw.data(), w_hh.data(), data(b_ih), data(b_hh), data(h0), data(c0),
                           out.data(), h_n.data(), c_n.data(), hbuf.data(), &counter, &failed,
                           lengths.data(), seq_len, st, sb, HIDDEN, reverse);
    });

    std::ofstream o(argv[2], std::ios::binary);
    put(o, out);
    put(o, h_n);
    put(o, c_n);
    o.write(reinterpret_cast<const char*>(&failed), 4);
    return o ? 0 : 1;
}
