//! Caption scores against the COCO caption evaluation: BLEU-1..4 from pycocoevalcap on the
//! words of tests/fixtures/eval/captions.json (`scripts/fixtures/make_eval_fixtures.py`), and
//! exact match and word error rate against that script's own implementation and small cases
//! by hand.

use fused_rnn::eval::{
    attention_in_box, bleu, exact_match, tokenize, word_error_rate, PixelBox, RegionGrid, Share,
};
use fused_rnn::Error;
use serde::Deserialize;

/// BLEU must match pycocoevalcap to this (absolute) ...
const ABS: f64 = 1e-9;
/// ... and, since scores run down to 1e-16, relatively too.
const REL: f64 = 1e-12;

#[derive(Deserialize)]
struct Image {
    case: String,
    candidate_text: String,
    references_text: Vec<String>,
    candidate: Vec<String>,
    references: Vec<Vec<String>>,
    bleu: [f64; 4],
    closest_reference: usize,
    edits: usize,
}

#[derive(Deserialize)]
struct WordErrorTotals {
    edits: usize,
    reference_words: usize,
}

#[derive(Deserialize)]
struct Fixture {
    images: Vec<Image>,
    bleu: [f64; 4],
    candidate_words: usize,
    reference_words: usize,
    exact_matches: usize,
    word_errors: WordErrorTotals,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/eval/captions.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    assert!(fixture.images.len() >= 20, "eval fixture too small");
    fixture
}

fn words(fixture: &Fixture) -> (Vec<Vec<String>>, Vec<Vec<Vec<String>>>) {
    let candidates = fixture.images.iter().map(|i| i.candidate.clone()).collect();
    let references = fixture
        .images
        .iter()
        .map(|i| i.references.clone())
        .collect();
    (candidates, references)
}

/// The largest absolute difference, after checking every pair within ABS and REL.
fn assert_scores(what: &str, got: &[f64; 4], want: &[f64; 4]) -> f64 {
    let mut worst = 0.0f64;
    for n in 0..4 {
        let diff = (got[n] - want[n]).abs();
        assert!(
            diff <= ABS && diff <= REL * want[n].abs().max(f64::MIN_POSITIVE),
            "{what} BLEU-{}: got {:e}, pycocoevalcap {:e}",
            n + 1,
            got[n],
            want[n]
        );
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn bleu_matches_pycocoevalcap() {
    let f = fixture();
    let (candidates, references) = words(&f);
    let b = bleu(&candidates, &references).unwrap();
    let mut worst = assert_scores("corpus", &b.corpus, &f.bleu);
    assert_eq!(b.per_image.len(), f.images.len());
    for (image, got) in f.images.iter().zip(&b.per_image) {
        worst = worst.max(assert_scores(&image.case, got, &image.bleu));
    }
    assert_eq!(
        (b.candidate_words, b.reference_words),
        (f.candidate_words, f.reference_words)
    );
    println!("largest difference from pycocoevalcap: {worst:e}");
}

/// The same scores from token ids and from borrowed words: BLEU reads only word identity.
#[test]
fn bleu_of_ids_is_bleu_of_words() {
    let f = fixture();
    let mut vocab: std::collections::HashMap<String, u32> = Default::default();
    let mut id = |w: &String| -> u32 {
        let next = vocab.len() as u32;
        *vocab.entry(w.clone()).or_insert(next)
    };
    let mut candidates = Vec::new();
    let mut references = Vec::new();
    for image in &f.images {
        candidates.push(image.candidate.iter().map(&mut id).collect::<Vec<u32>>());
        references.push(
            image
                .references
                .iter()
                .map(|r| r.iter().map(&mut id).collect())
                .collect::<Vec<Vec<u32>>>(),
        );
    }
    let b = bleu(&candidates, &references).unwrap();
    assert_scores("corpus (ids)", &b.corpus, &f.bleu);
    let borrowed: Vec<Vec<&str>> = f
        .images
        .iter()
        .map(|i| i.candidate.iter().map(String::as_str).collect())
        .collect();
    let borrowed_refs: Vec<Vec<Vec<&str>>> = f
        .images
        .iter()
        .map(|i| {
            i.references
                .iter()
                .map(|r| r.iter().map(String::as_str).collect())
                .collect()
        })
        .collect();
    let b = bleu(&borrowed, &borrowed_refs).unwrap();
    assert_scores("corpus (&str)", &b.corpus, &f.bleu);
}

/// The fixture holds the cases it is meant to (a regenerated fixture that lost one fails).
#[test]
fn fixture_covers_the_edge_cases() {
    let f = fixture();
    let image = |case: &str| {
        f.images
            .iter()
            .find(|i| i.case == case)
            .unwrap_or_else(|| panic!("no `{case}` image"))
    };
    let shortest = |i: &Image| i.references.iter().map(Vec::len).min().unwrap();
    // Brevity penalty: shorter than every reference, yet every 4-gram correct.
    let short = image("short_prefix");
    assert!(!short.candidate.is_empty() && short.candidate.len() < shortest(short));
    assert!(short.bleu[3] < 0.5 && short.bleu[3] > 0.1);
    // No 4-gram matches: the epsilon gives a tiny BLEU-4 beside a high BLEU-1.
    let no4 = image("no_4gram");
    assert!(no4.bleu[0] > 0.5 && no4.bleu[3] < 1e-3 && no4.bleu[3] > 0.0);
    // Clipping: seven "the", at most two in a reference.
    let clip = image("papineni_clipping");
    assert!((clip.bleu[0] - 2.0 / 7.0).abs() < 1e-6);
    assert!(image("repeated_bigram").bleu[1] < 1.0);
    assert_eq!(image("single_reference").references.len(), 1);
    assert!(image("empty").candidate.is_empty());
    assert_eq!(image("empty").bleu, [0.0; 4]);
    assert!(image("empty_reference")
        .references
        .iter()
        .any(Vec::is_empty));
    // Candidate 8 words, references 7 and 9: the shorter is taken, so no brevity penalty.
    let tie = image("closest_tie");
    let mut lengths: Vec<usize> = tie.references.iter().map(Vec::len).collect();
    lengths.sort();
    assert_eq!((tie.candidate.len(), lengths), (8, vec![7, 9]));
    let unigrams_right = 7.0; // all but "holding"
    assert!((tie.bleu[0] - unigrams_right / 8.0).abs() < 1e-6);
}

#[test]
fn tokenize_gives_the_fixture_words() {
    let f = fixture();
    for image in &f.images {
        assert_eq!(
            tokenize(&image.candidate_text),
            image.candidate,
            "{}",
            image.case
        );
        for (text, want) in image.references_text.iter().zip(&image.references) {
            assert_eq!(&tokenize(text), want, "{}", image.case);
        }
    }
    let raw = f
        .images
        .iter()
        .find(|i| i.case == "punctuation_case")
        .unwrap();
    assert_eq!(
        raw.candidate,
        ["two", "dogs", "playing", "with", "a", "frisbee"]
    );
}

/// Exact match and word error rate against the fixture script's independent implementation.
#[test]
fn word_errors_match_the_fixture() {
    let f = fixture();
    let (candidates, references) = words(&f);
    let w = word_error_rate(&candidates, &references).unwrap();
    for (image, got) in f.images.iter().zip(&w.per_image) {
        assert_eq!(
            (got.reference, got.edits),
            (image.closest_reference, image.edits),
            "{}",
            image.case
        );
    }
    assert_eq!(
        (w.edits, w.reference_words),
        (f.word_errors.edits, f.word_errors.reference_words)
    );
    assert_eq!(
        w.rate,
        f.word_errors.edits as f64 / f.word_errors.reference_words as f64
    );
    let m = exact_match(&candidates, &references).unwrap();
    assert_eq!(
        m,
        Share {
            hits: f.exact_matches,
            total: f.images.len()
        }
    );
}

/// Small cases worked by hand from raw captions.
#[test]
fn word_errors_by_hand() {
    let c = |t: &str| tokenize(t);
    let candidates = vec![
        c("A dog on a couch."),
        c("a cat sits on the mat"),
        c("Two birds"),
    ];
    let references = vec![
        // Equal to the second reference after tokenising.
        vec![c("A brown dog on the couch."), c("a dog on a couch")],
        // "a cat sat on the mat": one substitution (6 words); "the cat": 5 edits.
        vec![c("The cat."), c("A cat sat on the mat!")],
        // Two insertions away from "two birds flying high" (4 words).
        vec![c("Two birds flying high."), c("A bird in the sky.")],
    ];
    let m = exact_match(&candidates, &references).unwrap();
    assert_eq!(m, Share { hits: 1, total: 3 });
    let w = word_error_rate(&candidates, &references).unwrap();
    let chosen: Vec<(usize, usize)> = w.per_image.iter().map(|e| (e.reference, e.edits)).collect();
    assert_eq!(chosen, [(1, 0), (1, 1), (0, 2)]);
    assert_eq!((w.edits, w.reference_words), (3, 5 + 6 + 4));
    assert_eq!(w.rate, 0.2);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let f = fixture();
    let (candidates, references) = words(&f);
    let e = bleu(&candidates, &references[1..]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = word_error_rate(&candidates[..0], &references[..0]).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let mut no_refs = references.clone();
    no_refs[3].clear();
    let e = exact_match(&candidates, &no_refs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "exact match: image 3 has no reference captions"
    );
}

/// Decoder attention [B, T, L] over a 7 × 7 grid on 224 × 224 images, one box per caption:
/// shares of two captions add up.
#[test]
fn attention_localisation_over_captions() {
    let grid = RegionGrid {
        rows: 7,
        cols: 7,
        height: 224,
        width: 224,
    };
    let regions = 49;
    // Region (row, col) has its centre at (32 col + 16, 32 row + 16).
    let map = |row: usize, col: usize| -> Vec<f32> {
        let mut m = vec![0.5 / 48.0; regions];
        m[row * 7 + col] = 0.5;
        m
    };
    // Caption 0 (3 words), box around the top-left 2 × 2 regions (centres 16 and 48).
    let first: Vec<f32> = [map(0, 0), map(1, 1), map(6, 6)].concat();
    let top_left = PixelBox::from_xywh(0.0, 0.0, 64.0, 64.0);
    // Caption 1 (2 words), a box around column 3 of rows 2..=4.
    let second: Vec<f32> = [map(3, 3), map(3, 4)].concat();
    let middle = PixelBox {
        x0: 96.0,
        y0: 64.0,
        x1: 128.0,
        y1: 160.0,
    };
    let a = attention_in_box(&first, &grid, &top_left).unwrap();
    let b = attention_in_box(&second, &grid, &middle).unwrap();
    assert_eq!(a, Share { hits: 2, total: 3 });
    assert_eq!(b, Share { hits: 1, total: 2 });
    assert_eq!((a + b).rate(), 0.6);
    let mut bad = second.clone();
    bad[50] = f32::NAN;
    assert!(attention_in_box(&bad, &grid, &middle).is_err());
    assert!(attention_in_box(&second[..48], &grid, &middle).is_err());
}
