//! Convolutions over channels-last maps: a map of N images is a matrix [N·H·W, C] (one row per
//! pixel, image by image, row-major), and a convolution is `Windows::gather` (every output
//! position's K×K window as one row) followed by an `nn::Linear`; its backward is the same in
//! reverse (`Windows::scatter` adds each window's gradient back where it was read). On CUDA
//! (and for f16/bf16 maps) gather is `ops::index_select` of the map's rows beside one zero row
//! for the padding and scatter is `index_select_backward`, kernels already checked against
//! PyTorch, so no new kernel is needed; a host f32 map takes one copying pass instead.
//!
//! A window's row holds (ky, kx, channel) in that order, so a weight [out, K·K·C] is PyTorch's
//! Conv2d weight [out, C, K, K] permuted to (out, ky, kx, C).

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::indices::Indices;
use crate::nn::{Linear, Module};
use crate::ops::concat::{concat, split};
use crate::ops::index_select::{index_select, index_select_backward};
use crate::ops::pointwise::{relu, relu_backward};
use crate::size;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// Where the windows of a convolution read: a K×K kernel at stride S with `pad` zeros on each
/// side of an H×W map of C channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Geometry {
    /// The output's rows and columns.
    pub fn output(&self) -> (usize, usize) {
        let out = |n: usize| (n + 2 * self.pad - self.kernel) / self.stride + 1;
        (out(self.height), out(self.width))
    }

    /// A window's width: K·K·C.
    pub fn columns(&self) -> usize {
        self.kernel * self.kernel * self.channels
    }

    /// For `n` images, the map row each window entry reads (n·H·W, the zero row, off the map):
    /// output position by position, then (ky, kx).
    fn ids(&self, n: usize) -> Result<Vec<i32>> {
        let Geometry {
            height: h,
            width: w,
            kernel: k,
            stride: s,
            pad: p,
            ..
        } = *self;
        let (oh, ow) = self.output();
        let zero = size::elements("map rows", &[n, h, w])?;
        let count = size::elements("window entries", &[n, oh, ow, k, k])?;
        if zero >= i32::MAX as usize {
            return Err(Error::Config(format!(
                "{n} maps of {h}×{w} have more rows than an index can name"
            )));
        }
        let mut ids = Vec::with_capacity(count);
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * s + ky).wrapping_sub(p);
                            let x = (ox * s + kx).wrapping_sub(p);
                            ids.push(if y < h && x < w {
                                ((img * h + y) * w + x) as i32
                            } else {
                                zero as i32
                            });
                        }
                    }
                }
            }
        }
        Ok(ids)
    }
}

/// A `Geometry`, optionally with each window's position one-hot after its entries (a learned
/// position embedding in the next layer's weight), and its ids and one-hots for the last batch
/// size it saw (kept on the device, so a training loop uploads them once). A layer's windows
/// serve the layer's one device.
pub(crate) struct Windows {
    geometry: Geometry,
    one_hot: bool,
    cache: Mutex<Option<Cached>>,
}

/// The device-side ids, zero row and one-hots (in `dtype`) for `n` images.
struct Cached {
    n: usize,
    dtype: DType,
    ids: Indices,
    /// [1, C]: what padding reads.
    zero: Tensor,
    one_hots: Option<Tensor>,
}

impl Windows {
    pub fn new(geometry: Geometry, one_hot: bool) -> Self {
        Windows {
            geometry,
            one_hot,
            cache: Mutex::new(None),
        }
    }

    /// L: windows per image.
    fn positions(&self) -> usize {
        let (oh, ow) = self.geometry.output();
        oh * ow
    }

    /// A gathered row's width: K·K·C, and L with the one-hot.
    pub fn width(&self) -> usize {
        self.geometry.columns() + if self.one_hot { self.positions() } else { 0 }
    }

    /// Runs `f` with the ids (and one-hots) for `n` images on `device` in `dtype`.
    fn with_cached<T>(
        &self,
        n: usize,
        device: &Device,
        dtype: DType,
        f: impl FnOnce(&Cached) -> Result<T>,
    ) -> Result<T> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cached =
            |c: &Cached| c.n == n && c.dtype == dtype && c.ids.is_cuda() == device.is_cuda();
        if !cache.as_ref().is_some_and(cached) {
            let ids = self.geometry.ids(n)?;
            let len = ids.len();
            let l = self.positions();
            let one_hots = self
                .one_hot
                .then(|| {
                    let mut v: Vec<f32> =
                        size::zeros("the one-hots", size::elements("one-hots", &[n, l, l])?)?;
                    for (r, row) in v.chunks_exact_mut(l).enumerate() {
                        row[r % l] = 1.0;
                    }
                    Tensor::from_f32(&v, &[n * l, l], dtype)?.to(device, dtype)
                })
                .transpose()?;
            let c = self.geometry.channels;
            *cache = Some(Cached {
                n,
                dtype,
                ids: Indices::from_vec(ids, &[len])?.to(device)?,
                zero: Tensor::from_f32(&vec![0.0; c], &[1, c], dtype)?.to(device, dtype)?,
                one_hots,
            });
        }
        f(cache.as_ref().expect("filled above"))
    }

    /// Every window of `map` [n·H·W, C] as a row: [n·L, K·K·C (+ L)].
    pub fn gather(&self, map: &Tensor, n: usize) -> Result<Tensor> {
        let g = self.geometry;
        let rows = n * g.height * g.width;
        if map.shape() != [rows, g.channels] {
            return Err(Error::shape(
                "map",
                format!(
                    "[{rows}, {}] ({n} maps of {}×{})",
                    g.channels, g.height, g.width
                ),
                map.shape(),
            ));
        }
        if let Ok(values) = map.host_slice::<f32>() {
            return self.gather_host(values, n);
        }
        let (device, dtype) = (map.device(), map.dtype());
        self.with_cached(n, &device, dtype, |c| {
            let padded = concat(&[map, &c.zero], 0)?;
            let cut =
                index_select(&padded, 0, &c.ids)?.reshape(&[n * self.positions(), g.columns()])?;
            match &c.one_hots {
                Some(one_hots) => concat(&[&cut, one_hots], 1),
                None => Ok(cut),
            }
        })
    }

    /// The backward of `gather`: each window entry's gradient added to the map row it read,
    /// [n·H·W, C] for grad_windows [n·L, K·K·C (+ L)] (the one-hots' columns are not read).
    pub fn scatter(&self, grad_windows: &Tensor, n: usize) -> Result<Tensor> {
        let g = self.geometry;
        let expected = [n * self.positions(), self.width()];
        if grad_windows.shape() != expected {
            return Err(Error::shape(
                "grad_windows",
                format!("{expected:?}"),
                grad_windows.shape(),
            ));
        }
        if let Ok(values) = grad_windows.host_slice::<f32>() {
            return self.scatter_host(values, n);
        }
        let rows = n * g.height * g.width;
        let (device, dtype) = (grad_windows.device(), grad_windows.dtype());
        let cut = match self.one_hot {
            true => split(grad_windows, 1, &[g.columns(), self.positions()])?.swap_remove(0),
            false => grad_windows.to(&device, dtype)?,
        };
        let per_entry = cut.reshape(&[n * self.positions() * g.kernel * g.kernel, g.channels])?;
        let padded = self.with_cached(n, &device, dtype, |c| {
            index_select_backward(&per_entry, 0, &c.ids, rows + 1)
        })?;
        Ok(split(&padded, 0, &[rows, 1])?.swap_remove(0))
    }

    /// `gather` of a host f32 map in one pass over the ids, image by image on the worker
    /// threads, copying each run of adjacent map rows (a kernel row) at once.
    fn gather_host(&self, map: &[f32], n: usize) -> Result<Tensor> {
        let (kk, c, width, l) = (
            self.geometry.kernel * self.geometry.kernel,
            self.geometry.channels,
            self.width(),
            self.positions(),
        );
        let zero = map.len() / c;
        let out = self.with_cached(n, &Device::Cpu, DType::F32, |cached| {
            let ids = cached.ids.host_slice()?;
            let count = size::elements("windows", &[n, l, width])?;
            // SAFETY: every row is written whole: its entries by `copy_runs`, then its
            // one-hot columns.
            unsafe {
                size::filled("the windows", count, |out| {
                    out.par_chunks_mut(l * width)
                        .zip(ids.par_chunks(l * kk))
                        .for_each(|(out, ids)| {
                            for (r, (row, ids)) in out
                                .chunks_exact_mut(width)
                                .zip(ids.chunks_exact(kk))
                                .enumerate()
                            {
                                let (entries, hot) = row.split_at_mut(kk * c);
                                copy_runs(map, c, zero, ids, entries);
                                for (j, v) in hot.iter_mut().enumerate() {
                                    v.write(f32::from(j == r));
                                }
                            }
                        })
                })
            }
        })?;
        Tensor::from_vec(out, &[n * l, width])
    }

    /// `scatter` of a host f32 gradient in one pass over the ids, image by image on the worker
    /// threads (an image's windows read only its own map rows; f32 sums: a map entry is in at
    /// most ⌈K/S⌉² windows).
    fn scatter_host(&self, grad: &[f32], n: usize) -> Result<Tensor> {
        let g = self.geometry;
        let (kk, c, width, l) = (
            g.kernel * g.kernel,
            g.channels,
            self.width(),
            self.positions(),
        );
        let per_image = g.height * g.width * c;
        let mut out: Vec<f32> = size::zeros(
            "the map gradient",
            size::elements("map", &[n, g.height, g.width, c])?,
        )?;
        self.with_cached(n, &Device::Cpu, DType::F32, |cached| {
            let ids = cached.ids.host_slice()?;
            out.par_chunks_mut(per_image)
                .zip(grad.par_chunks(l * width).zip(ids.par_chunks(l * kk)))
                .enumerate()
                .for_each(|(img, (out, (grad, ids)))| {
                    let first = img * per_image;
                    for (row, ids) in grad.chunks_exact(width).zip(ids.chunks_exact(kk)) {
                        for (entry, &id) in row.chunks_exact(c).zip(ids) {
                            // The zero row (id n·H·W) takes nothing.
                            if let Some(at) = (id as usize * c).checked_sub(first) {
                                if at < per_image {
                                    for (a, &v) in out[at..at + c].iter_mut().zip(entry) {
                                        *a += v;
                                    }
                                }
                            }
                        }
                    }
                });
            Ok(())
        })?;
        Tensor::from_vec(out, &[n * g.height * g.width, c])
    }
}

/// Writes the map rows `ids` name (`c` values each; `zero`, past the map, for zeros) into
/// `out`, one copy per run of consecutive rows.
fn copy_runs(map: &[f32], c: usize, zero: usize, ids: &[i32], out: &mut [MaybeUninit<f32>]) {
    let mut j = 0;
    while j < ids.len() {
        let first = ids[j] as usize;
        let mut end = j + 1;
        while end < ids.len() && first + (end - j) < zero && ids[end] as usize == first + (end - j)
        {
            end += 1;
        }
        let dst = &mut out[j * c..end * c];
        if first == zero {
            dst.iter_mut().for_each(|v| {
                v.write(0.0);
            });
        } else {
            for (d, &s) in dst.iter_mut().zip(&map[first * c..(first + end - j) * c]) {
                d.write(s);
            }
        }
        j = end;
    }
}

/// A convolution and a ReLU: ReLU(windows · Wᵀ + b).
pub(crate) struct Conv {
    windows: Windows,
    linear: Linear,
}

/// A convolution's output, and the windows it read (what `Conv::backward` needs).
pub(crate) struct ConvSaved {
    windows: Tensor,
    pub output: Tensor,
}

impl Conv {
    pub fn new(geometry: Geometry, linear: Linear) -> Result<Self> {
        if linear.weight.shape()[1] != geometry.columns() {
            return Err(Error::shape(
                "conv weight",
                format!("[out, {}]", geometry.columns()),
                linear.weight.shape(),
            ));
        }
        Ok(Conv {
            windows: Windows::new(geometry, false),
            linear,
        })
    }

    /// The output channels.
    pub fn channels(&self) -> usize {
        self.linear.weight.shape()[0]
    }

    /// The output map [n·OH·OW, out] of `map` [n·H·W, C], with what the backward needs.
    pub fn forward(&self, map: &Tensor, n: usize) -> Result<ConvSaved> {
        let windows = self.windows.gather(map, n)?;
        let output = relu(&self.linear.forward(&windows)?)?;
        Ok(ConvSaved { windows, output })
    }

    /// The parameters' gradients (weight, bias) for grad_output [n·OH·OW, out], and the input
    /// map's when `input` is asked for.
    pub fn backward(
        &self,
        saved: &ConvSaved,
        grad_output: &Tensor,
        n: usize,
        input: bool,
    ) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        let g = relu_backward(&saved.output, grad_output)?;
        let (params, grad_windows) = self.linear.grads(&saved.windows, &g, input)?;
        let grad_map = grad_windows
            .map(|g| self.windows.scatter(&g, n))
            .transpose()?;
        Ok((params, grad_map))
    }
}

impl Module for Conv {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        self.linear.parameters()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.linear.parameters_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An odd geometry: 5×6 map, 3 channels, 4×4 kernel at stride 2, padding 1 (2×3 outputs).
    const ODD: Geometry = Geometry {
        height: 5,
        width: 6,
        channels: 3,
        kernel: 4,
        stride: 2,
        pad: 1,
    };

    /// Small integers, exact in f16 and bf16 and in any order of summation.
    fn map(n: usize) -> Vec<f32> {
        (0..n * 5 * 6 * 3).map(|v| (v % 13) as f32 - 4.0).collect()
    }

    /// Every gathered entry against the definition: window (oy, ox), entry (ky, kx, c) is map
    /// pixel (oy·S − pad + ky, ox·S − pad + kx) channel c, zero off the map, then the window's
    /// position one-hot; and `scatter` is its adjoint: ⟨gather(x), g⟩ = ⟨x, scatter(g)⟩.
    #[test]
    fn windows_read_the_definition_and_scatter_is_their_adjoint() {
        let (n, (oh, ow)) = (2, ODD.output());
        assert_eq!((oh, ow), (2, 3));
        let map = map(n);
        let x = Tensor::from_f32(&map, &[n * 30, 3], DType::F32).unwrap();
        for one_hot in [false, true] {
            let w = Windows::new(ODD, one_hot);
            let width = 48 + if one_hot { 6 } else { 0 };
            assert_eq!(w.width(), width);
            let got = w.gather(&x, n).unwrap();
            assert_eq!(got.shape(), [n * 6, width]);
            let got = got.to_vec_f32().unwrap();
            for (r, row) in got.chunks_exact(width).enumerate() {
                let (img, oy, ox) = (r / 6, r / 3 % 2, r % 3);
                for ky in 0..4 {
                    for kx in 0..4 {
                        for c in 0..3 {
                            let y = (oy * 2 + ky) as isize - 1;
                            let xx = (ox * 2 + kx) as isize - 1;
                            let want = if (0..5).contains(&y) && (0..6).contains(&xx) {
                                map[((img * 5 + y as usize) * 6 + xx as usize) * 3 + c]
                            } else {
                                0.0
                            };
                            let at = (ky * 4 + kx) * 3 + c;
                            assert_eq!(row[at], want, "{r} {ky} {kx} {c}");
                        }
                    }
                }
                let hot: Vec<f32> = (0..width - 48).map(|j| f32::from(j == r % 6)).collect();
                assert_eq!(row[48..], hot[..], "{r}");
            }
            let grad: Vec<f32> = (0..got.len())
                .map(|i| ((i * 7) % 11) as f32 - 5.0)
                .collect();
            let gt = Tensor::from_f32(&grad, &[n * 6, width], DType::F32).unwrap();
            let back = w.scatter(&gt, n).unwrap().to_vec_f32().unwrap();
            // The one-hots are constants: only the window entries carry the map's gradient.
            let lhs: f64 = (got.chunks_exact(width).zip(grad.chunks_exact(width)))
                .flat_map(|(a, b)| a[..48].iter().zip(&b[..48]))
                .map(|(a, b)| (a * b) as f64)
                .sum();
            let rhs: f64 = map.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert_eq!(lhs, rhs, "one-hot {one_hot}");
        }
    }

    /// Maps that are not host f32 (f16 and bf16 here, every map on CUDA) go through
    /// `index_select` and `concat`; they give what the host pass gives.
    #[test]
    fn the_composed_path_equals_the_host_pass() {
        let n = 3;
        let map = map(n);
        let grad: Vec<f32> = (0..n * 6 * 54)
            .map(|i| ((i * 5) % 9) as f32 - 4.0)
            .collect();
        let w = Windows::new(ODD, true);
        let host = |values: &[f32], shape: &[usize], dtype| {
            Tensor::from_f32(values, shape, dtype).unwrap()
        };
        let want = w.gather(&host(&map, &[n * 30, 3], DType::F32), n).unwrap();
        let want_back = w
            .scatter(&host(&grad, &[n * 6, 54], DType::F32), n)
            .unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let got = w.gather(&host(&map, &[n * 30, 3], dtype), n).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_eq!(
                got.to_vec_f32().unwrap(),
                want.to_vec_f32().unwrap(),
                "{dtype:?}"
            );
            let back = w.scatter(&host(&grad, &[n * 6, 54], dtype), n).unwrap();
            assert_eq!(back.shape(), [n * 30, 3]);
            let back = back.to_vec_f32().unwrap();
            assert_eq!(back, want_back.to_vec_f32().unwrap(), "{dtype:?}");
        }
    }

    #[test]
    fn maps_and_gradients_of_the_wrong_shape_are_refused() {
        let w = Windows::new(ODD, true);
        let x = Tensor::from_f32(&[1.0; 87], &[29, 3], DType::F32).unwrap();
        assert!(w.gather(&x, 1).unwrap_err().to_string().contains("map"));
        let g = Tensor::from_f32(&[1.0; 288], &[6, 48], DType::F32).unwrap();
        assert!(w
            .scatter(&g, 1)
            .unwrap_err()
            .to_string()
            .contains("grad_windows"));
    }
}
