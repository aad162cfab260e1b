// index_select.cu — torch.index_select along any dimension and its backward (index_add).
//
// Shapes: x is viewed as [rows, n_src, inner] around the selected dimension, ids [n_ids] (i32),
// y [rows, n_ids, inner]:
//   y[r, j, i] = x[r, ids[j], i]
// The backward adds every gradient row back where it came from; repeated ids accumulate:
//   grad_x[r, ids[j], i] += grad_y[r, j, i]
// Reordering beams is dim 0 over the rows of h [B·beam, H]: rows = 1, inner = H, so a warp
// copies contiguous runs of a row.
//
// The ids live in device memory, where the host never checked them: an id outside 0..n_src is
// never followed. Its output elements get 0 (the backward adds nothing for it) and the first
// such id is written to the device's error record (`report_bad_index`, which
// CudaDevice::check_errors reads). (Host ids are checked on the host; these kernels take only
// device ids.)
//
// Variants (entry points):
//   index_select_T            a grid-stride loop over y (64-bit counts; the ids and the size
//                             of the selected dimension are i32)
//   index_select_backward_T   a grid-stride loop over grad_y, f32 atomicAdd into an f32
//                             accumulator [rows, n_src, inner] the host zeroed (and converts to
//                             the storage dtype after, for 16-bit storage). The order of the
//                             additions into one element is not fixed, so with repeated ids the
//                             f32 result may differ in its last bits from run to run.
#include "common.cuh"

// ---
// The offset in the source [rows, n_src, inner] of entry idx of the selection [rows, n_ids,
// inner], or -1 for a bad id (recorded under error_code).
__device__ __forceinline__ long long selected_offset(unsigned long long idx, const int* ids,
                                                     int* errors, int error_code, int n_src,
                                                     int n_ids, unsigned long long inner) {
    unsigned long long per_row = (unsigned long long)n_ids * inner;
    unsigned long long r = idx / per_row, rest = idx - r * per_row;
    int j = (int)(rest / inner);
    unsigned long long i = rest - (unsigned long long)j * inner;
    int id = ids[j];
    if (id < 0 || id >= n_src) {
        report_bad_index(errors, error_code, j, id, n_src);
        return -1;
    }
    return (long long)((r * n_src + id) * inner + i);
}

// ---
#define INDEX_SELECT(S, T)                                                                       \
    extern "C" __global__ void index_select_##S(const T* x, T* y, const int* ids, int* errors,   \
                                                int error_code, unsigned long long rows,         \
                                                int n_src, int n_ids, unsigned long long inner) { \
        GRID_STRIDE_LOOP(idx, rows * n_ids * inner) {                                            \
            long long from = selected_offset(idx, ids, errors, error_code, n_src, n_ids, inner); \
            y[idx] = from < 0 ? from_float<T>(0.f) : x[from];                                    \
        }                                                                                        \
    }
FOR_EACH_DTYPE(INDEX_SELECT)

// ---
#define INDEX_SELECT_BACKWARD(S, T)                                                              \
    extern "C" __global__ void index_select_backward_##S(                                        \
        const T* grad_y, float* acc, const int* ids, int* errors, int error_code,                \
        unsigned long long rows, int n_src, int n_ids, unsigned long long inner) {               \
        GRID_STRIDE_LOOP(idx, rows * n_ids * inner) {                                            \
            long long to = selected_offset(idx, ids, errors, error_code, n_src, n_ids, inner);   \
            if (to >= 0)                                                                         \
                atomicAdd(&acc[to], to_float(grad_y[idx]));                                      \
        }                                                                                        \
    }
FOR_EACH_DTYPE(INDEX_SELECT_BACKWARD)
