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

/// How the blocks meet between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Barrier {
    /// One counter every block adds 1 to per step and polls.
    Counter,
    /// No barrier: each element of h is published with the step that wrote it (the flag next
    /// to the data), and readers poll the elements themselves.
    Tagged,
}

/// The kernel variants `FUSED_RNN_PERSISTENT` may pick, for comparing them on a GPU: a
/// comma-separated list of `counter` or `tagged` (how blocks meet) and `mma` or `fma` (W_hh·h on
/// tensor cores, for 16-bit storage, or on CUDA cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub barrier: Barrier,
    pub tensor_cores: bool,
}

impl Variant {
    /// The default for `dtype`: tensor cores for 16-bit storage, the counter barrier.
    pub fn default_for(dtype: DType) -> Self {
        Variant {
            barrier: Barrier::Counter,
            tensor_cores: dtype != DType::F32,
        }
    }

    /// The default for `dtype` as `FUSED_RNN_PERSISTENT` overrides it.
    fn from_env(dtype: DType) -> Result<Self> {
        let mut v = Variant::default_for(dtype);
        let Ok(list) = std::env::var("FUSED_RNN_PERSISTENT") else {
            return Ok(v);
        };
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "counter" => v.barrier = Barrier::Counter,
                "tagged" => v.barrier = Barrier::Tagged,
                "mma" => v.tensor_cores = dtype != DType::F32,
                "fma" => v.tensor_cores = false,
                _ => {
                    return Err(Error::Config(format!(
                        "FUSED_RNN_PERSISTENT: unknown variant `{word}` (expected counter, \
                         tagged, mma or fma)"
                    )))
                }
            }
        }
        Ok(v)
    }
}
/// The kernel's largest batch (its accumulators are per batch row).
pub(crate) const MAX_BATCH: usize = 64;
/// The largest batch `Algo::Auto` runs persistently in `dtype`. The kernel's W_hh·h runs on
/// CUDA cores from shared memory; on an H100 (BENCHMARKS.md) it beat the stepwise path (a
/// cuBLAS GEMM per step, on tensor cores for 16-bit storage) at batch 1 in every dtype and up
/// to batch 4 in f32, and lost beyond, so Auto keeps it for those latency-bound shapes.
pub(crate) fn auto_max_batch(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 1,
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
    pub variant: Variant,
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
            variant: Variant::default_for(dtype),
        }
    }

    /// Whether hbuf (2·B·H words, f32 or tagged 64-bit) must be zeroed before each launch.
    pub fn tagged(&self) -> bool {
        self.variant.barrier == Barrier::Tagged
    }

    pub fn blocks(&self) -> usize {
        self.hidden.div_ceil(self.units)
    }

    /// Whether W_hh·h runs on tensor cores (mma.sync, f32 accumulate).
    pub fn tensor_cores(&self) -> bool {
        self.variant.tensor_cores && self.dtype != DType::F32
    }

    /// Dynamic shared memory per block, as the kernel lays it out: W_hh's slice and h (padded
    /// to tensor-core tiles, rows 8 elements longer than K, when on tensor cores; h in f32
    /// otherwise), the warps' partial tiles (tensor cores), then in f32 the gate sums and input
    /// sides [B, G·U] and c and h_{t-1} [B, U].
    pub fn shared_bytes(&self) -> usize {
        let align = |x: usize| x.div_ceil(16) * 16;
        let rows = self.cell.gates() * self.units;
        let (weights, h, part) = if self.tensor_cores() {
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
            "persistent_{}_H{}_B{}_U{}_{}_{}_{}",
            self.cell.name().to_lowercase(),
            self.hidden,
            self.batch,
            self.units,
            self.dtype.name(),
            if self.tensor_cores() { "mma" } else { "fma" },
            match self.variant.barrier {
                Barrier::Counter => "counter",
                Barrier::Tagged => "tagged",
            }
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
             #define MMA_TYPE {storage}\n#define BARRIER {}\n{}",
            self.hidden,
            self.batch,
            self.units,
            self.tensor_cores() as i32,
            match self.variant.barrier {
                Barrier::Counter => "BARRIER_COUNTER",
                Barrier::Tagged => "BARRIER_TAGGED",
            },
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
    spec.variant = Variant::from_env(dtype)?;
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
