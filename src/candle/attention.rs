//! `nn::Attention` over candle tensors: additive, general or dot scores, key-length masks, one
//! or many queries per row. Parameters come from a `VarBuilder` under PyTorch's names
//! (`query_proj.weight`, `key_proj.bias`, `score.weight`, ...); a call copies them into our
//! layer in place and runs the fused pass, and when anything needs a gradient the pass is one
//! custom op whose backward is ours (scores recomputed, nothing kept).

use super::convert::{self, piece, refuse, to_candle, wrap, OverViews, Piece, Scratch};
use crate::device::Device;
use crate::nn::{self, AttentionConfig, Module};
use crate::tensor::Tensor;
use candle_core as candle;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use candle_nn::{Init, VarBuilder};
use std::sync::{Arc, Mutex, MutexGuard};

/// What `Attention::forward` returns.
#[derive(Debug, Clone)]
pub struct Attended {
    /// [B, Dv], or [B, Tq, Dv] for queries [B, Tq, Dq].
    pub context: candle::Tensor,
    /// [B, L] or [B, Tq, L], zero past each row's key length. Values only: gradients flow
    /// through the context.
    pub weights: candle::Tensor,
}

/// Soft attention over candle tensors.
pub struct Attention {
    config: AttentionConfig,
    /// (PyTorch name, tensor) in state_dict order.
    params: Vec<(String, candle::Tensor)>,
    device: candle::Device,
    dtype: candle::DType,
    core: Arc<Mutex<nn::Attention>>,
    scratch: Arc<Scratch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Attention {
    /// The parameters of `config` from `vb`, made where `vb` creates them as PyTorch's
    /// nn.Linear does (uniform in ±1/√fan_in).
    pub fn new(config: AttentionConfig, vb: VarBuilder) -> candle::Result<Self> {
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        convert::dtype(dtype)?;
        let ours = convert::device(&device)?;
        let compute = match device {
            candle::Device::Cpu => crate::DType::F32,
            _ => convert::dtype(dtype)?,
        };
        // Our layer of the same config names and sizes every parameter; its values are
        // replaced before every pass.
        let core = nn::Attention::random(config, &ours, compute, 0).map_err(wrap)?;
        let shapes: Vec<(String, Vec<usize>)> = core
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        let fan_in = |name: &str| {
            let weight = name.replace(".bias", ".weight");
            shapes
                .iter()
                .find(|(n, _)| *n == weight)
                .map_or(1, |(_, s)| s[1])
        };
        let params = shapes
            .iter()
            .map(|(name, shape)| {
                let bound = 1.0 / (fan_in(name) as f64).sqrt();
                let init = Init::Uniform {
                    lo: -bound,
                    up: bound,
                };
                Ok((
                    name.clone(),
                    vb.get_with_hints(shape.as_slice(), name, init)?,
                ))
            })
            .collect::<candle::Result<Vec<_>>>()?;
        Ok(Attention {
            config,
            params,
            device,
            dtype,
            core: Arc::new(Mutex::new(core)),
            scratch: Arc::default(),
        })
    }

    pub fn config(&self) -> &AttentionConfig {
        &self.config
    }

    /// Every parameter with its PyTorch name, in state_dict order.
    pub fn parameters(&self) -> Vec<(String, candle::Tensor)> {
        self.params.clone()
    }

    /// Attends `query` ([B, Dq] or [B, Tq, Dq]) over `keys` [B, L, Dk] with `values`
    /// [B, L, Dv] (the keys when absent), each row over its first `lengths[b]` keys (all when
    /// absent).
    pub fn forward(
        &self,
        query: &candle::Tensor,
        keys: &candle::Tensor,
        values: Option<&candle::Tensor>,
        lengths: Option<&[usize]>,
    ) -> candle::Result<Attended> {
        for (name, t) in [
            ("query", Some(query)),
            ("keys", Some(keys)),
            ("values", values),
        ] {
            let Some(t) = t else { continue };
            if t.dtype() != self.dtype || !t.device().same_device(&self.device) {
                return Err(refuse(format!(
                    "{name} is {:?} on {:?}, the layer {:?} on {:?}",
                    t.dtype(),
                    t.device().location(),
                    self.dtype,
                    self.device.location()
                )));
            }
        }
        let &[b, l, dk] = keys.dims() else {
            return Err(refuse(format!(
                "keys: expected [B, L, Dk], got {:?}",
                keys.dims()
            )));
        };
        let tq = match query.dims() {
            [qb, _] if *qb == b => None,
            [qb, tq, _] if *qb == b => Some(*tq),
            other => {
                return Err(refuse(format!(
                    "query: expected [{b}, Dq] or [{b}, Tq, Dq], got {other:?}"
                )))
            }
        };
        let dv = match values.map(|v| v.dims()) {
            None => dk,
            Some(&[vb, vl, dv]) if (vb, vl) == (b, l) => dv,
            Some(other) => {
                return Err(refuse(format!(
                    "values: expected [{b}, {l}, Dv], got {other:?}"
                )))
            }
        };
        let compute = match self.device {
            candle::Device::Cpu => candle::DType::F32,
            _ => self.dtype,
        };
        let cast = |t: &candle::Tensor| t.to_dtype(compute)?.contiguous();
        let (q, k) = (cast(query)?, cast(keys)?);
        let v = values.map(cast).transpose()?;
        let weights: Vec<candle::Tensor> = self
            .params
            .iter()
            .map(|(_, t)| cast(t))
            .collect::<candle::Result<_>>()?;
        let (rows, queries) = (b, tq.unwrap_or(1));
        let op = AttendOp {
            core: self.core.clone(),
            scratch: self.scratch.clone(),
            shapes: OpShapes {
                query: q.dims().to_vec(),
                keys: k.dims().to_vec(),
                values: v.as_ref().map(|v| v.dims().to_vec()),
                params: weights.iter().map(|w| w.dims().to_vec()).collect(),
                context: match tq {
                    None => vec![rows, dv],
                    Some(_) => vec![rows, queries, dv],
                },
                weights: match tq {
                    None => vec![rows, l],
                    Some(_) => vec![rows, queries, l],
                },
            },
            lengths: lengths.map(<[usize]>::to_vec),
            device: self.device.clone(),
        };
        let flat = |ts: &[&candle::Tensor]| -> candle::Result<candle::Tensor> {
            if ts.is_empty() {
                // Dot scores have no parameters: a stand-in that needs no gradient.
                return candle::Tensor::zeros(1, compute, &self.device);
            }
            let parts = ts
                .iter()
                .map(|t| t.flatten_all())
                .collect::<candle::Result<Vec<_>>>()?;
            candle::Tensor::cat(&parts, 0)
        };
        let mut source = vec![&k];
        source.extend(&v);
        let source = flat(&source)?;
        let packed = flat(&weights.iter().collect::<Vec<_>>())?;
        let shapes = op.shapes.clone();
        let result = q.apply_op3_arc(&source, &packed, Arc::new(Box::new(op)))?;
        let n_context: usize = shapes.context.iter().product();
        let n_weights: usize = shapes.weights.iter().product();
        let context = result.narrow(0, 0, n_context)?.reshape(shapes.context)?;
        let weights = result
            .narrow(0, n_context, n_weights)?
            .reshape(shapes.weights)?
            .detach();
        Ok(Attended {
            context: context.to_dtype(self.dtype)?,
            weights: weights.to_dtype(self.dtype)?,
        })
    }
}

#[derive(Clone)]
struct OpShapes {
    query: Vec<usize>,
    keys: Vec<usize>,
    values: Option<Vec<usize>>,
    params: Vec<Vec<usize>>,
    context: Vec<usize>,
    weights: Vec<usize>,
}

/// One attention pass as a custom op over (query, keys and values flattened into one tensor,
/// the parameters flattened into one); its result holds the context, then the weights.
struct AttendOp {
    core: Arc<Mutex<nn::Attention>>,
    scratch: Arc<Scratch>,
    shapes: OpShapes,
    lengths: Option<Vec<usize>>,
    device: candle::Device,
}

impl AttendOp {
    /// Our views of the arguments: query, keys, values, parameters.
    #[allow(clippy::type_complexity)]
    fn views<'a>(
        &self,
        view: impl Fn(usize, usize, &[usize]) -> candle::Result<Piece<'a>>,
    ) -> candle::Result<(Piece<'a>, Piece<'a>, Option<Piece<'a>>, Vec<Piece<'a>>)> {
        let s = &self.shapes;
        let q = view(0, 0, &s.query)?;
        let k = view(1, 0, &s.keys)?;
        let n_keys: usize = s.keys.iter().product();
        let v = s
            .values
            .as_ref()
            .map(|shape| view(1, n_keys, shape))
            .transpose()?;
        let mut at = 0;
        let params = s
            .params
            .iter()
            .map(|shape| {
                let n: usize = shape.iter().product();
                at += n;
                view(2, at - n, shape)
            })
            .collect::<candle::Result<Vec<_>>>()?;
        Ok((q, k, v, params))
    }
}

/// The pass over views of (query, packed keys and values, packed parameters); the result packs
/// the context and the weights.
impl OverViews for AttendOp {
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
        _ours: &Device,
    ) -> candle::Result<Tensor> {
        let (q, k, v, params) = self.views(view)?;
        let mut core = lock(&self.core);
        let refs: Vec<&Tensor> = params.iter().map(|p| &**p).collect();
        core.assign_parameters(&refs).map_err(wrap)?;
        let keys = core
            .keys(&k, v.as_deref(), self.lengths.as_deref())
            .map_err(wrap)?;
        let out = core.attend(&keys, &q, true).map_err(wrap)?;
        let weights = out.weights.expect("weights were asked for");
        let (nc, nw) = (out.context.numel(), weights.numel());
        let parts = [out.context.reshape(&[nc]), weights.reshape(&[nw])];
        let [c, w] = parts.map(|p| p.map_err(wrap));
        crate::ops::concat::concat(&[&c?, &w?], 0).map_err(wrap)
    }
}

impl CustomOp3 for AttendOp {
    fn name(&self) -> &'static str {
        "fused-rnn-attention"
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
        query: &candle::Tensor,
        source: &candle::Tensor,
        packed: &candle::Tensor,
        _res: &candle::Tensor,
        grad_res: &candle::Tensor,
    ) -> candle::Result<(
        Option<candle::Tensor>,
        Option<candle::Tensor>,
        Option<candle::Tensor>,
    )> {
        let ours: Device = convert::device(&self.device)?;
        let args = [
            query.contiguous()?,
            source.contiguous()?,
            packed.contiguous()?,
        ];
        let guards: Vec<_> = args.iter().map(|t| t.storage_and_layout()).collect();
        let view = |arg: usize, offset: usize, shape: &[usize]| {
            let (s, l) = &guards[arg];
            piece(s, l, offset, shape, &ours, &self.scratch)
        };
        let (q, k, v, params) = self.views(view)?;
        let grad = grad_res.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let g_context = piece(&gs, gl, 0, &self.shapes.context, &ours, &self.scratch)?;
        let mut core = lock(&self.core);
        let refs: Vec<&Tensor> = params.iter().map(|p| &**p).collect();
        core.assign_parameters(&refs).map_err(wrap)?;
        let grads = core
            .backward(&k, v.as_deref(), self.lengths.as_deref(), &q, &g_context)
            .map_err(wrap)?;
        // The CPU backward answers in f32; candle wants the arguments' dtype.
        let to = |t: Tensor| to_candle(t, &self.device)?.to_dtype(query.dtype());
        let dq = query.track_op().then(|| to(grads.query)).transpose()?;
        let dsource = if source.track_op() {
            let mut parts = vec![to(grads.keys)?.flatten_all()?];
            if let Some(dv) = grads.values {
                parts.push(to(dv)?.flatten_all()?);
            }
            Some(candle::Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        let dparams = if packed.track_op() && !grads.params.is_empty() {
            let parts = grads
                .params
                .into_iter()
                .map(|(_, g)| to(g)?.flatten_all())
                .collect::<candle::Result<Vec<_>>>()?;
            Some(candle::Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        Ok((dq, dsource, dparams))
    }
}
