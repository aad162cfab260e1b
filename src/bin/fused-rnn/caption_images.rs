//! `caption` on images: a captioner checkpoint (the bundled one by default) over a data set's
//! split or loose image files. Prints a few captions beside their references and the scores,
//! writes the captions in the COCO results format and the references as COCO caption
//! annotations, and with `--report` a page of every image and each word's attention.

use crate::caption::CaptionOptions;
use crate::corpus::{self, Corpus, Example};
use crate::scores::score;
use crate::train::caption_with;
use fused_rnn::error::{Error, Result};
use fused_rnn::io::write_atomically;
use fused_rnn::models::{bundled, Captioner};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

pub fn caption_images(opts: &CaptionOptions) -> Result<()> {
    let (device, dtype, reason) = opts.device.open_for(opts.dtype)?;
    let weights = match &opts.weights {
        Some(w) => w.clone(),
        None => bundled::CAPTIONER.checked()?,
    };
    let model = Captioner::load(&weights, &device, dtype)?;
    let shape = model.image_shape().ok_or_else(|| {
        Error::Config(format!(
            "{}: this captioner reads region features; caption them with --features",
            weights.display()
        ))
    })?;
    let limit = opts.limit.unwrap_or(usize::MAX);
    let (examples, source) = match opts.images.is_empty() {
        false => (
            corpus::files(&opts.images, shape)?,
            "the given images".to_string(),
        ),
        true => {
            let corpus = Corpus::open(&opts.data)?;
            let examples = corpus.examples(opts.split, shape, limit)?;
            (
                examples,
                format!("the {} split of {}", opts.split, corpus.describe()),
            )
        }
    };
    // Said once the weights and images are read, so that a bad file is the only line.
    println!("{reason}");
    let started = Instant::now();
    let captions = caption_with(&model, &examples, shape, opts.beam, opts.max_len)?;
    let seconds = started.elapsed().as_secs_f64();
    let search = match opts.beam {
        1 => "greedy".to_string(),
        k => format!("beam {k}"),
    };
    println!(
        "captioned {} images of {source} in {seconds:.2} s ({:.0} images/s, {search}, {} on {})",
        examples.len(),
        examples.len() as f64 / seconds.max(1e-9),
        dtype,
        device.name()
    );
    for (e, c) in examples.iter().zip(&captions).take(opts.show) {
        let refs: Vec<String> = e
            .references
            .iter()
            .map(|r| format!("\"{}\"", r.join(" ")))
            .collect();
        let refs = match refs.is_empty() {
            true => String::new(),
            false => format!("   reference {}", refs.join(" / ")),
        };
        println!(
            "  {:<14} \"{}\"{refs}",
            short_name(&e.name),
            c.words.join(" ")
        );
    }
    let scored = examples.iter().all(|e| !e.references.is_empty());
    if scored {
        println!("{}", score(&captions, &examples, shape)?);
    }
    let results: Vec<serde_json::Value> = examples
        .iter()
        .zip(&captions)
        .map(|(e, c)| json!({"image_id": e.id, "caption": c.words.join(" ")}))
        .collect();
    write_json(&opts.results, &serde_json::Value::Array(results))?;
    let mut wrote = vec![opts.results.display().to_string()];
    if scored {
        write_json(&opts.references, &references(&examples))?;
        wrote.push(opts.references.display().to_string());
    }
    if let Some(dir) = &opts.report {
        crate::report::write(dir, &examples, &captions, shape)?;
        wrote.push(dir.join("index.html").display().to_string());
    }
    println!("wrote {}", wrote.join(", "));
    Ok(())
}

/// The last part of a path, as the captions list shows it.
fn short_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The references in the COCO caption annotation format.
fn references(examples: &[Example]) -> serde_json::Value {
    let images: Vec<serde_json::Value> = examples
        .iter()
        .map(|e| json!({"id": e.id, "file_name": short_name(&e.name)}))
        .collect();
    let mut next = 0u64;
    let annotations: Vec<serde_json::Value> = examples
        .iter()
        .flat_map(|e| e.references.iter().map(move |r| (e.id, r.join(" "))))
        .map(|(id, caption)| {
            next += 1;
            json!({"image_id": id, "id": next, "caption": caption})
        })
        .collect();
    json!({
        "info": {"description": "references written by fused-rnn caption"},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": annotations,
    })
}

/// Writes `value` to `path` under a temporary name, synced, then renamed into place.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_atomically(path, |out| {
        serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)
    })
}
