//! What the CPU computes training in: shared by every op with a CPU backward in both.

/// The arithmetic of a CPU training-mode forward and its backward (CUDA computes in f32
/// whatever this says). Storage stays f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 GEMMs and activations; sums over many steps and rows (the bias gradients) in f64.
    #[default]
    F32,
    /// Every value in f64, about 4× slower: the reference the f32 path is tested against.
    F64,
}

impl Precision {
    /// Bytes of one kept value.
    pub(crate) fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F64 => 8,
        }
    }
}
