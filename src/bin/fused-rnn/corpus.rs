//! Where the captioning commands' images come from: the bundled digit scenes (generated, with
//! the fixed test set), or a caption data set in a folder (`data::open`), loaded at a fixed
//! input size.

use fused_rnn::data::digits::UCI_TRAINING;
use fused_rnn::data::images::Channels;
use fused_rnn::data::scenes::{BoundingBox, SceneGenerator, TEST_SCENES, TEST_SEED, WORDS};
use fused_rnn::data::{self, CaptionedImage, Split};
use fused_rnn::error::{quoted, Error, Result};
use fused_rnn::models::Vocab;
use fused_rnn::nn::ImageShape;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `--data`'s name for the bundled digit scenes.
pub const DIGITS: &str = "digits";

/// The seed of the digit scenes' validation set (the test set's is `TEST_SEED`).
const VAL_SEED: u64 = 2_026_112_601;

/// Validation scenes of the digits.
const VAL_SCENES: u64 = 500;

/// One image to caption, with what to score it against.
pub struct Example {
    /// The data set's image id (`imgid`, COCO `id`; the digit scenes' index).
    pub id: u64,
    /// The image file, or the scene's name.
    pub name: String,
    /// [C, H, W] in [0, 1] at the model's input size.
    pub pixels: Vec<f32>,
    /// The references as words (none for loose images).
    pub references: Vec<Vec<String>>,
    /// Boxes in caption order (the digit scenes: one per word), for attention localisation.
    pub boxes: Vec<BoundingBox>,
}

pub enum Corpus {
    Digits(SceneGenerator),
    Folder {
        dir: PathBuf,
        images: Vec<CaptionedImage>,
    },
}

impl Corpus {
    /// `data`: `digits` or a data set folder.
    pub fn open(data: &str) -> Result<Corpus> {
        if data == DIGITS {
            return Ok(Corpus::Digits(SceneGenerator::bundled()?));
        }
        Ok(Corpus::Folder {
            dir: PathBuf::from(data),
            images: data::open(data)?,
        })
    }

    /// The same corpus with the validation split trained on as well: the digit scenes' training
    /// scenes draw on the validation pool too, and a folder's validation images join its
    /// training images (still evaluated as validation).
    pub fn train_on_val(self) -> Corpus {
        match self {
            Corpus::Digits(g) => Corpus::Digits(g.train_on_val()),
            Corpus::Folder { dir, mut images } => {
                let val: Vec<CaptionedImage> = images
                    .iter()
                    .filter(|i| i.split == Split::Val)
                    .map(|i| CaptionedImage {
                        split: Split::Train,
                        ..i.clone()
                    })
                    .collect();
                images.extend(val);
                Corpus::Folder { dir, images }
            }
        }
    }

    /// The digit scenes with the UCI training part's digits as more training digits; an
    /// error for a folder.
    pub fn with_training_digits(self) -> Result<Corpus> {
        match self {
            Corpus::Digits(g) => Ok(Corpus::Digits(
                g.with_training_digits(&UCI_TRAINING.load_default()?),
            )),
            Corpus::Folder { dir, .. } => Err(Error::Config(format!(
                "--more-digits adds digits to the bundled digit scenes, not to the folder {}",
                quoted(&dir.display().to_string())
            ))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Corpus::Digits(_) => "the bundled digit scenes".into(),
            Corpus::Folder { dir, images } => {
                let n = |s: Split| images.iter().filter(|i| i.split == s).count();
                format!(
                    "{} ({} training, {} validation and {} test images)",
                    dir.display(),
                    n(Split::Train),
                    n(Split::Val),
                    n(Split::Test)
                )
            }
        }
    }

    /// The input size of a new model: the digit scenes' 48×96 grey canvas, or the first
    /// training image's size and colour.
    pub fn native_size(&self) -> Result<(usize, usize, Channels)> {
        match self {
            Corpus::Digits(g) => Ok((g.config().height, g.config().width, Channels::Grey)),
            Corpus::Folder { .. } => {
                let first = self.split(Split::Train)?[0];
                let image = image::open(&first.path).map_err(|e| Error::Data {
                    location: first.path.display().to_string(),
                    reason: format!("not a readable image ({e})"),
                })?;
                let channels = match image.color().has_color() {
                    true => Channels::Rgb,
                    false => Channels::Grey,
                };
                Ok((image.height() as usize, image.width() as usize, channels))
            }
        }
    }

    /// The vocabulary of the training captions (words seen at least `min_count` times).
    pub fn vocab(&self, min_count: usize) -> Result<Vocab> {
        match self {
            Corpus::Digits(_) => data::build_vocab(WORDS.iter().map(|w| [*w]), 1),
            Corpus::Folder { .. } => data::build_vocab(
                self.split(Split::Train)?
                    .into_iter()
                    .flat_map(|i| i.captions.iter()),
                min_count,
            ),
        }
    }

    /// The folder's images of `split`, refusing an empty split.
    fn split(&self, split: Split) -> Result<Vec<&CaptionedImage>> {
        let Corpus::Folder { dir, images } = self else {
            unreachable!("only folders hold files")
        };
        let chosen: Vec<&CaptionedImage> = images.iter().filter(|i| i.split == split).collect();
        if chosen.is_empty() {
            return Err(Error::Config(format!(
                "{}: no {split} images",
                quoted(&dir.display().to_string())
            )));
        }
        Ok(chosen)
    }

    /// Every example of `split` (the digits: the fixed test set, or the validation scenes), at
    /// most `limit`, at `shape`'s input size.
    pub fn examples(&self, split: Split, shape: ImageShape, limit: usize) -> Result<Vec<Example>> {
        match self {
            Corpus::Digits(g) => {
                let (seed, count) = match split {
                    Split::Test => (TEST_SEED, TEST_SCENES as u64),
                    Split::Val => (VAL_SEED, VAL_SCENES),
                    Split::Train => (VAL_SEED, VAL_SCENES),
                };
                check_digit_shape(g, shape)?;
                (0..count.min(limit as u64))
                    .map(|i| {
                        let scene = g.scene(seed, split, i)?;
                        Ok(Example {
                            id: i,
                            name: format!("{split}_{i:05}"),
                            references: vec![words(&scene.words())],
                            boxes: scene.digits.iter().map(|d| d.bbox).collect(),
                            pixels: scene.pixels,
                        })
                    })
                    .collect()
            }
            Corpus::Folder { .. } => self
                .split(split)?
                .into_iter()
                .take(limit)
                .map(|image| load(image, shape))
                .collect(),
        }
    }
}

/// Loose image files as examples without references.
pub fn files(paths: &[PathBuf], shape: ImageShape) -> Result<Vec<Example>> {
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            Ok(Example {
                id: i as u64,
                name: path.display().to_string(),
                pixels: pixels(path, shape)?,
                references: Vec::new(),
                boxes: Vec::new(),
            })
        })
        .collect()
}

fn load(image: &CaptionedImage, shape: ImageShape) -> Result<Example> {
    Ok(Example {
        id: image.id,
        name: image.path.display().to_string(),
        pixels: pixels(&image.path, shape)?,
        references: image.captions.clone(),
        boxes: image.boxes.iter().map(|b| b.bbox).collect(),
    })
}

fn pixels(path: &Path, shape: ImageShape) -> Result<Vec<f32>> {
    let channels = match shape.channels {
        1 => Channels::Grey,
        _ => Channels::Rgb,
    };
    data::images::load(path, shape.height, shape.width, channels)
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

fn check_digit_shape(g: &SceneGenerator, shape: ImageShape) -> Result<()> {
    let c = g.config();
    if (shape.channels, shape.height, shape.width) != (1, c.height, c.width) {
        return Err(Error::Config(format!(
            "the digit scenes are 1×{}×{} grey images; the model reads {}×{}×{}",
            c.height, c.width, shape.channels, shape.height, shape.width
        )));
    }
    Ok(())
}

/// Training batches: the digit scenes drawn fresh (scene k of the training split under the
/// run's seed), or a folder's training images, shuffled each epoch, one caption drawn per
/// image per visit.
pub struct Batches {
    source: Source,
    seed: u64,
    shape: ImageShape,
    /// `data::augment::warp`'s strength.
    pub augment: f32,
}

enum Source {
    Scenes(SceneGenerator),
    /// The images and the last epoch's order (shuffled once per epoch, not per batch).
    Images(Vec<Example>, Mutex<(u64, Vec<usize>)>),
}

/// One batch: pixels [B, C, H, W] and one caption's words per image.
pub struct Batch {
    pub pixels: Vec<f32>,
    pub captions: Vec<Vec<String>>,
}

impl Batches {
    pub fn new(corpus: &Corpus, shape: ImageShape, seed: u64) -> Result<Self> {
        let source = match corpus {
            Corpus::Digits(g) => {
                check_digit_shape(g, shape)?;
                Source::Scenes(g.clone())
            }
            Corpus::Folder { .. } => Source::Images(
                corpus
                    .split(Split::Train)?
                    .into_iter()
                    .map(|i| load(i, shape))
                    .collect::<Result<_>>()?,
                Mutex::new((0, Vec::new())),
            ),
        };
        Ok(Batches {
            source,
            seed,
            shape,
            augment: 0.0,
        })
    }

    /// Images per epoch: the folder's training images, or for the digit scenes (an endless
    /// supply) [`DIGIT_EPOCH`] scenes.
    pub fn epoch(&self) -> u64 {
        match &self.source {
            Source::Scenes(_) => DIGIT_EPOCH,
            Source::Images(images, _) => images.len() as u64,
        }
    }

    /// The `size` images from position `start` of the run's stream of examples.
    pub fn get(&self, start: u64, size: usize) -> Result<Batch> {
        let mut batch = Batch {
            pixels: Vec::new(),
            captions: Vec::with_capacity(size),
        };
        match &self.source {
            Source::Scenes(g) => {
                for k in start..start + size as u64 {
                    let scene = g.scene(self.seed, Split::Train, k)?;
                    batch.pixels.extend_from_slice(&scene.pixels);
                    batch.captions.push(words(&scene.words()));
                }
            }
            Source::Images(images, order) => {
                let n = images.len() as u64;
                let mut order = order.lock().unwrap_or_else(|e| e.into_inner());
                for k in start..start + size as u64 {
                    let epoch = k / n;
                    if order.0 != epoch || order.1.is_empty() {
                        let mut o: Vec<usize> = (0..images.len()).collect();
                        o.shuffle(&mut StdRng::seed_from_u64(
                            self.seed ^ epoch.wrapping_mul(0x9e37_79b9),
                        ));
                        *order = (epoch, o);
                    }
                    let image = &images[order.1[(k % n) as usize]];
                    let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(k));
                    let caption = &image.references[rng.random_range(0..image.references.len())];
                    batch.pixels.extend_from_slice(&image.pixels);
                    batch.captions.push(caption.clone());
                }
            }
        }
        // Each batch's warps from its own stream: the same whatever came before.
        let mut rng = StdRng::seed_from_u64(self.seed ^ start.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let s = self.shape;
        data::augment::warp(
            &mut batch.pixels,
            s.channels,
            s.height,
            s.width,
            self.augment,
            &mut rng,
        );
        Ok(batch)
    }
}

/// Scenes that count as one epoch of the digits.
pub const DIGIT_EPOCH: u64 = 10_000;
