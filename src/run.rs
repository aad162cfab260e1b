//! The `run` command: a PyTorch state_dict and an input file in, an output file out.
//!
//! The module is inferred from the weight names and shapes: layers from `weight_ih_l{k}`,
//! directions from `_reverse`, the hidden size from the columns of `weight_hh_l0`, and the kind
//! from rows(weight_hh_l0) / H: 1 → RNN, 3 → GRU, 4 → LSTM. The file's metadata may carry
//! `batch_first` and `nonlinearity`; options override it.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::{save_f32, TensorFile};
use crate::nn::{Rnn, RnnConfig};
use crate::ops::rnn::{Algo, Nonlinearity};
use std::path::PathBuf;

/// Which device `run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(Error::Config(format!(
                "unknown device `{s}` (expected auto, cpu or cuda)"
            ))),
        }
    }
}

impl DeviceChoice {
    /// The device and a sentence saying why it was chosen.
    pub fn open(self) -> Result<(Device, String)> {
        match self {
            DeviceChoice::Auto => Ok(Device::auto()),
            DeviceChoice::Cpu => Ok((Device::Cpu, "using the CPU (asked for)".into())),
            DeviceChoice::Cuda => {
                let dev = Device::cuda(0)?;
                let why = format!("using {} (asked for)", dev.name());
                Ok((dev, why))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub weights: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub device: DeviceChoice,
    /// Storage dtype on CUDA; f32 when absent. The CPU computes in f32 only.
    pub dtype: Option<DType>,
    pub batch_first: Option<bool>,
    pub nonlinearity: Option<Nonlinearity>,
    pub algo: Algo,
}

/// What a successful run did.
#[derive(Debug)]
pub struct RunReport {
    pub device: String,
    pub device_reason: String,
    pub module: String,
}

/// Infers an RNN's configuration from a state_dict and its metadata.
pub fn infer_rnn_config(file: &TensorFile) -> Result<RnnConfig> {
    let w_hh = file
        .shape("weight_hh_l0")
        .ok_or_else(|| Error::MissingTensor {
            file: file.path().display().to_string(),
            tensor: "weight_hh_l0".into(),
        })?;
    let w_ih = file
        .shape("weight_ih_l0")
        .ok_or_else(|| Error::MissingTensor {
            file: file.path().display().to_string(),
            tensor: "weight_ih_l0".into(),
        })?;
    let (&[rows, hh_cols], &[_, input_size]) = (w_hh, w_ih) else {
        return Err(Error::Config(format!(
            "weight_hh_l0 and weight_ih_l0 must be matrices (shapes {w_hh:?}, {w_ih:?})"
        )));
    };
    // With an LSTM projection the hidden size is the columns of weight_hr_l0.
    let hidden = match file.shape("weight_hr_l0") {
        Some(&[_, h]) => h,
        _ => hh_cols,
    };
    match (hidden > 0 && rows % hidden == 0).then(|| rows / hidden) {
        Some(1) => {}
        Some(4) => return Err(Error::Config("LSTM modules are not supported yet".into())),
        Some(3) => return Err(Error::Config("GRU modules are not supported yet".into())),
        _ => {
            return Err(Error::shape(
                "weight_hh_l0",
                format!("[G·{hidden}, {hh_cols}] with G = 1 (RNN), 3 (GRU) or 4 (LSTM)"),
                w_hh,
            ))
        }
    }
    let num_layers = (0..)
        .take_while(|k| file.contains(&format!("weight_ih_l{k}")))
        .count();
    let bidirectional = file.contains("weight_ih_l0_reverse");
    let mut config = RnnConfig {
        input_size,
        hidden_size: hidden,
        num_layers,
        nonlinearity: Nonlinearity::Tanh,
        bias: file.contains("bias_ih_l0"),
        batch_first: false,
        bidirectional,
    };
    if let Some(v) = file.metadata("batch_first") {
        config.batch_first = parse_bool("batch_first", v)?;
    }
    if let Some(v) = file.metadata("nonlinearity") {
        config.nonlinearity = v.parse()?;
    }
    // Every tensor must be one the configuration expects: a stray name means a wrong file.
    let expected = expected_names(&config);
    if let Some(stray) = file.names().find(|n| !expected.iter().any(|e| e == n)) {
        return Err(Error::Config(format!(
            "{}: unexpected tensor `{stray}` for an RNN with {num_layers} layer(s){}",
            file.path().display(),
            if bidirectional { ", bidirectional" } else { "" }
        )));
    }
    Ok(config)
}

fn expected_names(config: &RnnConfig) -> Vec<String> {
    let mut names = Vec::new();
    for layer in 0..config.num_layers {
        for dir in 0..config.directions() {
            let sfx = RnnConfig::suffix(layer, dir);
            names.push(format!("weight_ih_{sfx}"));
            names.push(format!("weight_hh_{sfx}"));
            if config.bias {
                names.push(format!("bias_ih_{sfx}"));
                names.push(format!("bias_hh_{sfx}"));
            }
        }
    }
    names
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(Error::Config(format!(
            "metadata {key} = `{v}` (expected true or false)"
        ))),
    }
}

/// Reads `lengths` (int64 [B]) from the input file, when present.
fn read_lengths(file: &TensorFile) -> Result<Option<Vec<usize>>> {
    if !file.contains("lengths") {
        return Ok(None);
    }
    let (values, shape) = file.ints("lengths")?;
    if shape.len() != 1 {
        return Err(Error::shape("lengths", "[B]", &shape));
    }
    values
        .iter()
        .enumerate()
        .map(|(b, &v)| {
            usize::try_from(v)
                .map_err(|_| Error::Lengths(format!("lengths[{b}] = {v} is negative")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Runs the module in `opts.weights` on `opts.input` and writes `output` and `h_n` (f32) to
/// `opts.output`. Every check happens before the output file is created.
pub fn run(opts: &RunOptions) -> Result<RunReport> {
    let weights = TensorFile::load(&opts.weights)?;
    let mut config = infer_rnn_config(&weights)?;
    if let Some(bf) = opts.batch_first {
        config.batch_first = bf;
    }
    if let Some(nl) = opts.nonlinearity {
        config.nonlinearity = nl;
    }
    let inputs = TensorFile::load(&opts.input)?;
    if let Some(stray) = inputs
        .names()
        .find(|n| !["input", "h0", "lengths"].contains(n))
    {
        return Err(Error::Config(format!(
            "{}: unexpected tensor `{stray}` (an RNN takes input, h0 and lengths)",
            inputs.path().display()
        )));
    }
    let (device, device_reason) = opts.device.open()?;
    let dtype = match (&device, opts.dtype) {
        (Device::Cpu, Some(d)) if d != DType::F32 => {
            return Err(Error::Config(format!(
                "--dtype {d} needs CUDA; the CPU computes in f32 ({device_reason})"
            )))
        }
        (_, d) => d.unwrap_or(DType::F32),
    };
    let rnn = Rnn::from_state_dict(config, &weights, &device, dtype)?.with_algo(opts.algo);
    let input = inputs.float("input")?.to(&device, dtype)?;
    let h0 = match inputs.contains("h0") {
        true => Some(inputs.float("h0")?.to(&device, dtype)?),
        false => None,
    };
    let lengths = read_lengths(&inputs)?;
    let out = rnn.forward(&input, h0.as_ref(), lengths.as_deref())?;
    save_f32(&opts.output, &[("output", &out.output), ("h_n", &out.h_n)])?;
    Ok(RunReport {
        device: device.name(),
        device_reason,
        module: describe(&config),
    })
}

fn describe(c: &RnnConfig) -> String {
    format!(
        "RNN({}, {}, num_layers={}, nonlinearity={}, bias={}, batch_first={}, bidirectional={})",
        c.input_size,
        c.hidden_size,
        c.num_layers,
        c.nonlinearity.name(),
        c.bias,
        c.batch_first,
        c.bidirectional
    )
}
