//! The model layer trains on the CPU, through the public API only: a tiny captioner reading
//! pixels (its patch encoder trained end to end) learns to name the glyphs of synthetic
//! images left to right, and a tiny seq2seq (bidirectional LSTM and GRU encoders) learns to
//! reverse digit strings. Each one's held-out loss must fall from about ln V to a small
//! fraction of it, and a checkpoint must round-trip to the same captions.

use fused_rnn::models::{
    Captioner, CaptionerConfig, EncoderCell, Input, Seq2Seq, Seq2SeqConfig, Sources, Vocab,
};
use fused_rnn::nn::{AttentionActivation, EncoderLayers, ImageShape};
use fused_rnn::train::Adam;
use fused_rnn::{DType, Device, Indices};
use rand::{rngs::StdRng, Rng, SeedableRng};

const GLYPHS: usize = 5;
const SLOTS: usize = 3;
const SIDE: usize = 4;

fn shape() -> ImageShape {
    ImageShape::patches(1, SIDE, SIDE * SLOTS, SIDE)
}

/// Images of 1 × 4 × 12 pixels: each of three slots holds one of five fixed 4×4 glyphs or
/// nothing (at least one glyph per image), with noise; the caption names the glyphs left to
/// right.
struct Scenes {
    glyphs: Vec<[f32; SIDE * SIDE]>,
}

struct Batch {
    pixels: Vec<f32>,
    captions: Indices,
    lengths: Vec<usize>,
    words: Vec<Vec<String>>,
}

/// Captions as ids [B, T] (padded) with their lengths.
fn captions(vocab: &Vocab, words: &[Vec<String>]) -> (Indices, Vec<usize>) {
    let encoded: Vec<Vec<usize>> = words.iter().map(|w| vocab.encode(w)).collect();
    let t = encoded.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0usize; encoded.len() * t];
    for (r, e) in encoded.iter().enumerate() {
        ids[r * t..r * t + e.len()].copy_from_slice(e);
    }
    let lengths = encoded.iter().map(Vec::len).collect();
    (
        Indices::from_usize(&ids, &[encoded.len(), t]).unwrap(),
        lengths,
    )
}

impl Scenes {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(5);
        let glyphs = (0..GLYPHS)
            .map(|_| std::array::from_fn(|_| if rng.random_bool(0.5) { 1.0 } else { 0.0 }))
            .collect();
        Scenes { glyphs }
    }

    fn batch(&self, vocab: &Vocab, n: usize, rng: &mut StdRng) -> Batch {
        let s = shape();
        let mut pixels = vec![0f32; n * s.pixels()];
        let mut words = Vec::new();
        for img in 0..n {
            let mut caption = Vec::new();
            let first = rng.random_range(0..SLOTS);
            for slot in 0..SLOTS {
                if slot != first && rng.random_bool(0.3) {
                    continue;
                }
                let g = rng.random_range(0..GLYPHS);
                caption.push(format!("g{g}"));
                for y in 0..SIDE {
                    for x in 0..SIDE {
                        pixels[img * s.pixels() + y * s.width + slot * SIDE + x] =
                            self.glyphs[g][y * SIDE + x];
                    }
                }
            }
            words.push(caption);
        }
        for p in pixels.iter_mut() {
            *p += rng.random_range(-0.2..0.2);
        }
        let (captions, lengths) = captions(vocab, &words);
        Batch {
            pixels,
            captions,
            lengths,
            words,
        }
    }
}

#[test]
fn a_tiny_captioner_learns_to_name_glyphs_left_to_right() {
    learns_to_name_glyphs(EncoderLayers::default());
}

#[test]
fn a_tiny_captioner_with_a_hidden_encoder_layer_learns_to_name_glyphs() {
    learns_to_name_glyphs(EncoderLayers {
        convs: vec![],
        hidden: Some(32),
    });
}

#[test]
fn a_tiny_captioner_with_a_convolution_stem_learns_to_name_glyphs() {
    learns_to_name_glyphs(EncoderLayers {
        convs: vec![8],
        hidden: None,
    });
}

fn learns_to_name_glyphs(encoder: EncoderLayers) {
    let vocab = Vocab::new((0..GLYPHS).map(|g| format!("g{g}"))).unwrap();
    let config = CaptionerConfig {
        image: Some(shape()),
        encoder: encoder.clone(),
        features: 24,
        attention: 16,
        hidden: 32,
        embed: 8,
        activation: AttentionActivation::Relu,
        dropout: 0.1,
    };
    let mut model = Captioner::random(config, vocab.clone(), &Device::Cpu, DType::F32, 1).unwrap();
    let scenes = Scenes::new();
    let held_out = scenes.batch(&vocab, 128, &mut StdRng::seed_from_u64(99));
    let held_loss = |m: &Captioner| {
        m.loss(
            Input::Pixels(&held_out.pixels),
            &held_out.captions,
            &held_out.lengths,
            0.0,
        )
        .unwrap()
        .cross_entropy
    };
    let start = held_loss(&model);
    let mut adam = Adam::new(4e-3);
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..600 {
        let b = scenes.batch(&vocab, 32, &mut rng);
        let report = model
            .train_step(
                Input::Pixels(&b.pixels),
                &b.captions,
                &b.lengths,
                &mut adam,
                1.0,
                Some(5.0),
            )
            .unwrap();
        assert!(report.loss.is_finite());
    }
    let end = held_loss(&model);
    eprintln!("captioner: held-out cross-entropy {start:.3} → {end:.3}");
    assert!(start > 1.5, "an untrained model is near ln V: {start}");
    assert!(end < 0.15 * start, "held-out loss {start} → {end}");
    let captions = model
        .caption(Input::Pixels(&held_out.pixels), 6, 1)
        .unwrap();
    let right = captions
        .iter()
        .zip(&held_out.words)
        .filter(|(c, w)| &c.words == *w)
        .count();
    eprintln!("captioner: {right} of 128 held-out captions exact");
    assert!(
        right * 10 >= held_out.words.len() * 8,
        "{right} of 128 captions exact"
    );
    // Each word's attention sums to one over the three regions.
    for c in &captions {
        for row in c.alphas.chunks_exact(SLOTS) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
    }

    // The checkpoint round-trips: same captions, same scores.
    let dir = std::env::temp_dir().join(format!(
        "fused-rnn-models-{}-{:?}-{:?}",
        std::process::id(),
        encoder.convs,
        encoder.hidden
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("captioner.safetensors");
    model.save(&path).unwrap();
    let loaded = Captioner::load(&path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.vocab(), model.vocab());
    assert_eq!(loaded.encoder_layers(), Some(encoder));
    let again = loaded
        .caption(Input::Pixels(&held_out.pixels), 6, 3)
        .unwrap();
    let beam = model
        .caption(Input::Pixels(&held_out.pixels), 6, 3)
        .unwrap();
    for (a, b) in again.iter().zip(&beam) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.score, b.score);
    }
    assert!(Seq2Seq::load(&path, &Device::Cpu, DType::F32).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Digit strings of 2 to 6 digits and their reversal.
fn reversal(vocab: &Vocab, n: usize, rng: &mut StdRng) -> (Sources, Indices, Vec<usize>) {
    let mut sources = Vec::new();
    let mut words = Vec::new();
    for _ in 0..n {
        let len = rng.random_range(2..=6);
        let digits: Vec<String> = (0..len)
            .map(|_| rng.random_range(0..10).to_string())
            .collect();
        sources.push(digits.iter().map(|d| vocab.id(d)).collect());
        words.push(digits.into_iter().rev().collect::<Vec<_>>());
    }
    let (targets, lengths) = captions(vocab, &words);
    (Sources::new(&sources).unwrap(), targets, lengths)
}

#[test]
fn a_tiny_seq2seq_learns_to_reverse_digits_with_either_encoder() {
    let vocab = Vocab::new((0..10).map(|d| d.to_string())).unwrap();
    for cell in [EncoderCell::Lstm, EncoderCell::Gru] {
        let config = Seq2SeqConfig {
            source_embed: 12,
            encoder_hidden: 16,
            encoder_cell: cell,
            attention: 16,
            hidden: 32,
            embed: 12,
            activation: AttentionActivation::Tanh,
            dropout: 0.0,
        };
        let mut model = Seq2Seq::random(
            config,
            vocab.clone(),
            vocab.clone(),
            &Device::Cpu,
            DType::F32,
            3,
        )
        .unwrap();
        let (src, tgt, lens) = reversal(&vocab, 128, &mut StdRng::seed_from_u64(100));
        let held = |m: &Seq2Seq| m.loss(&src, &tgt, &lens).unwrap().cross_entropy;
        let start = held(&model);
        let mut adam = Adam::new(5e-3);
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..400 {
            let (s, t, l) = reversal(&vocab, 32, &mut rng);
            model.train_step(&s, &t, &l, &mut adam, Some(5.0)).unwrap();
        }
        let end = held(&model);
        eprintln!("seq2seq ({cell:?}): held-out cross-entropy {start:.3} → {end:.3}");
        assert!(
            start > 2.0,
            "{cell:?}: an untrained model is near ln V: {start}"
        );
        assert!(
            end < 0.25 * start,
            "{cell:?}: held-out loss {start} → {end}"
        );
    }
}
