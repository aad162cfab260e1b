// io.h — the file format of the host drivers (persistent_main.cpp, stepwise_main.cpp): one
// layer-direction in, its results out. Included after the kernel source (it uses
// to_float/from_float).
//
// Input, little-endian: i32 seq_len, rows (T·B), st, sb, reverse, blocks, flags (1: biases,
// 2: h0, 4: c0), batch and hidden; then f32 xw [rows, G·H], w_hh [G·H, H], b_ih and b_hh [G·H]
// (flag 1), h0 [B, H] (flag 2), c0 [B, H] (flag 4), and i32 lengths [B]. 16-bit values are
// already exact in the storage type. Output: f32 out [rows, H], h_n [B, H], c_n [B, H] (0 but
// for the LSTM), then i32 failed. Results start as NaN: the kernel must write every element.
#pragma once

#include <fstream>
#include <iterator>

namespace emu {

template <typename T> std::vector<T> filled(size_t n, float v) {
    return std::vector<T>(n, from_float<T>(v));
}

template <typename T> const T* data(const std::vector<T>& v) {
    return v.empty() ? nullptr : v.data();
}

template <typename T> struct Layer {
    int seq_len, rows, st, sb, reverse, blocks, batch, hidden;
    std::vector<float> xw;
    std::vector<T> w_hh, b_ih, b_hh, h0, c0;
    std::vector<int> lengths;
    std::vector<T> out, h_n, c_n;
};

struct Reader {
    std::vector<char> bytes;
    size_t at = 0;

    template <typename V> std::vector<V> take(size_t n) {
        if (at + n * sizeof(V) > bytes.size()) fail("input file too short");
        std::vector<V> v(n);
        std::memcpy(v.data(), bytes.data() + at, n * sizeof(V));
        at += n * sizeof(V);
        return v;
    }

    template <typename T> std::vector<T> take_storage(size_t n) {
        std::vector<T> s(n);
        const auto v = take<float>(n);
        for (size_t i = 0; i < n; ++i) s[i] = from_float<T>(v[i]);
        return s;
    }
};

// The layer in argv[1] of a layer of `gates` gates, with its results NaN.
template <typename T> Layer<T> read_layer(int argc, char** argv, int gates) {
    if (argc != 3) fail("usage: driver INPUT OUTPUT");
    std::ifstream in(argv[1], std::ios::binary);
    Reader r{{std::istreambuf_iterator<char>(in), {}}};
    const auto head = r.take<int>(9);
    Layer<T> l{head[0], head[1], head[2], head[3], head[4], head[5], head[7], head[8]};
    const int flags = head[6];
    const size_t gh = (size_t)gates * l.hidden, bh = (size_t)l.batch * l.hidden;
    l.xw = r.take<float>(l.rows * gh);
    l.w_hh = r.take_storage<T>(gh * l.hidden);
    if (flags & 1) {
        l.b_ih = r.take_storage<T>(gh);
        l.b_hh = r.take_storage<T>(gh);
    }
    if (flags & 2) l.h0 = r.take_storage<T>(bh);
    if (flags & 4) l.c0 = r.take_storage<T>(bh);
    l.lengths = r.take<int>(l.batch);
    if (r.at != r.bytes.size()) fail("input file too long");
    l.out = filled<T>(l.rows * (size_t)l.hidden, NAN);
    l.h_n = filled<T>(bh, NAN);
    l.c_n = filled<T>(bh, gates == 4 ? NAN : 0.f);
    return l;
}

template <typename T> void put(std::ofstream& out, const std::vector<T>& v) {
    for (const T& x : v) {
        const float f = to_float(x);
        out.write(reinterpret_cast<const char*>(&f), 4);
    }
}

// Writes the results to `path`; the process's exit code.
template <typename T> int write_results(const char* path, const Layer<T>& l, int failed) {
    std::ofstream o(path, std::ios::binary);
    put(o, l.out);
    put(o, l.h_n);
    put(o, l.c_n);
    o.write(reinterpret_cast<const char*>(&failed), 4);
    return o ? 0 : 1;
}

}  // namespace emu
