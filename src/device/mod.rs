//! Where computation runs: the CPU, or one CUDA device with its stream, cuBLAS and cuBLASLt
//! handles and loaded kernel modules.

mod cuda;
mod driver;
pub(crate) mod errors;
mod gemm;
mod gemm_lt;
mod jit;
pub(crate) mod launch;
pub(crate) mod libraries;
pub(crate) use gemm::{Batched, Op, Strided};
pub(crate) use gemm_lt::LinearLt;
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

use crate::error::Result;
use std::sync::Arc;

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

/// Wraps a device, e.g. one made with `CudaDevice::with_stream` on a caller's stream.
impl From<Arc<CudaDevice>> for Device {
    fn from(dev: Arc<CudaDevice>) -> Self {
        Device::Cuda(dev)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
