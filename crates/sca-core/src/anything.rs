//! Anything mode: SAM's automatic mask generator over a point grid, then one caption per kept
//! region (the official `ScaAutomaticMaskCaptionGenerator`, spec §6).
//!
//! The steps and their order follow SAM's `automatic_mask_generator.py` / `utils/amg.py` with a
//! single crop (`crop_n_layers = 0`, where the crop-edge filter is a no-op):
//! 1. a `points_per_side` grid (`np.linspace(1/2n, 1-1/2n, n)` in x and y, x fastest), scaled
//!    by the image width/height in original pixels;
//! 2. per batch of `points_per_batch` points: one positive point per prompt, multimask output
//!    (3 candidates per point, point-major order), logits upsampled to the original size;
//! 3. keep predicted IoU `> pred_iou_thresh` (when the threshold is > 0);
//! 4. stability score `|logit > offset| / |logit > -offset|` on the upsampled logits, keep
//!    `>= stability_score_thresh` (when > 0);
//! 5. binarize at 0, boxes from masks (inclusive xyxy);
//! 6. after all batches, torchvision `nms` on the boxes (float32, area `(x2-x1)*(y2-y1)`),
//!    ranked by predicted IoU descending (ties: earlier candidate first), dropping a box whose
//!    IoU with a kept one is `> box_nms_thresh`; the output is in that ranked order.
//!
//! Differences from the official code, none of which changes the kept records: the image
//! encoder runs once (the official `generate` re-runs it for every batch), and captions are
//! generated only for regions that survive the filters and NMS (the official code captions every
//! candidate). A caption depends only on its point prompt, so the kept regions get the same
//! caption either way. `min_mask_region_area > 0` runs SAM's small-region post-processing on the
//! kept masks (before captioning); multi-crop is not implemented (the official default is no
//! crops).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::generate::{generate, Decode};
use crate::masks::{self, CocoRle, TorchCpu};
use crate::pipeline::{ImageEmbedding, Point, Prompt, Sca};
use crate::trace::Trace;
use crate::{Error, Result};

/// Settings of the automatic generator; `Default` gives the official values.
///
/// ```
/// let cfg = sca_core::anything::AnythingConfig::default();
/// assert_eq!((cfg.points_per_side, cfg.points_per_batch), (32, 64));
/// assert_eq!(cfg.pred_iou_thresh, 0.88);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AnythingConfig {
    /// Grid points per image side (`points_per_side^2` prompts).
    pub points_per_side: usize,
    /// Prompts per mask-decoder call (and per caption batch).
    pub points_per_batch: usize,
    /// Keep candidates with predicted IoU `>` this (0 disables the filter).
    pub pred_iou_thresh: f32,
    /// Keep candidates with stability score `>=` this (0 disables the filter).
    pub stability_score_thresh: f32,
    /// Logit offset of the stability score.
    pub stability_score_offset: f32,
    /// Box IoU above which NMS drops the lower-ranked region.
    pub box_nms_thresh: f32,
    /// With `> 0`: SAM's `postprocess_small_regions` on the kept masks — holes and islands
    /// smaller than this many pixels are filled/removed, then a second NMS (same threshold)
    /// prefers the masks that needed no change (official default 0: off).
    pub min_mask_region_area: u64,
    /// Caption decoding (official: beam search, 3 beams).
    pub decode: Decode,
}

impl Default for AnythingConfig {
    fn default() -> Self {
        Self {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            min_mask_region_area: 0,
            decode: Decode::from_beams(3, Decode::EVAL_DEFAULT.max_new_tokens()),
        }
    }
}

impl AnythingConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Prompt(format!("anything mode: {m}")));
        if self.points_per_side == 0 || self.points_per_side > 1024 {
            return bad(format!(
                "points_per_side must be 1..=1024, got {}",
                self.points_per_side
            ));
        }
        if self.points_per_batch == 0 {
            return bad("points_per_batch must be at least 1".into());
        }
        for (name, v) in [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("stability_score_thresh", self.stability_score_thresh),
            ("stability_score_offset", self.stability_score_offset),
            ("box_nms_thresh", self.box_nms_thresh),
        ] {
            if !v.is_finite() {
                return bad(format!("{name} must be finite, got {v}"));
            }
        }
        if let Decode::Beam { num_beams: 0, .. } = self.decode {
            return bad("beam search needs at least one beam".into());
        }
        Ok(())
    }
}

/// One kept region, as a COCO-style record (serde field names are the output schema).
///
/// ```
/// use sca_core::anything::AnythingRegion;
/// use sca_core::masks::CocoRle;
/// let r = AnythingRegion {
///     segmentation: CocoRle::encode(&[0, 1, 1, 1], 2, 2),
///     area: 3,
///     bbox: [0.0, 0.0, 1.0, 1.0],
///     predicted_iou: 0.9,
///     point: [0.5, 0.5],
///     stability_score: 0.97,
///     caption: "a red square".into(),
/// };
/// assert!(serde_json::to_string(&r).unwrap().contains("\"stability_score\""));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnythingRegion {
    /// The binary mask at original resolution.
    pub segmentation: CocoRle,
    /// Mask pixels.
    pub area: u64,
    /// `[x, y, w, h]` from the inclusive mask box (SAM's `box_xyxy_to_xywh`).
    pub bbox: [f32; 4],
    pub predicted_iou: f32,
    /// The grid point `[x, y]` (original pixels) whose prompt produced the mask.
    pub point: [f64; 2],
    pub stability_score: f32,
    /// Empty until the caption event; filled in every returned region.
    pub caption: String,
}

/// What the generator reports while it runs; the callback returns `false` to cancel.
#[derive(Debug, Clone, Copy)]
pub enum AnythingEvent<'a> {
    /// A batch of points went through the mask decoder.
    Progress {
        batches_done: usize,
        batches_total: usize,
        /// Candidates that passed the IoU and stability filters so far.
        candidates: usize,
    },
    /// A region is final (after NMS); its caption is still empty. All masks come first.
    Mask {
        index: usize,
        region: &'a AnythingRegion,
    },
    /// The caption of region `index` (announced before by a `Mask` event).
    Caption { index: usize, caption: &'a str },
}

/// The result of [`anything`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnythingOutput {
    /// Kept regions in NMS rank order (predicted IoU descending), each with its caption. After
    /// a cancellation: only the regions whose caption was finished.
    pub regions: Vec<AnythingRegion>,
    /// The callback asked to stop.
    pub cancelled: bool,
    /// Candidates before NMS.
    pub candidates: usize,
}

/// SAM's `postprocess_small_regions` on the candidates `keep` (in rank order): holes then
/// islands under `min_mask_region_area` pixels are edited; NMS on the new boxes with score 1
/// for unchanged and 0 for changed masks (a stable sort keeps the rank order among equals);
/// the survivors get their new mask and box. Returns the surviving candidate indices.
fn remove_small_regions_and_renms(
    cands: &mut [Candidate],
    keep: &[usize],
    h: usize,
    w: usize,
    cfg: &AnythingConfig,
) -> Result<Vec<usize>> {
    let mut edited = Vec::with_capacity(keep.len());
    let mut boxes = Vec::with_capacity(keep.len());
    let mut scores = Vec::with_capacity(keep.len());
    for &i in keep {
        let mut mask = cands[i].rle.decode()?;
        let area = cfg.min_mask_region_area;
        let a = masks::remove_small_regions(&mut mask, h, w, area, masks::SmallRegions::Holes);
        let b = masks::remove_small_regions(&mut mask, h, w, area, masks::SmallRegions::Islands);
        boxes.push(masks::mask_to_box(&mask, h, w));
        scores.push(if a || b { 0.0 } else { 1.0 });
        edited.push((a || b).then_some(mask));
    }
    let survivors = box_nms(&boxes, &scores, cfg.box_nms_thresh);
    Ok(survivors
        .into_iter()
        .map(|j| {
            let i = keep[j];
            if let Some(mask) = &edited[j] {
                cands[i].rle = CocoRle::encode(mask, h, w);
                cands[i].box_ = boxes[j];
            }
            i
        })
        .collect())
}

/// SAM's `build_point_grid(n)`: `n*n` points in `[0, 1]^2`, x fastest, computed as numpy's
/// `linspace(1/(2n), 1 - 1/(2n), n)`.
///
/// ```
/// let g = sca_core::anything::point_grid(2);
/// assert_eq!(g, vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]);
/// ```
pub fn point_grid(n: usize) -> Vec<[f64; 2]> {
    let offset = 1.0 / (2.0 * n as f64);
    let (start, stop) = (offset, 1.0 - offset);
    let side: Vec<f64> = (0..n)
        .map(|i| {
            if n == 1 {
                start
            } else if i == n - 1 {
                stop
            } else {
                start + i as f64 * ((stop - start) / (n - 1) as f64)
            }
        })
        .collect();
    side.iter()
        .flat_map(|&y| side.iter().map(move |&x| [x, y]))
        .collect()
}

/// torchvision `nms` on inclusive xyxy boxes: indices kept, in descending score order (ties
/// keep the earlier index first, as torchvision's stable sort; SAM's `batched_nms` takes a
/// per-class path above 1,000 boxes that re-sorts unstably, so exact score ties may be ordered
/// differently there). IoU is computed in float32; a NaN IoU never suppresses.
///
/// ```
/// let boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0]];
/// assert_eq!(sca_core::anything::box_nms(&boxes, &[0.9, 0.95, 0.5], 0.7), vec![1, 2]);
/// ```
pub fn box_nms(boxes: &[[f32; 4]], scores: &[f32], iou_thresh: f32) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let mut order: Vec<usize> = (0..n).collect();
    // torchvision sorts stably, descending; `+ 0.0` makes -0 equal 0 as in torch.
    order.sort_by(|&a, &b| (scores[b] + 0.0).total_cmp(&(scores[a] + 0.0)));
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let ai = area(bi);
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (ai + area(bj) - inter);
            if ovr > iou_thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

struct Candidate {
    point: usize,
    iou: f32,
    stability: f32,
    // compressed right away: a candidate list of full-size masks would not fit in memory
    rle: CocoRle,
    box_: [f32; 4],
}

/// Segments and captions everything in an already-encoded image (the encoder is not run here,
/// so it runs exactly once per image: in [`Sca::embed`]).
///
/// ```no_run
/// use sca_core::anything::{anything, AnythingConfig, AnythingEvent};
/// let sca = sca_core::Sca::load("ckpt".as_ref(), candle_core::Device::Cpu)?;
/// let emb = sca.embed(&sca_core::image::load_image("photo.jpg".as_ref())?)?;
/// let out = anything(&sca, &emb, &AnythingConfig::default(), &mut |ev| {
///     if let AnythingEvent::Caption { index, caption } = ev {
///         println!("{index}: {caption}");
///     }
///     true
/// })?;
/// println!("{} regions", out.regions.len());
/// # Ok::<(), sca_core::Error>(())
/// ```
pub fn anything(
    sca: &Sca,
    emb: &ImageEmbedding,
    cfg: &AnythingConfig,
    on_event: &mut dyn FnMut(AnythingEvent) -> bool,
) -> Result<AnythingOutput> {
    cfg.validate()?;
    let (h, w) = emb.original_size;
    let points: Vec<[f64; 2]> = point_grid(cfg.points_per_side)
        .into_iter()
        .map(|[x, y]| [x * w as f64, y * h as f64])
        .collect();
    let pad = sca.preprocessor.pad_size;
    // The official batch upsamples (64, 3, H, W) at once: the 3-channel torch kernel.
    let torch = TorchCpu {
        channels: 3,
        threads: 1,
    };
    let batches_total = points.len().div_ceil(cfg.points_per_batch);
    let mut cands: Vec<Candidate> = Vec::new();
    // LM prefix (14, D) of every point that has a candidate.
    let mut prefixes: Vec<Option<Tensor>> = vec![None; points.len()];
    let cancelled = |candidates| AnythingOutput {
        regions: Vec::new(),
        cancelled: true,
        candidates,
    };
    for (b, chunk) in points.chunks(cfg.points_per_batch).enumerate() {
        let first = b * cfg.points_per_batch;
        let scaled = chunk
            .iter()
            .map(|&[x, y]| {
                let p = Prompt {
                    points: vec![Point {
                        x: x as f32,
                        y: y as f32,
                        label: 1,
                    }],
                    box_: None,
                    multimask: true,
                };
                sca.scale_prompt(emb, &p)
            })
            .collect::<Result<Vec<_>>>()?;
        let dec = sca
            .model
            .decode_masks(&emb.embedding, &scaled, true, &mut Trace::default())?;
        let (m, k, lh, lw) = dec.masks.dims4()?;
        let flat = dec.masks.flatten_all()?.to_vec1::<f32>()?;
        let iou = dec.iou.to_vec2::<f32>()?;
        // Rows (points) with a candidate: only they need the mixer (its 12 layers cost several
        // times the mask decoder).
        let mut with_candidate: Vec<u32> = Vec::new();
        for j in 0..m {
            let mut any = false;
            for kk in 0..k {
                let ip = iou[j][kk];
                // NaN fails the filter, as in torch
                let pass_iou = cfg.pred_iou_thresh <= 0.0 || ip > cfg.pred_iou_thresh;
                if !pass_iou {
                    continue;
                }
                let plane = &flat[(j * k + kk) * lh * lw..(j * k + kk + 1) * lh * lw];
                let logits = masks::postprocess_logits_torch(
                    plane,
                    lh,
                    lw,
                    pad,
                    emb.resized_size,
                    emb.original_size,
                    torch,
                );
                let stability = masks::stability_score(&logits, 0.0, cfg.stability_score_offset);
                let stable =
                    cfg.stability_score_thresh <= 0.0 || stability >= cfg.stability_score_thresh;
                if !stable {
                    continue;
                }
                let mask = masks::binarize(&logits, 0.0);
                let box_ = masks::mask_to_box(&mask, h, w);
                cands.push(Candidate {
                    point: first + j,
                    iou: ip,
                    stability,
                    rle: CocoRle::encode(&mask, h, w),
                    box_,
                });
                any = true;
            }
            if any {
                with_candidate.push(j as u32);
            }
        }
        if !with_candidate.is_empty() {
            let idx = Tensor::new(with_candidate.as_slice(), dec.masks.device())?;
            let prefix = sca.model.caption_prefix(
                &dec.queries_out.index_select(&idx, 0)?,
                &dec.keys_out.index_select(&idx, 0)?,
                &mut Trace::default(),
            )?;
            for (r, &j) in with_candidate.iter().enumerate() {
                prefixes[first + j as usize] = Some(prefix.get(r)?);
            }
        }
        let go = on_event(AnythingEvent::Progress {
            batches_done: b + 1,
            batches_total,
            candidates: cands.len(),
        });
        if !go {
            return Ok(cancelled(cands.len()));
        }
    }
    let n_cands = cands.len();
    let boxes: Vec<[f32; 4]> = cands.iter().map(|c| c.box_).collect();
    let scores: Vec<f32> = cands.iter().map(|c| c.iou).collect();
    let mut keep = box_nms(&boxes, &scores, cfg.box_nms_thresh);
    if cfg.min_mask_region_area > 0 {
        keep = remove_small_regions_and_renms(&mut cands, &keep, h, w, cfg)?;
    }
    let mut regions: Vec<AnythingRegion> = Vec::with_capacity(keep.len());
    let mut region_point: Vec<usize> = Vec::with_capacity(keep.len());
    for &i in &keep {
        let c = &cands[i];
        let rle = c.rle.clone();
        regions.push(AnythingRegion {
            area: rle.area(),
            segmentation: rle,
            bbox: masks::box_xyxy_to_xywh(c.box_),
            predicted_iou: c.iou,
            point: points[c.point],
            stability_score: c.stability,
            caption: String::new(),
        });
        region_point.push(c.point);
    }
    drop(cands);
    for (index, region) in regions.iter().enumerate() {
        if !on_event(AnythingEvent::Mask { index, region }) {
            return Ok(cancelled(n_cands));
        }
    }
    // One caption per distinct point (its candidates share the caption), in rank order.
    let mut uniq: Vec<usize> = Vec::new();
    for &p in &region_point {
        if !uniq.contains(&p) {
            uniq.push(p);
        }
    }
    let eos = sca.generation.eos_token_id;
    let mut done = vec![false; regions.len()];
    let mut stopped = false;
    for chunk in uniq.chunks(cfg.points_per_batch) {
        let rows = chunk
            .iter()
            .map(|&p| {
                prefixes[p].clone().ok_or_else(|| {
                    Error::Prompt(format!("anything mode: no LM prefix for point {p}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let prefix = Tensor::stack(&rows, 0)?;
        let tokens = generate(&sca.model.lm, &prefix, &cfg.decode, eos, &mut |_, _| true)?;
        for (&p, toks) in chunk.iter().zip(&tokens) {
            let caption = sca.tokenizer.decode_caption(toks)?;
            for (index, &rp) in region_point.iter().enumerate() {
                if rp != p {
                    continue;
                }
                regions[index].caption.clone_from(&caption);
                done[index] = true;
                if !on_event(AnythingEvent::Caption {
                    index,
                    caption: &caption,
                }) {
                    stopped = true;
                }
            }
        }
        if stopped {
            break;
        }
    }
    if stopped {
        let regions = regions
            .into_iter()
            .zip(done)
            .filter_map(|(r, d)| d.then_some(r))
            .collect();
        return Ok(AnythingOutput {
            regions,
            cancelled: true,
            candidates: n_cands,
        });
    }
    Ok(AnythingOutput {
        regions,
        cancelled: false,
        candidates: n_cands,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(mask: &[u8], h: usize, w: usize, iou: f32) -> Candidate {
        Candidate {
            point: 0,
            iou,
            stability: 1.0,
            rle: CocoRle::encode(mask, h, w),
            box_: masks::mask_to_box(mask, h, w),
        }
    }

    /// SAM's `postprocess_small_regions` rules on a hand-made case: a mask with a speck far
    /// away (an island) is cleaned, loses its stretched box and then overlaps an unchanged
    /// mask, which NMS prefers (score 1 vs 0) even though it ranked lower.
    #[test]
    fn small_regions_are_cleaned_and_unchanged_masks_win_nms() {
        let (h, w) = (8, 10);
        let mut a = vec![0u8; h * w];
        let mut b = vec![0u8; h * w];
        for y in 1..5 {
            for x in 1..5 {
                a[y * w + x] = 1;
                b[y * w + x] = 1;
            }
        }
        a[7 * w + 9] = 1; // one-pixel island in the corner; b has none
        let mut cands = vec![cand(&a, h, w, 0.99), cand(&b, h, w, 0.90)];
        let cfg = AnythingConfig {
            min_mask_region_area: 2,
            box_nms_thresh: 0.7,
            ..Default::default()
        };
        // before: the island stretches a's box, so the first NMS keeps both
        let keep = box_nms(&[cands[0].box_, cands[1].box_], &[0.99, 0.90], 0.7);
        assert_eq!(keep, vec![0, 1]);
        let kept = remove_small_regions_and_renms(&mut cands, &keep, h, w, &cfg).unwrap();
        assert_eq!(kept, vec![1], "the unchanged mask wins the second NMS");

        // a lone changed mask survives with its new mask and box
        let mut one = vec![cand(&a, h, w, 0.99)];
        let kept = remove_small_regions_and_renms(&mut one, &[0], h, w, &cfg).unwrap();
        assert_eq!(kept, vec![0]);
        assert_eq!(one[0].box_, [1.0, 1.0, 4.0, 4.0]);
        assert_eq!(one[0].rle.area(), 16);
    }

    #[test]
    fn holes_are_filled_and_all_small_islands_keep_the_largest() {
        let (h, w) = (5, 5);
        #[rustfmt::skip]
        let mut ring = vec![
            1, 1, 1, 0, 0,
            1, 0, 1, 0, 0,
            1, 1, 1, 0, 0,
            0, 0, 0, 0, 0,
            0, 0, 0, 0, 0,
        ];
        assert!(masks::remove_small_regions(
            &mut ring,
            h,
            w,
            2,
            masks::SmallRegions::Holes
        ));
        assert_eq!(ring.iter().filter(|&&v| v == 1).count(), 9);
        // the outside background (16 px) is not a hole
        assert!(!masks::remove_small_regions(
            &mut ring,
            h,
            w,
            2,
            masks::SmallRegions::Holes
        ));
        #[rustfmt::skip]
        let mut specks = vec![
            1, 0, 0, 0, 1,
            0, 0, 0, 0, 1,
            0, 0, 0, 0, 0,
            0, 1, 0, 0, 0,
            0, 0, 0, 0, 0,
        ];
        // every island is under 5 px: the largest (2 px, the right edge) stays
        assert!(masks::remove_small_regions(
            &mut specks,
            h,
            w,
            5,
            masks::SmallRegions::Islands
        ));
        let on: Vec<usize> = (0..h * w).filter(|&i| specks[i] == 1).collect();
        assert_eq!(on, vec![4, 9]);
        // diagonal neighbours are connected (8-connectivity)
        let (labels, sizes) = masks::connected_components(&[1, 0, 0, 1], 2, 2);
        assert_eq!((labels, sizes), (vec![1, 0, 0, 1], vec![0, 2]));
    }
}
