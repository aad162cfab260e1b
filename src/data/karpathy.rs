//! Karpathy's split files (`dataset_coco.json`, `dataset_flickr8k.json`, ...) and the digit
//! scenes written in that format.
//!
//! A file holds `{"dataset": ..., "images": [...]}`; each image has `filename`, an optional
//! `filepath` (a folder under the image root, e.g. `val2014`), `split` (`train`, `restval`,
//! `val` or `test`; `restval` reads as train), an optional `imgid`, and `sentences`, each with
//! `raw` text and/or its `tokens`. Other fields are ignored, except `boxes` (optional):
//! `[[x0, y0, x1, y1, label], ...]` in pixels, ends exclusive, which the digit scenes carry.

use super::captions::{
    caption_words, entry_error, image_path, read_json, shown, CaptionedImage, LabelledBox,
};
use super::scenes::{BoundingBox, Scene, SceneGenerator, TEST_SCENES, TEST_SEED};
use super::split::Split;
use crate::error::{quoted, Error, Result};
use crate::io::write_atomically;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name [`write_digits_dataset`] writes.
pub const DIGITS_FILE: &str = "dataset_digits.json";

/// The folder under the data set's directory that holds the scenes' images.
pub const DIGITS_IMAGES: &str = "images";

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dataset: Option<String>,
    images: Vec<Image>,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filepath: Option<String>,
    filename: String,
    split: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imgid: Option<u64>,
    sentences: Vec<Sentence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    boxes: Vec<[u32; 5]>,
}

#[derive(Serialize, Deserialize)]
struct Sentence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imgid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sentid: Option<u64>,
}

/// Every image of the Karpathy file `json`, its files under `image_root` (joined with
/// `filepath` when given, then `filename`), in the file's order. Malformed JSON, an unknown
/// split, an image with no caption or an empty caption, a missing image file, or a box whose
/// ends do not follow its starts is a one-line error naming the file and the entry.
pub fn read(json: impl AsRef<Path>, image_root: impl AsRef<Path>) -> Result<Vec<CaptionedImage>> {
    let json = json.as_ref();
    let file: File = read_json(json, "a Karpathy split file")?;
    let name = shown(json);
    file.images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            let location = format!("{name}: images[{i}] {}", quoted(&image.filename));
            entry(&location, image, i as u64, image_root.as_ref())
        })
        .collect()
}

fn entry(location: &str, image: Image, index: u64, root: &Path) -> Result<CaptionedImage> {
    let split = image
        .split
        .parse::<Split>()
        .map_err(|e| entry_error(location, e.to_string()))?;
    if image.sentences.is_empty() {
        return Err(entry_error(location, "no captions"));
    }
    let mut captions = Vec::with_capacity(image.sentences.len());
    let mut raw = Vec::with_capacity(image.sentences.len());
    for (k, s) in image.sentences.iter().enumerate() {
        let words = caption_words(
            &format!("{location} sentences[{k}]"),
            s.raw.as_deref(),
            s.tokens.as_deref(),
        )?;
        raw.push(s.raw.clone().unwrap_or_else(|| words.join(" ")));
        captions.push(words);
    }
    let mut boxes = Vec::with_capacity(image.boxes.len());
    for (k, &[x0, y0, x1, y1, label]) in image.boxes.iter().enumerate() {
        if x1 <= x0 || y1 <= y0 {
            return Err(entry_error(
                location,
                format!("boxes[{k}] = [{x0}, {y0}, {x1}, {y1}, {label}] is empty"),
            ));
        }
        let bbox = BoundingBox {
            x0: x0 as usize,
            y0: y0 as usize,
            x1: x1 as usize,
            y1: y1 as usize,
        };
        boxes.push(LabelledBox { bbox, label });
    }
    let mut parts: Vec<&str> = image.filepath.as_deref().into_iter().collect();
    parts.push(&image.filename);
    let path = image_path(location, root, &parts)?;
    Ok(CaptionedImage {
        id: image.imgid.unwrap_or(index),
        path,
        split,
        captions,
        raw,
        boxes,
    })
}

/// How many scenes [`write_digits_dataset`] writes per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSizes {
    pub train: usize,
    pub val: usize,
    /// The first `test` scenes of the fixed test set (all 1,000 by default).
    pub test: usize,
}

impl Default for DatasetSizes {
    fn default() -> Self {
        DatasetSizes {
            train: 5000,
            val: 500,
            test: TEST_SCENES,
        }
    }
}

/// Writes digit scenes into `dir` as a Karpathy data set: `images/{split}_{i:05}.png` (8-bit
/// grey, pixel values × 255 rounded) and [`DIGITS_FILE`], which lists them with their captions
/// and boxes (`[x0, y0, x1, y1, digit]`). Training and validation scenes 0..n come from
/// `seed`, the test scenes from [`TEST_SEED`] (the fixed test set). Every file is written
/// under a temporary name and renamed into place, the JSON file last, so it never lists an
/// image that is not there. Returns the JSON file's path; [`read`] reads it back with `dir`
/// as the image root.
pub fn write_digits_dataset(
    dir: impl AsRef<Path>,
    generator: &SceneGenerator,
    seed: u64,
    sizes: DatasetSizes,
) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let images_dir = dir.join(DIGITS_IMAGES);
    std::fs::create_dir_all(&images_dir).map_err(|source| Error::Write {
        path: images_dir.clone(),
        source,
    })?;
    let mut images = Vec::new();
    for (split, count, split_seed) in [
        (Split::Train, sizes.train, seed),
        (Split::Val, sizes.val, seed),
        (Split::Test, sizes.test, TEST_SEED),
    ] {
        for i in 0..count {
            let scene = generator.scene(split_seed, split, i as u64)?;
            let filename = format!("{split}_{i:05}.png");
            write_png(&images_dir.join(&filename), &scene)?;
            let imgid = images.len() as u64;
            let words: Vec<String> = scene.words().iter().map(|w| w.to_string()).collect();
            images.push(Image {
                filepath: Some(DIGITS_IMAGES.to_string()),
                filename,
                split: split.name().to_string(),
                imgid: Some(imgid),
                sentences: vec![Sentence {
                    raw: Some(scene.caption()),
                    tokens: Some(words),
                    imgid: Some(imgid),
                    sentid: Some(imgid),
                }],
                boxes: scene
                    .digits
                    .iter()
                    .map(|d| {
                        let b = d.bbox;
                        [b.x0, b.y0, b.x1, b.y1, usize::from(d.digit)].map(|v| v as u32)
                    })
                    .collect(),
            });
        }
    }
    let file = File {
        dataset: Some("digits".to_string()),
        images,
    };
    let json = dir.join(DIGITS_FILE);
    write_atomically(&json, |out| {
        serde_json::to_writer(&mut *out, &file).map_err(std::io::Error::other)
    })?;
    Ok(json)
}

/// `scene` as an 8-bit grey PNG at `path`.
fn write_png(path: &Path, scene: &Scene) -> Result<()> {
    use image::ImageEncoder;
    let bytes: Vec<u8> = scene
        .pixels
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    write_atomically(path, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(
                &bytes,
                scene.width as u32,
                scene.height as u32,
                image::ExtendedColorType::L8,
            )
            .map_err(std::io::Error::other)
    })
}
