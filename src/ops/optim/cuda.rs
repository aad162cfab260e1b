//! The optimiser's CUDA launchers (kernels/train.cu): an Adam step over every parameter in one
//! launch, the gradient norm in one launch (and one more to scale when clipping).
//!
//! The multi-tensor launches read a table of tensors and a table of chunks of `CHUNK` elements,
//! each chunk inside one tensor. Adam builds both once and keeps them, with its moments and
//! (for 16-bit parameters) f32 master weights, on the device; it uploads the tensor table again
//! only when an address in it changes (gradients in new buffers, say).

use super::AdamHyper;
use crate::device::kernels::{codes, ids};
use crate::device::launch::{blocks, launch};
use crate::device::{data_ptr, dev_ptr, CudaDevice, Device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr};
use std::sync::Arc;

/// Elements per chunk (TRAIN_CHUNK of kernels/codes.cuh).
const CHUNK: usize = codes::TRAIN_CHUNK as usize;
/// Blocks of the grid-stride norm and scale launches: enough to fill a large GPU, few enough
/// that the host adds the norm's partial sums at no cost.
const MAX_BLOCKS: usize = 1024;

/// One tensor of a multi-tensor launch (TrainSlot in kernels/train.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Slot {
    /// The parameter (Adam) or the gradient (norm, scale).
    data: u64,
    /// Adam: the parameter's gradient.
    grad: u64,
    /// Adam: the tensor's first element in the moments and master weights.
    state: u64,
    numel: u64,
}

// SAFETY: plain data, laid out as TrainSlot in kernels/train.cu.
unsafe impl DeviceRepr for Slot {}

/// The device of `tensors`, after checking that they are all CUDA tensors of that device in one
/// dtype; `what` names them in errors ("parameter", "gradient").
fn common_device(tensors: &[&Tensor], what: &str) -> Result<(Arc<CudaDevice>, DType)> {
    let first = tensors
        .first()
        .ok_or_else(|| Error::Config(format!("no {what}s")))?;
    let dev = first.cuda_device()?.clone();
    let device = Device::Cuda(dev.clone());
    let dtype = first.dtype();
    for (k, t) in tensors.iter().enumerate() {
        t.check_on(&device, &format!("{what} {k}"))?;
        if t.dtype() != dtype {
            return Err(Error::DType {
                tensor: format!("{what} {k}"),
                expected: format!("{dtype} (one dtype for all {what}s on CUDA)"),
                got: t.dtype().name().into(),
            });
        }
    }
    Ok((dev, dtype))
}

/// The chunk table of tensors of `numels` elements: (tensor index, first element) per chunk.
fn chunks(numels: &[usize]) -> Result<Vec<u32>> {
    let mut table = Vec::new();
    for (k, &n) in numels.iter().enumerate() {
        if n > i32::MAX as usize {
            return Err(Error::Config(format!(
                "tensor {k} has {n} elements; the CUDA training kernels take at most {}",
                i32::MAX
            )));
        }
        for start in (0..n).step_by(CHUNK) {
            table.extend([k as u32, start as u32]);
        }
    }
    if table.len() / 2 > i32::MAX as usize {
        return Err(Error::TooLarge {
            what: "the tensors of one launch".into(),
            needed: "more elements".into(),
            limit: "the kernels index (i32)".into(),
        });
    }
    Ok(table)
}

// ---
// Gradient clipping.

/// The total L2 norm of `grads` (one reduction launch and one read), and when `scale_for`
/// returns a factor, every gradient scaled by it in place (one more launch).
pub(super) fn clip_grad_norm(
    grads: &mut [&mut Tensor],
    max_norm: f32,
    scale_for: impl Fn(f64, f32) -> Option<f64>,
) -> Result<f32> {
    let views: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let (dev, dtype) = common_device(&views, "gradient")?;
    let stream = dev.stream();
    let numels: Vec<usize> = views.iter().map(|g| g.numel()).collect();
    let table = chunks(&numels)?;
    let num_chunks = table.len() / 2;
    let slots: Vec<Slot> = views
        .iter()
        .map(|g| {
            Ok(Slot {
                data: data_ptr(g.cuda_data()?, stream),
                numel: g.numel() as u64,
                ..Slot::default()
            })
        })
        .collect::<Result<_>>()?;
    if num_chunks == 0 {
        return Ok(0.0);
    }
    let grid = num_chunks.min(MAX_BLOCKS);
    let slots_dev = dev.upload(&slots)?;
    let chunks_dev = dev.upload(&table)?;
    let partial = dev.alloc_output::<f64>(grid)?;
    let (slots_ptr, chunks_ptr) = (dev_ptr(&slots_dev, stream), dev_ptr(&chunks_dev, stream));
    let partial_ptr = dev_ptr(&partial, stream);
    let count = num_chunks as i32;
    let norm_kernel = dev.function(ids::train::GRAD_NORM_FUSED, dtype)?;
    // SAFETY: every slot addresses a live gradient of `numel` elements of `dtype` on this device,
    // every chunk lies inside its tensor, and `partial` holds one f64 per block.
    unsafe {
        launch!(dev.stream(), &norm_kernel, blocks(grid); slots_ptr, chunks_ptr, count, partial_ptr);
    }
    let partials = stream.clone_dtoh(&partial)?;
    let norm = partials.iter().sum::<f64>().sqrt();
    if let Some(scale) = scale_for(norm, max_norm) {
        let scale = scale as f32;
        let scale_kernel = dev.function(ids::train::GRAD_SCALE_FUSED, dtype)?;
        // SAFETY: as for the norm; each element is read and written by one thread.
        unsafe {
            launch!(dev.stream(), &scale_kernel, blocks(grid); slots_ptr, chunks_ptr, count, scale);
        }
    }
    Ok(norm as f32)
}

// ---
// Adam.

/// Adam's state on a device: the tables, the f32 moments, and the f32 master weights of 16-bit
/// parameters, each parameter's at its offset in the flat buffers.
pub(crate) struct AdamCuda {
    dev: Arc<CudaDevice>,
    dtype: DType,
    shapes: Vec<Vec<usize>>,
    kernel: CudaFunction,
    /// The tensor table as last uploaded.
    slots: Vec<Slot>,
    slots_dev: CudaSlice<Slot>,
    chunks_dev: CudaSlice<u32>,
    num_chunks: usize,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    master: Option<CudaSlice<f32>>,
    /// Whether a step has run (the master weights hold values).
    stepped: bool,
}

impl AdamCuda {
    /// State for `params`: zero moments; master weights are read from the parameters at the
    /// first step.
    pub fn new(params: &[&mut Tensor]) -> Result<Self> {
        let views: Vec<&Tensor> = params.iter().map(|p| &**p).collect();
        let (dev, dtype) = common_device(&views, "parameter")?;
        let numels: Vec<usize> = views.iter().map(|p| p.numel()).collect();
        let table = chunks(&numels)?;
        let total: usize = numels.iter().sum();
        let mut state = 0u64;
        let slots: Vec<Slot> = numels
            .iter()
            .map(|&n| {
                let slot = Slot {
                    state,
                    numel: n as u64,
                    ..Slot::default()
                };
                state += n as u64;
                slot
            })
            .collect();
        let stream = dev.stream();
        Ok(AdamCuda {
            kernel: dev.function(ids::train::ADAM_STEP_FUSED, dtype)?,
            shapes: views.iter().map(|p| p.shape().to_vec()).collect(),
            slots_dev: dev.upload(&slots)?,
            slots,
            chunks_dev: dev.upload(&table)?,
            num_chunks: table.len() / 2,
            m: stream.alloc_zeros::<f32>(total.max(1))?,
            v: stream.alloc_zeros::<f32>(total.max(1))?,
            master: match dtype {
                DType::F32 => None,
                DType::F16 | DType::BF16 => Some(dev.alloc_output::<f32>(total)?),
            },
            stepped: false,
            dtype,
            dev,
        })
    }

    /// Checks `params` and `grads` against the state, brings the tensor table up to date and
    /// launches the update.
    pub fn step(&mut self, params: &[&mut Tensor], grads: &[&Tensor], h: &AdamHyper) -> Result<()> {
        if params.len() != self.shapes.len() {
            return Err(Error::Config(
                "the parameters changed between Adam steps".into(),
            ));
        }
        let device = Device::Cuda(self.dev.clone());
        for (k, ((p, g), shape)) in params.iter().zip(grads).zip(&self.shapes).enumerate() {
            if p.shape() != shape.as_slice() {
                return Err(Error::shape(
                    format!("parameter {k}"),
                    format!("{shape:?} (its shape at the first step)"),
                    p.shape(),
                ));
            }
            if g.shape() != shape.as_slice() {
                return Err(Error::shape(
                    format!("gradient {k}"),
                    format!("{shape:?}"),
                    g.shape(),
                ));
            }
            for (t, what) in [(&**p, "parameter"), (*g, "gradient")] {
                t.check_on(&device, &format!("{what} {k}"))?;
                if t.dtype() != self.dtype {
                    return Err(Error::DType {
                        tensor: format!("{what} {k}"),
                        expected: self.dtype.name().into(),
                        got: t.dtype().name().into(),
                    });
                }
            }
        }
        // Nothing fails between updating the host table and uploading it, so the two agree.
        let stream = self.dev.stream();
        let mut dirty = false;
        for ((p, g), slot) in params.iter().zip(grads).zip(&mut self.slots) {
            let updated = Slot {
                data: data_ptr(p.cuda_data()?, stream),
                grad: data_ptr(g.cuda_data()?, stream),
                ..*slot
            };
            dirty |= updated != *slot;
            *slot = updated;
        }
        if dirty {
            stream.memcpy_htod(&self.slots, &mut self.slots_dev)?;
        }
        if self.num_chunks == 0 {
            self.stepped = true;
            return Ok(());
        }
        let first = i32::from(!self.stepped);
        let (b1, b2) = h.betas;
        let correct1 = 1.0 - (b1 as f64).powi(h.step as i32);
        let correct2 = 1.0 - (b2 as f64).powi(h.step as i32);
        let (one_minus_b1, one_minus_b2) = (1.0 - b1, 1.0 - b2);
        let step_size = (h.lr as f64 / correct1) as f32;
        let inv_sqrt_c2 = (1.0 / correct2.sqrt()) as f32;
        let (eps, weight_decay) = (h.eps, h.weight_decay);
        let decay = h.lr * h.weight_decay;
        let decoupled = i32::from(h.decoupled);
        let (slots, chunks) = (
            dev_ptr(&self.slots_dev, stream),
            dev_ptr(&self.chunks_dev, stream),
        );
        let (m, v) = (dev_ptr(&self.m, stream), dev_ptr(&self.v, stream));
        let master = self.master.as_ref().map_or(0, |s| dev_ptr(s, stream));
        // SAFETY: the slots address the live parameters and gradients just checked (shapes as at
        // the first step, one dtype, this device); each slot's state range lies inside m, v and
        // master, which hold the sum of the parameters' sizes; chunks lie inside their tensors.
        unsafe {
            launch!(self.dev.stream(), &self.kernel, blocks(self.num_chunks);
                slots, chunks, m, v, master, first, b1, b2, one_minus_b1, one_minus_b2,
                step_size, inv_sqrt_c2, eps, weight_decay, decay, decoupled);
        }
        self.stepped = true;
        Ok(())
    }

    /// The f32 master weights of parameter `index`, when parameters are stored in 16 bits and a
    /// step has run.
    pub fn master(&self, index: usize) -> Result<Option<Vec<f32>>> {
        let slot = self.slots.get(index).ok_or_else(|| {
            Error::Config(format!(
                "parameter {index} does not exist ({} parameters)",
                self.slots.len()
            ))
        })?;
        let Some(master) = self.master.as_ref().filter(|_| self.stepped) else {
            return Ok(None);
        };
        let start = slot.state as usize;
        let view = master.slice(start..start + slot.numel as usize);
        Ok(Some(self.dev.stream().clone_dtoh(&view)?))
    }

    /// Every parameter's (first, second) moments, read back.
    pub fn moments(&self) -> Result<super::Moments> {
        let stream = self.dev.stream();
        let (m, v) = (stream.clone_dtoh(&self.m)?, stream.clone_dtoh(&self.v)?);
        Ok(self
            .slots
            .iter()
            .map(|s| {
                let r = s.state as usize..(s.state + s.numel) as usize;
                (m[r.clone()].to_vec(), v[r].to_vec())
            })
            .collect())
    }

    /// Writes `moments` (checked against the parameters' sizes by the caller).
    pub fn set_moments(&mut self, moments: &[(Vec<f32>, Vec<f32>)]) -> Result<()> {
        let mut m: Vec<f32> = moments.iter().flat_map(|p| p.0.iter().copied()).collect();
        let mut v: Vec<f32> = moments.iter().flat_map(|p| p.1.iter().copied()).collect();
        // The buffers hold at least one element.
        m.resize(m.len().max(1), 0.0);
        v.resize(v.len().max(1), 0.0);
        let stream = self.dev.stream();
        stream.memcpy_htod(&m, &mut self.m)?;
        stream.memcpy_htod(&v, &mut self.v)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{chunks, CHUNK};

    #[test]
    fn chunks_cover_every_element_once_and_never_cross_a_tensor() {
        let numels = [1, CHUNK, CHUNK + 1, 0, 37, 3 * CHUNK - 1];
        let mut covered = vec![0; numels.len()];
        for chunk in chunks(&numels).unwrap().chunks_exact(2) {
            let (k, start) = (chunk[0] as usize, chunk[1] as usize);
            assert!(start < numels[k] && start % CHUNK == 0, "chunk {chunk:?}");
            covered[k] += (numels[k] - start).min(CHUNK);
        }
        assert_eq!(covered, numels);
    }

    #[test]
    fn a_tensor_too_large_for_the_kernels_is_an_error() {
        let err = chunks(&[5, i32::MAX as usize + 1]).unwrap_err();
        assert!(err.to_string().contains("tensor 1"), "{err}");
    }
}
