//! The `/v1/predict` request JSON and its validation, and the answer's JSON.

use sca_core::masks::{box_xyxy_to_xywh, CocoRle};
use sca_core::{Decode, Point, Prompt, Region};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// `{"prompts": [{"points": [[x, y, label], ..], "box": [x1, y1, x2, y2]}], "multimask",
/// "max_new_tokens", "beams"}`; coordinates in original-image pixels (x right, y down),
/// labels 1 (object, the default when a point has two numbers) or 0 (background).
/// `embedding_id` may be given here instead of as a form field.
///
/// ```
/// let r: sca_server::PredictRequest = serde_json::from_str(
///     r#"{"prompts": [{"points": [[10, 20]]}, {"box": [0, 0, 5, 5]}], "beams": 3}"#,
/// ).unwrap();
/// assert_eq!(r.prompts.len(), 2);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub prompts: Vec<PromptJson>,
    /// Three candidate masks per prompt (true) or SAM's single mask (false, the default).
    #[serde(default)]
    pub multimask: bool,
    /// Most new caption tokens (default: the model's generation config, usually 19).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Beam width (1 = greedy, the default).
    #[serde(default)]
    pub beams: Option<usize>,
    /// A previous `/v1/embed` answer's id (alternative to the `embedding_id` form field).
    #[serde(default)]
    pub embedding_id: Option<String>,
}

/// One prompt: points and/or a box.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptJson {
    #[serde(default)]
    pub points: Vec<Vec<f64>>,
    #[serde(default, rename = "box")]
    pub box_: Option<Vec<f64>>,
    /// Overrides the request's `multimask` for this prompt.
    #[serde(default)]
    pub multimask: Option<bool>,
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_prompts: usize,
    pub max_new_tokens: usize,
    pub max_beams: usize,
    /// Used when the request has no `max_new_tokens`.
    pub default_max_new_tokens: usize,
}

fn finite(v: f64, what: &str) -> Result<f32, ApiError> {
    if !v.is_finite() || v.abs() > f32::MAX as f64 {
        return Err(ApiError::invalid_prompt(format!(
            "{what} is not a finite number"
        )));
    }
    Ok(v as f32)
}

impl PredictRequest {
    /// Parses the JSON text, naming the problem on failure (400 `invalid_json`).
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("the `request` JSON: {e}")))
    }

    /// Checks everything that does not need the image (counts, labels, finite numbers,
    /// limits) and builds the prompts and the decoding.
    pub fn validate(&self, limits: &Limits) -> Result<(Vec<Prompt>, Decode), ApiError> {
        if self.prompts.is_empty() {
            return Err(ApiError::invalid_prompt(
                "`prompts` is empty: give at least one prompt",
            ));
        }
        if self.prompts.len() > limits.max_prompts {
            return Err(ApiError::invalid_prompt(format!(
                "{} prompts; at most {} per request",
                self.prompts.len(),
                limits.max_prompts
            )));
        }
        let mut prompts = Vec::with_capacity(self.prompts.len());
        for (i, p) in self.prompts.iter().enumerate() {
            if p.points.is_empty() && p.box_.is_none() {
                return Err(ApiError::invalid_prompt(format!(
                    "prompt {i} has neither points nor a box"
                )));
            }
            let mut points = Vec::with_capacity(p.points.len());
            for (j, pt) in p.points.iter().enumerate() {
                let what = format!("prompt {i} point {j}");
                if pt.len() != 2 && pt.len() != 3 {
                    return Err(ApiError::invalid_prompt(format!(
                        "{what} has {} numbers; expected [x, y] or [x, y, label]",
                        pt.len()
                    )));
                }
                let label = match pt.get(2).copied() {
                    None => 1,
                    Some(1.0) => 1,
                    Some(0.0) => 0,
                    Some(l) => {
                        return Err(ApiError::invalid_prompt(format!(
                            "{what} has label {l}; use 1 (object) or 0 (background)"
                        )))
                    }
                };
                points.push(Point {
                    x: finite(pt[0], &format!("{what} x"))?,
                    y: finite(pt[1], &format!("{what} y"))?,
                    label,
                });
            }
            let box_ = match &p.box_ {
                None => None,
                Some(b) if b.len() == 4 => {
                    let what = format!("prompt {i} box");
                    Some([
                        finite(b[0], &what)?,
                        finite(b[1], &what)?,
                        finite(b[2], &what)?,
                        finite(b[3], &what)?,
                    ])
                }
                Some(b) => {
                    return Err(ApiError::invalid_prompt(format!(
                        "prompt {i} box has {} numbers; expected [x1, y1, x2, y2]",
                        b.len()
                    )))
                }
            };
            prompts.push(Prompt {
                points,
                box_,
                multimask: p.multimask.unwrap_or(self.multimask),
            });
        }
        let max_new = self.max_new_tokens.unwrap_or(limits.default_max_new_tokens);
        if max_new == 0 || max_new > limits.max_new_tokens {
            return Err(ApiError::invalid_prompt(format!(
                "max_new_tokens {max_new} is outside 1..={}",
                limits.max_new_tokens
            )));
        }
        let beams = self.beams.unwrap_or(1);
        if beams == 0 || beams > limits.max_beams {
            return Err(ApiError::invalid_prompt(format!(
                "beams {beams} is outside 1..={}",
                limits.max_beams
            )));
        }
        Ok((prompts, Decode::from_beams(beams, max_new)))
    }
}

/// One region of the answer (the CLI's `--json` record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionJson {
    pub caption: String,
    pub tokens: Vec<u32>,
    pub iou: Vec<f32>,
    /// COCO RLE, one per candidate mask, in `iou` order.
    pub masks: Vec<CocoRle>,
    /// `[x, y, w, h]` of the highest-IoU mask.
    #[serde(rename = "box")]
    pub box_: [f32; 4],
}

impl From<&Region> for RegionJson {
    fn from(r: &Region) -> Self {
        Self {
            caption: r.caption.clone(),
            tokens: r.tokens.clone(),
            iou: r.iou.clone(),
            masks: r
                .masks
                .iter()
                .map(|m| CocoRle::encode(&m.data, m.height, m.width))
                .collect(),
            box_: box_xyxy_to_xywh(r.box_),
        }
    }
}

/// The `/v1/predict` answer: one region per prompt, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictResponse {
    /// The image's id: pass it as `embedding_id` to predict again without re-uploading.
    pub embedding_id: String,
    /// `[H, W]` of the image.
    pub original_size: [usize; 2],
    pub regions: Vec<RegionJson>,
}
