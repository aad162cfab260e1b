//! COCO caption annotations (`captions_train2014.json`, ...): `images[{id, file_name}]` and
//! `annotations[{image_id, caption}]`; other fields are ignored. A file holds one split, which
//! the caller names.

use super::captions::{caption_words, entry_error, image_path, read_json, shown, CaptionedImage};
use super::split::Split;
use crate::error::{quoted, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct File {
    images: Vec<Image>,
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    caption: String,
}

/// Every image of the COCO caption file `json` (in its order, captions in the annotations'
/// order), files in `image_dir`, all given `split`. Malformed JSON, a repeated image id, an
/// annotation of an unknown image, an empty caption, an image without captions or a missing
/// image file is a one-line error naming the file and the entry.
pub fn read(
    json: impl AsRef<Path>,
    image_dir: impl AsRef<Path>,
    split: Split,
) -> Result<Vec<CaptionedImage>> {
    let json = json.as_ref();
    let file: File = read_json(json, "a COCO caption file")?;
    let name = shown(json);
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
    for (i, image) in file.images.iter().enumerate() {
        if let Some(first) = by_id.insert(image.id, i) {
            return Err(entry_error(
                &format!("{name}: images[{i}] {}", quoted(&image.file_name)),
                format!("id {} repeats images[{first}]'s", image.id),
            ));
        }
    }
    let mut captions: Vec<(Vec<Vec<String>>, Vec<String>)> =
        vec![(Vec::new(), Vec::new()); file.images.len()];
    for (k, a) in file.annotations.iter().enumerate() {
        let location = format!("{name}: annotations[{k}] (image {})", a.image_id);
        let i = *by_id
            .get(&a.image_id)
            .ok_or_else(|| entry_error(&location, "no image has this id"))?;
        let words = caption_words(&location, Some(&a.caption), None)?;
        captions[i].0.push(words);
        captions[i].1.push(a.caption.clone());
    }
    file.images
        .iter()
        .zip(captions)
        .enumerate()
        .map(|(i, (image, (words, raw)))| {
            let location = format!("{name}: images[{i}] {}", quoted(&image.file_name));
            if words.is_empty() {
                return Err(entry_error(&location, "no captions"));
            }
            Ok(CaptionedImage {
                id: image.id,
                path: image_path(&location, image_dir.as_ref(), &[&image.file_name])?,
                split,
                captions: words,
                raw,
                boxes: Vec::new(),
            })
        })
        .collect()
}
