//! CPU reference forward, f32. The same loop as the CUDA path: one GEMM for the input projection
//! of a layer-direction, then per step one GEMM for W_hh·h and the elementwise update.

use super::{step_time, Call, Dims};
use crate::error::{Error, Result};
use crate::ops::gemm_cpu::gemm_abt;
use crate::tensor::Tensor;

fn f32_values<'a>(t: &'a Tensor, name: &str) -> Result<&'a [f32]> {
    t.host_slice::<f32>().map_err(|_| Error::DType {
        tensor: name.into(),
        expected: "f32 (the CPU path computes in f32)".into(),
        got: t.dtype().name().into(),
    })
}

pub(super) fn forward(call: &Call<'_>) -> Result<(Tensor, Tensor)> {
    let Call {
        act,
        ref dims,
        weights,
        input,
        h0,
        lengths,
    } = *call;
    let x = f32_values(input, "input")?;
    let h0 = h0.map(|t| f32_values(t, "h0")).transpose()?;
    let Dims {
        seq_len,
        batch,
        hidden,
        dirs,
        ..
    } = *dims;
    let (st, sb) = dims.strides();
    let rows = dims.rows();
    let width = dirs * hidden;
    let state = batch * hidden;

    let mut h_n = vec![0f32; dims.layers * dirs * state];
    let mut layer_in = x.to_vec();
    let mut xw = vec![0f32; rows * hidden];
    let mut hh = vec![0f32; state];
    let mut h = vec![0f32; state];
    for layer in 0..dims.layers {
        let in_w = dims.layer_input(layer);
        let mut out = vec![0f32; rows * width];
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let w = &weights[slot];
            let w_ih = f32_values(&w.w_ih, "weight_ih")?;
            let w_hh = f32_values(&w.w_hh, "weight_hh")?;
            let b_ih = w
                .b_ih
                .as_ref()
                .map(|b| f32_values(b, "bias_ih"))
                .transpose()?;
            let b_hh = w
                .b_hh
                .as_ref()
                .map(|b| f32_values(b, "bias_hh"))
                .transpose()?;
            let bias: Vec<f32> = (0..hidden)
                .map(|j| b_ih.map_or(0.0, |b| b[j]) + b_hh.map_or(0.0, |b| b[j]))
                .collect();

            gemm_abt(
                rows, hidden, in_w, &layer_in, in_w, w_ih, in_w, &mut xw, hidden, 0.0,
            );
            match h0 {
                Some(h0) => h.copy_from_slice(&h0[slot * state..(slot + 1) * state]),
                None => h.fill(0.0),
            }
            for s in 0..seq_len {
                gemm_abt(
                    batch, hidden, hidden, &h, hidden, w_hh, hidden, &mut hh, hidden, 0.0,
                );
                for b in 0..batch {
                    // Rows that have ended keep their state; their outputs stay 0.
                    let Some(t) = step_time(s, lengths[b], dir == 1) else {
                        continue;
                    };
                    let row = t * st + b * sb;
                    let pre = &xw[row * hidden..(row + 1) * hidden];
                    let h_row = &mut h[b * hidden..(b + 1) * hidden];
                    let hh_row = &hh[b * hidden..(b + 1) * hidden];
                    for j in 0..hidden {
                        h_row[j] = act.apply(pre[j] + hh_row[j] + bias[j]);
                    }
                    out[row * width + dir * hidden..][..hidden].copy_from_slice(h_row);
                }
            }
            h_n[slot * state..(slot + 1) * state].copy_from_slice(&h);
        }
        layer_in = out;
    }
    Ok((
        Tensor::from_vec(layer_in, &dims.output_shape())?,
        Tensor::from_vec(h_n, &dims.state_shape())?,
    ))
}
