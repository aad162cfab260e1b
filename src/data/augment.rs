//! Training-time augmentation: each image warped by a small random affine map (rotation,
//! scale per axis, shear, shift) about its centre plus a smooth random displacement field (an
//! elastic distortion, as Simard et al. 2003 use on handwriting: random offsets at the corners
//! of a coarse grid, interpolated bilinearly between them), sampled bilinearly with the edges
//! extended. A captioner that learns its words from a few hundred examples of each (the digit
//! scenes' training pool holds about 125 of each digit) otherwise learns those examples; the
//! warps make new ones, and the caption stays true.

use crate::ops::math_cpu::{widest, Real};
use rand::Rng;

/// How far the random maps go at strength 1: rotation up to 8°, each axis scaled by up to
/// ±10%, shear up to 0.15, a shift up to 1/24 of the image's height.
const ROTATION: f32 = 0.14;
const SCALE: f32 = 0.1;
const SHEAR: f32 = 0.15;
const SHIFT: f32 = 1.0 / 24.0;

/// The elastic field at strength 1: offsets up to 1/32 of the image's height at grid corners
/// 1/6 of the height apart.
const ELASTIC: f32 = 1.0 / 32.0;
const ELASTIC_CELL: f32 = 1.0 / 6.0;

/// Warps each image of `pixels` ([N, C, H, W] in place) by its own random map at `strength`
/// (0: unchanged) drawn from `rng`.
pub fn warp(
    pixels: &mut [f32],
    channels: usize,
    height: usize,
    width: usize,
    strength: f32,
    rng: &mut impl Rng,
) {
    let per = channels * height * width;
    if strength <= 0.0 || per == 0 {
        return;
    }
    let mut source = vec![0f32; per];
    let cell = (ELASTIC_CELL * height as f32).max(1.0);
    let (gy, gx) = (
        (height as f32 / cell).ceil() as usize + 1,
        (width as f32 / cell).ceil() as usize + 1,
    );
    let mut field = vec![0f32; 2 * gy * gx];
    // Each column's cell of the field and the fraction across it, the same for every image.
    let columns: Vec<(usize, f32)> = (0..width).map(|x| split(x as f32 / cell, gx)).collect();
    let mut draw = |bound: f32| rng.random_range(-bound..=bound) * strength;
    for image in pixels.chunks_exact_mut(per) {
        for f in field.iter_mut() {
            *f = draw(ELASTIC * height as f32);
        }
        let (angle, sx, sy, shear) = (
            draw(ROTATION),
            1.0 + draw(SCALE),
            1.0 + draw(SCALE),
            draw(SHEAR),
        );
        let (tx, ty) = (draw(SHIFT * height as f32), draw(SHIFT * height as f32));
        // The inverse map: an output pixel's offset from the centre to the source's.
        let (cos, sin) = (angle.cos(), angle.sin());
        let (a, b, c, d) = (cos / sx, (sin + shear) / sx, -sin / sy, cos / sy);
        source.copy_from_slice(image);
        let map = Map {
            a,
            b,
            c,
            d,
            tx,
            ty,
            cell,
            gy,
            gx,
        };
        resample::<f32>(image, &source, &field, &columns, channels, height, map);
    }
}

/// An image's inverse map: the affine part (a b; c d) and shift, and the elastic field's grid.
#[derive(Clone, Copy)]
struct Map {
    a: f32,
    b: f32,
    c: f32,
    d: f32,
    tx: f32,
    ty: f32,
    cell: f32,
    gy: usize,
    gx: usize,
}

widest! {
    /// Each output pixel of `image` sampled bilinearly from `source` where `map` and the
    /// displacement `field` send it (the widest vectors give `floor` an instruction); one
    /// (cell, fraction) of the field per column.
    fn resample<T: Real>(
        image: &mut [f32],
        source: &[f32],
        field: &[f32],
        columns: &[(usize, f32)],
        channels: usize,
        height: usize,
        map: Map,
    ) -> () = resample_body;
}

#[inline(always)]
fn resample_body<T: Real>(
    image: &mut [f32],
    source: &[f32],
    field: &[f32],
    columns: &[(usize, f32)],
    channels: usize,
    height: usize,
    map: Map,
) {
    let width = columns.len();
    let Map {
        a,
        b,
        c,
        d,
        tx,
        ty,
        cell,
        gy,
        gx,
    } = map;
    let (cx, cy) = ((width as f32 - 1.0) / 2.0, (height as f32 - 1.0) / 2.0);
    for ch in 0..channels {
        let plane = &source[ch * height * width..][..height * width];
        let at = |y: f32, x: f32| {
            let (y, x) = (
                y.clamp(0.0, (height - 1) as f32),
                x.clamp(0.0, (width - 1) as f32),
            );
            plane[y as usize * width + x as usize]
        };
        for y in 0..height {
            let (ry, fy) = split(y as f32 / cell, gy);
            for (x, &(rx, fx)) in columns.iter().enumerate() {
                let corner = |k: usize, r: usize, c: usize| field[(k * gy + r) * gx + c];
                let offset = |k: usize| {
                    (corner(k, ry, rx) * (1.0 - fx) + corner(k, ry, rx + 1) * fx) * (1.0 - fy)
                        + (corner(k, ry + 1, rx) * (1.0 - fx) + corner(k, ry + 1, rx + 1) * fx) * fy
                };
                let (u, v) = (x as f32 - cx - tx, y as f32 - cy - ty);
                let (xs, ys) = (
                    a * u + b * v + cx + offset(0),
                    c * u + d * v + cy + offset(1),
                );
                let (x0, y0) = (xs.floor(), ys.floor());
                let (fx, fy) = (xs - x0, ys - y0);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
                let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
                image[(ch * height + y) * width + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// A grid coordinate as (the cell, the fraction across it), the cell kept below `corners - 1`.
#[inline(always)]
fn split(at: f32, corners: usize) -> (usize, f32) {
    let cell = (at.floor() as usize).min(corners.saturating_sub(2));
    (cell, at - cell as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn picture() -> Vec<f32> {
        (0..2 * 12 * 20)
            .map(|k| ((k * 37 % 101) as f32) / 100.0)
            .collect()
    }

    #[test]
    fn strength_zero_leaves_the_images() {
        let mut p = picture();
        warp(&mut p, 2, 12, 20, 0.0, &mut StdRng::seed_from_u64(1));
        assert_eq!(p, picture());
    }

    #[test]
    fn warps_move_pixels_but_keep_the_range_and_follow_the_seed() {
        let warped = |seed| {
            let mut p = picture();
            warp(&mut p, 2, 12, 20, 1.0, &mut StdRng::seed_from_u64(seed));
            p
        };
        let (a, b) = (warped(3), warped(4));
        assert_eq!(a, warped(3), "the same draws give the same images");
        assert_ne!(a, picture());
        assert_ne!(a, b);
        // Bilinear sampling of values in [0, 1] stays in [0, 1].
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn a_constant_image_stays_constant() {
        let mut p = vec![0.25f32; 3 * 8 * 8];
        warp(&mut p, 3, 8, 8, 1.0, &mut StdRng::seed_from_u64(9));
        assert!(p.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }
}
