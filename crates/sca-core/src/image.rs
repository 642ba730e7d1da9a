//! Image loading and SAM preprocessing, bit-exact with the Python reference
//! (`PIL.Image.open` + `ImageOps.exif_transpose` + `convert("RGB")`, then `SamImageProcessor`:
//! Pillow BILINEAR resize to the longest edge, rescale, ImageNet normalization, zero padding).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, RgbImage};
use serde::Deserialize;

use crate::{Error, Result};

/// SamImageProcessor settings, read from `preprocessor_config.json` (unknown fields ignored).
///
/// `Default` is the SAM ViT configuration: longest edge 1024, padded to 1024 x 1024, ImageNet
/// mean/std, rescale 1/255.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    /// Target length of the longer image side after resizing.
    pub longest_edge: usize,
    /// Side of the square the resized image is zero-padded to (bottom/right).
    pub pad_size: usize,
    /// Per-channel mean subtracted after rescaling (RGB).
    pub image_mean: [f32; 3],
    /// Per-channel std divided by after subtracting the mean (RGB).
    pub image_std: [f32; 3],
    /// Factor applied to the uint8 pixel values (in float64, as numpy does).
    pub rescale_factor: f64,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self::for_size(1024)
    }
}

/// `size` / `pad_size` may be a bare integer or a dict in HF configs.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(usize),
    Dict {
        longest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

/// `image_mean` / `image_std` may be a list or a single float.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelField {
    One(f64),
    Three([f64; 3]),
}

impl ChannelField {
    fn to_f32(&self) -> [f32; 3] {
        // numpy casts the python floats to float32 (round to nearest)
        match *self {
            ChannelField::One(v) => [v as f32; 3],
            ChannelField::Three(v) => [v[0] as f32, v[1] as f32, v[2] as f32],
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    size: Option<SizeField>,
    pad_size: Option<SizeField>,
    image_mean: Option<ChannelField>,
    image_std: Option<ChannelField>,
    rescale_factor: Option<f64>,
    resample: Option<i64>,
    do_resize: Option<bool>,
    do_rescale: Option<bool>,
    do_normalize: Option<bool>,
    do_pad: Option<bool>,
}

impl PreprocessorConfig {
    /// The default SAM settings with longest edge and pad size `s` (e.g. 128 for the tiny
    /// parity models).
    pub fn for_size(s: usize) -> Self {
        Self {
            longest_edge: s,
            pad_size: s,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            rescale_factor: 1.0 / 255.0,
        }
    }

    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `preprocessor_config.json`. Missing fields take the SAM defaults;
    /// settings this port does not implement (another resample filter, disabled steps,
    /// a non-square pad) are rejected.
    ///
    /// ```
    /// use sca_core::image::PreprocessorConfig;
    /// let cfg = PreprocessorConfig::from_json(
    ///     r#"{"size": {"longest_edge": 128}, "pad_size": {"height": 128, "width": 128}}"#,
    /// ).unwrap();
    /// assert_eq!(cfg, PreprocessorConfig::for_size(128));
    /// ```
    pub fn from_json(s: &str) -> Result<Self> {
        Self::parse(s, Path::new("preprocessor_config.json"))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Config {
            path: PathBuf::from(path),
            msg,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut cfg = Self::default();
        if let Some(size) = &raw.size {
            cfg.longest_edge = match *size {
                SizeField::Int(v) => v,
                SizeField::Dict {
                    longest_edge: Some(v),
                    ..
                } => v,
                SizeField::Dict { .. } => {
                    return Err(err("size: only {\"longest_edge\": N} is supported".into()))
                }
            };
        }
        if let Some(pad) = &raw.pad_size {
            cfg.pad_size = match *pad {
                SizeField::Int(v) => v,
                SizeField::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                } if h == w => h,
                SizeField::Dict { .. } => {
                    return Err(err(
                        "pad_size: expected {\"height\": N, \"width\": N} (square)".into(),
                    ))
                }
            };
        }
        if let Some(m) = &raw.image_mean {
            cfg.image_mean = m.to_f32();
        }
        if let Some(s) = &raw.image_std {
            cfg.image_std = s.to_f32();
        }
        if let Some(r) = raw.rescale_factor {
            cfg.rescale_factor = r;
        }
        if let Some(r) = raw.resample {
            if r != 2 {
                return Err(err(format!(
                    "resample {r} is not supported (only 2 = PIL BILINEAR)"
                )));
            }
        }
        for (name, flag) in [
            ("do_resize", raw.do_resize),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
            ("do_pad", raw.do_pad),
        ] {
            if flag == Some(false) {
                return Err(err(format!("{name}=false is not supported")));
            }
        }
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.longest_edge == 0 || self.pad_size < self.longest_edge {
            return Err(format!(
                "need 0 < longest_edge ({}) <= pad_size ({})",
                self.longest_edge, self.pad_size
            ));
        }
        if self.image_std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || self.image_mean.iter().any(|m| !m.is_finite())
            || !self.rescale_factor.is_finite()
        {
            return Err(format!(
                "image_mean {:?} / image_std {:?} / rescale_factor {} must be finite, std non-zero",
                self.image_mean, self.image_std, self.rescale_factor
            ));
        }
        Ok(())
    }
}

/// Decodes PNG / JPEG / WebP bytes to RGB8 like the reference loader: EXIF orientation applied
/// (`ImageOps.exif_transpose`), then PIL `convert("RGB")` (gray replicated, alpha dropped, no
/// blending). 16-bit files follow Pillow too: RGB(A)/LA keep the high byte, 16-bit gray (`I;16`)
/// is clamped to 255. `what` names the image in errors.
///
/// ```
/// let png: &[u8] = &[0u8; 4];
/// assert!(sca_core::image::decode_image(png, "garbage").is_err());
/// ```
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let err = |msg: String| Error::Image {
        what: what.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(err("empty input".into()));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err(
            "unrecognised format (expected PNG, JPEG or WebP)".into()
        ));
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(err(format!("zero-size image ({w}x{h})")));
    }
    // A malformed EXIF block is ignored, as Pillow does.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    let rgb = to_rgb8_pil(img);
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(err("zero-size image".into()));
    }
    Ok(rgb)
}

/// PIL `convert("RGB")` of what Pillow would have opened.
fn to_rgb8_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(b) => b,
        // Pillow opens 16-bit gray as I;16, whose RGB conversion saturates at 255.
        DynamicImage::ImageLuma16(b) => from_fn(&|x, y| {
            let v = b.get_pixel(x, y).0[0].min(255) as u8;
            [v, v, v]
        }),
        // Pillow unpacks the other 16-bit PNG modes to 8 bits by taking the high byte.
        DynamicImage::ImageLumaA16(b) => from_fn(&|x, y| {
            let v = (b.get_pixel(x, y).0[0] >> 8) as u8;
            [v, v, v]
        }),
        DynamicImage::ImageRgb16(b) => from_fn(&|x, y| {
            let p = b.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(b) => from_fn(&|x, y| {
            let p = b.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        // 8-bit gray / gray+alpha / RGBA: replicate gray, drop alpha.
        other => other.to_rgb8(),
    }
}

/// Reads and decodes an image file (see [`decode_image`]). An unreadable file is `Error::Io`
/// naming the path.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, &path.display().to_string())
}

/// Size `(h', w')` after resizing so that the longer side is `longest`, as
/// `SamImageProcessor._get_preprocess_shape`: `int(x * (longest / max(h, w)) + 0.5)` in float64.
///
/// ```
/// assert_eq!(sca_core::image::resized_size(120, 160, 128), (96, 128));
/// assert_eq!(sca_core::image::resized_size(480, 640, 1024), (768, 1024));
/// ```
pub fn resized_size(h: usize, w: usize, longest: usize) -> (usize, usize) {
    let m = h.max(w);
    if m == 0 {
        return (0, 0);
    }
    let scale = longest as f64 * 1.0 / m as f64;
    let r = |x: usize| (x as f64 * scale + 0.5) as usize;
    (r(h), r(w))
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter taps along one axis (Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    /// (first source index, number of taps) per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output index.
    kk: Vec<i32>,
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn precompute_coeffs(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 1.0; // BILINEAR
                              // Pillow takes the box as float32 and subtracts in float32.
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; negative values are clamped to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear_filter((((x + xmin) as f64 - center) + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for (dst, &kx) in row.iter_mut().zip(k.iter()).take(n) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let f = (1i64 << PRECISION_BITS) as f64;
            *dst = if v < 0.0 {
                (-0.5 + v * f) as i32
            } else {
                (0.5 + v * f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `y0..y0 + rows` of a packed RGB buffer of width `in_w`.
fn resample_horizontal(src: &[u8], in_w: usize, y0: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for yy in 0..rows {
        let line = &src[(yy + y0) * in_w * 3..(yy + y0 + 1) * in_w * 3];
        let oline = &mut out[yy * out_w * 3..(yy + 1) * out_w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &line[(x + xmin) * 3..(x + xmin) * 3 + 3];
                ss[0] += p[0] as i32 * kx;
                ss[1] += p[1] as i32 * kx;
                ss[2] += p[2] as i32 * kx;
            }
            oline[xx * 3] = clip8(ss[0]);
            oline[xx * 3 + 1] = clip8(ss[1]);
            oline[xx * 3 + 2] = clip8(ss[2]);
        }
    }
    out
}

/// Vertical pass of a packed RGB buffer of width `w`; `y_offset` is subtracted from the bounds.
fn resample_vertical(src: &[u8], w: usize, y_offset: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.bounds.len();
    let stride = w * 3;
    let mut out = vec![0u8; out_h * stride];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
        let ymin = ymin - y_offset;
        let oline = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in oline.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += src[(y + ymin) * stride + i] as i32 * ky;
            }
            *o = clip8(ss);
        }
    }
    out
}

/// Which Pillow release's pass order [`resize_pil_bilinear_with`] reproduces. The two passes
/// round to uint8 in between, so the order can change results by one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Horizontal pass first, always (Pillow up to 12.x, what the SCA reference ran on).
    #[default]
    HorizontalFirst,
    /// Pillow 13.0 and later: vertical pass first when the height shrinks by more than
    /// twice as many pixels as the width (`in_h - out_h > 0` and
    /// `in_h - out_h > 2 * (in_w - out_w)`), horizontal first otherwise.
    Pillow13,
}

/// Pillow-exact `Image.resize((new_w, new_h), Image.BILINEAR)` of an RGB8 image, as Pillow up to
/// 12.x computes it (see [`PassOrder`]): Pillow's antialiased triangle filter (support grows
/// with the downscale factor), fixed-point weights with 22 fractional bits, a horizontal pass
/// over only the rows the vertical pass reads, then the vertical pass. Same size returns a
/// copy; a zero-size input or output gives a black image of the requested size.
///
/// ```
/// let img = image::RgbImage::from_pixel(160, 120, image::Rgb([10, 20, 30]));
/// let out = sca_core::image::resize_pil_bilinear(&img, 128, 96);
/// assert_eq!(out.dimensions(), (128, 96));
/// assert_eq!(out.get_pixel(5, 5).0, [10, 20, 30]);
/// ```
pub fn resize_pil_bilinear(img: &RgbImage, new_w: u32, new_h: u32) -> RgbImage {
    resize_pil_bilinear_with(img, new_w, new_h, PassOrder::HorizontalFirst)
}

/// [`resize_pil_bilinear`] with the pass order of a given Pillow release.
pub fn resize_pil_bilinear_with(
    img: &RgbImage,
    new_w: u32,
    new_h: u32,
    order: PassOrder,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (new_w as usize, new_h as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(new_w, new_h);
    }
    if in_w == out_w && in_h == out_h {
        return img.clone();
    }
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let (dh, dw) = (in_h as i64 - out_h as i64, in_w as i64 - out_w as i64);
    let horizontal_first = match order {
        PassOrder::HorizontalFirst => true,
        PassOrder::Pillow13 => !(dh > 0 && dh > dw * 2),
    };
    let src: &[u8] = img.as_raw();
    let vert = precompute_coeffs(in_h, 0.0, in_h as f32, out_h);
    let horiz = precompute_coeffs(in_w, 0.0, in_w as f32, out_w);
    let out = if horizontal_first {
        let (buf, y_offset) = if need_horizontal {
            // Only rows the vertical pass reads (Pillow's ybox_first..ybox_last).
            let first = vert.bounds[0].0;
            let (lmin, ln) = vert.bounds[out_h - 1];
            let rows = lmin + ln - first;
            (resample_horizontal(src, in_w, first, rows, &horiz), first)
        } else {
            (src.to_vec(), 0)
        };
        if need_vertical {
            resample_vertical(&buf, out_w, y_offset, &vert)
        } else {
            buf
        }
    } else {
        // Pillow13 order; only reached with need_vertical.
        let buf = resample_vertical(src, in_w, 0, &vert);
        if need_horizontal {
            resample_horizontal(&buf, in_w, 0, out_h, &horiz)
        } else {
            buf
        }
    };
    // Both passes produce exactly out_w * out_h * 3 bytes.
    RgbImage::from_raw(new_w, new_h, out).unwrap_or_else(|| RgbImage::new(new_w, new_h))
}

/// Model input produced by [`preprocess`].
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// `(3, S, S)` channels-first, rescaled, normalized, zero-padded at the bottom/right.
    pub pixel_values: Vec<f32>,
    /// `S`, the padded side.
    pub pad_size: usize,
    /// `(H, W)` of the input image.
    pub original_size: (usize, usize),
    /// `(h', w')` of the resized image inside the padded square.
    pub resized_size: (usize, usize),
}

/// `SamImageProcessor.preprocess` of one RGB image: Pillow BILINEAR resize to the longest edge,
/// `x * rescale_factor` (float64, stored as float32), `(x - mean) / std` in float32, zero-pad
/// to `pad_size` x `pad_size`, channels-first.
///
/// ```
/// use sca_core::image::{preprocess, PreprocessorConfig};
/// let img = image::RgbImage::from_pixel(160, 120, image::Rgb([124, 116, 104]));
/// let p = preprocess(&img, &PreprocessorConfig::for_size(128)).unwrap();
/// assert_eq!((p.original_size, p.resized_size, p.pad_size), ((120, 160), (96, 128), 128));
/// assert_eq!(p.pixel_values.len(), 3 * 128 * 128);
/// assert_eq!(p.pixel_values[127 * 128], 0.0); // padding
/// ```
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Result<Preprocessed> {
    let err = |msg: String| Error::Image {
        what: "preprocess".into(),
        msg,
    };
    cfg.validate().map_err(err)?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    if h == 0 || w == 0 {
        return Err(err(format!("zero-size image ({w}x{h})")));
    }
    let (rh, rw) = resized_size(h, w, cfg.longest_edge);
    if rh == 0 || rw == 0 || rh > cfg.pad_size || rw > cfg.pad_size {
        return Err(err(format!(
            "image {w}x{h} resizes to {rw}x{rh}, which does not fit a {s}x{s} input",
            s = cfg.pad_size
        )));
    }
    let resized = resize_pil_bilinear(img, rw as u32, rh as u32);
    let s = cfg.pad_size;
    let mut pixel_values = vec![0f32; 3 * s * s];
    let raw = resized.as_raw();
    for c in 0..3 {
        let (mean, std) = (cfg.image_mean[c], cfg.image_std[c]);
        // Byte -> value lookup: identical arithmetic for every pixel.
        let lut: Vec<f32> = (0..256)
            .map(|v| ((v as f64 * cfg.rescale_factor) as f32 - mean) / std)
            .collect();
        let plane = &mut pixel_values[c * s * s..(c + 1) * s * s];
        for y in 0..rh {
            for x in 0..rw {
                plane[y * s + x] = lut[raw[(y * rw + x) * 3 + c] as usize];
            }
        }
    }
    Ok(Preprocessed {
        pixel_values,
        pad_size: s,
        original_size: (h, w),
        resized_size: (rh, rw),
    })
}

/// Scales a point from original-image pixels to the resized frame as `SamProcessor` does:
/// `(x * (w'/W), y * (h'/H))` in float64. `original` and `resized` are `(H, W)` / `(h', w')`.
///
/// ```
/// let (x, y) = sca_core::image::scale_point(52.0, 68.0, (120, 160), (96, 128));
/// assert_eq!((x, y), (52.0 * 0.8, 68.0 * 0.8));
/// ```
pub fn scale_point(
    x: f64,
    y: f64,
    original: (usize, usize),
    resized: (usize, usize),
) -> (f64, f64) {
    let sx = resized.1 as f64 / original.1 as f64;
    let sy = resized.0 as f64 / original.0 as f64;
    (x * sx, y * sy)
}

/// Scales an `[x1, y1, x2, y2]` box like [`scale_point`] does for its two corners.
pub fn scale_box(b: [f64; 4], original: (usize, usize), resized: (usize, usize)) -> [f64; 4] {
    let (x1, y1) = scale_point(b[0], b[1], original, resized);
    let (x2, y2) = scale_point(b[2], b[3], original, resized);
    [x1, y1, x2, y2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_normalised_and_in_bounds() {
        for (inp, out) in [(160, 128), (3, 16), (1000, 7), (1025, 1024), (1, 5)] {
            let c = precompute_coeffs(inp, 0.0, inp as f32, out);
            for (i, &(xmin, n)) in c.bounds.iter().enumerate() {
                assert!(n >= 1 && xmin + n <= inp && n <= c.ksize);
                let sum: i64 = c.kk[i * c.ksize..i * c.ksize + n]
                    .iter()
                    .map(|&k| k as i64)
                    .sum();
                // each tap is rounded to nearest, so the sum is within n/2 of 1.0
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{inp}->{out} #{i}"
                );
            }
        }
    }

    #[test]
    fn clip8_saturates() {
        assert_eq!(clip8(-1), 0);
        assert_eq!(clip8(i32::MIN), 0);
        assert_eq!(
            clip8((255 << PRECISION_BITS) + (1 << (PRECISION_BITS - 1))),
            255
        );
        assert_eq!(clip8(300 << PRECISION_BITS), 255);
        assert_eq!(clip8((7 << PRECISION_BITS) - 1), 6);
    }

    #[test]
    fn sixteen_bit_conversion_follows_pillow() {
        let g = image::ImageBuffer::from_raw(3, 1, vec![7u16, 255, 4660]).unwrap();
        let rgb = to_rgb8_pil(DynamicImage::ImageLuma16(g));
        assert_eq!(rgb.as_raw(), &[7, 7, 7, 255, 255, 255, 255, 255, 255]);
        let c = image::ImageBuffer::from_raw(1, 1, vec![0x1234u16, 0xff80, 0x00ff]).unwrap();
        let rgb = to_rgb8_pil(DynamicImage::ImageRgb16(c));
        assert_eq!(rgb.as_raw(), &[0x12, 0xff, 0x00]);
    }
}
