//! Anything mode against an independent re-implementation of the official filtering rules.
//!
//! The reference in this file re-implements, from SAM's `automatic_mask_generator.py` and
//! `utils/amg.py` (single crop), on the mask logits the decoder produces for each grid point:
//! the point grid (`(i + 0.5) / n` times width/height, x fastest), candidate order (point-major,
//! then the 3 multimask outputs), the predicted-IoU filter (`>`), the stability score
//! (`|logit > 1| / |logit > -1|`, filter `>=`) on the logits upsampled to the original size,
//! binarization at 0, inclusive boxes from masks, and torchvision's greedy box NMS (float32,
//! area `(x2-x1)*(y2-y1)`, suppress IoU `>` threshold, ranked by predicted IoU, output in rank
//! order). The model is the random-weight parity fixture, so thresholds are lowered and the NMS
//! threshold raised for regions to survive. Captions are checked against `Sca::predict` with the
//! region's single positive point (multimask). The encoder runs exactly once by design:
//! `anything` takes an `ImageEmbedding` and never sees the image.

use std::path::{Path, PathBuf};

use sca_core::anything::{anything, point_grid, AnythingConfig, AnythingEvent, AnythingOutput};
use sca_core::masks::{postprocess_logits_torch, CocoRle, TorchCpu};
use sca_core::sam::prompt_encoder::ScaledPrompt;
use sca_core::{Decode, ImageEmbedding, Point, Prompt, Sca, Trace};

fn fixture() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
        .join("sca_b_box_multimask")
}

fn load() -> (Sca, ImageEmbedding) {
    let dir = fixture();
    let sca = Sca::load(&dir, candle_core::Device::Cpu).expect("load fixture model");
    let img = sca_core::image::load_image(&dir.join("image.png")).expect("fixture image");
    let emb = sca.embed(&img).expect("embed");
    (sca, emb)
}

fn test_config() -> AnythingConfig {
    AnythingConfig {
        points_per_side: 6,
        points_per_batch: 5, // uneven last batch
        pred_iou_thresh: 0.3,
        stability_score_thresh: 0.2,
        box_nms_thresh: 0.95,
        decode: Decode::EVAL_DEFAULT,
        ..Default::default()
    }
}

struct Ref {
    mask: Vec<u8>,
    box_: [f32; 4],
    iou: f32,
    stability: f32,
    point: [f64; 2],
}

/// The official algorithm, written out independently of `sca_core::anything`.
fn reference(sca: &Sca, emb: &ImageEmbedding, cfg: &AnythingConfig) -> Vec<Ref> {
    let (h, w) = emb.original_size;
    let n = cfg.points_per_side;
    let mut points = Vec::new();
    for i in 0..n {
        for j in 0..n {
            points.push([
                (j as f64 + 0.5) / n as f64 * w as f64,
                (i as f64 + 0.5) / n as f64 * h as f64,
            ]);
        }
    }
    let mut cands: Vec<Ref> = Vec::new();
    for chunk in points.chunks(cfg.points_per_batch) {
        let scaled: Vec<ScaledPrompt> = chunk
            .iter()
            .map(|p| {
                let prompt = Prompt {
                    points: vec![Point {
                        x: p[0] as f32,
                        y: p[1] as f32,
                        label: 1,
                    }],
                    box_: None,
                    multimask: true,
                };
                sca.scale_prompt(emb, &prompt).unwrap()
            })
            .collect();
        let out = sca
            .model
            .decode_prompts(&emb.embedding, &scaled, true, &mut Trace::default())
            .unwrap();
        let (m, k, lh, lw) = out.decoder.masks.dims4().unwrap();
        let low = out
            .decoder
            .masks
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ious = out.decoder.iou.to_vec2::<f32>().unwrap();
        for (j, point) in chunk.iter().enumerate().take(m) {
            for (kk, &iou) in ious[j].iter().enumerate().take(k) {
                if iou.partial_cmp(&cfg.pred_iou_thresh) != Some(std::cmp::Ordering::Greater) {
                    continue;
                }
                let plane = &low[(j * k + kk) * lh * lw..(j * k + kk + 1) * lh * lw];
                let logits = postprocess_logits_torch(
                    plane,
                    lh,
                    lw,
                    sca.preprocessor.pad_size,
                    emb.resized_size,
                    emb.original_size,
                    TorchCpu {
                        channels: 3,
                        threads: 1,
                    },
                );
                let hi = logits.iter().filter(|&&v| v > 1.0).count();
                let lo = logits.iter().filter(|&&v| v > -1.0).count();
                let stability = hi as f32 / lo as f32;
                if stability.is_nan() || stability < cfg.stability_score_thresh {
                    continue;
                }
                let mask: Vec<u8> = logits.iter().map(|&v| u8::from(v > 0.0)).collect();
                let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
                for y in 0..h {
                    for x in 0..w {
                        if mask[y * w + x] == 1 {
                            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                        }
                    }
                }
                let box_ = if x0 == w {
                    [0.0; 4]
                } else {
                    [x0 as f32, y0 as f32, x1 as f32, y1 as f32]
                };
                cands.push(Ref {
                    mask,
                    box_,
                    iou,
                    stability,
                    point: *point,
                });
            }
        }
    }
    // torchvision nms (stable on ties)
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].iou.partial_cmp(&cands[a].iou).unwrap());
    let mut keep: Vec<usize> = Vec::new();
    for &i in &order {
        let a = cands[i].box_;
        let suppressed = keep.iter().any(|&k| {
            let b = cands[k].box_;
            let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = iw * ih;
            let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
            inter / union > cfg.box_nms_thresh
        });
        if !suppressed {
            keep.push(i);
        }
    }
    let mut cands: Vec<Option<Ref>> = cands.into_iter().map(Some).collect();
    keep.iter().map(|&i| cands[i].take().unwrap()).collect()
}

fn run(
    sca: &Sca,
    emb: &ImageEmbedding,
    cfg: &AnythingConfig,
    mut stop_at: impl FnMut(&AnythingEvent) -> bool,
) -> (AnythingOutput, Vec<String>) {
    let mut log = Vec::new();
    let out = anything(sca, emb, cfg, &mut |ev| {
        log.push(match ev {
            AnythingEvent::Progress { batches_done, .. } => format!("progress {batches_done}"),
            AnythingEvent::Mask { index, region } => {
                assert!(region.caption.is_empty());
                format!("mask {index}")
            }
            AnythingEvent::Caption { index, .. } => format!("caption {index}"),
        });
        !stop_at(&ev)
    })
    .unwrap();
    (out, log)
}

#[test]
fn kept_regions_match_the_official_rules() {
    let (sca, emb) = load();
    let cfg = test_config();
    let (out, log) = run(&sca, &emb, &cfg, |_| false);
    let want = reference(&sca, &emb, &cfg);
    assert!(!out.cancelled);
    assert!(
        want.len() >= 2,
        "the test needs several kept regions, got {}",
        want.len()
    );
    assert!(out.candidates > want.len(), "NMS should drop something");
    assert_eq!(out.regions.len(), want.len());
    let (h, w) = emb.original_size;
    for (i, (got, r)) in out.regions.iter().zip(&want).enumerate() {
        assert_eq!(
            got.segmentation,
            CocoRle::encode(&r.mask, h, w),
            "region {i}"
        );
        assert_eq!(got.segmentation.decode().unwrap(), r.mask, "region {i}");
        assert_eq!(
            got.area,
            r.mask.iter().map(|&v| v as u64).sum::<u64>(),
            "{i}"
        );
        let b = r.box_;
        assert_eq!(
            got.bbox,
            [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "region {i}"
        );
        assert_eq!(got.predicted_iou, r.iou, "region {i}");
        assert_eq!(got.stability_score, r.stability, "region {i}");
        for d in 0..2 {
            assert!((got.point[d] - r.point[d]).abs() < 1e-9, "region {i} point");
        }
        let prompt = Prompt {
            points: vec![Point {
                x: got.point[0] as f32,
                y: got.point[1] as f32,
                label: 1,
            }],
            box_: None,
            multimask: true,
        };
        let single = sca.predict(&emb, &prompt, &cfg.decode).unwrap();
        assert_eq!(got.caption, single.caption, "region {i} caption");
    }
    // progress per batch, then every mask, then every caption
    let batches = 36usize.div_ceil(5);
    let mut expect: Vec<String> = (1..=batches).map(|b| format!("progress {b}")).collect();
    expect.extend((0..want.len()).map(|i| format!("mask {i}")));
    assert_eq!(log[..expect.len()], expect[..]);
    let mut caps: Vec<&String> = log[expect.len()..].iter().collect();
    assert_eq!(caps.len(), want.len());
    caps.sort();
    caps.dedup();
    assert_eq!(caps.len(), want.len(), "one caption per region");
}

#[test]
fn beam_search_captions_match_predict() {
    let (sca, emb) = load();
    let cfg = AnythingConfig {
        decode: Decode::from_beams(3, 8),
        points_per_side: 3,
        ..test_config()
    };
    let (out, _) = run(&sca, &emb, &cfg, |_| false);
    assert!(!out.regions.is_empty());
    for r in &out.regions {
        let prompt = Prompt {
            points: vec![Point {
                x: r.point[0] as f32,
                y: r.point[1] as f32,
                label: 1,
            }],
            box_: None,
            multimask: true,
        };
        assert_eq!(
            r.caption,
            sca.predict(&emb, &prompt, &cfg.decode).unwrap().caption
        );
    }
}

#[test]
fn cancellation_between_batches_and_during_captions() {
    let (sca, emb) = load();
    let cfg = test_config();
    let (out, log) = run(&sca, &emb, &cfg, |ev| {
        matches!(
            ev,
            AnythingEvent::Progress {
                batches_done: 2,
                ..
            }
        )
    });
    assert!(out.cancelled);
    assert!(out.regions.is_empty());
    assert_eq!(log, ["progress 1", "progress 2"]);

    let (out, log) = run(&sca, &emb, &cfg, |ev| {
        matches!(ev, AnythingEvent::Caption { .. })
    });
    assert!(out.cancelled);
    let captions = log.iter().filter(|l| l.starts_with("caption")).count();
    assert!(captions >= 1);
    assert_eq!(out.regions.len(), captions);
}

#[test]
fn grid_defaults_and_bad_settings() {
    let d = AnythingConfig::default();
    assert_eq!(d.points_per_side, 32);
    assert_eq!(d.points_per_batch, 64);
    assert_eq!(d.pred_iou_thresh, 0.88);
    assert_eq!(d.stability_score_thresh, 0.95);
    assert_eq!(d.stability_score_offset, 1.0);
    assert_eq!(d.box_nms_thresh, 0.7);
    assert!(matches!(d.decode, Decode::Beam { num_beams: 3, .. }));
    for n in [1usize, 2, 7, 32] {
        let g = point_grid(n);
        assert_eq!(g.len(), n * n);
        for (idx, p) in g.iter().enumerate() {
            let (i, j) = (idx / n, idx % n);
            assert!((p[0] - (j as f64 + 0.5) / n as f64).abs() < 1e-12);
            assert!((p[1] - (i as f64 + 0.5) / n as f64).abs() < 1e-12);
        }
    }
    let (sca, emb) = load();
    for bad in [
        AnythingConfig {
            points_per_side: 0,
            ..test_config()
        },
        AnythingConfig {
            points_per_batch: 0,
            ..test_config()
        },
        AnythingConfig {
            pred_iou_thresh: f32::NAN,
            ..test_config()
        },
    ] {
        assert!(anything(&sca, &emb, &bad, &mut |_| true).is_err());
    }
    // the official defaults run (a random model keeps few or no regions)
    let cfg = AnythingConfig {
        points_per_side: 2,
        decode: Decode::EVAL_DEFAULT,
        ..Default::default()
    };
    let out = anything(&sca, &emb, &cfg, &mut |_| true).unwrap();
    assert!(!out.cancelled);
}
