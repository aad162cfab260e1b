// concat.cu — torch.cat and torch.split along any dimension: one strided copy between a whole
// tensor and its pieces, in either direction.
//
// Shapes: every tensor is viewed as [rows, n, inner] around the dimension cut (rows = the
// product of the dimensions before it, inner = of those after it); the whole has n = N = Σ n_k,
// piece k has n = n_k. Per row, piece k is a contiguous run of width w_k = n_k · inner elements
// in the piece and, from column c_k = (Σ_{j<k} w_j), in the whole row of width W = N · inner.
// So a copy is, for every row r and every column c of a piece's run:
//   whole[r · W + c_k + c] <-> piece_k[r · w_k + c]
//
// The pieces of one launch come as kernel parameters (up to CONCAT_PIECES of codes.cuh, unused
// slots with width 0), not as a table in device memory: a call uploads nothing and can be
// captured in a CUDA graph, and the decoder's [embedding; context] (two pieces along the last
// dimension) is one launch. More pieces take one launch per CONCAT_PIECES (the host passes
// the first group's column `col0` in the whole row).
//
// Variants (entry points):
//   concat_copy_T   a grid-stride loop over the launch's elements (rows × Σ w_k), 64-bit
//                   counts and offsets; values are copied as stored (bit for bit):
//                   split = 0 gathers the pieces into the whole (concat),
//                   split = 1 scatters the whole into the pieces (split)
// The backward of a concat is a split of its gradient and the other way round: the same
// kernel.
#include "common.cuh"

// ---
#define CONCAT_COPY(S, T)                                                                        \
    extern "C" __global__ void concat_copy_##S(                                                  \
        T* whole, unsigned long long whole_width, unsigned long long col0,                       \
        unsigned long long rows, T* p0, unsigned long long w0, T* p1, unsigned long long w1,     \
        T* p2, unsigned long long w2, T* p3, unsigned long long w3, int split) {                 \
        unsigned long long width = w0 + w1 + w2 + w3;                                           \
        GRID_STRIDE_LOOP(idx, rows * width) {                                                    \
            unsigned long long r = idx / width, c = idx - r * width;                             \
            /* The piece holding column c of this launch's run, and c within it. */              \
            T* piece = p0;                                                                       \
            unsigned long long w = w0, start = 0;                                                \
            if (c >= start + w) { start += w; piece = p1; w = w1; }                              \
            if (c >= start + w) { start += w; piece = p2; w = w2; }                              \
            if (c >= start + w) { start += w; piece = p3; w = w3; }                              \
            unsigned long long at_whole = r * whole_width + col0 + c;                            \
            unsigned long long at_piece = r * w + (c - start);                                   \
            if (split) piece[at_piece] = whole[at_whole];                                        \
            else whole[at_whole] = piece[at_piece];                                              \
        }                                                                                        \
    }
FOR_EACH_DTYPE(CONCAT_COPY)
