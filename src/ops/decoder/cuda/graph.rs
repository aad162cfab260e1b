//! The fused teacher-forced loop, and its capture into a CUDA graph once per shape.
//!
//! The loop (per step: the stacked GEMM, `decoder_attend`, the context's GEMM, `decoder_cell`)
//! is issued on a lane from the addresses of a `Loop`. A layer's `Graphs` keeps, per (B, L, S),
//! buffers of its own at fixed addresses and the graph captured over them: each call copies its
//! inputs and the weights the loop reads into them, replays the graph on the device's stream,
//! and copies the loop's results back into the call's own buffers (the copies are small next to
//! the loop, and leave every call's saved activations its own, so forwards may follow each
//! other before their backwards). A shape whose capture fails runs the loop as launches, and
//! says why (`Graphs::status`).

use super::{gemm, int, Buf, Weights, F};
use crate::device::launch::{grid_stride, launch, per_row};
use crate::device::{begin_capture, end_capture, replay, CudaDevice, Lane, Op};
use crate::error::Result;
use cudarc::driver::{CudaGraph, CudaSlice};
use std::sync::Mutex;

/// The weights the loop reads: the stacked [W_hh; decoder_att; f_beta] [W, H], decoder_att's
/// and f_beta's biases, full_att's row [A], W_ih [4H, E + D] and b_ih + b_hh [4H].
#[derive(Clone, Copy)]
pub(crate) struct LoopWeights {
    pub w_st: u64,
    pub b_da: u64,
    pub b_fb: u64,
    pub w_fa: u64,
    pub w_ih: u64,
    pub b_lstm: u64,
}

/// Every address the loop touches, time-major as `Run`: the inputs x [S·B, E + D] (the context
/// is written into its last D columns), xg [S·B, 4H], p [B, L, A], f [B, L, D], the lengths and
/// steps (B ints each), h and c [(S + 1)·B, H] (row block 0 given), the saved activations, and
/// scratch g [B, W] and gc [B, 4H].
pub(crate) struct Loop {
    pub batch: usize,
    pub len: usize,
    pub steps: usize,
    pub x: u64,
    pub xg: u64,
    pub p: u64,
    pub f: u64,
    pub lens: u64,
    pub row_steps: u64,
    pub h: u64,
    pub c: u64,
    pub acts: u64,
    pub q: u64,
    pub alpha: u64,
    pub awe: u64,
    pub gate: u64,
    pub g: u64,
    pub gc: u64,
    pub weights: LoopWeights,
}

/// The address of element `i` of f32 buffer `at`.
fn at(base: u64, i: usize) -> u64 {
    base + (i * F) as u64
}

impl Weights {
    pub(super) fn loop_weights(&self) -> LoopWeights {
        LoopWeights {
            w_st: self.w_st.ptr,
            b_da: self.p[3].ptr,
            b_fb: self.p[16].ptr,
            w_fa: self.p[4].ptr,
            w_ih: self.p[7].ptr,
            b_lstm: self.b_lstm.ptr,
        }
    }

    /// Enqueues the loop's steps on `lane` (its stream and cuBLAS handle).
    pub(super) fn issue_loop(&self, lane: &Lane, l: &Loop) -> Result<()> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            ..
        } = self.dims;
        let batch = l.batch;
        for t in 0..l.steps {
            let r = t * batch;
            let step = Step {
                rows: batch,
                len: l.len,
                t: t as i32,
                h_prev: at(l.h, r * h),
                c_prev: at(l.c, r * h),
                h_new: at(l.h, r * h + batch * h),
                c_new: at(l.c, r * h + batch * h),
                x: at(l.x, r * (e + d)),
                xg: at(l.xg, r * 4 * h),
                q: at(l.q, r * a),
                alpha: at(l.alpha, r * l.len),
                awe: at(l.awe, r * d),
                gate: at(l.gate, r * d),
                acts: at(l.acts, r * 4 * h),
                p: l.p,
                f: l.f,
                lens: l.lens,
                row_steps: l.row_steps,
                image: 0,
                g: l.g,
                gc: l.gc,
            };
            self.fused_step(lane, l.weights, &step)?;
        }
        Ok(())
    }

    /// One fused step on `lane`: the stacked GEMM, `decoder_attend`, the context's GEMM and
    /// `decoder_cell`.
    pub(super) fn fused_step(&self, lane: &Lane, ws: LoopWeights, s: &Step) -> Result<()> {
        let super::Dims {
            features: d,
            attention: a,
            hidden: h,
            embed: e,
            ..
        } = self.dims;
        let (rows, len) = (s.rows, s.len);
        let w = 4 * h + a + d;
        let stream = &lane.stream;
        let (i_r, i_l, i_d, i_a, i_h, i_w) = (
            int("rows", rows)?,
            int("keys", len)?,
            int("key size", d)?,
            int("attention size", a)?,
            int("hidden size", h)?,
            int("stacked width", w)?,
        );
        let ldx = int("input width", e + d)?;
        let (zero, act) = (0f32, self.act);
        gemm(
            lane,
            (rows, w, h),
            (s.h_prev, h, Op::AsIs),
            (ws.w_st, h, Op::Transposed),
            (s.g, w),
            0.0,
        )?;
        let (gp, pp, fp, lp, sp, ip, t) = (s.g, s.p, s.f, s.lens, s.row_steps, s.image, s.t);
        let (qo, ao, wo, go) = (s.q, s.alpha, s.awe, s.gate);
        let co = at(s.x, e);
        let (b_da, b_fb, w_fa) = (ws.b_da, ws.b_fb, ws.w_fa);
        // SAFETY: g holds rows·W f32; the weights their shapes; p, f the images' L·A and L·D
        // (row r's image r, or image[r]); the outputs `rows` rows; ctx lands in x at column E.
        unsafe {
            launch!(stream, &self.kernels.attend, per_row(rows, 1, (a + len) * F);
                gp, b_da, b_fb, pp, fp, w_fa, zero, lp, sp, ip, t,
                i_r, i_l, i_d, i_a, i_h, act, qo, ao, wo, go, co, ldx)
        };
        gemm(
            lane,
            (rows, 4 * h, d),
            (co, e + d, Op::AsIs),
            (at(ws.w_ih, e), e + d, Op::Transposed),
            (s.gc, 4 * h),
            0.0,
        )?;
        let (xgp, gcp, bl) = (s.xg, s.gc, ws.b_lstm);
        let (cp, cn, hn, ap) = (s.c_prev, s.c_new, s.h_new, s.acts);
        // SAFETY: xg, gc and acts (when kept) rows·4H f32, g rows·W, the bias 4H, c and h
        // rows·H each.
        unsafe {
            launch!(stream, &self.kernels.cell, grid_stride(rows * h);
                xgp, gcp, gp, bl, cp, cn, hn, ap, i_r, i_h, i_w)
        };
        Ok(())
    }
}

/// One fused step's addresses for `rows` rows: the state in and out, the step's input rows
/// x [rows, E + D] (the context written at column E) and the embedding's share of the gates
/// xg [rows, 4H], the outputs, the keys p and f with their lengths, and scratch g, gc.
/// `acts` 0 keeps no gate activations; `row_steps` 0 makes every row active (else row r runs
/// while t < row_steps[r]); `image` 0 makes row r attend image r (else image[r]).
pub(super) struct Step {
    pub rows: usize,
    pub len: usize,
    pub t: i32,
    pub h_prev: u64,
    pub c_prev: u64,
    pub h_new: u64,
    pub c_new: u64,
    pub x: u64,
    pub xg: u64,
    pub q: u64,
    pub alpha: u64,
    pub awe: u64,
    pub gate: u64,
    pub acts: u64,
    pub p: u64,
    pub f: u64,
    pub lens: u64,
    pub row_steps: u64,
    pub image: u64,
    pub g: u64,
    pub gc: u64,
}

/// A captured graph. Its executable may be launched from any thread; the cache's mutex
/// serialises every use.
struct Graph(CudaGraph);
// SAFETY: see above; the graph is only touched while its cache is locked.
unsafe impl Send for Graph {}

/// One shape's buffers (each as the `Loop` field of the same name) and graph.
struct Entry {
    key: (usize, usize, usize),
    bufs: Vec<Buf>,
    ints: [CudaSlice<i32>; 2],
    graph: Option<Graph>,
    error: Option<String>,
}

/// The sizes (f32 elements) of the loop's buffers for (B, L, S), in the order `Entry::bufs`
/// holds them: x, xg, p, f, h, c, acts, q, alpha, awe, gate, g, gc, then the weights w_st,
/// b_da, b_fb, w_fa, w_ih, b_lstm.
fn sizes(w: &Weights, (b, l, s): (usize, usize, usize)) -> [usize; 19] {
    let super::Dims {
        features: d,
        attention: a,
        hidden: h,
        embed: e,
        ..
    } = w.dims;
    let st = 4 * h + a + d;
    [
        s * b * (e + d),
        s * b * 4 * h,
        b * l * a,
        b * l * d,
        (s + 1) * b * h,
        (s + 1) * b * h,
        s * b * 4 * h,
        s * b * a,
        s * b * l,
        s * b * d,
        s * b * d,
        b * st,
        b * 4 * h,
        st * h,
        a,
        d,
        a,
        4 * h * (e + d),
        4 * h,
    ]
}

/// The captured loops of one layer, most recently used first.
#[derive(Default)]
pub struct Graphs {
    entries: Mutex<Vec<Entry>>,
}

/// Shapes kept per layer; the least recently used is dropped beyond this.
const MAX_ENTRIES: usize = 4;

impl Graphs {
    /// How many shapes replay a captured graph, and why the others do not.
    pub fn status(&self) -> (usize, Vec<String>) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let captured = entries.iter().filter(|e| e.graph.is_some()).count();
        (
            captured,
            entries.iter().filter_map(|e| e.error.clone()).collect(),
        )
    }

    /// Runs the loop of `l` through this shape's graph (captured on first use), reading and
    /// writing `l`'s buffers through copies into and out of the graph's own.
    pub(super) fn run(&self, w: &Weights, l: &Loop) -> Result<()> {
        let dev: &CudaDevice = &w.dev;
        let key = (l.batch, l.len, l.steps);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let index = match entries.iter().position(|e| e.key == key) {
            Some(i) => {
                let found = entries.remove(i);
                entries.insert(0, found);
                0
            }
            None => {
                let bufs = sizes(w, key)
                    .iter()
                    .map(|&n| Buf::new(dev, n))
                    .collect::<Result<Vec<_>>>()?;
                let ints = [
                    dev.alloc_output::<i32>(l.batch.max(1))?,
                    dev.alloc_output::<i32>(l.batch.max(1))?,
                ];
                entries.insert(
                    0,
                    Entry {
                        key,
                        bufs,
                        ints,
                        graph: None,
                        error: None,
                    },
                );
                entries.truncate(MAX_ENTRIES);
                0
            }
        };
        let entry = &mut entries[index];
        let sizes = sizes(w, key);
        let own = |i: usize| entry.bufs[i].ptr;
        let ints = |i: usize| crate::device::dev_ptr(&entry.ints[i], dev.stream());
        let graph_loop = Loop {
            batch: l.batch,
            len: l.len,
            steps: l.steps,
            x: own(0),
            xg: own(1),
            p: own(2),
            f: own(3),
            lens: ints(0),
            row_steps: ints(1),
            h: own(4),
            c: own(5),
            acts: own(6),
            q: own(7),
            alpha: own(8),
            awe: own(9),
            gate: own(10),
            g: own(11),
            gc: own(12),
            weights: LoopWeights {
                w_st: own(13),
                b_da: own(14),
                b_fb: own(15),
                w_fa: own(16),
                w_ih: own(17),
                b_lstm: own(18),
            },
        };
        // In: the inputs, the initial state, the weights.
        let ws = l.weights;
        let inputs = [
            (l.x, 0),
            (l.xg, 1),
            (l.p, 2),
            (l.f, 3),
            (ws.w_st, 13),
            (ws.b_da, 14),
            (ws.b_fb, 15),
            (ws.w_fa, 16),
            (ws.w_ih, 17),
            (ws.b_lstm, 18),
        ];
        let h0 = l.batch * w.dims.hidden;
        // SAFETY: each pair is a buffer of the call and the graph's buffer of the same size
        // (`sizes`), on `dev`; h and c copy their first B·H (the initial state); the ints B each.
        unsafe {
            for (src, i) in inputs {
                dev.copy_async(own(i), src, sizes[i] * F)?;
            }
            dev.copy_async(own(4), l.h, h0 * F)?;
            dev.copy_async(own(5), l.c, h0 * F)?;
            dev.copy_async(ints(0), l.lens, l.batch * 4)?;
            dev.copy_async(ints(1), l.row_steps, l.batch * 4)?;
        }
        if entry.graph.is_none() && entry.error.is_none() {
            let lanes = dev.capture_lanes();
            match begin_capture(&lanes[0].stream) {
                Err(e) => entry.error = Some(format!("stream capture refused: {e}")),
                Ok(()) => {
                    let issued = w.issue_loop(&lanes[0], &graph_loop);
                    match (issued, end_capture(&lanes[0].stream)) {
                        (Ok(()), Ok(Some(graph))) => entry.graph = Some(Graph(graph)),
                        (Err(e), _) | (_, Err(e)) => {
                            entry.error = Some(format!("capture failed: {e}"))
                        }
                        (_, Ok(None)) => entry.error = Some("capture produced no graph".into()),
                    }
                }
            }
        }
        match &entry.graph {
            // SAFETY: the graph's buffers are this entry's, alive while it is cached (and the
            // cache is locked); the weights' copies were refreshed above.
            Some(graph) => unsafe { replay(&graph.0, dev.stream())? },
            None => w.issue_loop(&dev.lanes()[0], &graph_loop)?,
        }
        // Out: what the loop wrote.
        let outputs = [
            (l.x, 0),
            (l.h, 4),
            (l.c, 5),
            (l.acts, 6),
            (l.q, 7),
            (l.alpha, 8),
            (l.awe, 9),
            (l.gate, 10),
        ];
        // SAFETY: as above, in the other direction.
        unsafe {
            for (dst, i) in outputs {
                dev.copy_async(dst, own(i), sizes[i] * F)?;
            }
        }
        Ok(())
    }
}
