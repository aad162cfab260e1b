//! Image files (PNG, JPEG) as f32 pixels for an image encoder.
//!
//! Any size and colour type is read (grey, grey with alpha, RGB, RGBA; 8 or 16 bits), resized
//! to the requested height and width (stretched: the aspect ratio is not kept) with a
//! triangle (bilinear) filter that averages over the source when shrinking, and returned
//! channel-major [C, H, W] with values in [0, 1]. `Channels::Grey` gives one channel of luma
//! (Rec. 709 weights of the stored values), `Channels::Rgb` three. Alpha is dropped, not
//! composited.

use crate::error::{one_line, Error, Result};
use image::imageops::{self, FilterType};
use std::path::Path;

/// The largest height or width accepted for a resized image, and the most pixels.
const MAX_SIDE: usize = 1 << 14;
const MAX_PIXELS: usize = 1 << 24;

/// The channels an image is read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One channel: luma.
    Grey,
    /// Three channels: red, green, blue.
    Rgb,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Grey => 1,
            Channels::Rgb => 3,
        }
    }
}

/// The image file at `path` resized to `height`×`width`: [C, H, W] f32 in [0, 1].
pub fn load(
    path: impl AsRef<Path>,
    height: usize,
    width: usize,
    channels: Channels,
) -> Result<Vec<f32>> {
    let path = path.as_ref();
    if !(1..=MAX_SIDE).contains(&height)
        || !(1..=MAX_SIDE).contains(&width)
        || height * width > MAX_PIXELS
    {
        return Err(Error::Config(format!(
            "images resized to {height}×{width}: each side must be in 1..={MAX_SIDE}, \
             and at most {MAX_PIXELS} pixels"
        )));
    }
    let (h, w) = (height as u32, width as u32);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let image = image::ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?
        .decode()
        .map_err(|e| Error::Data {
            location: format!("image {}", one_line(&path.display().to_string())),
            reason: one_line(&e.to_string()),
        })?;
    let mut pixels = match channels {
        Channels::Grey => {
            imageops::resize(&image.to_luma32f(), w, h, FilterType::Triangle).into_raw()
        }
        Channels::Rgb => {
            let hwc = imageops::resize(&image.to_rgb32f(), w, h, FilterType::Triangle).into_raw();
            let plane = height * width;
            let mut chw = vec![0f32; 3 * plane];
            for (i, rgb) in hwc.chunks_exact(3).enumerate() {
                for (c, &v) in rgb.iter().enumerate() {
                    chw[c * plane + i] = v;
                }
            }
            chw
        }
    };
    for v in &mut pixels {
        *v = v.clamp(0.0, 1.0);
    }
    Ok(pixels)
}
