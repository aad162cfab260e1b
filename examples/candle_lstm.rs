//! A small candle model with fused-rnn's LSTM: a bidirectional two-layer LSTM reads sequences
//! of different lengths and a linear head tells whether the sum of their values is positive;
//! candle's AdamW trains both through candle's autograd. Run:
//! `cargo run --release --features candle --example candle_lstm`.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{linear, loss, Linear, Module, Optimizer, VarBuilder, VarMap};
use fused_rnn::candle::Lstm;
use fused_rnn::nn::LstmConfig;

struct Model {
    lstm: Lstm,
    head: Linear,
}

impl Model {
    fn new(vb: VarBuilder) -> Result<Self> {
        let config = LstmConfig {
            num_layers: 2,
            bidirectional: true,
            batch_first: true,
            ..LstmConfig::new(1, 32)
        };
        Ok(Model {
            lstm: Lstm::new(config, vb.pp("lstm"))?,
            head: linear(64, 2, vb.pp("head"))?,
        })
    }

    /// Class scores [B, 2] from the top layer's final states of both directions.
    fn forward(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let out = self.lstm.forward(x, None, Some(lengths))?;
        let top = out.h_n.narrow(0, 2, 2)?; // [2, B, 32]: layer 1, forward and reverse
        let features = Tensor::cat(&[top.get(0)?, top.get(1)?], 1)?;
        self.head.forward(&features)
    }
}

/// A batch of sequences [B, T, 1] with random lengths, zero past each length, and labels.
fn batch(b: usize, t: usize, device: &Device) -> Result<(Tensor, Vec<usize>, Tensor)> {
    let x = Tensor::randn(0f32, 1.0, (b, t, 1), device)?;
    let lengths: Vec<usize> = (0..b).map(|k| 1 + (k * 7 + 3) % t).collect();
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |s| if s < l { 1.0 } else { 0.0 }))
        .collect();
    let x = x.broadcast_mul(&Tensor::from_vec(mask, (b, t, 1), device)?)?;
    let labels = x.sum((1, 2))?.gt(0f32)?.to_dtype(DType::U32)?;
    Ok((x, lengths, labels))
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let map = VarMap::new();
    let model = Model::new(VarBuilder::from_varmap(&map, DType::F32, &device))?;
    let mut opt = candle_nn::AdamW::new_lr(map.all_vars(), 1e-2)?;
    for step in 1..=150 {
        let (x, lengths, labels) = batch(64, 20, &device)?;
        let loss = loss::cross_entropy(&model.forward(&x, &lengths)?, &labels)?;
        opt.backward_step(&loss)?;
        if step % 25 == 0 {
            println!("step {step:3}: loss {:.4}", loss.to_scalar::<f32>()?);
        }
    }
    let (x, lengths, labels) = batch(512, 20, &device)?;
    let predicted = model.forward(&x, &lengths)?.argmax(D::Minus1)?;
    let right = predicted.eq(&labels)?.to_dtype(DType::F32)?.mean_all()?;
    println!(
        "held-out accuracy: {:.1}%",
        100.0 * right.to_scalar::<f32>()?
    );
    Ok(())
}
