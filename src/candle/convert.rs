//! Between candle and this crate: devices, dtypes and values. On the CPU values are copied
//! (our CPU path computes in f32); on CUDA candle's buffers are lent in place and our results
//! handed back as candle storage, with no copy either way.

use crate::device::Device;
use crate::dtype::DType;
use crate::tensor::Tensor;
use candle_core as candle;

/// Our error as candle's.
pub(crate) fn wrap(e: crate::Error) -> candle::Error {
    candle::Error::wrap(e)
}

/// A candle error of ours, one line.
pub(crate) fn refuse(message: impl Into<String>) -> candle::Error {
    candle::Error::Msg(message.into())
}

/// Our device for a candle device: the CPU, or (feature `candle-cuda`) one device per candle
/// CUDA device, on candle's own stream.
pub(crate) fn device(d: &candle::Device) -> candle::Result<Device> {
    match d {
        candle::Device::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "candle-cuda")]
        candle::Device::Cuda(cuda) => cuda::device(cuda).map(Device::Cuda),
        other => Err(refuse(format!(
            "fused-rnn runs candle tensors on the CPU{}, not on {other:?}",
            if cfg!(feature = "candle-cuda") {
                " and CUDA"
            } else {
                " (CUDA needs the feature candle-cuda)"
            }
        ))),
    }
}

/// Our dtype for a candle dtype, where we have it.
pub(crate) fn dtype(d: candle::DType) -> candle::Result<DType> {
    match d {
        candle::DType::F32 => Ok(DType::F32),
        candle::DType::F16 => Ok(DType::F16),
        candle::DType::BF16 => Ok(DType::BF16),
        other => Err(refuse(format!(
            "fused-rnn layers take f32, f16 or bf16 tensors, not {other:?}"
        ))),
    }
}

/// Our view of `count` elements of a contiguous candle storage from element `offset`, shaped
/// `shape`: a host copy, or candle's CUDA buffer lent in place.
pub(crate) enum Piece<'a> {
    Owned(Tensor),
    #[cfg(feature = "candle-cuda")]
    F32(crate::tensor::Borrowed<'a, f32>),
    #[cfg(feature = "candle-cuda")]
    F16(crate::tensor::Borrowed<'a, half::f16>),
    #[cfg(feature = "candle-cuda")]
    BF16(crate::tensor::Borrowed<'a, half::bf16>),
    /// Ties the lifetime when CUDA is not built.
    #[cfg(not(feature = "candle-cuda"))]
    #[allow(dead_code)]
    Never(std::marker::PhantomData<&'a ()>),
}

impl std::ops::Deref for Piece<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            Piece::Owned(t) => t,
            #[cfg(feature = "candle-cuda")]
            Piece::F32(t) => t,
            #[cfg(feature = "candle-cuda")]
            Piece::F16(t) => t,
            #[cfg(feature = "candle-cuda")]
            Piece::BF16(t) => t,
            #[cfg(not(feature = "candle-cuda"))]
            Piece::Never(_) => unreachable!("never built"),
        }
    }
}

/// Host buffers kept between calls for the copies of candle's values: a copy into a buffer
/// that has held values before writes pages already mapped, where a fresh allocation of
/// megabytes faults on every 4 KiB.
#[derive(Default)]
pub(crate) struct Scratch(std::sync::Mutex<Vec<Vec<f32>>>);

/// Buffers a `Scratch` keeps at most.
const KEPT: usize = 16;

impl Scratch {
    /// A buffer holding `values`: the smallest kept one they fit in, else the largest, grown.
    fn filled(&self, values: &[f32]) -> Vec<f32> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |v: &Vec<f32>| v.capacity() >= values.len();
        let pick = (0..kept.len())
            .filter(|&k| fits(&kept[k]))
            .min_by_key(|&k| kept[k].capacity())
            .or_else(|| (0..kept.len()).max_by_key(|&k| kept[k].capacity()));
        let mut v = pick.map(|k| kept.swap_remove(k)).unwrap_or_default();
        v.clear();
        v.extend_from_slice(values);
        v
    }

    /// Keeps the host buffers of `pieces` for later calls.
    pub(crate) fn keep<'a>(&self, pieces: impl IntoIterator<Item = Piece<'a>>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for piece in pieces {
            if let (Piece::Owned(t), true) = (piece, kept.len() < KEPT) {
                kept.extend(t.into_f32_vec().ok());
            }
        }
    }
}

/// A host piece: `shape`'s elements of an f32 storage from `offset` on, copied into one of
/// `scratch`'s buffers.
pub(crate) fn host_piece(
    storage: &candle::CpuStorage,
    offset: usize,
    shape: &[usize],
    scratch: &Scratch,
) -> candle::Result<Piece<'static>> {
    let values = storage.as_slice::<f32>()?;
    let count: usize = shape.iter().product();
    let part = values.get(offset..offset + count).ok_or_else(|| {
        refuse(format!(
            "a storage of {} values read at {offset}+{count}",
            values.len()
        ))
    })?;
    Ok(Piece::Owned(
        Tensor::from_vec(scratch.filled(part), shape).map_err(wrap)?,
    ))
}

/// Our view of `shape`'s elements of a contiguous candle storage from element `offset`
/// (`layout`'s start added): a copy on the host (which must hold f32), candle's buffer lent in
/// place on CUDA.
pub(crate) fn piece<'a>(
    storage: &'a candle::Storage,
    layout: &candle::Layout,
    offset: usize,
    shape: &[usize],
    device: &Device,
    scratch: &Scratch,
) -> candle::Result<Piece<'a>> {
    if !layout.is_contiguous() {
        return Err(refuse("a strided tensor where a contiguous one is needed"));
    }
    let offset = layout.start_offset() + offset;
    match storage {
        candle::Storage::Cpu(s) => host_piece(s, offset, shape, scratch),
        #[cfg(feature = "candle-cuda")]
        candle::Storage::Cuda(s) => cuda::piece(s, offset, shape, device),
        _ => {
            let _ = device;
            Err(refuse("fused-rnn takes CPU and CUDA tensors"))
        }
    }
}

/// What a custom op of ours computes from views of its three arguments: its forward, given
/// `view(argument, offset, shape)`, returns the one tensor candle gets back.
pub(crate) trait OverViews {
    fn forward<'a>(
        &self,
        view: impl Fn(usize, usize, &[usize]) -> candle::Result<Piece<'a>>,
        ours: &Device,
    ) -> candle::Result<Tensor>;

    fn scratch(&self) -> &Scratch;

    /// The candle device the op's layer is on.
    #[cfg(feature = "candle-cuda")]
    fn device(&self) -> &candle::Device;
}

/// `CustomOp3::cpu_fwd` of an op that computes over views.
pub(crate) fn host_forward(
    op: &impl OverViews,
    args: [(&candle::CpuStorage, &candle::Layout); 3],
) -> candle::Result<(candle::CpuStorage, candle::Shape)> {
    let view = |arg: usize, offset: usize, shape: &[usize]| {
        let (s, l): (&candle::CpuStorage, &candle::Layout) = args[arg];
        host_piece(s, l.start_offset() + offset, shape, op.scratch())
    };
    let result = op.forward(view, &Device::Cpu)?;
    let n = result.numel();
    match to_storage(result, &candle::Device::Cpu)? {
        candle::Storage::Cpu(s) => Ok((s, candle::Shape::from(n))),
        _ => Err(refuse("a host result held on a device")),
    }
}

/// A candle tensor holding our `t` (no gradient), on `device`: a host copy in f32, or our
/// CUDA buffer handed over in its dtype.
pub(crate) fn to_candle(t: Tensor, device: &candle::Device) -> candle::Result<candle::Tensor> {
    let shape = t.shape().to_vec();
    let storage = to_storage(t, device)?;
    Ok(candle::Tensor::from_storage(
        storage,
        shape,
        candle::op::BackpropOp::none(),
        false,
    ))
}

/// As `to_candle`, the storage alone (what a custom op returns): f32 on the host.
pub(crate) fn to_storage(t: Tensor, device: &candle::Device) -> candle::Result<candle::Storage> {
    match device {
        candle::Device::Cpu => Ok(candle::Storage::Cpu(candle::CpuStorage::F32(
            t.into_f32_vec().map_err(wrap)?,
        ))),
        #[cfg(feature = "candle-cuda")]
        candle::Device::Cuda(d) => cuda::storage(t, d).map(candle::Storage::Cuda),
        other => Err(refuse(format!("fused-rnn does not run on {other:?}"))),
    }
}

#[cfg(feature = "candle-cuda")]
pub(crate) mod cuda {
    //! One of our devices per candle CUDA device, made once on candle's stream, and candle's
    //! buffers lent to it.

    use super::{refuse, wrap, Piece};
    use crate::device::{CudaDevice, Device};
    use crate::tensor::Tensor;
    use candle_core as candle;
    use candle_core::backend::BackendStorage;
    use std::sync::{Arc, Mutex};

    /// Ours for `cuda`, made on its stream the first time it is asked for.
    pub(crate) fn device(cuda: &candle::CudaDevice) -> candle::Result<Arc<CudaDevice>> {
        static MADE: Mutex<Vec<Arc<CudaDevice>>> = Mutex::new(Vec::new());
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        let stream = cuda.cuda_stream();
        if let Some(d) = made.iter().find(|d| Arc::ptr_eq(d.stream(), &stream)) {
            return Ok(d.clone());
        }
        let ours = Arc::new(CudaDevice::with_stream(stream).map_err(wrap)?);
        made.push(ours.clone());
        Ok(ours)
    }

    /// `shape`'s elements of `storage` from `offset`, lent in place.
    pub(crate) fn piece<'a>(
        storage: &'a candle::CudaStorage,
        offset: usize,
        shape: &[usize],
        device: &Device,
    ) -> candle::Result<Piece<'a>> {
        let Device::Cuda(dev) = device else {
            return Err(refuse("a CUDA tensor for a layer on the CPU"));
        };
        let lend = |e| wrap(e);
        Ok(match storage.dtype() {
            candle::DType::F32 => Piece::F32(
                Tensor::borrow_cuda_slice(storage.as_cuda_slice::<f32>()?, offset, shape, dev)
                    .map_err(lend)?,
            ),
            candle::DType::F16 => Piece::F16(
                Tensor::borrow_cuda_slice(
                    storage.as_cuda_slice::<half::f16>()?,
                    offset,
                    shape,
                    dev,
                )
                .map_err(lend)?,
            ),
            candle::DType::BF16 => Piece::BF16(
                Tensor::borrow_cuda_slice(
                    storage.as_cuda_slice::<half::bf16>()?,
                    offset,
                    shape,
                    dev,
                )
                .map_err(lend)?,
            ),
            other => {
                return Err(refuse(format!(
                    "fused-rnn takes f32, f16 or bf16, not {other:?}"
                )))
            }
        })
    }

    /// `CustomOp3::cuda_fwd` of an op that computes over views.
    pub(crate) fn forward(
        op: &impl super::OverViews,
        args: [(&candle::CudaStorage, &candle::Layout); 3],
    ) -> candle::Result<(candle::CudaStorage, candle::Shape)> {
        let candle::Device::Cuda(d) = op.device() else {
            return Err(refuse("a CUDA pass on a layer off CUDA"));
        };
        let ours = Device::Cuda(device(d)?);
        let view = |arg: usize, offset: usize, shape: &[usize]| {
            let (s, l): (&candle::CudaStorage, &candle::Layout) = args[arg];
            piece(s, l.start_offset() + offset, shape, &ours)
        };
        let result = op.forward(view, &ours)?;
        let n = result.numel();
        Ok((storage(result, d)?, candle::Shape::from(n)))
    }

    /// Our CUDA tensor handed to candle as its storage, buffer and all.
    pub(crate) fn storage(
        t: Tensor,
        d: &candle::CudaDevice,
    ) -> candle::Result<candle::CudaStorage> {
        use crate::dtype::DType;
        Ok(match t.dtype() {
            DType::F32 => candle::CudaStorage::wrap_cuda_slice(
                t.into_cuda_slice::<f32>().map_err(wrap)?,
                d.clone(),
            ),
            DType::F16 => candle::CudaStorage::wrap_cuda_slice(
                t.into_cuda_slice::<half::f16>().map_err(wrap)?,
                d.clone(),
            ),
            DType::BF16 => candle::CudaStorage::wrap_cuda_slice(
                t.into_cuda_slice::<half::bf16>().map_err(wrap)?,
                d.clone(),
            ),
        })
    }
}

#[cfg(all(test, feature = "candle-cuda"))]
mod tests {
    use super::*;
    use cudarc::driver::DevicePtr;

    /// candle's CUDA device 0, or None after saying why (a failure under
    /// FUSED_RNN_REQUIRE_GPU=1).
    fn gpu() -> Option<candle::Device> {
        match crate::Device::cuda(0).map(|_| candle::Device::new_cuda(0)) {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => panic!("a CUDA device that candle cannot open: {e}"),
            Err(e) if std::env::var("FUSED_RNN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("FUSED_RNN_REQUIRE_GPU=1 but no GPU: {e}")
            }
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn candles_buffers_are_lent_and_ours_handed_back_without_a_copy() {
        let Some(gpu) = gpu() else { return };
        let candle::Device::Cuda(cuda) = &gpu else {
            unreachable!()
        };
        let ours = device(&gpu).unwrap();
        let stream = cuda.cuda_stream();
        let x = candle::Tensor::arange(0f32, 24.0, &gpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let (storage, layout) = x.storage_and_layout();
        let candle::Storage::Cuda(s) = &*storage else {
            unreachable!()
        };
        let theirs = s.as_cuda_slice::<f32>().unwrap().device_ptr(&stream).0;
        let view = piece(&storage, layout, 4, &[5], &ours, &Scratch::default()).unwrap();
        let lent = view.cuda_slice::<f32>().unwrap().device_ptr(&stream).0;
        assert_eq!(
            lent,
            theirs + 16,
            "the view reads candle's buffer at element 4"
        );
        assert_eq!(view.to_vec_f32().unwrap(), [4.0, 5.0, 6.0, 7.0, 8.0]);
        drop(view);
        drop(storage);

        let made = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3])
            .unwrap()
            .to(&ours, DType::F32)
            .unwrap();
        let before = made.cuda_slice::<f32>().unwrap().device_ptr(&stream).0;
        let back = to_candle(made, &gpu).unwrap();
        let (storage, _) = back.storage_and_layout();
        let candle::Storage::Cuda(s) = &*storage else {
            unreachable!()
        };
        assert_eq!(
            s.as_cuda_slice::<f32>().unwrap().device_ptr(&stream).0,
            before
        );
        drop(storage);
        assert_eq!(back.to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    }
}
