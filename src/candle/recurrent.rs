//! A recurrent stack over candle tensors. Its weights are candle tensors (a `VarBuilder`'s, so
//! candle's optimisers update them); each call copies them into our module in place (as
//! PyTorch's `flatten_parameters` does, keeping the CUDA graphs captured over them) and runs
//! one fused pass. When anything needs a gradient the pass enters candle's graph as one custom
//! op whose backward is our BPTT.

use super::convert::{self, piece, refuse, to_candle, wrap, OverViews, Piece, Scratch};
use crate::device::Device;
use crate::nn::recurrent::{Recurrent, Spec};
use crate::ops::recurrent::{Outputs, Reserve};
use crate::tensor::Tensor;
use candle_core as candle;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use std::sync::{Arc, Mutex, MutexGuard};

/// Parameters of a stack and our module that runs it.
pub(crate) struct Stack {
    pub spec: Spec,
    /// In `Spec::parameters` order.
    pub weights: Vec<candle::Tensor>,
    device: candle::Device,
    dtype: candle::DType,
    core: Arc<Mutex<Recurrent>>,
    scratch: Arc<Scratch>,
}

/// What a pass returns, as candle tensors in the stack's dtype.
pub(crate) struct Pass {
    pub output: candle::Tensor,
    pub h_n: candle::Tensor,
    pub c_n: Option<candle::Tensor>,
    /// Asked for with `cells`: the LSTM's cell state after every step of the last layer's
    /// forward direction, shaped like its output (values only: no gradient flows through it).
    pub cells: Option<candle::Tensor>,
}

/// The optional tensors of a call.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extras<'a> {
    pub h0: Option<&'a candle::Tensor>,
    pub c0: Option<&'a candle::Tensor>,
    pub lengths: Option<&'a [usize]>,
    /// Keep the LSTM's per-step cell states (`Pass::cells`).
    pub cells: bool,
}

impl Stack {
    /// The parameters of `spec` from `vb`: `param` gives, for each PyTorch name, the name to
    /// read and how to make the tensor where `vb` creates it.
    pub fn load(
        spec: Spec,
        vb: &candle_nn::VarBuilder,
        param: impl Fn(&str) -> (String, candle_nn::Init),
    ) -> candle::Result<Self> {
        spec.validate().map_err(wrap)?;
        let weights = spec
            .parameters()
            .map(|(name, shape)| {
                let (name, init) = param(&name);
                vb.get_with_hints(shape, &name, init)
            })
            .collect::<candle::Result<Vec<_>>>()?;
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        convert::dtype(dtype)?;
        let ours = convert::device(&device)?;
        // Values are copied in before every pass; these only size the buffers.
        let compute = convert::dtype(compute_dtype(&device, dtype))?;
        let core = Recurrent::random(spec, &ours, compute, 0).map_err(wrap)?;
        Ok(Stack {
            spec,
            weights,
            device,
            dtype,
            core: Arc::new(Mutex::new(core)),
            scratch: Arc::default(),
        })
    }

    pub fn device(&self) -> &candle::Device {
        &self.device
    }

    pub fn dtype(&self) -> candle::DType {
        self.dtype
    }

    /// Runs the stack over `input` (PyTorch's layout: [T, B, I], or [B, T, I] when
    /// batch_first).
    pub fn run(&self, input: &candle::Tensor, extras: Extras<'_>) -> candle::Result<Pass> {
        for (name, t) in [("input", Some(input)), ("h0", extras.h0), ("c0", extras.c0)] {
            let Some(t) = t else { continue };
            if t.dtype() != self.dtype {
                return Err(refuse(format!(
                    "{name} is {:?}, the layer's parameters {:?}",
                    t.dtype(),
                    self.dtype
                )));
            }
            if !t.device().same_device(&self.device) {
                return Err(refuse(format!(
                    "{name} is on {:?}, the layer on {:?}",
                    t.device().location(),
                    self.device.location()
                )));
            }
        }
        let compute = compute_dtype(&self.device, self.dtype);
        let cast = |t: &candle::Tensor| t.to_dtype(compute)?.contiguous();
        let x = cast(input)?;
        let weights = self
            .weights
            .iter()
            .map(cast)
            .collect::<candle::Result<Vec<_>>>()?;
        let h0 = extras.h0.map(cast).transpose()?;
        let c0 = extras.c0.map(cast).transpose()?;
        let tracked = x.track_op()
            || weights.iter().any(|w| w.track_op())
            || h0.iter().chain(&c0).any(|t| t.track_op());
        let shapes = self.shapes(&x)?;
        self.check_state(&shapes, h0.as_ref(), c0.as_ref())?;
        let pass = if tracked {
            self.run_tracked(&x, &weights, h0.as_ref(), c0.as_ref(), &shapes, extras)?
        } else {
            self.run_plain(&x, &weights, h0.as_ref(), c0.as_ref(), extras)?
        };
        let back = |t: candle::Tensor| t.to_dtype(self.dtype);
        Ok(Pass {
            output: back(pass.output)?,
            h_n: back(pass.h_n)?,
            c_n: pass.c_n.map(back).transpose()?,
            cells: pass.cells.map(back).transpose()?,
        })
    }

    /// The shapes of the call's results and state, from the input's.
    fn shapes(&self, x: &candle::Tensor) -> candle::Result<Shapes> {
        let s = &self.spec;
        let dims = s.input_dims(x.dims()).map_err(wrap)?;
        Ok(Shapes {
            output: dims.output_shape(),
            h: dims.state_shape(),
            c: (s.cell == crate::ops::recurrent::Cell::Lstm).then(|| dims.cell_shape()),
        })
    }

    /// h0 and c0 shaped as the input's batch needs (before they are flattened into the op).
    fn check_state(
        &self,
        shapes: &Shapes,
        h0: Option<&candle::Tensor>,
        c0: Option<&candle::Tensor>,
    ) -> candle::Result<()> {
        let wanted = [("h0", h0, Some(&shapes.h)), ("c0", c0, shapes.c.as_ref())];
        for (name, t, shape) in wanted {
            match (t, shape) {
                (Some(t), Some(shape)) if t.dims() != shape.as_slice() => {
                    return Err(wrap(crate::Error::shape(
                        name,
                        format!("{shape:?}"),
                        t.dims(),
                    )))
                }
                (Some(_), None) => {
                    return Err(refuse(format!("{name} for a layer without a cell state")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Nothing needs a gradient: our module reads the tensors (in place on CUDA) and its
    /// results become candle's.
    fn run_plain(
        &self,
        x: &candle::Tensor,
        weights: &[candle::Tensor],
        h0: Option<&candle::Tensor>,
        c0: Option<&candle::Tensor>,
        extras: Extras<'_>,
    ) -> candle::Result<Pass> {
        let ours = convert::device(&self.device)?;
        let mut core = lock(&self.core);
        let guards: Vec<_> = weights.iter().map(|w| w.storage_and_layout()).collect();
        let pieces = guards
            .iter()
            .zip(weights)
            .map(|((s, l), w)| piece(s, l, 0, w.dims(), &ours, &self.scratch))
            .collect::<candle::Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = pieces.iter().map(|p| &**p).collect();
        core.assign_parameters(&refs).map_err(wrap)?;
        let (xs, xl) = x.storage_and_layout();
        let x_piece = piece(&xs, xl, 0, x.dims(), &ours, &self.scratch)?;
        let h_guard = h0.map(|t| t.storage_and_layout());
        let h_piece = match (&h_guard, h0) {
            (Some((s, l)), Some(t)) => Some(piece(s, l, 0, t.dims(), &ours, &self.scratch)?),
            _ => None,
        };
        let c_guard = c0.map(|t| t.storage_and_layout());
        let c_piece = match (&c_guard, c0) {
            (Some((s, l)), Some(t)) => Some(piece(s, l, 0, t.dims(), &ours, &self.scratch)?),
            _ => None,
        };
        let (h, c) = (h_piece.as_deref(), c_piece.as_deref());
        let (out, cells) = if extras.cells {
            core.forward_with_cells(&x_piece, h, c, extras.lengths)
                .map_err(wrap)?
        } else {
            (
                core.forward(&x_piece, h, c, extras.lengths).map_err(wrap)?,
                None,
            )
        };
        let used = pieces
            .into_iter()
            .chain([x_piece])
            .chain(h_piece)
            .chain(c_piece);
        self.scratch.keep(used);
        let to = |t: Tensor| to_candle(t, &self.device);
        Ok(Pass {
            output: to(out.output)?,
            h_n: to(out.h_n)?,
            c_n: out.c_n.map(to).transpose()?,
            cells: cells.map(to).transpose()?,
        })
    }

    /// Something needs a gradient: one custom op over (input, every weight flattened into one
    /// tensor, h0 and c0 flattened into one), whose result holds output, h_n and c_n.
    fn run_tracked(
        &self,
        x: &candle::Tensor,
        weights: &[candle::Tensor],
        h0: Option<&candle::Tensor>,
        c0: Option<&candle::Tensor>,
        shapes: &Shapes,
        extras: Extras<'_>,
    ) -> candle::Result<Pass> {
        let flat = |ts: &[&candle::Tensor]| {
            let parts = ts
                .iter()
                .map(|t| t.flatten_all())
                .collect::<candle::Result<Vec<_>>>()?;
            candle::Tensor::cat(&parts, 0)
        };
        let packed = flat(&weights.iter().collect::<Vec<_>>())?;
        let zeros = |shape: &[usize]| candle::Tensor::zeros(shape, x.dtype(), x.device());
        let h0 = match h0 {
            Some(h) => h.clone(),
            None => zeros(&shapes.h)?,
        };
        let mut state = vec![&h0];
        let c0 = match (&shapes.c, c0) {
            (Some(_), Some(c)) => Some(c.clone()),
            (Some(shape), None) => Some(zeros(shape)?),
            (None, _) => None,
        };
        state.extend(&c0);
        let state = flat(&state)?;
        let cells = Arc::new(Mutex::new(None));
        let op = PassOp {
            core: self.core.clone(),
            scratch: self.scratch.clone(),
            spec: self.spec,
            shapes: shapes.clone(),
            lengths: extras.lengths.map(<[usize]>::to_vec),
            keep_cells: extras.cells,
            cells: cells.clone(),
            reserve: Mutex::new(None),
            device: self.device.clone(),
        };
        let result = x.apply_op3_arc(&packed, &state, Arc::new(Box::new(op)))?;
        let mut at = 0;
        let mut take = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            at += n;
            result.narrow(0, at - n, n)?.reshape(shape)
        };
        let output = take(&shapes.output)?;
        let h_n = take(&shapes.h)?;
        let c_n = shapes.c.as_ref().map(|s| take(s)).transpose()?;
        let cells = lock(&cells).take();
        Ok(Pass {
            output,
            h_n,
            c_n,
            cells: cells.map(|t| to_candle(t, &self.device)).transpose()?,
        })
    }
}

/// The dtype our module computes in on `device`: f32 on the CPU (its only one), the
/// parameters' own on CUDA.
fn compute_dtype(device: &candle::Device, dtype: candle::DType) -> candle::DType {
    match device {
        candle::Device::Cpu => candle::DType::F32,
        _ => dtype,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last layer's forward-direction cell states, for an LSTM.
fn last_cells(
    core: &Recurrent,
    reserve: &Reserve,
    device: &Device,
) -> candle::Result<Option<Tensor>> {
    let slot = (core.spec.num_layers - 1) * core.spec.directions();
    reserve.cell_states(device, slot).map_err(wrap)
}

/// The shapes of output, h_n and (LSTM) c_n, which are also those of h0 and c0.
#[derive(Clone)]
struct Shapes {
    output: Vec<usize>,
    h: Vec<usize>,
    c: Option<Vec<usize>>,
}

/// The custom op of one tracked pass; it keeps the pass's reserve for its backward.
struct PassOp {
    core: Arc<Mutex<Recurrent>>,
    scratch: Arc<Scratch>,
    spec: Spec,
    shapes: Shapes,
    lengths: Option<Vec<usize>>,
    keep_cells: bool,
    cells: Arc<Mutex<Option<Tensor>>>,
    reserve: Mutex<Option<Reserve>>,
    device: candle::Device,
}

/// The training-mode forward over views of (input, packed weights, packed state); the result
/// packs output, h_n and c_n.
impl OverViews for PassOp {
    fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    #[cfg(feature = "candle-cuda")]
    fn device(&self) -> &candle::Device {
        &self.device
    }

    fn forward<'a>(
        &self,
        view: impl Fn(usize, usize, &[usize]) -> candle::Result<Piece<'a>>,
        ours: &Device,
    ) -> candle::Result<Tensor> {
        let mut core = lock(&self.core);
        let weights = self.weight_pieces(|off, shape| view(1, off, shape))?;
        let refs: Vec<&Tensor> = weights.iter().map(|p| &**p).collect();
        core.assign_parameters(&refs).map_err(wrap)?;
        let x = view(0, 0, &self.input_shape())?;
        let h0 = view(2, 0, &self.shapes.h)?;
        let h_len: usize = self.shapes.h.iter().product();
        let c0 = self
            .shapes
            .c
            .as_ref()
            .map(|s| view(2, h_len, s))
            .transpose()?;
        let (out, reserve) = core
            .forward_train(&x, Some(&h0), c0.as_deref(), self.lengths.as_deref())
            .map_err(wrap)?;
        if self.keep_cells {
            *lock(&self.cells) = last_cells(&core, &reserve, ours)?;
        }
        *lock(&self.reserve) = Some(reserve);
        self.scratch
            .keep(weights.into_iter().chain([x, h0]).chain(c0));
        pack(out).map_err(wrap)
    }
}

impl PassOp {
    /// Each parameter's view of the packed weights, in order.
    fn weight_pieces<'a>(
        &self,
        view: impl Fn(usize, &[usize]) -> candle::Result<Piece<'a>>,
    ) -> candle::Result<Vec<Piece<'a>>> {
        let mut at = 0;
        self.spec
            .parameters()
            .map(|(_, shape)| {
                let n: usize = shape.iter().product();
                at += n;
                view(at - n, &shape)
            })
            .collect()
    }

    fn input_shape(&self) -> Vec<usize> {
        let o = &self.shapes.output;
        vec![o[0], o[1], self.spec.input_size]
    }
}

/// output, h_n and c_n flattened into one tensor.
fn pack(out: Outputs) -> crate::Result<Tensor> {
    let parts: Vec<Tensor> = [Some(out.output), Some(out.h_n), out.c_n]
        .into_iter()
        .flatten()
        .map(|t| {
            let n = t.numel();
            t.reshape(&[n])
        })
        .collect::<crate::Result<_>>()?;
    let refs: Vec<&Tensor> = parts.iter().collect();
    crate::ops::concat::concat(&refs, 0)
}

impl CustomOp3 for PassOp {
    fn name(&self) -> &'static str {
        "fused-rnn-recurrent"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        convert::host_forward(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle::CudaStorage,
        l1: &Layout,
        s2: &candle::CudaStorage,
        l2: &Layout,
        s3: &candle::CudaStorage,
        l3: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        convert::cuda::forward(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        x: &candle::Tensor,
        packed: &candle::Tensor,
        state: &candle::Tensor,
        _res: &candle::Tensor,
        grad_res: &candle::Tensor,
    ) -> candle::Result<(
        Option<candle::Tensor>,
        Option<candle::Tensor>,
        Option<candle::Tensor>,
    )> {
        let ours = convert::device(&self.device)?;
        let reserve = lock(&self.reserve);
        let reserve = reserve
            .as_ref()
            .ok_or_else(|| refuse("the backward of a pass whose forward kept nothing"))?;
        let mut core = lock(&self.core);
        // The weights as the forward saw them (the packed tensor is the forward's own).
        let packed = packed.contiguous()?;
        let (ps, pl) = packed.storage_and_layout();
        let weights =
            self.weight_pieces(|off, shape| piece(&ps, pl, off, shape, &ours, &self.scratch))?;
        let refs: Vec<&Tensor> = weights.iter().map(|p| &**p).collect();
        core.assign_parameters(&refs).map_err(wrap)?;
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let n_out: usize = self.shapes.output.iter().product();
        let n_h: usize = self.shapes.h.iter().product();
        let g_out = piece(&gs, gl, 0, &self.shapes.output, &ours, &self.scratch)?;
        let g_h = piece(&gs, gl, n_out, &self.shapes.h, &ours, &self.scratch)?;
        let g_c = self
            .shapes
            .c
            .as_ref()
            .map(|s| piece(&gs, gl, n_out + n_h, s, &ours, &self.scratch))
            .transpose()?;
        let grads = core
            .backward(reserve, &g_out, Some(&g_h), g_c.as_deref())
            .map_err(wrap)?;
        self.scratch
            .keep(weights.into_iter().chain([g_out, g_h]).chain(g_c));
        let to = |t: Tensor| to_candle(t, &self.device);
        let dx = x.track_op().then(|| to(grads.input)).transpose()?;
        let (dh0, dc0) = (grads.h0, grads.c0);
        let params = grads
            .params
            .into_iter()
            .flat_map(|d| {
                [Some(d.w_ih), Some(d.w_hh), d.b_ih, d.b_hh, d.w_hr]
                    .into_iter()
                    .flatten()
            })
            .map(|g| to(g)?.flatten_all())
            .collect::<candle::Result<Vec<_>>>()?;
        let dw = candle::Tensor::cat(&params, 0)?;
        let dstate = if state.track_op() {
            let mut parts = vec![to(dh0)?.flatten_all()?];
            if let Some(dc0) = dc0 {
                parts.push(to(dc0)?.flatten_all()?);
            }
            Some(candle::Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        Ok((dx, Some(dw), dstate))
    }
}
