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
//!
//! Optionally a stem of convolutions comes first (`nn::conv`: 4×4 kernels at stride 2, zero
//! padding 1, ReLU, each halving the image), and the windows are read from its last map, in
//! its units (W/2^s at stride P/2^s after s of them): the same regions and receptive field,
//! but what a region sees is built from small shared filters that find a stroke wherever it
//! falls, which is what lets the encoder read digits at positions it was not trained on.
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorFile;
use crate::nn::conv::{Conv, ConvSaved, Geometry, Windows};
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
    /// The windows the key layer reads after a stem of `convs` convolutions: in the last
    /// map's units, of its channels (the image itself without a stem).
    fn key_windows(&self, convs: &[usize]) -> Result<Geometry> {
        let s = convs.len();
        let scale = 1usize << s.min(usize::BITS as usize - 1);
        let (p, k) = (self.patch, self.window);
        if s > 0 && (p % scale != 0 || k % scale != 0 || (k - p) % (2 * scale) != 0) {
            return Err(Error::Config(format!(
                "{s} stride-2 convolutions leave no whole {p}×{p} patch and {k}×{k} window \
                 (both must divide by {scale}, their difference by {})",
                2 * scale
            )));
        }
        Ok(Geometry {
            height: self.height / scale,
            width: self.width / scale,
            channels: convs.last().copied().unwrap_or(self.channels),
            kernel: k / scale,
            stride: p / scale,
            pad: (k - p) / 2 / scale,
        })
    }
}

/// The layers between the pixels and the key layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderLayers {
    /// The output channels of each stem convolution (4×4, stride 2), first to last; empty for
    /// windows of raw pixels.
    pub convs: Vec<usize>,
    /// A hidden layer between a window and its key.
    pub hidden: Option<usize>,
}

pub struct PatchEncoder {
    shape: ImageShape,
    stem: Vec<Conv>,
    /// The key layer's windows over the stem's last map, with their position one-hots (none
    /// without a stem: the windows are cut from the pixels on the host).
    key_windows: Option<Windows>,
    /// The hidden layer, when there is one: [Hd, K·K·C + L] and [Hd].
    window: Option<Linear>,
    /// [D, Hd] (or [D, K·K·C + L] without a hidden layer) and [D]
    proj: Linear,
}

/// What `PatchEncoder::backward` needs.
pub struct Patches {
    images: usize,
    stem: Vec<ConvSaved>,
    input: Tensor,
    /// The hidden layer's output, when there is one.
    hidden: Option<Tensor>,
    output: Tensor,
}

impl Module for PatchEncoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let prefixes = self.stem_prefixes();
        let mut parts: Vec<(&str, &dyn Module)> = Vec::new();
        for (prefix, conv) in prefixes.iter().zip(&self.stem) {
            parts.push((prefix, conv));
        }
        if let Some(w) = &self.window {
            parts.push(("window.", w));
        }
        parts.push(("proj.", &self.proj));
        super::parameters_of(&parts)
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let prefixes = self.stem_prefixes();
        let mut parts: Vec<(&str, &mut dyn Module)> = Vec::new();
        for (prefix, conv) in prefixes.iter().zip(&mut self.stem) {
            parts.push((prefix, conv));
        }
        if let Some(w) = &mut self.window {
            parts.push(("window.", w));
        }
        parts.push(("proj.", &mut self.proj));
        super::parameters_mut_of(parts)
    }
}

impl PatchEncoder {
    /// Keys of size `dim` through `layers`.
    pub fn random(
        shape: ImageShape,
        layers: &EncoderLayers,
        dim: usize,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        shape.check()?;
        if layers.hidden == Some(0) || dim == 0 || layers.convs.contains(&0) {
            return Err(Error::Config(
                "an encoder's convolutions, hidden and output sizes must be at least 1".into(),
            ));
        }
        let key = shape.key_windows(&layers.convs)?;
        let mut stem = Vec::with_capacity(layers.convs.len());
        let (mut h, mut w, mut c) = (shape.height, shape.width, shape.channels);
        for (i, &out) in layers.convs.iter().enumerate() {
            let geometry = Geometry {
                height: h,
                width: w,
                channels: c,
                kernel: 4,
                stride: 2,
                pad: 1,
            };
            let linear = Linear::random(
                geometry.columns(),
                out,
                true,
                device,
                dtype,
                seed ^ (0xc0 + i as u64),
            )?;
            stem.push(Conv::new(geometry, linear)?);
            (h, w, c) = (h / 2, w / 2, out);
        }
        let inputs = key.columns() + shape.regions();
        let window = layers
            .hidden
            .map(|h| Linear::random(inputs, h, true, device, dtype, seed ^ 0x41d))
            .transpose()?;
        Ok(PatchEncoder {
            shape,
            key_windows: (!stem.is_empty()).then(|| Windows::new(key, true)),
            stem,
            proj: Linear::random(
                layers.hidden.unwrap_or(inputs),
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
    /// `file`; its layers are the file's: a stem convolution for each `{prefix}conv.{i}.weight`
    /// (its rows), a hidden layer when it holds `{prefix}window.weight` (its rows).
    pub fn load(
        file: &TensorFile,
        prefix: &str,
        shape: ImageShape,
        dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let rows = |name: &str, what: &str| match file.shape(name) {
            None => Ok(None),
            Some(&[rows, _]) if rows > 0 => Ok(Some(rows)),
            Some(got) => Err(Error::shape(
                name,
                format!("[{what}, inputs] with {what} ≥ 1"),
                got,
            )),
        };
        let mut convs = Vec::new();
        while let Some(out) = rows(&format!("{prefix}conv.{}.weight", convs.len()), "channels")? {
            convs.push(out);
        }
        let hidden = rows(&format!("{prefix}window.weight"), "hidden")?;
        let layers = EncoderLayers { convs, hidden };
        let mut encoder = Self::random(shape, &layers, dim, device, dtype, 0)?;
        encoder.load_state_dict(file, prefix)?;
        Ok(encoder)
    }

    fn stem_prefixes(&self) -> Vec<String> {
        (0..self.stem.len()).map(|i| format!("conv.{i}.")).collect()
    }

    /// The layers before the key layer.
    pub fn layers(&self) -> EncoderLayers {
        EncoderLayers {
            convs: self.stem.iter().map(Conv::channels).collect(),
            hidden: self.hidden(),
        }
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
        let mut stem = Vec::with_capacity(self.stem.len());
        let input = match &self.key_windows {
            None => {
                let rows = self.rows(images, n)?;
                on(&device, dtype, rows, &[n * l, self.shape.inputs()])?
            }
            Some(windows) => {
                let map = channels_last(images, self.shape)?;
                let (hw, c) = (self.shape.height * self.shape.width, self.shape.channels);
                let pixels = on(&device, dtype, map, &[n * hw, c])?;
                let mut last: Option<ConvSaved> = None;
                for conv in &self.stem {
                    let next = conv.forward(last.as_ref().map_or(&pixels, |s| &s.output), n)?;
                    if let Some(done) = last.replace(next) {
                        if train {
                            stem.push(done);
                        }
                    }
                }
                let last = last.expect("a stem has a convolution");
                let input = windows.gather(&last.output, n)?;
                if train {
                    stem.push(last);
                }
                input
            }
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
                images: n,
                stem,
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
        if saved.stem.len() != self.stem.len() || saved.hidden.is_some() != self.window.is_some() {
            return Err(Error::Config(
                "these patches were saved by an encoder with other layers".into(),
            ));
        }
        let g = grad_keys
            .to(&grad_keys.device(), grad_keys.dtype())?
            .reshape(&rows)?;
        let g = relu_backward(&saved.output, &g)?;
        // The key layers' gradients, and the input's when a stem is below.
        let stem = !self.stem.is_empty();
        let (mut grads, grad_input) = match (&self.window, &saved.hidden) {
            (Some(window), Some(hidden)) => {
                let proj = self.proj.backward(hidden, &g)?;
                let g = relu_backward(hidden, &proj.input)?;
                let (mut grads, input) = window.grads(&saved.input, &g, stem)?;
                grads.push(proj.weight);
                grads.extend(proj.bias);
                (grads, input)
            }
            _ => self.proj.grads(&saved.input, &g, stem)?,
        };
        let (Some(windows), Some(grad_input)) = (&self.key_windows, grad_input) else {
            return Ok(grads);
        };
        let n = saved.images;
        let mut g = windows.scatter(&grad_input, n)?;
        let mut all = Vec::with_capacity(2 * self.stem.len() + grads.len());
        for (i, (conv, conv_saved)) in self.stem.iter().zip(&saved.stem).enumerate().rev() {
            let (params, input) = conv.backward(conv_saved, &g, n, i > 0)?;
            all.splice(0..0, params);
            if let Some(input) = input {
                g = input;
            }
        }
        all.append(&mut grads);
        Ok(all)
    }
}

/// A tensor of `values` on `device` in `dtype` (no copy on the CPU in f32).
fn on(device: &Device, dtype: DType, values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    let t = Tensor::from_f32_vec(values, shape, dtype)?;
    match device {
        Device::Cpu => Ok(t),
        Device::Cuda(_) => t.to(device, dtype),
    }
}

/// `images` [N, C, H, W] as a channels-last map [N·H·W, C].
fn channels_last(images: &[f32], shape: ImageShape) -> Result<Vec<f32>> {
    let (c, hw) = (shape.channels, shape.height * shape.width);
    let mut out = size::zeros("the map", images.len())?;
    for (img, dst) in images
        .chunks_exact(c * hw)
        .zip(out.chunks_exact_mut(c * hw))
    {
        for (ch, plane) in img.chunks_exact(hw).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                dst[p * c + ch] = v;
            }
        }
    }
    Ok(out)
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
        let enc = PatchEncoder::random(
            shape,
            &EncoderLayers::default(),
            4,
            &Device::Cpu,
            DType::F32,
            1,
        )
        .unwrap();
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
