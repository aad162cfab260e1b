//! cuBLAS GEMM in row-major terms, storage dtype in, f32 out, f32 accumulation.

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
        Ok(())
    }
}

/// How a batched GEMM reads its right operand B.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RightOperand {
    /// B is [n, k] row-major: C = A·Bᵀ.
    Transposed,
    /// B is [k, n] row-major: C = A·B.
    Plain,
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

impl Lane {
    /// For i in 0..count: C_i[m, n] = A_i[m, k] · op(B_i), C row-major f32 (leading dimension
    /// `ldc`, stride `stride_c`), in one cuBLAS call.
    ///
    /// # Safety
    /// Every matrix of the batch must lie in a live device buffer on this lane's device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_batched(
        &self,
        count: usize,
        m: usize,
        n: usize,
        k: usize,
        a: Strided,
        b: Strided,
        b_op: RightOperand,
        c: u64,
        ldc: usize,
        stride_c: usize,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major C is column-major Cᵀ = op(B)ᵀ · Aᵀ.
        let op_b = match b_op {
            RightOperand::Transposed => sys::cublasOperation_t::CUBLAS_OP_T,
            RightOperand::Plain => sys::cublasOperation_t::CUBLAS_OP_N,
        };
        result::gemm_strided_batched_ex(
            *self.blas.handle(),
            op_b,
            sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            b.mat.ptr as *const _,
            cuda_type(b.mat.dtype),
            b.mat.ld as i32,
            b.stride as i64,
            a.mat.ptr as *const _,
            cuda_type(a.mat.dtype),
            a.mat.ld as i32,
            a.stride as i64,
            &beta as *const f32 as *const _,
            c as *mut _,
            sys::cudaDataType::CUDA_R_32F,
            ldc as i32,
            stride_c as i64,
            count as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
        Ok(())
    }
}
