//! cuBLASLt: nn.Linear's forward, y = x Wᵀ + b, as one GEMM with the bias added in its
//! epilogue. Storage dtype for every matrix and the bias, f32 compute and scale.
//!
//! cudarc's safe `CudaBlasLT::matmul` computes f32 in TF32 and takes typed slices; here the
//! compute type is plain f32 (the crate's f32 tolerance is 2e-5) and operands are addresses, as
//! for every other GEMM of the crate. Descriptors are made per call (a few µs of host work).

use super::Lane;
use crate::dtype::DType;
use crate::error::Result;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream};
use std::ffi::c_void;
use std::sync::Arc;

/// A cuBLASLt handle with the workspace its GEMMs use, one per lane (so that concurrent GEMMs
/// never share a workspace and graph capture never makes cuBLASLt allocate).
pub(crate) struct BlasLt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
}

// SAFETY: the handle is only used under its device's enqueue lock (`CudaDevice::lock_queue`),
// like the lane's cuBLAS handle, which cudarc marks Send and Sync.
unsafe impl Send for BlasLt {}
// SAFETY: as above.
unsafe impl Sync for BlasLt {}

impl BlasLt {
    /// A handle with a workspace of `workspace_bytes` on `stream`'s device, or None when
    /// libcublasLt is missing (the linear forward then runs on cuBLAS and a bias kernel).
    pub(super) fn new(stream: &Arc<CudaStream>, workspace_bytes: usize) -> Result<Option<Self>> {
        // cudarc panics on a missing library.
        if !super::libraries::present(super::libraries::CUBLAS_LT) {
            return Ok(None);
        }
        stream.context().bind_to_thread()?;
        let workspace = stream.alloc_zeros::<u8>(workspace_bytes)?;
        let handle = lt::create_handle()?;
        Ok(Some(BlasLt { handle, workspace }))
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is destroyed once, here; the workspace
        // (a field) is freed after it. A failure cannot be reported from a drop.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// y[rows, n] = x[rows, k] · W[n, k]ᵀ (+ bias[n]): dense row-major matrices in `dtype`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinearLt {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    /// The bias's address, or None for no bias.
    pub bias: Option<u64>,
    pub y: u64,
    pub dtype: DType,
}

fn cuda_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

/// The largest power of two (up to 256, cuBLASLt's default assumption) dividing `ptr`.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

/// A descriptor destroyed when dropped (also on the error paths).
struct Owned<T: Copy> {
    raw: T,
    destroy: unsafe fn(T) -> std::result::Result<(), CublasError>,
}

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `raw` was created by the matching create call and is destroyed once.
        let _ = unsafe { (self.destroy)(self.raw) };
    }
}

fn layout(
    dtype: DType,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<Owned<sys::cublasLtMatrixLayout_t>> {
    let raw = lt::create_matrix_layout(cuda_type(dtype), rows as u64, cols as u64, ld as i64)?;
    Ok(Owned {
        raw,
        destroy: lt::destroy_matrix_layout,
    })
}

/// Sets a descriptor attribute from a plain value.
///
/// # Safety
/// `desc` must be live, and `T` the attribute's C type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `value` is valid for `size` bytes; the caller vouches for the rest.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size) }?;
    Ok(())
}

/// As `set_desc`, for a preference attribute.
///
/// # Safety
/// `pref` must be live, and `T` the attribute's C type.
unsafe fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `value` is valid for `size` bytes; the caller vouches for the rest.
    unsafe { lt::set_matmul_pref_attribute(pref, attr, value as *const T as *const c_void, size) }?;
    Ok(())
}

fn not_supported(e: &CublasError) -> bool {
    e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
}

impl Lane {
    /// Enqueues `g` on this lane with cuBLASLt. Ok(false), with nothing enqueued, when cuBLASLt
    /// cannot: the library is missing, the bias is not 16-byte aligned, or it has no algorithm
    /// for this shape, dtype and alignment ("not supported"); the caller then runs cuBLAS and a
    /// bias kernel. Every other cuBLASLt failure is an error.
    ///
    /// Row-major y [rows, n] is column-major yᵀ [n, rows] = W · xᵀ: A is W (column-major
    /// [k, n], transposed), B is x (column-major [k, rows]), and the bias, one value per row of
    /// yᵀ, is what cuBLASLt's BIAS epilogue broadcasts over the columns.
    ///
    /// # Safety
    /// `x`, `w`, `y` (and the bias) must address live buffers of this lane's device holding
    /// rows·k, n·k, rows·n (and n) elements of `g.dtype`; all sizes at least 1 and at most
    /// i32::MAX.
    pub(crate) unsafe fn linear_lt(&self, g: &LinearLt) -> Result<bool> {
        let Some(blas) = &self.lt else {
            return Ok(false);
        };
        // The epilogue reads the bias in vectors; the preferences cover only A, B, C and D.
        if g.bias.is_some_and(|b| b % 16 != 0) {
            return Ok(false);
        }
        self.stream.context().bind_to_thread()?;
        let desc = Owned {
            raw: lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )?,
            destroy: lt::destroy_matmul_desc,
        };
        use sys::cublasLtMatmulDescAttributes_t as D;
        // cublasOperation_t (int32): 1 = CUBLAS_OP_T, 0 = CUBLAS_OP_N.
        let (transposed, as_is) = (1i32, 0i32);
        let epilogue = match g.bias {
            Some(_) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        } as u32;
        // SAFETY: `desc` is live; the values have the attributes' C types (int32 operations,
        // uint32 epilogue, a device pointer).
        unsafe {
            set_desc(desc.raw, D::CUBLASLT_MATMUL_DESC_TRANSA, &transposed)?;
            set_desc(desc.raw, D::CUBLASLT_MATMUL_DESC_TRANSB, &as_is)?;
            set_desc(desc.raw, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if let Some(bias) = g.bias {
                set_desc(desc.raw, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            }
        }
        let a = layout(g.dtype, g.k, g.n, g.k)?;
        let b = layout(g.dtype, g.k, g.rows, g.k)?;
        let c = layout(g.dtype, g.n, g.rows, g.n)?;
        let pref = Owned {
            raw: lt::create_matmul_pref()?,
            destroy: lt::destroy_matmul_pref,
        };
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let workspace_bytes = blas.workspace.len() as u64;
        // SAFETY: `pref` is live; workspace bytes are uint64, alignments uint32.
        unsafe {
            set_pref(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace_bytes,
            )?;
            set_pref(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                &alignment(g.w),
            )?;
            set_pref(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                &alignment(g.x),
            )?;
            set_pref(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                &alignment(g.y),
            )?;
            set_pref(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                &alignment(g.y),
            )?;
        }
        // SAFETY: every descriptor is live.
        let heuristic = match unsafe {
            lt::get_matmul_algo_heuristic(
                blas.handle,
                desc.raw,
                a.raw,
                b.raw,
                c.raw,
                c.raw,
                pref.raw,
            )
        } {
            Ok(h) => h,
            Err(e) if not_supported(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let (alpha, beta) = (1f32, 0f32);
        let workspace = super::dev_ptr(&blas.workspace, &self.stream);
        // SAFETY: the caller vouches for x, w, y and the bias; the workspace is this handle's,
        // as large as the preference said; beta = 0, so y (C) is not read before it is written.
        let done = unsafe {
            lt::matmul(
                blas.handle,
                desc.raw,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                g.w as *const c_void,
                a.raw,
                g.x as *const c_void,
                b.raw,
                g.y as *const c_void,
                c.raw,
                g.y as *mut c_void,
                c.raw,
                &heuristic.algo,
                workspace as *mut c_void,
                blas.workspace.len(),
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        match done {
            Ok(()) => Ok(true),
            Err(e) if not_supported(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
