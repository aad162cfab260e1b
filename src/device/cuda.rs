//! One CUDA device: context, lanes (stream + cuBLAS and cuBLASLt handles) and the kernel modules
//! loaded on it.
//!
//! Lane 0 is the device's stream, where every call starts and ends; lane 1 runs work that is
//! independent of lane 0's (the reverse direction of a bidirectional layer) concurrently. Two
//! more lanes on private streams are used only while capturing CUDA graphs, so that nothing
//! anyone else enqueues on the device's stream can be recorded into a graph.

use super::gemm_lt::BlasLt;
use super::kernels;
use super::launch::{launch, per_element};
use crate::dtype::{CudaData, DType, Element};
use crate::error::{Error, Result};
use crate::nvrtc;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    result as dr, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How a kernel module was loaded on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedVia {
    /// The CUBIN build.rs made for this exact architecture.
    Cubin,
    /// The embedded compute_80 PTX, JIT-compiled by the driver.
    Ptx,
    /// The embedded source, compiled now by NVRTC for this device.
    Nvrtc,
}

/// A stream with a cuBLAS handle bound to it, and a cuBLASLt handle (with its own workspace)
/// for the GEMMs with a fused epilogue (None without libcublasLt).
pub(crate) struct Lane {
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    pub(super) lt: Option<BlasLt>,
    /// cuBLAS's workspace, owned here so that graph capture never makes cuBLAS allocate, and
    /// one per lane so that concurrent GEMMs never share it. Dropped after `blas`.
    _workspace: CudaSlice<u8>,
}

impl Lane {
    fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)?;
        let ptr = super::dev_ptr(&workspace, &stream);
        // SAFETY: the handle is live and `workspace` outlives it (fields drop in order).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                ptr as *mut _,
                BLAS_WORKSPACE_BYTES,
            )
        }
        .result()?;
        let lt = BlasLt::new(&stream, BLAS_WORKSPACE_BYTES)?;
        Ok(Lane {
            stream,
            blas,
            lt,
            _workspace: workspace,
        })
    }
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    lanes: [Lane; 2],
    capture_lanes: [Lane; 2],
    /// Serialises the library's enqueue sequences on this device: the lanes' cuBLAS handles
    /// must not be used from two threads at once.
    queue: Mutex<()>,
    compute_capability: (i32, i32),
    card: String,
    modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, LoadedVia)>>,
    /// Entry points looked up once (a decoding loop asks for the same ones every step).
    functions: Mutex<HashMap<(&'static str, &'static str, DType), CudaFunction>>,
    /// Run-time specialisations by key (see `jit`).
    pub(super) jit: Mutex<HashMap<u64, Arc<CudaModule>>>,
    poison: AtomicBool,
    /// Set by `set_cublaslt(false)`: the GEMMs with a fused epilogue run on cuBLAS instead.
    no_cublaslt: AtomicBool,
    /// The error record kernels report bad device-side indices to (see `errors`).
    errors: CudaSlice<i32>,
}

/// 0xFF bytes are NaN in f32, f16 and bf16.
pub(crate) const POISON_BYTE: u8 = 0xff;

/// Size of the cuBLAS workspace, and of the cuBLASLt one (NVIDIA recommends 32 MiB on Hopper).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Fails unless the driver library can be opened (cudarc panics on a missing library).
fn require_libcuda() -> Result<()> {
    if super::libraries::present(super::libraries::DRIVER) {
        Ok(())
    } else {
        Err(Error::NoCuda(
            "libcuda (the NVIDIA driver library) was not found".into(),
        ))
    }
}

/// The CUDA driver version as (major, minor), or an error when there is no driver.
pub fn driver_version() -> Result<(i32, i32)> {
    require_libcuda()?;
    let mut v = 0;
    // SAFETY: `v` is valid for one c_int write.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result()?;
    Ok((v / 1000, (v % 1000) / 10))
}

impl CudaDevice {
    /// Opens device `ordinal` with a new stream of its own.
    pub fn new(ordinal: usize) -> Result<Self> {
        require_libcuda()?;
        dr::init().map_err(|e| Error::NoCuda(format!("cuInit failed: {e}")))?;
        let count = CudaContext::device_count()?;
        if ordinal >= count as usize {
            return Err(Error::NoCuda(format!(
                "no CUDA device {ordinal} ({count} device(s) present)"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.new_stream()?;
        Self::with_stream(stream)
    }

    /// Runs everything on `stream`, so that a crate that owns the stream orders our work with
    /// its own without extra synchronisation (`Device::from` wraps it).
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self> {
        if !super::libraries::present(super::libraries::CUBLAS) {
            return Err(Error::NoCuda("libcublas was not found".into()));
        }
        let ctx = stream.context().clone();
        let second = ctx.new_stream()?;
        let errors = stream.alloc_zeros::<i32>(super::errors::RECORD_WORDS)?;
        Ok(CudaDevice {
            compute_capability: ctx.compute_capability()?,
            card: ctx.name()?,
            lanes: [Lane::new(stream)?, Lane::new(second)?],
            capture_lanes: [Lane::new(ctx.new_stream()?)?, Lane::new(ctx.new_stream()?)?],
            queue: Mutex::new(()),
            ctx,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            jit: Mutex::new(HashMap::new()),
            poison: AtomicBool::new(false),
            no_cublaslt: AtomicBool::new(false),
            errors,
        })
    }

    pub fn name(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!(
            "cuda:{} ({}, sm_{major}{minor})",
            self.ctx.ordinal(),
            self.card
        )
    }

    pub fn card(&self) -> &str {
        &self.card
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Whether `ctx` is this device's context (a buffer of `ctx` is usable here).
    pub(crate) fn owns(&self, ctx: &CudaContext) -> bool {
        ctx.cu_ctx() == self.ctx.cu_ctx()
    }

    /// The stream every call is ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.lanes[0].stream
    }

    /// The lanes that run work now.
    pub(crate) fn lanes(&self) -> &[Lane; 2] {
        &self.lanes
    }

    /// The lanes that only ever record into a CUDA graph.
    pub(crate) fn capture_lanes(&self) -> &[Lane; 2] {
        &self.capture_lanes
    }

    /// Holds this device's enqueue lock (see `queue`).
    pub(crate) fn lock_queue(&self) -> std::sync::MutexGuard<'_, ()> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream().synchronize()?)
    }

    /// When on, every output buffer the library allocates is filled with NaN bytes first, so a
    /// kernel that leaves an element unwritten is caught by any comparison. For tests.
    pub fn set_poison_outputs(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Whether GEMMs with a fused epilogue (the linear layer's forward with its bias) may use
    /// cuBLASLt: on by default, where libcublasLt exists. Off, they run as cuBLAS GEMMs and a
    /// bias kernel, the path taken anyway where cuBLASLt has no algorithm: for tests and
    /// comparisons.
    pub fn set_cublaslt(&self, on: bool) {
        self.no_cublaslt.store(!on, Ordering::Relaxed);
    }

    pub(crate) fn cublaslt(&self) -> bool {
        !self.no_cublaslt.load(Ordering::Relaxed)
    }

    /// An uninitialised buffer of `len` elements that a kernel will write whole (NaN-filled
    /// when poisoning is on).
    pub(crate) fn alloc_output<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the caller writes every element before reading; poisoning fills it first.
        let buf = unsafe { self.stream().alloc::<T>(len.max(1))? };
        if self.poisoning() {
            let (ptr, _guard) = buf.device_ptr(self.stream());
            // SAFETY: `ptr` addresses `buf`, which holds len.max(1) elements of T.
            unsafe { self.fill_async(ptr, POISON_BYTE, len.max(1) * std::mem::size_of::<T>())? };
        }
        Ok(buf)
    }

    /// The device address of the error record (ERROR_RECORD_WORDS i32s) that kernels
    /// report an out-of-range device-side index to.
    pub(crate) fn error_record(&self) -> u64 {
        super::dev_ptr(&self.errors, self.stream())
    }

    /// Waits for the work enqueued on the device's stream, then returns the first out-of-range
    /// index a kernel met in device memory since the last check (`Error::Index`: which ids,
    /// the position, the value and the range) and clears the record; Ok when there was none.
    /// Kernels never follow such an index (their outputs say what they did instead: zeros for
    /// `ops::index_select`), so this is the one place the mistake shows; call it where a
    /// decoding loop reads its stop flag, or after a step.
    pub fn check_errors(&self) -> Result<()> {
        let record = self.stream().clone_dtoh(&self.errors)?;
        let found = super::errors::decode(&record);
        if record.first().is_some_and(|&code| code != 0) {
            let ptr = self.error_record();
            // SAFETY: `ptr` addresses the record, RECORD_WORDS i32s of this device.
            unsafe { self.fill_async(ptr, 0, super::errors::RECORD_WORDS * 4)? };
        }
        found
    }

    pub(crate) fn poisoning(&self) -> bool {
        self.poison.load(Ordering::Relaxed)
    }

    /// Enqueues a copy of `bytes` bytes between device addresses on this device's stream.
    ///
    /// # Safety
    /// Both ranges must lie in live allocations of this context.
    pub(crate) unsafe fn copy_async(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller's contract (see # Safety) covers both `bytes`-byte ranges; the
        // stream is this device's, live while `self` is.
        unsafe {
            Ok(dr::memcpy_dtod_async(
                dst,
                src,
                bytes,
                self.stream().cu_stream(),
            )?)
        }
    }

    /// A copy of `src`, a buffer of this device, made on the device's stream.
    pub(crate) fn copy_data(&self, src: &CudaData) -> Result<CudaData> {
        let out = self.alloc_output_data(src.dtype(), src.len())?;
        let dst = super::data_ptr(&out, self.stream());
        let bytes = src.len() * src.dtype().size_in_bytes();
        super::reading(src, self.stream(), |src| {
            // SAFETY: both buffers hold `bytes` bytes on this device.
            unsafe { self.copy_async(dst, src, bytes) }
        })?;
        Ok(out)
    }

    /// `src`, a buffer of this device, in `dtype`: a copy when it is in that dtype already,
    /// else converted by the elementwise kernels (through f32 between two 16-bit types).
    pub(crate) fn convert_data(&self, src: &CudaData, dtype: DType) -> Result<CudaData> {
        use kernels::ids::elementwise::{CONVERT_NAIVE as CONVERT, LOAD_NAIVE as LOAD};
        if src.is_empty() {
            return self.empty_data(dtype);
        }
        match (src.dtype(), dtype) {
            (from, to) if from == to => self.copy_data(src),
            (DType::F32, to) => self.cast(src, CONVERT, to, to),
            (from, DType::F32) => self.cast(src, LOAD, from, DType::F32),
            (from, to) => {
                let wide = self.cast(src, LOAD, from, DType::F32)?;
                self.cast(&wide, CONVERT, to, to)
            }
        }
    }

    /// `src` through `kernel` of elementwise.cu in `kernel_dtype` (`load_naive`: T → f32,
    /// `convert_naive`: f32 → T) into a new buffer of `out`.
    fn cast(
        &self,
        src: &CudaData,
        kernel: kernels::Kernel,
        kernel_dtype: DType,
        out: DType,
    ) -> Result<CudaData> {
        let n = src.len();
        let count = i32::try_from(n).map_err(|_| Error::TooLarge {
            what: format!("a dtype conversion of {n} elements on the device"),
            needed: format!("{n} elements"),
            limit: "i32::MAX elements per launch".into(),
        })?;
        let f = self.function(kernel, kernel_dtype)?;
        let stream = self.stream();
        let dst = self.alloc_output_data(out, n)?;
        let y = super::data_ptr(&dst, stream);
        super::reading(src, stream, |x| -> Result<()> {
            // SAFETY: `x` and `y` hold n elements each of the kernel's input and output dtypes.
            unsafe { launch!(stream, &f, per_element(n); x, y, count) };
            Ok(())
        })?;
        Ok(dst)
    }

    /// Enqueues filling `bytes` bytes at `dst` with `byte`.
    ///
    /// # Safety
    /// The range must lie in a live allocation of this context.
    pub(crate) unsafe fn fill_async(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        // SAFETY: the caller vouches for the range.
        unsafe { super::fill_bytes_async(self.stream(), dst, byte, bytes) }
    }

    pub(crate) fn alloc_output_data(&self, dtype: DType, len: usize) -> Result<CudaData> {
        crate::with_dtype!(dtype, T => Ok(T::wrap_cuda(self.alloc_output::<T>(len)?)))
    }

    /// A slice of no elements. The driver refuses zero-byte allocations (cuMemAlloc), so it
    /// owns a block of one element that nothing reads or writes.
    pub(crate) fn empty<T: DeviceRepr>(&self) -> Result<CudaSlice<T>> {
        let ptr = self.alloc_output::<T>(1)?.leak();
        // SAFETY: `ptr` is a live allocation of this stream's context that the leaked slice
        // gave up; the new slice (length 0, so no element is ever accessed) frees it.
        Ok(unsafe { self.stream().upgrade_device_ptr::<T>(ptr, 0) })
    }

    /// The storage of a zero-size tensor: `empty` in `dtype`.
    pub(crate) fn empty_data(&self, dtype: DType) -> Result<CudaData> {
        crate::with_dtype!(dtype, T => Ok(T::wrap_cuda(self.empty::<T>()?)))
    }

    /// The kernel module `file` (a `kernels/*.cu` stem), loaded once per device: the CUBIN when
    /// it was built for this architecture, else the compute_80 PTX, else the source through
    /// NVRTC.
    pub fn module(&self, file: &'static str) -> Result<(Arc<CudaModule>, LoadedVia)> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = modules.get(file) {
            return Ok(found.clone());
        }
        let image = kernels::image(file)
            .ok_or_else(|| Error::Nvrtc(format!("no kernel file named `{file}`")))?;
        let (major, minor) = self.compute_capability;
        let arch = format!("sm_{major}{minor}");
        // Each way in, in order; the reasons the earlier ones failed go into the final error.
        let mut failures = Vec::new();
        let mut attempt = |via: LoadedVia, image: Option<Ptx>, why_not: &str| {
            let Some(image) = image else {
                failures.push(format!("{via:?}: {why_not}"));
                return None;
            };
            match self.ctx.load_module(image) {
                Ok(module) => Some((module, via)),
                Err(e) => {
                    failures.push(format!("{via:?}: {e}"));
                    None
                }
            }
        };
        let cubin = image.cubin.filter(|_| image.cubin_arch == arch);
        let ptx = image.ptx.filter(|_| major >= 8);
        let found = attempt(
            LoadedVia::Cubin,
            cubin.map(|bin| Ptx::from_binary(bin.to_vec())),
            &format!("no CUBIN for {arch}"),
        )
        .or_else(|| {
            attempt(
                LoadedVia::Ptx,
                ptx.map(Ptx::from_src),
                "no PTX for this device",
            )
        });
        let loaded = match found {
            Some(found) => found,
            None => {
                let compiled =
                    nvrtc::compile(image.source, &format!("{file}.cu"), &arch).map_err(|e| {
                        Error::Nvrtc(format!("{file}.cu: {e} ({})", failures.join("; ")))
                    })?;
                let module = self.ctx.load_module(Ptx::from_binary(compiled.image))?;
                (module, LoadedVia::Nvrtc)
            }
        };
        modules.insert(file, loaded.clone());
        Ok(loaded)
    }

    /// `kernel`'s entry point for `dtype`.
    pub(crate) fn function(&self, kernel: kernels::Kernel, dtype: DType) -> Result<CudaFunction> {
        if !kernel.dtypes.contains(&dtype) {
            return Err(Error::Unsupported {
                request: format!("kernel {} in {dtype}", kernel.op_variant),
                reason: format!("it is built for {:?} only", kernel.dtypes),
            });
        }
        let key = (kernel.file, kernel.op_variant, dtype);
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let (module, _) = self.module(kernel.file)?;
        let f = module.load_function(&kernel.entry_point(dtype))?;
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        Ok(functions.entry(key).or_insert(f).clone())
    }

    /// Registers per thread and local memory per thread (stack and spills) of entry point
    /// `entry` of kernel file `file`, as the driver reports them for the loaded image.
    pub fn function_resources(&self, file: &'static str, entry: &str) -> Result<(i32, i32)> {
        use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
        let (module, _) = self.module(file)?;
        let f = module.load_function(entry)?;
        // SAFETY: `f` is a function of a module loaded on this context.
        unsafe {
            let regs = dr::function::get_function_attribute(
                f.cu_function(),
                Attr::CU_FUNC_ATTRIBUTE_NUM_REGS,
            )?;
            let local = dr::function::get_function_attribute(
                f.cu_function(),
                Attr::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES,
            )?;
            Ok((regs, local))
        }
    }

    /// Copies a host slice to a new device buffer.
    pub(crate) fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream().clone_htod(host)?)
    }
}
