//! Integer ids beside `Tensor`: tokens for an embedding, rows for `index_select` (a beam
//! reorder), positions out of `argmax` and `top_k`. i32, row-major, on the host or one CUDA
//! device, so that decoding loops keep their ids on the device.

use crate::device::{CudaDevice, Device};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

enum Storage {
    Host(Vec<i32>),
    Cuda {
        data: CudaSlice<i32>,
        device: Arc<CudaDevice>,
    },
}

pub struct Indices {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Indices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = match &self.storage {
            Storage::Host(_) => "cpu".to_string(),
            Storage::Cuda { device, .. } => device.name(),
        };
        write!(f, "Indices({:?} on {on})", self.shape)
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel = crate::size::elements("indices", shape)?;
    if numel != len {
        let want = format!("a shape of {len} elements");
        return Err(Error::shape("indices", want, shape));
    }
    Ok(())
}

impl Indices {
    /// Host ids.
    pub fn from_vec(values: Vec<i32>, shape: &[usize]) -> Result<Self> {
        Indices::new(shape, Storage::Host(values))
    }

    /// Host ids from `usize`s (each must fit an i32).
    pub fn from_usize(values: &[usize], shape: &[usize]) -> Result<Self> {
        let ids = values
            .iter()
            .map(|&v| i32::try_from(v))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| Error::TooLarge {
                what: "an index".into(),
                needed: "more than 31 bits".into(),
                limit: "i32::MAX".into(),
            })?;
        Indices::from_vec(ids, shape)
    }

    pub(crate) fn from_cuda(
        data: CudaSlice<i32>,
        shape: &[usize],
        device: &Arc<CudaDevice>,
    ) -> Result<Self> {
        let device = device.clone();
        Indices::new(shape, Storage::Cuda { data, device })
    }

    /// `storage` as ids of `shape`, which must hold as many elements.
    fn new(shape: &[usize], storage: Storage) -> Result<Self> {
        let len = match &storage {
            Storage::Host(v) => v.len(),
            Storage::Cuda { data, .. } => data.len(),
        };
        check_len(shape, len)?;
        Ok(Indices {
            shape: shape.to_vec(),
            storage,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.storage, Storage::Cuda { .. })
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) => Device::Cpu,
            Storage::Cuda { device, .. } => Device::Cuda(device.clone()),
        }
    }

    /// The ids on the host (copied from the device and waited for).
    pub fn to_vec(&self) -> Result<Vec<i32>> {
        match &self.storage {
            Storage::Host(v) => Ok(v.clone()),
            Storage::Cuda { data, device } => Ok(device.stream().clone_dtoh(data)?),
        }
    }

    /// The host ids, when these are host ids.
    pub fn host_slice(&self) -> Result<&[i32]> {
        match &self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Cuda { .. } => Err(Error::DeviceMismatch {
                expected: "cpu".into(),
                got: "cuda".into(),
            }),
        }
    }

    /// The device buffer, when these are CUDA ids.
    pub fn cuda_slice(&self) -> Result<&CudaSlice<i32>> {
        self.cuda().map(|(data, _)| data)
    }

    /// The device that owns the ids, when they are CUDA ids.
    pub fn cuda_device(&self) -> Result<&Arc<CudaDevice>> {
        self.cuda().map(|(_, device)| device)
    }

    fn cuda(&self) -> Result<(&CudaSlice<i32>, &Arc<CudaDevice>)> {
        match &self.storage {
            Storage::Cuda { data, device } => Ok((data, device)),
            Storage::Host(_) => Err(Error::DeviceMismatch {
                expected: "cuda".into(),
                got: "cpu".into(),
            }),
        }
    }

    /// Checks that these ids live on `device` (the same CUDA context for CUDA devices); `name`
    /// names them in the error.
    pub(crate) fn check_on(&self, device: &Device, name: &str) -> Result<()> {
        let ok = match (&self.storage, device) {
            (Storage::Host(_), Device::Cpu) => true,
            (Storage::Cuda { data, .. }, Device::Cuda(dev)) => dev.owns(data.context()),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                expected: device.name(),
                got: format!("{name} on {}", self.device().name()),
            })
        }
    }

    /// Checks host ids against 0..`limit`: `Error::Index` names the first one outside it (its
    /// flat position and value) and `name`. CUDA ids are not read (the kernels check them).
    pub(crate) fn check_host_range(&self, limit: usize, name: &str) -> Result<()> {
        let Storage::Host(ids) = &self.storage else {
            return Ok(());
        };
        match ids
            .iter()
            .position(|&id| usize::try_from(id).map_or(true, |id| id >= limit))
        {
            Some(position) => Err(Error::Index {
                tensor: name.into(),
                position,
                value: ids[position].into(),
                limit,
            }),
            None => Ok(()),
        }
    }

    /// A copy on `device`.
    pub fn to(&self, device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Indices::from_vec(self.to_vec()?, &self.shape),
            Device::Cuda(dev) => {
                let data = match &self.storage {
                    // The driver refuses zero-byte allocations.
                    _ if self.numel() == 0 => dev.empty::<i32>()?,
                    Storage::Cuda { data, .. } => dev.stream().clone_dtod(data)?,
                    Storage::Host(v) => dev.stream().clone_htod(v)?,
                };
                Indices::from_cuda(data, &self.shape, dev)
            }
        }
    }
}
