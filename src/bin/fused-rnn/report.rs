//! `caption --report DIR`: a page, DIR/index.html, of every captioned image with its caption
//! and references, and for every word the image with that word's attention over it as a heat
//! map (the region weights spread bilinearly over the pixels, scaled to the word's peak). The
//! pictures are PNG files under DIR/images; every file is written under a temporary name and
//! renamed, the page last.

use crate::corpus::Example;
use fused_rnn::error::{Error, Result};
use fused_rnn::io::write_atomically;
use fused_rnn::models::Caption;
use fused_rnn::nn::ImageShape;
use std::fmt::Write as _;
use std::path::Path;

/// How much of a pixel the heat map covers at the word's peak.
const HEAT: f32 = 0.7;

pub fn write(
    dir: &Path,
    examples: &[Example],
    captions: &[Caption],
    shape: ImageShape,
) -> Result<()> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|source| Error::Write {
        path: images.clone(),
        source,
    })?;
    let (h, w) = (shape.height, shape.width);
    let (rows, cols) = shape.grid();
    let regions = rows * cols;
    let mut body = String::new();
    for (k, (e, c)) in examples.iter().zip(captions).enumerate() {
        let grey = grey(&e.pixels, shape);
        png(
            &images.join(format!("{k}.png")),
            &colour(&e.pixels, shape),
            w,
            h,
        )?;
        let _ = write!(
            body,
            "<section class=\"image\"><h2>{}</h2><img class=\"input\" src=\"images/{k}.png\" alt=\"{}\" width=\"{}\" height=\"{}\">\
             <p class=\"caption\">{}</p>",
            escape(&e.name),
            escape(&e.name),
            w * 3,
            h * 3,
            escape(&c.words.join(" "))
        );
        for r in &e.references {
            let _ = write!(
                body,
                "<p class=\"reference\">reference: {}</p>",
                escape(&r.join(" "))
            );
        }
        body.push_str("<div class=\"words\">");
        for (i, word) in c.words.iter().enumerate() {
            let map = &c.alphas[i * regions..(i + 1) * regions];
            png(
                &images.join(format!("{k}_{i}.png")),
                &heat(&grey, map, shape),
                w,
                h,
            )?;
            let _ = write!(
                body,
                "<figure><img src=\"images/{k}_{i}.png\" alt=\"attention for {}\" width=\"{}\" height=\"{}\"><figcaption>{}</figcaption></figure>",
                escape(word),
                w * 2,
                h * 2,
                escape(word)
            );
        }
        body.push_str("</div></section>\n");
    }
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fused-rnn captions</title>\n\
         <style>body{{font-family:sans-serif;margin:1em 2em;background:#fafafa}}\
         section{{border-bottom:1px solid #ccc;padding:.5em 0}}h2{{font-size:1em;font-weight:normal;color:#555}}\
         img{{image-rendering:pixelated;background:#000}}.caption{{font-size:1.3em;margin:.3em 0}}\
         .reference{{color:#666;margin:.2em 0}}.words{{display:flex;flex-wrap:wrap;gap:.5em}}\
         figure{{margin:0;text-align:center}}</style></head>\n<body><h1>Captions of {} images</h1>\n\
         <p>Each word's picture shows where the model looked as it said that word.</p>\n{body}</body></html>\n",
        examples.len()
    );
    write_atomically(&dir.join("index.html"), |out| {
        std::io::Write::write_all(out, page.as_bytes())
    })
}

/// Text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The image's brightness [H, W]: the mean over its channels.
fn grey(pixels: &[f32], shape: ImageShape) -> Vec<f32> {
    let plane = shape.height * shape.width;
    (0..plane)
        .map(|p| {
            (0..shape.channels)
                .map(|c| pixels[c * plane + p])
                .sum::<f32>()
                / shape.channels as f32
        })
        .collect()
}

/// The image as RGB bytes [H, W, 3].
fn colour(pixels: &[f32], shape: ImageShape) -> Vec<u8> {
    let plane = shape.height * shape.width;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    (0..plane)
        .flat_map(|p| {
            let c = |ch: usize| pixels[ch.min(shape.channels - 1) * plane + p];
            [byte(c(0)), byte(c(1)), byte(c(2))]
        })
        .collect()
}

/// The image under a heat map of `map` (one weight per region): RGB [H, W, 3].
fn heat(grey: &[f32], map: &[f32], shape: ImageShape) -> Vec<u8> {
    let (h, w, p) = (shape.height, shape.width, shape.patch as f32);
    let (rows, cols) = shape.grid();
    let peak = map.iter().cloned().fold(f32::MIN_POSITIVE, f32::max);
    // A region's weight sits at its patch's centre; pixels between centres interpolate.
    let along = |i: usize, n: usize| {
        let s = ((i as f32 + 0.5) / p - 0.5).clamp(0.0, (n - 1) as f32);
        let lo = s.floor() as usize;
        (lo, (lo + 1).min(n - 1), s - lo as f32)
    };
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        let (r0, r1, fy) = along(y, rows);
        for x in 0..w {
            let (c0, c1, fx) = along(x, cols);
            let at = |r: usize, c: usize| map[r * cols + c];
            let a = (at(r0, c0) * (1.0 - fx) + at(r0, c1) * fx) * (1.0 - fy)
                + (at(r1, c0) * (1.0 - fx) + at(r1, c1) * fx) * fy;
            let a = (a / peak).clamp(0.0, 1.0);
            // Red turning yellow as the weight grows, over the image in grey.
            let hot = [(2.0 * a).min(1.0), (2.0 * a - 1.0).max(0.0), 0.0];
            let (alpha, base) = (HEAT * a, grey[y * w + x]);
            for c in hot {
                let v = base * (1.0 - alpha) + c * alpha;
                out.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    out
}

fn png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    use image::ImageEncoder;
    write_atomically(path, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(
                rgb,
                width as u32,
                height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)
    })
}
