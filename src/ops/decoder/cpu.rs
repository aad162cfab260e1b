//! The decoder on the CPU, generic over the float it computes in: f32 (the path that runs) and
//! f64 (the reference the tests hold it to). Buffers kept across steps are time-major
//! ([S, B, ·]) so that each step reads and writes contiguous blocks and the weight gradients are
//! one product over every step.

use super::search::{Beams, Finished};
use super::{Dims, Dropout, Params, Search};
use crate::error::Result;
use crate::ops::activation::Activation;
use crate::ops::gemm_cpu::{cores, gemm_ab, gemm_atb, gemm_atb_strided, transpose};
use crate::ops::math_cpu::{add_column_sums, axpy, dot, widest, Real};
use crate::ops::philox::for_each_factor;
use crate::size;
use rayon::prelude::*;

/// The parameters converted to `T`, in the layouts the products want.
pub(crate) struct Weights<T> {
    pub dims: Dims,
    act: Activation,
    /// encoder_att [A, D], [A]
    w_ea: Vec<T>,
    b_ea: Vec<T>,
    /// full_att's row [A] and bias
    w_fa: Vec<T>,
    b_fa: T,
    /// embedding [V, E]
    emb: Vec<T>,
    /// decode_step.weight_ih [4H, E + D] and its transpose [E + D, 4H]
    w_ih: Vec<T>,
    w_ih_t: Vec<T>,
    /// [W_hh; decoder_att; f_beta] stacked [4H + A + D, H], its transpose, and the biases
    /// [b_ih + b_hh; b_da; b_fb]
    w_st: Vec<T>,
    w_st_t: Vec<T>,
    b_st: Vec<T>,
    /// [init_h; init_c] stacked [2H, D], its transpose, biases [2H]
    w_init: Vec<T>,
    w_init_t: Vec<T>,
    b_init: Vec<T>,
    /// fc [V, H], its transpose, bias [V]
    w_fc: Vec<T>,
    w_fc_t: Vec<T>,
    b_fc: Vec<T>,
}

fn convert<T: Real>(values: Vec<f32>) -> Vec<T> {
    values.into_iter().map(T::from_f32).collect()
}

impl<T: Real> Weights<T> {
    pub fn new(params: &Params, dims: Dims) -> Result<Self> {
        let p: Vec<Vec<T>> = params
            .tensors
            .iter()
            .map(|t| t.to_vec_f32().map(convert))
            .collect::<Result<_>>()?;
        Ok(Weights::from_values(
            p,
            dims,
            params.activation.activation(),
        ))
    }

    /// From the 19 parameters' values in `NAMES` order.
    pub fn from_values(mut p: Vec<Vec<T>>, dims: Dims, act: Activation) -> Self {
        let Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            ..
        } = dims;
        let w = 4 * h + a + d;
        let w_st = [&p[8][..], &p[2], &p[15]].concat();
        let b_lstm: Vec<T> = p[9].iter().zip(&p[10]).map(|(&x, &y)| x + y).collect();
        let w_init = [&p[11][..], &p[13]].concat();
        let b_fa = p[5][0];
        let b_st = [&b_lstm[..], &p[3], &p[16]].concat();
        let b_init = [&p[12][..], &p[14]].concat();
        let mut take = |i: usize| std::mem::take(&mut p[i]);
        let (w_ih, w_fc) = (take(7), take(17));
        Weights {
            dims,
            act,
            w_ea: take(0),
            b_ea: take(1),
            w_fa: take(4),
            b_fa,
            emb: take(6),
            w_ih_t: transpose(&w_ih, 4 * h, e + d),
            w_ih,
            w_st_t: transpose(&w_st, w, h),
            w_st,
            b_st,
            w_init_t: transpose(&w_init, 2 * h, d),
            w_init,
            b_init,
            w_fc_t: transpose(&w_fc, dims.vocab, h),
            w_fc,
            b_fc: take(18),
        }
    }

    /// The width of the stacked step product: 4H + A + D.
    fn stacked(&self) -> usize {
        4 * self.dims.hidden + self.dims.attention + self.dims.features
    }
}

/// y [rows, n] = x [rows, k] · wt [k, n] + bias.
#[inline(always)]
fn affine<T: Real>(x: &[T], wt: &[T], bias: &[T], rows: usize, k: usize) -> Vec<T> {
    let n = bias.len();
    let mut y: Vec<T> = bias.iter().copied().cycle().take(rows * n).collect();
    gemm_ab(rows, n, k, x, k, wt, n, &mut y, n, T::ONE, usize::MAX);
    y
}

/// Keys after the steps-independent work: the projection through encoder_att and the initial
/// state.
struct Keys<'a, T> {
    f: &'a [T],
    lens: &'a [usize],
    len: usize,
    /// encoder_att(f) [B, L, A]
    p: Vec<T>,
    /// the mean of each row's valid keys [B, D]
    mean: Vec<T>,
}

impl<'a, T: Real> Keys<'a, T> {
    fn new(w: &Weights<T>, f: &'a [T], lens: &'a [usize]) -> Self {
        let (d, a) = (w.dims.features, w.dims.attention);
        let batch = lens.len();
        let len = f.len() / (batch * d).max(1);
        let p = affine(f, &transpose(&w.w_ea, a, d), &w.b_ea, batch * len, d);
        let mut mean = vec![T::default(); batch * d];
        for (b, m) in mean.chunks_exact_mut(d).enumerate() {
            for l in 0..lens[b] {
                axpy(m, T::ONE, &f[(b * len + l) * d..][..d]);
            }
            let inv = T::ONE / T::from_f64(lens[b] as f64);
            m.iter_mut().for_each(|x| *x *= inv);
        }
        Keys {
            f,
            lens,
            len,
            p,
            mean,
        }
    }

    /// [h0, c0] per row [B, 2H].
    fn initial(&self, w: &Weights<T>) -> Vec<T> {
        let d = w.dims.features;
        affine(&self.mean, &w.w_init_t, &w.b_init, self.lens.len(), d)
    }
}

/// One step's outputs for R rows, each a slice of R rows.
struct StepOut<'a, T> {
    q: &'a mut [T],
    alpha: &'a mut [T],
    awe: &'a mut [T],
    gate: &'a mut [T],
    ctx: &'a mut [T],
    c: &'a mut [T],
    h: &'a mut [T],
}

/// One step for rows attending to the keys of `image[r]`. `gates` [R, 4H] comes in holding the
/// embedding's share of the gates and leaves holding their activations (i, f, g, o);
/// `stacked` [R, 4H + A + D] is scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn step<T: Real>(
    w: &Weights<T>,
    keys: &Keys<T>,
    image: &[usize],
    h_prev: &[T],
    c_prev: &[T],
    gates: &mut [T],
    stacked: &mut [T],
    out: StepOut<T>,
) {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        embed: e,
        ..
    } = w.dims;
    let (rows, width, len) = (image.len(), w.stacked(), keys.len);
    for row in stacked.chunks_exact_mut(width).take(rows) {
        row.copy_from_slice(&w.b_st);
    }
    gemm_ab(
        rows,
        width,
        h,
        h_prev,
        h,
        &w.w_st_t,
        width,
        stacked,
        width,
        T::ONE,
        usize::MAX,
    );
    // The rows' attention, in blocks of rows on the worker threads.
    let block = rows.div_ceil(cores()).max(1);
    let StepOut {
        q,
        alpha,
        awe,
        gate,
        ctx,
        c: c_out,
        h: h_out,
    } = out;
    q[..rows * a]
        .par_chunks_mut(block * a)
        .zip(alpha[..rows * len].par_chunks_mut(block * len))
        .zip(awe[..rows * d].par_chunks_mut(block * d))
        .zip(gate[..rows * d].par_chunks_mut(block * d))
        .zip(ctx[..rows * d].par_chunks_mut(block * d))
        .zip(gates[..rows * 4 * h].par_chunks_mut(block * 4 * h))
        .zip(stacked[..rows * width].par_chunks(block * width))
        .zip(image.par_chunks(block))
        .for_each(
            |(((((((q, alpha), awe), gate), ctx), gates), stacked), image)| {
                attend_rows(
                    w,
                    keys,
                    image,
                    stacked,
                    gates,
                    Attended {
                        q,
                        alpha,
                        awe,
                        gate,
                        ctx,
                    },
                )
            },
        );
    gemm_ab(
        rows,
        4 * h,
        d,
        ctx,
        d,
        &w.w_ih_t[e * 4 * h..],
        4 * h,
        gates,
        4 * h,
        T::ONE,
        usize::MAX,
    );
    for r in 0..rows {
        let g = &mut gates[r * 4 * h..(r + 1) * 4 * h];
        let (c0, c1, h1) = (
            &c_prev[r * h..(r + 1) * h],
            &mut c_out[r * h..(r + 1) * h],
            &mut h_out[r * h..(r + 1) * h],
        );
        for j in 0..h {
            let i = g[j].sigmoid();
            let f = g[h + j].sigmoid();
            let gg = g[2 * h + j].tanh();
            let o = g[3 * h + j].sigmoid();
            let c = f * c0[j] + i * gg;
            c1[j] = c;
            h1[j] = o * c.tanh();
            (g[j], g[h + j], g[2 * h + j], g[3 * h + j]) = (i, f, gg, o);
        }
    }
}

/// The attention part of a step's rows: what `step` computes between its two products.
struct Attended<'a, T> {
    q: &'a mut [T],
    alpha: &'a mut [T],
    awe: &'a mut [T],
    gate: &'a mut [T],
    ctx: &'a mut [T],
}

widest! {
    /// For rows attending to the keys of `image[r]`: the query, the weights, the weighted keys,
    /// the gate and the context from `stacked` [R, 4H + A + D], and the stacked product's share
    /// of the gates added into `gates` [R, 4H].
    fn attend_rows<T: Real>(
        w: &Weights<T>,
        keys: &Keys<T>,
        image: &[usize],
        stacked: &[T],
        gates: &mut [T],
        out: Attended<T>,
    ) -> () = attend_rows_body;
}

#[inline(always)]
fn attend_rows_body<T: Real>(
    w: &Weights<T>,
    keys: &Keys<T>,
    image: &[usize],
    stacked: &[T],
    gates: &mut [T],
    out: Attended<T>,
) {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        ..
    } = w.dims;
    let (width, len) = (w.stacked(), keys.len);
    for (r, &b) in image.iter().enumerate() {
        let g = &stacked[r * width..(r + 1) * width];
        axpy(&mut gates[r * 4 * h..(r + 1) * 4 * h], T::ONE, &g[..4 * h]);
        let q = &mut out.q[r * a..(r + 1) * a];
        q.copy_from_slice(&g[4 * h..4 * h + a]);
        let alpha = &mut out.alpha[r * len..(r + 1) * len];
        attend(w, keys, b, q, alpha);
        let awe = &mut out.awe[r * d..(r + 1) * d];
        awe.fill(T::default());
        for (l, &al) in alpha.iter().enumerate().take(keys.lens[b]) {
            axpy(awe, al, &keys.f[(b * len + l) * d..][..d]);
        }
        let gate = &mut out.gate[r * d..(r + 1) * d];
        let ctx = &mut out.ctx[r * d..(r + 1) * d];
        for j in 0..d {
            gate[j] = g[4 * h + a + j].sigmoid();
            ctx[j] = gate[j] * awe[j];
        }
    }
}

/// The scores of row b's keys for projected query q [A], softmaxed over its valid keys into
/// `alpha` [L] (zero past them).
#[inline(always)]
fn attend<T: Real>(w: &Weights<T>, keys: &Keys<T>, b: usize, q: &[T], alpha: &mut [T]) {
    let (a, len, n) = (w.dims.attention, keys.len, keys.lens[b]);
    for (l, e) in alpha.iter_mut().enumerate().take(n) {
        let p = &keys.p[(b * len + l) * a..][..a];
        *e = match w.act {
            Activation::Relu => score(p, q, &w.w_fa, |x| apply(Activation::Relu, x)),
            _ => score(p, q, &w.w_fa, T::tanh),
        } + w.b_fa;
    }
    let max = largest(&alpha[..n]);
    let mut sum = T::default();
    for s in alpha[..n].iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = T::ONE / sum;
    alpha[..n].iter_mut().for_each(|s| *s *= inv);
    alpha[n..].fill(T::default());
}

/// Σ_k w_k · act(p_k + q_k) in eight partial sums (so that it vectorises), `act` inlined.
#[inline(always)]
fn score<T: Real>(p: &[T], q: &[T], w: &[T], act: impl Fn(T) -> T) -> T {
    let mut acc = [T::default(); 8];
    let head = p.len() / 8 * 8;
    for ((p, q), w) in p[..head]
        .chunks_exact(8)
        .zip(q[..head].chunks_exact(8))
        .zip(w[..head].chunks_exact(8))
    {
        for k in 0..8 {
            acc[k] += w[k] * act(p[k] + q[k]);
        }
    }
    for k in head..p.len() {
        acc[k - head] += w[k] * act(p[k] + q[k]);
    }
    acc.iter().fold(T::default(), |s, &x| s + x)
}

/// The largest value (NaN ignored unless it comes first); zero for none. In eight lanes, so
/// that it vectorises.
#[inline(always)]
fn largest<T: Real>(values: &[T]) -> T {
    let Some(&first) = values.first() else {
        return T::default();
    };
    let mut lanes = [first; 8];
    let head = values.len() / 8 * 8;
    for x in values[..head].chunks_exact(8) {
        for k in 0..8 {
            if x[k] > lanes[k] {
                lanes[k] = x[k];
            }
        }
    }
    values[head..]
        .iter()
        .chain(&lanes)
        .fold(first, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn apply<T: Real>(act: Activation, x: T) -> T {
    match act {
        // `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
        Activation::Relu => {
            if x < T::default() {
                T::default()
            } else {
                x
            }
        }
        _ => x.tanh(),
    }
}

/// d act / dx from the input x and the output u.
#[inline(always)]
fn slope<T: Real>(act: Activation, x: T, u: T) -> T {
    match act {
        Activation::Relu => {
            if x > T::default() {
                T::ONE
            } else {
                T::default()
            }
        }
        _ => T::ONE - u * u,
    }
}

/// A teacher-forced run: its outputs and, for the backward, its activations (time-major).
pub(crate) struct Run<T> {
    pub batch: usize,
    pub steps: usize,
    pub keys: usize,
    vocab: usize,
    features: Vec<T>,
    lens: Vec<usize>,
    /// Steps per row: lengths − 1.
    row_steps: Vec<usize>,
    tokens: Vec<usize>,
    /// logits [S, B, V], alphas [S, B, L]
    logits: Vec<T>,
    alpha: Vec<T>,
    /// h and c entering step t at [t], leaving the last at [S]: [S + 1, B, H]
    h: Vec<T>,
    c: Vec<T>,
    /// gate activations [S, B, 4H]; q [S, B, A]; awe, gate [S, B, D]
    acts: Vec<T>,
    q: Vec<T>,
    awe: Vec<T>,
    gate: Vec<T>,
    /// each step's LSTM input [embedding; ctx] [S, B, E + D]
    x: Vec<T>,
    /// the keys' projection [B, L, A] and mean [B, D]
    p: Vec<T>,
    mean: Vec<T>,
    /// With dropout: the dropped states fc read [S, B, H], and the mask's rate and seed.
    dropped: Option<(Vec<T>, Dropout)>,
}

impl<T: Real> Run<T> {
    fn active(&self, t: usize, b: usize) -> bool {
        t < self.row_steps[b]
    }

    fn batch_major(&self, values: &[T], width: usize) -> Result<Vec<f32>> {
        let (b, s) = (self.batch, self.steps);
        let mut out = size::zeros("the output", b * s * width)?;
        for t in 0..s {
            for r in 0..b {
                let src = &values[(t * b + r) * width..][..width];
                out[(r * s + t) * width..][..width]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, &v)| *o = v.to_f32());
            }
        }
        Ok(out)
    }

    /// logits [B, S, V]
    pub fn logits_batch_major(&self) -> Result<Vec<f32>> {
        self.batch_major(&self.logits, self.vocab)
    }

    /// alphas [B, S, L]
    pub fn alphas_batch_major(&self) -> Result<Vec<f32>> {
        self.batch_major(&self.alpha, self.keys)
    }
}

widest! {
    /// The teacher-forced forward over `captions` [B, T] (checked by the caller) for `steps`
    /// steps.
    pub(crate) fn forward<T: Real>(
        w: &Weights<T>,
        features: &[f32],
        lens: &[usize],
        captions: &[i32],
        lengths: &[usize],
        steps: usize,
        dropout: Option<Dropout>,
    ) -> Result<Run<T>> = forward_body;
}

#[inline(always)]
fn forward_body<T: Real>(
    w: &Weights<T>,
    features: &[f32],
    lens: &[usize],
    captions: &[i32],
    lengths: &[usize],
    steps: usize,
    dropout: Option<Dropout>,
) -> Result<Run<T>> {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        embed: e,
        vocab: v,
    } = w.dims;
    let batch = lens.len();
    let t_len = captions.len() / batch.max(1);
    let features: Vec<T> = features.iter().map(|&x| T::from_f32(x)).collect();
    let keys = Keys::new(w, &features, lens);
    let len = keys.len;
    let row_steps: Vec<usize> = lengths.iter().map(|&n| n - 1).collect();
    let rows = steps * batch;
    let alloc = |n: usize| size::zeros::<T>("the decoder's activations", n);
    // Ids of the inputs, time-major; steps past a row's end read nothing.
    let mut tokens = vec![0; rows];
    let mut x = alloc(rows * (e + d))?;
    for t in 0..steps {
        for b in 0..batch {
            if t < row_steps[b] {
                let id = captions[b * t_len + t] as usize;
                tokens[t * batch + b] = id;
                x[(t * batch + b) * (e + d)..][..e].copy_from_slice(&w.emb[id * e..][..e]);
            }
        }
    }
    // The embedding's share of every step's gates: one product.
    let mut gates_in = alloc(rows * 4 * h)?;
    gemm_ab(
        rows,
        4 * h,
        e,
        &x,
        e + d,
        &w.w_ih_t,
        4 * h,
        &mut gates_in,
        4 * h,
        T::default(),
        usize::MAX,
    );
    let init = keys.initial(w);
    let mut hs = alloc((steps + 1) * batch * h)?;
    let mut cs = alloc((steps + 1) * batch * h)?;
    for (b, hc) in init.chunks_exact(2 * h).enumerate() {
        hs[b * h..(b + 1) * h].copy_from_slice(&hc[..h]);
        cs[b * h..(b + 1) * h].copy_from_slice(&hc[h..]);
    }
    let mut acts = gates_in;
    let mut q = alloc(rows * a)?;
    let mut alpha = alloc(rows * len)?;
    let mut awe = alloc(rows * d)?;
    let mut gate = alloc(rows * d)?;
    let mut ctx = alloc(batch * d)?;
    let mut stacked = alloc(batch * w.stacked())?;
    let image: Vec<usize> = (0..batch).collect();
    for t in 0..steps {
        let (h_done, h_next) = hs.split_at_mut((t + 1) * batch * h);
        let (c_done, c_next) = cs.split_at_mut((t + 1) * batch * h);
        let span = |width: usize| t * batch * width..(t + 1) * batch * width;
        step(
            w,
            &keys,
            &image,
            &h_done[t * batch * h..],
            &c_done[t * batch * h..],
            &mut acts[span(4 * h)],
            &mut stacked,
            StepOut {
                q: &mut q[span(a)],
                alpha: &mut alpha[span(len)],
                awe: &mut awe[span(d)],
                gate: &mut gate[span(d)],
                ctx: &mut ctx,
                c: &mut c_next[..batch * h],
                h: &mut h_next[..batch * h],
            },
        );
        for b in 0..batch {
            let xr = &mut x[(t * batch + b) * (e + d)..][..e + d];
            xr[e..].copy_from_slice(&ctx[b * d..(b + 1) * d]);
            if t >= row_steps[b] {
                alpha[(t * batch + b) * len..][..len].fill(T::default());
            }
        }
    }
    // fc(dropout(h)): the mask of each element's flat index in the time-major [S·B, H] block.
    let dropped = dropout.map(|drop| {
        let mut hd = hs[batch * h..].to_vec();
        for_each_factor(hd.len(), drop.rate, drop.seed, |i, k| {
            hd[i] *= T::from_f32(k)
        });
        (hd, drop)
    });
    let h_fc = dropped.as_ref().map_or(&hs[batch * h..], |(hd, _)| &hd[..]);
    let mut logits = affine(h_fc, &w.w_fc_t, &w.b_fc, rows, h);
    for t in 0..steps {
        for b in 0..batch {
            if t >= row_steps[b] {
                logits[(t * batch + b) * v..][..v].fill(T::default());
            }
        }
    }
    let (p, mean) = (keys.p, keys.mean);
    Ok(Run {
        batch,
        steps,
        keys: len,
        vocab: v,
        features,
        lens: lens.to_vec(),
        row_steps,
        tokens,
        logits,
        alpha,
        h: hs,
        c: cs,
        acts,
        q,
        awe,
        gate,
        x,
        p,
        mean,
        dropped,
    })
}

/// The gradients of the features [B, L, D] and of every parameter in `NAMES` order.
pub(crate) struct Grads<T> {
    pub features: Vec<T>,
    pub params: Vec<Vec<T>>,
}

widest! {
    /// Backpropagation through the teacher-forced run for grad_logits [B, S, V] and
    /// grad_alphas [B, S, L] (both batch-major, as the outputs).
    pub(crate) fn backward<T: Real>(
        w: &Weights<T>,
        run: &Run<T>,
        grad_logits: &[f32],
        grad_alphas: Option<&[f32]>,
    ) -> Result<Grads<T>> = backward_body;
}

#[inline(always)]
fn backward_body<T: Real>(
    w: &Weights<T>,
    run: &Run<T>,
    grad_logits: &[f32],
    grad_alphas: Option<&[f32]>,
) -> Result<Grads<T>> {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        embed: e,
        vocab: v,
    } = w.dims;
    let (batch, steps, len) = (run.batch, run.steps, run.keys);
    let rows = steps * batch;
    let width = w.stacked();
    let alloc = |n: usize| size::zeros::<T>("the decoder's gradients", n);
    // Upstream gradients, time-major, zero on the steps a row does not take.
    let time_major = |values: &[f32], n: usize| -> Result<Vec<T>> {
        let mut out = alloc(rows * n)?;
        for t in 0..steps {
            for b in (0..batch).filter(|&b| run.active(t, b)) {
                out[(t * batch + b) * n..][..n]
                    .iter_mut()
                    .zip(&values[(b * steps + t) * n..][..n])
                    .for_each(|(o, &g)| *o = T::from_f32(g));
            }
        }
        Ok(out)
    };
    let dlogits = time_major(grad_logits, v)?;
    let dalpha = grad_alphas.map(|g| time_major(g, len)).transpose()?;

    // fc
    let mut dh_out = alloc(rows * h)?;
    gemm_ab(
        rows,
        h,
        v,
        &dlogits,
        v,
        &w.w_fc,
        h,
        &mut dh_out,
        h,
        T::default(),
        usize::MAX,
    );
    let h_fc = match &run.dropped {
        Some((hd, drop)) => {
            for_each_factor(dh_out.len(), drop.rate, drop.seed, |i, k| {
                dh_out[i] *= T::from_f32(k)
            });
            &hd[..]
        }
        None => &run.h[batch * h..],
    };
    let mut dw_fc = alloc(v * h)?;
    gemm_atb(v, h, rows, &dlogits, h_fc, &mut dw_fc);
    let mut db_fc = alloc(v)?;
    add_column_sums(&mut db_fc, &dlogits, v);
    drop(dlogits);

    // Through time: per step the gates', the query's and the gate's pre-activation gradients
    // [S, B, 4H + A + D], then the weight gradients as products over every step.
    let mut dst = alloc(rows * width)?;
    let mut dp = alloc(batch * len * a)?;
    let mut df = alloc(batch * len * d)?;
    let mut partial: Vec<Partial<T>> = (0..batch.div_ceil(ROWS))
        .map(|_| Partial {
            dw_fa: vec![T::default(); a],
            db_fa: 0.0,
            dalpha: vec![T::default(); len],
        })
        .collect();
    let mut dh = alloc(batch * h)?;
    let mut dc = alloc(batch * h)?;
    let mut dctx = alloc(batch * d)?;
    for t in (0..steps).rev() {
        for b in (0..batch).filter(|&b| run.active(t, b)) {
            let r = t * batch + b;
            axpy(&mut dh[b * h..(b + 1) * h], T::ONE, &dh_out[r * h..][..h]);
            let acts = &run.acts[r * 4 * h..][..4 * h];
            let c_prev = &run.c[r * h..][..h];
            let c = &run.c[(r + batch) * h..][..h];
            let dg = &mut dst[r * width..][..4 * h];
            let (dh_b, dc_b) = (&dh[b * h..(b + 1) * h], &mut dc[b * h..(b + 1) * h]);
            for j in 0..h {
                let (i, f, g, o) = (acts[j], acts[h + j], acts[2 * h + j], acts[3 * h + j]);
                let tc = c[j].tanh();
                let d_o = dh_b[j] * tc;
                let dct = dc_b[j] + dh_b[j] * o * (T::ONE - tc * tc);
                dg[j] = dct * g * i * (T::ONE - i);
                dg[h + j] = dct * c_prev[j] * f * (T::ONE - f);
                dg[2 * h + j] = dct * i * (T::ONE - g * g);
                dg[3 * h + j] = d_o * o * (T::ONE - o);
                dc_b[j] = dct * f;
            }
        }
        let block = &mut dst[t * batch * width..(t + 1) * batch * width];
        gemm_ab(
            batch,
            d,
            4 * h,
            block,
            width,
            &w.w_ih[e..],
            e + d,
            &mut dctx,
            d,
            T::default(),
            usize::MAX,
        );
        // The rows' attention, in blocks of ROWS rows on the worker threads, each block
        // summing its own share of full_att's gradients.
        block
            .par_chunks_mut(ROWS * width)
            .zip(dctx.par_chunks_mut(ROWS * d))
            .zip(df.par_chunks_mut(ROWS * len * d))
            .zip(dp.par_chunks_mut(ROWS * len * a))
            .zip(partial.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((((ds, dctx), df), dp), partial))| {
                let rows = Rows {
                    t,
                    first: i * ROWS,
                    ds,
                    dctx,
                    df,
                    dp,
                };
                attention_backward(w, run, dalpha.as_deref(), rows, partial)
            });
        gemm_ab(
            batch,
            h,
            width,
            block,
            width,
            &w.w_st,
            h,
            &mut dh,
            h,
            T::default(),
            usize::MAX,
        );
    }

    let mut dw_fa = vec![T::default(); a];
    let mut db_fa = 0f64;
    for p in &partial {
        axpy(&mut dw_fa, T::ONE, &p.dw_fa);
        db_fa += p.db_fa;
    }

    // Weight gradients over every step.
    let mut dw_st = alloc(width * h)?;
    gemm_atb(width, h, rows, &dst, &run.h[..rows * h], &mut dw_st);
    let mut db_st = alloc(width)?;
    add_column_sums(&mut db_st, &dst, width);
    let mut dw_ih = alloc(4 * h * (e + d))?;
    gemm_atb_strided(4 * h, e + d, rows, &dst, width, &run.x, e + d, &mut dw_ih);
    let mut dx_emb = alloc(rows * e)?;
    gemm_ab(
        rows,
        e,
        4 * h,
        &dst,
        width,
        &w.w_ih,
        e + d,
        &mut dx_emb,
        e,
        T::default(),
        usize::MAX,
    );
    let mut demb = alloc(v * e)?;
    for (r, &id) in run.tokens.iter().enumerate() {
        if run.active(r / batch, r % batch) {
            axpy(&mut demb[id * e..][..e], T::ONE, &dx_emb[r * e..][..e]);
        }
    }

    // The initial state.
    let mut dhc0 = alloc(batch * 2 * h)?;
    for b in 0..batch {
        dhc0[b * 2 * h..][..h].copy_from_slice(&dh[b * h..(b + 1) * h]);
        dhc0[b * 2 * h + h..][..h].copy_from_slice(&dc[b * h..(b + 1) * h]);
    }
    let mut dw_init = alloc(2 * h * d)?;
    gemm_atb(2 * h, d, batch, &dhc0, &run.mean, &mut dw_init);
    let mut db_init = alloc(2 * h)?;
    add_column_sums(&mut db_init, &dhc0, 2 * h);
    let mut dmean = alloc(batch * d)?;
    gemm_ab(
        batch,
        d,
        2 * h,
        &dhc0,
        2 * h,
        &w.w_init,
        d,
        &mut dmean,
        d,
        T::default(),
        usize::MAX,
    );
    for b in 0..batch {
        let inv = T::ONE / T::from_f64(run.lens[b] as f64);
        for l in 0..run.lens[b] {
            axpy(
                &mut df[(b * len + l) * d..][..d],
                inv,
                &dmean[b * d..(b + 1) * d],
            );
        }
    }

    // encoder_att, and through it into the keys.
    let mut dw_ea = alloc(a * d)?;
    gemm_atb(a, d, batch * len, &dp, &run.features, &mut dw_ea);
    let mut db_ea = alloc(a)?;
    add_column_sums(&mut db_ea, &dp, a);
    gemm_ab(
        batch * len,
        d,
        a,
        &dp,
        a,
        &w.w_ea,
        d,
        &mut df,
        d,
        T::ONE,
        usize::MAX,
    );

    let db_lstm = db_st[..4 * h].to_vec();
    let split = |m: &[T], from: usize, to: usize| m[from * h..to * h].to_vec();
    Ok(Grads {
        features: df,
        params: vec![
            dw_ea,
            db_ea,
            split(&dw_st, 4 * h, 4 * h + a),
            db_st[4 * h..4 * h + a].to_vec(),
            dw_fa,
            vec![T::from_f64(db_fa)],
            demb,
            dw_ih,
            split(&dw_st, 0, 4 * h),
            db_lstm.clone(),
            db_lstm,
            dw_init[..h * d].to_vec(),
            db_init[..h].to_vec(),
            dw_init[h * d..].to_vec(),
            db_init[h..].to_vec(),
            split(&dw_st, 4 * h + a, width),
            db_st[4 * h + a..].to_vec(),
            dw_fc,
            db_fc,
        ],
    })
}

/// Rows per block of the attention's backward: fixed, so that the sums of full_att's
/// gradients do not depend on the number of threads.
const ROWS: usize = 8;

/// A block of rows' share of full_att's gradients over every step, and its scratch.
struct Partial<T> {
    dw_fa: Vec<T>,
    db_fa: f64,
    dalpha: Vec<T>,
}

/// One key's score e = w_fa · act(p + q) + b, and where its gradient goes.
struct ScoreRows<'a, T> {
    p: &'a [T],
    q: &'a [T],
    w_fa: &'a [T],
    dp: &'a mut [T],
    dq: &'a mut [T],
    dw_fa: &'a mut [T],
}

/// The backward of one key's score for its gradient `de`, `act` a constant where it is
/// inlined (so that the loop is one vectorised body per activation).
#[inline(always)]
fn score_backward<T: Real>(rows: ScoreRows<T>, de: T, act: Activation) {
    let ScoreRows {
        p,
        q,
        w_fa,
        dp,
        dq,
        dw_fa,
    } = rows;
    let n = p.len();
    let (q, w_fa, dp, dq, dw_fa) = (
        &q[..n],
        &w_fa[..n],
        &mut dp[..n],
        &mut dq[..n],
        &mut dw_fa[..n],
    );
    for k in 0..n {
        let x = p[k] + q[k];
        let u = apply(act, x);
        let dz = de * w_fa[k] * slope(act, x, u);
        dp[k] += dz;
        dq[k] += dz;
        dw_fa[k] += de * u;
    }
}

/// The block of rows from `first` at step `t`: their [4H + A + D] pre-activation gradients
/// `ds` (dq and dgate written here), dctx (becoming d awe), and their images' df and dp.
struct Rows<'a, T> {
    t: usize,
    first: usize,
    ds: &'a mut [T],
    dctx: &'a mut [T],
    df: &'a mut [T],
    dp: &'a mut [T],
}

widest! {
    /// The backward of `attend_rows` for a block of rows.
    fn attention_backward<T: Real>(
        w: &Weights<T>,
        run: &Run<T>,
        dalpha: Option<&[T]>,
        rows: Rows<T>,
        partial: &mut Partial<T>,
    ) -> () = attention_backward_body;
}

#[inline(always)]
fn attention_backward_body<T: Real>(
    w: &Weights<T>,
    run: &Run<T>,
    dalpha: Option<&[T]>,
    rows: Rows<T>,
    partial: &mut Partial<T>,
) {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        ..
    } = w.dims;
    let (batch, len, width) = (run.batch, run.keys, w.stacked());
    let Rows {
        t,
        first,
        ds,
        dctx,
        df,
        dp,
    } = rows;
    let Partial {
        dw_fa,
        db_fa,
        dalpha: dalpha_row,
    } = partial;
    for (i, ds) in ds.chunks_exact_mut(width).enumerate() {
        let b = first + i;
        if !run.active(t, b) {
            continue;
        }
        let r = t * batch + b;
        let n = run.lens[b];
        let (gate, awe) = (&run.gate[r * d..][..d], &run.awe[r * d..][..d]);
        let dctx_b = &mut dctx[i * d..(i + 1) * d];
        let (dq, dgate) = ds[4 * h..].split_at_mut(a);
        for j in 0..d {
            dgate[j] = dctx_b[j] * awe[j] * gate[j] * (T::ONE - gate[j]);
            // dctx becomes d awe.
            dctx_b[j] *= gate[j];
        }
        let alpha = &run.alpha[r * len..][..len];
        let mut weighted = T::default();
        for l in 0..n {
            let mut g = dot(dctx_b, &run.features[(b * len + l) * d..][..d]);
            if let Some(da) = dalpha {
                g += da[r * len + l];
            }
            dalpha_row[l] = g;
            weighted += alpha[l] * g;
        }
        let q = &run.q[r * a..][..a];
        dq.fill(T::default());
        for l in 0..n {
            let de = alpha[l] * (dalpha_row[l] - weighted);
            axpy(&mut df[(i * len + l) * d..][..d], alpha[l], dctx_b);
            *db_fa += de.to_f64();
            let p = &run.p[(b * len + l) * a..][..a];
            let dp_l = &mut dp[(i * len + l) * a..][..a];
            let rows = ScoreRows {
                p,
                q,
                w_fa: &w.w_fa,
                dp: dp_l,
                dq,
                dw_fa,
            };
            match w.act {
                Activation::Relu => score_backward(rows, de, Activation::Relu),
                _ => score_backward(rows, de, Activation::Tanh),
            }
        }
    }
}

/// What `decode` finds: tokens [N, max_len] (−1 after the caption), scores [N], alphas
/// [N, max_len, L].
pub(crate) struct Found {
    pub tokens: Vec<i64>,
    pub scores: Vec<f32>,
    pub alphas: Vec<f32>,
}

widest! {
    /// Greedy or beam search for every row of `features` [N, L, D].
    pub(crate) fn decode<T: Real>(
        w: &Weights<T>,
        features: &[f32],
        lens: &[usize],
        search: Search,
    ) -> Result<Found> = decode_body;
}

#[inline(always)]
fn decode_body<T: Real>(
    w: &Weights<T>,
    features: &[f32],
    lens: &[usize],
    search: Search,
) -> Result<Found> {
    let Dims {
        features: d,
        attention: a,
        hidden: h,
        embed: e,
        vocab: v,
    } = w.dims;
    let batch = lens.len();
    let features: Vec<T> = features.iter().map(|&x| T::from_f32(x)).collect();
    let keys = Keys::new(w, &features, lens);
    let len = keys.len;
    let most = batch * search.beam;
    let alloc = |n: usize| size::zeros::<T>("the decoder's state", n);
    let init = keys.initial(w);
    let mut hs = alloc(most * h)?;
    let mut cs = alloc(most * h)?;
    for (b, hc) in init.chunks_exact(2 * h).enumerate() {
        hs[b * h..(b + 1) * h].copy_from_slice(&hc[..h]);
        cs[b * h..(b + 1) * h].copy_from_slice(&hc[h..]);
    }
    let (mut h_new, mut c_new) = (alloc(most * h)?, alloc(most * h)?);
    let mut gates = alloc(most * 4 * h)?;
    let mut stacked = alloc(most * w.stacked())?;
    let (mut q, mut awe, mut gate, mut ctx) = (
        alloc(most * a)?,
        alloc(most * d)?,
        alloc(most * d)?,
        alloc(most * d)?,
    );
    let mut alpha = alloc(most * len)?;
    let mut x = alloc(most * e)?;
    let mut logp = alloc(most * v)?;
    let mut beams = Beams::new(batch, search, len, v);
    let mut image = Vec::with_capacity(most);
    loop {
        let live = beams.live();
        let rows = live.len();
        if rows == 0 {
            break;
        }
        image.clear();
        image.extend(live.iter().map(|hyp| hyp.image));
        for (r, hyp) in live.iter().enumerate() {
            x[r * e..(r + 1) * e].copy_from_slice(&w.emb[hyp.token * e..][..e]);
        }
        gemm_ab(
            rows,
            4 * h,
            e,
            &x,
            e,
            &w.w_ih_t,
            4 * h,
            &mut gates,
            4 * h,
            T::default(),
            usize::MAX,
        );
        step(
            w,
            &keys,
            &image,
            &hs[..rows * h],
            &cs[..rows * h],
            &mut gates[..rows * 4 * h],
            &mut stacked,
            StepOut {
                q: &mut q,
                alpha: &mut alpha,
                awe: &mut awe,
                gate: &mut gate,
                ctx: &mut ctx,
                c: &mut c_new,
                h: &mut h_new,
            },
        );
        let logits = &mut logp[..rows * v];
        for row in logits.chunks_exact_mut(v) {
            row.copy_from_slice(&w.b_fc);
        }
        gemm_ab(
            rows,
            v,
            h,
            &h_new,
            h,
            &w.w_fc_t,
            v,
            logits,
            v,
            T::ONE,
            usize::MAX,
        );
        logits.chunks_exact_mut(v).for_each(log_softmax);
        let parents = beams.advance(logits, &alpha[..rows * len]);
        for (r, &p) in parents.iter().enumerate() {
            hs[r * h..(r + 1) * h].copy_from_slice(&h_new[p * h..(p + 1) * h]);
            cs[r * h..(r + 1) * h].copy_from_slice(&c_new[p * h..(p + 1) * h]);
        }
    }
    let Finished {
        tokens,
        scores,
        alphas,
    } = beams.finish();
    Ok(Found {
        tokens,
        scores,
        alphas,
    })
}

/// A row of logits into log-probabilities, in place.
#[inline(always)]
fn log_softmax<T: Real>(row: &mut [T]) {
    let max = largest(row);
    // Eight partial sums of the exponentials: they vectorise, and each sums V/8 terms.
    let mut acc = [T::default(); 8];
    let head = row.len() / 8 * 8;
    for x in row[..head].chunks_exact(8) {
        for k in 0..8 {
            acc[k] += (x[k] - max).exp();
        }
    }
    for (k, &x) in row[head..].iter().enumerate() {
        acc[k] += (x - max).exp();
    }
    let sum: f64 = acc.iter().map(|a| a.to_f64()).sum();
    let shift = max + T::from_f64(sum.ln());
    row.iter_mut().for_each(|x| *x -= shift);
}

#[cfg(test)]
mod tests;
