//! Caption scenes: deterministic per (seed, split, index), splits drawing from disjoint pools of
//! digit instances, digits inside the canvas and apart, captions left to right, and each box
//! holding exactly its digit (checked against a reference rendering).

use fused_rnn::data::digits::{Digits, UCI_TRAINING};
use fused_rnn::data::scenes::{
    Scene, SceneConfig, SceneGenerator, POOL_SEED, TEST_SCENES, TEST_SEED, WORDS,
};
use fused_rnn::data::Split;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::OnceLock;

fn generator() -> &'static SceneGenerator {
    static G: OnceLock<SceneGenerator> = OnceLock::new();
    G.get_or_init(|| SceneGenerator::bundled().unwrap())
}

/// Every property a scene must have, checked against the digits it says it holds.
fn check_scene(scene: &Scene, digits: &Digits, config: &SceneConfig) {
    let (h, w) = (config.height, config.width);
    assert_eq!((scene.height, scene.width), (h, w));
    assert_eq!(scene.pixels.len(), h * w);
    let n = scene.digits.len();
    assert!(
        (config.min_digits..=config.max_digits).contains(&n),
        "{n} digits"
    );
    for (k, d) in scene.digits.iter().enumerate() {
        let b = d.bbox;
        let side = b.x1 - b.x0;
        assert_eq!(b.y1 - b.y0, side, "square");
        assert!((config.min_side..=config.max_side).contains(&side));
        assert!(b.x1 <= w && b.y1 <= h, "{b:?} inside {h}×{w}");
        assert_eq!(digits.label(d.instance), Some(d.digit));
        for other in &scene.digits[k + 1..] {
            assert!(!b.overlaps(&other.bbox), "{b:?} and {:?}", other.bbox);
            assert!(
                other.bbox.centre().0 - b.centre().0 >= config.min_centre_gap as f32,
                "left to right, apart: {b:?} then {:?}",
                other.bbox
            );
        }
    }
    let words: Vec<&str> = scene
        .digits
        .iter()
        .map(|d| WORDS[d.digit as usize])
        .collect();
    assert_eq!(scene.caption(), words.join(" "));
    // Each box holds its digit drawn by the reference; everything outside the boxes is 0.
    let mut expected = vec![0f32; h * w];
    for d in &scene.digits {
        reference_draw(&mut expected, w, digits.image(d.instance).unwrap(), d.bbox);
    }
    for (i, (&got, &want)) in scene.pixels.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() <= 1e-6,
            "pixel ({}, {}): {got} vs {want}",
            i / w,
            i % w
        );
    }
    assert!(scene.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// Bilinear scaling with half-pixel centres (PyTorch's align_corners=False), written
/// independently of the library: the source coordinate of output pixel i is
/// (i + 0.5) · 8 / side − 0.5, clamped to the image.
fn reference_draw(
    canvas: &mut [f32],
    width: usize,
    image: &[u8],
    b: fused_rnn::data::scenes::BoundingBox,
) {
    let side = b.x1 - b.x0;
    let sample = |sy: f64, sx: f64| -> f64 {
        let (sy, sx) = (sy.clamp(0.0, 7.0), sx.clamp(0.0, 7.0));
        let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(7), (x0 + 1).min(7));
        let (fy, fx) = (sy - y0 as f64, sx - x0 as f64);
        let p = |y: usize, x: usize| image[y * 8 + x] as f64 / 16.0;
        p(y0, x0) * (1.0 - fy) * (1.0 - fx)
            + p(y0, x1) * (1.0 - fy) * fx
            + p(y1, x0) * fy * (1.0 - fx)
            + p(y1, x1) * fy * fx
    };
    for y in 0..side {
        for x in 0..side {
            let s = |i: usize| (i as f64 + 0.5) * 8.0 / side as f64 - 0.5;
            canvas[(b.y0 + y) * width + b.x0 + x] = sample(s(y), s(x)) as f32;
        }
    }
}

#[test]
fn scenes_are_a_pure_function_of_seed_split_and_index() {
    let g = generator();
    let batch = g.scenes(11, Split::Train, 0..20).unwrap();
    // The same scene alone, from a second generator, in any order.
    let other = SceneGenerator::bundled().unwrap();
    for i in [19u64, 3, 0, 7] {
        assert_eq!(other.scene(11, Split::Train, i).unwrap(), batch[i as usize]);
    }
    // Seeds, splits and indices all change the scene.
    assert_ne!(batch[0], batch[1]);
    assert_ne!(g.scene(12, Split::Train, 0).unwrap(), batch[0]);
    assert_ne!(g.scene(11, Split::Val, 0).unwrap(), batch[0]);
    // Digit counts and sizes vary.
    let counts: BTreeSet<usize> = batch.iter().map(|s| s.digits.len()).collect();
    assert_eq!(counts, BTreeSet::from([3, 4, 5]));
    let sides: BTreeSet<usize> = batch
        .iter()
        .flat_map(|s| s.digits.iter().map(|d| d.bbox.x1 - d.bbox.x0))
        .collect();
    assert_eq!(sides, BTreeSet::from([16, 17, 18]));
}

#[test]
fn every_scene_keeps_its_digits_apart_inside_and_in_caption_order() {
    let g = generator();
    for split in Split::ALL {
        for scene in g.scenes(5, split, 0..150).unwrap() {
            check_scene(&scene, g.digits(), g.config());
        }
    }
    // A crowded configuration (four digits of side 16 in a 20×96 strip: one row) still lays
    // out, and is still right.
    let tight = SceneConfig {
        height: 20,
        width: 96,
        min_digits: 4,
        max_digits: 4,
        min_side: 16,
        max_side: 16,
        min_centre_gap: 4,
    };
    let g2 = SceneGenerator::new(g.digits().clone(), tight).unwrap();
    for i in 0..5 {
        check_scene(&g2.scene(1, Split::Train, i).unwrap(), g.digits(), &tight);
    }
}

#[test]
fn splits_draw_from_disjoint_stratified_pools() {
    let g = generator();
    let pools = g.pools();
    let pool = |s: Split| pools.get(s).iter().copied().collect::<BTreeSet<usize>>();
    let (train, val, test) = (pool(Split::Train), pool(Split::Val), pool(Split::Test));
    assert!(train.is_disjoint(&val) && train.is_disjoint(&test) && val.is_disjoint(&test));
    assert_eq!(train.len() + val.len() + test.len(), g.digits().len());
    for class in 0..10u8 {
        let of = |p: &BTreeSet<usize>| {
            p.iter()
                .filter(|&&i| g.digits().label(i) == Some(class))
                .count()
        };
        let total = (of(&train) + of(&val) + of(&test)) as f64;
        assert_eq!(of(&test), (total * 0.2).round() as usize, "class {class}");
        assert_eq!(of(&val), (total * 0.1).round() as usize, "class {class}");
    }
    // The instances scenes use, per split: each from its own pool only.
    let used = |split: Split, scenes: Vec<Scene>| -> BTreeSet<usize> {
        scenes
            .iter()
            .flat_map(|s| s.digits.iter().map(|d| d.instance))
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .inspect(|i| assert!(pool(split).contains(i), "{split} scene uses instance {i}"))
            .collect()
    };
    let train_used = used(Split::Train, g.scenes(3, Split::Train, 0..300).unwrap());
    let val_used = used(Split::Val, g.scenes(3, Split::Val, 0..300).unwrap());
    let test_used = used(Split::Test, g.test_set().unwrap());
    assert!(train_used.is_disjoint(&test_used) && train_used.is_disjoint(&val_used));
    assert!(val_used.is_disjoint(&test_used));
    // The fixed test set draws on most of its pool.
    assert!(
        test_used.len() * 10 >= test.len() * 9,
        "{} of {}",
        test_used.len(),
        test.len()
    );
    assert_eq!(POOL_SEED, 1797);
}

/// `wide`'s validation and test pools and scenes are `g`'s.
fn same_outside_training(wide: &SceneGenerator, g: &SceneGenerator) {
    for split in [Split::Val, Split::Test] {
        assert_eq!(wide.pools().get(split), g.pools().get(split));
        assert_eq!(
            wide.scenes(5, split, 0..20).unwrap(),
            g.scenes(5, split, 0..20).unwrap()
        );
    }
}

/// Training on the validation pool too: training scenes draw on both pools' digits, and the
/// validation and test scenes are the same as before.
#[test]
fn training_on_val_widens_only_the_training_pool() {
    let g = generator();
    let wide = g.clone().train_on_val();
    let instances = |g: &SceneGenerator, split: Split| -> BTreeSet<usize> {
        g.scenes(3, split, 0..400)
            .unwrap()
            .iter()
            .flat_map(|s| s.digits.iter().map(|d| d.instance))
            .collect()
    };
    let val: BTreeSet<usize> = g.pools().get(Split::Val).iter().copied().collect();
    let train: BTreeSet<usize> = g.pools().get(Split::Train).iter().copied().collect();
    let used = instances(&wide, Split::Train);
    assert!(used.iter().all(|i| train.contains(i) || val.contains(i)));
    assert!(
        used.intersection(&val).count() * 2 >= val.len(),
        "training scenes draw on the validation digits: {} of {}",
        used.intersection(&val).count(),
        val.len()
    );
    assert!(instances(g, Split::Train).is_disjoint(&val));
    assert_eq!(
        wide.pools().get(Split::Train).len(),
        train.len() + val.len()
    );
    same_outside_training(&wide, g);
}

/// More training digits (the UCI training part): training scenes draw on them and the training
/// pool, each drawn digit is the one its box shows, and the validation and test scenes are the
/// same as before.
#[test]
fn more_training_digits_widen_only_the_training_pool() {
    let g = generator();
    let more = UCI_TRAINING.load_default().unwrap();
    let wide = g.clone().with_training_digits(&more);
    let first = g.digits().len();
    assert_eq!(wide.digits().len(), first + more.len());
    for i in [0, 1234, more.len() - 1] {
        assert_eq!(wide.digits().image(first + i), more.image(i));
        assert_eq!(wide.digits().label(first + i), more.label(i));
    }
    let train: BTreeSet<usize> = g.pools().get(Split::Train).iter().copied().collect();
    let scenes = wide.scenes(3, Split::Train, 0..400).unwrap();
    let used: BTreeSet<usize> = scenes
        .iter()
        .flat_map(|s| s.digits.iter().map(|d| d.instance))
        .collect();
    assert!(used.iter().all(|&i| train.contains(&i) || i >= first));
    let (old, new) = (
        used.iter().filter(|&&i| i < first).count(),
        used.iter().filter(|&&i| i >= first).count(),
    );
    // 1,259 pool digits beside 3,823 more: both kinds are drawn, about in proportion.
    assert!(
        old > 300 && new > 3 * old / 2,
        "{old} pool digits, {new} more"
    );
    for s in &scenes[..50] {
        check_scene(s, wide.digits(), wide.config());
    }
    assert_eq!(
        wide.pools().get(Split::Train).len(),
        train.len() + more.len()
    );
    same_outside_training(&wide, g);
}

/// The fixed test set's bytes: pixels, boxes, instances and captions. A change here changes
/// every reported test score: it must be deliberate (a new rand version may change StdRng's
/// stream; then say so and update the value).
#[test]
fn the_fixed_test_set_is_the_same_every_run() {
    let g = generator();
    let scenes = g.test_set().unwrap();
    assert_eq!(scenes.len(), TEST_SCENES);
    assert_eq!(scenes[17], g.scene(TEST_SEED, Split::Test, 17).unwrap());
    let mut hash = Sha256::new();
    for s in &scenes {
        for v in &s.pixels {
            hash.update(v.to_le_bytes());
        }
        for d in &s.digits {
            let b = d.bbox;
            for v in [b.x0, b.y0, b.x1, b.y1, d.instance, usize::from(d.digit)] {
                hash.update((v as u64).to_le_bytes());
            }
        }
        hash.update(s.caption().as_bytes());
        hash.update(b"\n");
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "6006b119af560efd74b57e413a247a24b6aba55ab551e8810297d59e5fbbd293"
    );
    for s in &scenes {
        check_scene(s, g.digits(), g.config());
    }
}
