//! CUDA launchers of kernels/concat.cu: one strided copy between the whole and its pieces, in
//! either direction.
//!
//! The pieces' addresses and widths go into the launch as kernel parameters, `PIECES` per
//! launch, rather than into a table in device memory: a call then uploads nothing (no host
//! copy to wait on, and it can be captured in a CUDA graph), and the common cases — two pieces
//! (a decoder's [embedding; context]), three or four (gates) — are one launch. More pieces take
//! one launch per `PIECES`; empty pieces take none.

use super::Layout;
use crate::device::kernels::{codes, ids};
use crate::device::launch::{grid_stride, launch};
use crate::device::{data_ptr, reading, CudaDevice};
use crate::dtype::{CudaData, DType};
use crate::error::Result;
use crate::tensor::Tensor;
use cudarc::driver::CudaStream;

/// Pieces per launch (CONCAT_PIECES of kernels/codes.cuh; the launch below passes four).
const PIECES: usize = codes::CONCAT_PIECES as usize;
const _: () = assert!(PIECES == 4);

/// Which way a copy runs (the kernel's `split` flag).
#[derive(Clone, Copy)]
enum Direction {
    /// Pieces into the whole.
    Gather = 0,
    /// The whole into the pieces.
    Scatter = 1,
}

/// Runs `f` with the addresses of `data` for reading on `stream` (each read recorded after `f`
/// has enqueued its work, as `reading` does for one buffer).
fn reading_all<R>(
    data: &[&CudaData],
    stream: &CudaStream,
    ptrs: &mut Vec<u64>,
    f: &mut dyn FnMut(&[u64]) -> R,
) -> R {
    match data.split_first() {
        None => f(ptrs),
        Some((first, rest)) => reading(first, stream, |ptr| {
            ptrs.push(ptr);
            reading_all(rest, stream, ptrs, f)
        }),
    }
}

/// Enqueues the copies between the whole at `whole` and the pieces at `pieces` (one address
/// per piece of `layout`, in order), `PIECES` non-empty pieces per launch.
fn copy(
    dev: &CudaDevice,
    dtype: DType,
    whole: u64,
    layout: &Layout,
    pieces: &[u64],
    direction: Direction,
) -> Result<()> {
    let f = dev.function(ids::concat::CONCAT_COPY, dtype)?;
    let stream = dev.stream();
    // Non-empty pieces with their first column in the whole row; consecutive ones are
    // adjacent there, since the empty ones between them have no columns.
    let mut column = 0;
    let runs: Vec<(u64, usize, usize)> = pieces
        .iter()
        .zip(layout.widths())
        .filter_map(|(&ptr, w)| {
            let run = (ptr, w, column);
            column += w;
            (w > 0).then_some(run)
        })
        .collect();
    let (rows, whole_width) = (layout.outer as u64, layout.whole_width() as u64);
    let split = direction as i32;
    for group in runs.chunks(PIECES) {
        let col0 = group[0].2 as u64;
        // Unused slots: width 0, never dereferenced.
        let mut slots = [(whole, 0u64); PIECES];
        for (slot, &(ptr, w, _)) in slots.iter_mut().zip(group) {
            *slot = (ptr, w as u64);
        }
        let width: usize = group.iter().map(|&(_, w, _)| w).sum();
        let [(p0, w0), (p1, w1), (p2, w2), (p3, w3)] = slots;
        // SAFETY: `whole` holds rows × whole_width elements of `dtype` and each piece rows × its
        // width (the layout the callers built from the tensors' shapes); the launch covers the
        // group's rows × width elements, columns col0..col0 + width of each whole row.
        unsafe {
            launch!(stream, &f, grid_stride(layout.outer * width);
                whole, whole_width, col0, rows, p0, w0, p1, w1, p2, w2, p3, w3, split);
        }
    }
    Ok(())
}

pub(super) fn concat(tensors: &[&Tensor], layout: &Layout, shape: &[usize]) -> Result<Tensor> {
    let dev = tensors[0].cuda_device()?;
    let dtype = tensors[0].dtype();
    let total = layout.outer * layout.whole_width();
    if total == 0 {
        return Tensor::from_cuda_data(dev.empty_data(dtype)?, shape, dev);
    }
    let out = dev.alloc_output_data(dtype, total)?;
    let whole = data_ptr(&out, dev.stream());
    let data = tensors
        .iter()
        .map(|t| t.cuda_data())
        .collect::<Result<Vec<_>>>()?;
    reading_all(&data, dev.stream(), &mut Vec::new(), &mut |pieces| {
        copy(dev, dtype, whole, layout, pieces, Direction::Gather)
    })?;
    Tensor::from_cuda_data(out, shape, dev)
}

pub(super) fn split(x: &Tensor, layout: &Layout, shapes: &[Vec<usize>]) -> Result<Vec<Tensor>> {
    let dev = x.cuda_device()?;
    let dtype = x.dtype();
    let outs = shapes
        .iter()
        .map(|s| match s.iter().product() {
            0 => dev.empty_data(dtype),
            n => dev.alloc_output_data(dtype, n),
        })
        .collect::<Result<Vec<_>>>()?;
    let pieces: Vec<u64> = outs.iter().map(|o| data_ptr(o, dev.stream())).collect();
    if x.numel() > 0 {
        reading(x.cuda_data()?, dev.stream(), |whole| {
            copy(dev, dtype, whole, layout, &pieces, Direction::Scatter)
        })?;
    }
    outs.into_iter()
        .zip(shapes)
        .map(|(data, shape)| Tensor::from_cuda_data(data, shape, dev))
        .collect()
}
