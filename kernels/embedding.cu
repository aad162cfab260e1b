// embedding.cu — nn.Embedding: rows of a table gathered by i32 ids, and the table's gradient
// scattered back.
//
// Shapes: weight [vocab, dim]; ids [n] (any shape, flattened); y, dy [n, dim]; acc [vocab, dim]
// f32. Storage dtype T for weight, y and dy; arithmetic in f32.
//
// The ids live in device memory, where the host never checked them: an id outside 0..vocab is
// never followed. Its output row gets zeros (the backward adds nothing for it) and the first
// such id is written to the device's error record (`report_bad_index`, which
// CudaDevice::check_errors reads). (Host ids are checked on the host; these kernels take only
// device ids.)
//
// Variants (entry points):
//   embedding_gather_T     y[i, :] = weight[ids[i], :]
//   embedding_scatter_T    acc[ids[i], :] += dy[i, :], f32 atomics into an f32 accumulator the
//                          host zeroed (converted to the storage dtype after, for 16-bit
//                          storage); the padding id (−1: none) adds nothing. The order of the
//                          additions into one element is not fixed, so with repeated ids the
//                          result may differ in its last bits from run to run.
// Both grids are (⌈dim / BLOCK_THREADS⌉, id blocks), each block striding over the ids; the
// thread of column 0 reports a bad id.
#include "common.cuh"

__device__ __forceinline__ bool in_vocab(int id, int vocab) { return id >= 0 && id < vocab; }

// ---
// Forward

#define EMBEDDING_GATHER(S, T)                                                                   \
    extern "C" __global__ void embedding_gather_##S(const T* weight, const int* ids, T* y,       \
                                                    int* errors, int error_code, int n,          \
                                                    int dim, int vocab) {                        \
        int e = blockIdx.x * blockDim.x + threadIdx.x;                                           \
        if (e >= dim) return;                                                                    \
        for (long i = blockIdx.y; i < n; i += gridDim.y) {                                       \
            int id = ids[i];                                                                     \
            if (in_vocab(id, vocab)) {                                                           \
                y[i * dim + e] = weight[(long)id * dim + e];                                     \
            } else {                                                                             \
                if (e == 0) report_bad_index(errors, error_code, (int)i, id, vocab);             \
                y[i * dim + e] = from_float<T>(0.f);                                             \
            }                                                                                    \
        }                                                                                        \
    }
FOR_EACH_DTYPE(EMBEDDING_GATHER)

// ---
// Backward

#define EMBEDDING_SCATTER(S, T)                                                                  \
    extern "C" __global__ void embedding_scatter_##S(const T* dy, const int* ids, float* acc,    \
                                                     int* errors, int error_code, int n,         \
                                                     int dim, int vocab, int padding) {          \
        int e = blockIdx.x * blockDim.x + threadIdx.x;                                           \
        if (e >= dim) return;                                                                    \
        for (long i = blockIdx.y; i < n; i += gridDim.y) {                                       \
            int id = ids[i];                                                                     \
            if (!in_vocab(id, vocab)) {                                                          \
                if (e == 0) report_bad_index(errors, error_code, (int)i, id, vocab);             \
            } else if (id != padding) {                                                          \
                atomicAdd(&acc[(long)id * dim + e], to_float(dy[i * dim + e]));                  \
            }                                                                                    \
        }                                                                                        \
    }
FOR_EACH_DTYPE(EMBEDDING_SCATTER)
