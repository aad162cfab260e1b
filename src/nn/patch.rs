//! `nn::PatchEncoder`: an image encoder small enough to train end to end with a captioner on a
//! CPU. The image is cut into P×P patches, one region each. A region reads the W×W window
//! centred on its patch (W ≥ P, zeros beyond the image): its pixels, beside a one-hot of its
//! position, go through a linear layer and a ReLU, giving one key [D] per region (what an
//! attention decoder looks at); optionally through a hidden layer of its own first, so that a
//! key is a two-layer network of its window (the shape of a digit is not a linear threshold of
//! its pixels). It is a convolution of kernel W and stride P (then a 1×1 one). Windows wider
//! than the patch let a region see a whole object that straddles a patch border, which is
//! what lets a region name the object under it. The one-hot's columns of the weight are a
//! learned position embedding: without it a context Σ α_l f_l could not tell the decoder where
//! it looked.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorFile;
use crate::nn::{Linear, Module};
use crate::ops::pointwise::{relu, relu_backward};
use crate::size;
use crate::tensor::Tensor;

/// The images an encoder takes: channels × height × width pixels, cut into patch × patch
/// squares (height and width multiples of patch), each region reading the window × window
/// square centred on its patch (window ≥ patch, the difference even).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub window: usize,
}

impl ImageShape {
    /// Regions that read their own patch only.
    pub fn patches(channels: usize, height: usize, width: usize, patch: usize) -> Self {
        ImageShape {
            channels,
            height,
            width,
            patch,
            window: patch,
        }
    }

    pub fn check(&self) -> Result<()> {
        let ImageShape {
            channels: c,
            height: h,
            width: w,
            patch: p,
            window: k,
        } = *self;
        if c == 0 || p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::Config(format!(
                "images of {c}×{h}×{w} cannot be cut into {p}×{p} patches"
            )));
        }
        if k < p || (k - p) % 2 != 0 || k > 4 * p {
            return Err(Error::Config(format!(
                "a {k}×{k} window cannot be centred on a {p}×{p} patch (at least the patch, at \
                 most 4 times it, the difference even)"
            )));
        }
        Ok(())
    }

    /// L: patches per image.
    pub fn regions(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch)
    }

    /// The (row, column) grid of patches.
    pub fn grid(&self) -> (usize, usize) {
        (self.height / self.patch, self.width / self.patch)
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The encoder's input width per region: its window's pixels and the position one-hot.
    fn inputs(&self) -> usize {
        self.channels * self.window * self.window + self.regions()
    }
}

pub struct PatchEncoder {
    shape: ImageShape,
    /// The hidden layer, when there is one: [Hd, C·W·W + L] and [Hd].
    window: Option<Linear>,
    /// [D, Hd] (or [D, C·W·W + L] without a hidden layer) and [D]
    proj: Linear,
}

/// What `PatchEncoder::backward` needs.
pub struct Patches {
    input: Tensor,
    /// The hidden layer's output, when there is one.
    hidden: Option<Tensor>,
    output: Tensor,
}

impl Module for PatchEncoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut parts: Vec<(&str, &dyn Module)> = Vec::new();
        if let Some(w) = &self.window {
            parts.push(("window.", w));
        }
        parts.push(("proj.", &self.proj));
        super::parameters_of(&parts)
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut parts: Vec<(&str, &mut dyn Module)> = Vec::new();
        if let Some(w) = &mut self.window {
            parts.push(("window.", w));
        }
        parts.push(("proj.", &mut self.proj));
        super::parameters_mut_of(parts)
    }
}

impl PatchEncoder {
    /// Keys of size `dim`, through a hidden layer of `hidden` units first when given.
    pub fn random(
        shape: ImageShape,
        hidden: Option<usize>,
        dim: usize,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        shape.check()?;
        if hidden == Some(0) || dim == 0 {
            return Err(Error::Config(
                "an encoder's hidden and output sizes must be at least 1".into(),
            ));
        }
        let window = hidden
            .map(|h| Linear::random(shape.inputs(), h, true, device, dtype, seed ^ 0x41d))
            .transpose()?;
        Ok(PatchEncoder {
            shape,
            proj: Linear::random(
                hidden.unwrap_or(shape.inputs()),
                dim,
                true,
                device,
                dtype,
                seed,
            )?,
            window,
        })
    }

    /// An encoder of `shape` with keys of size `dim` from the parameters under `prefix` in
    /// `file`; it has a hidden layer when the file holds `{prefix}window.weight` (its rows).
    pub fn load(
        file: &TensorFile,
        prefix: &str,
        shape: ImageShape,
        dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let name = format!("{prefix}window.weight");
        let hidden = match file.shape(&name) {
            None => None,
            Some(&[rows, _]) if rows > 0 => Some(rows),
            Some(got) => {
                let expected = format!("[hidden, {}] with hidden ≥ 1", shape.inputs());
                return Err(Error::shape(name, expected, got));
            }
        };
        let mut encoder = Self::random(shape, hidden, dim, device, dtype, 0)?;
        encoder.load_state_dict(file, prefix)?;
        Ok(encoder)
    }

    /// The hidden layer's size, when there is one.
    pub fn hidden(&self) -> Option<usize> {
        self.window.as_ref().map(|w| w.weight.shape()[0])
    }

    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// D: a key's size.
    pub fn dim(&self) -> usize {
        self.proj.weight.shape()[0]
    }

    /// Keys [N, L, D] for `images`, N images of `shape()` as f32 pixels [N, C, H, W]
    /// (row-major); with `train`, what `backward` needs.
    pub fn forward(&self, images: &[f32], train: bool) -> Result<(Tensor, Option<Patches>)> {
        let (per, l) = (self.shape.pixels(), self.shape.regions());
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(Error::shape(
                "images",
                format!("N × {per} pixels ({:?})", self.shape),
                &[images.len()],
            ));
        }
        let n = images.len() / per;
        Error::check_finite("images", images, &[n, per])?;
        let (device, dtype) = (self.proj.weight.device(), self.proj.weight.dtype());
        let input =
            Tensor::from_f32_vec(self.rows(images, n)?, &[n * l, self.shape.inputs()], dtype)?;
        let input = match device {
            Device::Cpu => input,
            Device::Cuda(_) => input.to(&device, dtype)?,
        };
        let hidden = match &self.window {
            Some(w) => Some(relu(&w.forward(&input)?)?),
            None => None,
        };
        let output = relu(&self.proj.forward(hidden.as_ref().unwrap_or(&input))?)?;
        let shape = [n, l, self.dim()];
        if !train {
            return Ok((output.reshape(&shape)?, None));
        }
        let keys = output.to(&device, dtype)?.reshape(&shape)?;
        Ok((
            keys,
            Some(Patches {
                input,
                hidden,
                output,
            }),
        ))
    }

    /// Each region's window (channel, row, column; zeros off the image), then its position
    /// one-hot: [N·L, C·W·W + L].
    fn rows(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        let ImageShape {
            channels: c,
            height: h,
            width: w,
            patch: p,
            window: k,
        } = self.shape;
        let (gy, gx) = self.shape.grid();
        let pad = (k - p) / 2;
        let width = self.shape.inputs();
        let mut out = size::zeros(
            "the patches",
            size::elements("patches", &[n, gy * gx, width])?,
        )?;
        for img in 0..n {
            for (l, row) in out[img * gy * gx * width..][..gy * gx * width]
                .chunks_exact_mut(width)
                .enumerate()
            {
                // The window's top-left corner, pad before the patch's.
                let (y0, x0) = (
                    (l / gx * p) as isize - pad as isize,
                    (l % gx * p) as isize - pad as isize,
                );
                // The window's columns that fall on the image.
                let (c0, c1) = (
                    (-x0).max(0) as usize,
                    (w as isize - x0).clamp(0, k as isize) as usize,
                );
                for ch in 0..c {
                    for dy in 0..k {
                        let y = y0 + dy as isize;
                        if y < 0 || y >= h as isize || c0 >= c1 {
                            continue;
                        }
                        let src = ((img * c + ch) * h + y as usize) * w;
                        let dst = (ch * k + dy) * k;
                        let from = (x0 + c0 as isize) as usize;
                        row[dst + c0..dst + c1]
                            .copy_from_slice(&images[src + from..src + from + c1 - c0]);
                    }
                }
                row[c * k * k + l] = 1.0;
            }
        }
        Ok(out)
    }

    /// The parameters' gradients (state_dict order) for grad_keys [N, L, D].
    pub fn backward(&self, saved: &Patches, grad_keys: &Tensor) -> Result<Vec<Tensor>> {
        let rows = saved.output.shape().to_vec();
        if grad_keys.numel() != saved.output.numel() {
            return Err(Error::shape(
                "grad_keys",
                format!("{rows:?} elements"),
                grad_keys.shape(),
            ));
        }
        let g = grad_keys
            .to(&grad_keys.device(), grad_keys.dtype())?
            .reshape(&rows)?;
        let g = relu_backward(&saved.output, &g)?;
        match (&self.window, &saved.hidden) {
            (Some(window), Some(hidden)) => {
                let proj = self.proj.backward(hidden, &g)?;
                let g = relu_backward(hidden, &proj.input)?;
                let mut grads = window.param_backward(&saved.input, &g)?;
                grads.push(proj.weight);
                grads.extend(proj.bias);
                Ok(grads)
            }
            (None, None) => self.proj.param_backward(&saved.input, &g),
            _ => Err(Error::Config(
                "these patches were saved by an encoder with other layers".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of `rows` against the definition: window pixel (ch, dy, dx) of region
    /// (gy, gx) is image pixel (ch, gy·P − pad + dy, gx·P − pad + dx), zero off the image.
    #[test]
    fn windows_are_centred_on_their_patches_with_zeros_outside() {
        let shape = ImageShape {
            channels: 2,
            height: 6,
            width: 9,
            patch: 3,
            window: 5,
        };
        let enc = PatchEncoder::random(shape, None, 4, &Device::Cpu, DType::F32, 1).unwrap();
        let n = 2;
        let images: Vec<f32> = (0..n * shape.pixels()).map(|v| v as f32 + 1.0).collect();
        let rows = enc.rows(&images, n).unwrap();
        let (gy, gx) = shape.grid();
        let (k, pad, width) = (5, 1isize, shape.inputs());
        for img in 0..n {
            for l in 0..gy * gx {
                let row = &rows[(img * gy * gx + l) * width..][..width];
                for ch in 0..2 {
                    for dy in 0..k {
                        for dx in 0..k {
                            let y = (l / gx * 3) as isize - pad + dy as isize;
                            let x = (l % gx * 3) as isize - pad + dx as isize;
                            let want = if (0..6).contains(&y) && (0..9).contains(&x) {
                                images[((img * 2 + ch) * 6 + y as usize) * 9 + x as usize]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                row[(ch * k + dy) * k + dx],
                                want,
                                "{img} {l} {ch} {dy} {dx}"
                            );
                        }
                    }
                }
                let one_hot = &row[2 * k * k..];
                assert!(one_hot
                    .iter()
                    .enumerate()
                    .all(|(j, &v)| v == f32::from(j == l)));
            }
        }
    }

    #[test]
    fn windows_that_cannot_be_centred_are_refused() {
        let bad = |window| {
            ImageShape {
                window,
                ..ImageShape::patches(1, 8, 8, 4)
            }
            .check()
        };
        assert!(bad(4).is_ok() && bad(8).is_ok());
        for w in [2, 5, 18] {
            assert!(bad(w).unwrap_err().to_string().contains("window"), "{w}");
        }
    }
}
