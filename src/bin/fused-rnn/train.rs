//! `train caption`: a show-attend-tell captioner (patch encoder and attention decoder, trained
//! together) on the digit scenes or a caption data set, with a progress bar, evaluation on the
//! validation split at intervals, atomic checkpoints and resuming.
//!
//! Beside the checkpoint `CKPT` it keeps `CKPT.state`: Adam's moments and the run's position
//! (step, time, and the settings the run keeps from start to end: seed, schedule, data, model,
//! loss), which `--resume` continues from, refusing a flag that would change a setting; with
//! `--average`, also the average and the weights the run is at, since the checkpoint then
//! holds the average. The learning rate falls linearly from `--lr` to `--lr-end` over the
//! budget. On the CPU the same flags give the same checkpoint, byte for byte, when the budget
//! is counted in steps or epochs (a budget in minutes stops wherever the clock says).

use crate::corpus::{Batch, Batches, Corpus, Example};
use crate::run::DeviceChoice;
use crate::scores::score;
use fused_rnn::data::digits::UCI_TRAINING;
use fused_rnn::data::images::Channels;
use fused_rnn::data::Split;
use fused_rnn::error::{Error, Result};
use fused_rnn::io::{save, Data, TensorFile};
use fused_rnn::models::{Captioner, CaptionerConfig, Input, StepReport};
use fused_rnn::nn::{AttentionActivation, EncoderLayers, ImageShape, Module};
use fused_rnn::train::{Adam, AdamSnapshot, WeightAverage};
use fused_rnn::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TrainCommand {
    /// Train a captioner on images and their captions.
    Caption(TrainCaption),
    /// Train the date translator (human-written dates to ISO 8601).
    Translate(crate::translate::TrainTranslate),
}

/// How long to train: one of minutes, epochs or steps (default 10 minutes).
#[derive(Debug, Clone, clap::Args)]
#[group(multiple = false)]
pub struct Budget {
    /// Train for this many minutes of wall-clock time.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Train for this many passes over the training images (the digit scenes: 10,000 scenes
    /// an epoch).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Train for this many optimizer steps.
    #[arg(long, value_parser = crate::positive::<u64>)]
    pub steps: Option<u64>,
}

/// What every training command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The checkpoint to write (and, with --resume, to continue from).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub budget: Budget,
    #[command(flatten)]
    pub settings: RunSettings,
    /// Evaluate on the validation split (and write the checkpoint) every this many steps.
    #[arg(long, default_value_t = 2000, value_parser = crate::positive::<u64>)]
    pub eval_every: u64,
    /// Continue the run whose checkpoint is --out (its model, optimizer, schedule and
    /// settings). The budget is the run's whole: a larger one extends the run, and the learning
    /// rate is then where the schedule over the new budget puts the step reached.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Storage dtype on CUDA (default f32); the CPU computes in f32 only.
    #[arg(long)]
    pub dtype: Option<DType>,
    #[arg(skip)]
    pub given: Given,
}

/// What every training run keeps from its start to its end: recorded in `CKPT.state`, and on
/// `--resume` taken from there.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    /// Examples per step.
    #[arg(long, default_value_t = 16, value_parser = crate::positive::<usize>)]
    pub batch: usize,
    /// The learning rate at the start, falling linearly to --lr-end.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 1e-4)]
    pub lr_end: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Clip the gradients' global norm to this.
    #[arg(long, default_value_t = CLIP)]
    #[serde(default = "clip")]
    pub clip: f32,
    /// Average the weights over the last this share of the budget (0: none, 1: all of it):
    /// from there on the checkpoint, and the evaluation, use the mean of the weights every 10
    /// steps (stochastic weight averaging).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub average: f64,
    /// Decoupled weight decay (AdamW, as torch.optim.AdamW's weight_decay; 0: Adam).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub weight_decay: f32,
}

/// The gradient clipping of a state written before it recorded one: the flag's default.
const CLIP: f32 = 5.0;

fn clip() -> f32 {
    CLIP
}

/// The flags given on the command line, by clap's ids (the options' field names): what
/// `--resume` holds against the run's recorded settings.
#[derive(Debug, Clone, Default)]
pub struct Given(pub BTreeSet<String>);

/// Steps between the weights a `--average` run adds to its mean: often enough for a smooth
/// mean, rarely enough that reading CUDA weights back to the host costs nothing.
const AVERAGE_EVERY: u64 = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainCaption {
    #[command(flatten)]
    pub common: Common,
    /// Validation images evaluated.
    #[arg(long, default_value_t = 500, value_parser = crate::positive::<usize>)]
    pub eval_images: usize,
    #[command(flatten)]
    pub settings: CaptionSettings,
}

/// What a captioner's run keeps from its start to its end, beside [`RunSettings`]: its data,
/// its model's shape and its loss.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct CaptionSettings {
    /// `digits` (the bundled digit scenes, generated as training goes) or a data set folder: a
    /// Karpathy file `dataset_*.json` or COCO files `captions_<split>*.json`, with the images.
    #[arg(long, default_value = crate::corpus::DIGITS)]
    pub data: String,
    /// The model's input size HxW (default: the first training image's, cut to whole patches).
    #[arg(long, value_parser = parse_size)]
    pub image: Option<Size>,
    /// Regions are patch×patch squares of the image...
    #[arg(long, default_value_t = 8)]
    pub patch: usize,
    /// ...each reading the window×window square centred on it.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// A stem of 4×4 stride-2 convolutions before the windows, their channels first to last
    /// (`16,32`), or `none`: windows of raw pixels.
    #[arg(long, default_value = "16,32", value_parser = parse_channels)]
    pub conv: Convs,
    /// A hidden layer of this size between a window and its key (0: none).
    #[arg(long, default_value_t = 0)]
    pub encoder_hidden: usize,
    /// D: the encoder's output per region.
    #[arg(long, default_value_t = 128)]
    pub features: usize,
    #[arg(long, default_value_t = 128)]
    pub attention: usize,
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 64)]
    pub embed: usize,
    /// Dropout before the decoder's output layer.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Words seen fewer times in the training captions become `<unk>`.
    #[arg(long, default_value_t = 1)]
    pub min_count: usize,
    /// The weight of the doubly stochastic attention penalty.
    #[arg(long, default_value_t = 1.0)]
    pub alpha_c: f32,
    /// How far training images are randomly warped (`data::augment`; 0 for not at all).
    #[arg(long, default_value_t = 1.0)]
    pub augment: f32,
    /// Train on the validation split as well as the training split (a final run, once the
    /// recipe is chosen): the validation scores then measure images trained on.
    #[arg(long)]
    pub train_on_val: bool,
    /// The digit scenes only: train on the UCI training part's 3,823 digits as well (30
    /// writers, none of them the test pool's; `data/digits`).
    #[arg(long)]
    #[serde(default)]
    pub more_digits: bool,
}

/// The stem's channels, first to last.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Convs(pub Vec<usize>);

fn parse_channels(text: &str) -> std::result::Result<Convs, String> {
    if text == "none" {
        return Ok(Convs(Vec::new()));
    }
    let bad = || format!("`{text}` is not a list of channels (like 16,32) or `none`");
    let convs = text
        .split(',')
        .map(|c| c.trim().parse::<usize>().ok().filter(|&c| c > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    Ok(Convs(convs))
}

/// An image size, height and width; written `HxW`, as its flag takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Size(pub usize, pub usize);

impl From<Size> for String {
    fn from(Size(h, w): Size) -> String {
        format!("{h}x{w}")
    }
}

impl TryFrom<String> for Size {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Size, String> {
        parse_size(&text)
    }
}

fn parse_size(text: &str) -> std::result::Result<Size, String> {
    let bad = || format!("`{text}` is not a size HxW (like 48x96)");
    let (h, w) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    match (h.parse(), w.parse()) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok(Size(h, w)),
        _ => Err(bad()),
    }
}

impl TrainCommand {
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            TrainCommand::Caption(opts) => &mut opts.common,
            TrainCommand::Translate(opts) => &mut opts.common,
        }
    }
}

pub fn train(command: &TrainCommand) -> Result<String> {
    match command {
        TrainCommand::Caption(opts) => train_caption(opts),
        TrainCommand::Translate(opts) => crate::translate::train_translate(opts),
    }
}

/// Where a run stands: what `CKPT.state` records beside the optimizer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub step: u64,
    /// Seconds trained before this session (a resumed run's minutes count them).
    pub seconds: f64,
    #[serde(flatten)]
    pub settings: RunSettings,
    /// The task's own settings (a captioner's [`CaptionSettings`]), by their fields' names.
    #[serde(default)]
    pub task: Map<String, Value>,
    /// The sha256 of the checkpoint written with this state.
    pub checkpoint: String,
}

/// The budget as a fraction done, from the position.
pub struct Schedule {
    budget: Budget,
    per_epoch: u64,
}

impl Schedule {
    pub fn new(budget: &Budget, per_epoch: u64) -> Result<Self> {
        let bad = |what: &str| Err(Error::Config(format!("{what} must be positive")));
        match (budget.minutes, budget.epochs, budget.steps) {
            (Some(m), _, _) if !(m > 0.0 && m.is_finite()) => return bad("--minutes"),
            (_, Some(e), _) if !(e > 0.0 && e.is_finite()) => return bad("--epochs"),
            _ => {}
        }
        let mut budget = budget.clone();
        if budget.epochs.is_none() && budget.steps.is_none() {
            budget.minutes = Some(budget.minutes.unwrap_or(10.0));
        }
        Ok(Schedule { budget, per_epoch })
    }

    /// The share of the budget spent after `step` steps of `batch` in `seconds`.
    pub fn done(&self, step: u64, batch: usize, seconds: f64) -> f64 {
        let b = &self.budget;
        let share = match (b.minutes, b.epochs, b.steps) {
            (Some(m), _, _) => seconds / (m * 60.0),
            (_, Some(e), _) => (step * batch as u64) as f64 / (e * self.per_epoch as f64),
            (_, _, Some(s)) => step as f64 / s as f64,
            _ => 1.0,
        };
        share.clamp(0.0, 1.0)
    }
}

pub fn bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{bar:30}} {{percent:>3}}% ETA {{eta}} {{msg}}"
        ))
        .expect("a valid template"),
    );
    bar
}

/// The state file beside checkpoint `out`.
pub fn state_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".state");
    PathBuf::from(name)
}

/// Writes the optimizer's moments and the position beside the checkpoint; when the
/// checkpoint holds a weight average, also the average (`a.K`, its count) and `weights`, the
/// weights the run is at (`w.K`).
pub fn save_state(
    out: &Path,
    adam: &Adam,
    position: Position,
    average: &WeightAverage,
    weights: Option<&[Vec<f32>]>,
) -> Result<()> {
    let snapshot = adam.snapshot()?;
    let mut tensors = Vec::new();
    let vector = |values: &Vec<f32>| Tensor::from_vec(values.clone(), &[values.len()]);
    for (k, (m, v)) in snapshot.moments.iter().enumerate() {
        tensors.push((format!("m.{k}"), vector(m)?));
        tensors.push((format!("v.{k}"), vector(v)?));
    }
    for (k, w) in weights.unwrap_or_default().iter().enumerate() {
        tensors.push((format!("w.{k}"), vector(w)?));
    }
    for (k, a) in average.means().iter().enumerate() {
        tensors.push((format!("a.{k}"), vector(a)?));
    }
    let data: Vec<(&str, Data)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), Data::Float(t)))
        .collect();
    let meta = vec![
        (
            "position".to_string(),
            serde_json::to_string(&position).expect("plain numbers"),
        ),
        ("adam_steps".to_string(), snapshot.steps.to_string()),
        ("average_count".to_string(), average.count().to_string()),
    ];
    save(state_path(out), &data, &meta)
}

/// What `CKPT.state` holds.
pub struct State {
    pub position: Position,
    pub snapshot: AdamSnapshot,
    /// The weights the run was at, when the checkpoint holds their average instead.
    pub weights: Option<Vec<Vec<f32>>>,
    pub average: WeightAverage,
}

/// The optimizer's moments, the position and the weight average saved beside checkpoint `out`.
pub fn load_state(out: &Path) -> Result<State> {
    let path = state_path(out);
    let file = TensorFile::load(&path)?;
    let bad = |what: &str| Error::Config(format!("{}: {what}", path.display()));
    let position: Position = serde_json::from_str(
        file.metadata("position")
            .ok_or_else(|| bad("no `position` metadata"))?,
    )
    .map_err(|e| bad(&format!("malformed `position` ({e})")))?;
    let steps: u32 = file
        .metadata("adam_steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no `adam_steps` metadata"))?;
    let averaged: u64 = file
        .metadata("average_count")
        .map_or(Some(0), |s| s.parse().ok())
        .ok_or_else(|| bad("malformed `average_count` metadata"))?;
    // Tensors `prefix.0`, `prefix.1`, ... as host values.
    let vectors = |prefix: &str| -> Result<Vec<Vec<f32>>> {
        let count = file
            .names()
            .filter(|n| {
                n.strip_prefix(prefix)
                    .is_some_and(|k| k.parse::<usize>().is_ok())
            })
            .count();
        (0..count)
            .map(|k| file.float(&format!("{prefix}{k}"))?.to_vec_f32())
            .collect()
    };
    let (m, v) = (vectors("m.")?, vectors("v.")?);
    if m.len() != v.len() {
        return Err(bad(&format!(
            "{} first moments but {} second moments",
            m.len(),
            v.len()
        )));
    }
    let moments = m.into_iter().zip(v).collect();
    let weights = vectors("w.")?;
    Ok(State {
        position,
        snapshot: AdamSnapshot { steps, moments },
        weights: (!weights.is_empty()).then_some(weights),
        average: WeightAverage::from_means(vectors("a.")?, averaged)
            .map_err(|e| bad(&e.to_string()))?,
    })
}

/// A model being trained: one step, an evaluation line, its checkpoint.
pub trait Task {
    /// One optimizer step on examples from position `start` of the run's stream.
    fn step(&mut self, start: u64, batch: usize, adam: &mut Adam) -> Result<StepReport>;
    /// How the model does on the validation split, as a line.
    fn evaluate(&self) -> Result<String>;
    fn save(&self, out: &Path) -> Result<()>;
    /// The model's parameters, for the weight average.
    fn module(&mut self) -> &mut dyn Module;
}

/// A run's model, optimizer, position and weight average, as [`start`] makes them.
pub type Started<M> = (M, Adam, Position, WeightAverage);

/// With `--resume`, the run's state, once the flags given agree with the settings it records;
/// else none.
pub fn resume(common: &Common) -> Result<Option<State>> {
    if !common.resume {
        return Ok(None);
    }
    let state = load_state(&common.out)?;
    merged(
        &common.settings,
        &recorded(&state.position.settings),
        &common.given,
    )?;
    Ok(Some(state))
}

/// A task's settings: `line`'s (the command line's), or resuming, the run's own as `state`
/// records them. A flag given that differs from the run's is an error, since a resumed run
/// continues as it started; a setting the state lacks is the command line's.
pub fn settings<T: Clone + Serialize + DeserializeOwned>(
    line: &T,
    state: Option<&State>,
    given: &Given,
) -> Result<T> {
    match state {
        Some(state) => merged(line, &state.position.task, given),
        None => Ok(line.clone()),
    }
}

/// `line` with each setting that `run` records in its place, refusing a flag given that
/// differs.
fn merged<T: Serialize + DeserializeOwned>(
    line: &T,
    run: &Map<String, Value>,
    given: &Given,
) -> Result<T> {
    let mut values = recorded(line);
    for (name, value) in values.iter_mut() {
        let Some(kept) = run.get(name) else { continue };
        if given.0.contains(name) && kept != value {
            return Err(Error::Config(format!(
                "--{} {} is not what the run started with ({}): --resume continues a run with \
                 its own settings (leave the flag out, or start again without --resume)",
                name.replace('_', "-"),
                shown(value),
                shown(kept)
            )));
        }
        *value = kept.clone();
    }
    serde_json::from_value(Value::Object(values))
        .map_err(|e| Error::Config(format!("the run's recorded settings are malformed ({e})")))
}

/// Settings by their fields' names, with numbers as a state file holds them (an f32 as its
/// shortest decimal), so that a value compares equal to itself read back.
pub fn recorded<T: Serialize>(settings: &T) -> Map<String, Value> {
    let text = serde_json::to_string(settings).expect("settings are plain values");
    serde_json::from_str(&text).expect("settings are a struct")
}

/// A setting's value as its flag takes it.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "unset".into(),
        Value::Array(items) if items.is_empty() => "none".into(),
        Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Makes the model (`load`ed from the checkpoint at --out when resuming from `state`, else
/// `fresh`), its optimizer, its position (recording the task's `task` settings) and its
/// weight average.
pub fn start<M: Module>(
    common: &Common,
    state: Option<State>,
    task: Map<String, Value>,
    load: impl FnOnce(&Path) -> Result<M>,
    fresh: impl FnOnce() -> Result<M>,
) -> Result<Started<M>> {
    if let Some(State {
        mut position,
        snapshot,
        weights,
        average,
    }) = state
    {
        let mut model = load(&common.out)?;
        if sha256_of(&common.out)? != position.checkpoint {
            return Err(Error::Config(format!(
                "{} does not belong to {} (the run stopped between writing them): start again \
                 without --resume",
                state_path(&common.out).display(),
                common.out.display()
            )));
        }
        if let Some(weights) = weights {
            WeightAverage::restore(&mut model, &weights)?;
        }
        let mut adam = optimizer(&position.settings);
        adam.restore(&mut model, snapshot)?;
        position.task = task;
        return Ok((model, adam, position, average));
    }
    let position = Position {
        step: 0,
        seconds: 0.0,
        settings: common.settings.clone(),
        task,
        checkpoint: String::new(),
    };
    Ok((
        fresh()?,
        optimizer(&position.settings),
        position,
        WeightAverage::new(),
    ))
}

/// Adam, or AdamW where the run decays its weights.
fn optimizer(settings: &RunSettings) -> Adam {
    match settings.weight_decay {
        0.0 => Adam::new(settings.lr),
        decay => {
            let mut adam = Adam::adamw(settings.lr);
            adam.weight_decay = decay;
            adam
        }
    }
}

/// Trains `task` from `position` until the budget is spent, evaluating and writing the
/// checkpoint every --eval-every steps and at the end (with the averaged weights once the
/// average has begun).
pub fn run(
    what: &str,
    task: &mut dyn Task,
    common: &Common,
    (mut adam, mut position, mut average): (Adam, Position, WeightAverage),
    per_epoch: u64,
) -> Result<String> {
    let schedule = Schedule::new(&common.budget, per_epoch)?;
    let bar = bar(what);
    let started = Instant::now();
    let seconds = |p: &Position| p.seconds + started.elapsed().as_secs_f64();
    // Since the last evaluation: when, tokens, summed loss, steps.
    let mut since = (Instant::now(), 0usize, 0f64, 0usize);
    // `position.seconds` counts the time to this step.
    let line = |task: &dyn Task,
                position: &Position,
                since: &(Instant, usize, f64, usize)|
     -> Result<String> {
        let train = match since.3 {
            0 => String::new(),
            n => format!("train loss {:.4}, ", since.2 / n as f64),
        };
        Ok(format!(
            "step {} ({} examples, {:.1} s): {train}{}",
            position.step,
            position.step * position.settings.batch as u64,
            position.seconds,
            task.evaluate()?
        ))
    };
    loop {
        let done = schedule.done(position.step, position.settings.batch, seconds(&position));
        bar.set_position((done * 1000.0) as u64);
        if done >= 1.0 {
            break;
        }
        adam.lr =
            position.settings.lr + (position.settings.lr_end - position.settings.lr) * done as f32;
        let report = task.step(
            position.step * position.settings.batch as u64,
            position.settings.batch,
            &mut adam,
        )?;
        if !report.loss.is_finite() {
            return Err(Error::Config(format!(
                "the loss is {} at step {}: lower --lr",
                report.loss, position.step
            )));
        }
        position.step += 1;
        let averaging = position.settings.average > 0.0
            && schedule.done(position.step, position.settings.batch, seconds(&position))
                >= 1.0 - position.settings.average;
        if averaging && position.step.is_multiple_of(AVERAGE_EVERY) {
            average.update(task.module())?;
        }
        since.1 += report.tokens;
        since.2 += f64::from(report.cross_entropy);
        since.3 += 1;
        let elapsed = since.0.elapsed().as_secs_f64();
        if elapsed >= 0.5 {
            bar.set_message(format!(
                "step {} loss {:.4} {:.0} tokens/s",
                position.step,
                since.2 / since.3 as f64,
                since.1 as f64 / elapsed
            ));
        }
        if position.step.is_multiple_of(common.eval_every) {
            let at = Position {
                seconds: seconds(&position),
                ..position.clone()
            };
            let text = checkpoint(task, &adam, &average, &common.out, at, |task, at| {
                line(task, at, &since)
            })?;
            since = (Instant::now(), 0, 0.0, 0);
            // Said once written: a run stopped after this line resumes from this step.
            bar.suspend(|| eprintln!("{text}"));
        }
    }
    bar.finish_and_clear();
    position.seconds = seconds(&position);
    let evaluate = since.3 > 0 || position.step == 0;
    let text = checkpoint(task, &adam, &average, &common.out, position, |task, at| {
        evaluate.then(|| line(task, at, &since)).transpose()
    })?;
    if let Some(text) = text {
        eprintln!("{text}");
    }
    let averaged = match average.count() {
        0 => String::new(),
        n => format!(" (the mean of the weights at {n} steps)"),
    };
    Ok(format!("wrote {}{averaged}", common.out.display()))
}

/// With the average's weights in the model when it has begun: `report` (the evaluation),
/// then the model written, then the state that names the model's bytes by their sha256 (a
/// run stopped between the two writes leaves a pair that `--resume` refuses). The model goes
/// back to the weights the run is at.
fn checkpoint<R>(
    task: &mut dyn Task,
    adam: &Adam,
    average: &WeightAverage,
    out: &Path,
    mut position: Position,
    report: impl FnOnce(&dyn Task, &Position) -> Result<R>,
) -> Result<R> {
    let weights = match average.count() {
        0 => None,
        _ => Some(average.install(task.module())?),
    };
    let written = report(&*task, &position).and_then(|r| {
        task.save(out)?;
        Ok(r)
    });
    if let Some(weights) = &weights {
        WeightAverage::restore(task.module(), weights)?;
    }
    let r = written?;
    position.checkpoint = sha256_of(out)?;
    save_state(out, adam, position, average, weights.as_deref())?;
    Ok(r)
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The captioner with its training batches and validation images.
struct CaptionTask {
    model: Captioner,
    batches: Arc<Batches>,
    /// The next batch, made on another thread while the step runs: (its start, the thread).
    next: Option<(u64, JoinHandle<Result<Batch>>)>,
    val: Vec<Example>,
    shape: ImageShape,
    alpha_c: f32,
    clip: f32,
}

impl Task for CaptionTask {
    fn step(&mut self, start: u64, size: usize, adam: &mut Adam) -> Result<StepReport> {
        let batch = match self.next.take() {
            Some((at, thread)) if at == start => thread.join().expect("batches do not panic")?,
            _ => self.batches.get(start, size)?,
        };
        let batches = Arc::clone(&self.batches);
        let after = start + size as u64;
        self.next = Some((after, std::thread::spawn(move || batches.get(after, size))));
        let (ids, lengths) = self.model.vocab().encode_batch(&batch.captions)?;
        self.model.train_step(
            Input::Pixels(&batch.pixels),
            &ids,
            &lengths,
            adam,
            self.alpha_c,
            Some(self.clip),
        )
    }

    fn evaluate(&self) -> Result<String> {
        let captions = caption_all(&self.model, &self.val, self.shape)?;
        let scores = score(&captions, &self.val, self.shape)?;
        let refs: Vec<Vec<String>> = self.val.iter().map(|e| e.references[0].clone()).collect();
        let pixels: Vec<f32> = self
            .val
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let (ids, lengths) = self.model.vocab().encode_batch(&refs)?;
        let loss = self
            .model
            .loss(Input::Pixels(&pixels), &ids, &lengths, 0.0)?
            .cross_entropy;
        Ok(format!("validation loss {loss:.4}, {scores}"))
    }

    fn save(&self, out: &Path) -> Result<()> {
        self.model.save(out)
    }

    fn module(&mut self) -> &mut dyn Module {
        &mut self.model
    }
}

/// Refuses flags that cannot make a run, before anything starts.
pub fn check(common: &Common) -> Result<()> {
    let settings = &common.settings;
    if !(0.0..=1.0).contains(&settings.average) {
        return Err(Error::Config(format!(
            "--average must be a share of the budget from 0 to 1, not {}",
            settings.average
        )));
    }
    non_negative(&[("--weight-decay", settings.weight_decay)])?;
    Schedule::new(&common.budget, 1).map(|_| ())
}

/// Refuses a flag's value that is negative, infinite or NaN.
fn non_negative(flags: &[(&str, f32)]) -> Result<()> {
    for &(flag, value) in flags {
        if !(value >= 0.0 && value.is_finite()) {
            return Err(Error::Config(format!(
                "{flag} must be a finite number of at least 0, not {value}"
            )));
        }
    }
    Ok(())
}

fn train_caption(opts: &TrainCaption) -> Result<String> {
    let common = &opts.common;
    check(common)?;
    let state = resume(common)?;
    let mut line = opts.settings.clone();
    // A folder is kept by its absolute path, so that the run resumes from anywhere.
    if line.data != crate::corpus::DIGITS {
        if let Some(path) = std::fs::canonicalize(&line.data)
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
        {
            line.data = path;
        }
    }
    let recipe = &settings(&line, state.as_ref(), &common.given)?;
    non_negative(&[("--augment", recipe.augment), ("--alpha-c", recipe.alpha_c)])?;
    let p = recipe.patch.max(1);
    ImageShape {
        window: recipe.window,
        ..ImageShape::patches(1, p, p, p)
    }
    .check()?;
    let mut corpus = Corpus::open(&recipe.data)?;
    if recipe.more_digits {
        corpus = corpus.with_training_digits()?;
    }
    if recipe.train_on_val {
        corpus = corpus.train_on_val();
    }
    let (device, dtype, reason) = common.device.open_for(common.dtype)?;
    let fresh = || -> Result<Captioner> {
        let (height, width, channels) = match recipe.image {
            Some(Size(h, w)) => (h, w, corpus.native_size()?.2),
            None => corpus.native_size()?,
        };
        let patch = recipe.patch.max(1);
        let shape = ImageShape {
            channels: match channels {
                Channels::Grey => 1,
                Channels::Rgb => 3,
            },
            height: (height / patch).max(1) * patch,
            width: (width / patch).max(1) * patch,
            patch,
            window: recipe.window,
        };
        let config = CaptionerConfig {
            image: Some(shape),
            encoder: EncoderLayers {
                convs: recipe.conv.0.clone(),
                hidden: (recipe.encoder_hidden > 0).then_some(recipe.encoder_hidden),
            },
            features: recipe.features,
            attention: recipe.attention,
            hidden: recipe.hidden,
            embed: recipe.embed,
            activation: AttentionActivation::Relu,
            dropout: recipe.dropout,
        };
        Captioner::random(
            config,
            corpus.vocab(recipe.min_count)?,
            &device,
            dtype,
            common.settings.seed,
        )
    };
    let load = |p: &Path| Captioner::load(p, &device, dtype);
    let (model, adam, position, average) = start(common, state, recorded(recipe), load, fresh)?;
    let shape = model.image_shape().ok_or_else(|| {
        Error::Config(format!(
            "{}: the model reads features, not images",
            common.out.display()
        ))
    })?;
    let mut batches = Batches::new(&corpus, shape, position.settings.seed)?;
    batches.augment = recipe.augment;
    let val = corpus.examples(Split::Val, shape, opts.eval_images)?;
    eprintln!(
        "{reason}; training on {}{}",
        corpus.describe(),
        match recipe.train_on_val {
            true => ", its validation split included (validation scores are of images trained on)",
            false => "",
        }
    );
    if recipe.more_digits {
        let more = UCI_TRAINING.count;
        eprintln!("with the UCI training part's {more} digits as more training digits");
    }
    let params: usize = model.parameters().iter().map(|(_, t)| t.numel()).sum();
    let dims = model.decoder().config().dims;
    let layers = model.encoder_layers().unwrap_or_default();
    eprintln!(
        "model: {}×{}×{} images{} in {p}×{p} patches seen through {k}×{k} windows{}, D={} H={} \
         V={}, {params} parameters; batch {}, {} validation images",
        shape.channels,
        shape.height,
        shape.width,
        match layers.convs.as_slice() {
            [] => String::new(),
            convs => format!(" through 4×4 stride-2 convolutions of {convs:?} channels"),
        },
        match layers.hidden {
            Some(h) => format!(" and a hidden layer of {h}"),
            None => String::new(),
        },
        dims.features,
        dims.hidden,
        dims.vocab,
        position.settings.batch,
        val.len(),
        p = shape.patch,
        k = shape.window,
    );
    let per_epoch = batches.epoch();
    let mut task = CaptionTask {
        model,
        batches: Arc::new(batches),
        next: None,
        val,
        shape,
        alpha_c: recipe.alpha_c,
        clip: position.settings.clip,
    };
    run(
        "train caption",
        &mut task,
        common,
        (adam, position, average),
        per_epoch,
    )
}

/// Greedy captions of every example, in chunks.
pub fn caption_all(
    model: &Captioner,
    examples: &[Example],
    shape: ImageShape,
) -> Result<Vec<fused_rnn::models::Caption>> {
    caption_with(model, examples, shape, 1, MAX_CAPTION)
}

/// The longest caption the evaluation decodes, `<end>` included.
pub const MAX_CAPTION: usize = 20;

/// Captions of every example by greedy (`beam` 1) or beam search, 256 images at a time.
pub fn caption_with(
    model: &Captioner,
    examples: &[Example],
    shape: ImageShape,
    beam: usize,
    max_len: usize,
) -> Result<Vec<fused_rnn::models::Caption>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(256) {
        let mut pixels = Vec::with_capacity(chunk.len() * shape.pixels());
        for e in chunk {
            pixels.extend_from_slice(&e.pixels);
        }
        out.extend(model.caption(Input::Pixels(&pixels), max_len, beam)?);
    }
    Ok(out)
}
