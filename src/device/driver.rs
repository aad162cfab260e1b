//! The driver calls that cudarc's safe types do not cover: memsets and copies at raw
//! addresses on a given stream, graph capture and replay, device and function attributes.
//! Nothing outside `device/` calls `cudarc::driver::{result, sys}`.

use super::CudaDevice;
use crate::error::Result;
use cudarc::driver::{result as dr, sys, CudaFunction, CudaGraph, CudaStream, DeviceRepr};
use std::sync::Arc;

/// Enqueues filling `bytes` bytes at `dst` with `byte` on `stream`.
///
/// # Safety
/// The range must lie in a live allocation of the stream's context.
pub(crate) unsafe fn fill_bytes_async(
    stream: &CudaStream,
    dst: u64,
    byte: u8,
    bytes: usize,
) -> Result<()> {
    // SAFETY: the caller vouches for the range; the stream is live.
    unsafe { Ok(dr::memset_d8_async(dst, byte, bytes, stream.cu_stream())?) }
}

/// Enqueues filling `count` 32-bit words at `dst` with `word` on `stream`.
///
/// # Safety
/// The `4·count` bytes at `dst` must lie in a live allocation of the stream's context.
pub(crate) unsafe fn fill_words_async(
    stream: &CudaStream,
    dst: u64,
    word: u32,
    count: usize,
) -> Result<()> {
    // SAFETY: the caller vouches for the range; the stream is live.
    unsafe { Ok(sys::cuMemsetD32Async(dst, word, count, stream.cu_stream()).result()?) }
}

/// Enqueues copying `host` to `dst` on `stream`. From pageable memory the driver stages the
/// copy before this returns, so `host` may go at once.
///
/// # Safety
/// `dst` must address room for `host.len()` values in a live allocation of the stream's
/// context.
pub(crate) unsafe fn copy_to_device_async<T: DeviceRepr>(
    stream: &CudaStream,
    dst: u64,
    host: &[T],
) -> Result<()> {
    // SAFETY: the caller vouches for `dst`; `host` is a live slice.
    unsafe { Ok(dr::memcpy_htod_async(dst, host, stream.cu_stream())?) }
}

/// Starts recording `stream` into a graph. Thread-local mode: work other threads enqueue
/// meanwhile is neither recorded nor refused.
pub(crate) fn begin_capture(stream: &CudaStream) -> Result<()> {
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    Ok(stream.begin_capture(mode)?)
}

/// Ends the recording `begin_capture` started: the graph, if anything was recorded.
pub(crate) fn end_capture(stream: &Arc<CudaStream>) -> Result<Option<CudaGraph>> {
    Ok(stream.end_capture(sys::CUgraphInstantiate_flags(0))?)
}

/// Enqueues a replay of `graph` on `stream`.
///
/// # Safety
/// Every buffer the graph's kernels address must still be alive.
pub(crate) unsafe fn replay(graph: &CudaGraph, stream: &CudaStream) -> Result<()> {
    // SAFETY: the caller vouches for the graph's buffers.
    unsafe {
        Ok(dr::graph::launch(
            graph.cu_graph_exec(),
            stream.cu_stream(),
        )?)
    }
}

/// Lets `function` take `bytes` of dynamic shared memory (past the default 48 KiB).
pub(crate) fn allow_dynamic_shared(function: &CudaFunction, bytes: usize) -> Result<()> {
    let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    Ok(function.set_attribute(attribute, bytes as i32)?)
}

impl CudaDevice {
    fn device_attribute(&self, attribute: sys::CUdevice_attribute) -> Result<i32> {
        Ok(self.context().attribute(attribute)?)
    }

    /// Streaming multiprocessors.
    pub(crate) fn multiprocessors(&self) -> Result<usize> {
        use sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS;
        Ok(self.device_attribute(SMS)? as usize)
    }

    /// Whether the device can launch cooperatively (all blocks resident at once).
    pub(crate) fn cooperative_launch(&self) -> Result<bool> {
        use sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH as COOPERATIVE;
        Ok(self.device_attribute(COOPERATIVE)? != 0)
    }

    /// The shared memory a block may opt in to, in bytes.
    pub(crate) fn shared_memory_optin(&self) -> Result<usize> {
        use sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN as OPTIN;
        Ok(self.device_attribute(OPTIN)? as usize)
    }
}
