//! A minimal tensor: a shape and dense row-major storage on the host or one CUDA device.
//!
//! CUDA tensors wrap cudarc `CudaSlice`s, so another crate can hand in its own device buffers
//! (`Tensor::from_cuda_slice`) and take results out (`Tensor::into_cuda_slice`) without a copy.

use crate::device::{CudaDevice, Device};
use crate::dtype::{CudaData, DType, Element, HostData};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

#[derive(Debug)]
enum Storage {
    Host(HostData),
    Cuda(CudaData),
}

#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel != Some(len) {
        let numel = numel.map_or("more than usize::MAX".into(), |n| n.to_string());
        return Err(Error::Config(format!(
            "shape {shape:?} holds {numel} elements but the buffer has {len}"
        )));
    }
    Ok(())
}

impl Tensor {
    /// A host tensor owning `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        check_len(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Host(T::wrap_host(data)),
        })
    }

    /// A host tensor of `dtype` from f32 values (rounded to the dtype).
    pub fn from_f32(values: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        check_len(shape, values.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Host(HostData::from_f32(values, dtype)),
        })
    }

    /// Adopts a device buffer without copying. The buffer must belong to the context of the
    /// device it is used with and be ready on that device's stream.
    pub fn from_cuda_slice<T: Element>(slice: CudaSlice<T>, shape: &[usize]) -> Result<Self> {
        check_len(shape, slice.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(T::wrap_cuda(slice)),
        })
    }

    pub(crate) fn from_cuda_data(data: CudaData, shape: &[usize]) -> Result<Self> {
        check_len(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(data),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Host(h) => h.dtype(),
            Storage::Cuda(c) => c.dtype(),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda(_))
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        check_len(shape, self.numel())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage,
        })
    }

    /// The host values, when this is a host tensor of element type `T`.
    pub fn host_slice<T: Element>(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Host(h) => T::host(h)
                .map(|v| v.as_slice())
                .ok_or_else(|| self.dtype_err::<T>()),
            Storage::Cuda(_) => Err(Error::DeviceMismatch {
                expected: "cpu".into(),
                got: "cuda".into(),
            }),
        }
    }

    /// The host values for writing in place (an optimizer's step), when this is a host tensor
    /// of element type `T`.
    pub fn host_slice_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let err = self.dtype_err::<T>();
        match &mut self.storage {
            Storage::Host(h) => T::host_mut(h).map(|v| v.as_mut_slice()).ok_or(err),
            Storage::Cuda(_) => Err(Error::DeviceMismatch {
                expected: "cpu".into(),
                got: "cuda".into(),
            }),
        }
    }

    /// The device buffer, when this is a CUDA tensor of element type `T`.
    pub fn cuda_slice<T: Element>(&self) -> Result<&CudaSlice<T>> {
        T::cuda(self.cuda_data()?).ok_or_else(|| self.dtype_err::<T>())
    }

    /// Hands out the device buffer without copying.
    pub fn into_cuda_slice<T: Element>(self) -> Result<CudaSlice<T>> {
        let err = self.dtype_err::<T>();
        match self.storage {
            Storage::Cuda(c) => T::into_cuda(c).ok_or(err),
            Storage::Host(_) => Err(Error::DeviceMismatch {
                expected: "cuda".into(),
                got: "cpu".into(),
            }),
        }
    }

    pub(crate) fn cuda_data(&self) -> Result<&CudaData> {
        match &self.storage {
            Storage::Cuda(c) => Ok(c),
            Storage::Host(_) => Err(Error::DeviceMismatch {
                expected: "cuda".into(),
                got: "cpu".into(),
            }),
        }
    }

    fn dtype_err<T: Element>(&self) -> Error {
        Error::DType {
            tensor: "tensor".into(),
            expected: T::DTYPE.name().into(),
            got: self.dtype().name().into(),
        }
    }

    /// Overwrites the values in place (rounded to the dtype), on the host or the device. The
    /// device buffer stays, and with it every address taken of it (captured graphs, a layer's
    /// cached operands): loading a state_dict into a built layer.
    pub fn copy_from_f32(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            let want = format!("{} values", self.numel());
            return Err(Error::shape("values", want, &[values.len()]));
        }
        let host = HostData::from_f32(values, self.dtype());
        match &mut self.storage {
            Storage::Host(h) => *h = host,
            Storage::Cuda(c) => crate::with_dtype!(c.dtype(), T => {
                let slice = T::cuda_mut(c).expect("the storage's own dtype");
                let stream = slice.stream().clone();
                stream.memcpy_htod(T::host(&host).expect("converted to that dtype"), slice)?;
            }),
        }
        Ok(())
    }

    /// All values as f32 on the host (copies from the device and waits for it).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_host_data()?.to_f32())
    }

    /// The values widened to f64 (the CPU's training and reference sums run in f64).
    pub(crate) fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_vec_f32()?.into_iter().map(f64::from).collect())
    }

    /// A host f32 tensor of f64 `values`, rounded.
    pub(crate) fn from_f64(values: &[f64], shape: &[usize]) -> Result<Self> {
        Tensor::from_vec(
            values.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
            shape,
        )
    }

    fn to_host_data(&self) -> Result<HostData> {
        match &self.storage {
            Storage::Host(h) => Ok(h.clone()),
            Storage::Cuda(c) => crate::with_dtype!(c.dtype(), T => {
                let slice = T::cuda(c).unwrap();
                Ok(T::wrap_host(slice.stream().clone_dtoh(slice)?))
            }),
        }
    }

    /// A copy on `device` in `dtype`: device to device when this tensor is on that device in
    /// that dtype, else through the host.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        if let (Storage::Cuda(src), Device::Cuda(dev)) = (&self.storage, device) {
            if src.dtype() == dtype && same_context(src, dev) {
                return Ok(Tensor {
                    shape: self.shape.clone(),
                    storage: Storage::Cuda(dev.copy_data(src)?),
                });
            }
        }
        let host = self.to_host_data()?;
        let host = if host.dtype() == dtype {
            host
        } else {
            HostData::from_f32(&host.to_f32(), dtype)
        };
        let storage = match device {
            Device::Cpu => Storage::Host(host),
            Device::Cuda(dev) => Storage::Cuda(upload(dev, &host)?),
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }

    /// Checks that this tensor lives on `device` (the same CUDA context for CUDA devices).
    pub(crate) fn check_on(&self, device: &Device, name: &str) -> Result<()> {
        let ok = match (&self.storage, device) {
            (Storage::Host(_), Device::Cpu) => true,
            (Storage::Cuda(c), Device::Cuda(dev)) => same_context(c, dev),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                expected: device.name(),
                got: format!("{name}'s device"),
            })
        }
    }
}

fn upload(dev: &Arc<CudaDevice>, host: &HostData) -> Result<CudaData> {
    crate::with_dtype!(host.dtype(), T => Ok(T::wrap_cuda(dev.upload(T::host(host).unwrap())?)))
}

fn same_context(data: &CudaData, dev: &CudaDevice) -> bool {
    let ctx = match data {
        CudaData::F32(s) => s.context(),
        CudaData::F16(s) => s.context(),
        CudaData::BF16(s) => s.context(),
    };
    ctx.cu_ctx() == dev.context().cu_ctx()
}
