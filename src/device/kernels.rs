//! The kernels built into the crate: sources (with common.cuh inlined), PTX and CUBIN when
//! build.rs found NVRTC, and what ptxas reported for each entry point.

use crate::dtype::DType;

/// One `kernels/*.cu` file as embedded by build.rs.
pub struct KernelImage {
    /// File stem, e.g. "rnn".
    pub name: &'static str,
    /// Self-contained source (includes inlined).
    pub source: &'static str,
    /// PTX for `compute_80`, loadable on any GPU of that generation or newer.
    pub ptx: Option<&'static str>,
    /// CUBIN for `cubin_arch`.
    pub cubin: Option<&'static [u8]>,
    pub cubin_arch: &'static str,
    /// ptxas statistics of the CUBIN build (empty without NVRTC at build time).
    pub functions: &'static [PrecompiledFunction],
}

/// ptxas statistics of one entry point.
pub struct PrecompiledFunction {
    pub name: &'static str,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded kernel file `name`.
pub fn image(name: &str) -> Option<&'static KernelImage> {
    KERNELS.iter().find(|k| k.name == name)
}

/// The entry point `{op}_{variant}_{dtype}`: the one place kernel names are built.
pub fn entry_point(op_variant: &str, dtype: DType) -> String {
    format!("{op_variant}_{}", dtype.name())
}
