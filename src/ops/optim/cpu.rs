//! The CPU path: f32 parameters (their own master weights), the norm's sum in f64.

use super::AdamHyper;
use crate::error::{Error, Result};
use crate::ops::math_cpu::{widest, Real};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `clip_grad_norm` over host f32 gradients.
pub(super) fn clip_grad_norm(
    grads: &mut [&mut Tensor],
    max_norm: f32,
    scale_for: impl Fn(f64, f32) -> Option<f64>,
) -> Result<f32> {
    let mut squares = 0f64;
    for g in grads.iter() {
        squares += g
            .host_slice::<f32>()?
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>();
    }
    let norm = squares.sqrt();
    if let Some(scale) = scale_for(norm, max_norm) {
        for g in grads.iter_mut() {
            g.host_slice_mut::<f32>()?
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * scale) as f32);
        }
    }
    Ok(norm as f32)
}

/// Zero first and second moments for `params`.
pub(super) fn moments(params: &[&mut Tensor]) -> Vec<(Vec<f32>, Vec<f32>)> {
    params
        .iter()
        .map(|p| (vec![0.0; p.numel()], vec![0.0; p.numel()]))
        .collect()
}

/// One Adam step of host f32 parameters, as torch.optim.Adam / AdamW.
pub(super) fn adam_step(
    moments: &mut [(Vec<f32>, Vec<f32>)],
    params: &mut [&mut Tensor],
    grads: &[&Tensor],
    h: &AdamHyper,
) -> Result<()> {
    if moments.len() != params.len() {
        return Err(Error::Config(
            "the parameters changed between Adam steps".into(),
        ));
    }
    let hyper = Update::new(h);
    // Every parameter cut into blocks, the blocks shared among the worker threads: the update
    // is elementwise, so the result does not depend on the split.
    const BLOCK: usize = 1 << 14;
    let mut blocks = Vec::new();
    for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(moments.iter_mut()) {
        if p.shape() != g.shape() || m.len() != p.numel() {
            return Err(Error::shape(
                "gradient",
                format!("{:?}", p.shape()),
                g.shape(),
            ));
        }
        let g = g.host_slice::<f32>()?;
        let p = p.host_slice_mut::<f32>()?;
        let n = p.len();
        blocks.extend(
            p.chunks_mut(BLOCK)
                .zip(g[..n].chunks(BLOCK))
                .zip(m[..n].chunks_mut(BLOCK).zip(v[..n].chunks_mut(BLOCK))),
        );
    }
    blocks
        .into_par_iter()
        .for_each(|((p, g), (m, v))| update::<f32>(p, g, m, v, hyper));
    Ok(())
}

/// One Adam step's per-element factors.
#[derive(Clone, Copy)]
struct Update {
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    coupled: f32,
    step_size: f32,
    root_c2: f32,
}

impl Update {
    fn new(h: &AdamHyper) -> Self {
        let (b1, b2) = h.betas;
        // torch's form: p -= (lr / c1) · m / (√v / √c2 + eps), the bias corrections c1, c2 in
        // f64 once per step, the per-element work in f32 (vectorised).
        let (decay, coupled) = match h.decoupled {
            true => (1.0 - h.lr * h.weight_decay, 0.0),
            false => (1.0, h.weight_decay),
        };
        Update {
            b1,
            b2,
            eps: h.eps,
            decay,
            coupled,
            step_size: (h.lr as f64 / (1.0 - (b1 as f64).powi(h.step as i32))) as f32,
            root_c2: (1.0 - (b2 as f64).powi(h.step as i32)).sqrt() as f32,
        }
    }
}

widest! {
    /// The update of parameters `p` with gradients `g` and moments `m`, `v` (one length).
    fn update<T: Real>(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], u: Update) -> () = update_body;
}

#[inline(always)]
fn update_body<T: Real>(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], u: Update) {
    let n = p.len().min(g.len()).min(m.len()).min(v.len());
    let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let grad = g[i] + u.coupled * p[i];
        let mi = u.b1 * m[i] + (1.0 - u.b1) * grad;
        let vi = u.b2 * v[i] + (1.0 - u.b2) * grad * grad;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * u.decay - u.step_size * mi / (vi.sqrt() / u.root_c2 + u.eps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter of several blocks, beside a small one, takes exactly the update each of its
    /// elements would take alone (the blocks are shared among threads, so this is what must
    /// not change): two steps, Adam and AdamW.
    #[test]
    fn blocks_of_a_large_parameter_step_like_their_elements() {
        let n = 2 * (1 << 14) + 1234;
        let values = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        for decoupled in [false, true] {
            let mut big = Tensor::from_vec(values(1, n), &[n]).unwrap();
            let mut small = Tensor::from_vec(values(2, 5), &[5]).unwrap();
            let mut moments = moments(&[&mut big, &mut small]);
            let (mut want, mut m, mut v) = (values(1, n), vec![0f32; n], vec![0f32; n]);
            for step in 1..=2 {
                let h = AdamHyper {
                    lr: 0.01,
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                    weight_decay: 0.01,
                    decoupled,
                    step,
                };
                let (g_big, g_small) = (values(3 + step as usize, n), values(9, 5));
                let grads = [
                    &Tensor::from_vec(g_big.clone(), &[n]).unwrap(),
                    &Tensor::from_vec(g_small, &[5]).unwrap(),
                ];
                adam_step(&mut moments, &mut [&mut big, &mut small], &grads, &h).unwrap();
                let u = Update::new(&h);
                for i in 0..n {
                    let at = i..i + 1;
                    update::<f32>(
                        &mut want[at.clone()],
                        &g_big[at.clone()],
                        &mut m[at.clone()],
                        &mut v[at],
                        u,
                    );
                }
            }
            assert_eq!(big.host_slice::<f32>().unwrap(), &want[..], "{decoupled}");
            assert_eq!(moments[0], (m, v));
        }
    }
}
