// launch_main.cpp — runs a list of launches of kernels built for the host (after cuda_host.h and
// a kernel file) on buffers read from a file, then writes the buffers back: a generic driver for
// any entry point, so that a kernel's host test only describes its buffers and launches
// (tests/common/host_kernels.rs). ENTRIES is `X(entry) X(entry) ...`; a launch names its entry
// by position in that list. Arguments are read by the entry point's own parameter types, so a
// launch whose arguments do not match the kernel's signature fails instead of running.
//
// Input (little-endian): u32 buffer count, then per buffer u64 bytes and the bytes; u32 launch
// count, then per launch u32 entry, grid x, grid y, threads, shared bytes, u32 argument count
// and the arguments, each a tag byte and its value: 0 buffer (u32 index, u64 byte offset),
// 1 i32, 2 f32, 3 u64, 4 f64, 5 null pointer.
// Output: per buffer u64 bytes and the bytes. Every buffer has guard bytes of 0xFF on both
// sides: a kernel that reads past a buffer reads NaN, one that writes past it fails the run.
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <type_traits>

namespace host {

constexpr size_t GUARD = 256;
constexpr unsigned char GUARD_BYTE = 0xFF;

struct Reader {
    std::vector<unsigned char> bytes;
    size_t at = 0;
    template <typename V> V take() {
        if (at + sizeof(V) > bytes.size()) emu::fail("launch file truncated");
        V v;
        std::memcpy(&v, bytes.data() + at, sizeof(V));
        at += sizeof(V);
        return v;
    }
};

inline std::vector<std::vector<unsigned char>> buffers;

inline void expect(unsigned char tag, unsigned char want, const char* type) {
    if (tag != want) {
        std::fprintf(stderr, "argument tag %u where the kernel takes %s\n", tag, type);
        std::exit(4);
    }
}

template <typename V> V read_arg(Reader& r) {
    unsigned char tag = r.take<unsigned char>();
    if constexpr (std::is_pointer_v<V>) {
        if (tag == 5) return nullptr;
        expect(tag, 0, "a pointer");
        uint32_t k = r.take<uint32_t>();
        uint64_t offset = r.take<uint64_t>();
        if (k >= buffers.size()) emu::fail("no such buffer");
        if (GUARD + offset > buffers[k].size() - GUARD) emu::fail("offset past the buffer");
        return (V)(buffers[k].data() + GUARD + offset);
    } else if constexpr (std::is_same_v<V, float>) {
        expect(tag, 2, "f32");
        return r.take<float>();
    } else if constexpr (std::is_same_v<V, double>) {
        expect(tag, 4, "f64");
        return r.take<double>();
    } else if constexpr (sizeof(V) == 8) {
        expect(tag, 3, "a 64-bit integer");
        return (V)r.take<uint64_t>();
    } else {
        static_assert(std::is_integral_v<V>, "kernel arguments are pointers, floats or integers");
        expect(tag, 1, "a 32-bit integer");
        return (V)r.take<int32_t>();
    }
}

template <typename... A>
void call(void (*kernel)(A...), Reader& r, emu::Dim3 grid, unsigned threads, size_t shared) {
    uint32_t count = r.take<uint32_t>();
    if (count != sizeof...(A)) {
        std::fprintf(stderr, "%u arguments for a kernel of %zu\n", count, sizeof...(A));
        std::exit(4);
    }
    // A braced list evaluates its elements in order: the arguments are read left to right.
    std::tuple<std::decay_t<A>...> args{read_arg<std::decay_t<A>>(r)...};
    emu::launch(grid, threads, shared, [&] { std::apply(kernel, args); });
}

using Caller = void (*)(Reader&, emu::Dim3, unsigned, size_t);

}  // namespace host

#define X(entry)                                                                                 \
    +[](host::Reader& r, emu::Dim3 grid, unsigned threads, size_t shared) {                      \
        host::call(entry, r, grid, threads, shared);                                             \
    },
static const host::Caller ENTRY_TABLE[] = {ENTRIES};
#undef X

int main(int argc, char** argv) {
    if (argc != 3) emu::fail("usage: launches IN OUT");
    std::ifstream in(argv[1], std::ios::binary);
    host::Reader r{{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()}};
    uint32_t count = r.take<uint32_t>();
    for (uint32_t k = 0; k < count; ++k) {
        uint64_t bytes = r.take<uint64_t>();
        if (r.at + bytes > r.bytes.size()) emu::fail("launch file truncated");
        std::vector<unsigned char> b(bytes + 2 * host::GUARD, host::GUARD_BYTE);
        std::memcpy(b.data() + host::GUARD, r.bytes.data() + r.at, bytes);
        r.at += bytes;
        host::buffers.push_back(std::move(b));
    }
    uint32_t launches = r.take<uint32_t>();
    for (uint32_t k = 0; k < launches; ++k) {
        uint32_t entry = r.take<uint32_t>();
        uint32_t gx = r.take<uint32_t>(), gy = r.take<uint32_t>();
        uint32_t threads = r.take<uint32_t>(), shared = r.take<uint32_t>();
        if (entry >= std::size(ENTRY_TABLE)) emu::fail("no such entry point");
        ENTRY_TABLE[entry](r, emu::Dim3{gx, gy, 1}, threads, shared);
    }
    std::ofstream out(argv[2], std::ios::binary);
    for (size_t k = 0; k < host::buffers.size(); ++k) {
        const std::vector<unsigned char>& b = host::buffers[k];
        for (size_t g = 0; g < host::GUARD; ++g)
            if (b[g] != host::GUARD_BYTE || b[b.size() - 1 - g] != host::GUARD_BYTE) {
                std::fprintf(stderr, "buffer %zu: written outside its bounds\n", k);
                return 5;
            }
        uint64_t bytes = b.size() - 2 * host::GUARD;
        out.write((const char*)&bytes, 8);
        out.write((const char*)b.data() + host::GUARD, (std::streamsize)bytes);
    }
    return out ? 0 : 6;
}
