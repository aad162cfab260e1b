//! Caption data sets: the Karpathy and COCO readers on the committed samples in
//! tests/fixtures/data, one-line errors for malformed ones, images resized to any size, and the
//! digit scenes written as a Karpathy data set and read back.

mod common;

use fused_rnn::data::images::{self, Channels};
use fused_rnn::data::scenes::{SceneGenerator, TEST_SEED};
use fused_rnn::data::{coco, karpathy, write_digits_dataset, DatasetSizes, Split};
use fused_rnn::Error;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    common::fixtures("data")
}

/// The mean of rows `rows` and columns `cols` of an [H, W] plane.
fn mean(
    plane: &[f32],
    width: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> f32 {
    let n = rows.len() * cols.len();
    rows.flat_map(|r| cols.clone().map(move |c| r * width + c))
        .map(|i| plane[i])
        .sum::<f32>()
        / n as f32
}

/// Writes the sample images (run with `--ignored` to make them again): `grey.png` 12×8 (W×H)
/// 8-bit grey, white in the top-left 6×4 quarter, black elsewhere; `colour.jpg` 16×24 RGB, red
/// above row 12, white below; `ramp16.png` 10×10 16-bit grey, brightness x/9 across.
#[test]
#[ignore]
fn make_fixture_images() {
    let dir = fixtures().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    image::GrayImage::from_fn(12, 8, |x, y| {
        image::Luma([if x < 6 && y < 4 { 255 } else { 0 }])
    })
    .save(dir.join("grey.png"))
    .unwrap();
    let colour = image::RgbImage::from_fn(16, 24, |_, y| {
        image::Rgb(if y < 12 { [255, 0, 0] } else { [255, 255, 255] })
    });
    let file = std::fs::File::create(dir.join("colour.jpg")).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 95)
        .encode_image(&colour)
        .unwrap();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(10, 10, |x, _| {
        image::Luma([(x * 65535 / 9) as u16])
    })
    .save(dir.join("ramp16.png"))
    .unwrap();
}

#[test]
fn images_of_any_kind_resize_to_grey_or_rgb_planes() {
    let dir = fixtures().join("images");
    // Same size: exact.
    let g = images::load(dir.join("grey.png"), 8, 12, Channels::Grey).unwrap();
    assert_eq!(g.len(), 8 * 12);
    for (i, &v) in g.iter().enumerate() {
        let (r, c) = (i / 12, i % 12);
        assert_eq!(v, if r < 4 && c < 6 { 1.0 } else { 0.0 }, "({r}, {c})");
    }
    // Shrunk to 4×6 and grown to 16×24: the bright quarter stays top-left.
    for (h, w) in [(4, 6), (16, 24)] {
        let g = images::load(dir.join("grey.png"), h, w, Channels::Grey).unwrap();
        assert_eq!(g.len(), h * w);
        assert!(mean(&g, w, 0..h / 2, 0..w / 2) > 0.75, "{h}×{w}");
        for (rows, cols) in [
            (0..h / 2, w / 2..w),
            (h / 2..h, 0..w / 2),
            (h / 2..h, w / 2..w),
        ] {
            assert!(mean(&g, w, rows, cols) < 0.15, "{h}×{w}");
        }
    }
    // A colour JPEG, as grey (red's luma) and as RGB planes; and resized non-uniformly.
    let grey = images::load(dir.join("colour.jpg"), 24, 16, Channels::Grey).unwrap();
    let top = mean(&grey, 16, 0..10, 0..16);
    assert!((0.15..0.35).contains(&top), "luma of red {top}");
    assert!(mean(&grey, 16, 14..24, 0..16) > 0.95);
    let rgb = images::load(dir.join("colour.jpg"), 6, 5, Channels::Rgb).unwrap();
    assert_eq!(rgb.len(), 3 * 6 * 5);
    let plane = |c: usize| &rgb[c * 30..(c + 1) * 30];
    assert!(mean(plane(0), 5, 0..6, 0..5) > 0.95, "red everywhere");
    assert!(mean(plane(1), 5, 0..2, 0..5) < 0.1 && mean(plane(1), 5, 4..6, 0..5) > 0.9);
    assert!(mean(plane(2), 5, 0..2, 0..5) < 0.1 && mean(plane(2), 5, 4..6, 0..5) > 0.9);
    // 16-bit grey keeps its precision.
    let ramp = images::load(dir.join("ramp16.png"), 10, 10, Channels::Grey).unwrap();
    for (i, &v) in ramp.iter().enumerate() {
        assert!((v - (i % 10) as f32 / 9.0).abs() < 1e-4, "{i}: {v}");
    }
    assert!(ramp.iter().chain(&rgb).all(|v| (0.0..=1.0).contains(v)));
    // Not an image, no file, a size of zero.
    let e = images::load(fixtures().join("dataset_tiny.json"), 4, 4, Channels::Grey).unwrap_err();
    assert!(e.to_string().contains("dataset_tiny.json"), "{e}");
    assert!(matches!(
        images::load(dir.join("absent.png"), 4, 4, Channels::Grey),
        Err(Error::Io { .. })
    ));
    assert!(images::load(dir.join("grey.png"), 0, 4, Channels::Grey).is_err());
}

#[test]
fn karpathy_files_read_with_their_splits_captions_and_boxes() {
    let root = fixtures();
    let set = karpathy::read(root.join("dataset_tiny.json"), &root).unwrap();
    assert_eq!(set.len(), 3);
    let [a, b, c] = [&set[0], &set[1], &set[2]];
    assert_eq!((a.id, a.split), (7, Split::Train));
    assert_eq!(a.path, root.join("images").join("grey.png"));
    assert_eq!(
        a.captions,
        [
            vec!["a", "white", "square", "top", "left"],
            vec!["mostly", "dark"]
        ]
    );
    assert_eq!(a.raw, ["A white square, top left.", "Mostly dark."]);
    assert!(a.boxes.is_empty());
    // restval is training; tokens alone give the raw text.
    assert_eq!((b.id, b.split), (8, Split::Train));
    assert_eq!(b.raw, ["red over white"]);
    // No imgid: the position; boxes as given.
    assert_eq!((c.id, c.split), (2, Split::Test));
    assert_eq!(c.boxes.len(), 1);
    let bx = c.boxes[0];
    assert_eq!(
        (bx.bbox.x0, bx.bbox.y0, bx.bbox.x1, bx.bbox.y1, bx.label),
        (0, 0, 5, 10, 1)
    );
    let px = c.pixels(10, 10, Channels::Grey).unwrap();
    assert!((px[9] - 1.0).abs() < 1e-4);
}

#[test]
fn coco_files_read_with_captions_grouped_by_image() {
    let root = fixtures();
    let set = coco::read(
        root.join("captions_tiny.json"),
        root.join("images"),
        Split::Val,
    )
    .unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!((set[0].id, set[0].split), (42, Split::Val));
    assert_eq!(set[0].path, root.join("images").join("colour.jpg"));
    assert_eq!(
        set[0].captions,
        [vec!["red", "above", "white"], vec!["a", "flag", "maybe"]]
    );
    assert_eq!(set[0].raw[1], "A flag, maybe?");
    assert_eq!(set[1].id, 9);
    assert_eq!(set[1].captions, [vec!["a", "dark", "picture"]]);
}

/// Each malformed sample fails with one line naming the file, the entry and the fault.
#[test]
fn malformed_files_are_one_line_errors_naming_the_entry() {
    let root = fixtures();
    let karpathy_cases = [
        ("karpathy_bad_json.json", "not a Karpathy split file"),
        (
            "karpathy_unknown_split.json",
            "images[1] `colour.jpg`: unknown split `dev`",
        ),
        (
            "karpathy_missing_image.json",
            "images[0] `nowhere.png`: no image file",
        ),
        (
            "karpathy_empty_caption.json",
            "images[0] `grey.png` sentences[1]: an empty caption",
        ),
        (
            "karpathy_no_captions.json",
            "images[0] `grey.png`: no captions",
        ),
        ("karpathy_escape.json", "leaves the image folder"),
    ];
    for (file, expected) in karpathy_cases {
        let e = karpathy::read(root.join(file), &root).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Data { .. }), "{file}: {e:?}");
        assert!(
            msg.contains(file) && msg.contains(expected),
            "{file}: {msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    let images = root.join("images");
    let coco_cases = [
        (
            "coco_bad_json.json",
            "not a COCO caption file (missing field `caption`",
        ),
        (
            "coco_empty_caption.json",
            "annotations[1] (image 42): an empty caption",
        ),
        (
            "coco_unknown_image.json",
            "annotations[0] (image 5): no image has this id",
        ),
        (
            "coco_missing_image.json",
            "images[0] `gone.jpg`: no image file",
        ),
        ("coco_no_captions.json", "images[1] `grey.png`: no captions"),
        (
            "coco_repeated_id.json",
            "images[1] `grey.png`: id 42 repeats images[0]'s",
        ),
    ];
    for (file, expected) in coco_cases {
        let msg = coco::read(root.join(file), &images, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(file) && msg.contains(expected),
            "{file}: {msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    // A file that is not there.
    assert!(matches!(
        karpathy::read(root.join("absent.json"), &root),
        Err(Error::Io { .. })
    ));
}

#[test]
fn written_digit_scenes_read_back_through_the_karpathy_reader() {
    let dir = common::scratch("data-digits-dataset");
    let generator = SceneGenerator::bundled().unwrap();
    let sizes = DatasetSizes {
        train: 6,
        val: 3,
        test: 5,
    };
    let json = write_digits_dataset(&dir, &generator, 7, sizes).unwrap();
    assert_eq!(json, dir.join(karpathy::DIGITS_FILE));
    // Written twice (over the first), the same; no temporary file is left.
    write_digits_dataset(&dir, &generator, 7, sizes).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("images")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let set = karpathy::read(&json, &dir).unwrap();
    assert_eq!(set.len(), 14);
    let mut index = [0u64; 3];
    for (id, item) in set.iter().enumerate() {
        let k = item.split as usize;
        let seed = if item.split == Split::Test {
            TEST_SEED
        } else {
            7
        };
        let scene = generator.scene(seed, item.split, index[k]).unwrap();
        index[k] += 1;
        assert_eq!(item.id, id as u64);
        assert_eq!(item.raw, [scene.caption()]);
        let words: Vec<&str> = item.captions[0].iter().map(String::as_str).collect();
        assert_eq!(words, scene.words());
        assert_eq!(item.boxes.len(), scene.digits.len());
        for (b, d) in item.boxes.iter().zip(&scene.digits) {
            assert_eq!((b.bbox, b.label), (d.bbox, u32::from(d.digit)));
        }
        let pixels = item
            .pixels(scene.height, scene.width, Channels::Grey)
            .unwrap();
        for (got, want) in pixels.iter().zip(&scene.pixels) {
            assert!((got - want).abs() <= 0.5 / 255.0 + 1e-6, "{got} vs {want}");
        }
    }
    assert_eq!(index, [6, 3, 5]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A data set folder is recognised by its files: one Karpathy file, or COCO files named by
/// split with their images in the folder named after them (or beside them).
#[test]
fn folders_open_by_what_they_hold() {
    let root = fixtures();
    let dir = common::scratch("data-open");
    let copy_images = |to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(root.join("images")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    };
    let karpathy_dir = dir.join("karpathy");
    copy_images(&karpathy_dir.join("images"));
    std::fs::copy(
        root.join("dataset_tiny.json"),
        karpathy_dir.join("dataset_tiny.json"),
    )
    .unwrap();
    let set = fused_rnn::data::open(&karpathy_dir).unwrap();
    assert_eq!(
        set,
        karpathy::read(root.join("dataset_tiny.json"), &root)
            .unwrap()
            .into_iter()
            .map(|mut i| {
                i.path = karpathy_dir.join(i.path.strip_prefix(&root).unwrap());
                i
            })
            .collect::<Vec<_>>()
    );
    // COCO: the split from the name, the images in the folder named after the file.
    let coco_dir = dir.join("coco");
    copy_images(&coco_dir.join("val_tiny"));
    std::fs::copy(
        root.join("captions_tiny.json"),
        coco_dir.join("captions_val_tiny.json"),
    )
    .unwrap();
    let set = fused_rnn::data::open(&coco_dir).unwrap();
    assert_eq!(set.len(), 2);
    assert!(set.iter().all(|i| i.split == Split::Val));
    assert_eq!(set[0].path, coco_dir.join("val_tiny").join("colour.jpg"));
    // Neither kind, two Karpathy files, a COCO file naming no split: one-line errors.
    let refused = |d: &std::path::Path| fused_rnn::data::open(d).unwrap_err().to_string();
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(refused(&empty).contains("no caption data set"));
    std::fs::copy(
        root.join("dataset_tiny.json"),
        karpathy_dir.join("dataset_more.json"),
    )
    .unwrap();
    assert!(refused(&karpathy_dir).contains("2 Karpathy split files"));
    std::fs::rename(
        coco_dir.join("captions_val_tiny.json"),
        coco_dir.join("captions_2014.json"),
    )
    .unwrap();
    assert!(refused(&coco_dir).contains("names no split"));
    assert!(refused(&dir.join("absent")).contains("absent"));
    std::fs::remove_dir_all(&dir).unwrap();
}
