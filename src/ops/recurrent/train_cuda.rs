//! CUDA training (kernels/recurrent_train.cu). The forward runs as the stepwise fused path does
//! (one input-projection GEMM per layer-direction, then per step the W_hh GEMM and one kernel)
//! and keeps, in f32 whatever the storage dtype, what backpropagation needs: the reserve
//! (`Saved`). The backward (`backward.rs`) carries dh back step by step and forms the weight
//! gradients from the reserve.

mod backward;

pub(super) use backward::backward;

use super::arena::Arena;
use super::{Call, Cell, Dims, Outputs};
use crate::device::kernels::{codes, ids};
use crate::device::launch::{launch, per_element};
use crate::device::{data_ptr, dev_ptr, writing, CudaDevice, Lane, MatRef};
use crate::dtype::{CudaData, DType};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;
use std::sync::Arc;

fn cell_code(cell: Cell) -> i32 {
    match cell {
        Cell::Rnn(_) => codes::CELL_RNN,
        Cell::Lstm => codes::CELL_LSTM,
        Cell::Gru => codes::CELL_GRU,
    }
}

fn act_code(cell: Cell) -> i32 {
    match cell {
        Cell::Rnn(nl) => nl.activation().code(),
        _ => 0,
    }
}

/// Where one layer-direction's saved activations lie in the reserve (f32 offsets; absent
/// parts are `None`).
#[derive(Debug, Clone, Copy)]
struct SlotLayout {
    /// Activated gates [rows, G·H].
    act: usize,
    /// LSTM c_t, GRU W_hn h + b_hn [rows, H].
    aux: Option<usize>,
    /// h_{t-1} [rows, O].
    hprev: usize,
    /// LSTM with projection: h before W_hr [rows, H].
    m: Option<usize>,
}

/// The reserve's parts: each layer's input [rows, in] and each layer-direction's activations,
/// then the LSTM's c0 [L·D, B, H].
#[derive(Debug, Clone)]
struct Layout {
    inputs: Vec<usize>,
    slots: Vec<SlotLayout>,
    c0: Option<usize>,
    len: usize,
}

impl Layout {
    fn new(cell: Cell, dims: &Dims) -> Self {
        let rows = dims.rows();
        let (h, o, gw) = (dims.hidden, dims.out_size, dims.gate_width());
        let mut len = 0;
        let mut take = |n: usize| {
            len += n;
            len - n
        };
        let inputs = (0..dims.layers)
            .map(|l| take(rows * dims.layer_input(l)))
            .collect();
        let slots = (0..dims.layers * dims.dirs)
            .map(|_| SlotLayout {
                act: take(rows * gw),
                aux: (!matches!(cell, Cell::Rnn(_))).then(|| take(rows * h)),
                hprev: take(rows * o),
                m: dims.projected().then(|| take(rows * h)),
            })
            .collect();
        let c0 = (cell == Cell::Lstm).then(|| take(dims.layers * dims.dirs * dims.batch * h));
        Layout {
            inputs,
            slots,
            c0,
            len,
        }
    }
}

/// What a CUDA training-mode forward keeps (f32), and the storage dtype it ran in.
pub(crate) struct Saved {
    buf: CudaSlice<f32>,
    layout: Layout,
    dtype: DType,
}

impl Saved {
    /// f32 elements kept for `dims` (known before the call).
    pub fn len_for(cell: Cell, dims: &Dims) -> usize {
        Layout::new(cell, dims).len
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn at(&self, offset: usize, stream: &cudarc::driver::CudaStream) -> u64 {
        dev_ptr(&self.buf, stream) + 4 * offset as u64
    }
}

impl Saved {
    /// The LSTM's c_t of layer-direction `slot` after every step [rows, H], copied out (f32);
    /// None for the other cells.
    pub fn cell_states(
        &self,
        slot: usize,
        rows: usize,
        hidden: usize,
        stream: &Arc<cudarc::driver::CudaStream>,
    ) -> Result<Option<CudaSlice<f32>>> {
        let Some(offset) = self.layout.slots[slot].aux else {
            return Ok(None);
        };
        let view = self.buf.slice(offset..offset + rows * hidden);
        Ok(Some(stream.clone_dtod(&view)?))
    }
}

/// The kernels both passes use.
struct Kernels {
    /// T → f32 (`load_naive_T`) and f32 → T (`convert_naive_T`).
    widen: cudarc::driver::CudaFunction,
    narrow: cudarc::driver::CudaFunction,
}

impl Kernels {
    fn new(dev: &CudaDevice, dtype: DType) -> Result<Self> {
        Ok(Kernels {
            widen: dev.function(ids::elementwise::LOAD_NAIVE, dtype)?,
            narrow: dev.function(ids::elementwise::CONVERT_NAIVE, dtype)?,
        })
    }

    /// y [n] f32 = x [n] T.
    ///
    /// # Safety
    /// `x` (n elements of the storage dtype) and `y` (n f32) must lie in live buffers on the
    /// lane's device.
    unsafe fn widen(&self, lane: &Lane, x: u64, y: u64, n: usize) -> Result<()> {
        let n32 = n as i32;
        // SAFETY: the caller's contract (see # Safety); one thread per element of n.
        unsafe { launch!(lane.stream, &self.widen, per_element(n); x, y, n32) };
        Ok(())
    }

    /// y [n] T = x [n] f32.
    ///
    /// # Safety
    /// `x` (n f32) and `y` (n elements of the storage dtype) must lie in live buffers on the
    /// lane's device.
    unsafe fn narrow(&self, lane: &Lane, x: u64, y: u64, n: usize) -> Result<()> {
        let n32 = n as i32;
        // SAFETY: the caller's contract (see # Safety); one thread per element of n.
        unsafe { launch!(lane.stream, &self.narrow, per_element(n); x, y, n32) };
        Ok(())
    }
}

/// Device addresses of one layer-direction's parameters (0 for an absent bias).
struct SlotWeights {
    w_ih: MatRef,
    w_hh: MatRef,
    w_hr: Option<MatRef>,
    b_ih: u64,
    b_hh: u64,
}

fn slot_weights(
    call_weights: &[super::DirectionWeights],
    dims: &Dims,
    dev: &CudaDevice,
) -> Result<Vec<SlotWeights>> {
    let stream = dev.stream();
    let bias = |b: &Option<Tensor>| -> Result<u64> {
        b.as_ref()
            .map_or(Ok(0), |t| Ok(data_ptr(t.cuda_data()?, stream)))
    };
    call_weights
        .iter()
        .enumerate()
        .map(|(slot, w)| {
            Ok(SlotWeights {
                w_ih: MatRef::of(
                    w.w_ih.cuda_data()?,
                    dims.layer_input(slot / dims.dirs),
                    stream,
                ),
                w_hh: MatRef::of(w.w_hh.cuda_data()?, dims.out_size, stream),
                w_hr: match &w.w_hr {
                    Some(t) => Some(MatRef::of(t.cuda_data()?, dims.hidden, stream)),
                    None => None,
                },
                b_ih: bias(&w.b_ih)?,
                b_hh: bias(&w.b_hh)?,
            })
        })
        .collect()
}

/// A fresh device buffer of `len` elements of `dtype`, and its address.
fn buffer(dev: &CudaDevice, dtype: DType, len: usize) -> Result<(CudaData, u64)> {
    let data = dev.alloc_output_data(dtype, len)?;
    let ptr = data_ptr(&data, dev.stream());
    Ok((data, ptr))
}

/// A result buffer after its last write was enqueued, as a tensor: readers on other streams
/// wait for that write.
fn finished(dev: &Arc<CudaDevice>, mut data: CudaData, shape: &[usize]) -> Result<Tensor> {
    writing(&mut data, dev.stream(), |_| ());
    Tensor::from_cuda_data(data, shape, dev)
}

/// The device's lengths of a call, one i32 per row.
fn upload_lengths(dev: &CudaDevice, lengths: &[usize]) -> Result<CudaSlice<i32>> {
    let host: Vec<i32> = lengths.iter().map(|&l| l as i32).collect();
    dev.upload(&host)
}

/// The training-mode forward on CUDA: the same outputs as `forward`, and the reserve.
pub(super) fn forward_train(dev: &Arc<CudaDevice>, call: &Call<'_>) -> Result<(Outputs, Saved)> {
    let _queue = dev.lock_queue();
    let (cell, dims) = (call.cell, call.dims);
    let dtype = call.input.dtype();
    let stream = dev.stream();
    let lane = &dev.lanes()[0];
    let kernels = Kernels::new(dev, dtype)?;
    let step_fn = dev.function(ids::recurrent_train::RECURRENT_TRAIN_STEP, dtype)?;
    let store_fn = dev.function(ids::elementwise::STORE_MASKED, dtype)?;
    let layout = Layout::new(cell, &dims);
    // Zeros: rows a short sequence never reaches enter the weight-gradient GEMMs (times zero).
    let reserve = stream.alloc_zeros::<f32>(layout.len.max(1))?;
    let saved = Saved {
        buf: reserve,
        layout,
        dtype,
    };
    let weights = slot_weights(call.weights, &dims, dev)?;
    let lengths = upload_lengths(dev, call.lengths)?;
    let lengths_ptr = dev_ptr(&lengths, stream);
    let Dims {
        batch,
        hidden,
        out_size,
        dirs,
        layers,
        seq_len,
        ..
    } = dims;
    let (rows, gw, esize) = (dims.rows(), dims.gate_width(), dtype.size_in_bytes() as u64);
    let (st, sb) = dims.strides();
    let states = layers * dirs * batch;
    let lstm = cell == Cell::Lstm;
    // Scratch, freed in stream order when the call returns.
    let mut arena = Arena::new(dev);
    let x0 = arena.copy_of(call.input)?;
    let h0 = match call.h0 {
        Some(t) => arena.copy_of(t)?,
        None => arena.data_zeros(dtype, states * out_size)?,
    };
    let c0 = match (lstm, call.c0) {
        (true, Some(t)) => arena.copy_of(t)?,
        (true, None) => arena.data_zeros(dtype, states * hidden)?,
        (false, _) => 0,
    };
    let xw_ptr = arena.f32(rows * gw)?;
    let hh_ptr = arena.f32(batch * gw.max(out_size))?;
    let ping_h = [
        arena.data(dtype, batch * out_size)?,
        arena.data(dtype, batch * out_size)?,
    ];
    let ping_c = match lstm {
        true => [
            arena.data(dtype, batch * hidden)?,
            arena.data(dtype, batch * hidden)?,
        ],
        false => [0, 0],
    };
    let proj_ptr = match dims.projected() {
        true => arena.data(dtype, batch * hidden)?,
        false => 0,
    };
    let mut outs = Vec::new();
    for _ in 0..layers.min(2) {
        outs.push(buffer(dev, dtype, rows * dirs * out_size)?);
    }
    let (h_n, h_n_ptr) = buffer(dev, dtype, states * out_size)?;
    let c_n = match cell {
        Cell::Lstm => Some(buffer(dev, dtype, states * hidden)?),
        _ => None,
    };
    let (cell32, act32) = (cell_code(cell), act_code(cell));
    let (b32, h32, o32) = (batch as i32, hidden as i32, out_size as i32);
    let (st32, sb32, ld32) = (st as i32, sb as i32, (dirs * out_size) as i32);
    if let Some(c0_at) = saved.layout.c0 {
        // SAFETY: c0 and the reserve's c0 part hold L·D·B·H elements.
        unsafe { kernels.widen(lane, c0, saved.at(c0_at, stream), states * hidden)? };
    }
    for layer in 0..layers {
        let input = dims.layer_input(layer);
        let x = match layer {
            0 => x0,
            l => outs[(l - 1) % 2].1,
        };
        let out = outs[layer % 2].1;
        // Every address below is a live buffer allocated above (the caller's tensors were
        // copied after being checked against `dims`) or a weight checked against `dims`, each
        // sized for the shapes passed with it, as each SAFETY line says.
        // SAFETY: x is the copied input [rows, I] (layer 0) or the previous layer's output
        // [rows, D·O], rows·in elements either way; the reserve's input part holds as many f32.
        unsafe {
            kernels.widen(
                lane,
                x,
                saved.at(saved.layout.inputs[layer], stream),
                rows * input,
            )?
        };
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let w = &weights[slot];
            let sl = saved.layout.slots[slot];
            let (act, hprev) = (saved.at(sl.act, stream), saved.at(sl.hprev, stream));
            let aux = sl.aux.map_or(0, |o| saved.at(o, stream));
            let m = sl.m.map_or(0, |o| saved.at(o, stream));
            let x_mat = MatRef {
                ptr: x,
                ld: input,
                dtype,
            };
            // SAFETY: x [rows, in] (above), w_ih this slot's [G·H, in] weight, xw rows·G·H f32.
            unsafe { lane.gemm_abt(rows, gw, input, x_mat, w.w_ih, xw_ptr, gw, 0.0)? };
            let out_dir = out + esize * (dir * out_size) as u64;
            let h_first = h0 + esize * (slot * batch * out_size) as u64;
            let c_first = match c0 {
                0 => 0,
                p => p + esize * (slot * batch * hidden) as u64,
            };
            let reverse = dir as i32;
            for s in 0..seq_len {
                let (h_prev, c_prev) = match s {
                    0 => (h_first, c_first),
                    _ => (ping_h[(s + 1) % 2], ping_c[(s + 1) % 2]),
                };
                let (h_next, c_next) = (ping_h[s % 2], ping_c[s % 2]);
                let h_mat = MatRef {
                    ptr: h_prev,
                    ld: out_size,
                    dtype,
                };
                // SAFETY: h_prev is this slot of h0 (slot < L·D) or a ping buffer, B·O
                // elements; w_hh is [G·H, O]; hh holds B·max(G·H, O) f32.
                unsafe { lane.gemm_abt(batch, gw, out_size, h_mat, w.w_hh, hh_ptr, gw, 0.0)? };
                let s32 = s as i32;
                // SAFETY: xw [rows, G·H] and hh [B, G·H] f32; biases of G·H (or 0); c_prev,
                // c_next [B, H] (LSTM, else 0), h_prev, h_next [B, O]; out_dir this
                // direction's columns of the [rows, D·O] output; proj [B, H] (projected, else
                // 0); act, aux, hprev and m this slot's reserve parts ([rows, G·H], [rows, H],
                // [rows, O], [rows, H]; 0 when absent); lengths [B] i32. One thread per B·H.
                unsafe {
                    launch!(lane.stream, &step_fn, per_element(batch * hidden); cell32, act32, xw_ptr, hh_ptr,
                        w.b_ih, w.b_hh, c_prev, c_next, h_prev, h_next, out_dir, proj_ptr, act,
                        aux, hprev, m, lengths_ptr, b32, h32, o32, st32, sb32, ld32, s32,
                        reverse)
                };
                if let Some(w_hr) = w.w_hr {
                    let p_mat = MatRef {
                        ptr: proj_ptr,
                        ld: hidden,
                        dtype,
                    };
                    // SAFETY: a projected LSTM has proj [B, H]; w_hr is [O, H]; hh holds
                    // B·max(G·H, O) f32 ≥ B·O. The store reads those B·O f32 and writes
                    // h_next [B, O] and out_dir's columns, one thread per element.
                    unsafe {
                        lane.gemm_abt(batch, out_size, hidden, p_mat, w_hr, hh_ptr, out_size, 0.0)?;
                        launch!(lane.stream, &store_fn, per_element(batch * out_size); hh_ptr, o32, h_prev, h_next,
                            out_dir, lengths_ptr, b32, o32, st32, sb32, ld32, s32, reverse);
                    }
                }
            }
            let last = (seq_len - 1) % 2;
            let h_slot = h_n_ptr + esize * (slot * batch * out_size) as u64;
            // SAFETY: slot < L·D, so B·O elements at h_slot lie in h_n [L·D, B, O]; the last
            // step wrote ping_h[last], B·O elements.
            unsafe { dev.copy_async(h_slot, ping_h[last], batch * out_size * esize as usize)? };
            if let Some((_, c_n_ptr)) = &c_n {
                let c_slot = c_n_ptr + esize * (slot * batch * hidden) as u64;
                // SAFETY: as for h, with c_n [L·D, B, H] and ping_c[last] of B·H elements.
                unsafe { dev.copy_async(c_slot, ping_c[last], batch * hidden * esize as usize)? };
            }
        }
    }
    // The buffers the enqueued work reads are freed in stream order after it.
    // The scratch and lengths are freed in stream order after the work enqueued on them.
    drop((arena, lengths));
    let output = outs.swap_remove((layers - 1) % 2).0;
    let outputs = Outputs {
        output: finished(dev, output, &dims.output_shape())?,
        h_n: finished(dev, h_n, &dims.state_shape())?,
        c_n: c_n
            .map(|(d, _)| finished(dev, d, &dims.cell_shape()))
            .transpose()?,
    };
    Ok((outputs, saved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::recurrent::Nonlinearity;

    fn dims(hidden: usize, out_size: usize, layers: usize, dirs: usize) -> Dims {
        Dims {
            seq_len: 5,
            batch: 3,
            input_size: 7,
            hidden,
            out_size,
            gates: 4,
            layers,
            dirs,
            batch_first: false,
        }
    }

    #[test]
    fn the_reserve_parts_are_disjoint_and_fill_it() {
        let cases = [
            (Cell::Lstm, dims(6, 6, 2, 2)),
            (Cell::Lstm, dims(6, 4, 3, 1)),
            (Cell::Gru, dims(5, 5, 1, 2)),
            (Cell::Rnn(Nonlinearity::Relu), dims(9, 9, 2, 1)),
        ];
        for (cell, mut d) in cases {
            d.gates = cell.gates();
            let l = Layout::new(cell, &d);
            let rows = d.rows();
            let mut parts: Vec<(usize, usize)> = (0..d.layers)
                .map(|k| (l.inputs[k], rows * d.layer_input(k)))
                .collect();
            for s in &l.slots {
                parts.push((s.act, rows * d.gate_width()));
                parts.push((s.hprev, rows * d.out_size));
                parts.extend(s.aux.map(|a| (a, rows * d.hidden)));
                parts.extend(s.m.map(|m| (m, rows * d.hidden)));
                assert_eq!(s.aux.is_some(), !matches!(cell, Cell::Rnn(_)));
                assert_eq!(s.m.is_some(), d.projected());
            }
            parts.extend(l.c0.map(|c| (c, d.layers * d.dirs * d.batch * d.hidden)));
            assert_eq!(l.c0.is_some(), cell == Cell::Lstm);
            parts.sort();
            let mut end = 0;
            for (start, len) in parts {
                assert_eq!(start, end, "{cell:?}: parts must follow each other");
                end = start + len;
            }
            assert_eq!(end, l.len);
            assert_eq!(Saved::len_for(cell, &d), l.len);
        }
    }
}
