//! A minimal tensor: a shape and dense row-major storage on the host or one CUDA device.
//!
//! A CUDA tensor holds its buffer (a cudarc `CudaSlice`) and the device it belongs to, so every
//! op finds its stream, kernels and cuBLAS handles from its arguments. Another crate can hand in
//! its own buffers (`Tensor::from_cuda_slice`), lend them for the length of a call
//! (`Tensor::borrow_cuda_slice`) and take results out (`Tensor::into_cuda_slice`), all without
//! a copy.

use crate::device::{CudaDevice, Device};
use crate::dtype::{CudaData, DType, Element, HostData};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::mem::ManuallyDrop;
use std::sync::Arc;

enum Storage {
    Host(HostData),
    Cuda {
        data: CudaData,
        device: Arc<CudaDevice>,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Host(h) => write!(f, "Host({})", h.dtype()),
            Storage::Cuda { data, device } => write!(f, "{}({})", device.name(), data.dtype()),
        }
    }
}

#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel != Some(len) {
        let want = format!("one of {len} elements (the buffer's)");
        return Err(Error::shape("tensor", want, shape));
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

    /// Adopts a buffer of `device`'s context without copying. Work on it is ordered on the
    /// device's stream; cudarc's event tracking orders it after pending writes on others.
    pub fn from_cuda_slice<T: Element>(
        slice: CudaSlice<T>,
        shape: &[usize],
        device: &Arc<CudaDevice>,
    ) -> Result<Self> {
        check_context(slice.context(), device)?;
        Tensor::from_cuda_data(T::wrap_cuda(slice), shape, device)
    }

    pub(crate) fn from_cuda_data(
        data: CudaData,
        shape: &[usize],
        device: &Arc<CudaDevice>,
    ) -> Result<Self> {
        check_len(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda {
                data,
                device: device.clone(),
            },
        })
    }

    /// Lends `count` elements of `slice` from element `offset` on, as a tensor of `shape`, for
    /// as long as `slice` is borrowed: the buffer stays the lender's and is never freed here.
    /// The device's stream waits for the lender's pending writes first, and the lender's later
    /// frees and writes wait for the work enqueued on the view (cudarc's events).
    pub fn borrow_cuda_slice<'a, T: Element>(
        slice: &'a CudaSlice<T>,
        offset: usize,
        shape: &[usize],
        device: &Arc<CudaDevice>,
    ) -> Result<Borrowed<'a, T>> {
        check_context(slice.context(), device)?;
        let count = crate::size::elements("borrowed view", shape)?;
        if offset
            .checked_add(count)
            .is_none_or(|end| end > slice.len())
        {
            let want = format!("at most {} elements from offset {offset}", slice.len());
            return Err(Error::shape("borrowed view", want, shape));
        }
        let stream = device.stream();
        let (base, _read) = slice.device_ptr(stream);
        let ptr = base + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: [ptr, ptr + count) lies in `slice` (checked above), which outlives the view
        // ('a); the view's slice is leaked, never freed, when the view drops.
        let view = unsafe { stream.upgrade_device_ptr::<T>(ptr, count) };
        let tensor = Tensor::from_cuda_slice(view, shape, device)?;
        Ok(Borrowed {
            tensor: ManuallyDrop::new(tensor),
            lender: slice,
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
            Storage::Cuda { data, .. } => data.dtype(),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda { .. })
    }

    /// The device this tensor lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) => Device::Cpu,
            Storage::Cuda { device, .. } => Device::Cuda(device.clone()),
        }
    }

    /// The CUDA device that owns this tensor's buffer.
    pub fn cuda_device(&self) -> Result<&Arc<CudaDevice>> {
        match &self.storage {
            Storage::Cuda { device, .. } => Ok(device),
            Storage::Host(_) => Err(Error::DeviceMismatch {
                expected: "cuda".into(),
                got: "cpu".into(),
            }),
        }
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
            Storage::Cuda { .. } => Err(Error::DeviceMismatch {
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
            Storage::Cuda { .. } => Err(Error::DeviceMismatch {
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
            Storage::Cuda { data, .. } => T::into_cuda(data).ok_or(err),
            Storage::Host(_) => Err(Error::DeviceMismatch {
                expected: "cuda".into(),
                got: "cpu".into(),
            }),
        }
    }

    pub(crate) fn cuda_data(&self) -> Result<&CudaData> {
        match &self.storage {
            Storage::Cuda { data, .. } => Ok(data),
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
            Storage::Cuda { data, device } => crate::with_dtype!(data.dtype(), T => {
                let slice = T::cuda_mut(data).expect("the storage's own dtype");
                let host = T::host(&host).expect("converted to that dtype");
                device.stream().memcpy_htod(host, slice)?;
            }),
        }
        Ok(())
    }

    /// Overwrites the values in place with `src`'s (same shape, dtype and device), keeping the
    /// buffer and every address taken of it; on CUDA a copy on the device's stream.
    #[cfg(feature = "candle")]
    pub(crate) fn assign(&mut self, src: &Tensor) -> Result<()> {
        if src.shape != self.shape {
            return Err(Error::shape(
                "values",
                format!("{:?}", self.shape),
                &src.shape,
            ));
        }
        if src.dtype() != self.dtype() {
            return Err(Error::DType {
                tensor: "values".into(),
                expected: self.dtype().name().into(),
                got: src.dtype().name().into(),
            });
        }
        match (&mut self.storage, &src.storage) {
            // Into the buffer it has: fresh pages would fault on first write.
            (Storage::Host(HostData::F32(h)), Storage::Host(HostData::F32(from))) => {
                h.copy_from_slice(from)
            }
            (Storage::Host(h), Storage::Host(from)) => *h = from.clone(),
            (Storage::Cuda { data, device }, Storage::Cuda { data: from, .. })
                if same_context(from, device) =>
            {
                crate::with_dtype!(data.dtype(), T => {
                    let to = T::cuda_mut(data).expect("the storage's own dtype");
                    let from = T::cuda(from).expect("checked: the same dtype");
                    device.stream().memcpy_dtod(from, to)?;
                })
            }
            _ => {
                return Err(Error::Config(
                    "values on another device than the tensor they replace".into(),
                ))
            }
        }
        Ok(())
    }

    /// The values as f32 on the host: a host f32 tensor's own buffer, moved out; else a copy.
    #[cfg(feature = "candle")]
    pub(crate) fn into_f32_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Host(HostData::F32(v)) => Ok(v),
            _ => self.to_vec_f32(),
        }
    }

    /// All values as f32 on the host (copies from the device and waits for it).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_host_data()?.to_f32())
    }

    /// The values as f32: borrowed from a host f32 tensor, else converted.
    pub(crate) fn f32_values(&self) -> Result<std::borrow::Cow<'_, [f32]>> {
        match self.host_slice::<f32>() {
            Ok(v) => Ok(std::borrow::Cow::Borrowed(v)),
            Err(_) => self.to_vec_f32().map(std::borrow::Cow::Owned),
        }
    }

    /// A host tensor of `values` in `dtype`: the vector itself for f32, else rounded.
    pub(crate) fn from_f32_vec(values: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Tensor::from_vec(values, shape),
            _ => Tensor::from_f32(&values, shape, dtype),
        }
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
            Storage::Cuda { data, device } => crate::with_dtype!(data.dtype(), T => {
                let slice = T::cuda(data).expect("the storage's own dtype");
                Ok(T::wrap_host(device.stream().clone_dtoh(slice)?))
            }),
        }
    }

    /// A copy on `device` in `dtype`: on the device when this tensor is already on its
    /// context (converted there when the dtypes differ), else through the host.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        if let (Storage::Cuda { data, .. }, Device::Cuda(dev)) = (&self.storage, device) {
            if same_context(data, dev) {
                return Tensor::from_cuda_data(dev.convert_data(data, dtype)?, &self.shape, dev);
            }
        }
        let host = self.to_host_data()?;
        let host = if host.dtype() == dtype {
            host
        } else {
            HostData::from_f32(&host.to_f32(), dtype)
        };
        match device {
            Device::Cpu => Ok(Tensor {
                shape: self.shape.clone(),
                storage: Storage::Host(host),
            }),
            Device::Cuda(dev) => Tensor::from_cuda_data(upload(dev, &host)?, &self.shape, dev),
        }
    }

    /// Checks that this tensor lives on `device` (the same CUDA context for CUDA devices).
    pub(crate) fn check_on(&self, device: &Device, name: &str) -> Result<()> {
        let ok = match (&self.storage, device) {
            (Storage::Host(_), Device::Cpu) => true,
            (Storage::Cuda { data, .. }, Device::Cuda(dev)) => same_context(data, dev),
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
    if host.is_empty() {
        return dev.empty_data(host.dtype());
    }
    crate::with_dtype!(host.dtype(), T => Ok(T::wrap_cuda(dev.upload(T::host(host).unwrap())?)))
}

fn same_context(data: &CudaData, dev: &CudaDevice) -> bool {
    dev.owns(match data {
        CudaData::F32(s) => s.context(),
        CudaData::F16(s) => s.context(),
        CudaData::BF16(s) => s.context(),
    })
}

/// A caller's buffer must be of `device`'s context.
fn check_context(ctx: &cudarc::driver::CudaContext, device: &CudaDevice) -> Result<()> {
    if device.owns(ctx) {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            expected: device.name(),
            got: "a buffer of another CUDA context".into(),
        })
    }
}

/// A caller's device buffer lent as a tensor (`Tensor::borrow_cuda_slice`); use it as a
/// `&Tensor` while `'a` lasts.
pub struct Borrowed<'a, T: Element> {
    tensor: ManuallyDrop<Tensor>,
    lender: &'a CudaSlice<T>,
}

impl<T: Element> std::ops::Deref for Borrowed<'_, T> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

impl<T: Element> Drop for Borrowed<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the tensor is taken once, here, and never used again.
        let tensor = unsafe { ManuallyDrop::take(&mut self.tensor) };
        if let Storage::Cuda { data, device } = tensor.storage {
            // The lender's buffer: never freed here.
            if let Some(view) = T::into_cuda(data) {
                view.leak();
            }
            // Marks the lender's buffer read after all the work enqueued on the view, so that
            // its owner's later free or write on another stream waits for that work.
            drop(self.lender.device_ptr(device.stream()));
        }
    }
}
