//! Mask post-processing (SamImageProcessor.post_process_masks), SAM's stability score and
//! mask-to-box, COCO RLE (pycocotools-compatible), mask IoU.
//!
//! Masks are row-major `(h, w)` planes: `f32` logits or `u8` 0/1.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which of torch's CPU bilinear kernels (torch 2.1, float32) to reproduce bit for bit. Both
/// interpolate the same way; they differ in how the four products are summed, i.e. in the last
/// bit. The arithmetic is that of torch's AVX2/AVX-512 builds, whose compiler fuses
/// multiply-adds (checked against the parity fixtures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BilinearKernel {
    /// `upsample_generic_Nd_kernel_impl`: per row `l0*x0 + l1*x1`, then `h0*a + h1*b`.
    #[default]
    Generic,
    /// `cpu_upsample_linear_channels_last` (scalar tail): weights `h*w` products, then one
    /// four-term sum.
    ChannelsLast,
}

impl BilinearKernel {
    /// The kernel torch picks for an NCHW float32 input with `channels` channels resized to
    /// `(out_h, out_w)` with `threads` intra-op threads: the channels-last kernel when
    /// `out_h + out_w <= 128`, or with one thread and exactly 3 channels (e.g. SAM's 3
    /// multimask outputs); the generic kernel otherwise.
    pub fn torch_dispatch(channels: usize, out_h: usize, out_w: usize, threads: usize) -> Self {
        if out_h + out_w <= 128 || (threads == 1 && channels == 3) {
            BilinearKernel::ChannelsLast
        } else {
            BilinearKernel::Generic
        }
    }
}

/// The torch setting [`postprocess_logits_torch`] reproduces: the number of mask planes per
/// prompt (`K`: 3 with multimask output, else 1) and torch's thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchCpu {
    /// Channels of the tensor torch interpolates (masks per prompt).
    pub channels: usize,
    /// `torch.get_num_threads()` of the reference run.
    pub threads: usize,
}

/// Source indices and weights of one output index along one axis (torch's
/// `compute_source_index_and_lambda`, float32).
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

fn linear_taps(in_size: usize, out_size: usize) -> Vec<Tap> {
    if in_size == out_size {
        return (0..out_size)
            .map(|i| Tap {
                i0: i,
                i1: i,
                l0: 1.0,
                l1: 0.0,
            })
            .collect();
    }
    // area_pixel_compute_scale without a scale factor: (float)in / out.
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            // scale * (o + 0.5) - 0.5, fused as torch's build does
            let real = scale.mul_add(o as f32 + 0.5, -0.5).max(0.0);
            let i0 = (real.floor() as usize).min(in_size - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

/// Bilinear resize to `(out_h, out_w)` computing only the top-left `keep_h x keep_w` corner.
#[allow(clippy::too_many_arguments)]
fn resize_region(
    src: &[f32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    keep_h: usize,
    keep_w: usize,
    kernel: BilinearKernel,
) -> Vec<f32> {
    let keep_h = keep_h.min(out_h);
    let keep_w = keep_w.min(out_w);
    if h == 0 || w == 0 || src.len() != h * w {
        return vec![0.0; keep_h * keep_w];
    }
    let th = linear_taps(h, out_h);
    let tw = linear_taps(w, out_w);
    let mut out = Vec::with_capacity(keep_h * keep_w);
    for t in &th[..keep_h] {
        let r0 = &src[t.i0 * w..(t.i0 + 1) * w];
        let r1 = &src[t.i1 * w..(t.i1 + 1) * w];
        match kernel {
            BilinearKernel::Generic => {
                for u in &tw[..keep_w] {
                    let a = u.l0.mul_add(r0[u.i0], u.l1 * r0[u.i1]);
                    let b = u.l0.mul_add(r1[u.i0], u.l1 * r1[u.i1]);
                    out.push(t.l0.mul_add(a, t.l1 * b));
                }
            }
            BilinearKernel::ChannelsLast => {
                for u in &tw[..keep_w] {
                    let (w00, w01) = (t.l0 * u.l0, t.l0 * u.l1);
                    let (w10, w11) = (t.l1 * u.l0, t.l1 * u.l1);
                    let s = r0[u.i0].mul_add(w00, r0[u.i1] * w01);
                    let s = r1[u.i0].mul_add(w10, s);
                    out.push(r1[u.i1].mul_add(w11, s));
                }
            }
        }
    }
    out
}

/// `torch.nn.functional.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)`
/// of one row-major `(h, w)` plane, bit-exact with torch's generic CPU kernel (source index
/// `(dst + 0.5) * in/out - 0.5` clamped at 0, float32 weights; equal sizes copy). If
/// `src.len() != h * w` or the input is empty the result is all zeros.
///
/// ```
/// let up = sca_core::masks::resize_bilinear(&[0.0, 1.0], 1, 2, 1, 4);
/// assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
/// ```
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    resize_bilinear_with(src, h, w, out_h, out_w, BilinearKernel::Generic)
}

/// [`resize_bilinear`] with the arithmetic of a chosen torch kernel.
pub fn resize_bilinear_with(
    src: &[f32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    kernel: BilinearKernel,
) -> Vec<f32> {
    resize_region(src, h, w, out_h, out_w, out_h, out_w, kernel)
}

/// `SamImageProcessor.post_process_masks` (without thresholding) of one low-resolution logit
/// plane: bilinear to `(pad_size, pad_size)`, crop to `resized = (h', w')`, bilinear to
/// `original = (H, W)`. Returns the `H x W` logits, bit-exact with torch on CPU for one mask
/// per prompt (any thread count); see [`postprocess_logits_torch`] for the 3-mask case.
/// Inconsistent sizes (see [`resize_bilinear`]) give zeros; the crop is clamped to the padded
/// square.
///
/// ```
/// let low = vec![2.0f32; 32 * 32];
/// let m = sca_core::masks::postprocess_logits(&low, 32, 32, 128, (96, 128), (120, 160));
/// assert_eq!(m.len(), 120 * 160);
/// assert!(m.iter().all(|v| *v == 2.0));
/// ```
pub fn postprocess_logits(
    low_res: &[f32],
    low_h: usize,
    low_w: usize,
    pad_size: usize,
    resized: (usize, usize),
    original: (usize, usize),
) -> Vec<f32> {
    let torch = TorchCpu {
        channels: 1,
        threads: 1,
    };
    postprocess_logits_torch(low_res, low_h, low_w, pad_size, resized, original, torch)
}

/// [`postprocess_logits`] reproducing the kernels torch dispatches to for `torch` (see
/// [`BilinearKernel::torch_dispatch`]): e.g. `TorchCpu { channels: 3, threads: 1 }` for
/// single-threaded multimask output. The results differ from [`postprocess_logits`] by
/// float32 rounding only.
pub fn postprocess_logits_torch(
    low_res: &[f32],
    low_h: usize,
    low_w: usize,
    pad_size: usize,
    resized: (usize, usize),
    original: (usize, usize),
    torch: TorchCpu,
) -> Vec<f32> {
    let (rh, rw) = (resized.0.min(pad_size), resized.1.min(pad_size));
    let k1 = BilinearKernel::torch_dispatch(torch.channels, pad_size, pad_size, torch.threads);
    // The crop is taken from the padded upsample; only that corner is computed.
    let cropped = resize_region(low_res, low_h, low_w, pad_size, pad_size, rh, rw, k1);
    let (oh, ow) = original;
    let k2 = BilinearKernel::torch_dispatch(torch.channels, oh, ow, torch.threads);
    resize_bilinear_with(&cropped, rh, rw, oh, ow, k2)
}

/// 1 where `logit > threshold`, else 0 (NaN gives 0).
pub fn binarize(logits: &[f32], threshold: f32) -> Vec<u8> {
    logits.iter().map(|&v| u8::from(v > threshold)).collect()
}

/// SAM's `calculate_stability_score`: `|logits > threshold + offset| / |logits > threshold -
/// offset|` (thresholds in float32). As in SAM, an empty denominator gives 0/0 = NaN, which
/// fails every `>=` filter.
///
/// ```
/// let s = sca_core::masks::stability_score(&[2.0, 0.5, -0.5, -2.0], 0.0, 1.0);
/// assert_eq!(s, 1.0 / 3.0);
/// ```
pub fn stability_score(logits: &[f32], threshold: f32, offset: f32) -> f32 {
    let hi = (threshold as f64 + offset as f64) as f32;
    let lo = (threshold as f64 - offset as f64) as f32;
    let inter = logits.iter().filter(|&&v| v > hi).count();
    let union = logits.iter().filter(|&&v| v > lo).count();
    inter as f32 / union as f32
}

/// `[x_min, y_min, x_max, y_max]` (inclusive pixel coordinates) of the non-zero pixels of a
/// row-major `(h, w)` mask, as SAM's `batched_mask_to_box`; an empty mask gives `[0, 0, 0, 0]`.
/// Pixels beyond `mask.len()` count as background.
///
/// ```
/// let mut m = vec![0u8; 4 * 5];
/// m[1 * 5 + 2] = 1;
/// m[3 * 5 + 3] = 1;
/// assert_eq!(sca_core::masks::mask_to_box(&m, 4, 5), [2.0, 1.0, 3.0, 3.0]);
/// ```
pub fn mask_to_box(mask: &[u8], h: usize, w: usize) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    let mut any = false;
    if w > 0 {
        for (y, row) in mask.chunks(w).take(h).enumerate() {
            for (x, _) in row.iter().enumerate().filter(|(_, v)| **v != 0) {
                any = true;
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    if !any {
        return [0.0; 4];
    }
    [x0 as f32, y0 as f32, x1 as f32, y1 as f32]
}

/// SAM's `box_xyxy_to_xywh` (the COCO `bbox` of an automatic-mask record):
/// `[x0, y0, x1 - x0, y1 - y0]`.
pub fn box_xyxy_to_xywh(b: [f32; 4]) -> [f32; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// COCO run-length encoding as pycocotools writes it: runs over the mask in column-major
/// (Fortran) order, starting with a run of zeros, stored in the compressed string form.
///
/// ```
/// use sca_core::masks::CocoRle;
/// let mask = [0u8, 1, 1, 1]; // 2x2 row-major
/// let rle = CocoRle::encode(&mask, 2, 2);
/// assert_eq!(rle.runs().unwrap(), vec![1, 3]);
/// assert_eq!(rle.area(), 3);
/// assert_eq!(rle.decode().unwrap(), mask.to_vec());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[h, w]`.
    pub size: [usize; 2],
    /// pycocotools' compressed counts (LEB128-like, 6 bits per char, offset 48).
    pub counts: String,
}

impl CocoRle {
    /// Encodes a row-major `(h, w)` mask (non-zero = foreground; pixels beyond `mask.len()`
    /// count as background).
    pub fn encode(mask: &[u8], h: usize, w: usize) -> Self {
        let mut runs = Vec::new();
        let mut cur = false;
        let mut count = 0u32;
        for x in 0..w {
            for y in 0..h {
                let v = mask.get(y * w + x).is_some_and(|&v| v != 0);
                if v != cur {
                    runs.push(count);
                    count = 0;
                    cur = v;
                }
                count += 1;
            }
        }
        runs.push(count);
        Self {
            size: [h, w],
            counts: runs_to_string(&runs),
        }
    }

    /// The run lengths (alternating background / foreground, starting with background).
    pub fn runs(&self) -> Result<Vec<u32>> {
        string_to_runs(&self.counts)
    }

    /// Decodes to a row-major `(h, w)` 0/1 mask. Runs that do not sum to `h * w` are an error.
    pub fn decode(&self) -> Result<Vec<u8>> {
        let [h, w] = self.size;
        let runs = self.runs()?;
        let total: u64 = runs.iter().map(|&r| r as u64).sum();
        if total != h as u64 * w as u64 {
            return Err(rle_error(format!(
                "runs sum to {total}, expected {h}x{w} = {}",
                h as u64 * w as u64
            )));
        }
        let mut mask = vec![0u8; h * w];
        let mut pos = 0usize;
        for (i, &r) in runs.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + r as usize {
                    // column-major position p -> row-major index
                    mask[(p % h) * w + p / h] = 1;
                }
            }
            pos += r as usize;
        }
        Ok(mask)
    }

    /// Foreground pixel count (pycocotools `area`): the sum of the odd runs. 0 if `counts` is
    /// malformed.
    pub fn area(&self) -> u64 {
        self.runs()
            .map(|r| r.iter().skip(1).step_by(2).map(|&v| v as u64).sum())
            .unwrap_or(0)
    }
}

fn rle_error(msg: String) -> Error {
    Error::Image {
        what: "COCO RLE".into(),
        msg,
    }
}

/// pycocotools `rleToString`: each run (from the 4th on, its difference to the run two
/// before) as signed 5-bit groups, continuation bit 0x20, offset by 48.
fn runs_to_string(runs: &[u32]) -> String {
    let mut s = String::new();
    for (i, &r) in runs.iter().enumerate() {
        let mut x = r as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// pycocotools `rleFrString`, rejecting characters outside `'0'..='o'`, truncated groups and
/// runs outside `u32`.
fn string_to_runs(s: &str) -> Result<Vec<u32>> {
    let bytes = s.as_bytes();
    let mut runs: Vec<u32> = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(rle_error(format!("counts end inside a run at byte {p}")));
            };
            if !(48..48 + 64).contains(&b) {
                return Err(rle_error(format!(
                    "invalid character {:?} at byte {p} of counts",
                    b as char
                )));
            }
            if k >= 12 {
                return Err(rle_error(format!("run too long at byte {p} of counts")));
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = runs.len();
        if m > 2 {
            x += runs[m - 2] as i64;
        }
        let r = u32::try_from(x)
            .map_err(|_| rle_error(format!("run {m} has invalid length {x} in counts")))?;
        runs.push(r);
    }
    Ok(runs)
}

/// Intersection over union of two 0/1 masks (non-zero = foreground; the shorter mask is
/// padded with background). Two empty masks give 0.
pub fn mask_iou(a: &[u8], b: &[u8]) -> f32 {
    let n = a.len().max(b.len());
    let (mut inter, mut union) = (0u64, 0u64);
    for i in 0..n {
        let va = a.get(i).is_some_and(|&v| v != 0);
        let vb = b.get(i).is_some_and(|&v| v != 0);
        inter += u64::from(va && vb);
        union += u64::from(va || vb);
    }
    if union == 0 {
        0.0
    } else {
        (inter as f64 / union as f64) as f32
    }
}

/// Which small regions [`remove_small_regions`] edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallRegions {
    /// Background components smaller than the threshold become foreground.
    Holes,
    /// Foreground components smaller than the threshold become background (the largest one
    /// stays when all are small).
    Islands,
}

/// 8-connected components of the non-zero pixels of a row-major `(h, w)` mask: a label per
/// pixel (0 = not in `mask`, components numbered 1.. in raster order of their first pixel, as
/// OpenCV's `connectedComponentsWithStats`) and each component's size (index 0 unused).
pub fn connected_components(mask: &[u8], h: usize, w: usize) -> (Vec<u32>, Vec<u64>) {
    let mut labels = vec![0u32; h * w];
    let mut sizes = vec![0u64];
    let mut stack = Vec::new();
    for start in 0..h * w {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0u64;
        labels[start] = label;
        stack.push(start);
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / w, p % w);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if mask[q] != 0 && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// SAM's `remove_small_regions`: fills holes or removes islands with fewer than `area_thresh`
/// pixels (8-connectivity) in a row-major `(h, w)` 0/1 mask. Returns whether it changed
/// anything.
///
/// ```
/// use sca_core::masks::{remove_small_regions, SmallRegions};
/// // a 3x3 square with a one-pixel hole, and a one-pixel island
/// let mut m = vec![
///     1, 1, 1, 0, 0,
///     1, 0, 1, 0, 0,
///     1, 1, 1, 0, 1,
/// ];
/// assert!(remove_small_regions(&mut m, 3, 5, 2, SmallRegions::Holes));
/// assert_eq!(m[6], 1);
/// assert!(remove_small_regions(&mut m, 3, 5, 2, SmallRegions::Islands));
/// assert_eq!(m[14], 0);
/// ```
pub fn remove_small_regions(
    mask: &mut [u8],
    h: usize,
    w: usize,
    area_thresh: u64,
    mode: SmallRegions,
) -> bool {
    let holes = mode == SmallRegions::Holes;
    let working: Vec<u8> = mask.iter().map(|&v| u8::from((v != 0) != holes)).collect();
    let (labels, sizes) = connected_components(&working, h, w);
    let small: Vec<bool> = sizes.iter().map(|&s| s < area_thresh).collect();
    if !small.iter().skip(1).any(|&s| s) {
        return false;
    }
    if holes {
        // foreground stays; small background components join it
        for (m, &l) in mask.iter_mut().zip(&labels) {
            if l != 0 && small[l as usize] {
                *m = 1;
            }
        }
    } else {
        let mut keep: Vec<bool> = small.iter().map(|&s| !s).collect();
        keep[0] = false;
        if !keep.iter().any(|&k| k) {
            // every island is small: keep the largest (the first on ties, as np.argmax)
            let mut best = 1;
            for l in 2..sizes.len() {
                if sizes[l] > sizes[best] {
                    best = l;
                }
            }
            keep[best] = true;
        }
        for (m, &l) in mask.iter_mut().zip(&labels) {
            *m = u8::from(l != 0 && keep[l as usize]);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_string_round_trips_with_negative_deltas() {
        let runs = vec![0, 1, 40, 2, 5000, 1, 3, 70_000, 2, 0, 1];
        let s = runs_to_string(&runs);
        assert!(s.bytes().all(|b| (48..112).contains(&b)));
        assert_eq!(string_to_runs(&s).unwrap(), runs);
        assert_eq!(runs_to_string(&[0, 9]), "09");
        assert_eq!(runs_to_string(&[]), "");
    }

    #[test]
    fn taps_copy_equal_sizes_and_clamp_edges() {
        let t = linear_taps(5, 5);
        assert!(t
            .iter()
            .enumerate()
            .all(|(i, t)| t.i0 == i && t.l0 == 1.0 && t.l1 == 0.0));
        let t = linear_taps(2, 8);
        assert_eq!((t[0].i0, t[0].l1), (0, 0.0));
        assert_eq!((t[7].i0, t[7].i1), (1, 1));
        let t = linear_taps(7, 3);
        assert!(t.iter().all(|t| t.i1 < 7 && (0.0..=1.0).contains(&t.l1)));
    }
}
