//! CPU reference forward, f32. The same loop as the CUDA path: one GEMM for the input projection
//! of a layer-direction, then per step one GEMM for W_hh·h, the cell's elementwise update, and
//! (LSTM with projection) one GEMM for W_hr·h.
//!
//! Several threads share the work. The hidden units are cut into chunks, each with all its gate
//! rows, so that a chunk's cell update needs only its own gates and only h crosses chunks; at
//! every step the workers take chunks from a counter until none is left, then meet at a
//! barrier (twice with a projection, whose output columns are chunked the same way). Taking
//! chunks rather than owning fixed slices keeps a core that is slowed by other work from
//! holding up the step. h is double-buffered so that one meeting per step suffices, and the
//! weights are packed once per call (`PackedB`), not per step.

mod barrier;
mod row;

use super::{step_time, Call, Cell, Dims, Outputs};
use crate::error::{Error, Result};
use crate::ops::gemm_cpu::cores;
use crate::ops::packed_gemm::PackedB;
use crate::tensor::Tensor;
use barrier::{Met, SpinBarrier};
use row::{step_row_best, Row};
use std::borrow::Cow;
use std::cell::Cell as StdCell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

fn f32_values<'a>(t: &'a Tensor, name: &str) -> Result<&'a [f32]> {
    t.host_slice::<f32>().map_err(|_| Error::DType {
        tensor: name.into(),
        expected: "f32 (the CPU path computes in f32)".into(),
        got: t.dtype().name().into(),
    })
}

/// Multiply-adds per step that make another worker worth its barrier (a few microseconds).
const MACS_PER_WORKER: usize = 1 << 19;
/// Multiply-adds of the input projection that make another thread worth starting.
const MACS_PER_THREAD: usize = 1 << 22;
/// Chunks per worker: enough for the others to take over a slowed core's share.
const CHUNKS_PER_WORKER: usize = 2;
/// The fewest hidden units (or output columns) in a chunk.
const MIN_CHUNK: usize = 8;
/// Rows of the input projection per chunk: a multiple of the GEMM's 12-row tile.
const PROJECTION_ROWS: usize = 48;

thread_local! {
    /// See `forward_on`.
    static PROJECTION: StdCell<Vec<f32>> = const { StdCell::new(Vec::new()) };
}

/// How many threads share the input projection.
fn threads_for(dims: &Dims) -> usize {
    let macs = dims.rows() * dims.gate_width() * dims.input_size.max(dims.dirs * dims.out_size);
    (macs / MACS_PER_THREAD).clamp(1, cores())
}

/// How many of them run the steps: one per core while each has enough work.
fn workers_for(dims: &Dims) -> usize {
    let mut macs = dims.batch * dims.gate_width() * dims.out_size;
    if dims.projected() {
        macs += dims.batch * dims.hidden * dims.out_size;
    }
    (macs / MACS_PER_WORKER).clamp(1, cores())
}

/// 0..n cut into near-equal contiguous chunks: one for a single worker, else
/// `CHUNKS_PER_WORKER` per worker of at least `MIN_CHUNK` each.
fn chunks(n: usize, workers: usize) -> Vec<Range<usize>> {
    let count = match workers {
        1 => 1,
        w => (w * CHUNKS_PER_WORKER).min(n / MIN_CHUNK).max(1),
    };
    (0..count)
        .map(|k| n * k / count..n * (k + 1) / count)
        .collect()
}

/// Hands out the tickets 0..count, each once, to whoever asks first.
fn take(counter: &AtomicUsize, count: usize) -> impl Iterator<Item = usize> + '_ {
    // Relaxed: a ticket only says who does the work; the barriers order the data.
    std::iter::from_fn(move || Some(counter.fetch_add(1, Ordering::Relaxed)).filter(|&k| k < count))
}

/// One layer-direction's weights, packed for the GEMMs with the gate columns reordered so that
/// each chunk's are contiguous: for the chunk of units [j0, j1), columns G·j0..G·j1 hold gate
/// 0's units j0..j1, then gate 1's, and so on.
struct Packed {
    w_ih: PackedB,
    /// Each unit chunk's gate columns of W_hhᵀ.
    w_hh: Vec<PackedB>,
    /// Each column chunk's columns of W_hrᵀ.
    w_hr: Option<Vec<PackedB>>,
    /// Added to the input projection: b_ih, plus b_hh for every gate but the GRU's n.
    b_pre: Vec<f32>,
    /// b_hh, of which the GRU's step reads its n gate's.
    b_hh: Vec<f32>,
}

impl Packed {
    fn new(
        w: &super::DirectionWeights,
        dims: &Dims,
        in_w: usize,
        units: &[Range<usize>],
        columns: &[Range<usize>],
    ) -> Result<Self> {
        let (hidden, gates, gw) = (dims.hidden, dims.gates, dims.gate_width());
        let order: Vec<usize> = units
            .iter()
            .flat_map(|u| (0..gates).flat_map(move |g| u.clone().map(move |j| g * hidden + j)))
            .collect();
        // The GRU's n gate is the third; its recurrent half is multiplied by r, so b_hn stays
        // with it.
        let is_gru_n: Vec<bool> = order
            .iter()
            .map(|&i| dims.gates == 3 && i / hidden == 2)
            .collect();
        let bias = |t: &Option<Tensor>, name: &str| -> Result<Vec<f32>> {
            Ok(match t {
                Some(t) => {
                    let b = f32_values(t, name)?;
                    order.iter().map(|&i| b[i]).collect()
                }
                None => vec![0.0; gw],
            })
        };
        let w_hh = f32_values(&w.w_hh, "weight_hh")?;
        let rows_of = |u: &Range<usize>| &order[gates * u.start..gates * u.end];
        let w_hr = match &w.w_hr {
            Some(t) => {
                let w_hr = f32_values(t, "weight_hr")?;
                let pack = |c: &Range<usize>| {
                    PackedB::from_rows(w_hr, hidden, &c.clone().collect::<Vec<_>>())
                };
                Some(columns.iter().map(pack).collect())
            }
            None => None,
        };
        let b_hh = bias(&w.b_hh, "bias_hh")?;
        let mut b_pre = bias(&w.b_ih, "bias_ih")?;
        for (col, (b, &bh)) in b_pre.iter_mut().zip(&b_hh).enumerate() {
            if !is_gru_n[col] {
                *b += bh;
            }
        }
        Ok(Self {
            w_ih: PackedB::from_rows(f32_values(&w.w_ih, "weight_ih")?, in_w, &order),
            w_hh: units
                .iter()
                .map(|u| PackedB::from_rows(w_hh, dims.out_size, rows_of(u)))
                .collect(),
            w_hr,
            b_pre,
            b_hh,
        })
    }
}

/// A buffer the threads share. Who may touch which part when is the step protocol's: between
/// two barriers every element is written by one thread and read by no other, or only read.
struct SharedBuf {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: access follows the step protocol above; the buffer outlives the threads (scoped).
unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    fn new(buf: &mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// The slice `new` took is still alive and no thread writes it until the next barrier.
    unsafe fn all(&self) -> &[f32] {
        // SAFETY: `ptr` and `len` come from a live slice (the caller's contract: the buffer
        // outlives the scoped threads), and nobody writes it while the result is used.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// The slice `new` took is still alive and only this thread touches `[start, start + len)`
    /// until the next barrier.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: the assert keeps [start, start + len) inside the live slice `new` took; the
        // caller's contract makes this thread its only user until the next barrier.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// What the threads of one layer-direction share.
struct Steps<'a> {
    cell: Cell,
    dims: &'a Dims,
    dir: usize,
    lengths: &'a [usize],
    /// The layer's input, [rows, I or D·O].
    input: &'a [f32],
    /// The input projection, [rows, G·H] in the packed column order.
    xw: SharedBuf,
    weights: &'a Packed,
    units: &'a [Range<usize>],
    /// The chunks of the projected h's columns.
    columns: &'a [Range<usize>],
    /// h_{t-1} and h_t, [B, O] each, swapping roles every step.
    h: [SharedBuf; 2],
    /// [B, H].
    c: SharedBuf,
    /// The LSTM's h before projection, [B, H].
    pre_proj: SharedBuf,
    /// The layer's output, [rows, D·O].
    output: SharedBuf,
    /// Where the LSTM's c_t of every step goes, [rows, H], when it is asked for.
    cells: Option<SharedBuf>,
    /// The input projection's chunk counter, then two per step (gates, projection).
    tickets: Vec<AtomicUsize>,
    /// How many threads run the steps; all of them share the input projection.
    workers: usize,
    /// Where all threads meet once the input projection is done.
    projected: SpinBarrier,
    /// Where the step workers meet.
    barrier: SpinBarrier,
}

impl Steps<'_> {
    /// Thread `w`'s part: input projection chunks, then, if it is a step worker, step chunks.
    fn run(&self, w: usize) {
        let _guards = (self.projected.guard(), self.barrier.guard());
        self.project();
        if self.projected.wait() == Met::All && w < self.workers {
            // SAFETY: every thread has passed `projected`, so nobody writes xw any more; xw
            // outlives the scoped threads.
            self.steps(unsafe { self.xw.all() });
        }
    }

    fn project(&self) {
        let (rows, gw) = (self.dims.rows(), self.dims.gate_width());
        let in_w = self.input.len() / rows;
        for k in take(&self.tickets[0], rows.div_ceil(PROJECTION_ROWS)) {
            let mine = k * PROJECTION_ROWS..((k + 1) * PROJECTION_ROWS).min(rows);
            // SAFETY: the ticket gives these rows of xw to this thread alone; all read them
            // only after the barrier.
            let xw = unsafe { self.xw.part(mine.start * gw, mine.len() * gw) };
            let input = &self.input[mine.start * in_w..];
            self.weights.w_ih.matmul(mine.len(), input, in_w, xw, gw);
            for row in xw.chunks_exact_mut(gw) {
                for (x, &b) in row.iter_mut().zip(&self.weights.b_pre) {
                    *x += b;
                }
            }
        }
    }

    fn steps(&self, xw: &[f32]) {
        let Dims {
            seq_len,
            batch,
            hidden,
            out_size: out,
            gates,
            dirs,
            ..
        } = *self.dims;
        let (st, sb) = self.dims.strides();
        let (gw, width, reverse) = (self.dims.gate_width(), dirs * out, self.dir == 1);
        let p = &self.weights;
        let widest = |chunks: &[Range<usize>]| chunks.iter().map(|c| c.len()).max().unwrap_or(0);
        let most_units = widest(self.units);
        let mut rec = vec![0f32; batch * gates * most_units];
        let mut projected = vec![
            0f32;
            if p.w_hr.is_some() {
                batch * widest(self.columns)
            } else {
                0
            }
        ];
        let output_at =
            |t: usize, b: usize, c: usize| (t * st + b * sb) * width + self.dir * out + c;
        for s in 0..seq_len {
            let (cur, next) = (&self.h[s % 2], &self.h[1 - s % 2]);
            // The SharedBuf accesses below: h_{t-1} is only read this step; a chunk's ticket
            // gives its units of h_t, c and pre_proj, and its output columns, to this thread
            // alone, and in the projection phase its columns of h_t; pre_proj is read by all
            // only after a barrier. Every buffer outlives the scoped threads.
            // SAFETY: nobody writes h_{t-1} this step (see above).
            let h_prev = unsafe { cur.all() };
            for k in take(&self.tickets[1 + 2 * s], self.units.len()) {
                let units = self.units[k].clone();
                let (hs, col0) = (units.len(), gates * units.start);
                let lg = gates * hs;
                let rec = &mut rec[..batch * lg];
                let b_hn = match self.cell {
                    Cell::Gru => &p.b_hh[col0 + 2 * hs..col0 + lg],
                    _ => &[],
                };
                p.w_hh[k].matmul(batch, h_prev, out, rec, lg);
                for b in 0..batch {
                    let time = step_time(s, self.lengths[b], reverse);
                    let target = if p.w_hr.is_some() {
                        // SAFETY: chunk k's units of row b of pre_proj are this thread's
                        // until the barrier (see above).
                        unsafe { self.pre_proj.part(b * hidden + units.start, hs) }
                    } else {
                        // Rows that have ended keep their state.
                        // SAFETY: chunk k's units of row b of h_t are this thread's this step.
                        let h = unsafe { next.part(b * out + units.start, hs) };
                        h.copy_from_slice(&h_prev[b * out + units.start..][..hs]);
                        h
                    };
                    let Some(t) = time else { continue };
                    let row = t * st + b * sb;
                    // SAFETY: chunk k's units of row b of c are this thread's.
                    let c = unsafe { self.c.part(b * hidden + units.start, hs) };
                    step_row_best(
                        self.cell,
                        Row {
                            pre: &xw[row * gw + col0..][..lg],
                            rec: &rec[b * lg..][..lg],
                            b_hn,
                            h: target,
                            c,
                        },
                    );
                    if let Some(cells) = &self.cells {
                        // SAFETY: chunk k's units of row (t, b) are written by this thread
                        // alone.
                        unsafe { cells.part(row * hidden + units.start, hs) }
                            .copy_from_slice(unsafe { self.c.part(b * hidden + units.start, hs) });
                    }
                    if p.w_hr.is_none() {
                        // SAFETY: this direction's columns of chunk k at (t, b) are written by
                        // this thread alone (no other step or direction shares them).
                        unsafe { self.output.part(output_at(t, b, units.start), hs) }
                            .copy_from_slice(target);
                    }
                }
            }
            if let Some(w_hr) = &p.w_hr {
                if self.barrier.wait() == Met::Abandoned {
                    return;
                }
                // SAFETY: past the barrier nobody writes pre_proj until the next step.
                let pre_proj = unsafe { self.pre_proj.all() };
                for k in take(&self.tickets[2 + 2 * s], self.columns.len()) {
                    let cols = self.columns[k].clone();
                    let n = cols.len();
                    let projected = &mut projected[..batch * n];
                    w_hr[k].matmul(batch, pre_proj, hidden, projected, n);
                    for b in 0..batch {
                        // SAFETY: column chunk k of row b of h_t is this thread's this phase.
                        let h = unsafe { next.part(b * out + cols.start, n) };
                        match step_time(s, self.lengths[b], reverse) {
                            Some(t) => {
                                h.copy_from_slice(&projected[b * n..][..n]);
                                // SAFETY: column chunk k of (t, b) in this direction's output
                                // columns is written by this thread alone.
                                unsafe { self.output.part(output_at(t, b, cols.start), n) }
                                    .copy_from_slice(h);
                            }
                            None => h.copy_from_slice(&h_prev[b * out + cols.start..][..n]),
                        }
                    }
                }
            }
            if self.barrier.wait() == Met::Abandoned {
                return;
            }
        }
    }
}

pub(super) fn forward(call: &Call<'_>) -> Result<Outputs> {
    forward_keeping(call, false).map(|(out, _)| out)
}

/// The forward pass, and with `cells` (an LSTM) the cell state after every step of the last
/// layer's forward direction, laid out as its output ([rows, H]; zero past a row's length).
pub(super) fn forward_keeping(call: &Call<'_>, cells: bool) -> Result<(Outputs, Option<Tensor>)> {
    let workers = workers_for(&call.dims);
    forward_on(call, threads_for(&call.dims).max(workers), workers, cells)
}

/// The forward pass with the input projection shared by `threads` threads, of which the first
/// `workers` (at most `threads`) run the steps.
fn forward_on(
    call: &Call<'_>,
    threads: usize,
    workers: usize,
    keep_cells: bool,
) -> Result<(Outputs, Option<Tensor>)> {
    assert!(1 <= workers && workers <= threads);
    let Call {
        cell,
        ref dims,
        weights,
        input,
        h0,
        c0,
        lengths,
    } = *call;
    let x = f32_values(input, "input")?;
    let h0 = h0.map(|t| f32_values(t, "h0")).transpose()?;
    let c0 = c0.map(|t| f32_values(t, "c0")).transpose()?;
    let Dims {
        seq_len,
        batch,
        hidden,
        out_size: out,
        dirs,
        layers,
        ..
    } = *dims;
    let (rows, gw, width) = (dims.rows(), dims.gate_width(), dirs * out);
    let lstm = cell == Cell::Lstm;
    let units = chunks(hidden, workers);
    let columns = chunks(out, workers);

    let mut h_n = vec![0f32; layers * dirs * batch * out];
    let mut c_n = vec![
        0f32;
        if lstm {
            layers * dirs * batch * hidden
        } else {
            0
        }
    ];
    let mut layer_in = Cow::Borrowed(x);
    // The input projection's buffer is reused across calls on this thread: allocating tens of
    // megabytes afresh costs a page fault per 4 KiB at first write.
    let mut xw = PROJECTION.take();
    xw.resize(rows * gw, 0.0);
    let mut h = [vec![0f32; batch * out], vec![0f32; batch * out]];
    let mut c = vec![0f32; batch * hidden];
    let mut pre_proj = vec![0f32; if dims.projected() { batch * hidden } else { 0 }];
    let keep_cells = keep_cells && lstm;
    let mut cells = vec![0f32; if keep_cells { rows * hidden } else { 0 }];
    for layer in 0..layers {
        let in_w = dims.layer_input(layer);
        let mut output = vec![0f32; rows * width];
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let packed = Packed::new(&weights[slot], dims, in_w, &units, &columns)?;
            let state = |init: Option<&[f32]>, size: usize, buf: &mut [f32]| match init {
                Some(v) => buf.copy_from_slice(&v[slot * batch * size..(slot + 1) * batch * size]),
                None => buf.fill(0.0),
            };
            state(h0, out, &mut h[0]);
            if lstm {
                state(c0, hidden, &mut c);
            }
            let [h_a, h_b] = &mut h;
            let steps = Steps {
                cell,
                dims,
                dir,
                lengths,
                input: &layer_in,
                xw: SharedBuf::new(&mut xw),
                weights: &packed,
                units: &units,
                columns: &columns,
                h: [SharedBuf::new(h_a), SharedBuf::new(h_b)],
                c: SharedBuf::new(&mut c),
                pre_proj: SharedBuf::new(&mut pre_proj),
                output: SharedBuf::new(&mut output),
                cells: (keep_cells && layer + 1 == layers && dir == 0)
                    .then(|| SharedBuf::new(&mut cells)),
                tickets: (0..1 + 2 * seq_len).map(|_| AtomicUsize::new(0)).collect(),
                workers,
                projected: SpinBarrier::new(threads),
                barrier: SpinBarrier::new(workers),
            };
            std::thread::scope(|scope| {
                for w in 1..threads {
                    let steps = &steps;
                    scope.spawn(move || steps.run(w));
                }
                steps.run(0);
            });
            let last = &h[seq_len % 2];
            h_n[slot * batch * out..(slot + 1) * batch * out].copy_from_slice(last);
            if lstm {
                c_n[slot * batch * hidden..(slot + 1) * batch * hidden].copy_from_slice(&c);
            }
        }
        layer_in = Cow::Owned(output);
    }
    PROJECTION.set(xw);
    let outputs = Outputs {
        output: Tensor::from_vec(layer_in.into_owned(), &dims.output_shape())?,
        h_n: Tensor::from_vec(h_n, &dims.state_shape())?,
        c_n: lstm
            .then(|| Tensor::from_vec(c_n, &dims.cell_shape()))
            .transpose()?,
    };
    let mut cells_shape = dims.output_shape();
    cells_shape[2] = hidden;
    let cells = keep_cells
        .then(|| Tensor::from_vec(cells, &cells_shape))
        .transpose()?;
    Ok((outputs, cells))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::recurrent::{DirectionWeights, Nonlinearity};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.6..0.6)).collect();
        Tensor::from_vec(v, shape).unwrap()
    }

    /// Splitting the steps over workers changes only which thread computes which column.
    #[test]
    fn any_number_of_workers_gives_the_same_result() {
        let mut rng = StdRng::seed_from_u64(7);
        let cases = [
            (Cell::Rnn(Nonlinearity::Tanh), 33, 33, 2, 1, false),
            (Cell::Rnn(Nonlinearity::Relu), 7, 7, 1, 2, true),
            (Cell::Lstm, 33, 33, 2, 2, false),
            (Cell::Lstm, 29, 5, 2, 1, true),
            (Cell::Gru, 17, 17, 1, 3, false),
            (Cell::Gru, 33, 33, 2, 1, true),
        ];
        for (cell, hidden, out_size, dirs, layers, batch_first) in cases {
            let (seq_len, batch, input_size) = (6, 5, 11);
            let dims = Dims {
                seq_len,
                batch,
                input_size,
                hidden,
                out_size,
                gates: cell.gates(),
                layers,
                dirs,
                batch_first,
            };
            let gw = dims.gate_width();
            let weights: Vec<_> = (0..layers * dirs)
                .map(|slot| DirectionWeights {
                    w_ih: random(&mut rng, &[gw, dims.layer_input(slot / dirs)]),
                    w_hh: random(&mut rng, &[gw, out_size]),
                    b_ih: Some(random(&mut rng, &[gw])),
                    b_hh: Some(random(&mut rng, &[gw])),
                    w_hr: dims
                        .projected()
                        .then(|| random(&mut rng, &[out_size, hidden])),
                })
                .collect();
            let (t_dim, b_dim) = if batch_first {
                (batch, seq_len)
            } else {
                (seq_len, batch)
            };
            let input = random(&mut rng, &[t_dim, b_dim, input_size]);
            let h0 = random(&mut rng, &dims.state_shape());
            let c0 = random(&mut rng, &dims.cell_shape());
            let call = Call {
                cell,
                dims,
                weights: &weights,
                input: &input,
                h0: Some(&h0),
                c0: (cell == Cell::Lstm).then_some(&c0),
                lengths: &[3, 6, 1, 5, 6],
            };
            let (one, one_cells) = forward_on(&call, 1, 1, true).unwrap();
            for (threads, workers) in [(2, 1), (2, 2), (3, 3), (4, 2), (4, 4)] {
                let (many, many_cells) = forward_on(&call, threads, workers, true).unwrap();
                let pairs = [(&one.output, &many.output), (&one.h_n, &many.h_n)]
                    .into_iter()
                    .chain(one.c_n.as_ref().zip(many.c_n.as_ref()))
                    .chain(one_cells.as_ref().zip(many_cells.as_ref()));
                for (a, b) in pairs {
                    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
                    let worst = a
                        .iter()
                        .zip(&b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-5,
                        "{} H={hidden} threads={threads} workers={workers}: {worst}",
                        cell.name()
                    );
                }
            }
        }
    }
}
