//! Which digits of the fixed test scenes a captioner misreads, and how often. Each test digit
//! (an instance of the held-out pool) appears in about 11 of the 1,000 scenes, so a few hard
//! instances decide the exact-caption score; this lists them, with what was read instead.
//! With `--holding I,J,...` it counts the test scenes that hold any of those digits (a reader
//! that misreads them reads at most the others exactly). With `--pools FILE` it also writes the three pools' instance indices as JSON
//! (`{"train": [...], "val": [...], "test": [...]}`), for comparing other readers on the same
//! split (`scripts/digits_baseline.py`). Run:
//! `cargo run --release --example misread_digits -- [CKPT] [--holding I,J,...] [--pools FILE]`
//! (the bundled captioner when no checkpoint is named).

use fused_rnn::data::scenes::{SceneGenerator, WORDS};
use fused_rnn::data::Split;
use fused_rnn::io::write_atomically;
use fused_rnn::models::{bundled, Captioner, Input};
use fused_rnn::{DType, Device, Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Per misread instance: its digit, the scenes it was misread in, and the words read instead.
#[derive(Default)]
struct Misreads {
    digit: u8,
    scenes: usize,
    read_as: BTreeMap<String, usize>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("misread_digits: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut weights, mut pools_out, mut holding) = (None, None, Vec::new());
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| Error::Config(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--pools" => pools_out = Some(PathBuf::from(value()?)),
            "--holding" => {
                holding = value()?
                    .split(',')
                    .map(|i| {
                        i.trim().parse::<usize>().map_err(|_| {
                            Error::Config(format!("--holding: {i:?} is not a digit's index"))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            _ => weights = Some(PathBuf::from(arg)),
        }
    }
    let weights = match weights {
        Some(path) => path,
        None => bundled::CAPTIONER.checked()?,
    };
    let scenes = SceneGenerator::bundled()?;
    if let Some(path) = pools_out {
        let pools: BTreeMap<&str, &[usize]> = Split::ALL
            .into_iter()
            .map(|s| (s.name(), scenes.pools().get(s)))
            .collect();
        let json = serde_json::to_string(&pools).expect("plain numbers");
        write_atomically(&path, |out| out.write_all(json.as_bytes()))?;
    }
    let test = scenes.test_set()?;
    if !holding.is_empty() {
        let held = test
            .iter()
            .filter(|s| s.digits.iter().any(|d| holding.contains(&d.instance)))
            .count();
        println!(
            "{held} of {} test scenes hold one of the digits {holding:?}",
            test.len()
        );
    }
    let model = Captioner::load(&weights, &Device::cpu(), DType::F32)?;
    let pixels: Vec<f32> = test.iter().flat_map(|s| s.pixels.iter().copied()).collect();
    let captions = model.caption(Input::Pixels(&pixels), 20, 1)?;

    let mut appearances: BTreeMap<usize, usize> = BTreeMap::new();
    let mut misread: BTreeMap<usize, Misreads> = BTreeMap::new();
    let (mut exact, mut wrong_length) = (0, 0);
    for (scene, caption) in test.iter().zip(&captions) {
        let expected = scene.words();
        exact += usize::from(caption.words == expected);
        for d in &scene.digits {
            *appearances.entry(d.instance).or_default() += 1;
        }
        if caption.words.len() != expected.len() {
            wrong_length += 1;
            continue;
        }
        for (word, d) in caption.words.iter().zip(&scene.digits) {
            if word != WORDS[usize::from(d.digit)] {
                let m = misread.entry(d.instance).or_default();
                m.digit = d.digit;
                m.scenes += 1;
                *m.read_as.entry(word.clone()).or_default() += 1;
            }
        }
    }
    println!(
        "{}: {exact} of {} test scenes read exactly; {wrong_length} captions of the wrong \
         length; {} of {} test digits misread at least once",
        weights.display(),
        test.len(),
        misread.len(),
        appearances.len()
    );
    let mut rows: Vec<(usize, Misreads)> = misread.into_iter().collect();
    rows.sort_by_key(|(instance, m)| (std::cmp::Reverse(m.scenes), *instance));
    for (instance, m) in rows {
        let read_as: Vec<String> = m.read_as.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
        println!(
            "digit {instance:4} ({}): misread in {:2} of its {:2} scenes, as {}",
            WORDS[usize::from(m.digit)],
            m.scenes,
            appearances[&instance],
            read_as.join(", ")
        );
    }
    Ok(())
}
