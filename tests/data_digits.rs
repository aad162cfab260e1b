//! The bundled digits: they load, they are the UCI test set as scikit-learn ships it, and a
//! corrupted, truncated or missing copy is a clear error.

mod common;

use fused_rnn::data::digits::{self, COUNT, PIXELS};
use fused_rnn::Error;

#[test]
fn the_bundled_digits_load_with_the_known_contents() {
    let d = digits::load(digits::default_path()).unwrap();
    assert_eq!(d.len(), COUNT);
    // Per class, as scikit-learn's load_digits counts them.
    let mut per_class = [0usize; 10];
    for &l in d.labels() {
        per_class[usize::from(l)] += 1;
    }
    assert_eq!(
        per_class,
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    // The first image (a zero) as the CSV's first row has it, and the last label.
    let first: [u8; PIXELS] = [
        0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
        0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0,
        0, 6, 13, 10, 0, 0, 0,
    ];
    assert_eq!(d.image(0).unwrap(), first);
    assert_eq!(d.label(0), Some(0));
    assert_eq!(d.label(COUNT - 1), Some(8));
    let total: u64 = (0..COUNT)
        .flat_map(|i| d.image(i).unwrap().iter().map(|&v| u64::from(v)))
        .sum();
    assert_eq!(total, 561_718);
}

#[test]
fn corrupted_truncated_and_missing_copies_are_refused() {
    let dir = common::scratch("data-digits");
    let good = std::fs::read(digits::default_path()).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let path = dir.join("flipped.csv.gz");
    std::fs::write(&path, &flipped).unwrap();
    let e = digits::load(&path).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("flipped.csv.gz") && msg.contains("sha256"),
        "{msg}"
    );
    assert!(msg.contains(digits::SHA256), "{msg}");
    assert!(!msg.contains('\n'));

    let path = dir.join("truncated.csv.gz");
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let msg = digits::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("truncated.csv.gz") && msg.contains("sha256"),
        "{msg}"
    );

    let path = dir.join("empty.csv.gz");
    std::fs::write(&path, b"").unwrap();
    assert!(digits::load(&path)
        .unwrap_err()
        .to_string()
        .contains("sha256"));

    let e = digits::load(dir.join("absent.csv.gz")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("absent.csv.gz"));

    // A directory, and a device that never ends, are errors too (not a hang).
    assert!(digits::load(&dir).is_err());
    let e = digits::load("/dev/zero").unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");

    // An intact copy elsewhere loads, through the override too.
    let path = dir.join("copy.csv.gz");
    std::fs::write(&path, &good).unwrap();
    assert_eq!(digits::load(&path).unwrap().len(), COUNT);
    std::env::set_var(digits::PATH_VARIABLE, &path);
    assert_eq!(digits::default_path(), path);
    std::env::remove_var(digits::PATH_VARIABLE);
    assert_ne!(digits::default_path(), path);
    if digits::bundled_path().is_file() {
        assert_eq!(digits::default_path(), digits::bundled_path());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
