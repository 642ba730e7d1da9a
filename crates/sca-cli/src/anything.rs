//! `sca anything`: segment and caption everything in an image (SAM's automatic mask generator
//! plus one caption per kept region), writing COCO-style JSON and an optional overlay PNG.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use sca_core::anything::{anything, AnythingConfig, AnythingEvent, AnythingOutput, AnythingRegion};
use sca_core::{Decode, Sca};
use serde::Serialize;

#[derive(clap::Args)]
pub struct AnythingArgs {
    /// Image file (PNG, JPEG or WebP).
    image: PathBuf,
    /// Checkpoint directory (official layout: config.json, weights, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Grid points per image side.
    #[arg(long, default_value_t = 32)]
    points_per_side: usize,
    /// Prompts per mask-decoder batch.
    #[arg(long, default_value_t = 64)]
    points_per_batch: usize,
    /// Keep masks whose predicted IoU is above this.
    #[arg(long, default_value_t = 0.88)]
    pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this.
    #[arg(long, default_value_t = 0.95)]
    stability_thresh: f32,
    /// Fill holes and remove islands smaller than this many pixels in the kept masks, then
    /// re-run NMS (SAM's `min_mask_region_area`; 0 = off).
    #[arg(long, default_value_t = 0)]
    min_mask_region_area: u64,
    /// Beam width for the captions (1 = greedy).
    #[arg(long, default_value_t = 3)]
    beams: usize,
    /// Write the regions as COCO-style JSON here (default: print to stdout).
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Write a PNG with every mask painted in its own colour and numbered (numbers = JSON
    /// order, listed with their captions on stderr).
    #[arg(long, value_name = "FILE.png")]
    overlay: Option<PathBuf>,
    /// Print the time of each stage to stderr: encoder, decoder batches (with mask
    /// post-processing and filters), NMS, captions.
    #[arg(long)]
    timings: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    image: String,
    width: usize,
    height: usize,
    regions: &'a [AnythingRegion],
}

pub fn run(a: &AnythingArgs) -> Result<()> {
    if a.beams == 0 {
        bail!("--beams must be at least 1");
    }
    if a.points_per_side == 0 || a.points_per_side > 1024 {
        bail!("--points-per-side must be 1..=1024");
    }
    if a.points_per_batch == 0 {
        bail!("--points-per-batch must be at least 1");
    }
    let img = sca_core::image::load_image(&a.image)?;
    let sca = Sca::load(&a.model, Device::Cpu)
        .with_context(|| format!("loading the model from {}", a.model.display()))?;
    let cfg = AnythingConfig {
        points_per_side: a.points_per_side,
        points_per_batch: a.points_per_batch,
        pred_iou_thresh: a.pred_iou_thresh,
        stability_score_thresh: a.stability_thresh,
        min_mask_region_area: a.min_mask_region_area,
        decode: Decode::from_beams(a.beams, sca.generation.default_max_new_tokens()),
        ..Default::default()
    };
    let total = a.points_per_side * a.points_per_side;
    let bar = ProgressBar::new(total.div_ceil(a.points_per_batch) as u64);
    bar.set_style(
        ProgressStyle::with_template("segmenting [{bar:40}] {pos}/{len} point batches ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (emb, out, times) = timed_anything(&sca, &img, &cfg, Some(&bar))?;
    if a.timings {
        eprintln!(
            "timings: encoder {:.1} ms (1 run), decoder batches {:.1} ms, nms {:.1} ms, \
             captions {:.1} ms, total {:.1} ms ({} candidates, {} regions)",
            times.encoder_ms,
            times.batches_ms,
            times.nms_ms,
            times.captions_ms,
            times.total_ms,
            out.candidates,
            out.regions.len()
        );
    }
    let (h, w) = emb.original_size;
    for (i, r) in out.regions.iter().enumerate() {
        eprintln!(
            "{i}: {} (iou {:.3}, area {})",
            r.caption, r.predicted_iou, r.area
        );
    }
    let json = serde_json::to_string(&Output {
        image: a.image.display().to_string(),
        width: w,
        height: h,
        regions: &out.regions,
    })?;
    match &a.out {
        Some(p) => write_atomic(p, |tmp| {
            std::fs::write(tmp, json.as_bytes())
                .with_context(|| format!("writing {}", tmp.display()))
        })?,
        None => println!("{json}"),
    }
    if let Some(p) = &a.overlay {
        let ov = overlay(&img, &out.regions)?;
        write_atomic(p, |tmp| {
            ov.save_with_format(tmp, image::ImageFormat::Png)
                .with_context(|| format!("writing {}", tmp.display()))
        })?;
    }
    Ok(())
}

/// Writes through a temp file in the target's directory, then renames it into place.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A distinct colour per index (golden-ratio hue steps).
fn colour(i: usize) -> [u8; 3] {
    let hue = (i as f64 * 0.618_033_988_75).fract() * 6.0;
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    let c = |v: f64| (55.0 + 200.0 * v) as u8;
    [c(r), c(g), c(b)]
}

/// 3x5 digit glyphs, one row per 3 bits (MSB = left).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// Draws `n` at (x, y) (top-left) in white on a black box, `scale` pixels per font pixel.
fn draw_number(img: &mut image::RgbImage, n: usize, x: i64, y: i64, scale: i64) {
    let digits: Vec<usize> = n
        .to_string()
        .bytes()
        .map(|b| usize::from(b - b'0'))
        .collect();
    let (bw, bh) = ((digits.len() as i64 * 4 + 1) * scale, 7 * scale);
    let mut put = |px: i64, py: i64, c: [u8; 3]| {
        if px >= 0 && py >= 0 && px < img.width() as i64 && py < img.height() as i64 {
            img.put_pixel(px as u32, py as u32, image::Rgb(c));
        }
    };
    for py in 0..bh {
        for px in 0..bw {
            put(x + px, y + py, [0, 0, 0]);
        }
    }
    for (di, &d) in digits.iter().enumerate() {
        for (row, bits) in DIGITS[d].iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let gx = x + (1 + di as i64 * 4 + col) * scale + sx;
                            let gy = y + (1 + row as i64) * scale + sy;
                            put(gx, gy, [255, 255, 255]);
                        }
                    }
                }
            }
        }
    }
}

/// The image with every mask blended in its own colour (largest first, so small regions stay
/// visible) and its JSON index drawn at its prompt point.
fn overlay(img: &image::RgbImage, regions: &[AnythingRegion]) -> Result<image::RgbImage> {
    let mut out = img.clone();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by(|&a, &b| regions[b].area.cmp(&regions[a].area));
    for &i in &order {
        let mask = regions[i].segmentation.decode()?;
        if mask.len() != w * h {
            bail!("region {i}: mask size does not match the {w}x{h} image");
        }
        let c = colour(i);
        for (p, px) in mask.iter().zip(out.pixels_mut()) {
            if *p != 0 {
                for (v, cv) in px.0.iter_mut().zip(c) {
                    *v = ((*v as u16 + cv as u16) / 2) as u8;
                }
            }
        }
    }
    let scale = (w.max(h) as i64 / 256).max(1);
    for &i in &order {
        let [x, y] = regions[i].point;
        draw_number(&mut out, i, x as i64, y as i64, scale);
    }
    Ok(out)
}

/// Wall time of each anything-mode stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct StageTimes {
    pub encoder_ms: f64,
    /// Prompt encoder + mask decoder (+ mixer for points with a candidate), mask
    /// post-processing and the IoU/stability filters, over all point batches.
    pub batches_ms: f64,
    pub nms_ms: f64,
    pub captions_ms: f64,
    pub total_ms: f64,
}

/// Encodes `img` once and runs anything mode on it, timing each stage from the generator's
/// events (last batch done, first final mask). `bar` follows the point batches.
pub(crate) fn timed_anything(
    sca: &Sca,
    img: &image::RgbImage,
    cfg: &AnythingConfig,
    bar: Option<&ProgressBar>,
) -> Result<(sca_core::ImageEmbedding, AnythingOutput, StageTimes)> {
    let t0 = Instant::now();
    let emb = sca.embed(img).context("encoding the image")?;
    let t_enc = t0.elapsed();
    let (mut t_batches, mut t_nms) = (None, None);
    let out = anything(sca, &emb, cfg, &mut |ev| {
        match ev {
            AnythingEvent::Progress { batches_done, .. } => {
                if let Some(b) = bar {
                    b.set_position(batches_done as u64);
                }
                t_batches = Some(t0.elapsed());
            }
            AnythingEvent::Mask { index: 0, .. } => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                t_nms = Some(t0.elapsed());
            }
            _ => {}
        }
        true
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let end = t0.elapsed();
    let batches = t_batches.unwrap_or(t_enc);
    let nms = t_nms.unwrap_or(end);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let times = StageTimes {
        encoder_ms: ms(t_enc),
        batches_ms: ms(batches.saturating_sub(t_enc)),
        nms_ms: ms(nms.saturating_sub(batches)),
        captions_ms: ms(end.saturating_sub(nms)),
        total_ms: ms(end),
    };
    Ok((emb, out, times))
}
