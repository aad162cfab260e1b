//! PyTorch's default initialisations, drawn from a seed.

use crate::error::Result;
use crate::size;
use rand::{Rng, SeedableRng};

/// `n` values uniform in [-bound, bound] from `seed`, as nn.Linear's and nn.Embedding's
/// defaults draw them (with their bounds).
pub(crate) fn uniform(n: usize, bound: f32, seed: u64) -> Result<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = size::zeros::<f32>("parameters", n)?;
    v.fill_with(|| rng.random_range(-bound..=bound));
    Ok(v)
}
