//! Caption scenes: a few handwritten digits at random places on a dark canvas, captioned with
//! their names from left to right ("three seven one").
//!
//! The default canvas is 48×96 (H×W) with 3 to 5 digits, each the 8×8 original scaled up
//! bilinearly to a square of side 16 to 18. Why that size: cut into 8×8 patches it gives a
//! 6×12 grid of 72 regions, few enough that a patch encoder and the attention over it train
//! quickly on a CPU, and a digit covers 2×2 to 3×3 patches, so attention has something to
//! find. The wide canvas leaves room for five digits side by side (a layout always exists),
//! which keeps "left to right" meaningful; two rows of digits still fit in the height.
//!
//! Boxes never overlap, stay inside the canvas, and their centres lie at least
//! `min_centre_gap` pixels apart horizontally, so the left-to-right order is never a tie.
//! Pixels are grey f32 in [0, 1] (the digits' 0..=16 over 16), row by row: [H, W], bright ink on
//! black.
//!
//! The 1,797 digits are split once into disjoint pools, stratified by class with
//! [`POOL_SEED`]: per class 20% test, 10% validation, the rest training, and scenes of a split
//! draw digits only from its pool. Scene `i` of a split under a seed is a pure function of
//! (seed, split, i): its random numbers come from a `StdRng` seeded with a mix of the three.
//! [`SceneGenerator::test_set`] is the fixed test set: [`TEST_SCENES`] scenes of the test split
//! under [`TEST_SEED`] with the default configuration.

use super::digits::{Digits, MAX_VALUE, PIXELS, UCI_TEST};
use super::split::{example_seed, Split};
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The seed of the stratified split of the digits into pools.
pub const POOL_SEED: u64 = 1797;

/// The seed of the fixed test set.
pub const TEST_SEED: u64 = 20_261_126;

/// Scenes in the fixed test set.
pub const TEST_SCENES: usize = 1000;

/// The digits' names, the caption words.
pub const WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Fractions of each class held out for testing and validation.
const TEST_FRACTION: f64 = 0.2;
const VAL_FRACTION: f64 = 0.1;

/// Places tried for one digit before starting the layout again, and layouts before giving up.
const TRIES_PER_DIGIT: usize = 200;
const LAYOUTS: usize = 1000;

/// The largest canvas accepted (pixels).
const MAX_CANVAS: usize = 1 << 22;

/// What a scene looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneConfig {
    pub height: usize,
    pub width: usize,
    /// Digits per scene, from `min_digits` to `max_digits` (uniform).
    pub min_digits: usize,
    pub max_digits: usize,
    /// A digit's side in pixels, from `min_side` to `max_side` (uniform).
    pub min_side: usize,
    pub max_side: usize,
    /// The least horizontal distance between two digits' box centres.
    pub min_centre_gap: usize,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            height: 48,
            width: 96,
            min_digits: 3,
            max_digits: 5,
            min_side: 16,
            max_side: 18,
            min_centre_gap: 4,
        }
    }
}

impl SceneConfig {
    /// Whether scenes of this configuration can be laid out: at least one digit, sides that
    /// fit the canvas, and room for the most digits side by side.
    pub fn check(&self) -> Result<()> {
        let c = self;
        let bad = |why: String| Err(Error::Config(format!("scene configuration: {why}")));
        if c.height == 0 || c.width == 0 || c.height.saturating_mul(c.width) > MAX_CANVAS {
            return bad(format!(
                "a canvas of {}×{} (at most {MAX_CANVAS} pixels)",
                c.height, c.width
            ));
        }
        if c.min_digits == 0 || c.min_digits > c.max_digits {
            return bad(format!(
                "digits per scene {}..={} (at least one)",
                c.min_digits, c.max_digits
            ));
        }
        if c.min_side == 0 || c.min_side > c.max_side || c.max_side > c.height.min(c.width) {
            return bad(format!(
                "digit sides {}..={} do not fit a {}×{} canvas",
                c.min_side, c.max_side, c.height, c.width
            ));
        }
        let row = c
            .max_digits
            .saturating_mul(c.max_side.max(c.min_centre_gap));
        if row > c.width {
            return bad(format!(
                "{} digits of side {} (centres {} apart) do not fit side by side in width {}",
                c.max_digits, c.max_side, c.min_centre_gap, c.width
            ));
        }
        Ok(())
    }
}

/// A digit's square in a scene, in pixels: columns x0..x1 and rows y0..y1 (ends exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundingBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl BoundingBox {
    /// Whether the two boxes share a pixel.
    pub fn overlaps(&self, other: &BoundingBox) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    /// The centre (x, y).
    pub fn centre(&self) -> (f32, f32) {
        (
            (self.x0 + self.x1) as f32 / 2.0,
            (self.y0 + self.y1) as f32 / 2.0,
        )
    }
}

/// One digit of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedDigit {
    /// 0..=9.
    pub digit: u8,
    /// Its image's index in the digits file.
    pub instance: usize,
    pub bbox: BoundingBox,
}

/// A canvas of digits and its caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub height: usize,
    pub width: usize,
    /// [height, width] grey pixels in [0, 1], row by row.
    pub pixels: Vec<f32>,
    /// The digits from left to right (by box centre): the caption's order.
    pub digits: Vec<PlacedDigit>,
}

impl Scene {
    /// The caption's words, one per digit, left to right.
    pub fn words(&self) -> Vec<&'static str> {
        self.digits
            .iter()
            .map(|d| WORDS[usize::from(d.digit)])
            .collect()
    }

    /// The caption: the words joined by spaces ("three seven one").
    pub fn caption(&self) -> String {
        self.words().join(" ")
    }
}

/// The digits' indices in three disjoint pools, one per split, each sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
}

impl Pools {
    /// Per class, the indices of `labels` with that label shuffled with `seed`, then the
    /// first 20% (rounded) to test, the next 10% to validation, the rest to training.
    pub fn stratified(labels: &[u8], seed: u64) -> Pools {
        let mut pools = Pools {
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
        };
        let mut rng = StdRng::seed_from_u64(seed);
        for class in 0..=u8::MAX {
            let mut members: Vec<usize> =
                (0..labels.len()).filter(|&i| labels[i] == class).collect();
            if members.is_empty() {
                continue;
            }
            members.shuffle(&mut rng);
            let n = members.len() as f64;
            let test = (n * TEST_FRACTION).round() as usize;
            let val = (n * VAL_FRACTION).round() as usize;
            pools.test.extend_from_slice(&members[..test]);
            pools.val.extend_from_slice(&members[test..test + val]);
            pools.train.extend_from_slice(&members[test + val..]);
        }
        for pool in [&mut pools.train, &mut pools.val, &mut pools.test] {
            pool.sort_unstable();
        }
        pools
    }

    /// The indices `split`'s scenes draw from.
    pub fn get(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// Makes scenes from the digits.
#[derive(Debug, Clone)]
pub struct SceneGenerator {
    digits: Digits,
    pools: Pools,
    config: SceneConfig,
}

impl SceneGenerator {
    /// Scenes of `config` from `digits`, split into pools with [`POOL_SEED`].
    pub fn new(digits: Digits, config: SceneConfig) -> Result<Self> {
        config.check()?;
        let pools = Pools::stratified(digits.labels(), POOL_SEED);
        if let Some(split) = Split::ALL.into_iter().find(|&s| pools.get(s).is_empty()) {
            return Err(Error::Config(format!(
                "the digits leave no {split} digits to draw from"
            )));
        }
        Ok(SceneGenerator {
            digits,
            pools,
            config,
        })
    }

    /// The bundled digits ([`UCI_TEST`]) and the default configuration.
    pub fn bundled() -> Result<Self> {
        Self::new(UCI_TEST.load_default()?, SceneConfig::default())
    }

    /// The same scenes, except that training scenes draw from `more` digits as well as the
    /// training pool's (as instances after the pools' digits, in `more`'s order), such as the
    /// UCI training part's ([`super::digits::UCI_TRAINING`]), whose writers are not the test
    /// pool's. Validation and test scenes are unchanged.
    pub fn with_training_digits(mut self, more: &Digits) -> Self {
        let first = self.digits.len();
        self.digits.append(more);
        self.pools.train.extend(first..self.digits.len());
        self
    }

    /// The same scenes, except that training scenes draw from the validation pool's digits
    /// as well as the training pool's (a final run, once the recipe is chosen on validation):
    /// validation scenes then show digits trained on. Test scenes are unchanged.
    pub fn train_on_val(mut self) -> Self {
        let pools = &mut self.pools;
        pools.train.extend_from_slice(&pools.val);
        pools.train.sort_unstable();
        self
    }

    pub fn config(&self) -> &SceneConfig {
        &self.config
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn digits(&self) -> &Digits {
        &self.digits
    }

    /// Scene `index` of `split` under `seed`.
    pub fn scene(&self, seed: u64, split: Split, index: u64) -> Result<Scene> {
        let mut rng = StdRng::seed_from_u64(example_seed(seed, split, index));
        let c = &self.config;
        let count = rng.random_range(c.min_digits..=c.max_digits);
        let boxes = self.layout(&mut rng, count).ok_or_else(|| {
            Error::Config(format!(
                "could not place {count} digits in scene {index} of {split} (seed {seed}) \
                 after {LAYOUTS} layouts: the configuration leaves too little room"
            ))
        })?;
        let pool = self.pools.get(split);
        let mut digits: Vec<PlacedDigit> = boxes
            .into_iter()
            .map(|bbox| {
                let instance = pool[rng.random_range(0..pool.len())];
                PlacedDigit {
                    digit: self.digits.label(instance).unwrap_or(0),
                    instance,
                    bbox,
                }
            })
            .collect();
        // Left to right by centre (x0 + x1 is twice the centre); centres never tie.
        digits.sort_by_key(|d| (d.bbox.x0 + d.bbox.x1, d.bbox.y0));
        let mut pixels = vec![0f32; c.height * c.width];
        for d in &digits {
            let image = self.digits.image(d.instance).unwrap_or(&[0; PIXELS]);
            draw(&mut pixels, c.width, image, &d.bbox);
        }
        Ok(Scene {
            height: c.height,
            width: c.width,
            pixels,
            digits,
        })
    }

    /// Scenes `range` of `split` under `seed`.
    pub fn scenes(
        &self,
        seed: u64,
        split: Split,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Scene>> {
        range.map(|i| self.scene(seed, split, i)).collect()
    }

    /// The fixed test set: scenes 0..1000 of the test split under [`TEST_SEED`].
    pub fn test_set(&self) -> Result<Vec<Scene>> {
        self.scenes(TEST_SEED, Split::Test, 0..TEST_SCENES as u64)
    }

    /// `count` boxes that do not overlap, with centres apart; None when no layout was found.
    fn layout(&self, rng: &mut StdRng, count: usize) -> Option<Vec<BoundingBox>> {
        let c = &self.config;
        'layout: for _ in 0..LAYOUTS {
            let mut boxes: Vec<BoundingBox> = Vec::with_capacity(count);
            for _ in 0..count {
                let fits = (0..TRIES_PER_DIGIT).find_map(|_| {
                    let side = rng.random_range(c.min_side..=c.max_side);
                    let x0 = rng.random_range(0..=c.width - side);
                    let y0 = rng.random_range(0..=c.height - side);
                    let b = BoundingBox {
                        x0,
                        y0,
                        x1: x0 + side,
                        y1: y0 + side,
                    };
                    let apart = |o: &BoundingBox| {
                        !o.overlaps(&b)
                            && (o.x0 + o.x1).abs_diff(b.x0 + b.x1) >= 2 * c.min_centre_gap
                    };
                    boxes.iter().all(apart).then_some(b)
                });
                match fits {
                    Some(b) => boxes.push(b),
                    None => continue 'layout,
                }
            }
            return Some(boxes);
        }
        None
    }
}

/// Draws the 8×8 `image` (0..=16) scaled bilinearly into `bbox` of the canvas (`width`
/// pixels a row), as values in [0, 1]: a pixel's centre maps to the source's coordinates as
/// in PyTorch's `interpolate(mode="bilinear", align_corners=False)`, clamped at the edges.
fn draw(canvas: &mut [f32], width: usize, image: &[u8], bbox: &BoundingBox) {
    let side = bbox.x1 - bbox.x0;
    let scale = 8.0 / side as f32;
    let at = |r: usize, c: usize| f32::from(image[r * 8 + c]) / f32::from(MAX_VALUE);
    let source = |i: usize| {
        let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, 7.0);
        let lo = s.floor() as usize;
        (lo, (lo + 1).min(7), s - lo as f32)
    };
    for y in 0..side {
        let (r0, r1, fy) = source(y);
        for x in 0..side {
            let (c0, c1, fx) = source(x);
            let top = at(r0, c0) * (1.0 - fx) + at(r0, c1) * fx;
            let bottom = at(r1, c0) * (1.0 - fx) + at(r1, c1) * fx;
            canvas[(bbox.y0 + y) * width + bbox.x0 + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_at_twice_the_size_interpolates_between_source_pixels() {
        let mut image = [0u8; 64];
        image[0] = 16; // the top-left source pixel only
        let bbox = BoundingBox {
            x0: 2,
            y0: 1,
            x1: 18,
            y1: 17,
        };
        let mut tall = vec![-1f32; 20 * 20];
        draw(&mut tall, 20, &image, &bbox);
        // Output pixel 0 and 1 map to source -0.25 (clamped to 0) and 0.25.
        assert_eq!(tall[20 + 2], 1.0);
        assert_eq!(tall[20 + 3], 0.75);
        assert_eq!(tall[2 * 20 + 3], 0.75 * 0.75);
        assert_eq!(tall[20 + 4], 0.25); // source 0.75: a quarter of pixel 0
        assert_eq!(tall[20 + 5], 0.0);
        // Outside the box nothing is touched.
        assert_eq!(tall[20 + 1], -1.0);
        assert_eq!(tall[20 + 18], -1.0);
        assert_eq!(tall[2], -1.0);
    }

    #[test]
    fn configurations_without_room_are_refused() {
        assert!(SceneConfig::default().check().is_ok());
        let refused = |c: SceneConfig| c.check().unwrap_err().to_string();
        let d = SceneConfig::default();
        assert!(refused(SceneConfig { max_digits: 6, ..d }).contains("side by side"));
        assert!(refused(SceneConfig { max_side: 49, ..d }).contains("do not fit"));
        assert!(refused(SceneConfig { min_digits: 0, ..d }).contains("at least one"));
        assert!(refused(SceneConfig { height: 0, ..d }).contains("canvas"));
    }

    #[test]
    fn pools_are_stratified_disjoint_and_complete() {
        let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
        let p = Pools::stratified(&labels, 5);
        assert_eq!(p.get(Split::Test).len(), 200);
        assert_eq!(p.get(Split::Val).len(), 100);
        assert_eq!(p.get(Split::Train).len(), 700);
        for class in 0..10u8 {
            let n = |s| p.get(s).iter().filter(|&&i| labels[i] == class).count();
            assert_eq!((n(Split::Test), n(Split::Val)), (20, 10));
        }
        let mut all: Vec<usize> = Split::ALL.iter().flat_map(|&s| p.get(s).to_vec()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, Pools::stratified(&labels, 6), "the seed shuffles");
    }
}
