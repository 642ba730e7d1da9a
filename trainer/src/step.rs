//! One training step's math: a data-loader batch (or a slice of its images, for one
//! data-parallel worker) -> caption loss (+ SAM mask losses) -> gradients of the trainable
//! parameters.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, Var};
use sca_core::dropout::Dropout;
use sca_core::sam::prompt_encoder::ScaledPrompt;
use sca_core::{caption_loss, ScaModel, Trace};
use sca_data::Batch;

use crate::losses::mask_loss;
use crate::{Error, Result};

/// A batch (or a worker's share of it) as tensors on the training device.
pub struct StepInputs {
    /// Per image: pixels (1, 3, S, S).
    pub pixel_values: Vec<Tensor>,
    /// Per image: its box prompts in the S x S model frame.
    pub prompts: Vec<Vec<ScaledPrompt>>,
    /// (N, L) caption ids + EOS, right-padded.
    pub input_ids: Tensor,
    /// (N, L) 1 for real tokens.
    pub attention_mask: Tensor,
    /// (N, M, M) 0/1 ground-truth masks of the regions that have one, and their row indices.
    pub gt_masks: Option<(Tensor, Tensor)>,
    /// Per region: a key for its dropout masks (its index in the whole batch).
    pub row_keys: Vec<u64>,
    /// Target tokens (the loss's denominator).
    pub n_tokens: usize,
    /// Regions.
    pub n_regions: usize,
}

impl StepInputs {
    /// Images `images` of `batch` (all of them for a single worker).
    pub fn from_batch(batch: &Batch, images: Range<usize>, device: &Device) -> Result<Self> {
        let (s, r, l) = (batch.image_size, batch.regions_per_image, batch.seq_len);
        if images.end > batch.images || images.is_empty() {
            return Err(Error::Other(format!(
                "images {images:?} of a batch of {}",
                batch.images
            )));
        }
        let plane = 3 * s * s;
        let mut pixel_values = Vec::new();
        let mut prompts = Vec::new();
        for i in images.clone() {
            pixel_values.push(Tensor::from_slice(
                &batch.pixel_values[i * plane..(i + 1) * plane],
                (1, 3, s, s),
                device,
            )?);
            prompts.push(
                batch.boxes[i * r..(i + 1) * r]
                    .iter()
                    .map(|b| ScaledPrompt {
                        points: vec![],
                        labels: vec![],
                        box_: Some(*b),
                    })
                    .collect(),
            );
        }
        let rows = images.start * r..images.end * r;
        let n = rows.len();
        let ids = &batch.input_ids[rows.start * l..rows.end * l];
        let am = &batch.attention_mask[rows.start * l..rows.end * l];
        let n_tokens = am.iter().filter(|&&v| v != 0).count();
        let gt_masks = match &batch.masks {
            Some(m) => {
                let side = batch.mask_size;
                let sel: Vec<u32> = rows
                    .clone()
                    .enumerate()
                    .filter(|(_, g)| batch.has_mask[*g])
                    .map(|(k, _)| k as u32)
                    .collect();
                if sel.is_empty() {
                    None
                } else {
                    let data: Vec<f32> = sel
                        .iter()
                        .flat_map(|&k| {
                            let g = rows.start + k as usize;
                            m[g * side * side..(g + 1) * side * side]
                                .iter()
                                .map(|&v| v as f32)
                        })
                        .collect();
                    let t = Tensor::from_vec(data, (sel.len(), side, side), device)?;
                    let idx = Tensor::from_vec(sel.clone(), sel.len(), device)?;
                    Some((t, idx))
                }
            }
            None => None,
        };
        Ok(Self {
            pixel_values,
            prompts,
            input_ids: Tensor::from_slice(ids, (n, l), device)?,
            attention_mask: Tensor::from_slice(am, (n, l), device)?,
            gt_masks,
            row_keys: rows.map(|k| k as u64).collect(),
            n_tokens,
            n_regions: n,
        })
    }
}

/// What the loss includes.
#[derive(Debug, Clone)]
pub struct LossOptions {
    pub label_smoothing: f64,
    /// GPT-2 dropout (rates + seed); `None` = evaluation mode.
    pub dropout: Option<(u64, f64, f64, f64)>,
    /// Weight of SAM's mask loss; `None` = no mask loss.
    pub mask_loss_weight: Option<f64>,
}

/// The losses of one forward pass.
pub struct Losses {
    /// What is differentiated: caption loss + weighted mask loss.
    pub total: Tensor,
    pub caption: f64,
    pub mask: Option<f64>,
}

/// Forward pass: SAM encoder per image, decoder + mixer per image's prompts, one batched
/// teacher-forced GPT-2 pass over all regions, label-smoothed caption loss (mean over target
/// tokens), plus SAM's mask loss on regions with ground-truth masks when asked.
pub fn forward(model: &ScaModel, inputs: &StepInputs, opts: &LossOptions) -> Result<Losses> {
    let mut trace = Trace::default();
    let mut prefixes = Vec::with_capacity(inputs.pixel_values.len());
    let mut masks = Vec::new();
    let mut ious = Vec::new();
    for (px, prompts) in inputs.pixel_values.iter().zip(&inputs.prompts) {
        let emb = model.embed_pixels(px, &mut trace)?;
        let out = model.decode_prompts(&emb, prompts, false, &mut trace)?;
        prefixes.push(out.prefix);
        if opts.mask_loss_weight.is_some() {
            masks.push(out.decoder.masks.squeeze(1)?);
            ious.push(out.decoder.iou.squeeze(1)?);
        }
    }
    let prefix = Tensor::cat(&prefixes, 0)?;
    let dropout = opts.dropout.map(|(seed, embd, attn, resid)| Dropout {
        seed,
        embd,
        attn,
        resid,
        rows: inputs.row_keys.clone(),
    });
    let logits = model.teacher_forced_logits_train(
        &prefix,
        &inputs.input_ids,
        &inputs.attention_mask,
        dropout.as_ref(),
    )?;
    let cap = caption_loss(
        &logits,
        &inputs.input_ids,
        &inputs.attention_mask,
        opts.label_smoothing,
    )?;
    let caption = cap.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let (total, mask) = match (opts.mask_loss_weight, &inputs.gt_masks) {
        (Some(w), Some((gt, idx))) => {
            let logits = Tensor::cat(&masks, 0)?.index_select(idx, 0)?;
            let iou = Tensor::cat(&ious, 0)?.index_select(idx, 0)?;
            if logits.dims()[1..] != gt.dims()[1..] {
                return Err(Error::Other(format!(
                    "mask logits {:?} and ground truth {:?} differ in size",
                    logits.dims(),
                    gt.dims()
                )));
            }
            let ml = mask_loss(&logits, &iou, gt)?;
            let mv = ml.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            ((cap + (ml * w)?)?, Some(mv))
        }
        _ => (cap, None),
    };
    Ok(Losses {
        total,
        caption,
        mask,
    })
}

/// Gradients of `loss` for `vars` (in order; `None` where no gradient reached a parameter).
/// They are detached: candle records the backward pass's own ops on tensors derived from
/// `Var`s, and a gradient that kept that graph would keep the whole step alive.
pub fn gradients(loss: &Tensor, vars: &[&Var]) -> Result<Vec<Option<Tensor>>> {
    let grads = loss.backward()?;
    Ok(vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).map(Tensor::detach))
        .collect())
}
