//! CUDA forward. Per layer-direction: one cuBLAS GEMM for the input projection of all steps
//! (f32 out), then per step one GEMM for W_hh·h_{t-1} (f32 out) and the cell's elementwise
//! update: one fused kernel (plus, for an LSTM with projection, the W_hr GEMM and a masked
//! store), or the naive chain of one kernel per elementwise op. The two directions of a
//! bidirectional layer run on two lanes (streams) concurrently.
//!
//! At small batch a stepwise RNN is bound by the host's launch overhead, not by arithmetic, so
//! the whole sequence is issued once per shape into a CUDA graph and replayed. A `Plan` owns the
//! graph and every buffer its addresses point to; a call copies its input (and h0, c0, lengths)
//! in, replays, and copies the results out. Nothing in the time loop allocates or waits for the
//! host. If capture is refused, the plan issues the same work directly.

use super::arena::{Arena, Buffers};
use super::persistent::{self, Persistent};
use super::{Activation, Algo, Call, Cell, Dims, Outputs};
use crate::device::kernels::ids;
use crate::device::launch::{launch, per_element};
use crate::device::{
    begin_capture, data_ptr, dev_ptr, end_capture, fill_bytes_async, reading, replay, writing,
    CudaDevice, Lane, MatRef, POISON_BYTE,
};
use crate::dtype::{CudaData, DType, Element};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::{Arc, Mutex};

use crate::device::kernels::codes::{OP_ADD, OP_MUL, OP_SUB};

/// The address `elems` f32 elements past `base`.
fn f32_at(base: u64, elems: usize) -> u64 {
    base + 4 * elems as u64
}

/// The product of `parts`, or an error naming `what` when it overflows `limit`.
fn checked_size(parts: &[usize], limit: usize, what: &str) -> Result<usize> {
    parts
        .iter()
        .try_fold(1usize, |acc, &p| acc.checked_mul(p))
        .filter(|&n| n <= limit)
        .ok_or_else(|| Error::TooLarge {
            what: format!("{what} {parts:?}"),
            needed: "more elements".into(),
            limit: format!("the kernels index ({limit})"),
        })
}

/// The kernels a plan launches, resolved once.
struct Kernels {
    /// `{cell}_step_fused_T`, when the plan is fused.
    fused: Option<CudaFunction>,
    /// `store_masked_T`: the LSTM projection's store, and the naive chain's last op.
    store: CudaFunction,
    naive: Option<NaiveKernels>,
}

struct NaiveKernels {
    gather: CudaFunction,
    unary: CudaFunction,
    binary: CudaFunction,
    add_bias: CudaFunction,
    load: CudaFunction,
    convert: CudaFunction,
}

impl Kernels {
    fn new(dev: &CudaDevice, cell: Cell, kind: StepKind, dtype: DType) -> Result<Self> {
        use ids::elementwise as ew;
        let f = |kernel, dt| dev.function(kernel, dt);
        let fused = match (kind == StepKind::Fused, cell) {
            (false, _) => None,
            (true, Cell::Rnn(_)) => Some(dev.function(ids::rnn::RNN_STEP_FUSED, dtype)?),
            (true, Cell::Lstm) => Some(dev.function(ids::lstm::LSTM_STEP_FUSED, dtype)?),
            (true, Cell::Gru) => Some(dev.function(ids::gru::GRU_STEP_FUSED, dtype)?),
        };
        let naive = match kind {
            StepKind::Fused | StepKind::Persistent => None,
            StepKind::Naive => Some(NaiveKernels {
                gather: f(ew::GATHER_NAIVE, DType::F32)?,
                unary: f(ew::UNARY_NAIVE, DType::F32)?,
                binary: f(ew::BINARY_NAIVE, DType::F32)?,
                add_bias: f(ew::ADD_BIAS_NAIVE, dtype)?,
                load: f(ew::LOAD_NAIVE, dtype)?,
                convert: f(ew::CONVERT_NAIVE, dtype)?,
            }),
        };
        Ok(Kernels {
            fused,
            store: f(ew::STORE_MASKED, dtype)?,
            naive,
        })
    }
}

/// How a plan runs the sequence loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Fused,
    Naive,
    Persistent,
}

/// What a plan was captured for. The weights are not part of the key: a cache belongs to one
/// layer, whose weights do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlanKey {
    dims: Dims,
    cell: Cell,
    kind: StepKind,
    dtype: DType,
}

/// A captured graph. CUgraphExec handles may be launched from any thread; the cache's mutex
/// serialises every use.
struct Graph(CudaGraph);
// SAFETY: see above; the graph is only touched while its plan cache is locked.
unsafe impl Send for Graph {}

/// Device addresses of one layer-direction's parameters (0 for an absent bias).
struct SlotAddresses {
    w_ih: MatRef,
    w_hh: MatRef,
    w_hr: Option<MatRef>,
    b_ih: u64,
    b_hh: u64,
}

/// One lane's scratch: xw [rows, G·H] f32, hh [B, G·H] f32 (also the projection's f32 output),
/// ping-pong states h [B, O] and c [B, H], the LSTM's pre-projection h [B, H], the naive
/// chain's f32 temporaries tmp [B, G·H], tmp2 and tmp3 [B, H], and the persistent kernel's
/// h exchange hbuf [2, B, H] f32 and its sync words [failed, counter]. 0 where unused.
struct LaneAddresses {
    hbuf: u64,
    sync: u64,
    xw: u64,
    hh: u64,
    ping_h: [u64; 2],
    ping_c: [u64; 2],
    proj: u64,
    tmp: u64,
    tmp2: u64,
    tmp3: u64,
}

/// Every address `Plan::issue` uses, taken before capture: reading a slice's address through
/// cudarc may wait on or record events, which must not happen inside a capture.
struct Addresses {
    x: u64,
    h0: u64,
    c0: u64,
    lengths: u64,
    outs: Vec<u64>,
    h_n: u64,
    c_n: u64,
    lanes: [LaneAddresses; 2],
    slots: Vec<SlotAddresses>,
}

/// The buffers and (when capture succeeded) the graph of one forward shape.
struct Plan {
    key: PlanKey,
    x: CudaData,
    /// Initial states: zeros, or copies of the caller's h0 / c0.
    h0: CudaData,
    c0: Option<CudaData>,
    h0_is_zero: bool,
    c0_is_zero: bool,
    lengths: CudaSlice<i32>,
    lengths_host: Vec<i32>,
    /// Layer outputs [rows, D·O], alternating between layers.
    outs: Vec<CudaData>,
    h_n: CudaData,
    c_n: Option<CudaData>,
    _scratch: Buffers,
    kernels: Kernels,
    addr: Addresses,
    graph: Option<Graph>,
    /// Why the forward pass is not captured, when it is not.
    capture_error: Option<String>,
    /// The persistent kernel of a persistent plan, and its sync words [lane][failed, counter].
    persistent: Option<Persistent>,
    sync: Option<CudaSlice<u32>>,
}

/// The plans of one layer, most recently used first, and what `Algo::Auto` chose per shape.
#[derive(Default)]
pub struct PlanCache {
    plans: Mutex<Vec<Plan>>,
    choices: Mutex<Vec<(PlanKey, String)>>,
}

/// Plans kept per layer; the least recently used is dropped beyond this.
const MAX_PLANS: usize = 4;

impl PlanCache {
    /// For each shape `Auto` has run: the algorithm it picked and why.
    pub fn dispatch_notes(&self) -> Vec<String> {
        let choices = self.choices.lock().unwrap_or_else(|p| p.into_inner());
        choices.iter().map(|(_, note)| note.clone()).collect()
    }

    /// How many cached plans replay a captured CUDA graph, and why the others do not.
    pub fn capture_status(&self) -> (usize, Vec<String>) {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let captured = plans.iter().filter(|p| p.graph.is_some()).count();
        (
            captured,
            plans
                .iter()
                .filter_map(|p| p.capture_error.clone())
                .collect(),
        )
    }
}

/// One step's arguments, shared by the fused and naive launchers.
struct Step {
    xw: u64,
    hh: u64,
    b_ih: u64,
    b_hh: u64,
    h_prev: u64,
    h_next: u64,
    c_prev: u64,
    c_next: u64,
    out: u64,
    lengths: u64,
    batch: i32,
    hidden: i32,
    out_size: i32,
    gate_width: i32,
    st: i32,
    sb: i32,
    out_ld: i32,
    step: i32,
    reverse: i32,
}

impl Plan {
    fn new(dev: &CudaDevice, key: PlanKey, call: &Call<'_>) -> Result<Self> {
        let dims = key.dims;
        let Dims {
            batch,
            hidden,
            out_size: out,
            dirs,
            layers,
            seq_len,
            ..
        } = dims;
        let (dtype, gw, lstm) = (key.dtype, dims.gate_width(), key.cell == Cell::Lstm);
        let i32_max = i32::MAX as usize;
        let rows = checked_size(&[seq_len, batch], i32_max, "T × B")?;
        checked_size(&[batch, gw], i32_max, "B × G·H")?;
        let widest = gw.max(dirs * out).max(dims.input_size);
        checked_size(&[rows, widest], usize::MAX / 4, "T × B × width")?;
        let stream = dev.stream();
        let zeros = |len: usize| -> Result<CudaData> {
            crate::with_dtype!(dtype, T => Ok(T::wrap_cuda(stream.alloc_zeros::<T>(len)?)))
        };
        let states = layers * dirs * batch;
        let x = dev.alloc_output_data(dtype, rows * dims.input_size)?;
        let h0 = zeros(states * out)?;
        let c0 = lstm.then(|| zeros(states * hidden)).transpose()?;
        let lengths = stream.alloc_zeros::<i32>(batch)?;
        let outs = (0..layers.min(2))
            .map(|_| dev.alloc_output_data(dtype, rows * dirs * out))
            .collect::<Result<Vec<_>>>()?;
        let h_n = dev.alloc_output_data(dtype, states * out)?;
        let c_n = lstm
            .then(|| dev.alloc_output_data(dtype, states * hidden))
            .transpose()?;

        let naive = key.kind == StepKind::Naive;
        let persistent = key.kind == StepKind::Persistent;
        let mut arena = Arena::new(dev);
        let lane = |a: &mut Arena<'_>| -> Result<LaneAddresses> {
            let state = batch * hidden;
            Ok(LaneAddresses {
                hbuf: if persistent {
                    a.f32(2 * batch * hidden)?
                } else {
                    0
                },
                sync: 0,
                xw: a.f32(rows * gw)?,
                hh: a.f32(batch * gw)?,
                ping_h: [a.data(dtype, batch * out)?, a.data(dtype, batch * out)?],
                ping_c: match lstm {
                    true => [a.data(dtype, state)?, a.data(dtype, state)?],
                    false => [0, 0],
                },
                proj: if dims.projected() {
                    a.data(dtype, state)?
                } else {
                    0
                },
                tmp: if naive { a.f32(batch * gw)? } else { 0 },
                tmp2: if naive { a.f32(state)? } else { 0 },
                tmp3: if naive { a.f32(state)? } else { 0 },
            })
        };
        let mut lanes = [lane(&mut arena)?, lane(&mut arena)?];
        let sync = persistent
            .then(|| stream.alloc_zeros::<u32>(2 * persistent::SYNC_WORDS))
            .transpose()?;
        if let Some(sync) = &sync {
            let base = dev_ptr(sync, stream);
            lanes[0].sync = base;
            lanes[1].sync = base + 4 * persistent::SYNC_WORDS as u64;
        }
        let persistent = match key.kind {
            StepKind::Persistent => match persistent::prepare(dev, key.cell, &dims, dtype)? {
                Ok(p) => Some(p),
                Err(reason) => {
                    return Err(Error::Unsupported {
                        request: "the persistent algorithm cannot run this shape".into(),
                        reason,
                    })
                }
            },
            _ => None,
        };
        let bias = |b: &Option<Tensor>| -> Result<u64> {
            b.as_ref()
                .map_or(Ok(0), |t| Ok(data_ptr(t.cuda_data()?, stream)))
        };
        let slots = call
            .weights
            .iter()
            .enumerate()
            .map(|(slot, w)| {
                Ok(SlotAddresses {
                    w_ih: MatRef::of(w.w_ih.cuda_data()?, dims.layer_input(slot / dirs), stream),
                    w_hh: MatRef::of(w.w_hh.cuda_data()?, out, stream),
                    w_hr: match &w.w_hr {
                        Some(t) => Some(MatRef::of(t.cuda_data()?, hidden, stream)),
                        None => None,
                    },
                    b_ih: bias(&w.b_ih)?,
                    b_hh: bias(&w.b_hh)?,
                })
            })
            .collect::<Result<_>>()?;
        let opt_ptr = |d: &Option<CudaData>| d.as_ref().map_or(0, |d| data_ptr(d, stream));
        let addr = Addresses {
            x: data_ptr(&x, stream),
            h0: data_ptr(&h0, stream),
            c0: opt_ptr(&c0),
            lengths: dev_ptr(&lengths, stream),
            outs: outs.iter().map(|o| data_ptr(o, stream)).collect(),
            h_n: data_ptr(&h_n, stream),
            c_n: opt_ptr(&c_n),
            lanes,
            slots,
        };
        let mut plan = Plan {
            key,
            x,
            h0,
            c0,
            h0_is_zero: true,
            c0_is_zero: true,
            lengths,
            lengths_host: vec![0; batch],
            outs,
            h_n,
            c_n,
            _scratch: arena.into_buffers(),
            kernels: Kernels::new(dev, key.cell, key.kind, dtype)?,
            addr,
            graph: None,
            capture_error: None,
            persistent,
            sync,
        };
        plan.capture(dev);
        Ok(plan)
    }

    /// Records the forward pass into a graph on the device's private capture lanes.
    fn capture(&mut self, dev: &CudaDevice) {
        let lanes = dev.capture_lanes();
        if let Err(e) = begin_capture(&lanes[0].stream) {
            self.capture_error = Some(format!("stream capture refused: {e}"));
            return;
        }
        // SAFETY: `addr` holds the addresses Plan::new took of live buffers sized for the key.
        let issued = unsafe { self.issue(lanes) };
        let captured = end_capture(&lanes[0].stream);
        match (issued, captured) {
            (Ok(()), Ok(Some(graph))) => self.graph = Some(Graph(graph)),
            (Err(e), _) => self.capture_error = Some(format!("capture failed: {e}")),
            (_, Err(e)) => self.capture_error = Some(format!("capture failed: {e}")),
            (_, Ok(None)) => self.capture_error = Some("capture produced no graph".into()),
        }
    }

    /// The output of the last layer.
    fn last_out(&self) -> &CudaData {
        &self.outs[(self.key.dims.layers - 1) % self.outs.len()]
    }

    /// Enqueues the whole forward pass on `lanes`: each layer's reverse direction on lane 1,
    /// forked from and joined back into lane 0.
    ///
    /// # Safety
    /// `self.addr` must hold the addresses `Plan::new` took, of buffers sized for
    /// `self.key.dims` and of weights of PyTorch's shapes for those dims, all still alive;
    /// `lanes` are lanes of the device those buffers live on.
    unsafe fn issue(&self, lanes: &[Lane; 2]) -> Result<()> {
        let dims = self.key.dims;
        // Persistent directions run side by side only when both grids fit on the GPU at once.
        let forked = dims.dirs == 2
            && self
                .persistent
                .as_ref()
                .is_none_or(|p| p.concurrent_directions);
        if self.persistent.is_some() {
            // Both lanes' failure flags start at 0 once per pass, so that a layer that gave up
            // is still reported after the layers that follow it.
            // SAFETY: a persistent plan's `sync` buffer holds 2·SYNC_WORDS u32 and lane 0's
            // words start it (Plan::new), so both lanes' words are these 4·2·SYNC_WORDS bytes;
            // the plan owns the buffer (the caller's contract: still alive).
            unsafe {
                fill_bytes_async(
                    &lanes[0].stream,
                    self.addr.lanes[0].sync,
                    0,
                    4 * 2 * persistent::SYNC_WORDS,
                )?
            };
        }
        for layer in 0..dims.layers {
            if forked {
                lanes[1].stream.join(&lanes[0].stream)?;
            }
            for dir in 0..dims.dirs {
                let lane = if forked { &lanes[dir] } else { &lanes[0] };
                // SAFETY: this function's own contract; layer < L and dir < D.
                unsafe { self.issue_direction(lane, layer, dir)? };
            }
            if forked {
                lanes[0].stream.join(&lanes[1].stream)?;
            }
        }
        Ok(())
    }

    /// # Safety
    /// As `issue`; `layer` < L and `dir` < D of `self.key.dims`.
    unsafe fn issue_direction(&self, lane: &Lane, layer: usize, dir: usize) -> Result<()> {
        let PlanKey { dims, dtype, .. } = self.key;
        let Dims {
            seq_len,
            batch,
            hidden,
            out_size: out,
            dirs,
            ..
        } = dims;
        let (st, sb) = dims.strides();
        let (rows, gw, esize) = (dims.rows(), dims.gate_width(), dtype.size_in_bytes() as u64);
        let (a, la) = (&self.addr, &self.addr.lanes[dir]);
        let slot = layer * dirs + dir;
        let w = &a.slots[slot];
        let in_w = dims.layer_input(layer);
        let outs = a.outs.len();
        let x = MatRef {
            ptr: if layer == 0 {
                a.x
            } else {
                a.outs[(layer - 1) % outs]
            },
            ld: in_w,
            dtype,
        };
        let (h_slot, c_slot) = (
            (slot * batch * out) as u64 * esize,
            (slot * batch * hidden) as u64 * esize,
        );
        let mut step = Step {
            xw: la.xw,
            hh: la.hh,
            b_ih: w.b_ih,
            b_hh: w.b_hh,
            h_prev: a.h0 + h_slot,
            h_next: 0,
            c_prev: if a.c0 == 0 { 0 } else { a.c0 + c_slot },
            c_next: 0,
            out: a.outs[layer % outs] + (dir * out) as u64 * esize,
            lengths: a.lengths,
            batch: batch as i32,
            hidden: hidden as i32,
            out_size: out as i32,
            gate_width: gw as i32,
            st: st as i32,
            sb: sb as i32,
            out_ld: (dirs * out) as i32,
            step: 0,
            reverse: dir as i32,
        };
        // x is [rows, in_w], w_ih [G·H, in_w], xw [rows, G·H] f32.
        // SAFETY: the caller's contract (see # Safety): x is the plan's input [rows, I] (layer
        // 0) or the previous layer's output [rows, D·O], both in_w wide; w_ih is this slot's
        // [G·H, in_w] weight; the lane's xw holds rows·G·H f32.
        unsafe { lane.gemm_abt(rows, gw, in_w, x, w.w_ih, la.xw, gw, 0.0)? };
        if let Some(p) = &self.persistent {
            step.h_next = a.h_n + h_slot;
            step.c_next = if a.c_n == 0 { 0 } else { a.c_n + c_slot };
            // SAFETY: as above; the plan is persistent, so Plan::new gave it persistent
            // scratch (hbuf, sync), and `step` holds this slot's h0/c0 and h_n/c_n.
            return unsafe { self.persistent_direction(lane, la, w, &step, p, seq_len) };
        }
        for s in 0..seq_len {
            let last = s + 1 == seq_len;
            step.step = s as i32;
            // Ping-pong between two buffers; the last step writes this slot of h_n (c_n).
            step.h_next = if last {
                a.h_n + h_slot
            } else {
                la.ping_h[s % 2]
            };
            if a.c_n != 0 {
                step.c_next = if last {
                    a.c_n + c_slot
                } else {
                    la.ping_c[s % 2]
                };
            }
            let h_prev = MatRef {
                ptr: step.h_prev,
                ld: out,
                dtype,
            };
            // h_prev [B, O], w_hh [G·H, O], hh [B, G·H] f32.
            // SAFETY: the caller's contract: h_prev is this slot of h0 (or of h_n) or one of the
            // lane's ping buffers, each B·O elements; w_hh is [G·H, O]; hh holds B·G·H f32.
            unsafe { lane.gemm_abt(batch, gw, out, h_prev, w.w_hh, la.hh, gw, 0.0)? };
            // SAFETY: `step` addresses this step's buffers (see above): h_prev and h_next are
            // B·O elements (h0 / ping / h_n slot), c_prev and c_next B·H (or 0 when not an
            // LSTM), `out` this direction's columns of the layer output [rows, D·O]; the plan
            // has naive scratch when its kind is Naive.
            unsafe {
                match self.key.kind {
                    StepKind::Naive => self.naive_step(lane, la, w, &step)?,
                    _ => self.fused_step(lane, la, w, &step)?,
                }
            }
            step.h_prev = step.h_next;
            step.c_prev = step.c_next;
        }
        Ok(())
    }

    /// The whole loop of one layer-direction in one cooperative launch: `s` carries h0/c0 in
    /// h_prev/c_prev and the h_n/c_n slots in h_next/c_next.
    ///
    /// # Safety
    /// As `issue`; the plan was made with persistent scratch (`la.hbuf` 2·B·H f32, `la.sync`
    /// SYNC_WORDS u32) and `p` is its kernel; `s` addresses this slot's buffers.
    unsafe fn persistent_direction(
        &self,
        lane: &Lane,
        la: &LaneAddresses,
        w: &SlotAddresses,
        s: &Step,
        p: &Persistent,
        seq_len: usize,
    ) -> Result<()> {
        // The barrier counter starts at 0 for every launch (the failure flag once per pass).
        let (failed, counter) = (la.sync, la.sync + 4);
        // SAFETY: the lane's SYNC_WORDS (2) sync words are live (the caller's contract); the
        // counter is the second.
        unsafe { fill_bytes_async(&lane.stream, counter, 0, 4)? };
        let seq_len = seq_len as i32;
        let cfg = LaunchConfig {
            grid_dim: (p.spec.blocks() as u32, 1, 1),
            block_dim: (persistent::THREADS, 1, 1),
            shared_mem_bytes: p.spec.shared_bytes() as u32,
        };
        let mut builder = lane.stream.launch_builder(&p.function);
        for arg in [
            &s.xw,
            &w.w_hh.ptr,
            &s.b_ih,
            &s.b_hh,
            &s.h_prev,
            &s.c_prev,
            &s.out,
        ] {
            builder.arg(arg);
        }
        for arg in [
            &s.h_next, &s.c_next, &la.hbuf, &counter, &failed, &s.lengths,
        ] {
            builder.arg(arg);
        }
        for arg in [&seq_len, &s.st, &s.sb, &s.out_ld, &s.reverse] {
            builder.arg(arg);
        }
        // SAFETY: the caller's contract (see # Safety): every address is a live plan buffer or
        // weight of the sizes the kernel was specialised to (persistent::prepare, for these
        // dims and dtype); the arguments are pushed in the kernel's parameter order and types
        // (u64 addresses, i32 scalars); `cfg` is the spec's grid and shared memory.
        unsafe { builder.launch_cooperative(cfg)? };
        Ok(())
    }

    /// # Safety
    /// As `issue`; `s` addresses this step's buffers: xw [rows, G·H] and hh [B, G·H] f32,
    /// biases of G·H (or 0), h_prev and h_next [B, O], c_prev and c_next [B, H] (LSTM),
    /// `out` a [rows, out_ld] output at this direction's columns, lengths [B] i32.
    unsafe fn fused_step(
        &self,
        lane: &Lane,
        la: &LaneAddresses,
        w: &SlotAddresses,
        s: &Step,
    ) -> Result<()> {
        let f = self
            .kernels
            .fused
            .as_ref()
            .expect("fused plans resolve a fused kernel");
        let n = (s.batch * s.hidden) as usize;
        match self.key.cell {
            Cell::Rnn(nl) => {
                let act = nl.activation().code();
                // SAFETY: the caller's contract (see # Safety) covers every address; one thread
                // per element of the B·H state.
                unsafe {
                    launch!(lane.stream, f, per_element(n); s.xw, s.hh, s.b_ih, s.b_hh, s.h_prev, s.h_next, s.out,
                        s.lengths, s.batch, s.hidden, s.st, s.sb, s.out_ld, s.step, s.reverse, act)
                };
            }
            Cell::Gru => {
                // SAFETY: as for the RNN.
                unsafe {
                    launch!(lane.stream, f, per_element(n); s.xw, s.hh, s.b_ih, s.b_hh, s.h_prev, s.h_next, s.out,
                        s.lengths, s.batch, s.hidden, s.st, s.sb, s.out_ld, s.step, s.reverse)
                };
            }
            Cell::Lstm => {
                // SAFETY: as for the RNN; `la.proj` is the lane's [B, H] pre-projection buffer
                // when the LSTM is projected (0 and unused otherwise).
                unsafe {
                    launch!(lane.stream, f, per_element(n); s.xw, s.hh, s.b_ih, s.b_hh, s.c_prev, s.c_next, s.h_prev,
                        s.h_next, s.out, la.proj, s.lengths, s.batch, s.hidden, s.st, s.sb,
                        s.out_ld, s.step, s.reverse)
                };
                // SAFETY: `project` has this function's contract.
                unsafe { self.project(lane, la, w, s)? };
            }
        }
        Ok(())
    }

    /// LSTM with projection: h = W_hr · (pre-projection h in `la.proj`), then the masked store.
    ///
    /// # Safety
    /// As `fused_step`.
    unsafe fn project(
        &self,
        lane: &Lane,
        la: &LaneAddresses,
        w: &SlotAddresses,
        s: &Step,
    ) -> Result<()> {
        let Some(w_hr) = w.w_hr else {
            return Ok(());
        };
        let (batch, hidden, out) = (s.batch as usize, s.hidden as usize, s.out_size as usize);
        let proj = MatRef {
            ptr: la.proj,
            ld: hidden,
            dtype: self.key.dtype,
        };
        // proj [B, H], w_hr [O, H], result [B, O] f32 in hh (which holds B·4H ≥ B·O).
        // SAFETY: the caller's contract: a projected plan gave the lane `proj` [B, H]; w_hr is
        // this slot's [O, H] weight; hh holds B·4H f32 and O < H (PyTorch's proj_size rule).
        unsafe { lane.gemm_abt(batch, out, hidden, proj, w_hr, la.hh, out, 0.0)? };
        // SAFETY: reads the B·O f32 just written to hh; h_prev, h_next [B, O] and `out` as in
        // `fused_step`'s contract; one thread per element of B·O.
        unsafe {
            launch!(lane.stream, &self.kernels.store, per_element(batch * out); la.hh, s.out_size, s.h_prev,
                s.h_next, s.out, s.lengths, s.batch, s.out_size, s.st, s.sb, s.out_ld, s.step,
                s.reverse)
        };
        Ok(())
    }

    /// The same step as one kernel per elementwise op over f32 scratch.
    ///
    /// # Safety
    /// As `fused_step`; the plan was made with naive scratch (`la.tmp` [B, G·H], `la.tmp2` and
    /// `la.tmp3` [B, H], all f32).
    unsafe fn naive_step(
        &self,
        lane: &Lane,
        la: &LaneAddresses,
        w: &SlotAddresses,
        s: &Step,
    ) -> Result<()> {
        let k = self
            .kernels
            .naive
            .as_ref()
            .expect("naive plans resolve naive kernels");
        let (batch, hidden, gw) = (s.batch as usize, s.hidden as usize, s.gate_width as usize);
        let (tmp, tmp2, tmp3, hh) = (la.tmp, la.tmp2, la.tmp3, la.hh);
        let state32 = s.batch * s.hidden;
        let state = state32 as usize;
        let null = 0u64;
        // The helpers below launch on views the calls in this function choose: every one is a
        // [B, cols] window (cols ≤ its leading dimension) of tmp, tmp2, tmp3 or hh (f32 scratch
        // of the sizes in # Safety) or, for `store`, of this step's states and output.
        // y[:, cols] = act(x[:, cols]) on a [B, ld] view.
        let unary = |x: u64,
                     ldx: i32,
                     y: u64,
                     ldy: i32,
                     cols: i32,
                     act: Activation|
         -> Result<()> {
            let code = act.code();
            // SAFETY: x and y are [B, cols] views of f32 scratch (see above), one thread per
            // element.
            unsafe {
                launch!(lane.stream, &k.unary, per_element(batch * cols as usize); x, ldx, y, ldy, s.batch, cols, code)
            };
            Ok(())
        };
        // y = a op b on [B, cols] views.
        let binary = |a: u64, lda: i32, b: u64, ldb: i32, y: u64, ldy: i32, cols: i32, op: i32| {
            // SAFETY: a, b and y are [B, cols] views of f32 scratch (see above), one thread per
            // element.
            unsafe {
                launch!(lane.stream, &k.binary, per_element(batch * cols as usize); a, lda, b, ldb, y, ldy, s.batch,
                    cols, op)
            };
            Ok::<(), Error>(())
        };
        let add_bias = |y: u64, bias: u64| -> Result<()> {
            if bias != 0 {
                // SAFETY: y is tmp or hh ([B, G·H] f32) and `bias` a live G·H bias of the slot
                // (the caller's contract), one thread per element.
                unsafe {
                    launch!(lane.stream, &k.add_bias, per_element(batch * gw); y, s.gate_width, bias, s.batch,
                        s.gate_width)
                };
            }
            Ok(())
        };
        // Masked store of a [B, cols] f32 value (leading dimension ld) into a state and output.
        let store = |value: u64, ld: i32, prev: u64, next: u64, out: u64, cols: i32| {
            // SAFETY: `value` is a [B, cols] f32 scratch view; prev and next are this step's
            // [B, cols] states and `out` its output columns (or 0: no output), as the calls
            // below pass them (the caller's contract); one thread per element.
            unsafe {
                launch!(lane.stream, &self.kernels.store, per_element(batch * cols as usize); value, ld, prev, next,
                    out, s.lengths, s.batch, cols, s.st, s.sb, s.out_ld, s.step, s.reverse)
            };
            Ok::<(), Error>(())
        };
        // SAFETY: gathers this step's rows of xw ([rows, G·H] f32) into tmp ([B, G·H] f32);
        // one thread per element of B·G·H.
        unsafe {
            launch!(lane.stream, &k.gather, per_element(batch * gw); s.xw, s.gate_width, tmp, s.gate_width, s.lengths,
                s.batch, s.gate_width, s.st, s.sb, s.step, s.reverse)
        };
        let (gw32, h32) = (s.gate_width, s.hidden);
        match self.key.cell {
            Cell::Rnn(nl) => {
                binary(tmp, gw32, hh, gw32, tmp, gw32, gw32, OP_ADD)?;
                add_bias(tmp, w.b_ih)?;
                add_bias(tmp, w.b_hh)?;
                unary(tmp, gw32, tmp, gw32, gw32, nl.activation())?;
                store(tmp, gw32, s.h_prev, s.h_next, s.out, h32)?;
            }
            Cell::Lstm => {
                let gate = |g: usize| f32_at(tmp, g * hidden);
                binary(tmp, gw32, hh, gw32, tmp, gw32, gw32, OP_ADD)?;
                add_bias(tmp, w.b_ih)?;
                add_bias(tmp, w.b_hh)?;
                unary(gate(0), gw32, gate(0), gw32, 2 * h32, Activation::Sigmoid)?;
                unary(gate(2), gw32, gate(2), gw32, h32, Activation::Tanh)?;
                unary(gate(3), gw32, gate(3), gw32, h32, Activation::Sigmoid)?;
                // SAFETY: c_prev holds B·H elements of the storage dtype (the caller's
                // contract) and tmp2 B·H f32.
                unsafe {
                    launch!(lane.stream, &k.load, per_element(state); s.c_prev, tmp2, state32)
                };
                binary(gate(1), gw32, tmp2, h32, tmp2, h32, h32, OP_MUL)?; // f ⊙ c
                binary(gate(0), gw32, gate(2), gw32, gate(0), gw32, h32, OP_MUL)?; // i ⊙ g
                binary(tmp2, h32, gate(0), gw32, tmp2, h32, h32, OP_ADD)?; // c'
                store(tmp2, h32, s.c_prev, s.c_next, null, h32)?;
                unary(tmp2, h32, tmp3, h32, h32, Activation::Tanh)?;
                binary(gate(3), gw32, tmp3, h32, tmp3, h32, h32, OP_MUL)?; // o ⊙ tanh(c')
                match w.w_hr {
                    Some(_) => {
                        // SAFETY: tmp3 holds B·H f32 and a projected plan's `la.proj` B·H of
                        // the storage dtype; `project` has `fused_step`'s contract, which this
                        // function's includes.
                        unsafe {
                            launch!(lane.stream, &k.convert, per_element(state); tmp3, la.proj, state32);
                            self.project(lane, la, w, s)?;
                        }
                    }
                    None => store(tmp3, h32, s.h_prev, s.h_next, s.out, h32)?,
                }
            }
            Cell::Gru => {
                let (x_n, h_n) = (f32_at(tmp, 2 * hidden), f32_at(hh, 2 * hidden));
                add_bias(tmp, w.b_ih)?;
                add_bias(hh, w.b_hh)?;
                binary(tmp, gw32, hh, gw32, tmp, gw32, 2 * h32, OP_ADD)?; // r, z pre-activations
                unary(tmp, gw32, tmp, gw32, 2 * h32, Activation::Sigmoid)?;
                binary(tmp, gw32, h_n, gw32, h_n, gw32, h32, OP_MUL)?; // r ⊙ (W_hn h + b_hn)
                binary(x_n, gw32, h_n, gw32, x_n, gw32, h32, OP_ADD)?;
                unary(x_n, gw32, x_n, gw32, h32, Activation::Tanh)?; // n
                                                                     // SAFETY: h_prev holds B·H (= B·O for a GRU) elements of the storage dtype (the
                                                                     // caller's contract) and tmp2 B·H f32.
                unsafe {
                    launch!(lane.stream, &k.load, per_element(state); s.h_prev, tmp2, state32)
                };
                binary(tmp2, h32, x_n, gw32, tmp2, h32, h32, OP_SUB)?; // h − n
                binary(f32_at(tmp, hidden), gw32, tmp2, h32, tmp2, h32, h32, OP_MUL)?; // z ⊙ (h − n)
                binary(x_n, gw32, tmp2, h32, tmp2, h32, h32, OP_ADD)?; // h'
                store(tmp2, h32, s.h_prev, s.h_next, s.out, h32)?;
            }
        }
        Ok(())
    }

    /// Copies the call's tensors in, replays, and copies the results out.
    fn run(&mut self, dev: &Arc<CudaDevice>, call: &Call<'_>) -> Result<Outputs> {
        let stream = dev.stream();
        let dims = self.key.dims;
        let esize = self.key.dtype.size_in_bytes();
        // The call was checked to match the plan's dims and dtype, so each source has exactly
        // as many elements as its plan buffer.
        let copy_in = |dst: &CudaData, src: &Tensor| -> Result<()> {
            // SAFETY: `src` (checked, see above) and the plan buffer `dst` both hold dst.len()
            // elements of the plan's dtype on this device.
            reading(src.cuda_data()?, stream, |ptr| unsafe {
                dev.copy_async(data_ptr(dst, stream), ptr, dst.len() * esize)
            })
        };
        copy_in(&self.x, call.input)?;
        let init = |dst: &CudaData, src: Option<&Tensor>, is_zero: &mut bool| -> Result<()> {
            match src {
                Some(src) => {
                    copy_in(dst, src)?;
                    *is_zero = false;
                }
                None if !*is_zero => {
                    // SAFETY: fills exactly the plan buffer `dst`.
                    unsafe { dev.fill_async(data_ptr(dst, stream), 0, dst.len() * esize)? };
                    *is_zero = true;
                }
                None => {}
            }
            Ok(())
        };
        init(&self.h0, call.h0, &mut self.h0_is_zero)?;
        if let Some(c0) = &self.c0 {
            init(c0, call.c0, &mut self.c0_is_zero)?;
        }
        let lengths: Vec<i32> = call.lengths.iter().map(|&l| l as i32).collect();
        if lengths != self.lengths_host {
            stream.memcpy_htod(&lengths, &mut self.lengths)?;
            self.lengths_host = lengths;
        }
        if dev.poisoning() {
            // A replay must rewrite every element, not inherit the last call's values.
            for buf in self.outs.iter().chain([&self.h_n]).chain(&self.c_n) {
                // SAFETY: fills exactly the plan buffer `buf`.
                unsafe { dev.fill_async(data_ptr(buf, stream), POISON_BYTE, buf.len() * esize)? };
            }
        }
        match &self.graph {
            // SAFETY: the graph's buffers and weights are alive (owned by the plan and layer).
            Some(graph) => unsafe { replay(&graph.0, stream)? },
            // SAFETY: as in `Plan::capture`.
            None => unsafe { self.issue(dev.lanes())? },
        }
        if let Some(sync) = &self.sync {
            // A barrier that gave up means the blocks were not all resident: the results are
            // incomplete, so this is an error (it waits for the launch to finish).
            let words = stream.clone_dtoh(sync)?;
            if words[0] != 0 || words[persistent::SYNC_WORDS] != 0 {
                return Err(Error::Kernel {
                    kernel: "persistent recurrent".into(),
                    reason: "its blocks did not all run at once (another kernel held the GPU?); \
                             use --algo fused"
                        .into(),
                });
            }
        }
        let copy_out = |src: &CudaData, shape: &[usize]| -> Result<Tensor> {
            let mut dst = dev.alloc_output_data(self.key.dtype, src.len())?;
            // SAFETY: `dst` was just allocated with as many elements as `src`, same dtype.
            writing(&mut dst, stream, |ptr| unsafe {
                dev.copy_async(ptr, data_ptr(src, stream), src.len() * esize)
            })?;
            Tensor::from_cuda_data(dst, shape, dev)
        };
        Ok(Outputs {
            output: copy_out(self.last_out(), &dims.output_shape())?,
            h_n: copy_out(&self.h_n, &dims.state_shape())?,
            c_n: self
                .c_n
                .as_ref()
                .map(|c| copy_out(c, &dims.cell_shape()))
                .transpose()?,
        })
    }
}

pub(super) fn forward(
    dev: &Arc<CudaDevice>,
    algo: Algo,
    call: &Call<'_>,
    cache: &PlanCache,
) -> Result<Outputs> {
    let dtype = call.input.dtype();
    let _queue = dev.lock_queue();
    let key = choose(dev, algo, call, dtype, cache)?;
    let mut plans = cache.plans.lock().unwrap_or_else(|p| p.into_inner());
    let plan = match plans.iter().position(|p| p.key == key) {
        Some(k) => plans.remove(k),
        None => Plan::new(dev, key, call)?,
    };
    plans.insert(0, plan);
    plans.truncate(MAX_PLANS);
    plans[0].run(dev, call)
}

/// The plan key for `algo` on this call's shape; `Auto` takes `Persistent` where the shape can
/// run it on this device, else `Fused`, and keeps its choice and the reason per shape.
fn choose(
    dev: &CudaDevice,
    algo: Algo,
    call: &Call<'_>,
    dtype: DType,
    cache: &PlanCache,
) -> Result<PlanKey> {
    let key = |kind| PlanKey {
        dims: call.dims,
        cell: call.cell,
        kind,
        dtype,
    };
    let kind = match algo {
        Algo::Fused => StepKind::Fused,
        Algo::Naive => StepKind::Naive,
        Algo::Persistent => StepKind::Persistent,
        Algo::Auto => {
            let mut choices = cache.choices.lock().unwrap_or_else(|p| p.into_inner());
            let same = |k: &PlanKey| k.dims == call.dims && k.cell == call.cell && k.dtype == dtype;
            if let Some((k, _)) = choices.iter().find(|(k, _)| same(k)) {
                return Ok(*k);
            }
            let limit = persistent::auto_max_batch(dtype);
            let prepared = match call.dims.batch {
                b if b > limit => Err(format!(
                    "at batch {b} (over {limit} in {}) the stepwise kernels are faster",
                    dtype.name()
                )),
                // A kernel that cannot be had (no NVRTC, say) is a reason to run stepwise.
                _ => persistent::prepare(dev, call.cell, &call.dims, dtype)
                    .unwrap_or_else(|e| Err(format!("its kernel is not available: {e}"))),
            };
            let (kind, why) = match prepared {
                Ok(p) => (StepKind::Persistent, p.note),
                Err(why) => (StepKind::Fused, format!("fused, not persistent: {why}")),
            };
            let d = call.dims;
            let shape = format!(
                "{} H={} B={} T={} {}",
                call.cell.name(),
                d.hidden,
                d.batch,
                d.seq_len,
                dtype.name()
            );
            choices.push((key(kind), format!("{shape}: {why}")));
            kind
        }
    };
    Ok(key(kind))
}
