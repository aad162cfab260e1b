//! `translate` and `train translate`: the seq2seq model (a bidirectional recurrent encoder over
//! characters, the attention decoder) turning dates as people write them ("Thursday, November
//! 26, 2026", "11/26/26", "26.11.2026") into ISO 8601 ("2026-11-26"). Training examples are
//! generated as it goes (`data::dates`); held-out dates score it.

use crate::positive;
use crate::run::DeviceChoice;
use crate::train::{recorded, resume, run, settings, start, Common, Task};
use fused_rnn::data::dates::{self, DatePair};
use fused_rnn::data::Split;
use fused_rnn::error::{one_line, quoted, Error, Result};
use fused_rnn::eval::{exact_match, Share};
use fused_rnn::models::{
    bundled, Caption, EncoderCell, Seq2Seq, Seq2SeqConfig, Sources, StepReport, UNKNOWN,
};
use fused_rnn::nn::{AttentionActivation, Module};
use fused_rnn::train::Adam;
use fused_rnn::DType;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The held-out examples' seed (validation and test).
const HELD_OUT_SEED: u64 = 2_026_112_602;

/// The longest text `translate` takes, in characters.
const MAX_TEXT: usize = 64;

/// An ISO date's characters and `<end>`.
const MAX_TARGET: usize = 11;

#[derive(Debug, Clone, clap::Args)]
pub struct TranslateOptions {
    /// Dates to translate; none scores the held-out test dates.
    pub texts: Vec<String>,
    /// A checkpoint of `train translate` (default: the bundled one).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Held-out test dates scored when no text is given.
    #[arg(long, default_value_t = 1000, value_parser = positive::<usize>)]
    pub count: usize,
    /// Hypotheses kept (1: greedy).
    #[arg(long, default_value_t = 1, value_parser = positive::<usize>)]
    pub beam: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub dtype: Option<DType>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TrainTranslate {
    #[command(flatten)]
    pub common: Common,
    /// Validation dates evaluated.
    #[arg(long, default_value_t = 1000, value_parser = positive::<usize>)]
    pub eval_examples: usize,
    #[command(flatten)]
    pub settings: TranslateSettings,
}

/// What a translator's run keeps from its start to its end, beside the run's settings: its
/// model's shape.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct TranslateSettings {
    /// The encoder's cell.
    #[arg(long, default_value = "gru", value_parser = parse_cell)]
    pub cell: EncoderCell,
    #[arg(long, default_value_t = 32)]
    pub source_embed: usize,
    /// The encoder's hidden size per direction.
    #[arg(long, default_value_t = 64)]
    pub encoder_hidden: usize,
    #[arg(long, default_value_t = 64)]
    pub attention: usize,
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 16)]
    pub embed: usize,
}

fn parse_cell(text: &str) -> std::result::Result<EncoderCell, String> {
    match text {
        "lstm" => Ok(EncoderCell::Lstm),
        "gru" => Ok(EncoderCell::Gru),
        _ => Err(format!("`{text}` is not a cell (lstm or gru)")),
    }
}

/// Source ids of each text (a character outside the vocabulary is `<unk>`).
fn sources(model: &Seq2Seq, texts: &[&str]) -> Result<Sources> {
    let rows: Vec<Vec<usize>> = texts
        .iter()
        .map(|t| {
            dates::source_tokens(t)
                .iter()
                .map(|c| model.source_vocab().id(c))
                .collect()
        })
        .collect();
    Sources::new(&rows)
}

fn translations(model: &Seq2Seq, texts: &[&str], beam: usize) -> Result<Vec<Caption>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(500) {
        out.extend(model.translate(&sources(model, chunk)?, MAX_TARGET, beam)?);
    }
    Ok(out)
}

/// Exact matches of the translations of `pairs` against their ISO dates.
fn exact(model: &Seq2Seq, pairs: &[DatePair], beam: usize) -> Result<(Share, Vec<Caption>)> {
    let texts: Vec<&str> = pairs.iter().map(|p| p.source.as_str()).collect();
    let found = translations(model, &texts, beam)?;
    let candidates: Vec<Vec<String>> = found.iter().map(|c| c.words.clone()).collect();
    let references: Vec<Vec<Vec<String>>> = pairs
        .iter()
        .map(|p| vec![dates::target_tokens(&p.target)])
        .collect();
    Ok((exact_match(&candidates, &references)?, found))
}

pub fn translate(opts: &TranslateOptions) -> Result<()> {
    let (device, dtype, reason) = opts.device.open_for(opts.dtype)?;
    let weights = match &opts.weights {
        Some(w) => w.clone(),
        None => bundled::TRANSLATOR.checked()?,
    };
    let model = Seq2Seq::load(&weights, &device, dtype)?;
    if opts.texts.is_empty() {
        let pairs = dates::examples(HELD_OUT_SEED, Split::Test, 0..opts.count as u64);
        let started = Instant::now();
        let (share, found) = exact(&model, &pairs, opts.beam)?;
        let seconds = started.elapsed().as_secs_f64();
        println!("{reason}");
        for (p, c) in pairs.iter().zip(&found).take(5) {
            println!(
                "  {:<32} → {}   (reference {})",
                p.source,
                c.words.concat(),
                p.target
            );
        }
        println!(
            "{} held-out test dates in {seconds:.2} s: exact {:.1}% ({}/{})",
            pairs.len(),
            100.0 * share.rate(),
            share.hits,
            share.total
        );
        return Ok(());
    }
    for text in &opts.texts {
        let chars = text.chars().count();
        if text.trim().is_empty() || chars > MAX_TEXT {
            return Err(Error::Config(format!(
                "{}: a date is 1 to {MAX_TEXT} characters (this is {chars})",
                quoted(&one_line(text))
            )));
        }
        let vocab = model.source_vocab();
        if let Some(c) = dates::source_tokens(text.trim())
            .iter()
            .find(|c| vocab.id(c) == UNKNOWN)
        {
            return Err(Error::Config(format!(
                "{}: the translator does not know the character {} (it reads letters, digits, \
                 spaces and , . / -)",
                quoted(&one_line(text)),
                quoted(c)
            )));
        }
    }
    let texts: Vec<&str> = opts.texts.iter().map(|t| t.trim()).collect();
    let found = translations(&model, &texts, opts.beam)?;
    // A text in none of the formats can come out as no date at all: say so, not print it.
    for (text, c) in texts.iter().zip(&found) {
        let iso = c.words.concat();
        if !is_date(&iso) {
            return Err(Error::Config(format!(
                "{}: not read as a date (the translator gave {})",
                quoted(&one_line(text)),
                quoted(&iso)
            )));
        }
    }
    // Said with the results, so that a bad file or text is the only line.
    println!("{reason}");
    for (text, c) in texts.iter().zip(&found) {
        println!("{text} → {}", c.words.concat());
    }
    Ok(())
}

/// Whether `iso` is YYYY-MM-DD naming a real day.
fn is_date(iso: &str) -> bool {
    let parts: Vec<&str> = iso.split('-').collect();
    match parts.as_slice() {
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            match (y.parse(), m.parse(), d.parse()) {
                (Ok(y), Ok(m), Ok(d)) => dates::Date::new(y, m, d).is_ok(),
                _ => false,
            }
        }
        _ => false,
    }
}

struct DateTask {
    model: Seq2Seq,
    seed: u64,
    val: Vec<DatePair>,
    clip: f32,
}

impl Task for DateTask {
    fn step(&mut self, start: u64, batch: usize, adam: &mut Adam) -> Result<StepReport> {
        let pairs = dates::examples(self.seed, Split::Train, start..start + batch as u64);
        let texts: Vec<&str> = pairs.iter().map(|p| p.source.as_str()).collect();
        let src = sources(&self.model, &texts)?;
        let targets: Vec<Vec<String>> = pairs
            .iter()
            .map(|p| dates::target_tokens(&p.target))
            .collect();
        let (ids, lengths) = self.model.target_vocab().encode_batch(&targets)?;
        self.model
            .train_step(&src, &ids, &lengths, adam, Some(self.clip))
    }

    fn evaluate(&self) -> Result<String> {
        let (share, _) = exact(&self.model, &self.val, 1)?;
        Ok(format!(
            "{} validation dates: exact {:.1}% ({}/{})",
            self.val.len(),
            100.0 * share.rate(),
            share.hits,
            share.total
        ))
    }

    fn save(&self, out: &Path) -> Result<()> {
        self.model.save(out)
    }

    fn module(&mut self) -> &mut dyn Module {
        &mut self.model
    }
}

pub fn train_translate(opts: &TrainTranslate) -> Result<String> {
    let common = &opts.common;
    crate::train::check(common)?;
    let state = resume(common)?;
    let recipe = &settings(&opts.settings, state.as_ref(), &common.given)?;
    let (device, dtype, reason) = common.device.open_for(common.dtype)?;
    let fresh = || {
        let config = Seq2SeqConfig {
            source_embed: recipe.source_embed,
            encoder_hidden: recipe.encoder_hidden,
            encoder_cell: recipe.cell,
            attention: recipe.attention,
            hidden: recipe.hidden,
            embed: recipe.embed,
            activation: AttentionActivation::Relu,
            dropout: 0.0,
        };
        Seq2Seq::random(
            config,
            dates::source_vocab()?,
            dates::target_vocab()?,
            &device,
            dtype,
            common.settings.seed,
        )
    };
    let load = |p: &Path| Seq2Seq::load(p, &device, dtype);
    let (model, adam, position, average) = start(common, state, recorded(recipe), load, fresh)?;
    let params: usize = model.parameters().iter().map(|(_, t)| t.numel()).sum();
    eprintln!("{reason}; training on dates in {} formats", dates::FORMATS);
    eprintln!(
        "model: {params} parameters; batch {}",
        position.settings.batch
    );
    let mut task = DateTask {
        seed: position.settings.seed,
        val: dates::examples(HELD_OUT_SEED, Split::Val, 0..opts.eval_examples as u64),
        model,
        clip: position.settings.clip,
    };
    // An epoch of dates: every training date once.
    let per_epoch = dates::dates(Split::Train).len() as u64;
    run(
        "train translate",
        &mut task,
        common,
        (adam, position, average),
        per_epoch,
    )
}
