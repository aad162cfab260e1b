//! Where computation runs: the CPU, or one CUDA device with its stream, cuBLAS handle and
//! loaded kernel modules.

mod cuda;
mod driver;
mod gemm;
mod jit;
pub(crate) mod launch;
pub(crate) use gemm::{Batched, Op, Strided};
pub use jit::{cache_file, JitModule, JitOrigin};
pub mod kernels;
mod ptr;

pub(crate) use cuda::Lane;
pub(crate) use cuda::POISON_BYTE;
pub use cuda::{driver_version, CudaDevice, LoadedVia};
pub(crate) use driver::{
    allow_dynamic_shared, begin_capture, copy_to_device_async, end_capture, fill_bytes_async,
    fill_words_async, replay,
};
pub(crate) use ptr::{data_ptr, dev_ptr, reading, writing, MatRef};

use crate::dtype::CudaData;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, Weak};

/// The CUDA devices made through `Device`, so that functions given only tensors (the training
/// helpers) run on the device that owns them, with its kernels and settings.
static CUDA_DEVICES: Mutex<Vec<Weak<CudaDevice>>> = Mutex::new(Vec::new());

/// A compute device. Cloning is cheap (CUDA state is shared).
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaDevice>),
}

impl Device {
    pub fn cpu() -> Self {
        Device::Cpu
    }

    /// CUDA device `ordinal`. Fails with a clear error, never a panic, when libcuda, a device or
    /// libcublas is missing.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(Device::from(Arc::new(CudaDevice::new(ordinal)?)))
    }

    /// CUDA device 0 when a driver and a device exist and the kernels load on it, else the
    /// CPU; the string says why.
    pub fn auto() -> (Self, String) {
        let cuda = Device::cuda(0).and_then(|dev| {
            let cuda = dev.as_cuda().expect("a CUDA device");
            for image in kernels::KERNELS {
                cuda.module(image.name)?;
            }
            Ok(dev)
        });
        match cuda {
            Ok(dev) => {
                let why = format!("using {}: a CUDA driver and device were found", dev.name());
                (dev, why)
            }
            Err(e) => (Device::Cpu, format!("using the CPU: {e}")),
        }
    }

    /// "cpu" or "cuda:N (card, sm_XY)".
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(d) => d.name(),
        }
    }

    pub fn as_cuda(&self) -> Option<&Arc<CudaDevice>> {
        match self {
            Device::Cpu => None,
            Device::Cuda(d) => Some(d),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// Wraps a device (e.g. one made with `CudaDevice::with_stream`) and makes it known to the
/// functions that find the device from their tensors (`train`).
impl From<Arc<CudaDevice>> for Device {
    fn from(dev: Arc<CudaDevice>) -> Self {
        let mut known = CUDA_DEVICES.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|d| d.strong_count() > 0);
        if !known
            .iter()
            .any(|d| std::ptr::eq(d.as_ptr(), Arc::as_ptr(&dev)))
        {
            known.push(Arc::downgrade(&dev));
        }
        Device::Cuda(dev)
    }
}

/// The device `data` belongs to: a live device made through `Device` whose stream the buffer
/// was made on, else one on the buffer's context (it then runs on that device's stream).
pub(crate) fn owner_of(data: &CudaData) -> Result<Arc<CudaDevice>> {
    let stream = match data {
        CudaData::F32(s) => s.stream(),
        CudaData::F16(s) => s.stream(),
        CudaData::BF16(s) => s.stream(),
    };
    let known = CUDA_DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    let live: Vec<Arc<CudaDevice>> = known
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|d| d.context().cu_ctx() == stream.context().cu_ctx())
        .collect();
    drop(known);
    let same_stream = live
        .iter()
        .position(|d| d.stream().cu_stream() == stream.cu_stream());
    match same_stream.or((!live.is_empty()).then_some(0)) {
        Some(k) => Ok(live[k].clone()),
        None => Err(Error::Config(
            "no CUDA device of this crate owns the tensor: make the device with Device::cuda, or \
             wrap a CudaDevice with Device::from"
                .into(),
        )),
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
