//! What every layer shares: its parameters by PyTorch name, for an optimiser to update and a
//! state_dict to hold, loaded under a prefix (`decoder.attention.`) and saved as safetensors.

use crate::error::{quoted, Error, Result};
use crate::io::{save_f32, TensorFile};
use crate::tensor::Tensor;
use std::collections::HashSet;
use std::path::Path;

/// A layer's parameters, by the names PyTorch gives them in a state_dict.
pub trait Module {
    /// Every parameter with its name (relative to the layer), in state_dict order.
    fn parameters(&self) -> Vec<(String, &Tensor)>;

    /// The same, for updating in place (an optimiser's step). A tensor may be replaced by one
    /// of the same shape, device and dtype.
    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)>;

    /// Loads every parameter from `file`'s tensor `prefix` + its name, in place (the layer's
    /// device and dtype kept). Every name under `prefix` must be one of the layer's, every
    /// shape must match and every value be finite; nothing is changed otherwise.
    fn load_state_dict(&mut self, file: &TensorFile, prefix: &str) -> Result<()> {
        let own: HashSet<String> = self
            .parameters()
            .into_iter()
            .map(|(name, _)| format!("{prefix}{name}"))
            .collect();
        if let Some(stray) = file
            .names()
            .find(|n| n.starts_with(prefix) && !own.contains(*n))
        {
            return Err(Error::Config(format!(
                "{}: unexpected tensor {} for this layer",
                file.path().display(),
                quoted(stray)
            )));
        }
        let mut loaded = Vec::new();
        for (name, t) in self.parameters() {
            let key = format!("{prefix}{name}");
            let value = file.float(&key)?;
            if value.shape() != t.shape() {
                return Err(Error::shape(key, format!("{:?}", t.shape()), value.shape()));
            }
            Error::check_finite(&key, value.host_slice::<f32>()?, value.shape())?;
            loaded.push(value);
        }
        for ((_, t), value) in self.parameters_mut().into_iter().zip(&loaded) {
            t.copy_from_f32(value.host_slice::<f32>()?)?;
        }
        Ok(())
    }
}

/// Checks that `params` are still what the layer was built with: as many, each of its shape
/// in `shapes`, on `device` in `dtype`. `parameters_mut` hands out `&mut Tensor`s, and the
/// kernels read the weights by address with the layer's sizes, so a tensor replaced by one of
/// another shape, dtype or device must be refused before any work.
pub(crate) fn check_parameters<'a, N: AsRef<str>>(
    params: impl IntoIterator<Item = (N, &'a Tensor)>,
    shapes: &[Vec<usize>],
    device: &crate::Device,
    dtype: crate::DType,
) -> Result<()> {
    let mut count = 0;
    for (name, t) in params {
        let name = name.as_ref();
        let Some(shape) = shapes.get(count) else {
            return Err(Error::Config(format!(
                "the layer has more parameters than the {} it was built with",
                shapes.len()
            )));
        };
        count += 1;
        if t.shape() != shape.as_slice() {
            return Err(Error::shape(
                name,
                format!("{shape:?} (as built)"),
                t.shape(),
            ));
        }
        if t.dtype() != dtype {
            return Err(Error::DType {
                tensor: name.into(),
                expected: format!("{dtype} (the layer's)"),
                got: t.dtype().name().into(),
            });
        }
        t.check_on(device, name)?;
    }
    if count != shapes.len() {
        return Err(Error::Config(format!(
            "the layer has {count} parameters, built with {}",
            shapes.len()
        )));
    }
    Ok(())
}

/// The parameters of `children`, each name under its child's prefix: how a model made of
/// layers implements `Module::parameters`.
pub fn parameters_of<'a>(children: &[(&str, &'a dyn Module)]) -> Vec<(String, &'a Tensor)> {
    children
        .iter()
        .flat_map(|(prefix, m)| {
            m.parameters()
                .into_iter()
                .map(move |(name, t)| (format!("{prefix}{name}"), t))
        })
        .collect()
}

/// As `parameters_of`, for `Module::parameters_mut`.
pub fn parameters_mut_of<'a>(
    children: Vec<(&str, &'a mut dyn Module)>,
) -> Vec<(String, &'a mut Tensor)> {
    children
        .into_iter()
        .flat_map(|(prefix, m)| {
            m.parameters_mut()
                .into_iter()
                .map(move |(name, t)| (format!("{prefix}{name}"), t))
        })
        .collect()
}

/// Writes the parameters of `modules`, each under its prefix, to `path` as f32 safetensors
/// (atomically): a state_dict PyTorch's `load_state_dict` reads.
pub fn save_state_dict(path: impl AsRef<Path>, modules: &[(&str, &dyn Module)]) -> Result<()> {
    let names = parameters_of(modules);
    let tensors: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    save_f32(path, &tensors)
}
