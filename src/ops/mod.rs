//! Operations: argument checks and dispatch in `mod.rs`, the CPU reference in `cpu.rs`, CUDA
//! launchers (fused and naive) in `cuda.rs`.

pub(crate) mod activation;
pub mod algo;
pub mod attention;
pub mod concat;
pub mod cross_entropy;
pub mod decoder;
pub mod dropout;
pub mod embedding;
pub(crate) mod gemm_cpu;
pub mod index_select;
pub mod linear;
pub mod log_softmax;
pub(crate) mod math_cpu;
pub mod optim;
pub(crate) mod packed_gemm;
pub(crate) mod philox;
pub mod pointwise;
pub mod precision;
pub mod recurrent;
pub mod reduce;
pub mod top_k;
