// codes.cuh — the numbers both sides of the Rust/CUDA line use. build.rs turns every
// `#define NAME <integer>` here into `device::kernels::codes::NAME` on the Rust side, so each
// is written once.
#ifndef FUSED_RNN_CODES_CUH
#define FUSED_RNN_CODES_CUH

// Threads per block of the elementwise, reduction, attention and training kernels
// (`device::launch::THREADS`); the persistent kernel sizes its own blocks.
#define BLOCK_THREADS 256

// Activations: activate() in common.cuh, `Activation` on the Rust side.
#define ACT_TANH 0
#define ACT_RELU 1
#define ACT_SIGMOID 2

// Ops of binary_naive_f32 (elementwise.cu): y = a op b, and the activations' derivatives for
// the naive backward: a·(1 − b²), a·b·(1 − b), b > 0 ? a : 0.
#define OP_ADD 0
#define OP_MUL 1
#define OP_SUB 2
#define OP_DTANH 3
#define OP_DSIGMOID 4
#define OP_DRELU 5

// Cells of the training and persistent kernels (recurrent_train.cu, persistent/recurrent.cu).
#define CELL_RNN 0
#define CELL_LSTM 1
#define CELL_GRU 2

// Score modes of attend_fused (attention.cu): additive (v · tanh(q + k)) or a product (q · k).
#define ATT_ADDITIVE 0
#define ATT_PRODUCT 1

// Elements per chunk of the multi-tensor training kernels (train.cu).
#define TRAIN_CHUNK 2048

// The bias gradient's block (linear.cu): LINEAR_GRAD_COLS columns (a warp reads one row's
// consecutive values) × LINEAR_GRAD_ROWS row lanes = BLOCK_THREADS threads.
#define LINEAR_GRAD_COLS 32
#define LINEAR_GRAD_ROWS 8

// Binary ops of binary_forward (pointwise.cu): y = a + b, y = a · b.
#define POINTWISE_ADD 0
#define POINTWISE_MUL 1

// Reductions over one dimension (reduce.cu): the sum, or the sum over n (the mean).
#define REDUCE_SUM 0
#define REDUCE_MEAN 1

// Pieces per launch of concat_copy (concat.cu): the pieces come as kernel parameters.
#define CONCAT_PIECES 4

// The device's error record (common.cuh's report_bad_index, CudaDevice::check_errors): its
// size in i32 words, and the codes naming what met an index out of range.
#define ERROR_RECORD_WORDS 4
#define ERROR_INDEX_SELECT 1
#define ERROR_INDEX_SELECT_BACKWARD 2
#define ERROR_EMBEDDING 3
#define ERROR_EMBEDDING_BACKWARD 4

#endif
