//! Region-captioning evaluation (`sca-spec.md` §5), shared by `sca eval` and the trainer's
//! periodic evaluation: every region of every image is prompted with its ground-truth box (or
//! the box centre as one positive point), captions are generated and scored with
//! `sca-metrics` against the region's references; predicted masks are compared with
//! ground-truth masks where the data has them, and captions of synthetic scenes are checked
//! for their colour, shape and size words.

use std::collections::HashSet;
use std::path::PathBuf;

use sca_core::masks::{box_xyxy_to_xywh, mask_iou};
use sca_core::{Decode, Point, Prompt, Sca};
use sca_data::synthetic::attribute_agreement;
use sca_data::Dataset;
use sca_metrics::{MeteorData, Metrics, RegionId};
use serde::Serialize;

use crate::{Error, Result};

/// Which prompt each region gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    /// The ground-truth box (the official protocol).
    Box,
    /// One positive point at the box centre (the `center_point_in_box` ablation).
    Point,
}

/// Where METEOR's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeteorMode {
    /// Skip METEOR (reported as `null`).
    Off,
    /// `$SCA_METEOR_DATA` or `.cache/meteor` if installed; otherwise skipped with a warning.
    Auto,
    /// This directory (an error if it is not a METEOR data directory).
    Dir(PathBuf),
}

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub prompt: PromptKind,
    pub decode: Decode,
    /// Only the first N images.
    pub limit: Option<usize>,
    pub meteor: MeteorMode,
    /// Prompts decoded together (the official evaluation chunks 8).
    pub chunk: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            prompt: PromptKind::Box,
            decode: Decode::EVAL_DEFAULT,
            limit: None,
            meteor: MeteorMode::Auto,
            chunk: 16,
        }
    }
}

/// One region's prediction (a `sca score` corpus entry plus boxes and ids).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: RegionId,
    pub candidate: String,
    pub references: Vec<String>,
    pub image_id: u64,
    pub region_id: u64,
    /// The prompt box `[x, y, w, h]` (clamped to the image), original pixels.
    #[serde(rename = "box")]
    pub box_xywh: [f32; 4],
    /// Box of the highest-IoU predicted mask, `[x, y, w, h]`.
    pub pred_box: [f32; 4],
    /// Predicted IoU of each candidate mask.
    pub iou_scores: Vec<f32>,
    /// IoU of the highest-scoring mask with the ground-truth mask, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_iou: Option<f32>,
    /// Colour, shape and size words all correct (synthetic data only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes_correct: Option<bool>,
}

/// Per-attribute agreement rates on synthetic data.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct AttributeRates {
    pub colour: f64,
    pub shape: f64,
    pub size: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub n_images: usize,
    pub n_regions: usize,
    /// Regions skipped because their box is empty after clamping to the image.
    pub skipped_regions: usize,
    pub metrics: Metrics,
    /// Mean IoU over regions with a ground-truth mask (`None` when none has one).
    pub mask_iou_mean: Option<f64>,
    /// Fraction of regions whose caption names the right colour, shape and size (`None`
    /// unless the data carries synthetic attributes).
    pub attribute_accuracy: Option<f64>,
    pub attribute_rates: Option<AttributeRates>,
    pub predictions: Vec<Prediction>,
}

/// The evaluation prompt of a region with (clamped) box `b` (x0, y0, x1, y1).
fn region_prompt(kind: PromptKind, b: &[f32; 4]) -> Prompt {
    match kind {
        PromptKind::Box => Prompt {
            points: vec![],
            box_: Some(*b),
            multimask: true,
        },
        PromptKind::Point => Prompt {
            points: vec![Point {
                x: (b[0] + b[2]) / 2.0,
                y: (b[1] + b[3]) / 2.0,
                label: 1,
            }],
            box_: None,
            multimask: true,
        },
    }
}

/// How closely a student follows its teacher (`sca eval --teacher`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Agreement {
    pub regions: usize,
    /// Fraction of regions whose student caption equals the teacher's.
    pub exact_match: f64,
    /// Mean over the teacher's caption tokens (EOS included) of KL(teacher ‖ student) of the
    /// next-token distributions (temperature 1, full vocabulary), both teacher-forced on the
    /// teacher's caption.
    pub mean_token_kl: f64,
    pub tokens: usize,
}

/// Compares `teacher` with `student` on the regions of `report` (an [`evaluate`] report of
/// the student on the same data and options): the teacher captions every region the same way,
/// and both models score the teacher's captions.
pub fn teacher_agreement(
    student: &Sca,
    teacher: &Sca,
    dataset: &dyn Dataset,
    opts: &EvalOptions,
    report: &EvalReport,
    mut progress: impl FnMut(usize, usize),
) -> Result<Agreement> {
    use candle_core::{DType, Tensor, D};
    use sca_core::Trace;
    let mut preds = report.predictions.iter();
    let (mut same, mut regions, mut kl_sum, mut tokens) = (0usize, 0usize, 0f64, 0usize);
    let eos = teacher.generation.eos_token_id;
    for i in 0..report.n_images {
        let sample = dataset.get(i)?;
        let img = sample.load_image()?;
        let (es, et) = (student.embed(&img)?, teacher.embed(&img)?);
        let boxes: Vec<[f32; 4]> = sample
            .regions
            .iter()
            .filter_map(|r| r.clamped_xyxy(sample.width, sample.height))
            .collect();
        for chunk in boxes.chunks(opts.chunk.max(1)) {
            let prompts: Vec<Prompt> = chunk
                .iter()
                .map(|b| region_prompt(opts.prompt, b))
                .collect();
            let out = teacher.predict_many(&et, &prompts, &opts.decode)?;
            for r in &out {
                let p = preds.next().ok_or_else(|| {
                    Error::Other("the report has fewer regions than the data".into())
                })?;
                same += (p.candidate == r.caption) as usize;
                regions += 1;
            }
            let caps: Vec<Vec<u32>> = out
                .iter()
                .map(|r| {
                    if r.tokens.is_empty() {
                        vec![eos]
                    } else {
                        r.tokens.clone()
                    }
                })
                .collect();
            let m = caps.len();
            let l = caps.iter().map(Vec::len).max().unwrap_or(1);
            let (mut ids, mut am) = (vec![eos; m * l], vec![0u32; m * l]);
            for (r, c) in caps.iter().enumerate() {
                ids[r * l..r * l + c.len()].copy_from_slice(c);
                am[r * l..r * l + c.len()].fill(1);
            }
            let dev = student.model.device();
            let ids = Tensor::from_vec(ids, (m, l), dev)?;
            let am = Tensor::from_vec(am, (m, l), dev)?;
            let logp = |sca: &Sca, emb: &sca_core::ImageEmbedding| -> Result<Tensor> {
                let scaled = prompts
                    .iter()
                    .map(|p| sca.scale_prompt(emb, p))
                    .collect::<sca_core::Result<Vec<_>>>()?;
                let mut tr = Trace::default();
                let o = sca
                    .model
                    .decode_prompts(&emb.embedding, &scaled, true, &mut tr)?;
                let lg = sca
                    .model
                    .teacher_forced_logits(&o.prefix, &ids, &am, &mut tr)?;
                Ok(candle_nn::ops::log_softmax(
                    &lg.narrow(1, 0, l)?,
                    D::Minus1,
                )?)
            };
            let (lt, ls) = (logp(teacher, &et)?, logp(student, &es)?);
            let kl = ((lt.exp()? * (&lt - &ls)?)?.sum(D::Minus1)? * am.to_dtype(DType::F32)?)?;
            kl_sum += kl.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            tokens += caps.iter().map(Vec::len).sum::<usize>();
        }
        progress(i + 1, report.n_images);
    }
    Ok(Agreement {
        regions,
        exact_match: same as f64 / regions.max(1) as f64,
        mean_token_kl: kl_sum / tokens.max(1) as f64,
        tokens,
    })
}

/// Runs the model on every region of the first `opts.limit` images. `progress(done, total)`
/// is called after each image.
pub fn evaluate(
    sca: &Sca,
    dataset: &dyn Dataset,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    let n_images = opts.limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    let mut preds: Vec<Prediction> = Vec::new();
    let mut skipped = 0usize;
    let (mut iou_sum, mut iou_n) = (0f64, 0usize);
    let (mut attr_n, mut attr_ok) = (0usize, 0usize);
    let mut rates = [0usize; 3];
    for i in 0..n_images {
        let sample = dataset.get(i)?;
        let img = sample.load_image()?;
        let emb = sca.embed(&img)?;
        let (w, h) = (sample.width, sample.height);
        let mut regions = Vec::new();
        for r in &sample.regions {
            match r.clamped_xyxy(w, h) {
                Some(b) => regions.push((r, b)),
                None => skipped += 1,
            }
        }
        for chunk in regions.chunks(opts.chunk.max(1)) {
            let prompts: Vec<Prompt> = chunk
                .iter()
                .map(|(_, b)| region_prompt(opts.prompt, b))
                .collect();
            let out = sca.predict_many(&emb, &prompts, &opts.decode)?;
            for ((r, b), region) in chunk.iter().zip(out) {
                let best = region
                    .iou
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(k, _)| k);
                let mask_iou_v = match &r.mask {
                    Some(rle) => {
                        let gt = rle.decode()?;
                        let v = mask_iou(&region.masks[best].data, &gt);
                        iou_sum += v as f64;
                        iou_n += 1;
                        Some(v)
                    }
                    None => None,
                };
                let attributes_correct = r.attributes.as_ref().map(|truth| {
                    let a = attribute_agreement(&region.caption, truth);
                    attr_n += 1;
                    rates[0] += a.colour as usize;
                    rates[1] += a.shape as usize;
                    rates[2] += a.size as usize;
                    attr_ok += a.core() as usize;
                    a.core()
                });
                let references = if r.references.is_empty() {
                    vec![r.caption.clone()]
                } else {
                    r.references.clone()
                };
                preds.push(Prediction {
                    id: RegionId::Int(r.id as i64),
                    candidate: region.caption,
                    references,
                    image_id: sample.image_id,
                    region_id: r.id,
                    box_xywh: box_xyxy_to_xywh(*b),
                    pred_box: box_xyxy_to_xywh(region.box_),
                    iou_scores: region.iou,
                    mask_iou: mask_iou_v,
                    attributes_correct,
                });
            }
        }
        progress(i + 1, n_images);
    }
    // Region ids are unique within most datasets; otherwise qualify them by image.
    let mut seen = HashSet::new();
    if !preds.iter().all(|p| seen.insert(p.region_id)) {
        for p in &mut preds {
            p.id = RegionId::Str(format!("{}/{}", p.image_id, p.region_id));
        }
    }
    let metrics = score(&preds, &opts.meteor)?;
    let attr = |k: usize| rates[k] as f64 / attr_n.max(1) as f64;
    Ok(EvalReport {
        n_images,
        n_regions: preds.len(),
        skipped_regions: skipped,
        metrics,
        mask_iou_mean: (iou_n > 0).then(|| iou_sum / iou_n as f64),
        attribute_accuracy: (attr_n > 0).then(|| attr_ok as f64 / attr_n as f64),
        attribute_rates: (attr_n > 0).then(|| AttributeRates {
            colour: attr(0),
            shape: attr(1),
            size: attr(2),
        }),
        predictions: preds,
    })
}

/// Corpus metrics of the predictions (METEOR per `mode`).
pub fn score(preds: &[Prediction], mode: &MeteorMode) -> Result<Metrics> {
    let regions: Vec<sca_metrics::Region> = preds
        .iter()
        .map(|p| sca_metrics::Region {
            id: p.id.clone(),
            candidate: p.candidate.clone(),
            references: p.references.clone(),
        })
        .collect();
    if regions.is_empty() {
        return Err(Error::Other("no region to evaluate".into()));
    }
    let tokenized = sca_metrics::tokenize_regions(&regions, None);
    let dir = match mode {
        MeteorMode::Off => None,
        MeteorMode::Dir(d) => Some(d.clone()),
        MeteorMode::Auto => match MeteorData::locate(None) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("METEOR skipped: {e} (install it with scripts/setup-meteor.sh)");
                None
            }
        },
    };
    let meteor = match dir {
        None => None,
        Some(d) => {
            let sentences = tokenized.iter().flat_map(|r| {
                std::iter::once(r.candidate.as_str()).chain(r.references.iter().map(String::as_str))
            });
            Some(
                MeteorData::load_for(&d, sentences)
                    .map_err(|e| Error::Metrics(format!("METEOR data in {}: {e}", d.display())))?,
            )
        }
    };
    let scores = sca_metrics::score_tokenized(&tokenized, meteor.as_ref(), None)
        .map_err(|e| Error::Metrics(e.to_string()))?;
    Ok(scores.corpus)
}
