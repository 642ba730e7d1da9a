//! `export verify`: runs a bundle and its f32 reference on the same images and prompts and
//! compares them stage by stage, against thresholds that depend on the bundle's storage.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use sca_core::bundle::{self, Bundle, Quant};
use sca_core::{Decode, Point, Prompt, Sca, Trace};

use crate::ExportError;

/// Largest allowed `max |bundle − reference| / max |reference|` per stage, and whether greedy
/// captions must be identical.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub embedding: f32,
    /// Mask logits at original resolution.
    pub masks: f32,
    pub iou: f32,
    /// The LM prefix (mixer output projected, with the task tokens).
    pub prefix: f32,
    /// Teacher-forced LM logits on the reference's caption.
    pub logits: f32,
    pub captions_identical: bool,
}

impl Thresholds {
    /// The stated thresholds: f32 storage is exact up to float reassociation (1e-4); an f16
    /// encoder 2e-3 on the embedding; q8_0 3% on the logits with identical greedy captions;
    /// f16 and q4_k decoders report caption agreement without requiring it.
    pub fn for_bundle(quant: Quant, encoder_f16: bool) -> Thresholds {
        let embedding = if encoder_f16 { 2e-3 } else { 1e-4 };
        // Error in the embedding reaches every later stage.
        let floor = if encoder_f16 { 2e-2 } else { 0.0 };
        let (dec, logits, captions_identical) = match quant {
            Quant::F32 => (1e-4, 1e-4, !encoder_f16),
            Quant::F16 => (1e-2, 1e-2, false),
            Quant::Q8_0 => (5e-2, 3e-2, true),
            Quant::Q4K => (0.15, 0.15, false),
        };
        let f = |x: f32| x.max(floor);
        Thresholds {
            embedding,
            masks: f(dec),
            iou: f(dec),
            prefix: f(dec),
            logits: if quant == Quant::Q8_0 {
                logits
            } else {
                f(logits)
            },
            captions_identical,
        }
    }
}

/// One compared stage.
#[derive(Debug, Clone)]
pub struct StageDiff {
    pub name: &'static str,
    pub max_abs: f32,
    /// max |reference| over the same values.
    pub max_ref: f32,
    pub threshold: f32,
}

impl StageDiff {
    pub fn rel(&self) -> f32 {
        if self.max_ref > 0.0 {
            self.max_abs / self.max_ref
        } else {
            self.max_abs
        }
    }

    pub fn passes(&self) -> bool {
        self.rel() <= self.threshold
    }
}

/// What [`verify`] measured.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub quant: String,
    pub encoder_dtype: String,
    pub thresholds: Thresholds,
    pub stages: Vec<StageDiff>,
    pub captions_total: usize,
    pub captions_equal: usize,
    /// (bundle caption, reference caption) of each disagreement.
    pub caption_mismatches: Vec<(String, String)>,
    /// (file, bytes, dtype) from the manifest.
    pub sizes: Vec<(String, u64, String)>,
}

impl VerifyReport {
    /// Reasons the bundle fails its thresholds (empty: it passes).
    pub fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .stages
            .iter()
            .filter(|s| !s.passes())
            .map(|s| {
                format!(
                    "{}: relative difference {:.3e} exceeds {:.1e}",
                    s.name,
                    s.rel(),
                    s.threshold
                )
            })
            .collect();
        if self.thresholds.captions_identical && self.captions_equal != self.captions_total {
            f.push(format!(
                "captions: {} of {} differ from the reference",
                self.captions_total - self.captions_equal,
                self.captions_total
            ));
        }
        f
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            out,
            "bundle: decoder {} / encoder {}",
            self.quant, self.encoder_dtype
        )?;
        writeln!(
            out,
            "{:<10} {:>12} {:>12} {:>12} {:>10}  ",
            "stage", "max|diff|", "max|ref|", "relative", "threshold"
        )?;
        for s in &self.stages {
            writeln!(
                out,
                "{:<10} {:>12.3e} {:>12.3e} {:>12.3e} {:>10.1e}  {}",
                s.name,
                s.max_abs,
                s.max_ref,
                s.rel(),
                s.threshold,
                if s.passes() { "ok" } else { "FAIL" }
            )?;
        }
        writeln!(
            out,
            "captions   {}/{} identical to the reference (greedy){}",
            self.captions_equal,
            self.captions_total,
            if self.thresholds.captions_identical {
                ", required"
            } else {
                ", reported only"
            }
        )?;
        for (b, r) in self.caption_mismatches.iter().take(5) {
            writeln!(out, "  bundle {b:?} vs reference {r:?}")?;
        }
        writeln!(out, "{:<22} {:>14} {:>10}  dtype", "file", "bytes", "MB")?;
        for (name, bytes, dtype) in &self.sizes {
            writeln!(
                out,
                "{name:<22} {bytes:>14} {:>10.2}  {dtype}",
                *bytes as f64 / 1e6
            )?;
        }
        let total: u64 = self.sizes.iter().map(|s| s.1).sum();
        writeln!(
            out,
            "{:<22} {total:>14} {:>10.2}",
            "total",
            total as f64 / 1e6
        )
    }
}

/// Options of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Images to run with [`standard_prompts`], besides a parity fixture's own image and
    /// prompts when the reference is a fixture; with neither, a generated test image is used.
    pub images: Vec<PathBuf>,
    /// New tokens per caption (default: the reference's generation default).
    pub max_new_tokens: Option<usize>,
}

/// The fixture-style prompts on a `w` x `h` image: a point, a box, positive + negative
/// points, a box with a point.
pub fn standard_prompts(w: usize, h: usize) -> Vec<Prompt> {
    let (w, h) = (w as f32, h as f32);
    let p = |x: f32, y: f32, label| Point {
        x: x * w,
        y: y * h,
        label,
    };
    vec![
        Prompt {
            points: vec![p(0.5, 0.5, 1)],
            box_: None,
            multimask: true,
        },
        Prompt {
            points: vec![],
            box_: Some([0.2 * w, 0.25 * h, 0.7 * w, 0.8 * h]),
            multimask: true,
        },
        Prompt {
            points: vec![p(0.3, 0.4, 1), p(0.7, 0.6, 0)],
            box_: None,
            multimask: true,
        },
        Prompt {
            points: vec![p(0.3, 0.35, 1)],
            box_: Some([0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h]),
            multimask: false,
        },
    ]
}

/// A deterministic 256 x 192 test image: a gradient with a few solid shapes.
pub fn test_image() -> RgbImage {
    RgbImage::from_fn(256, 192, |x, y| {
        let (fx, fy) = (x as i32, y as i32);
        if (fx - 80).pow(2) + (fy - 90).pow(2) < 40 * 40 {
            image::Rgb([220, 40, 40])
        } else if (150..230).contains(&fx) && (30..100).contains(&fy) {
            image::Rgb([40, 60, 210])
        } else if (140..240).contains(&fx)
            && (120..180).contains(&fy)
            && fy - 120 > (fx - 190).abs() - 50
        {
            image::Rgb([60, 190, 70])
        } else {
            image::Rgb([(90 + x / 4) as u8, (100 + y / 4) as u8, 120])
        }
    })
}

#[derive(Default)]
struct Acc {
    max_abs: f32,
    max_ref: f32,
}

impl Acc {
    fn add(&mut self, got: &Tensor, want: &Tensor) -> candle_core::Result<()> {
        let (g, w) = (got.to_dtype(DType::F32)?, want.to_dtype(DType::F32)?);
        let d = (&g - &w)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let m = w.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        self.max_abs = self.max_abs.max(d);
        self.max_ref = self.max_ref.max(m);
        Ok(())
    }

    fn add_slices(&mut self, got: &[f32], want: &[f32]) {
        for (g, w) in got.iter().zip(want) {
            self.max_abs = self.max_abs.max((g - w).abs());
            self.max_ref = self.max_ref.max(w.abs());
        }
    }
}

/// A parity fixture's image, prompts and caption length (`image.png` + `inputs.json` in the
/// reference directory), if it is one.
fn fixture_case(dir: &Path) -> Result<Option<(RgbImage, Vec<Prompt>, usize)>, ExportError> {
    let (img_path, inputs) = (dir.join("image.png"), dir.join("inputs.json"));
    if !img_path.is_file() || !inputs.is_file() {
        return Ok(None);
    }
    let bad = |msg: String| ExportError::Input {
        path: inputs.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&inputs).map_err(|source| ExportError::Io {
        path: inputs.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let multimask = v["multimask_output"].as_bool().unwrap_or(true);
    let new = v["max_new_tokens"].as_u64().unwrap_or(20) as usize;
    let f = |x: &serde_json::Value| x.as_f64().map(|x| x as f32);
    let mut prompts = Vec::new();
    for (i, r) in v["regions"].as_array().into_iter().flatten().enumerate() {
        let mut p = Prompt {
            multimask,
            ..Default::default()
        };
        if let Some(b) = r["box"].as_array() {
            let b: Vec<f32> = b.iter().filter_map(f).collect();
            if b.len() != 4 {
                return Err(bad(format!("regions[{i}].box needs 4 numbers")));
            }
            p.box_ = Some([b[0], b[1], b[2], b[3]]);
        }
        let labels = r["labels"].as_array().cloned().unwrap_or_default();
        for (j, pt) in r["points"].as_array().into_iter().flatten().enumerate() {
            let xy: Vec<f32> = pt.as_array().into_iter().flatten().filter_map(f).collect();
            if xy.len() != 2 {
                return Err(bad(format!("regions[{i}].points[{j}] needs [x, y]")));
            }
            let label = labels.get(j).and_then(|l| l.as_i64()).unwrap_or(1);
            p.points.push(Point {
                x: xy[0],
                y: xy[1],
                label,
            });
        }
        prompts.push(p);
    }
    Ok(Some((
        sca_core::image::load_image(&img_path)?,
        prompts,
        new,
    )))
}

/// Runs the bundle in `bundle_dir` and the f32 reference (a checkpoint, or an f32 bundle) in
/// `reference` on the same inputs; see [`VerifyReport::failures`] for the verdict.
pub fn verify(
    bundle_dir: &Path,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport, ExportError> {
    if !bundle::is_bundle(bundle_dir) {
        return Err(ExportError::Input {
            path: bundle_dir.to_path_buf(),
            msg: "not a bundle (no manifest.json)".into(),
        });
    }
    let b = Bundle::from_dir(bundle_dir)?;
    let manifest = b.manifest.clone();
    let quant = Quant::parse(&manifest.quant)?;
    let thresholds = Thresholds::for_bundle(quant, manifest.encoder_dtype == "f16");
    let got = b.into_sca(Device::Cpu)?;
    let want = Sca::load(reference, Device::Cpu)?;
    if got.config() != want.config() {
        return Err(ExportError::Input {
            path: reference.to_path_buf(),
            msg: "the reference's config differs from the bundle's".into(),
        });
    }
    // (image, prompts, new tokens per caption)
    let default_new = opts
        .max_new_tokens
        .unwrap_or_else(|| want.generation.default_max_new_tokens());
    let mut cases: Vec<(RgbImage, Vec<Prompt>, usize)> = Vec::new();
    if let Some((img, prompts, new)) = fixture_case(reference)? {
        cases.push((img, prompts, opts.max_new_tokens.unwrap_or(new)));
    }
    for p in &opts.images {
        let img = sca_core::image::load_image(p)?;
        let prompts = standard_prompts(img.width() as usize, img.height() as usize);
        cases.push((img, prompts, default_new));
    }
    if cases.is_empty() {
        let img = test_image();
        let prompts = standard_prompts(img.width() as usize, img.height() as usize);
        cases.push((img, prompts, default_new));
    }

    let (mut emb_acc, mut mask_acc, mut iou_acc) = (Acc::default(), Acc::default(), Acc::default());
    let (mut prefix_acc, mut logit_acc) = (Acc::default(), Acc::default());
    let (mut total, mut equal, mut mismatches) = (0, 0, Vec::new());
    for (img, prompts, max_new_tokens) in cases {
        let decode = Decode::Greedy { max_new_tokens };
        let eg = got.embed(&img)?;
        let ew = want.embed(&img)?;
        emb_acc.add(&eg.embedding, &ew.embedding)?;
        for prompt in prompts {
            let rg = got.predict(&eg, &prompt, &decode)?;
            let rw = want.predict(&ew, &prompt, &decode)?;
            for (a, b) in rg.mask_logits.iter().zip(&rw.mask_logits) {
                mask_acc.add_slices(a, b);
            }
            iou_acc.add_slices(&rg.iou, &rw.iou);
            total += 1;
            if rg.tokens == rw.tokens {
                equal += 1;
            } else {
                mismatches.push((rg.caption.clone(), rw.caption.clone()));
            }
            // Prefix and teacher-forced logits on the reference's caption.
            let sg = got.scale_prompt(&eg, &prompt)?;
            let sw = want.scale_prompt(&ew, &prompt)?;
            let og = got.model.decode_prompts(
                &eg.embedding,
                &[sg],
                prompt.multimask,
                &mut Trace::default(),
            )?;
            let ow = want.model.decode_prompts(
                &ew.embedding,
                &[sw],
                prompt.multimask,
                &mut Trace::default(),
            )?;
            prefix_acc.add(&og.prefix, &ow.prefix)?;
            let ids = if rw.tokens.is_empty() {
                vec![want.generation.eos_token_id]
            } else {
                rw.tokens.clone()
            };
            let n = ids.len();
            let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
            let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu)?;
            let lg =
                got.model
                    .teacher_forced_logits(&og.prefix, &ids, &mask, &mut Trace::default())?;
            let lw =
                want.model
                    .teacher_forced_logits(&ow.prefix, &ids, &mask, &mut Trace::default())?;
            logit_acc.add(&lg, &lw)?;
        }
    }
    let stage = |name, a: Acc, threshold| StageDiff {
        name,
        max_abs: a.max_abs,
        max_ref: a.max_ref,
        threshold,
    };
    let stages = vec![
        stage("embedding", emb_acc, thresholds.embedding),
        stage("masks", mask_acc, thresholds.masks),
        stage("iou", iou_acc, thresholds.iou),
        stage("prefix", prefix_acc, thresholds.prefix),
        stage("logits", logit_acc, thresholds.logits),
    ];
    let sizes = manifest
        .files
        .iter()
        .map(|(k, f)| (k.clone(), f.bytes, f.dtype.clone()))
        .collect();
    Ok(VerifyReport {
        quant: manifest.quant.clone(),
        encoder_dtype: manifest.encoder_dtype.clone(),
        thresholds,
        stages,
        captions_total: total,
        captions_equal: equal,
        caption_mismatches: mismatches,
        sizes,
    })
}
