//! The captioning scores: BLEU-1..4 (pycocoevalcap's), exact captions, word error rate and,
//! where the images carry boxes in caption order, attention localisation.

use crate::corpus::Example;
use fused_rnn::error::Result;
use fused_rnn::eval::{
    attention_in_box, bleu, exact_match, word_error_rate, PixelBox, RegionGrid, Share,
};
use fused_rnn::models::Caption;
use fused_rnn::nn::ImageShape;

pub struct Scores {
    pub images: usize,
    pub bleu: [f64; 4],
    pub exact: Share,
    pub word_error_rate: f64,
    /// Emitted words whose attention peak lies in their box (word i, box i).
    pub localisation: Option<Share>,
}

impl std::fmt::Display for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.bleu;
        write!(
            f,
            "{} images: exact {:.1}% ({}/{}), WER {:.2}%, BLEU-1..4 {:.3} {:.3} {:.3} {:.3}",
            self.images,
            100.0 * self.exact.rate(),
            self.exact.hits,
            self.exact.total,
            100.0 * self.word_error_rate,
            b[0],
            b[1],
            b[2],
            b[3]
        )?;
        if let Some(l) = self.localisation {
            write!(
                f,
                ", attention in the digit's box {:.1}% ({}/{} words)",
                100.0 * l.rate(),
                l.hits,
                l.total
            )?;
        }
        Ok(())
    }
}

/// `captions` (one per example, in order) against the examples' references.
pub fn score(captions: &[Caption], examples: &[Example], shape: ImageShape) -> Result<Scores> {
    let candidates: Vec<Vec<String>> = captions.iter().map(|c| c.words.clone()).collect();
    let references: Vec<Vec<Vec<String>>> = examples.iter().map(|e| e.references.clone()).collect();
    let b = bleu(&candidates, &references)?;
    let (rows, cols) = shape.grid();
    let grid = RegionGrid {
        rows,
        cols,
        height: shape.height,
        width: shape.width,
    };
    let regions = rows * cols;
    let mut localisation: Option<Share> = None;
    for (c, e) in captions.iter().zip(examples) {
        for (i, bbox) in e.boxes.iter().enumerate().take(c.words.len()) {
            let target = PixelBox {
                x0: bbox.x0 as f64,
                y0: bbox.y0 as f64,
                x1: bbox.x1 as f64,
                y1: bbox.y1 as f64,
            };
            let share =
                attention_in_box(&c.alphas[i * regions..(i + 1) * regions], &grid, &target)?;
            localisation = Some(localisation.unwrap_or_default() + share);
        }
    }
    Ok(Scores {
        images: captions.len(),
        bleu: [b.corpus[0], b.corpus[1], b.corpus[2], b.corpus[3]],
        exact: exact_match(&candidates, &references)?,
        word_error_rate: word_error_rate(&candidates, &references)?.rate,
        localisation,
    })
}
