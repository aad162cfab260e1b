//! CUDA forward. Per layer-direction: one cuBLAS GEMM for the input projection of all steps
//! (f32 out), then per step one GEMM for W_hh·h_{t-1} (f32 out) and the elementwise update:
//! one fused kernel, or the naive chain of six.
//!
//! At small batch a stepwise RNN is bound by the host's launch overhead, not by arithmetic, so
//! the whole sequence is issued once per shape into a CUDA graph and replayed. A `Plan` owns the
//! graph and every buffer its addresses point to; a call copies its input (and h0, lengths) in,
//! replays, and copies output and h_n out. Nothing in the time loop allocates or waits for the
//! host. If capture is refused, the plan issues the same work directly.

use super::{Algo, Call, Dims, DirectionWeights, Nonlinearity};
use crate::device::{data_ptr, dev_ptr, CudaDevice, MatRef, POISON_BYTE};
use crate::dtype::{CudaData, DType, Element};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{sys, CudaFunction, CudaGraph, CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Mutex;

const KERNELS: &str = "rnn";
const BLOCK: u32 = 256;

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernels one step needs, resolved once before the loop.
enum StepKernels {
    Fused(CudaFunction),
    Naive {
        gather: CudaFunction,
        add: CudaFunction,
        add_bias: CudaFunction,
        activation: CudaFunction,
        store: CudaFunction,
        /// f32 scratch [B, H] and its address.
        tmp: (CudaSlice<f32>, u64),
    },
}

impl StepKernels {
    fn new(dev: &CudaDevice, fused: bool, dtype: DType, state: usize) -> Result<Self> {
        Ok(match fused {
            true => StepKernels::Fused(dev.function(KERNELS, "rnn_step_fused", dtype)?),
            false => StepKernels::Naive {
                gather: dev.function(KERNELS, "rnn_naive_gather", DType::F32)?,
                add: dev.function(KERNELS, "rnn_naive_add", DType::F32)?,
                add_bias: dev.function(KERNELS, "rnn_naive_add_bias", dtype)?,
                activation: dev.function(KERNELS, "rnn_naive_activation", DType::F32)?,
                store: dev.function(KERNELS, "rnn_naive_store", dtype)?,
                tmp: {
                    let tmp = dev.alloc_output::<f32>(state)?;
                    let ptr = dev_ptr(&tmp, dev.stream());
                    (tmp, ptr)
                },
            },
        })
    }
}

/// Device addresses and sizes of one step's elementwise update.
struct Step {
    xw: u64,
    hh: u64,
    b_ih: u64,
    b_hh: u64,
    h_prev: u64,
    h_next: u64,
    out: u64,
    lengths: u64,
    batch: i32,
    hidden: i32,
    st: i32,
    sb: i32,
    out_ld: i32,
    step: i32,
    reverse: i32,
    act: i32,
}

impl Step {
    /// # Safety
    /// Every address must point into a live buffer of the sizes `forward` allocated for them
    /// (xw [rows, H] f32, hh [B, H] f32, biases [H] or 0, states [B, H], out [rows, out_ld]
    /// shifted to this direction's columns, lengths [B] i32 in 1..=T).
    unsafe fn launch(&self, dev: &CudaDevice, kernels: &StepKernels) -> Result<()> {
        let stream = dev.stream();
        let n = (self.batch * self.hidden) as usize;
        let cfg = grid(n);
        match kernels {
            StepKernels::Fused(f) => {
                stream
                    .launch_builder(f)
                    .arg(&self.xw)
                    .arg(&self.hh)
                    .arg(&self.b_ih)
                    .arg(&self.b_hh)
                    .arg(&self.h_prev)
                    .arg(&self.h_next)
                    .arg(&self.out)
                    .arg(&self.lengths)
                    .arg(&self.batch)
                    .arg(&self.hidden)
                    .arg(&self.st)
                    .arg(&self.sb)
                    .arg(&self.out_ld)
                    .arg(&self.step)
                    .arg(&self.reverse)
                    .arg(&self.act)
                    .launch(cfg)?;
            }
            StepKernels::Naive {
                gather,
                add,
                add_bias,
                activation,
                store,
                tmp: (_, ref tmp),
            } => {
                let n_i32 = n as i32;
                stream
                    .launch_builder(gather)
                    .arg(&self.xw)
                    .arg(tmp)
                    .arg(&self.lengths)
                    .arg(&self.batch)
                    .arg(&self.hidden)
                    .arg(&self.st)
                    .arg(&self.sb)
                    .arg(&self.step)
                    .arg(&self.reverse)
                    .launch(cfg)?;
                stream
                    .launch_builder(add)
                    .arg(tmp)
                    .arg(&self.hh)
                    .arg(&n_i32)
                    .launch(cfg)?;
                for bias in [&self.b_ih, &self.b_hh] {
                    if *bias != 0 {
                        stream
                            .launch_builder(add_bias)
                            .arg(tmp)
                            .arg(bias)
                            .arg(&self.batch)
                            .arg(&self.hidden)
                            .launch(cfg)?;
                    }
                }
                stream
                    .launch_builder(activation)
                    .arg(tmp)
                    .arg(&n_i32)
                    .arg(&self.act)
                    .launch(cfg)?;
                stream
                    .launch_builder(store)
                    .arg(tmp)
                    .arg(&self.h_prev)
                    .arg(&self.h_next)
                    .arg(&self.out)
                    .arg(&self.lengths)
                    .arg(&self.batch)
                    .arg(&self.hidden)
                    .arg(&self.st)
                    .arg(&self.sb)
                    .arg(&self.out_ld)
                    .arg(&self.step)
                    .arg(&self.reverse)
                    .launch(cfg)?;
            }
        }
        Ok(())
    }
}

fn i32_size(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Config(format!("{what} = {value} exceeds i32")))
}

/// Plans kept per layer; the least recently used is dropped beyond this.
const MAX_PLANS: usize = 4;

/// What a plan was captured for. The weights are not part of the key: a cache belongs to one
/// layer, whose weights do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlanKey {
    dims: Dims,
    fused: bool,
    dtype: DType,
    act: Nonlinearity,
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
    b_ih: u64,
    b_hh: u64,
}

/// Every address `Plan::issue` uses, taken before capture: reading a slice's address through
/// cudarc may wait on or record events, which must not happen inside a capture.
struct Addresses {
    x: u64,
    h0: u64,
    lengths: u64,
    xw: u64,
    hh: u64,
    ping: [u64; 2],
    outs: Vec<u64>,
    h_n: u64,
    slots: Vec<SlotAddresses>,
}

/// The buffers and (when capture succeeded) the graph of one forward shape.
struct Plan {
    key: PlanKey,
    /// Buffers reached only through `addr`: the input copy [rows, I], xw [rows, H] f32,
    /// hh [B, H] f32 and the two ping-pong states [B, H]. Owned here so the addresses stay valid.
    _scratch: (CudaData, CudaSlice<f32>, CudaSlice<f32>, [CudaData; 2]),
    /// Initial states [L·D, B, H]: zeros, or a copy of the caller's h0.
    h0: CudaData,
    h0_is_zero: bool,
    lengths: CudaSlice<i32>,
    lengths_host: Vec<i32>,
    /// Layer outputs [rows, D·H], alternating between layers.
    outs: Vec<CudaData>,
    h_n: CudaData,
    kernels: StepKernels,
    addr: Addresses,
    graph: Option<Graph>,
}

/// The plans of one layer, most recently used first.
#[derive(Default)]
pub struct PlanCache {
    plans: Mutex<Vec<Plan>>,
}

impl PlanCache {
    /// How many cached plans replay a captured CUDA graph (the rest issue directly).
    pub fn captured_graphs(&self) -> usize {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.iter().filter(|p| p.graph.is_some()).count()
    }
}

impl Plan {
    fn new(dev: &CudaDevice, key: PlanKey, weights: &[DirectionWeights]) -> Result<Self> {
        let Dims {
            batch,
            hidden,
            dirs,
            layers,
            ..
        } = key.dims;
        let (rows, state, dtype) = (key.dims.rows(), batch * hidden, key.dtype);
        i32_size(state, "batch × hidden")?;
        i32_size(
            rows * (dirs * hidden).max(key.dims.input_size),
            "rows × width",
        )?;
        let stream = dev.stream();
        let zeros = |len: usize| -> Result<CudaData> {
            crate::with_dtype!(dtype, T => Ok(T::wrap_cuda(stream.alloc_zeros::<T>(len)?)))
        };
        let x = dev.alloc_output_data(dtype, rows * key.dims.input_size)?;
        let h0 = zeros(layers * dirs * state)?;
        let lengths = stream.alloc_zeros::<i32>(batch)?;
        let xw = dev.alloc_output::<f32>(rows * hidden)?;
        let hh = dev.alloc_output::<f32>(state)?;
        let ping = [
            dev.alloc_output_data(dtype, state)?,
            dev.alloc_output_data(dtype, state)?,
        ];
        let outs = (0..layers.min(2))
            .map(|_| dev.alloc_output_data(dtype, rows * dirs * hidden))
            .collect::<Result<Vec<_>>>()?;
        let h_n = dev.alloc_output_data(dtype, layers * dirs * state)?;
        let bias = |b: &Option<Tensor>| -> Result<u64> {
            b.as_ref()
                .map_or(Ok(0), |t| Ok(data_ptr(t.cuda_data()?, stream)))
        };
        let slots = weights
            .iter()
            .enumerate()
            .map(|(slot, w)| {
                Ok(SlotAddresses {
                    w_ih: MatRef::of(
                        w.w_ih.cuda_data()?,
                        key.dims.layer_input(slot / dirs),
                        stream,
                    ),
                    w_hh: MatRef::of(w.w_hh.cuda_data()?, hidden, stream),
                    b_ih: bias(&w.b_ih)?,
                    b_hh: bias(&w.b_hh)?,
                })
            })
            .collect::<Result<_>>()?;
        let addr = Addresses {
            x: data_ptr(&x, stream),
            h0: data_ptr(&h0, stream),
            lengths: dev_ptr(&lengths, stream),
            xw: dev_ptr(&xw, stream),
            hh: dev_ptr(&hh, stream),
            ping: [data_ptr(&ping[0], stream), data_ptr(&ping[1], stream)],
            outs: outs.iter().map(|o| data_ptr(o, stream)).collect(),
            h_n: data_ptr(&h_n, stream),
            slots,
        };
        let mut plan = Plan {
            key,
            _scratch: (x, xw, hh, ping),
            h0,
            h0_is_zero: true,
            lengths,
            lengths_host: vec![0; batch],
            outs,
            h_n,
            kernels: StepKernels::new(dev, key.fused, dtype, state)?,
            addr,
            graph: None,
        };
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        // SAFETY: the plan's buffers were allocated above for `key.dims`; `weights` were
        // checked against the same dims by the layer.
        let issued = unsafe { plan.issue(dev) };
        let captured = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        if let (Ok(()), Ok(Some(graph))) = (issued, captured) {
            plan.graph = Some(Graph(graph));
        }
        Ok(plan)
    }

    /// The output of the last layer.
    fn last_out(&self) -> &CudaData {
        &self.outs[(self.key.dims.layers - 1) % self.outs.len()]
    }

    /// Enqueues the whole forward pass on the plan's buffers.
    ///
    /// # Safety
    /// `self.addr` must hold the addresses `Plan::new` took, of buffers sized for
    /// `self.key.dims` and of weights of PyTorch's shapes for those dims, all still alive.
    unsafe fn issue(&self, dev: &CudaDevice) -> Result<()> {
        let PlanKey {
            dims, dtype, act, ..
        } = self.key;
        let Dims {
            seq_len,
            batch,
            hidden,
            dirs,
            layers,
            ..
        } = dims;
        let (st, sb) = dims.strides();
        let (rows, width, state) = (dims.rows(), dirs * hidden, batch * hidden);
        let esize = dtype.size_in_bytes() as u64;
        let a = &self.addr;
        let outs = a.outs.len();
        for layer in 0..layers {
            let in_w = dims.layer_input(layer);
            let x = MatRef {
                ptr: if layer == 0 {
                    a.x
                } else {
                    a.outs[(layer - 1) % outs]
                },
                ld: in_w,
                dtype,
            };
            for dir in 0..dirs {
                let slot = layer * dirs + dir;
                let w = &a.slots[slot];
                let mut step = Step {
                    xw: a.xw,
                    hh: a.hh,
                    b_ih: w.b_ih,
                    b_hh: w.b_hh,
                    h_prev: a.h0 + (slot * state) as u64 * esize,
                    h_next: 0,
                    out: a.outs[layer % outs] + (dir * hidden) as u64 * esize,
                    lengths: a.lengths,
                    batch: batch as i32,
                    hidden: hidden as i32,
                    st: st as i32,
                    sb: sb as i32,
                    out_ld: width as i32,
                    step: 0,
                    reverse: dir as i32,
                    act: act.code(),
                };
                // SAFETY (all three calls): x is [rows, in_w], w_ih [H, in_w], xw [rows, H]
                // f32; h_prev [B, H] (an h0 slot or a ping buffer), w_hh [H, H], hh [B, H] f32;
                // h_next never aliases h_prev (ping-pong, then this slot of h_n).
                dev.gemm_abt(rows, hidden, in_w, x, w.w_ih, a.xw, hidden, 0.0)?;
                for s in 0..seq_len {
                    step.step = s as i32;
                    step.h_next = match s + 1 == seq_len {
                        true => a.h_n + (slot * state) as u64 * esize,
                        false => a.ping[s % 2],
                    };
                    let h_prev = MatRef {
                        ptr: step.h_prev,
                        ld: hidden,
                        dtype,
                    };
                    dev.gemm_abt(batch, hidden, hidden, h_prev, w.w_hh, a.hh, hidden, 0.0)?;
                    step.launch(dev, &self.kernels)?;
                    step.h_prev = step.h_next;
                }
            }
        }
        Ok(())
    }

    /// Copies the call's tensors in, replays, and copies output and h_n out.
    fn run(&mut self, dev: &CudaDevice, call: &Call<'_>) -> Result<(Tensor, Tensor)> {
        let stream = dev.stream();
        let dims = self.key.dims;
        let esize = self.key.dtype.size_in_bytes();
        let input = call.input.cuda_data()?;
        // SAFETY: input was checked to be [T, B, I] (or [B, T, I]) of the plan's dtype, the
        // same size as `x`; h0 to be [L·D, B, H] like `self.h0`.
        unsafe {
            dev.copy_async(self.addr.x, data_ptr(input, stream), input.len() * esize)?;
            let h0_bytes = self.h0.len() * esize;
            match call.h0 {
                Some(h0) => {
                    dev.copy_async(self.addr.h0, data_ptr(h0.cuda_data()?, stream), h0_bytes)?;
                    self.h0_is_zero = false;
                }
                None if !self.h0_is_zero => {
                    dev.fill_async(self.addr.h0, 0, h0_bytes)?;
                    self.h0_is_zero = true;
                }
                None => {}
            }
        }
        let lengths: Vec<i32> = call.lengths.iter().map(|&l| l as i32).collect();
        if lengths != self.lengths_host {
            self.lengths_host = lengths;
            stream.memcpy_htod(&self.lengths_host, &mut self.lengths)?;
        }
        if dev.poisoning() {
            // A replay must rewrite every element, not inherit the last call's values.
            for buf in self.outs.iter().chain([&self.h_n]) {
                // SAFETY: `buf` is a live plan buffer of buf.len() elements.
                unsafe { dev.fill_async(data_ptr(buf, stream), POISON_BYTE, buf.len() * esize)? };
            }
        }
        match &self.graph {
            Some(graph) => graph.0.launch()?,
            // SAFETY: as in `Plan::new`; the weights outlive the cache (both belong to the layer).
            None => unsafe { self.issue(dev)? },
        }
        let copy_out = |src: &CudaData| -> Result<CudaData> {
            let dst = dev.alloc_output_data(self.key.dtype, src.len())?;
            // SAFETY: `dst` was just allocated with src.len() elements of the same dtype.
            unsafe {
                dev.copy_async(
                    data_ptr(&dst, stream),
                    data_ptr(src, stream),
                    src.len() * esize,
                )?
            };
            Ok(dst)
        };
        Ok((
            Tensor::from_cuda_data(copy_out(self.last_out())?, &dims.output_shape())?,
            Tensor::from_cuda_data(copy_out(&self.h_n)?, &dims.state_shape())?,
        ))
    }
}

pub(super) fn forward(
    dev: &CudaDevice,
    algo: Algo,
    call: &Call<'_>,
    cache: &PlanCache,
) -> Result<(Tensor, Tensor)> {
    let key = PlanKey {
        dims: call.dims,
        fused: algo != Algo::Naive,
        dtype: call.input.dtype(),
        act: call.act,
    };
    let mut plans = cache.plans.lock().unwrap_or_else(|p| p.into_inner());
    let plan = match plans.iter().position(|p| p.key == key) {
        Some(k) => plans.remove(k),
        None => Plan::new(dev, key, call.weights)?,
    };
    plans.insert(0, plan);
    plans.truncate(MAX_PLANS);
    plans[0].run(dev, call)
}
