//! `fused-rnn data digits` as a user runs it: a small data set written, read back through the
//! Karpathy reader (every image loads, captions and boxes kept), and bad arguments refused
//! with one line and exit code 2.

mod common;

use common::cli::bin;
use fused_rnn::data::{karpathy, Split};

#[test]
fn digits_are_written_as_a_karpathy_data_set() {
    let dir = common::scratch("cli-data");
    let out = bin()
        .args([
            "data", "digits", "--train", "6", "--val", "2", "--test", "3", "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json = dir.join("dataset_digits.json");
    let images = karpathy::read(&json, &dir).unwrap();
    let count = |s: Split| images.iter().filter(|i| i.split == s).count();
    assert_eq!(
        (count(Split::Train), count(Split::Val), count(Split::Test)),
        (6, 2, 3)
    );
    for image in &images {
        let words = &image.captions[0];
        assert!((3..=5).contains(&words.len()), "{words:?}");
        assert_eq!(image.boxes.len(), words.len());
        let pixels = image
            .pixels(48, 96, fused_rnn::data::images::Channels::Grey)
            .unwrap();
        assert!(pixels.iter().any(|&p| p > 0.5));
    }
    // Unknown options and a folder that cannot be made are one line, exit 2.
    for args in [
        vec!["data", "digits"],
        vec!["data", "digits", "--out", "/proc/no/such/dir"],
    ] {
        let out = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
