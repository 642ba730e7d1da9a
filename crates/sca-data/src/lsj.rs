//! Large-scale jittering (`sca-spec.md` §4.4; the official `+data_transforms=lsj-0_1-2_0`):
//! detectron2's `RandomFlip(0.5)` → `ResizeScale(0.1, 2.0, S, S)` → `FixedSizeCrop(S, pad 0)`
//! applied to the normalized float image, then de-normalized to `u8`.
//!
//! Exactly, for an `H x W` RGB image and output side `S`:
//! 1. `x = (v / 255 - mean) / std` per channel in f64 (numpy's arithmetic on the `u8` array).
//! 2. With `u0 < flip_prob`: mirror horizontally; boxes `x -> W - x` (x1/x2 swapped).
//! 3. `s = min + (max - min) * u1`; `f = min(S*s/H, S*s/W)`; output size
//!    `(round(H*f), round(W*f))` with round-half-to-even (`np.round`); resized with
//!    `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` arithmetic
//!    in f64 (no antialias): source `max((d + 0.5) * in/out - 0.5, 0)`, taps `i0 = floor`,
//!    `i1 = min(i0 + 1, in - 1)`, and `out = a*w00 + b*w01 + c*w10 + d*w11` with
//!    `w00 = h0λ·w0λ` etc. (the channels-last CPU kernel's order). Boxes scale by
//!    `new_w / W`, `new_h / H`.
//! 4. One `u2` for both axes: crop offset `round((size - S).max(0) * u2)` (half to even), crop
//!    to at most `S x S`, then pad right/bottom to `S x S` with 0 (= the mean colour after
//!    de-normalization). Boxes shift by the offset.
//! 5. `u8 = trunc((x * std + mean) * 255)` (numpy `astype(uint8)`; clamped to 0..=255).
//!
//! The three uniforms `u0, u1, u2` are drawn in this order from the caller's
//! [`Rng`], always (even when `flip_prob` is 0), so the stream is stable.
//!
//! Boxes whose four source coordinates are integers (VG, synthetic) are truncated to integers
//! after each transform step when [`LsjConfig::integer_boxes`] is set, as the official
//! pipeline does (its boxes are `int64` numpy arrays there, and numpy's in-place assignment
//! truncates). Callers clamp the result to `[0, S]` and drop boxes of width or height
//! `<= 1e-5` ([`crate::types::clamp_box_xyxy`], [`crate::types::box_nonempty`]).
//!
//! Masks follow with nearest-neighbour resizing as Pillow's `NEAREST` resize does it
//! (`ImagingScaleAffine`: source index `trunc(in/out * 0.5 + k * in/out)` accumulated in f64),
//! as detectron2's `apply_segmentation`; the padding is background (0), not detectron2's
//! ignore value 255.

use image::RgbImage;

use crate::rng::Rng;
use crate::{Error, Result};

/// LSJ settings. [`LsjConfig::official`] is the released recipe (0.1–2.0, flip 0.5).
#[derive(Debug, Clone, PartialEq)]
pub struct LsjConfig {
    /// Smallest scale of the target size.
    pub min_scale: f64,
    /// Largest scale of the target size.
    pub max_scale: f64,
    /// Output side `S` (the model's input size: 1024 for SAM ViT, 128 for the tiny fixtures).
    pub size: usize,
    /// Probability of a horizontal flip (captions are never edited, as in the official code).
    pub flip_prob: f64,
    /// Per-channel mean used to normalize before resizing (SAM: ImageNet mean).
    pub image_mean: [f64; 3],
    /// Per-channel std used to normalize before resizing (SAM: ImageNet std).
    pub image_std: [f64; 3],
    /// Truncate integral boxes to integers after each step (official behaviour on VG).
    pub integer_boxes: bool,
}

impl LsjConfig {
    /// `lsj-0_1-2_0` at output side `size`.
    pub fn official(size: usize) -> Self {
        Self {
            min_scale: 0.1,
            max_scale: 2.0,
            size,
            flip_prob: 0.5,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            integer_boxes: true,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.min_scale > 0.0
            && self.min_scale <= self.max_scale
            && self.max_scale.is_finite()
            && self.size > 0
            && (0.0..=1.0).contains(&self.flip_prob)
            && self.image_std.iter().all(|&s| s > 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!("invalid LSJ settings {self:?}")))
        }
    }
}

/// One sampled LSJ transform of an `H x W` image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LsjTransform {
    /// Input `(H, W)`.
    pub input: (usize, usize),
    /// Horizontal flip.
    pub flip: bool,
    /// The sampled scale `s`.
    pub scale: f64,
    /// Size after `ResizeScale`, `(h, w)`.
    pub resized: (usize, usize),
    /// Crop offset `(y0, x0)` into the resized image.
    pub offset: (usize, usize),
    /// Output side `S`.
    pub size: usize,
}

/// `np.round` for the non-negative values used here (half to even).
fn round_even(v: f64) -> f64 {
    v.round_ties_even()
}

impl LsjTransform {
    /// Draws flip, scale and crop offset for an `h x w` image (three uniforms, in order).
    pub fn sample(cfg: &LsjConfig, h: usize, w: usize, rng: &mut Rng) -> Self {
        let flip = rng.uniform() < cfg.flip_prob;
        let scale = rng.uniform_range(cfg.min_scale, cfg.max_scale);
        let u = rng.uniform();
        Self::with_params(cfg.size, h, w, flip, scale, u)
    }

    /// The transform for given draws: `flip`, `scale` and the crop uniform `u`.
    pub fn with_params(size: usize, h: usize, w: usize, flip: bool, scale: f64, u: f64) -> Self {
        let target = size as f64 * scale;
        let f = (target / h as f64).min(target / w as f64);
        let nh = (round_even(h as f64 * f) as usize).max(1);
        let nw = (round_even(w as f64 * f) as usize).max(1);
        let oy = round_even(nh.saturating_sub(size) as f64 * u) as usize;
        let ox = round_even(nw.saturating_sub(size) as f64 * u) as usize;
        Self {
            input: (h, w),
            flip,
            scale,
            resized: (nh, nw),
            offset: (oy, ox),
            size,
        }
    }

    /// Transforms the image: normalize, flip, bilinear resize (f64), crop/pad, de-normalize.
    pub fn apply_image(&self, img: &RgbImage, cfg: &LsjConfig) -> Result<RgbImage> {
        let (h, w) = self.input;
        if h == 0 || w == 0 {
            return Err(Error::Config(format!("LSJ on an empty {w}x{h} image")));
        }
        if img.height() as usize != h || img.width() as usize != w {
            return Err(Error::Config(format!(
                "LSJ transform sampled for {w}x{h} applied to a {}x{} image",
                img.width(),
                img.height()
            )));
        }
        // 1. normalize (per-channel lookup of the 256 possible values).
        let lut: [[f64; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f64 / 255.0 - cfg.image_mean[c]) / cfg.image_std[c])
        });
        let raw = img.as_raw();
        let mut src = vec![0f64; h * w * 3];
        for y in 0..h {
            for x in 0..w {
                let sx = if self.flip { w - 1 - x } else { x };
                for c in 0..3 {
                    src[(y * w + x) * 3 + c] = lut[c][raw[(y * w + sx) * 3 + c] as usize];
                }
            }
        }
        // 3. bilinear resize.
        let (nh, nw) = self.resized;
        let ys = torch_linear_taps(h, nh);
        let xs = torch_linear_taps(w, nw);
        let s = self.size;
        let (oy, ox) = self.offset;
        let mut out = vec![0u8; s * s * 3];
        let denorm = |v: f64, c: usize| -> u8 {
            let d = (v * cfg.image_std[c] + cfg.image_mean[c]) * 255.0;
            d.clamp(0.0, 255.0) as u8
        };
        for y in 0..s {
            let ry = y + oy;
            for x in 0..s {
                let rx = x + ox;
                for c in 0..3 {
                    let v = if ry < nh && rx < nw {
                        let (y0, y1, h0, h1) = ys[ry];
                        let (x0, x1, w0, w1) = xs[rx];
                        let (w00, w01, w10, w11) = (h0 * w0, h0 * w1, h1 * w0, h1 * w1);
                        let at = |yy: usize, xx: usize| src[(yy * w + xx) * 3 + c];
                        at(y0, x0) * w00 + at(y0, x1) * w01 + at(y1, x0) * w10 + at(y1, x1) * w11
                    } else {
                        0.0
                    };
                    out[(y * s + x) * 3 + c] = denorm(v, c);
                }
            }
        }
        Ok(RgbImage::from_raw(s as u32, s as u32, out).expect("buffer has S*S*3 bytes"))
    }

    /// Transforms an `[x1, y1, x2, y2]` box (not clamped). `integral`: truncate to integers
    /// after each step (see the [module docs](self)).
    pub fn apply_box(&self, b: [f64; 4], integral: bool) -> [f64; 4] {
        let (h, w) = self.input;
        let order = |b: [f64; 4]| {
            [
                b[0].min(b[2]),
                b[1].min(b[3]),
                b[0].max(b[2]),
                b[1].max(b[3]),
            ]
        };
        let fix = |b: [f64; 4]| if integral { b.map(f64::trunc) } else { b };
        let mut b = order(b);
        if self.flip {
            let wf = w as f64;
            b = order([wf - b[0], b[1], wf - b[2], b[3]]);
        }
        let fx = self.resized.1 as f64 * 1.0 / w as f64;
        let fy = self.resized.0 as f64 * 1.0 / h as f64;
        b = fix(order([b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy]));
        let (oy, ox) = (self.offset.0 as f64, self.offset.1 as f64);
        order([b[0] - ox, b[1] - oy, b[2] - ox, b[3] - oy])
    }

    /// Transforms a row-major `H x W` 0/1 mask to the `S x S` output frame.
    pub fn apply_mask(&self, mask: &[u8]) -> Vec<u8> {
        let (h, w) = self.input;
        let (nh, nw) = self.resized;
        let ys = pil_nearest_index(h, nh);
        let xs = pil_nearest_index(w, nw);
        let s = self.size;
        let (oy, ox) = self.offset;
        let mut out = vec![0u8; s * s];
        for y in 0..s.min(nh.saturating_sub(oy)) {
            let sy = ys[y + oy];
            for x in 0..s.min(nw.saturating_sub(ox)) {
                let mut sx = xs[x + ox];
                if self.flip {
                    sx = w - 1 - sx;
                }
                out[y * s + x] = mask.get(sy * w + sx).copied().unwrap_or(0);
            }
        }
        out
    }
}

/// Per output index: `(i0, i1, λ0, λ1)` of torch's bilinear `align_corners=False` resize from
/// `input` to `output` samples (f64 arithmetic, as for float64 tensors).
pub fn torch_linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f64, f64)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|d| {
            if input == output {
                return (d, d, 1.0, 0.0);
            }
            let real = (scale * (d as f64 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let l1 = (real - i0 as f64).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Pillow `NEAREST` resize source indices (`ImagingScaleAffine`): `xo = in/out * 0.5`, then
/// `xo += in/out` per output pixel, index `trunc(xo)` (clamped to `in - 1`).
pub fn pil_nearest_index(input: usize, output: usize) -> Vec<usize> {
    if input == output {
        return (0..output).collect();
    }
    let a = input as f64 / output as f64;
    let mut xo = a * 0.5;
    let mut v = Vec::with_capacity(output);
    for _ in 0..output {
        v.push((xo as usize).min(input - 1));
        xo += a;
    }
    v
}

/// Nearest-neighbour resize of a row-major `h x w` 0/1 mask to `oh x ow` (Pillow `NEAREST`).
pub fn resize_mask_nearest(mask: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    let ys = pil_nearest_index(h, oh);
    let xs = pil_nearest_index(w, ow);
    let mut out = vec![0u8; oh * ow];
    for (y, &sy) in ys.iter().enumerate() {
        for (x, &sx) in xs.iter().enumerate() {
            out[y * ow + x] = mask.get(sy * w + sx).copied().unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_scale_and_crop_sizes() {
        // 480x640 at scale 1.5 into 1024: f = min(1536/480, 1536/640) = 2.4 -> 1152x1536.
        let t = LsjTransform::with_params(1024, 480, 640, false, 1.5, 0.5);
        assert_eq!(t.resized, (1152, 1536));
        // offsets round(128*0.5)=64, round(512*0.5)=256
        assert_eq!(t.offset, (64, 256));
        // Half-to-even rounding of the output size: 3 * 0.5 = 1.5 -> 2, 5 * 0.5 = 2.5 -> 2.
        let t = LsjTransform::with_params(10, 5, 3, false, 0.5, 0.0);
        // target 5: f = min(5/5, 5/3) = 1 -> unchanged
        assert_eq!(t.resized, (5, 3));
        let t = LsjTransform::with_params(4, 5, 3, false, 0.625, 0.0);
        // target 2.5: f = min(0.5, 0.8333) = 0.5 -> (2.5, 1.5) -> (2, 2)
        assert_eq!(t.resized, (2, 2));
    }

    #[test]
    fn torch_taps_match_hand_values() {
        // 4 -> 2: scale 2, src = 2*(d+.5)-.5 = 0.5, 2.5
        let t = torch_linear_taps(4, 2);
        assert_eq!(t, vec![(0, 1, 0.5, 0.5), (2, 3, 0.5, 0.5)]);
        // 2 -> 4: scale .5, src = .5(d+.5)-.5 = -.25->0, .25, .75, 1.25
        let t = torch_linear_taps(2, 4);
        assert_eq!(t[0], (0, 1, 1.0, 0.0));
        assert_eq!(t[1], (0, 1, 0.75, 0.25));
        assert_eq!(t[2], (0, 1, 0.25, 0.75));
        // last: i0 = 1 = in-1 -> i1 = 1, λ1 = 0.25 (weights on the same pixel)
        assert_eq!(t[3], (1, 1, 0.75, 0.25));
    }

    #[test]
    fn pil_nearest_hand_values() {
        assert_eq!(pil_nearest_index(4, 2), vec![1, 3]);
        assert_eq!(pil_nearest_index(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(pil_nearest_index(3, 3), vec![0, 1, 2]);
    }
}
