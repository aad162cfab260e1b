//! cuBLAS GEMM in row-major terms: storage dtype in, f32 (or the storage dtype) out, f32
//! accumulation.

use super::{Lane, MatRef};
use crate::dtype::DType;
use crate::error::Result;
use cudarc::cublas::{result, sys};

fn cuda_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

impl Lane {
    /// C[m, n] = A[m, k] · B[n, k]ᵀ + beta · C, with C row-major f32 (leading dimension `ldc`),
    /// enqueued on `lane`.
    ///
    /// Row-major C is column-major Cᵀ = B · Aᵀ, so cuBLAS gets (B, transposed) × (A, as is).
    ///
    /// # Safety
    /// `a`, `b` and `c` must address live device buffers on this lane's device holding at least
    /// (m-1)·ld + k, (n-1)·ld + k and (m-1)·ldc + n elements of their dtypes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_abt(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: MatRef,
        b: MatRef,
        c: u64,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        let alpha = 1.0f32;
        // SAFETY: the caller's contract (see # Safety) covers the three device ranges cuBLAS
        // reads and writes; `alpha` and `beta` are host scalars (cuBLAS's default pointer
        // mode), live for the call, which reads them before it returns; the handle is this
        // lane's, bound to its stream.
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b.ptr as *const _,
                cuda_type(b.dtype),
                b.ld as i32,
                a.ptr as *const _,
                cuda_type(a.dtype),
                a.ld as i32,
                &beta as *const f32 as *const _,
                c as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                ldc as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}

/// How a GEMM reads an operand stored row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    /// As it is stored.
    AsIs,
    /// Transposed: an A stored [k, m], a B stored [n, k].
    Transposed,
}

/// One matrix of a strided batch: its first element, and the distance (elements) to the next.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    pub mat: MatRef,
    pub stride: usize,
}

impl Strided {
    /// Row-major matrices at `ptr`, `ld` elements per row, `stride` elements apart.
    pub fn new(ptr: u64, ld: usize, dtype: crate::DType, stride: usize) -> Self {
        Strided {
            mat: MatRef { ptr, ld, dtype },
            stride,
        }
    }
}

/// For i in 0..count: C_i[m, n] = op(A_i)[m, k] · op(B_i)[k, n] + beta · C_i, all row-major;
/// C in its own dtype (f32, or A's and B's), f32 accumulation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batched {
    pub count: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strided,
    pub a_op: Op,
    pub b: Strided,
    pub b_op: Op,
    pub c: Strided,
    pub beta: f32,
}

impl Lane {
    /// Enqueues `g` as one cuBLAS call.
    ///
    /// # Safety
    /// Every matrix of the batch must lie in a live device buffer on this lane's device.
    pub(crate) unsafe fn gemm_batched(&self, g: &Batched) -> Result<()> {
        let alpha = 1.0f32;
        // Row-major C is column-major Cᵀ = op(B)ᵀ · op(A)ᵀ, and a row-major operand is its
        // transpose in column-major terms: an operand read as stored needs no transpose.
        let op = |o: Op| match o {
            Op::AsIs => sys::cublasOperation_t::CUBLAS_OP_N,
            Op::Transposed => sys::cublasOperation_t::CUBLAS_OP_T,
        };
        // SAFETY: the caller's contract (see # Safety) covers every matrix of the batch that
        // cuBLAS reads or writes; `alpha` and `g.beta` are host scalars (cuBLAS's default
        // pointer mode), live for the call, which reads them before it returns; the handle is
        // this lane's, bound to its stream.
        unsafe {
            result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.b_op),
                op(g.a_op),
                g.n as i32,
                g.m as i32,
                g.k as i32,
                &alpha as *const f32 as *const _,
                g.b.mat.ptr as *const _,
                cuda_type(g.b.mat.dtype),
                g.b.mat.ld as i32,
                g.b.stride as i64,
                g.a.mat.ptr as *const _,
                cuda_type(g.a.mat.dtype),
                g.a.mat.ld as i32,
                g.a.stride as i64,
                &g.beta as *const f32 as *const _,
                g.c.mat.ptr as *mut _,
                cuda_type(g.c.mat.dtype),
                g.c.mat.ld as i32,
                g.c.stride as i64,
                g.count as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}
