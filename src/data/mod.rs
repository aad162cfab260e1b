//! The data the captioner and the translator train on.
//!
//! - [`digits`]: the bundled UCI handwritten digits (1,797 8×8 images, checked by sha256).
//! - [`scenes`]: caption scenes made of them: 3–5 digits at random places on a 48×96 canvas,
//!   captioned left to right ("three seven one"), with each digit's box; a fixed test set.
//! - [`karpathy`], [`coco`]: caption data sets in the Karpathy split format and as COCO caption
//!   annotations, read into [`CaptionedImage`]s; [`write_digits_dataset`] writes the scenes as
//!   PNG files and a Karpathy file, so one loader serves both; [`open`] reads either kind
//!   from a folder.
//! - [`augment`]: random small warps of training images.
//! - [`images`]: PNG and JPEG files resized to (H, W), as grey or RGB f32 pixels in [0, 1].
//! - [`tokenize`], [`build_vocab`]: caption words and a vocabulary of them.
//! - [`dates`]: dates written in many human formats, to translate into ISO 8601.
//!
//! ```
//! use fused_rnn::data::{self, scenes::SceneGenerator, Split};
//! # fn main() -> fused_rnn::Result<()> {
//! let scenes = SceneGenerator::bundled()?; // the bundled digits, a 48×96 canvas
//! let batch = scenes.scenes(7, Split::Train, 0..4)?;
//! assert_eq!(batch[0].pixels.len(), 48 * 96);
//! assert_eq!(batch[0].words().len(), batch[0].digits.len());
//! let vocab = data::build_vocab(batch.iter().map(|s| s.words()), 1)?;
//! let ids = vocab.encode(&batch[0].words()); // <start>, the digits' words, <end>
//! assert_eq!(vocab.decode(&ids), batch[0].words());
//! let pair = data::dates::example(7, Split::Train, 0);
//! assert_eq!(pair.target.len(), 10); // "YYYY-MM-DD"
//! # Ok(()) }
//! ```

pub mod augment;
mod captions;
pub mod coco;
pub mod dates;
pub mod digits;
mod folder;
pub mod images;
pub mod karpathy;
pub mod scenes;
mod split;
mod tokens;

pub use captions::{CaptionedImage, LabelledBox};
pub use folder::open;
pub use karpathy::{write_digits_dataset, DatasetSizes};
pub use split::Split;
pub use tokens::{build_vocab, tokenize};
