// linear.cu — the parts of nn.Linear (y = x Wᵀ + b) that the GEMMs do not do. The products run
// on cuBLASLt (forward, the bias in its epilogue) and cuBLAS (backward); these kernels add the
// bias when cuBLASLt cannot fuse it, and sum the bias gradient.
//
// Shapes: acc, y, dy [rows, cols] row-major (cols = the layer's outputs); bias, db [cols].
// Storage dtype T for y, bias, dy and db; acc is f32; arithmetic in f32.
//
// Variants (entry points):
//   linear_bias_T        y = T(acc + bias): the forward's epilogue after a cuBLAS product into
//                        f32 scratch. acc null: a product of zero terms (in = 0); bias null: none.
//                        Grid (⌈cols / 256⌉, row blocks), each block striding over rows.
//   linear_bias_grad_T   db[c] = Σ_r dy[r, c]: one block per LINEAR_GRAD_COLS columns, with
//                        LINEAR_GRAD_ROWS row lanes each summing every LINEAR_GRAD_ROWS-th row
//                        in f32, then the lanes' sums added in a fixed order — deterministic,
//                        no atomics.
#include "common.cuh"

#define LB_COLS LINEAR_GRAD_COLS
#define LB_ROWS LINEAR_GRAD_ROWS
static_assert(LB_COLS * LB_ROWS == BLOCK_THREADS, "one thread per (column, row lane)");

// ---
// Forward epilogue

#define LINEAR_BIAS(S, T)                                                                        \
    extern "C" __global__ void linear_bias_##S(const float* acc, const T* bias, T* y, int rows,  \
                                               int cols) {                                       \
        int c = blockIdx.x * blockDim.x + threadIdx.x;                                           \
        if (c >= cols) return;                                                                   \
        float b = bias_at(bias, c);                                                              \
        for (long r = blockIdx.y; r < rows; r += gridDim.y) {                                    \
            long i = r * cols + c;                                                               \
            y[i] = from_float<T>((acc ? acc[i] : 0.f) + b);                                      \
        }                                                                                        \
    }
FOR_EACH_DTYPE(LINEAR_BIAS)

// ---
// Bias gradient: column sums of dy. Shared memory: LB_ROWS · LB_COLS floats (dynamic).

#define LINEAR_BIAS_GRAD(S, T)                                                                   \
    extern "C" __global__ void linear_bias_grad_##S(const T* dy, T* db, int rows, int cols) {    \
        DYNAMIC_SHARED(float, partial);                                                          \
        int lane = threadIdx.x % LB_COLS, row_lane = threadIdx.x / LB_COLS;                      \
        int c = blockIdx.x * LB_COLS + lane;                                                     \
        float sum = 0.f;                                                                         \
        if (c < cols)                                                                            \
            for (long r = row_lane; r < rows; r += LB_ROWS) sum += to_float(dy[r * cols + c]);   \
        partial[threadIdx.x] = sum;                                                              \
        __syncthreads();                                                                         \
        if (row_lane == 0 && c < cols) {                                                         \
            float total = 0.f;                                                                   \
            for (int j = 0; j < LB_ROWS; ++j) total += partial[j * LB_COLS + lane];              \
            db[c] = from_float<T>(total);                                                        \
        }                                                                                        \
    }
FOR_EACH_DTYPE(LINEAR_BIAS_GRAD)
