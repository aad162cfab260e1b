//! Attention localisation: whether the region a decoder attended to most, word by word, lies
//! inside a target box of the image.
//!
//! Regions form a grid of rows × cols laid row-major over an image of height × width pixels,
//! as `nn::PatchEncoder` lays out its patches (region l is row l / cols, column l % cols).
//! Pixel coordinates run from (0, 0) at the image's top-left corner to (width, height) at its
//! bottom-right; region (row, col) covers x in [col·width/cols, (col+1)·width/cols] and y in
//! [row·height/rows, (row+1)·height/rows], so its centre is
//! ((col + ½)·width/cols, (row + ½)·height/rows).

use crate::error::{Error, Result};

use super::Share;

/// A grid of regions over an image: `rows` × `cols` regions, row-major, over `height` ×
/// `width` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionGrid {
    pub rows: usize,
    pub cols: usize,
    pub height: usize,
    pub width: usize,
}

impl RegionGrid {
    /// The number of regions (rows · cols), or an error for an empty grid or image.
    pub fn regions(&self) -> Result<usize> {
        let RegionGrid {
            rows,
            cols,
            height,
            width,
        } = *self;
        if rows == 0 || cols == 0 || height == 0 || width == 0 {
            return Err(Error::Config(format!(
                "attention: a grid of {rows}×{cols} regions over {height}×{width} pixels is empty"
            )));
        }
        rows.checked_mul(cols)
            .ok_or_else(|| Error::Config(format!("attention: {rows}×{cols} regions are too many")))
    }

    /// The centre (x, y) of region `region`, in pixels.
    pub fn centre(&self, region: usize) -> Result<(f64, f64)> {
        let regions = self.regions()?;
        if region >= regions {
            return Err(Error::Index {
                tensor: "attention region".into(),
                position: 0,
                value: i64::try_from(region).unwrap_or(i64::MAX),
                limit: regions,
            });
        }
        let (row, col) = (region / self.cols, region % self.cols);
        let x = (col as f64 + 0.5) * self.width as f64 / self.cols as f64;
        let y = (row as f64 + 0.5) * self.height as f64 / self.rows as f64;
        Ok((x, y))
    }
}

/// A box in pixels, corners (x0, y0) (top-left) and (x1, y1) (bottom-right), edges included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBox {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl PixelBox {
    /// A box from COCO's `bbox` layout: left, top, width, height.
    pub fn from_xywh(x: f64, y: f64, width: f64, height: f64) -> Self {
        PixelBox {
            x0: x,
            y0: y,
            x1: x + width,
            y1: y + height,
        }
    }

    /// Whether (x, y) lies inside the box or on its edge.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        self.x0 <= x && x <= self.x1 && self.y0 <= y && y <= self.y1
    }

    fn check(&self) -> Result<()> {
        let PixelBox { x0, y0, x1, y1 } = *self;
        let finite = [x0, y0, x1, y1].iter().all(|v| v.is_finite());
        if !finite || x0 > x1 || y0 > y1 {
            return Err(Error::Config(format!(
                "attention: target box ({x0}, {y0}, {x1}, {y1}) is not (x0, y0, x1, y1) with \
                 finite x0 <= x1 and y0 <= y1"
            )));
        }
        Ok(())
    }
}

/// The region a map attends to most: the index of its largest weight, the first of equal
/// ones. Errors: an empty map, or one holding NaN or an infinity.
pub fn peak_region(map: &[f32]) -> Result<usize> {
    if map.is_empty() {
        return Err(Error::shape("attention map", "[regions > 0]", &[0]));
    }
    Error::check_finite("attention map", map, &[map.len()])?;
    let mut best = 0;
    for (l, &w) in map.iter().enumerate() {
        if w > map[best] {
            best = l;
        }
    }
    Ok(best)
}

/// The share of emitted words whose attention peak lies inside `target`: `maps` holds one
/// map per word, [words, rows·cols] row-major (one row of a decoder's alphas [B, T, L]); a
/// word's peak is the centre of its [`peak_region`], tested with [`PixelBox::contains`].
/// Shares of several captions add up with `+`.
///
/// Errors: an empty grid or image, a malformed box, no words, a length not a multiple of
/// rows·cols, a non-finite weight.
pub fn attention_in_box(maps: &[f32], grid: &RegionGrid, target: &PixelBox) -> Result<Share> {
    let regions = grid.regions()?;
    target.check()?;
    if maps.is_empty() || !maps.len().is_multiple_of(regions) {
        return Err(Error::shape(
            "attention maps",
            format!(
                "[words > 0, {regions}] ({}×{} regions)",
                grid.rows, grid.cols
            ),
            &[maps.len()],
        ));
    }
    let words = maps.len() / regions;
    Error::check_finite("attention maps", maps, &[words, regions])?;
    let mut hits = 0;
    for map in maps.chunks_exact(regions) {
        let (x, y) = grid.centre(peak_region(map)?)?;
        hits += usize::from(target.contains(x, y));
    }
    Ok(Share { hits, total: words })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 rows × 3 columns over 60 × 90 pixels: 30-pixel squares, centres x ∈ {15, 45, 75},
    /// y ∈ {15, 45}.
    const GRID: RegionGrid = RegionGrid {
        rows: 2,
        cols: 3,
        height: 60,
        width: 90,
    };

    fn one_hot(region: usize, regions: usize) -> Vec<f32> {
        (0..regions)
            .map(|l| {
                if l == region {
                    0.6
                } else {
                    0.4 / (regions - 1) as f32
                }
            })
            .collect()
    }

    #[test]
    fn centres_are_row_major() {
        assert_eq!(GRID.centre(0).unwrap(), (15.0, 15.0));
        assert_eq!(GRID.centre(2).unwrap(), (75.0, 15.0));
        assert_eq!(GRID.centre(4).unwrap(), (45.0, 45.0));
        assert!(matches!(GRID.centre(6), Err(Error::Index { .. })));
        // Tall image, 2 × 2 grid: x from the width, y from the height.
        let tall = RegionGrid {
            rows: 2,
            cols: 2,
            height: 100,
            width: 40,
        };
        assert_eq!(tall.centre(1).unwrap(), (30.0, 25.0));
        assert_eq!(tall.centre(2).unwrap(), (10.0, 75.0));
    }

    #[test]
    fn counts_words_whose_peak_is_inside() {
        // The top row's right two regions (centres (45, 15), (75, 15)).
        let target = PixelBox {
            x0: 30.0,
            y0: 0.0,
            x1: 90.0,
            y1: 30.0,
        };
        let maps: Vec<f32> = [1, 2, 4, 0, 5]
            .iter()
            .flat_map(|&r| one_hot(r, 6))
            .collect();
        let share = attention_in_box(&maps, &GRID, &target).unwrap();
        assert_eq!(share, Share { hits: 2, total: 5 });
        // The same box by COCO's x, y, width, height.
        let coco = PixelBox::from_xywh(30.0, 0.0, 60.0, 30.0);
        assert_eq!(coco, target);
    }

    #[test]
    fn edges_count_as_inside_and_ties_take_the_first_region() {
        // A box whose right edge passes through region 0's centre.
        let edge = PixelBox {
            x0: 0.0,
            y0: 0.0,
            x1: 15.0,
            y1: 15.0,
        };
        let flat = vec![1.0f32 / 6.0; 6];
        assert_eq!(peak_region(&flat).unwrap(), 0);
        let share = attention_in_box(&flat, &GRID, &edge).unwrap();
        assert_eq!(share, Share { hits: 1, total: 1 });
        assert_eq!(peak_region(&[0.1, 0.4, 0.1, 0.4]).unwrap(), 1);
        assert_eq!(peak_region(&[-3.0, -1.0, -2.0]).unwrap(), 1);
    }

    #[test]
    fn tall_grid_uses_height_for_rows() {
        let tall = RegionGrid {
            rows: 2,
            cols: 2,
            height: 100,
            width: 40,
        };
        // The bottom half: regions 2 and 3 (y = 75).
        let bottom = PixelBox::from_xywh(0.0, 50.0, 40.0, 50.0);
        let maps: Vec<f32> = [0, 1, 2, 3, 3]
            .iter()
            .flat_map(|&r| one_hot(r, 4))
            .collect();
        let share = attention_in_box(&maps, &tall, &bottom).unwrap();
        assert_eq!(share, Share { hits: 3, total: 5 });
    }

    #[test]
    fn bad_input_is_an_error() {
        let target = PixelBox::from_xywh(0.0, 0.0, 10.0, 10.0);
        let maps = one_hot(1, 6);
        let shape = |r: Result<Share>| matches!(r, Err(Error::Shape { .. }));
        assert!(shape(attention_in_box(&[], &GRID, &target)));
        assert!(shape(attention_in_box(&maps[..5], &GRID, &target)));
        let mut nan = maps.clone();
        nan[3] = f32::NAN;
        let e = attention_in_box(&nan, &GRID, &target).unwrap_err();
        assert_eq!(e.to_string(), "attention maps: contains NaN at [0, 3]");
        assert!(peak_region(&[f32::INFINITY, 0.0]).is_err());
        assert!(peak_region(&[]).is_err());
        let empty = RegionGrid { rows: 0, ..GRID };
        assert!(matches!(
            attention_in_box(&maps, &empty, &target),
            Err(Error::Config(_))
        ));
        let no_pixels = RegionGrid { width: 0, ..GRID };
        assert!(no_pixels.centre(0).is_err());
        let flipped = PixelBox { x0: 10.0, ..target };
        assert!(attention_in_box(&maps, &GRID, &flipped).is_ok());
        let flipped = PixelBox { x0: 11.0, ..target };
        assert!(matches!(
            attention_in_box(&maps, &GRID, &flipped),
            Err(Error::Config(_))
        ));
        let nan_box = PixelBox {
            y1: f64::NAN,
            ..target
        };
        assert!(attention_in_box(&maps, &GRID, &nan_box).is_err());
        let huge = RegionGrid {
            rows: usize::MAX,
            cols: 2,
            ..GRID
        };
        assert!(huge.regions().is_err());
    }
}
