//! Reading a PyTorch nn.RNN, nn.LSTM or nn.GRU state_dict: the module's kind and sizes from
//! its tensors' names and shapes. Layers come from `weight_ih_l{k}`, directions from
//! `_reverse`, the hidden size from the columns of `weight_hr_l0` when it exists (an LSTM
//! projection), else of `weight_hh_l0`, and the kind from rows(weight_hh_l0) / H: 1 → RNN,
//! 3 → GRU, 4 → LSTM.

use super::recurrent::Spec;
use crate::error::{quoted, Error, Result};
use crate::io::TensorFile;
use crate::ops::recurrent::{Cell, Nonlinearity};
use std::collections::HashSet;

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(Error::Config(format!(
            "metadata {key} = {} (expected true or false)",
            quoted(v)
        ))),
    }
}

/// The shape of tensor `name`, or a missing-tensor error.
fn require_shape<'a>(file: &'a TensorFile, name: &str) -> Result<&'a [usize]> {
    file.shape(name).ok_or_else(|| Error::MissingTensor {
        file: file.path().display().to_string(),
        tensor: name.into(),
    })
}

impl Spec {
    /// The module a PyTorch state_dict holds, from its tensors' names and shapes and its
    /// metadata (`batch_first`, `nonlinearity`); every tensor must be one the module has.
    pub fn infer(file: &TensorFile) -> Result<Spec> {
        let w_hh = require_shape(file, "weight_hh_l0")?;
        let w_ih = require_shape(file, "weight_ih_l0")?;
        let (&[rows, hh_cols], &[_, input_size]) = (w_hh, w_ih) else {
            return Err(Error::Config(format!(
                "weight_hh_l0 and weight_ih_l0 must be matrices (shapes {w_hh:?}, {w_ih:?})"
            )));
        };
        // With an LSTM projection the hidden size is the columns of weight_hr_l0.
        let (hidden, proj_size) = match file.shape("weight_hr_l0") {
            Some(&[p, h]) => (h, p),
            Some(other) => return Err(Error::shape("weight_hr_l0", "[P, H]", other)),
            None => (hh_cols, 0),
        };
        let nonlinearity = match file.metadata("nonlinearity") {
            Some(v) => v.parse().map_err(|_| {
                Error::Config(format!(
                    "metadata nonlinearity = {} (expected tanh or relu)",
                    quoted(v)
                ))
            })?,
            None => Nonlinearity::Tanh,
        };
        let cell = match (hidden > 0 && rows % hidden == 0).then(|| rows / hidden) {
            Some(1) => Cell::Rnn(nonlinearity),
            Some(4) => Cell::Lstm,
            Some(3) => Cell::Gru,
            _ => {
                return Err(Error::shape(
                    "weight_hh_l0",
                    format!("[G·{hidden}, {hh_cols}] with G = 1 (RNN), 3 (GRU) or 4 (LSTM)"),
                    w_hh,
                ))
            }
        };
        let num_layers = (0..)
            .take_while(|k| file.contains(&format!("weight_ih_l{k}")))
            .count();
        let mut spec = Spec {
            cell,
            input_size,
            hidden_size: hidden,
            proj_size,
            num_layers,
            bias: file.contains("bias_ih_l0"),
            batch_first: false,
            bidirectional: file.contains("weight_ih_l0_reverse"),
        };
        if let Some(v) = file.metadata("batch_first") {
            spec.batch_first = parse_bool("batch_first", v)?;
        }
        spec.validate()?;
        // Every tensor must be one the module expects: a stray name means a wrong file.
        let expected: HashSet<String> = spec.parameters().map(|(name, _)| name).collect();
        if let Some(stray) = file.names().find(|&n| !expected.contains(n)) {
            return Err(Error::Config(format!(
                "{}: unexpected tensor {} for {}",
                file.path().display(),
                quoted(stray),
                spec
            )));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::save_f32;
    use crate::tensor::Tensor;

    /// `spec`'s parameters, plus `extra` names, saved and read back as a state_dict.
    fn saved(spec: &Spec, extra: &[&str]) -> TensorFile {
        let mut tensors: Vec<(String, Tensor)> = spec
            .parameters()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                (name, Tensor::from_vec(vec![0.25f32; n], &shape).unwrap())
            })
            .collect();
        for name in extra {
            tensors.push((
                name.to_string(),
                Tensor::from_vec(vec![1f32], &[1]).unwrap(),
            ));
        }
        let dir = std::env::temp_dir().join(format!("fused-rnn-infer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.safetensors", spec.cell.name()));
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save_f32(&path, &named).unwrap();
        TensorFile::load(&path).unwrap()
    }

    #[test]
    fn every_kind_is_read_back_from_its_state_dict() {
        let base = Spec {
            cell: Cell::Lstm,
            input_size: 5,
            hidden_size: 7,
            proj_size: 3,
            num_layers: 2,
            bias: true,
            batch_first: false,
            bidirectional: true,
        };
        let kinds = [
            base,
            Spec {
                cell: Cell::Gru,
                proj_size: 0,
                bias: false,
                ..base
            },
            Spec {
                cell: Cell::Rnn(Nonlinearity::Tanh),
                proj_size: 0,
                num_layers: 3,
                bidirectional: false,
                ..base
            },
        ];
        for spec in kinds {
            assert_eq!(Spec::infer(&saved(&spec, &[])).unwrap(), spec);
            let stray = Spec::infer(&saved(&spec, &["weight_ih_l9"])).unwrap_err();
            assert!(stray.to_string().contains("`weight_ih_l9`"), "{stray}");
        }
    }
}
