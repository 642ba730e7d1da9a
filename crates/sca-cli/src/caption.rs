//! `sca caption`: one prompt (points and/or a box) -> masks, IoU scores and a caption.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use sca_core::masks::{box_xyxy_to_xywh, CocoRle};
use sca_core::{Decode, Point, Prompt, Sca};
use serde::Serialize;

#[derive(clap::Args)]
pub struct CaptionArgs {
    /// Image file (PNG, JPEG or WebP).
    image: PathBuf,
    /// Checkpoint directory (official layout: config.json, weights, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// A point `x,y[,label]` in image pixels (label 1 = object, 0 = background; default 1).
    /// Repeat the flag for several points: they form one prompt.
    #[arg(long = "point", value_name = "X,Y[,LABEL]", allow_hyphen_values = true)]
    points: Vec<String>,
    /// A box `x1,y1,x2,y2` in image pixels.
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2", allow_hyphen_values = true)]
    box_: Option<String>,
    /// Return SAM's three candidate masks instead of one.
    #[arg(long)]
    multimask: bool,
    /// Beam width (1 = greedy).
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Most new caption tokens (default: the official evaluation default, 19).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Print JSON: {"regions":[{"caption","tokens","iou","masks" (COCO RLE),"box" (xywh)}]}.
    #[arg(long)]
    json: bool,
    /// Write the best mask as a PNG (white = object).
    #[arg(long, value_name = "FILE.png")]
    mask_out: Option<PathBuf>,
}

fn parse_floats(s: &str, what: &str, n: &[usize]) -> Result<Vec<f32>> {
    let v = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .with_context(|| format!("{what} `{s}`: `{p}` is not a number"))
        })
        .collect::<Result<Vec<_>>>()?;
    if !n.contains(&v.len()) {
        bail!("{what} `{s}` has {} values, expected {n:?}", v.len());
    }
    Ok(v)
}

/// Parses `--point` and `--box` values into one prompt.
pub fn parse_prompt(points: &[String], box_: Option<&str>, multimask: bool) -> Result<Prompt> {
    let mut prompt = Prompt {
        multimask,
        ..Default::default()
    };
    for p in points {
        let v = parse_floats(p, "--point", &[2, 3])?;
        let label = v.get(2).copied().unwrap_or(1.0);
        if label != 0.0 && label != 1.0 {
            bail!("--point `{p}`: label must be 1 (object) or 0 (background), got {label}");
        }
        prompt.points.push(Point {
            x: v[0],
            y: v[1],
            label: label as i64,
        });
    }
    if let Some(b) = box_ {
        let v = parse_floats(b, "--box", &[4])?;
        prompt.box_ = Some([v[0], v[1], v[2], v[3]]);
    }
    if prompt.points.is_empty() && prompt.box_.is_none() {
        bail!("give a prompt: at least one --point x,y or a --box x1,y1,x2,y2");
    }
    Ok(prompt)
}

#[derive(Serialize)]
struct RegionJson {
    caption: String,
    tokens: Vec<u32>,
    iou: Vec<f32>,
    masks: Vec<CocoRle>,
    #[serde(rename = "box")]
    box_: [f32; 4],
}

#[derive(Serialize)]
struct Output {
    regions: Vec<RegionJson>,
}

pub fn run(a: &CaptionArgs) -> Result<()> {
    let prompt = parse_prompt(&a.points, a.box_.as_deref(), a.multimask)?;
    if a.beams == 0 {
        bail!("--beams must be at least 1");
    }
    let img = sca_core::image::load_image(&a.image)?;
    let sca = Sca::load(&a.model, Device::Cpu)
        .with_context(|| format!("loading the model from {}", a.model.display()))?;
    let max_new = a
        .max_new_tokens
        .unwrap_or_else(|| sca.generation.default_max_new_tokens());
    let decode = Decode::from_beams(a.beams, max_new);
    let emb = sca.embed(&img).context("encoding the image")?;
    let region = if a.json {
        sca.predict(&emb, &prompt, &decode)?
    } else {
        // stream the caption as it is decoded
        let mut out = std::io::stdout();
        let r = sca.caption_stream(&emb, &prompt, &decode, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            true
        })?;
        println!();
        r
    };
    let (h, w) = emb.original_size;
    if let Some(path) = &a.mask_out {
        let best = region
            .iou
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        write_mask_png(path, &region.masks[best].data, w, h)?;
    }
    if a.json {
        let out = Output {
            regions: vec![RegionJson {
                caption: region.caption.clone(),
                tokens: region.tokens.clone(),
                iou: region.iou.clone(),
                masks: region
                    .masks
                    .iter()
                    .map(|m| CocoRle::encode(&m.data, m.height, m.width))
                    .collect(),
                box_: box_xyxy_to_xywh(region.box_),
            }],
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let iou: Vec<String> = region.iou.iter().map(|v| format!("{v:.3}")).collect();
        println!("iou: {}", iou.join(" "));
    }
    Ok(())
}

/// Writes a 0/1 mask as an 8-bit PNG, atomically (temp file + rename).
fn write_mask_png(path: &Path, mask: &[u8], w: usize, h: usize) -> Result<()> {
    let data: Vec<u8> = mask.iter().map(|&v| if v > 0 { 255 } else { 0 }).collect();
    let img = image::GrayImage::from_raw(w as u32, h as u32, data).context("mask size")?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("mask"),
        std::process::id()
    ));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
