//! Weight averaging: the running mean of a module's parameters over the tail of a run
//! (stochastic weight averaging, Izmailov et al. 2018, with the equal-weight mean of
//! `torch.optim.swa_utils.AveragedModel`). The mean of the weights an optimizer visits as the
//! learning rate falls lies nearer the middle of the low-loss region than the last of them, and
//! often reads unseen examples better than the last weights do.

use crate::error::{Error, Result};
use crate::nn::Module;

/// The mean of a module's parameters over the times `update` saw them, in f32 on the host,
/// per parameter in the module's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightAverage {
    means: Vec<Vec<f32>>,
    count: u64,
}

impl WeightAverage {
    /// An empty average.
    pub fn new() -> Self {
        Self::default()
    }

    /// The average of `count` updates whose means are `means` (as [`WeightAverage::means`]
    /// gave them), to continue it.
    pub fn from_means(means: Vec<Vec<f32>>, count: u64) -> Result<Self> {
        if (count == 0) != means.is_empty() {
            return Err(Error::Config(format!(
                "a weight average of {count} updates holds {} parameters",
                means.len()
            )));
        }
        Ok(WeightAverage { means, count })
    }

    /// The updates averaged.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Per parameter, its mean (empty before the first update).
    pub fn means(&self) -> &[Vec<f32>] {
        &self.means
    }

    /// Adds the module's current parameters to the mean: mean += (p − mean) / count.
    pub fn update(&mut self, module: &dyn Module) -> Result<()> {
        let params = module.parameters();
        if self.count == 0 {
            self.means = params
                .iter()
                .map(|(_, t)| t.to_vec_f32())
                .collect::<Result<_>>()?;
            self.count = 1;
            return Ok(());
        }
        self.check(&params)?;
        self.count += 1;
        let share = 1.0 / self.count as f32;
        for (mean, (_, t)) in self.means.iter_mut().zip(&params) {
            let add = |values: &[f32], mean: &mut [f32]| {
                for (m, &v) in mean.iter_mut().zip(values) {
                    *m += (v - *m) * share;
                }
            };
            // f32 parameters on the host are read in place: no copy per update.
            match t.host_slice::<f32>() {
                Ok(values) => add(values, mean),
                Err(_) => add(&t.to_vec_f32()?, mean),
            }
        }
        Ok(())
    }

    /// Writes the means into the module's parameters and returns the values they replace, for
    /// [`WeightAverage::restore`].
    pub fn install(&self, module: &mut dyn Module) -> Result<Vec<Vec<f32>>> {
        self.check(&module.parameters())?;
        let mut replaced = Vec::with_capacity(self.means.len());
        for ((_, t), mean) in module.parameters_mut().into_iter().zip(&self.means) {
            replaced.push(t.to_vec_f32()?);
            t.copy_from_f32(mean)?;
        }
        Ok(replaced)
    }

    /// Writes `values` (what [`WeightAverage::install`] returned) back into the module's
    /// parameters.
    pub fn restore(module: &mut dyn Module, values: &[Vec<f32>]) -> Result<()> {
        let params = module.parameters_mut();
        if params.len() != values.len() {
            return Err(Error::Config(format!(
                "restoring {} parameters into a module of {}",
                values.len(),
                params.len()
            )));
        }
        for ((_, t), v) in params.into_iter().zip(values) {
            t.copy_from_f32(v)?;
        }
        Ok(())
    }

    /// Whether the module's parameters have the shapes of the means.
    fn check(&self, params: &[(String, &crate::tensor::Tensor)]) -> Result<()> {
        let same = params.len() == self.means.len()
            && params
                .iter()
                .zip(&self.means)
                .all(|((_, t), m)| t.numel() == m.len());
        if same {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "the weight average holds {} parameters of other sizes than the module's {}",
                self.means.len(),
                params.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Linear, Module};
    use crate::{DType, Device};

    fn values(module: &dyn Module) -> Vec<Vec<f32>> {
        module
            .parameters()
            .iter()
            .map(|(_, t)| t.to_vec_f32().unwrap())
            .collect()
    }

    #[test]
    fn the_average_is_the_mean_of_the_weights_seen_and_install_restores() {
        let device = Device::cpu();
        let mut layer = Linear::random(5, 3, true, &device, DType::F32, 7).unwrap();
        let mut average = WeightAverage::new();
        let mut seen = Vec::new();
        for k in 0..4 {
            for (_, t) in layer.parameters_mut() {
                let shifted: Vec<f32> = t
                    .to_vec_f32()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + 0.25 * k as f32 - 0.01 * i as f32)
                    .collect();
                t.copy_from_f32(&shifted).unwrap();
            }
            seen.push(values(&layer));
            average.update(&layer).unwrap();
        }
        assert_eq!(average.count(), 4);
        for (p, mean) in average.means().iter().enumerate() {
            for (i, &m) in mean.iter().enumerate() {
                let want = seen.iter().map(|s| f64::from(s[p][i])).sum::<f64>() / 4.0;
                assert!((f64::from(m) - want).abs() < 1e-6, "{m} against {want}");
            }
        }
        let last = values(&layer);
        let replaced = average.install(&mut layer).unwrap();
        assert_eq!(replaced, last);
        assert_eq!(values(&layer), average.means());
        WeightAverage::restore(&mut layer, &replaced).unwrap();
        assert_eq!(values(&layer), last);

        let resumed = WeightAverage::from_means(average.means().to_vec(), 4).unwrap();
        assert_eq!(resumed, average);
    }

    #[test]
    fn a_module_of_other_shapes_is_refused() {
        let device = Device::cpu();
        let a = Linear::random(5, 3, true, &device, DType::F32, 1).unwrap();
        let mut b = Linear::random(4, 3, true, &device, DType::F32, 1).unwrap();
        let mut average = WeightAverage::new();
        average.update(&a).unwrap();
        assert!(average.update(&b).is_err());
        assert!(average.install(&mut b).is_err());
        assert!(WeightAverage::from_means(Vec::new(), 3).is_err());
        assert!(WeightAverage::from_means(vec![vec![1.0]], 0).is_err());
    }
}
