//! Persistent sequence loops (kernels/persistent/recurrent.cu): one cooperative launch per
//! layer-direction with the block's slice of W_hh in shared memory. Which shapes can run one
//! on a device, the shape-specialised source, and why not when they cannot.

use super::{Cell, Dims};
use crate::device::CudaDevice;
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::CudaFunction;

const SOURCE: &str = include_str!("../../../kernels/persistent/recurrent.cu");
const COMMON: &str = include_str!("../../../kernels/common.cuh");
/// THREADS in the kernel.
pub(crate) const THREADS: u32 = 256;
/// Sync words per lane: the failure flag and the barrier's counter.
pub(crate) const SYNC_WORDS: usize = 2;

/// Whether W_hh·h runs on tensor cores in `dtype`: mma.sync (f32 accumulate) for 16-bit
/// storage, unless `FUSED_RNN_PERSISTENT=fma` asks for CUDA-core FMAs (for comparing them).
fn tensor_cores_for(dtype: DType) -> Result<bool> {
    let wanted = match std::env::var("FUSED_RNN_PERSISTENT").as_deref() {
        Err(_) | Ok("mma") => true,
        Ok("fma") => false,
        Ok(other) => {
            return Err(Error::Config(format!(
                "FUSED_RNN_PERSISTENT: unknown variant `{other}` (expected mma or fma)"
            )))
        }
    };
    Ok(wanted && dtype != DType::F32)
}

/// The kernel's largest batch (its accumulators are per batch row).
pub(crate) const MAX_BATCH: usize = 64;
/// The largest batch `Algo::Auto` runs persistently in `dtype`. On an H100 (BENCHMARKS.md, two
/// runs) the persistent kernel beat the stepwise path (a cuBLAS GEMM per step, on tensor cores
/// for 16-bit storage) at every measured batch up to 16 in f32, and up to 4 in bf16, where its
/// tensor-core W_hh·h lost to cuBLAS at batch 8 and 16.
pub(crate) fn auto_max_batch(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 16,
        DType::F16 | DType::BF16 => 4,
    }
}

/// One specialisation: everything the kernel takes as a compile-time constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    pub cell: Cell,
    pub hidden: usize,
    pub batch: usize,
    /// Hidden units per block.
    pub units: usize,
    pub dtype: DType,
    /// W_hh·h on tensor cores (16-bit storage only).
    pub tensor_cores: bool,
}

impl Spec {
    /// The specialisation for a layer of `cell` with `hidden` units at `batch` on a device with
    /// `multiprocessors` SMs: the fewest units per block that keep every block on its own SM.
    pub fn new(
        cell: Cell,
        hidden: usize,
        batch: usize,
        dtype: DType,
        multiprocessors: usize,
    ) -> Self {
        Spec {
            cell,
            hidden,
            batch,
            units: hidden.div_ceil(multiprocessors.max(1)),
            dtype,
            tensor_cores: dtype != DType::F32,
        }
    }

    pub fn blocks(&self) -> usize {
        self.hidden.div_ceil(self.units)
    }

    fn mma(&self) -> bool {
        self.tensor_cores && self.dtype != DType::F32
    }

    /// Dynamic shared memory per block, as the kernel lays it out: W_hh's slice and h (padded
    /// to tensor-core tiles, rows 8 elements longer than K, when on tensor cores; h in f32
    /// otherwise), the warps' partial tiles (tensor cores), then in f32 the gate sums and input
    /// sides [B, G·U] and c and h_{t-1} [B, U].
    pub fn shared_bytes(&self) -> usize {
        let align = |x: usize| x.div_ceil(16) * 16;
        let rows = self.cell.gates() * self.units;
        let (weights, h, part) = if self.mma() {
            let (rows_pad, batch_pad) = (rows.div_ceil(16) * 16, self.batch.div_ceil(8) * 8);
            let ld = self.hidden.div_ceil(16) * 16 + 8;
            (
                align(rows_pad * ld * 2),
                align(batch_pad * ld * 2),
                8 * rows_pad * batch_pad * 4,
            )
        } else {
            let size = self.dtype.size_in_bytes();
            (
                align(rows * self.hidden * size),
                self.batch * self.hidden * 4,
                0,
            )
        };
        weights + h + part + 4 * self.batch * (2 * rows + 2 * self.units)
    }

    /// A name for logs and the disk cache.
    pub fn name(&self) -> String {
        format!(
            "persistent_{}_H{}_B{}_U{}_{}_{}",
            self.cell.name().to_lowercase(),
            self.hidden,
            self.batch,
            self.units,
            self.dtype.name(),
            if self.mma() { "mma" } else { "fma" },
        )
    }

    /// The kernel source with this specialisation's defines and common.cuh inlined.
    pub fn source(&self) -> String {
        let (cell, act) = match self.cell {
            Cell::Rnn(nl) => ("CELL_RNN", nl.activation().code()),
            Cell::Lstm => ("CELL_LSTM", 0),
            Cell::Gru => ("CELL_GRU", 0),
        };
        let storage = match self.dtype {
            DType::F32 => "float",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        };
        format!(
            "#define CELL {cell}\n#define ACT {act}\n#define HIDDEN {}\n#define BATCH {}\n\
             #define UNITS {}\n#define STORAGE {storage}\n#define TENSOR_CORES {}\n\
             #define MMA_TYPE {storage}\n{}",
            self.hidden,
            self.batch,
            self.units,
            self.mma() as i32,
            SOURCE.replace("#include \"common.cuh\"", COMMON)
        )
    }
}

/// A persistent kernel compiled for a shape and checked to fit the device.
pub(crate) struct Persistent {
    pub spec: Spec,
    pub function: CudaFunction,
    /// Whether both directions of a layer can be resident at once (else they run in turn).
    pub concurrent_directions: bool,
    /// What dispatch saw: the blocks, shared memory and residency.
    pub note: String,
}

fn multiprocessors(dev: &CudaDevice) -> Result<usize> {
    let sms = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    Ok(sms as usize)
}

/// The specialisation for the shape on this device, in the variant `FUSED_RNN_PERSISTENT` names.
fn device_spec(dev: &CudaDevice, cell: Cell, dims: &Dims, dtype: DType) -> Result<Spec> {
    let mut spec = Spec::new(cell, dims.hidden, dims.batch, dtype, multiprocessors(dev)?);
    spec.tensor_cores = tensor_cores_for(dtype)?;
    Ok(spec)
}

/// Why a shape cannot run persistently on a device, before anything is compiled.
pub(crate) fn unsupported(
    dev: &CudaDevice,
    cell: Cell,
    dims: &Dims,
    dtype: DType,
) -> Result<Option<String>> {
    if dims.projected() {
        return Ok(Some(
            "an LSTM with a projection (proj_size) runs stepwise".into(),
        ));
    }
    if dims.batch > MAX_BATCH {
        return Ok(Some(format!(
            "batch {} is over the persistent kernel's {MAX_BATCH}",
            dims.batch
        )));
    }
    let ctx = dev.context();
    if ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? == 0 {
        return Ok(Some("this GPU has no cooperative launch".into()));
    }
    let (major, _) = dev.compute_capability();
    if major < 7 {
        return Ok(Some(
            "the persistent kernel needs compute capability 7.0 or newer".into(),
        ));
    }
    let spec = device_spec(dev, cell, dims, dtype)?;
    let limit = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
        as usize;
    if spec.shared_bytes() > limit {
        return Ok(Some(format!(
            "{} units per block need {} KiB of shared memory (W_hh slice and h); this GPU allows {} KiB",
            spec.units,
            spec.shared_bytes().div_ceil(1024),
            limit / 1024
        )));
    }
    Ok(None)
}

/// The persistent kernel for the shape, compiled (or taken from a cache) and checked for
/// residency; `Err(reason)` inside when the shape cannot run persistently on this device.
pub(crate) fn prepare(
    dev: &CudaDevice,
    cell: Cell,
    dims: &Dims,
    dtype: DType,
) -> Result<std::result::Result<Persistent, String>> {
    if let Some(reason) = unsupported(dev, cell, dims, dtype)? {
        return Ok(Err(reason));
    }
    let sms = multiprocessors(dev)?;
    let spec = device_spec(dev, cell, dims, dtype)?;
    let jit = dev.jit_module(&spec.source(), &spec.name())?;
    let function = jit.module.load_function("persistent_forward")?;
    let bytes = spec.shared_bytes();
    function.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )?;
    let per_sm =
        function.occupancy_max_active_blocks_per_multiprocessor(THREADS, bytes, None)? as usize;
    let resident = per_sm * sms;
    if resident < spec.blocks() {
        return Ok(Err(format!(
            "{} blocks of {} KiB shared memory, but only {resident} fit on the GPU at once",
            spec.blocks(),
            bytes.div_ceil(1024)
        )));
    }
    let note = format!(
        "persistent: {} blocks × {} units, {} KiB shared memory each, {per_sm} per SM ({:?})",
        spec.blocks(),
        spec.units,
        bytes.div_ceil(1024),
        jit.origin
    );
    Ok(Ok(Persistent {
        spec,
        function,
        concurrent_directions: 2 * spec.blocks() <= resident,
        note,
    }))
}
