//! The bundled digits: they load, they are the UCI set's test part as scikit-learn ships it and
//! its training part, and a corrupted, truncated or missing copy is a clear error.

mod common;

use fused_rnn::data::digits::{Digits, UCI_TEST, UCI_TRAINING};
use fused_rnn::Error;
use std::collections::HashSet;

#[test]
fn both_bundled_files_load_with_their_known_contents() {
    // Per class as scikit-learn's load_digits counts its copy, and as the data set's
    // description (optdigits.names) counts the training part; each file's first image (a zero)
    // as its first row has it, and its last label.
    let test_first = [
        0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
        0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0,
        0, 6, 13, 10, 0, 0, 0,
    ];
    let training_first = [
        0, 1, 6, 15, 12, 1, 0, 0, 0, 7, 16, 6, 6, 10, 0, 0, 0, 8, 16, 2, 0, 11, 2, 0, 0, 5, 16, 3,
        0, 5, 7, 0, 0, 7, 13, 3, 0, 8, 7, 0, 0, 4, 12, 0, 1, 13, 5, 0, 0, 0, 14, 9, 15, 9, 0, 0, 0,
        0, 6, 14, 7, 1, 0, 0,
    ];
    let [test, training] = [
        (
            UCI_TEST,
            [178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
            test_first,
            8,
        ),
        (
            UCI_TRAINING,
            [376, 389, 380, 389, 387, 376, 377, 387, 380, 382],
            training_first,
            7,
        ),
    ]
    .map(|(bundle, per_class, first, last)| {
        let d = bundle.load_default().unwrap();
        assert_eq!(d.len(), bundle.count);
        let mut counted = [0usize; 10];
        for &l in d.labels() {
            counted[usize::from(l)] += 1;
        }
        assert_eq!(counted, per_class, "{}", bundle.file.relative);
        assert_eq!(d.image(0).unwrap(), first);
        assert_eq!(d.label(0), Some(0));
        assert_eq!(d.label(bundle.count - 1), Some(last));
        d
    });
    let total: u64 = (0..test.len())
        .flat_map(|i| test.image(i).unwrap().iter().map(|&v| u64::from(v)))
        .sum();
    assert_eq!(total, 561_718);
    // Other writers: training on the training part shows the model none of the test part's
    // digits.
    let images = |d: &Digits| -> HashSet<Vec<u8>> {
        (0..d.len()).map(|i| d.image(i).unwrap().to_vec()).collect()
    };
    let seen = images(&training);
    assert_eq!(
        seen.len(),
        training.len(),
        "the training part repeats an image"
    );
    assert!(images(&test).is_disjoint(&seen));
}

#[test]
fn corrupted_truncated_and_missing_copies_are_refused() {
    let dir = common::scratch("data-digits");
    let good = std::fs::read(UCI_TEST.default_path()).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let path = dir.join("flipped.csv.gz");
    std::fs::write(&path, &flipped).unwrap();
    let e = UCI_TEST.load(&path).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("flipped.csv.gz") && msg.contains("sha256"),
        "{msg}"
    );
    assert!(msg.contains(UCI_TEST.file.sha256), "{msg}");
    assert!(!msg.contains('\n'));

    let path = dir.join("truncated.csv.gz");
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let msg = UCI_TEST.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("truncated.csv.gz") && msg.contains("sha256"),
        "{msg}"
    );

    let path = dir.join("empty.csv.gz");
    std::fs::write(&path, b"").unwrap();
    assert!(UCI_TEST
        .load(&path)
        .unwrap_err()
        .to_string()
        .contains("sha256"));

    let e = UCI_TEST.load(dir.join("absent.csv.gz")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("absent.csv.gz"));

    // A directory, and a device that never ends, are errors too (not a hang).
    assert!(UCI_TEST.load(&dir).is_err());
    let e = UCI_TEST.load("/dev/zero").unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");

    // An intact copy elsewhere loads, through the override too.
    let path = dir.join("copy.csv.gz");
    std::fs::write(&path, &good).unwrap();
    assert_eq!(UCI_TEST.load(&path).unwrap().len(), UCI_TEST.count);
    std::env::set_var(UCI_TEST.variable, &path);
    assert_eq!(UCI_TEST.default_path(), path);
    std::env::remove_var(UCI_TEST.variable);
    assert_ne!(UCI_TEST.default_path(), path);
    if UCI_TEST.file.in_crate().is_file() {
        assert_eq!(UCI_TEST.default_path(), UCI_TEST.file.in_crate());
    }
    // Each file is checked against its own hash: the test part is not the training part.
    let e = UCI_TRAINING.load(&path).unwrap_err().to_string();
    assert!(e.contains(UCI_TRAINING.file.sha256), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
