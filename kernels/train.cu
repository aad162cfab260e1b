// train.cu — what a training step needs besides the layers' backward passes: a fused Adam/AdamW
// update of every parameter, the global gradient norm and its clipping, and the softmax
// cross-entropy loss with its gradient.
//
// The multi-tensor kernels read a table of tensors (TrainSlot, one per parameter or gradient)
// and a table of chunks (tensor index, first element), one chunk of TRAIN_CHUNK elements per
// block or per grid-stride iteration, so that one launch covers tensors of any sizes and a
// chunk never crosses a tensor's end. Tensors are in the storage dtype; arithmetic is f32,
// moments and master weights are f32, sums that cover many elements are f64.
//
// Variants (entry points):
//   adam_step_fused_T          Adam/AdamW over every parameter: moments, master weight (16-bit
//                              storage) and parameter in one pass; bias corrections from the host
//   grad_norm_fused_T          per-block partial sums of squares over every gradient (f64)
//   grad_scale_fused_T         every gradient times a scale, in place
//   cross_entropy_fused_T      per row (one block): online max and sum of exponentials, the row's
//                              loss, and (softmax − one-hot) / count into the gradient
//   cross_entropy_mean_f32     the mean of the rows' losses over the counted rows (one block)
#include "common.cuh"

// TRAIN_CHUNK (codes.cuh): elements per chunk, a multiple of the block size.
#define TRAIN_THREADS BLOCK_THREADS
#define TRAIN_WARPS (TRAIN_THREADS / 32)
#define NEG_INF __int_as_float(0xff800000)

// One tensor of a multi-tensor launch; the layout of `Slot` in src/train/cuda.rs.
struct TrainSlot {
    unsigned long long data;   // the parameter (Adam) or the gradient (norm, scale)
    unsigned long long grad;   // Adam: the parameter's gradient, in the parameter's dtype
    unsigned long long state;  // Adam: the tensor's first element in the moments and masters
    unsigned long long numel;
};

// Whether two stored values are the same bits.
__device__ __forceinline__ bool same_bits(float a, float b) {
    return __float_as_uint(a) == __float_as_uint(b);
}
__device__ __forceinline__ bool same_bits(f16 a, f16 b) { return a.bits == b.bits; }
__device__ __forceinline__ bool same_bits(bf16 a, bf16 b) { return a.bits == b.bits; }

__device__ __forceinline__ double warp_sum_f64(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Folds (m2, s2) into (m, s), where s is a sum of e^(x - m); m = -inf means an empty sum.
__device__ __forceinline__ void lse_combine(float& m, float& s, float m2, float s2) {
    float top = fmaxf(m, m2);
    if (top == NEG_INF) return;
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// ---
// Adam (torch.optim.Adam, and AdamW with `decoupled`): with g the gradient and w the weight,
//   AdamW: w -= decay·w (decay = lr·weight_decay);  Adam: g += weight_decay·w
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   w -= step_size · m / (√v · inv_sqrt_c2 + eps),  step_size = lr / (1 − β1^t),
//   inv_sqrt_c2 = 1 / √(1 − β2^t)
// For 16-bit storage w is the f32 master (`master` non-null) and the parameter gets w rounded.
// The master is taken from the parameter at the first step (`first`) and wherever the stored
// value is no longer the master's rounding: the parameter was changed or replaced since.
#define ADAM_STEP(S, T)                                                                          \
    extern "C" __global__ void adam_step_fused_##S(                                              \
        const TrainSlot* slots, const unsigned* chunks, float* m, float* v, float* master,       \
        int first, float beta1, float beta2, float one_minus_beta1, float one_minus_beta2,       \
        float step_size, float inv_sqrt_c2, float eps, float weight_decay, float decay,          \
        int decoupled) {                                                                         \
        TrainSlot t = slots[chunks[2 * blockIdx.x]];                                             \
        unsigned start = chunks[2 * blockIdx.x + 1];                                             \
        unsigned end = min(start + TRAIN_CHUNK, (unsigned)t.numel);                              \
        T* p = (T*)t.data;                                                                       \
        const T* g = (const T*)t.grad;                                                           \
        for (unsigned i = start + threadIdx.x; i < end; i += blockDim.x) {                       \
            unsigned long long k = t.state + i;                                                  \
            T stored = p[i];                                                                     \
            float w = to_float(stored);                                                          \
            if (master && !first) {                                                              \
                float kept = master[k];                                                          \
                if (same_bits(from_float<T>(kept), stored)) w = kept;                            \
            }                                                                                    \
            float grad = to_float(g[i]);                                                         \
            if (decoupled) w -= decay * w;                                                       \
            else grad += weight_decay * w;                                                       \
            float mk = beta1 * m[k] + one_minus_beta1 * grad;                                    \
            float vk = beta2 * v[k] + one_minus_beta2 * grad * grad;                             \
            m[k] = mk;                                                                           \
            v[k] = vk;                                                                           \
            w -= step_size * mk / (sqrtf(vk) * inv_sqrt_c2 + eps);                               \
            if (master) master[k] = w;                                                           \
            p[i] = from_float<T>(w);                                                             \
        }                                                                                        \
    }
FOR_EACH_DTYPE(ADAM_STEP)

// ---
// Gradient norm: block b sums the squares of chunks b, b + gridDim.x, ... (f32 within a thread's
// share of a chunk, f64 across chunks and threads) into partial[b]; the host adds the partials.
#define GRAD_NORM(S, T)                                                                          \
    extern "C" __global__ void grad_norm_fused_##S(const TrainSlot* slots,                       \
                                                   const unsigned* chunks, int num_chunks,       \
                                                   double* partial) {                            \
        __shared__ double warps[TRAIN_WARPS];                                                    \
        double acc = 0.0;                                                                        \
        for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {                               \
            TrainSlot t = slots[chunks[2 * c]];                                                  \
            unsigned start = chunks[2 * c + 1];                                                  \
            unsigned end = min(start + TRAIN_CHUNK, (unsigned)t.numel);                          \
            const T* g = (const T*)t.data;                                                       \
            float sum = 0.f;                                                                     \
            for (unsigned i = start + threadIdx.x; i < end; i += blockDim.x) {                   \
                float x = to_float(g[i]);                                                        \
                sum += x * x;                                                                    \
            }                                                                                    \
            acc += sum;                                                                          \
        }                                                                                        \
        acc = warp_sum_f64(acc);                                                                 \
        if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = acc;                              \
        __syncthreads();                                                                         \
        if (threadIdx.x == 0) {                                                                  \
            double total = 0.0;                                                                  \
            for (int w = 0; w < TRAIN_WARPS; ++w) total += warps[w];                             \
            partial[blockIdx.x] = total;                                                         \
        }                                                                                        \
    }
FOR_EACH_DTYPE(GRAD_NORM)

#define GRAD_SCALE(S, T)                                                                         \
    extern "C" __global__ void grad_scale_fused_##S(const TrainSlot* slots,                      \
                                                    const unsigned* chunks, int num_chunks,      \
                                                    float scale) {                               \
        for (int c = blockIdx.x; c < num_chunks; c += gridDim.x) {                               \
            TrainSlot t = slots[chunks[2 * c]];                                                  \
            unsigned start = chunks[2 * c + 1];                                                  \
            unsigned end = min(start + TRAIN_CHUNK, (unsigned)t.numel);                          \
            T* g = (T*)t.data;                                                                   \
            for (unsigned i = start + threadIdx.x; i < end; i += blockDim.x)                     \
                g[i] = from_float<T>(to_float(g[i]) * scale);                                    \
        }                                                                                        \
    }
FOR_EACH_DTYPE(GRAD_SCALE)

// ---
// Softmax cross-entropy, one block (TRAIN_THREADS) per row of logits [N, V]. A row whose target
// is `ignore` gets a zero gradient and loss 0; otherwise, with log Z = max + log Σ e^(x − max)
// taken in one pass (running maximum and rescaled sum per thread, then combined),
//   loss[r] = log Z − x[t],   grad[r, j] = (e^(x_j − log Z) − [j = t]) · scale
// where scale = 1 / (counted rows) comes from the host. Targets were range-checked there.
#define CROSS_ENTROPY(S, T)                                                                      \
    extern "C" __global__ void cross_entropy_fused_##S(                                          \
        const T* logits, const long long* targets, T* grad, float* loss, int vocab,              \
        long long ignore, float scale) {                                                         \
        __shared__ float slot_m[TRAIN_WARPS], slot_s[TRAIN_WARPS];                               \
        long long row = blockIdx.x;                                                              \
        const T* x = logits + row * vocab;                                                       \
        T* g = grad + row * vocab;                                                               \
        long long target = targets[row];                                                         \
        if (target == ignore) {                                                                  \
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) g[j] = from_float<T>(0.f);     \
            if (threadIdx.x == 0) loss[row] = 0.f;                                               \
            return;                                                                              \
        }                                                                                        \
        float m = NEG_INF, s = 0.f;                                                              \
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)                                    \
            lse_combine(m, s, to_float(x[j]), 1.f);                                              \
        for (int o = 16; o > 0; o >>= 1) {                                                       \
            float m2 = __shfl_xor_sync(0xffffffffu, m, o);                                       \
            float s2 = __shfl_xor_sync(0xffffffffu, s, o);                                       \
            lse_combine(m, s, m2, s2);                                                           \
        }                                                                                        \
        if ((threadIdx.x & 31) == 0) {                                                           \
            slot_m[threadIdx.x >> 5] = m;                                                        \
            slot_s[threadIdx.x >> 5] = s;                                                        \
        }                                                                                        \
        __syncthreads();                                                                         \
        m = slot_m[0];                                                                           \
        s = slot_s[0];                                                                           \
        for (int w = 1; w < TRAIN_WARPS; ++w) lse_combine(m, s, slot_m[w], slot_s[w]);           \
        float log_z = m + logf(s);                                                               \
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {                                  \
            float p = expf(to_float(x[j]) - log_z);                                              \
            g[j] = from_float<T>((p - (j == target ? 1.f : 0.f)) * scale);                       \
        }                                                                                        \
        if (threadIdx.x == 0) loss[row] = log_z - to_float(x[target]);                           \
    }
FOR_EACH_DTYPE(CROSS_ENTROPY)

// The rows' losses added in f64 (one block, a fixed order) and times `scale`.
extern "C" __global__ void cross_entropy_mean_f32(const float* loss, int rows, double scale,
                                                  float* mean) {
    __shared__ double warps[TRAIN_WARPS];
    double acc = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) acc += loss[r];
    acc = warp_sum_f64(acc);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < TRAIN_WARPS; ++w) total += warps[w];
        *mean = (float)(total * scale);
    }
}
