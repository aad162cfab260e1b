//! Persistent sequence loops (kernels/persistent/recurrent.cu): one cooperative launch per
//! layer-direction with the block's slice of W_hh on-chip (shared memory, or registers with
//! shared memory as overflow). Which shapes can run one on a device, the shape-specialised
//! source, and why not when they cannot.

use super::{Cell, Dims};
use crate::device::{allow_dynamic_shared, CudaDevice};
use crate::dtype::DType;
use crate::error::{Error, Result};
use cudarc::driver::CudaFunction;

const SOURCE: &str = include_str!("../../../kernels/persistent/recurrent.cu");
const COMMON: &str = include_str!("../../../kernels/common.cuh");
const CODES: &str = include_str!("../../../kernels/codes.cuh");
/// THREADS in the kernel, and its warps.
pub(crate) const THREADS: u32 = 256;
const WARPS: usize = THREADS as usize / 32;
/// 32-bit registers per thread for W_hh·h's accumulators and the part of W_hh a thread holds
/// when it holds W_hh in registers: at one block of 256 threads per SM a thread has 255, and
/// the rest of the step needs about 100 (ptxas).
pub const REGISTER_BUDGET: usize = 160;
/// The most FMA row passes a warp holds registers for (their loop is unrolled to index them).
const MAX_REGISTER_PASSES: usize = 4;
/// Sync words per lane: the failure flag and the barrier's counter.
pub(crate) const SYNC_WORDS: usize = 2;

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
    /// 32-bit registers per thread for W_hh·h's accumulators and W_hh: each thread's first K
    /// steps of W_hh, as many as fit, are held in registers and the rest in shared memory (0:
    /// all in shared memory).
    pub register_budget: usize,
    /// Stage h_{t-1} with 16-byte loads (where H is a multiple of 4).
    pub vector_staging: bool,
    /// Load the next step's input side before the grid barrier, to use after it.
    pub prefetch: bool,
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
            register_budget: 0,
            vector_staging: false,
            prefetch: false,
        }
    }

    /// This specialisation in the variant a `FUSED_RNN_PERSISTENT` value names, for comparing
    /// them: a comma list of `mma` (tensor cores for 16-bit storage, the default) or `fma`
    /// (CUDA-core FMAs); `smem` (W_hh in shared memory, the default) or `regs` (in registers
    /// within `REGISTER_BUDGET`, shared memory as overflow; `regs=N` for a budget of N); `vec`
    /// (stage h with 16-byte loads); and `prefetch` (load the next step's input side before
    /// the grid barrier).
    pub fn with_variant(mut self, value: &str) -> Result<Self> {
        for token in value.split(',').map(str::trim) {
            match token {
                "mma" => self.tensor_cores = true,
                "fma" => self.tensor_cores = false,
                "smem" => self.register_budget = 0,
                "regs" => self.register_budget = REGISTER_BUDGET,
                "vec" => self.vector_staging = true,
                "prefetch" => self.prefetch = true,
                _ => match token.strip_prefix("regs=").and_then(|n| n.parse().ok()) {
                    Some(n @ 0..=255) => self.register_budget = n,
                    _ => {
                        return Err(Error::Config(format!(
                            "FUSED_RNN_PERSISTENT: unknown variant `{token}` (expected a comma \
                             list of mma or fma, smem, regs or regs=N with N in 0..=255, vec, prefetch)"
                        )))
                    }
                },
            }
        }
        Ok(self)
    }

    pub fn blocks(&self) -> usize {
        self.hidden.div_ceil(self.units)
    }

    fn mma(&self) -> bool {
        self.tensor_cores && self.dtype != DType::F32
    }

    /// VEC_STAGE: 16-byte loads keep to one batch row of h only when H is a multiple of 4.
    fn vec_stage(&self) -> bool {
        self.vector_staging && self.hidden.is_multiple_of(4)
    }

    /// The block's rows of W_hh (G per unit).
    fn rows(&self) -> usize {
        self.cell.gates() * self.units
    }

    /// CUDA-core FMAs: the rows a warp accumulates at once (at most 32 accumulators per lane
    /// over them and a chunk of the batch).
    fn row_block(&self) -> usize {
        match self.batch {
            0..=8 => 4,
            9..=16 => 2,
            _ => 1,
        }
    }

    /// How many of its K steps of W_hh a thread holds in registers (REG_STEPS in the kernel):
    /// on tensor cores a warp's K tiles (4 registers per 16-row tile each, beside 4 accumulators
    /// per row and batch tile), with FMAs a lane's columns (one register per row of each pass,
    /// beside ROW_BLOCK · BATCH_CHUNK accumulators). The rest is read from shared memory.
    fn reg_steps(&self) -> usize {
        let rows = self.rows();
        let (k_steps, per_step, accumulators) = if self.mma() {
            let row_tiles = rows.div_ceil(16);
            (
                self.hidden.div_ceil(16).div_ceil(WARPS),
                4 * row_tiles,
                4 * row_tiles * self.batch.div_ceil(8),
            )
        } else {
            let row_block = self.row_block();
            let passes = rows.div_ceil(WARPS * row_block);
            if passes > MAX_REGISTER_PASSES {
                return 0;
            }
            (
                self.hidden.div_ceil(32),
                passes * row_block,
                row_block * self.batch.min(32 / row_block),
            )
        };
        k_steps.min(self.register_budget.saturating_sub(accumulators) / per_step)
    }

    /// Dynamic shared memory per block, as the kernel lays it out: W_hh's columns that are not
    /// in registers and h (padded to tensor-core tiles, rows 8 elements longer than K, when on
    /// tensor cores; h in f32 otherwise), the warps' partial tiles (tensor cores), then in f32
    /// the gate sums and input sides [B, G·U] and c and h_{t-1} [B, U].
    pub fn shared_bytes(&self) -> usize {
        let align = |x: usize| x.div_ceil(16) * 16;
        let rows = self.rows();
        let (weights, h, part) = if self.mma() {
            let (rows_pad, batch_pad) = (rows.div_ceil(16) * 16, self.batch.div_ceil(8) * 8);
            let k_pad = self.hidden.div_ceil(16) * 16;
            let shared_cols = k_pad.saturating_sub(self.reg_steps() * WARPS * 16);
            let w_ld = if shared_cols > 0 { shared_cols + 8 } else { 0 };
            (
                align(rows_pad * w_ld * 2),
                align(batch_pad * (k_pad + 8) * 2),
                WARPS * rows_pad * batch_pad * 4,
            )
        } else {
            let shared_cols = self.hidden.saturating_sub(self.reg_steps() * 32);
            (
                align(rows * shared_cols * self.dtype.size_in_bytes()),
                self.batch * self.hidden * 4,
                0,
            )
        };
        weights + h + part + 4 * self.batch * (2 * rows + 2 * self.units)
    }

    /// A name for logs and the disk cache.
    pub fn name(&self) -> String {
        let registers = if self.register_budget > 0 {
            format!("_regs{}", self.reg_steps())
        } else {
            String::new()
        };
        let staging = if self.vec_stage() { "_vec" } else { "" };
        let prefetch = if self.prefetch { "_prefetch" } else { "" };
        format!(
            "persistent_{}_H{}_B{}_U{}_{}_{}{registers}{staging}{prefetch}",
            self.cell.name().to_lowercase(),
            self.hidden,
            self.batch,
            self.units,
            self.dtype.name(),
            if self.mma() { "mma" } else { "fma" },
        )
    }

    /// The kernel source with this specialisation's defines and common.cuh (with codes.cuh)
    /// inlined.
    pub fn source(&self) -> String {
        let (cell, act) = match self.cell {
            Cell::Rnn(nl) => ("CELL_RNN", nl.activation().code()),
            Cell::Lstm => ("CELL_LSTM", 0),
            Cell::Gru => ("CELL_GRU", 0),
        };
        let storage = self.dtype.kernel_type();
        format!(
            "#define CELL {cell}\n#define ACT {act}\n#define HIDDEN {}\n#define BATCH {}\n\
             #define UNITS {}\n#define STORAGE {storage}\n#define TENSOR_CORES {}\n\
             #define MMA_TYPE {storage}\n#define REG_STEPS {}\n#define ROW_BLOCK {}\n\
             #define SHARED_BYTES {}\n#define VEC_STAGE {}\n#define PREFETCH {}\n{}",
            self.hidden,
            self.batch,
            self.units,
            self.mma() as i32,
            self.reg_steps(),
            self.row_block(),
            self.shared_bytes(),
            self.vec_stage() as i32,
            self.prefetch as i32,
            SOURCE.replace(
                "#include \"common.cuh\"",
                &COMMON.replace("#include \"codes.cuh\"", CODES)
            )
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

/// The specialisation for the shape on a device of `sms` SMs, in the variant
/// `FUSED_RNN_PERSISTENT` names.
fn device_spec(sms: usize, cell: Cell, dims: &Dims, dtype: DType) -> Result<Spec> {
    let spec = Spec::new(cell, dims.hidden, dims.batch, dtype, sms);
    match std::env::var("FUSED_RNN_PERSISTENT") {
        Ok(value) => spec.with_variant(&value),
        Err(_) => Ok(spec),
    }
}

/// Why a shape cannot run persistently on a device whatever its specialisation.
fn unsupported(dev: &CudaDevice, dims: &Dims) -> Result<Option<String>> {
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
    if !dev.cooperative_launch()? {
        return Ok(Some("this GPU has no cooperative launch".into()));
    }
    let (major, _) = dev.compute_capability();
    if major < 7 {
        return Ok(Some(
            "the persistent kernel needs compute capability 7.0 or newer".into(),
        ));
    }
    Ok(None)
}

/// Why the spec's shared memory, dynamic plus `static_bytes`, is more than a block may have.
fn shared_memory_over(
    dev: &CudaDevice,
    spec: &Spec,
    static_bytes: usize,
) -> Result<Option<String>> {
    let limit = dev.shared_memory_optin()?;
    let bytes = spec.shared_bytes() + static_bytes;
    Ok((bytes > limit).then(|| {
        format!(
            "{} units per block need {} KiB of shared memory (W_hh slice, or its overflow, and h); this GPU allows {} KiB",
            spec.units,
            bytes.div_ceil(1024),
            limit / 1024
        )
    }))
}

/// The persistent kernel for the shape, compiled (or taken from a cache) and checked for
/// residency; `Err(reason)` inside when the shape cannot run persistently on this device.
pub(crate) fn prepare(
    dev: &CudaDevice,
    cell: Cell,
    dims: &Dims,
    dtype: DType,
) -> Result<std::result::Result<Persistent, String>> {
    let sms = dev.multiprocessors()?;
    let spec = device_spec(sms, cell, dims, dtype)?;
    // Before compiling, the dynamic shared memory alone (the static part is known after).
    if let Some(reason) = unsupported(dev, dims)?.or(shared_memory_over(dev, &spec, 0)?) {
        return Ok(Err(reason));
    }
    let jit = dev.jit_module(&spec.source(), &spec.name())?;
    let function = jit.module.load_function("persistent_forward")?;
    // Dynamic and static shared memory together must fit the opt-in limit.
    if let Some(reason) = shared_memory_over(dev, &spec, function.shared_size_bytes()? as usize)? {
        return Ok(Err(reason));
    }
    let bytes = spec.shared_bytes();
    allow_dynamic_shared(&function, bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cell: Cell, hidden: usize, batch: usize, dtype: DType, sms: usize) -> Spec {
        let mut spec = Spec::new(cell, hidden, batch, dtype, sms);
        spec.register_budget = REGISTER_BUDGET;
        spec
    }

    /// The spec holds `steps` of a thread's K steps of W_hh in registers, and so needs `saved`
    /// bytes less shared memory than with all of W_hh there.
    fn assert_holds(spec: Spec, steps: usize, saved: usize) {
        let all_shared = Spec {
            register_budget: 0,
            ..spec
        };
        assert_eq!(spec.reg_steps(), steps, "{}", spec.name());
        assert_eq!(
            all_shared.shared_bytes() - spec.shared_bytes(),
            saved,
            "{}",
            spec.name()
        );
    }

    #[test]
    fn registers_hold_the_whole_slice_where_it_is_small() {
        // LSTM H = 1024, B = 1 on 132 SMs: 8 units, 32 rows. Tensor cores: 8 of the 64 K tiles
        // per warp, 2 row tiles of 4 registers each: 64 registers beside 8 accumulators. FMAs:
        // 32 columns per lane of 4 rows: 128 registers beside 4 accumulators.
        assert_holds(
            spec(Cell::Lstm, 1024, 1, DType::BF16, 132),
            8,
            32 * (1024 + 8) * 2,
        );
        assert_holds(
            spec(Cell::Lstm, 1024, 1, DType::F32, 132),
            32,
            32 * 1024 * 4,
        );
    }

    #[test]
    fn registers_overflow_to_shared_memory_where_the_slice_is_large() {
        // LSTM H = 1024, B = 16 on 20 SMs: 52 units, 208 rows. Tensor cores: 13 row tiles × 2
        // batch tiles take 104 accumulators, which leaves room for 1 K tile of 52 registers;
        // columns from 1·8·16 = 128 on stay in shared memory.
        assert_holds(
            spec(Cell::Lstm, 1024, 16, DType::BF16, 20),
            1,
            208 * (1024 + 8) * 2 - 208 * (1024 - 128 + 8) * 2,
        );
        // FMAs: 13 passes of 2 rows are too many to unroll, so all of W_hh is in shared memory.
        assert_eq!(spec(Cell::Lstm, 1024, 16, DType::F32, 20).reg_steps(), 0);
        // On 66 SMs: 16 units, 64 rows, 4 passes of 2 rows: 8 registers per column beside 32
        // accumulators, so 16 of a lane's 32 columns; columns from 512 on in shared memory.
        assert_holds(spec(Cell::Lstm, 1024, 16, DType::F32, 66), 16, 64 * 512 * 4);
    }

    #[test]
    fn variants_parse_and_bad_ones_are_named() {
        let base = Spec::new(Cell::Lstm, 768, 16, DType::BF16, 132);
        let v = base.with_variant("fma, regs=48,vec").unwrap();
        assert!(!v.tensor_cores && v.vector_staging && !v.prefetch);
        assert_eq!(v.register_budget, 48);
        // FMAs at B = 16: 2 passes of 2 rows, 4 registers per column beside 32 accumulators.
        assert!(v.name().ends_with("_fma_regs4_vec"), "{}", v.name());
        let v = base.with_variant("regs,smem,mma,prefetch").unwrap();
        assert!(v.tensor_cores && v.prefetch);
        assert!(v.name().ends_with("_mma_prefetch"), "{}", v.name());
        assert_eq!(v.register_budget, 0);
        for bad in ["", "regs=256", "regs=x", "tma"] {
            let e = base.with_variant(bad).unwrap_err().to_string();
            assert!(e.contains("FUSED_RNN_PERSISTENT") && e.contains(bad), "{e}");
        }
        // H = 33 cannot stage 4 elements of a row at a time: the request falls back.
        let odd = Spec::new(Cell::Gru, 33, 4, DType::F32, 132)
            .with_variant("vec")
            .unwrap();
        assert!(odd.source().contains("#define VEC_STAGE 0\n"));
    }

    #[test]
    fn the_shared_memory_variant_keeps_nothing_in_registers() {
        let smem = Spec::new(Cell::Gru, 512, 8, DType::BF16, 132);
        assert_eq!(smem.register_budget, 0);
        assert_eq!(smem.reg_steps(), 0);
        assert!(smem.source().contains("#define REG_STEPS 0\n"));
        assert!(!smem.name().contains("regs"));
    }
}
