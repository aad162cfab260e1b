//! `nn::PatchEncoder`: an image encoder small enough to train end to end with a captioner on a
//! CPU. The image is cut into P×P patches; each patch's pixels, beside a one-hot of its
//! position, go through one linear layer and a ReLU, giving one key [D] per patch (the regions
//! an attention decoder looks at). The one-hot's columns of the weight are a learned position
//! embedding: without it a context Σ α_l f_l could not tell the decoder where it looked.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::nn::{Linear, Module};
use crate::ops::pointwise::{relu, relu_backward};
use crate::size;
use crate::tensor::Tensor;

/// The images an encoder takes: channels × height × width pixels, cut into patch × patch
/// squares (height and width multiples of patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl ImageShape {
    pub fn check(&self) -> Result<()> {
        let ImageShape {
            channels: c,
            height: h,
            width: w,
            patch: p,
        } = *self;
        if c == 0 || p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::Config(format!(
                "images of {c}×{h}×{w} cannot be cut into {p}×{p} patches"
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

    /// The encoder's input width per patch: its pixels and the position one-hot.
    fn inputs(&self) -> usize {
        self.channels * self.patch * self.patch + self.regions()
    }
}

pub struct PatchEncoder {
    shape: ImageShape,
    /// [D, C·P·P + L] and [D]
    proj: Linear,
}

/// What `PatchEncoder::backward` needs.
pub struct Patches {
    input: Tensor,
    output: Tensor,
}

impl Module for PatchEncoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        super::parameters_of(&[("proj.", &self.proj)])
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        super::parameters_mut_of(vec![("proj.", &mut self.proj)])
    }
}

impl PatchEncoder {
    pub fn random(
        shape: ImageShape,
        dim: usize,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        shape.check()?;
        Ok(PatchEncoder {
            shape,
            proj: Linear::random(shape.inputs(), dim, true, device, dtype, seed)?,
        })
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
        let input = Tensor::from_f32(&self.rows(images, n)?, &[n * l, self.shape.inputs()], dtype)?
            .to(&device, dtype)?;
        let output = relu(&self.proj.forward(&input)?)?;
        let keys = output.to(&device, dtype)?.reshape(&[n, l, self.dim()])?;
        Ok((keys, train.then_some(Patches { input, output })))
    }

    /// Each patch's pixels (channel, row, column) then its position one-hot: [N·L, C·P·P + L].
    fn rows(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        let ImageShape {
            channels: c,
            height: h,
            width: w,
            patch: p,
        } = self.shape;
        let (gy, gx) = self.shape.grid();
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
                let (py, px) = (l / gx, l % gx);
                let mut k = 0;
                for ch in 0..c {
                    for y in 0..p {
                        let src = ((img * c + ch) * h + py * p + y) * w + px * p;
                        row[k..k + p].copy_from_slice(&images[src..src + p]);
                        k += p;
                    }
                }
                row[c * p * p + l] = 1.0;
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
        Ok(self.proj.backward(&saved.input, &g)?.into_params())
    }
}
