//! PyTorch's default initialisations, drawn from a seed.

use crate::error::Result;
use crate::size;
use rand::{Rng, SeedableRng};

/// `n` values uniform in [-bound, bound] from `seed`, as nn.Linear's default draws them (with
/// its bounds).
pub(crate) fn uniform(n: usize, bound: f32, seed: u64) -> Result<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = size::zeros::<f32>("parameters", n)?;
    v.fill_with(|| rng.random_range(-bound..=bound));
    Ok(v)
}

/// `n` values from N(0, 1), seeded, as nn.Embedding's default draws them: Box–Muller over
/// pairs of uniform draws (u1 in (0, 1], so the logarithm is finite).
pub(crate) fn normal(n: usize, seed: u64) -> Result<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = size::zeros::<f32>("parameters", n)?;
    for pair in v.chunks_mut(2) {
        let u1 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        pair[0] = (r * angle.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * angle.sin()) as f32;
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_unit_variance_and_are_seeded() {
        let v = normal(100_001, 7).unwrap();
        assert_eq!(v, normal(100_001, 7).unwrap());
        assert_ne!(v, normal(100_001, 8).unwrap());
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        // Tails a uniform draw of the same variance (bounded by √3) never reaches.
        assert!(v.iter().any(|&x| x.abs() > 3.0));
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
