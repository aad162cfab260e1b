//! Which CUDA implementation an op runs: shared by every op with more than one.

use crate::error::{Error, Result};

/// Which CUDA implementation runs an op (a recurrent layer's sequence loop, attention); the
/// CPU has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algo {
    /// `Persistent` at the small batches where it was measured faster (up to 16 in f32, 4 in
    /// f16/bf16) and the shape can run it on this device, else `Fused`; the layer says which it
    /// picked and why (`dispatch_notes`).
    #[default]
    Auto,
    /// Per step one recurrent GEMM and one fused elementwise kernel.
    Fused,
    /// Per step one recurrent GEMM and one kernel per elementwise op: the baseline.
    Naive,
    /// One launch per layer-direction for the whole sequence, W_hh kept on-chip; an error
    /// where the shape cannot run it.
    Persistent,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Fused => "fused",
            Algo::Naive => "naive",
            Algo::Persistent => "persistent",
        }
    }
}

impl std::str::FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [Algo::Auto, Algo::Fused, Algo::Naive, Algo::Persistent]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown algo `{s}` (expected auto, fused, naive or persistent)"
                ))
            })
    }
}
