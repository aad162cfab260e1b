//! A small training run on the CPU: an LSTM encoder–decoder with general attention learns to
//! reverse digit sequences (lengths 3 to 6, padded), trained end to end through every backward
//! pass (embeddings, both LSTMs, attention, the output layer, cross-entropy) with clipping and
//! Adam, one optimiser call over every named parameter. The loss must fall from ~ln 10 to well
//! below it, and the trained model's state_dict must round-trip through safetensors.

use fused_rnn::io::TensorFile;
use fused_rnn::nn::{
    save_state_dict, Attention, AttentionConfig, Embedding, Linear, Lstm, LstmConfig, LstmOutput,
    Module,
};
use fused_rnn::ops::attention::Score;
use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
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

/// [B, T, H] halves of a [B·T, 2H] tensor's rows, and back.
fn split_halves(x: &Tensor, h: usize) -> (Vec<f32>, Vec<f32>) {
    let v = x.to_vec_f32().unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for row in v.chunks_exact(2 * h) {
        a.extend_from_slice(&row[..h]);
        b.extend_from_slice(&row[h..]);
    }
    (a, b)
}

fn concat_halves(a: &Tensor, b: &Tensor, h: usize) -> Vec<f32> {
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    a.chunks_exact(h)
        .zip(b.chunks_exact(h))
        .flat_map(|(x, y)| x.iter().chain(y).copied())
        .collect()
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

    /// Every layer with its state_dict prefix.
    fn modules(&self) -> [(&'static str, &dyn Module); 6] {
        [
            ("enc_emb.", &self.enc_emb),
            ("dec_emb.", &self.dec_emb),
            ("encoder.", &self.encoder),
            ("decoder.", &self.decoder),
            ("attention.", &self.attention),
            ("output.", &self.output),
        ]
    }

    /// The same, mutable.
    fn modules_mut(&mut self) -> [(&'static str, &mut dyn Module); 6] {
        [
            ("enc_emb.", &mut self.enc_emb),
            ("dec_emb.", &mut self.dec_emb),
            ("encoder.", &mut self.encoder),
            ("decoder.", &mut self.decoder),
            ("attention.", &mut self.attention),
            ("output.", &mut self.output),
        ]
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
        let features = Tensor::from_vec(
            concat_halves(&dec.output, &context, HIDDEN),
            &[BATCH * MAX_LEN, 2 * HIDDEN],
        )
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

#[test]
fn an_encoder_decoder_with_attention_learns_to_reverse_sequences() {
    let cpu = Device::Cpu;
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
        let (d_dec, d_ctx) = split_halves(&out_g.input, HIDDEN);
        let hidden_shape = [BATCH, MAX_LEN, HIDDEN];
        let d_ctx = Tensor::from_vec(d_ctx, &hidden_shape).unwrap();
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
        let d_dec: Vec<f32> = d_dec
            .iter()
            .zip(att_g.query.to_vec_f32().unwrap())
            .map(|(a, q)| a + q)
            .collect();
        let d_dec = Tensor::from_vec(d_dec, &hidden_shape).unwrap();
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
        // Update: every gradient in the order `modules` lists the parameters.
        let mut grads: Vec<Tensor> = vec![d_enc_emb, d_dec_emb];
        for g in [&enc_g, &dec_g] {
            grads.extend(
                g.params
                    .iter()
                    .flat_map(|p| p.tensors())
                    .map(|t| t.to(&cpu, DType::F32).unwrap()),
            );
        }
        grads.extend(att_g.params.into_iter().map(|(_, t)| t));
        grads.push(out_g.weight);
        grads.extend(out_g.bias);
        let mut grad_refs: Vec<&mut Tensor> = grads.iter_mut().collect();
        clip_grad_norm(&mut grad_refs, 1.0).unwrap();
        // One optimiser call over every named parameter of the model.
        let mut params: Vec<&mut Tensor> = Vec::new();
        for (_, module) in model.modules_mut() {
            params.extend(module.parameters_mut().into_iter().map(|(_, t)| t));
        }
        let grad_refs: Vec<&Tensor> = grads.iter().collect();
        adam.step(&mut params, &grad_refs).unwrap();
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
    save_state_dict(&path, &model.modules()).unwrap();
    let file = TensorFile::load(&path).unwrap();
    let mut loaded = Model::random(100);
    for (prefix, module) in loaded.modules_mut() {
        module.load_state_dict(&file, prefix).unwrap();
    }
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
