//! The `run` command: a PyTorch state_dict and an input file in, an output file out.
//!
//! A recurrent module is inferred from the weight names and shapes (`RecurrentSpec::infer`);
//! any other state_dict is attention. The file's metadata may carry `batch_first` and
//! `nonlinearity`; options override it.
//!
//! Every check runs before any work: the tensors' names, shapes and values (non-finite inputs
//! are refused unless `allow_nonfinite`), and the result's size against `max_output`.

use crate::decoder::run_decoder;
use crate::limits::{self, ByteSize};
use fused_rnn::error::{quoted, Error, Result};
use fused_rnn::io::{save_f32, TensorFile};
use fused_rnn::nn::{holds_decoder, Attention, Recurrent, RecurrentSpec as Spec};
use fused_rnn::{Algo, Cell, DType, Device, Nonlinearity, Tensor};
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

    /// The device, the storage dtype (f32 unless `dtype` names another, which needs CUDA: the
    /// CPU computes in f32 only) and why the device was chosen.
    pub fn open_for(self, dtype: Option<DType>) -> Result<(Device, DType, String)> {
        let (device, reason) = self.open()?;
        match (&device, dtype) {
            (Device::Cpu, Some(d)) if d != DType::F32 => Err(Error::Config(format!(
                "--dtype {d} needs CUDA; the CPU computes in f32 ({reason})"
            ))),
            (_, d) => Ok((device, d.unwrap_or(DType::F32), reason)),
        }
    }
}

/// The options of `run`, which are also the CLI's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// A PyTorch state_dict saved with safetensors.torch.save_file.
    #[arg(long)]
    pub weights: PathBuf,
    /// `input`, optional `h0` (and `c0` for an LSTM), optional int64 `lengths`.
    #[arg(long)]
    pub input: PathBuf,
    /// Receives `output`, `h_n` and (LSTM) `c_n` as f32.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Storage dtype on CUDA (default f32); the CPU computes in f32 only.
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Overrides the weights file's `batch_first` metadata (`--batch-first` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub batch_first: Option<bool>,
    /// Overrides the weights file's `nonlinearity` metadata (RNN modules only).
    #[arg(long)]
    pub nonlinearity: Option<Nonlinearity>,
    /// CUDA algorithm: auto, fused, naive or persistent (recurrent modules); auto, fused or
    /// naive (attention).
    #[arg(long, default_value = "auto")]
    pub algo: Algo,
    /// Also runs the backward of Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n (+ Σ c_n ⊙ grad_c_n)
    /// with the gradients in this file (`grad_output`, optional `grad_h_n`, `grad_c_n`), and
    /// writes `input.grad`, `h0.grad`, `c0.grad` (when given) and `<parameter>.grad`. Runs on
    /// the CPU unless `--device cuda`.
    #[arg(long)]
    pub grad: Option<PathBuf>,
    /// Passes NaN and infinity in the input and gradient tensors through instead of refusing
    /// them (weights must be finite either way).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Refuses a run whose result (and, with --grad, training reserve) would exceed this
    /// many bytes, e.g. 512M or 8GiB; default a quarter of the memory available to the process.
    #[arg(long, value_name = "SIZE")]
    pub max_output: Option<ByteSize>,
}

/// What a successful run did.
#[derive(Debug)]
pub struct RunReport {
    pub device_reason: String,
    pub module: String,
    /// The algorithm `--algo auto` picked on CUDA, and why.
    pub dispatch: Option<String>,
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

/// Runs the module in `opts.weights` on `opts.input` and writes its results as f32 to
/// `opts.output`: `output`, `h_n` and (LSTM) `c_n` for recurrent modules, `context` and
/// `weights` for attention. Every check happens before the output file is created.
pub fn run(opts: &RunOptions) -> Result<RunReport> {
    let weights = TensorFile::load(&opts.weights)?;
    if holds_decoder(&weights, "") {
        return run_decoder(opts, &weights);
    }
    // Recurrent state_dicts name their tensors weight_ih_l{k}, ...; anything else is attention.
    if !weights.contains("weight_ih_l0") && !weights.contains("weight_hh_l0") {
        return run_attention(opts, &weights);
    }
    let mut spec = Spec::infer(&weights)?;
    if let Some(bf) = opts.batch_first {
        spec.batch_first = bf;
    }
    if let Some(nl) = opts.nonlinearity {
        match spec.cell {
            Cell::Rnn(_) => spec.cell = Cell::Rnn(nl),
            other => {
                return Err(Error::Config(format!(
                    "--nonlinearity applies to RNN modules, not to {}",
                    other.name()
                )))
            }
        }
    }
    let lstm = spec.cell == Cell::Lstm;
    let inputs = TensorFile::load(&opts.input)?;
    let allowed: &[&str] = if lstm {
        &["input", "h0", "c0", "lengths"]
    } else {
        &["input", "h0", "lengths"]
    };
    only(&inputs, allowed, spec.cell.name())?;
    if lstm && inputs.contains("h0") != inputs.contains("c0") {
        let (has, lacks) = if inputs.contains("h0") {
            ("h0", "c0")
        } else {
            ("c0", "h0")
        };
        return Err(Error::MissingTensor {
            file: format!(
                "{} (an LSTM takes h0 and c0 together; it has {has})",
                inputs.path().display()
            ),
            tensor: lacks.into(),
        });
    }
    let allowed: &[&str] = if lstm {
        &["grad_output", "grad_h_n", "grad_c_n"]
    } else {
        &["grad_output", "grad_h_n"]
    };
    let grads = load_grads(opts, allowed, spec.cell.name())?;
    let (device, device_reason, dtype) = training_device(opts, grads.is_some())?;
    check_recurrent_result(opts, &spec, &device, &inputs, grads.is_some())?;
    // Every value is checked before the first is used.
    let load = |name: &str| -> Result<Option<Tensor>> {
        match inputs.contains(name) {
            true => Ok(Some(finite(opts, &inputs, name)?)),
            false => Ok(None),
        }
    };
    let (input, h0, c0) = (finite(opts, &inputs, "input")?, load("h0")?, load("c0")?);
    let lengths = read_lengths(&inputs)?;
    let grads = match &grads {
        None => None,
        Some(g) => {
            let optional = |name: &str| g.contains(name).then(|| finite(opts, g, name));
            Some((
                finite(opts, g, "grad_output")?,
                optional("grad_h_n").transpose()?,
                optional("grad_c_n").transpose()?,
            ))
        }
    };
    let mut module = Recurrent::from_state_dict(spec, &weights, &device, dtype)?;
    module.set_algo(opts.algo);
    let to_device = |t: Option<Tensor>| t.map(|t| t.to(&device, dtype)).transpose();
    let input = input.to(&device, dtype)?;
    let (h0, c0) = (to_device(h0)?, to_device(c0)?);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let out = match grads {
        None => module.forward(&input, h0.as_ref(), c0.as_ref(), lengths.as_deref())?,
        Some((grad_output, grad_h_n, grad_c_n)) => {
            let (out, reserve) =
                module.forward_train(&input, h0.as_ref(), c0.as_ref(), lengths.as_deref())?;
            let grad = module.backward(
                &reserve,
                &grad_output.to(&device, dtype)?,
                to_device(grad_h_n)?.as_ref(),
                to_device(grad_c_n)?.as_ref(),
            )?;
            tensors.push(("input.grad".into(), grad.input.to(&device, DType::F32)?));
            if h0.is_some() {
                tensors.push(("h0.grad".into(), grad.h0.to(&device, DType::F32)?));
            }
            if let (Some(_), Some(c0_grad)) = (&c0, &grad.c0) {
                tensors.push(("c0.grad".into(), c0_grad.to(&device, DType::F32)?));
            }
            for (name, t) in module.named_gradients(&grad) {
                tensors.push((format!("{name}.grad"), t.to(&device, DType::F32)?));
            }
            out
        }
    };
    let mut named = vec![("output", &out.output), ("h_n", &out.h_n)];
    if let Some(c_n) = &out.c_n {
        named.push(("c_n", c_n));
    }
    named.extend(tensors.iter().map(|(n, t)| (n.as_str(), t)));
    save_f32(&opts.output, &named)?;
    Ok(RunReport {
        device_reason,
        module: spec.to_string(),
        dispatch: module.dispatch_notes().pop(),
    })
}

/// Tensor `name` of `file` as a host f32 tensor; a non-finite value is an error unless
/// `--allow-nonfinite`.
pub(crate) fn finite(opts: &RunOptions, file: &TensorFile, name: &str) -> Result<Tensor> {
    let t = file.float(name)?;
    if !opts.allow_nonfinite {
        Error::check_finite(name, t.host_slice::<f32>()?, t.shape())
            .map_err(|e| Error::Config(format!("{e} (--allow-nonfinite passes it through)")))?;
    }
    Ok(t)
}

/// Refuses a recurrent run whose result (and host working memory) exceeds `--max-output`,
/// from the shapes alone. An input of the wrong rank is left to the module's checks.
fn check_recurrent_result(
    opts: &RunOptions,
    spec: &Spec,
    device: &Device,
    inputs: &TensorFile,
    training: bool,
) -> Result<()> {
    let Some(&[d0, d1, _]) = inputs.shape("input") else {
        return Ok(());
    };
    let (seq_len, batch) = if spec.batch_first { (d1, d0) } else { (d0, d1) };
    let work = spec.host_work_bytes(device, seq_len, batch, training)?;
    let (slots, out) = (spec.num_layers * spec.directions(), spec.out_size());
    let mut result = vec![
        ("output", vec![seq_len, batch, spec.directions() * out]),
        ("h_n", vec![slots, batch, out]),
    ];
    if spec.cell == Cell::Lstm {
        result.push(("c_n", vec![slots, batch, spec.hidden_size]));
    }
    if training {
        result.push(("input.grad", vec![seq_len, batch, spec.input_size]));
        if inputs.contains("h0") {
            result.push(("h0.grad", vec![slots, batch, out]));
        }
        if inputs.contains("c0") {
            result.push(("c0.grad", vec![slots, batch, spec.hidden_size]));
        }
        // Counts that `validate` bounded.
        let params = spec
            .parameters()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        result.push(("parameter gradients", vec![params]));
    }
    let what = if training {
        "the training reserve"
    } else {
        "working buffers"
    };
    limits::check_result(
        &result,
        (work as u64, what),
        &limits::output_limit(opts.max_output),
    )
}

/// `run` for an attention module: `query`, `keys`, optional `values` and `lengths` in;
/// `context` and `weights` out.
fn run_attention(opts: &RunOptions, weights: &TensorFile) -> Result<RunReport> {
    let refuse = |flag: &str| Error::Config(format!("{flag} does not apply to attention modules"));
    if opts.batch_first.is_some() {
        return Err(refuse("--batch-first"));
    }
    if opts.nonlinearity.is_some() {
        return Err(refuse("--nonlinearity"));
    }
    let grads = load_grads(opts, &["grad_context"], "attention")?;
    let (device, device_reason, dtype) = training_device(opts, grads.is_some())?;
    let mut module = Attention::from_state_dict(weights, &device, dtype)?;
    module.set_algo(opts.algo);
    let inputs = TensorFile::load(&opts.input)?;
    only(
        &inputs,
        &["query", "keys", "values", "lengths"],
        "attention",
    )?;
    check_attention_result(opts, &module, &inputs, grads.is_some())?;
    let keys_in = finite(opts, &inputs, "keys")?;
    let values = match inputs.contains("values") {
        true => Some(finite(opts, &inputs, "values")?),
        false => None,
    };
    let lengths = read_lengths(&inputs)?;
    let query = finite(opts, &inputs, "query")?;
    let grad_context = grads
        .as_ref()
        .map(|g| finite(opts, g, "grad_context"))
        .transpose()?;
    let keys = module.keys(&keys_in, values.as_ref(), lengths.as_deref())?;
    let out = module.attend(&keys, &query, true)?;
    let weights_out = out.weights.expect("asked for the weights");
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    if let Some(grad_context) = &grad_context {
        let grad = module.backward(
            &keys_in,
            values.as_ref(),
            lengths.as_deref(),
            &query,
            grad_context,
        )?;
        tensors.push(("query.grad".into(), grad.query));
        tensors.push(("keys.grad".into(), grad.keys));
        if let Some(v) = grad.values {
            tensors.push(("values.grad".into(), v));
        }
        for (name, t) in grad.params {
            tensors.push((format!("{name}.grad"), t));
        }
    }
    let mut named = vec![("context", &out.context), ("weights", &weights_out)];
    named.extend(tensors.iter().map(|(n, t)| (n.as_str(), t)));
    save_f32(&opts.output, &named)?;
    Ok(RunReport {
        device_reason,
        module: format!("Attention({})", module.score().name()),
        dispatch: None,
    })
}

/// Refuses an attention run whose result exceeds `--max-output`, from the shapes alone.
/// Tensors of the wrong rank are left to the module's checks.
fn check_attention_result(
    opts: &RunOptions,
    module: &Attention,
    inputs: &TensorFile,
    training: bool,
) -> Result<()> {
    let (Some(query), Some(&[b, l, dk])) = (inputs.shape("query"), inputs.shape("keys")) else {
        return Ok(());
    };
    let (tq, dq) = match *query {
        [_, dq] => (1, dq),
        [_, tq, dq] => (tq, dq),
        _ => return Ok(()),
    };
    let dv = match inputs.shape("values") {
        Some(&[_, _, dv]) => dv,
        _ => dk,
    };
    let mut result = vec![("context", vec![b, tq, dv]), ("weights", vec![b, tq, l])];
    if training {
        result.push(("query.grad", query.to_vec()));
        result.push(("keys.grad", vec![b, l, dk]));
        if inputs.contains("values") {
            result.push(("values.grad", vec![b, l, dv]));
        }
    }
    // The CPU's working buffers: the projected keys and queries (K wide) in f32, and for the
    // backward f64 copies of the inputs with the projections and their gradients.
    let k = module.projection_width().unwrap_or(dk) as u128;
    let (b, l, tq) = (b as u128, l as u128, tq as u128);
    let (dq, dk, dv) = (dq as u128, dk as u128, dv as u128);
    let mul = |xs: &[u128]| xs.iter().fold(1u128, |p, &x| p.saturating_mul(x));
    let work = match (module.device().is_cuda(), training) {
        (true, _) => 0,
        (false, false) => mul(&[4, b, l + tq, k]),
        (false, true) => {
            let per_row =
                mul(&[l, 2 * k + dk + 2 * dv]).saturating_add(mul(&[tq, 2 * k + dq + 2 * dv]));
            mul(&[8, b, per_row])
        }
    };
    let work = (u64::try_from(work).unwrap_or(u64::MAX), "working buffers");
    limits::check_result(&result, work, &limits::output_limit(opts.max_output))
}

/// Refuses a tensor of `file` that is not in `allowed`, what `module` takes.
pub(crate) fn only(file: &TensorFile, allowed: &[&str], module: &str) -> Result<()> {
    match file.names().find(|n| !allowed.contains(n)) {
        Some(stray) => Err(Error::Config(format!(
            "{}: unexpected tensor {} ({module} takes {})",
            file.path().display(),
            quoted(stray),
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The `--grad` file, checked to hold only the tensors in `allowed`.
pub(crate) fn load_grads(
    opts: &RunOptions,
    allowed: &[&str],
    module: &str,
) -> Result<Option<TensorFile>> {
    let Some(path) = &opts.grad else {
        return Ok(None);
    };
    let g = TensorFile::load(path)?;
    only(&g, allowed, module)?;
    Ok(Some(g))
}

/// The device of this run, why, and its storage dtype (`choose_device`); a CUDA `--algo` on
/// the CPU is an error.
pub(crate) fn training_device(
    opts: &RunOptions,
    training: bool,
) -> Result<(Device, String, DType)> {
    let (device, reason, dtype) = choose_device(opts, training)?;
    // The CPU has one path: a CUDA algorithm asked for cannot be honoured there.
    if !device.is_cuda() && opts.algo != Algo::Auto {
        return Err(Error::Unsupported {
            request: format!("--algo {}", opts.algo.name()),
            reason: format!("it runs on CUDA, but this run is on the CPU ({reason})"),
        });
    }
    Ok((device, reason, dtype))
}

/// `open_device`, except that a run with `--grad` (training) uses the CPU, whose backward
/// computes in f64, unless `--device cuda` asks for the GPU.
fn choose_device(opts: &RunOptions, training: bool) -> Result<(Device, String, DType)> {
    if !training || opts.device == DeviceChoice::Cuda {
        return open_device(opts);
    }
    if opts.dtype.is_some_and(|d| d != DType::F32) {
        return Err(Error::Config(
            "--grad computes in f32 on the CPU; --dtype needs --device cuda".into(),
        ));
    }
    Ok((
        Device::Cpu,
        "using the CPU: --grad runs on the CPU unless --device cuda".into(),
        DType::F32,
    ))
}

/// The device `--device` picks, why, and the storage dtype (`--dtype`; f32 on the CPU).
fn open_device(opts: &RunOptions) -> Result<(Device, String, DType)> {
    let (device, device_reason) = opts.device.open()?;
    let dtype = match (&device, opts.dtype) {
        (Device::Cpu, Some(d)) if d != DType::F32 => {
            return Err(Error::Config(format!(
                "--dtype {d} needs CUDA; the CPU computes in f32 ({device_reason})"
            )))
        }
        (_, d) => d.unwrap_or(DType::F32),
    };
    Ok((device, device_reason, dtype))
}
