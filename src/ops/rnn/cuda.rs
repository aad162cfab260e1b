//! CUDA forward. Per layer-direction: one cuBLAS GEMM for the input projection of all steps
//! (f32 out), then per step one GEMM for W_hh·h_{t-1} (f32 out) and the elementwise update:
//! one fused kernel, or the naive chain of six. Buffers are allocated before the time loop;
//! nothing in it allocates or waits for the host.

use super::{Algo, Call, Dims};
use crate::device::{data_ptr, dev_ptr, CudaDevice, MatRef};
use crate::dtype::{CudaData, DType, Element};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

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
        tmp: CudaSlice<f32>,
    },
}

impl StepKernels {
    fn new(dev: &CudaDevice, algo: Algo, dtype: DType, state: usize) -> Result<Self> {
        Ok(match algo {
            Algo::Auto | Algo::Fused => {
                StepKernels::Fused(dev.function(KERNELS, "rnn_step_fused", dtype)?)
            }
            Algo::Naive => StepKernels::Naive {
                gather: dev.function(KERNELS, "rnn_naive_gather", DType::F32)?,
                add: dev.function(KERNELS, "rnn_naive_add", DType::F32)?,
                add_bias: dev.function(KERNELS, "rnn_naive_add_bias", dtype)?,
                activation: dev.function(KERNELS, "rnn_naive_activation", DType::F32)?,
                store: dev.function(KERNELS, "rnn_naive_store", dtype)?,
                tmp: dev.alloc_output::<f32>(state)?,
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
    unsafe fn launch(&self, dev: &CudaDevice, kernels: &mut StepKernels) -> Result<()> {
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
                tmp,
            } => {
                let tmp = dev_ptr(tmp, stream);
                let n_i32 = n as i32;
                stream
                    .launch_builder(gather)
                    .arg(&self.xw)
                    .arg(&tmp)
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
                    .arg(&tmp)
                    .arg(&self.hh)
                    .arg(&n_i32)
                    .launch(cfg)?;
                for bias in [&self.b_ih, &self.b_hh] {
                    if *bias != 0 {
                        stream
                            .launch_builder(add_bias)
                            .arg(&tmp)
                            .arg(bias)
                            .arg(&self.batch)
                            .arg(&self.hidden)
                            .launch(cfg)?;
                    }
                }
                stream
                    .launch_builder(activation)
                    .arg(&tmp)
                    .arg(&n_i32)
                    .arg(&self.act)
                    .launch(cfg)?;
                stream
                    .launch_builder(store)
                    .arg(&tmp)
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

pub(super) fn forward(dev: &CudaDevice, algo: Algo, call: &Call<'_>) -> Result<(Tensor, Tensor)> {
    let Call {
        act,
        ref dims,
        weights,
        input,
        h0,
        lengths,
    } = *call;
    let dtype = input.dtype();
    let Dims {
        seq_len,
        batch,
        hidden,
        dirs,
        layers,
        ..
    } = *dims;
    let (st, sb) = dims.strides();
    let rows = dims.rows();
    let width = dirs * hidden;
    let state = batch * hidden;
    let esize = dtype.size_in_bytes() as u64;
    // Kernels index elements with i32 and rows with i64.
    i32_size(state, "batch × hidden")?;
    i32_size(rows * width.max(dims.input_size), "rows × width")?;
    let stream = dev.stream();

    let lengths_i32: Vec<i32> = lengths.iter().map(|&l| l as i32).collect();
    let lengths_dev = dev.upload(&lengths_i32)?;
    let xw = dev.alloc_output::<f32>(rows * hidden)?;
    let hh = dev.alloc_output::<f32>(state)?;
    let ping = [
        dev.alloc_output_data(dtype, state)?,
        dev.alloc_output_data(dtype, state)?,
    ];
    let zeros = match h0 {
        Some(_) => None,
        None => Some(crate::with_dtype!(dtype, T => T::wrap_cuda(stream.alloc_zeros::<T>(state)?))),
    };
    let h_n = dev.alloc_output_data(dtype, layers * dirs * state)?;
    let mut kernels = StepKernels::new(dev, algo, dtype, state)?;

    let xw_ptr = dev_ptr(&xw, stream);
    let hh_ptr = dev_ptr(&hh, stream);
    let h_n_ptr = data_ptr(&h_n, stream);
    let ping_ptrs = [data_ptr(&ping[0], stream), data_ptr(&ping[1], stream)];
    // With h0 each layer-direction starts from its slot; without, all start from one zero state.
    let (h0_ptr, h0_slot_stride) = match (h0, &zeros) {
        (Some(h0), _) => (data_ptr(h0.cuda_data()?, stream), state as u64 * esize),
        (_, Some(z)) => (data_ptr(z, stream), 0),
        (None, None) => unreachable!("zeros exist whenever h0 is absent"),
    };

    let mut layer_out: Option<CudaData> = None;
    for layer in 0..layers {
        let in_w = dims.layer_input(layer);
        let out = dev.alloc_output_data(dtype, rows * width)?;
        let x = match &layer_out {
            None => MatRef::of(input.cuda_data()?, in_w, stream),
            Some(prev) => MatRef::of(prev, in_w, stream),
        };
        let out_base = data_ptr(&out, stream);
        for dir in 0..dirs {
            let slot = layer * dirs + dir;
            let w = &weights[slot];
            let w_ih = MatRef::of(w.w_ih.cuda_data()?, in_w, stream);
            let w_hh = MatRef::of(w.w_hh.cuda_data()?, hidden, stream);
            let bias_ptr = |b: &Option<Tensor>| -> Result<u64> {
                Ok(match b {
                    Some(t) => data_ptr(t.cuda_data()?, stream),
                    None => 0,
                })
            };
            let mut step = Step {
                xw: xw_ptr,
                hh: hh_ptr,
                b_ih: bias_ptr(&w.b_ih)?,
                b_hh: bias_ptr(&w.b_hh)?,
                h_prev: h0_ptr + slot as u64 * h0_slot_stride,
                h_next: 0,
                out: out_base + (dir * hidden) as u64 * esize,
                lengths: dev_ptr(&lengths_dev, stream),
                batch: batch as i32,
                hidden: hidden as i32,
                st: st as i32,
                sb: sb as i32,
                out_ld: width as i32,
                step: 0,
                reverse: dir as i32,
                act: act.code(),
            };
            // SAFETY: x is [rows, in_w], w_ih [H, in_w], xw [rows, H] f32 (sizes checked by
            // the layer and allocated above).
            unsafe { dev.gemm_abt(rows, hidden, in_w, x, w_ih, xw_ptr, hidden, 0.0)? };
            for s in 0..seq_len {
                step.step = s as i32;
                step.h_next = if s + 1 == seq_len {
                    h_n_ptr + (slot * state) as u64 * esize
                } else {
                    ping_ptrs[s % 2]
                };
                let h_prev = MatRef {
                    ptr: step.h_prev,
                    ld: hidden,
                    dtype,
                };
                // SAFETY: h_prev is [B, H] (h0 slot, zeros or a ping buffer), w_hh [H, H],
                // hh [B, H] f32.
                unsafe { dev.gemm_abt(batch, hidden, hidden, h_prev, w_hh, hh_ptr, hidden, 0.0)? };
                // SAFETY: every address in `step` was derived above from buffers sized for
                // these dims; h_next never aliases h_prev (ping-pong, then the h_n slot).
                unsafe { step.launch(dev, &mut kernels)? };
                step.h_prev = step.h_next;
            }
        }
        layer_out = Some(out);
    }
    let out = layer_out.expect("at least one layer");
    Ok((
        Tensor::from_cuda_data(out, &dims.output_shape())?,
        Tensor::from_cuda_data(h_n, &dims.state_shape())?,
    ))
}
