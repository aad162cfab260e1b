// embedding.cu — nn.Embedding: rows of a table gathered by i32 ids, and the table's gradient
// scattered back.
//
// Shapes: weight [vocab, dim]; ids [n] (any shape, flattened); y, dy [n, dim]; acc [vocab, dim]
// f32. Storage dtype T for weight, y and dy; arithmetic in f32.
//
// Ids are not checked against the vocabulary before these kernels run (that would need a read
// back to the host): an id outside [0, vocab) gathers a row of zeros and scatters nothing, and
// no kernel reads or writes outside its buffers. `embedding_check_ids` sets a flag the host
// reads when the caller asks (ops::embedding::check_ids).
//
// Variants (entry points):
//   embedding_gather_T          y[i, :] = weight[ids[i], :] (zeros for an id out of range)
//   embedding_scatter_T         acc[ids[i], :] += dy[i, :], f32 atomics into an f32 accumulator
//                               the host zeroed; the padding id (−1: none) and ids out of range
//                               add nothing
//   embedding_check_ids_f32     *bad = 1 when some id is outside [0, vocab) (ids are i32 whatever
//                               the suffix, which the kernel loader always adds)
// The gather and scatter grids are (⌈dim / 256⌉, id blocks), each block striding over ids.
#include "common.cuh"

__device__ __forceinline__ bool in_vocab(int id, int vocab) { return id >= 0 && id < vocab; }

// ---
// Forward

#define EMBEDDING_GATHER(S, T)                                                                   \
    extern "C" __global__ void embedding_gather_##S(const T* weight, const int* ids, T* y,       \
                                                    int n, int dim, int vocab) {                 \
        int e = blockIdx.x * blockDim.x + threadIdx.x;                                           \
        if (e >= dim) return;                                                                    \
        for (long i = blockIdx.y; i < n; i += gridDim.y) {                                       \
            int id = ids[i];                                                                     \
            y[i * dim + e] =                                                                     \
                in_vocab(id, vocab) ? weight[(long)id * dim + e] : from_float<T>(0.f);           \
        }                                                                                        \
    }
FOR_EACH_DTYPE(EMBEDDING_GATHER)

// ---
// Backward

#define EMBEDDING_SCATTER(S, T)                                                                  \
    extern "C" __global__ void embedding_scatter_##S(const T* dy, const int* ids, float* acc,    \
                                                     int n, int dim, int vocab, int padding) {   \
        int e = blockIdx.x * blockDim.x + threadIdx.x;                                           \
        if (e >= dim) return;                                                                    \
        for (long i = blockIdx.y; i < n; i += gridDim.y) {                                       \
            int id = ids[i];                                                                     \
            if (!in_vocab(id, vocab) || id == padding) continue;                                 \
            atomicAdd(&acc[(long)id * dim + e], to_float(dy[i * dim + e]));                      \
        }                                                                                        \
    }
FOR_EACH_DTYPE(EMBEDDING_SCATTER)

// ---
// Validation

extern "C" __global__ void embedding_check_ids_f32(const int* ids, int n, int vocab, int* bad) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && !in_vocab(ids[i], vocab)) atomicExch(bad, 1);
}
