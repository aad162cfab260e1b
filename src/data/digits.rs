//! The bundled handwritten digits: the UCI "Optical Recognition of Handwritten Digits" data set
//! (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0; data/digits/README.md), images of 8×8 pixels with
//! values 0..=16, in two files of one format (gzip-compressed CSV, one row per image: 64 pixel
//! values row by row, then the label 0..=9):
//! - [`UCI_TEST`], the set's test part as scikit-learn ships it (`digits.csv.gz`, 1,797
//!   digits by 13 writers): the digit scenes' training, validation and test pools;
//! - [`UCI_TRAINING`], the set's training part (`optdigits-train.csv.gz`, 3,823 digits by 30
//!   other writers): more training digits, on request.
//!
//! A file is checked against its sha256 before it is read, so every copy gives the same
//! digits, and a corrupted, truncated or different file is an error, never a panic.

use crate::error::{one_line, Error, Result};
use crate::io::Bundled;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Pixels per image (8×8).
pub const PIXELS: usize = 64;

/// The largest pixel value.
pub const MAX_VALUE: u8 = 16;

/// A digits file is under 1 MiB (the larger real one is 112,473 bytes).
const MAX_BYTES: u64 = 1 << 20;

/// A bundled file of digits: the file and its size in images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle {
    pub file: Bundled,
    /// Images in the file.
    pub count: usize,
    /// The environment variable that names another copy (see [`Bundle::default_path`]).
    pub variable: &'static str,
}

/// The UCI test part, scikit-learn 1.9.1's copy.
pub const UCI_TEST: Bundle = Bundle {
    file: Bundled {
        relative: "data/digits/digits.csv.gz",
        sha256: "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        max_bytes: MAX_BYTES,
    },
    count: 1797,
    variable: "FUSED_RNN_DIGITS",
};

/// The UCI training part (`optdigits.tra`).
pub const UCI_TRAINING: Bundle = Bundle {
    file: Bundled {
        relative: "data/digits/optdigits-train.csv.gz",
        sha256: "8a8d95daa5a2d60207e90b3c72f6ca8c5c3b9b350c059f5bdaeb63b01e3f1ed1",
        max_bytes: MAX_BYTES,
    },
    count: 3823,
    variable: "FUSED_RNN_TRAINING_DIGITS",
};

impl Bundle {
    /// Where to read the digits from: the file named by the variable when set, else the
    /// bundled file ([`Bundled::path`]). Whichever it is, [`Bundle::load`] checks its hash.
    pub fn default_path(&self) -> PathBuf {
        match std::env::var_os(self.variable) {
            Some(path) => PathBuf::from(path),
            None => self.file.path(),
        }
    }

    /// The digits at [`Bundle::default_path`].
    pub fn load_default(&self) -> Result<Digits> {
        self.load(self.default_path())
    }

    /// The digits at `path`, after checking the file's sha256 against the bundle's.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Digits> {
        let path = path.as_ref();
        let bytes = self.file.read(path)?;
        parse(&bytes, self.count).map_err(|reason| Error::Data {
            location: format!("digits {}", one_line(&path.display().to_string())),
            reason,
        })
    }
}

/// Digits: pixels 0..=16 and labels 0..=9, in a file's order (an image's index is its
/// instance id).
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// [len, 64], row by row.
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`'s 64 pixels (0..=16), row by row; None past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        self.pixels.get(i * PIXELS..(i + 1) * PIXELS)
    }

    /// Image `i`'s label 0..=9; None past the end.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// `other`'s digits after these, as instances `self.len()..`.
    pub fn append(&mut self, other: &Digits) {
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
    }
}

/// The digits in gzip-compressed CSV `bytes`; the reason when they are not exactly `count`
/// rows of 64 pixels 0..=16 and a label 0..=9.
fn parse(bytes: &[u8], count: usize) -> std::result::Result<Digits, String> {
    let mut text = String::new();
    GzDecoder::new(bytes)
        .take(MAX_BYTES * 8)
        .read_to_string(&mut text)
        .map_err(|e| format!("not a gzip-compressed text file ({e})"))?;
    let mut pixels = Vec::with_capacity(count * PIXELS);
    let mut labels = Vec::with_capacity(count);
    for (n, line) in text.lines().enumerate() {
        let row = n + 1;
        let values = line
            .split(',')
            .map(|v| v.trim().parse::<u8>())
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|e| format!("row {row}: not a list of small integers ({e})"))?;
        if values.len() != PIXELS + 1 {
            return Err(format!(
                "row {row}: {} values, expected {} (64 pixels and a label)",
                values.len(),
                PIXELS + 1
            ));
        }
        if let Some(v) = values[..PIXELS].iter().find(|&&v| v > MAX_VALUE) {
            return Err(format!(
                "row {row}: pixel value {v} outside 0..={MAX_VALUE}"
            ));
        }
        let label = values[PIXELS];
        if label > 9 {
            return Err(format!("row {row}: label {label} outside 0..=9"));
        }
        pixels.extend_from_slice(&values[..PIXELS]);
        labels.push(label);
    }
    if labels.len() != count {
        return Err(format!("{} rows, expected {count}", labels.len()));
    }
    Ok(Digits { pixels, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn row(pixel: u8, label: u8) -> String {
        let mut v = vec![pixel.to_string(); PIXELS];
        v.push(label.to_string());
        v.join(",")
    }

    #[test]
    fn the_parser_reads_rows_and_refuses_malformed_ones() {
        const COUNT: usize = 1797;
        let good: Vec<String> = (0..COUNT)
            .map(|i| row((i % 17) as u8, (i % 10) as u8))
            .collect();
        let digits = parse(&gz(&(good.join("\n") + "\n")), COUNT).unwrap();
        assert_eq!(digits.len(), COUNT);
        assert_eq!(digits.label(13), Some(3));
        assert_eq!(digits.image(13).unwrap(), &[13u8; PIXELS]);
        assert_eq!(digits.image(COUNT), None);

        let with = |i: usize, bad: String| {
            let mut rows = good.clone();
            rows[i] = bad;
            parse(&gz(&rows.join("\n")), COUNT).unwrap_err()
        };
        assert_eq!(with(4, row(17, 1)), "row 5: pixel value 17 outside 0..=16");
        assert_eq!(with(0, row(1, 10)), "row 1: label 10 outside 0..=9");
        assert!(with(2, "1,2,x".into()).starts_with("row 3: not a list of small integers"));
        assert_eq!(
            with(6, "1,2,3".into()),
            "row 7: 3 values, expected 65 (64 pixels and a label)"
        );
        assert_eq!(
            parse(&gz(&good[..10].join("\n")), COUNT).unwrap_err(),
            "10 rows, expected 1797"
        );
        // A gzip stream cut short, and bytes that are not gzip at all.
        let whole = gz(&good.join("\n"));
        assert!(parse(&whole[..whole.len() / 2], COUNT)
            .unwrap_err()
            .starts_with("not a gzip-compressed text file"));
        assert!(parse(b"0,0,0", COUNT)
            .unwrap_err()
            .starts_with("not a gzip-compressed text file"));
    }
}
