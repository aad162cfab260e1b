//! A small training run on the CPU: an LSTM encoder–decoder with general attention learns to
//! reverse digit sequences (lengths 3 to 6, padded), trained end to end through every backward
//! pass (embeddings, both LSTMs, attention, the output layer, cross-entropy) with clipping and
//! Adam. The loss must fall from ~ln 10 to well below it.

use fused_rnn::nn::{Attention, AttentionConfig, Embedding, Linear, Lstm, LstmConfig};
use fused_rnn::ops::attention::Score;
use fused_rnn::train::{clip_grad_norm, softmax_cross_entropy, Adam};
use fused_rnn::{DType, Device, Tensor};
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

#[test]
fn an_encoder_decoder_with_attention_learns_to_reverse_sequences() {
    let cpu = Device::Cpu;
    let mut config = LstmConfig::new(EMBED, HIDDEN);
    config.batch_first = true;
    let mut enc_emb = Embedding::random(VOCAB, EMBED, Some(PAD), 1).unwrap();
    let mut dec_emb = Embedding::random(VOCAB, EMBED, Some(PAD), 2).unwrap();
    let mut encoder = Lstm::random(config, &cpu, DType::F32, 3).unwrap();
    let mut decoder = Lstm::random(config, &cpu, DType::F32, 4).unwrap();
    let general = AttentionConfig {
        score: Score::General,
        query_size: HIDDEN,
        key_size: HIDDEN,
        attention_size: 0,
        bias: false,
    };
    let mut attention = Attention::random(general, &cpu, DType::F32, 5).unwrap();
    let mut output = Linear::random(2 * HIDDEN, VOCAB, true, 6).unwrap();
    let mut adam = Adam::new(0.01);
    let mut rng = StdRng::seed_from_u64(7);
    let shape = [BATCH, MAX_LEN];
    let (mut first, mut last) = (None, 0.0);
    for step in 0..300 {
        let b = batch(&mut rng);
        // Forward.
        let src = enc_emb.forward(&b.source, &shape).unwrap();
        let (enc, enc_reserve) = encoder.forward_train(&src, None, Some(&b.lengths)).unwrap();
        let dec_in = dec_emb.forward(&b.decoder_in, &shape).unwrap();
        let state = Some((&enc.h_n, &enc.c_n));
        let (dec, dec_reserve) = decoder
            .forward_train(&dec_in, state, Some(&b.lengths))
            .unwrap();
        let keys = attention.keys(&enc.output, None, Some(&b.lengths)).unwrap();
        let context = attention.attend(&keys, &dec.output, false).unwrap().context;
        let features = Tensor::from_vec(
            concat_halves(&dec.output, &context, HIDDEN),
            &[BATCH * MAX_LEN, 2 * HIDDEN],
        )
        .unwrap();
        let logits = output.forward(&features).unwrap();
        let loss = softmax_cross_entropy(&logits, &b.targets, IGNORE).unwrap();
        first.get_or_insert(loss.value);
        last = loss.value;
        // Backward, from the loss to the embeddings.
        let out_g = output.backward(&features, &loss.grad).unwrap();
        let (d_dec, d_ctx) = split_halves(&out_g.input, HIDDEN);
        let hidden_shape = [BATCH, MAX_LEN, HIDDEN];
        let d_ctx = Tensor::from_vec(d_ctx, &hidden_shape).unwrap();
        let att_g = attention
            .backward(&enc.output, None, Some(&b.lengths), &dec.output, &d_ctx)
            .unwrap();
        let d_dec: Vec<f32> = d_dec
            .iter()
            .zip(att_g.query.to_vec_f32().unwrap())
            .map(|(a, q)| a + q)
            .collect();
        let d_dec = Tensor::from_vec(d_dec, &hidden_shape).unwrap();
        let dec_g = decoder.backward(&dec_reserve, &d_dec, None, None).unwrap();
        let enc_g = encoder
            .backward(
                &enc_reserve,
                &att_g.keys,
                Some(&dec_g.h0),
                dec_g.c0.as_ref(),
            )
            .unwrap();
        let d_dec_emb = dec_emb.backward(&b.decoder_in, &dec_g.input).unwrap();
        let d_enc_emb = enc_emb.backward(&b.source, &enc_g.input).unwrap();
        // Update: every gradient in the order the parameters are listed below.
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
        let mut params: Vec<&mut Tensor> = Vec::new();
        params.extend(enc_emb.parameters_mut().into_iter().map(|(_, t)| t));
        params.extend(dec_emb.parameters_mut().into_iter().map(|(_, t)| t));
        params.extend(encoder.parameters_mut().into_iter().map(|(_, t)| t));
        params.extend(decoder.parameters_mut().into_iter().map(|(_, t)| t));
        params.extend(
            attention
                .parameters_mut()
                .unwrap()
                .into_iter()
                .map(|(_, t)| t),
        );
        params.extend(output.parameters_mut().into_iter().map(|(_, t)| t));
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
}
