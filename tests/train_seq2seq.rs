//! A small training run on the CPU, written only against the public API: an LSTM
//! encoder–decoder with general attention learns to reverse digit sequences (lengths 3 to 6,
//! padded), trained end to end through every backward pass (embeddings, both LSTMs, attention,
//! the concatenation, the output layer, cross-entropy) with clipping and Adam, one optimiser
//! call over every parameter by name. The loss must fall from ~ln 10 to well below it, and the
//! trained model's state_dict must round-trip through safetensors.

use fused_rnn::io::TensorFile;
use fused_rnn::nn::{
    parameters_mut_of, parameters_of, save_state_dict, Attention, AttentionConfig, Embedding,
    Grads, Linear, Lstm, LstmConfig, LstmOutput, Module,
};
use fused_rnn::ops::attention::Score;
use fused_rnn::ops::concat::{concat, concat_backward};
use fused_rnn::ops::pointwise::add;
use fused_rnn::train::{softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Indices, Reserve, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

const PAD: usize = 0;
const BOS: usize = 1;
const VOCAB: usize = 12; // PAD, BOS, digits 0..9 as 2..11
const IGNORE: i64 = -100;
const EMBED: usize = 16;
const HIDDEN: usize = 32;
const BATCH: usize = 32;
const MAX_LEN: usize = 6;

struct Batch {
    source: Vec<usize>,
    decoder_in: Vec<usize>,
    targets: Vec<i64>,
    lengths: Vec<usize>,
}

/// Random digit sequences, batch-major [B, MAX_LEN]: the source, the decoder's input (BOS then
/// the reversed sequence shifted right) and the targets (the reversed sequence, padding ignored).
fn batch(rng: &mut StdRng) -> Batch {
    let mut b = Batch {
        source: vec![PAD; BATCH * MAX_LEN],
        decoder_in: vec![PAD; BATCH * MAX_LEN],
        targets: vec![IGNORE; BATCH * MAX_LEN],
        lengths: Vec::new(),
    };
    for row in 0..BATCH {
        let n = rng.random_range(3..=MAX_LEN);
        let digits: Vec<usize> = (0..n).map(|_| 2 + rng.random_range(0..10)).collect();
        for (t, &d) in digits.iter().enumerate() {
            b.source[row * MAX_LEN + t] = d;
            let reversed = digits[n - 1 - t];
            b.targets[row * MAX_LEN + t] = reversed as i64;
            b.decoder_in[row * MAX_LEN + t] = if t == 0 { BOS } else { digits[n - t] };
        }
        b.lengths.push(n);
    }
    b
}

/// Batch-major [B, MAX_LEN] tokens as ids.
fn ids(tokens: &[usize]) -> Indices {
    Indices::from_usize(tokens, &[BATCH, MAX_LEN]).unwrap()
}

/// The model: embeddings, an LSTM encoder and decoder, general attention over the encoder's
/// outputs and a linear layer over [decoder output; context].
struct Model {
    enc_emb: Embedding,
    dec_emb: Embedding,
    encoder: Lstm,
    decoder: Lstm,
    attention: Attention,
    output: Linear,
}

/// One training-mode forward pass: what the backward needs.
struct Pass {
    enc: LstmOutput,
    enc_reserve: Reserve,
    dec: LstmOutput,
    dec_reserve: Reserve,
    features: Tensor,
    logits: Tensor,
}

impl Model {
    /// PyTorch's default initialisation, from `seed`.
    fn random(seed: u64) -> Model {
        let cpu = Device::Cpu;
        let mut config = LstmConfig::new(EMBED, HIDDEN);
        config.batch_first = true;
        let general = AttentionConfig {
            score: Score::General,
            query_size: HIDDEN,
            key_size: HIDDEN,
            attention_size: 0,
            bias: false,
        };
        Model {
            enc_emb: Embedding::random(VOCAB, EMBED, Some(PAD), &cpu, DType::F32, seed).unwrap(),
            dec_emb: Embedding::random(VOCAB, EMBED, Some(PAD), &cpu, DType::F32, seed + 1)
                .unwrap(),
            encoder: Lstm::random(config, &cpu, DType::F32, seed + 2).unwrap(),
            decoder: Lstm::random(config, &cpu, DType::F32, seed + 3).unwrap(),
            attention: Attention::random(general, &cpu, DType::F32, seed + 4).unwrap(),
            output: Linear::random(2 * HIDDEN, VOCAB, true, &cpu, DType::F32, seed + 5).unwrap(),
        }
    }

    fn forward(&self, b: &Batch) -> Pass {
        let src = self.enc_emb.forward(&ids(&b.source)).unwrap();
        let (enc, enc_reserve) = self
            .encoder
            .forward_train(&src, None, Some(&b.lengths))
            .unwrap();
        let dec_in = self.dec_emb.forward(&ids(&b.decoder_in)).unwrap();
        let state = Some((&enc.h_n, &enc.c_n));
        let (dec, dec_reserve) = self
            .decoder
            .forward_train(&dec_in, state, Some(&b.lengths))
            .unwrap();
        let keys = self
            .attention
            .keys(&enc.output, None, Some(&b.lengths))
            .unwrap();
        let context = self
            .attention
            .attend(&keys, &dec.output, false)
            .unwrap()
            .context;
        let features = concat(&[&dec.output, &context], 2)
            .unwrap()
            .reshape(&[BATCH * MAX_LEN, 2 * HIDDEN])
            .unwrap();
        let logits = self.output.forward(&features).unwrap();
        Pass {
            enc,
            enc_reserve,
            dec,
            dec_reserve,
            features,
            logits,
        }
    }
}

/// The model's state_dict: every layer's parameters under its prefix.
impl Module for Model {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        parameters_of(&[
            ("enc_emb.", &self.enc_emb),
            ("dec_emb.", &self.dec_emb),
            ("encoder.", &self.encoder),
            ("decoder.", &self.decoder),
            ("attention.", &self.attention),
            ("output.", &self.output),
        ])
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        parameters_mut_of(vec![
            ("enc_emb.", &mut self.enc_emb),
            ("dec_emb.", &mut self.dec_emb),
            ("encoder.", &mut self.encoder),
            ("decoder.", &mut self.decoder),
            ("attention.", &mut self.attention),
            ("output.", &mut self.output),
        ])
    }
}

#[test]
fn an_encoder_decoder_with_attention_learns_to_reverse_sequences() {
    let mut model = Model::random(1);
    let mut adam = Adam::new(0.01);
    let mut rng = StdRng::seed_from_u64(7);
    let (mut first, mut last) = (None, 0.0);
    for step in 0..300 {
        let b = batch(&mut rng);
        let pass = model.forward(&b);
        let m = &model;
        let loss = softmax_cross_entropy(&pass.logits, &b.targets, IGNORE).unwrap();
        first.get_or_insert(loss.value);
        last = loss.value;
        // Backward, from the loss to the embeddings.
        let out_g = m.output.backward(&pass.features, &loss.grad).unwrap();
        let hidden_shape = [BATCH, MAX_LEN, HIDDEN];
        let mut halves = concat_backward(&out_g.input, 1, &[HIDDEN, HIDDEN])
            .unwrap()
            .into_iter()
            .map(|h| h.reshape(&hidden_shape).unwrap());
        let (d_dec, d_ctx) = (halves.next().unwrap(), halves.next().unwrap());
        let att_g = m
            .attention
            .backward(
                &pass.enc.output,
                None,
                Some(&b.lengths),
                &pass.dec.output,
                &d_ctx,
            )
            .unwrap();
        let d_dec = add(&d_dec, &att_g.query).unwrap();
        assert_eq!(d_dec.shape(), hidden_shape);
        let dec_g = m
            .decoder
            .backward(&pass.dec_reserve, &d_dec, None, None)
            .unwrap();
        let enc_g = m
            .encoder
            .backward(
                &pass.enc_reserve,
                &att_g.keys,
                Some(&dec_g.h0),
                dec_g.c0.as_ref(),
            )
            .unwrap();
        let d_dec_emb = m
            .dec_emb
            .backward(&ids(&b.decoder_in), &dec_g.input)
            .unwrap();
        let d_enc_emb = m.enc_emb.backward(&ids(&b.source), &enc_g.input).unwrap();
        // Every gradient by its parameter's name, in whatever order the passes made them.
        let mut grads = Grads::new();
        let att_params = att_g.params.into_iter().map(|(_, t)| t);
        grads
            .add("output.", &m.output, out_g.into_params())
            .unwrap();
        grads.add("attention.", &m.attention, att_params).unwrap();
        grads
            .add("decoder.", &m.decoder, dec_g.into_params())
            .unwrap();
        grads
            .add("encoder.", &m.encoder, enc_g.into_params())
            .unwrap();
        grads.add("dec_emb.", &m.dec_emb, [d_dec_emb]).unwrap();
        grads.add("enc_emb.", &m.enc_emb, [d_enc_emb]).unwrap();
        grads.clip_norm(1.0).unwrap();
        // One optimiser call over every named parameter of the model.
        adam.step_module(&mut model, &grads).unwrap();
        if step % 50 == 0 {
            println!("step {step}: loss {:.4}", loss.value);
        }
    }
    let first = first.unwrap();
    println!("loss {first:.3} → {last:.3}");
    assert!(
        first > 2.0,
        "an untrained model should be near ln 10: {first}"
    );
    assert!(
        last < 0.5,
        "the model did not learn to reverse: loss {first:.3} → {last:.3}"
    );
    // The state_dict round-trips through safetensors: a fresh model loaded from it computes
    // the trained model's logits exactly.
    let path = std::env::temp_dir().join(format!(
        "fused-rnn-seq2seq-{}.safetensors",
        std::process::id()
    ));
    save_state_dict(&path, &[("", &model)]).unwrap();
    let file = TensorFile::load(&path).unwrap();
    let mut loaded = Model::random(100);
    loaded.load_state_dict(&file, "").unwrap();
    std::fs::remove_file(&path).unwrap();
    let b = batch(&mut rng);
    let (want, got) = (model.forward(&b).logits, loaded.forward(&b).logits);
    assert_eq!(got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    // Names or shapes that do not fit are errors naming them, and change nothing.
    let mut narrow = Linear::random(HIDDEN, VOCAB, true, &Device::Cpu, DType::F32, 9).unwrap();
    let before = narrow.weight.to_vec_f32().unwrap();
    let stray = narrow.load_state_dict(&file, "decoder.").unwrap_err();
    assert!(stray.to_string().contains("`decoder."), "{stray}");
    let shape = narrow.load_state_dict(&file, "output.").unwrap_err();
    assert!(shape.to_string().contains("output.weight"), "{shape}");
    assert_eq!(narrow.weight.to_vec_f32().unwrap(), before);
}
