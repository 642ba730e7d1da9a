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
use crate::pixel_aux::PixelAux;
use crate::rng::hash_keys;
use crate::{Error, Result};

/// A batch (or a worker's share of it) as tensors on the training device.
pub struct StepInputs {
    /// Per image: pixels (1, 3, S, S).
    pub pixel_values: Vec<Tensor>,
    /// Per image: its prompts in the S x S model frame (the regions' boxes, or their centres
    /// after [`StepInputs::mix_prompts`]).
    pub prompts: Vec<Vec<ScaledPrompt>>,
    /// Per image and prompt: decode with SAM's three multimask outputs instead of the single
    /// output (missing entries: single output).
    pub multimask: Vec<Vec<bool>>,
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
            multimask: Vec::new(),
            input_ids: Tensor::from_slice(ids, (n, l), device)?,
            attention_mask: Tensor::from_slice(am, (n, l), device)?,
            gt_masks,
            row_keys: rows.map(|k| k as u64).collect(),
            n_tokens,
            n_regions: n,
        })
    }
}

/// Which of SAM's mask outputs a training step decodes (and trains with the mask loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskOutputs {
    /// The single output (SAM's output for unambiguous prompts): every region.
    Single,
    /// The three multimask outputs, each trained against the ground truth: every region.
    Multimask,
    /// Half of the regions (drawn per step and region) each.
    Both,
}

impl MaskOutputs {
    /// `single`, `multimask` or `both`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Self::Single),
            "multimask" => Ok(Self::Multimask),
            "both" => Ok(Self::Both),
            other => Err(Error::Config(format!(
                "optim.mask_outputs must be \"single\", \"multimask\" or \"both\", got {other:?}"
            ))),
        }
    }
}

/// Where a point prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointAt {
    /// The box centre (what `sca eval --prompt point` asks).
    Centre,
    /// A pixel drawn uniformly from the region's ground-truth mask, as SAM's training draws
    /// its first point (what anything mode's grid points look like); the box centre for a
    /// region without a mask.
    InMask,
}

impl PointAt {
    /// `centre` or `mask`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "centre" => Ok(Self::Centre),
            "mask" => Ok(Self::InMask),
            other => Err(Error::Config(format!(
                "data.point_position must be \"centre\" or \"mask\", got {other:?}"
            ))),
        }
    }
}

/// How the regions of a training step are prompted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptMix {
    /// Probability that a region is prompted with one positive point instead of its box.
    pub point_prob: f64,
    /// Where that point goes.
    pub point_at: PointAt,
    /// Which mask outputs are decoded.
    pub outputs: MaskOutputs,
    /// Seed of the draws (each draw is a hash of seed, step and the region's batch position).
    pub seed: u64,
}

impl PromptMix {
    /// Boxes and the single output for every region (the default: the official recipe).
    pub const BOXES: PromptMix = PromptMix {
        point_prob: 0.0,
        point_at: PointAt::Centre,
        outputs: MaskOutputs::Single,
        seed: 0,
    };
}

impl StepInputs {
    /// Turns some box prompts into centre points and picks the mask outputs, per `mix`. A
    /// region's draws depend only on `(mix.seed, step, its position in the whole batch)`, so
    /// data-parallel workers agree with one worker on the whole batch.
    ///
    /// ```
    /// use trainer::step::{MaskOutputs, PointAt, PromptMix, StepInputs};
    /// use sca_core::sam::prompt_encoder::ScaledPrompt;
    /// # use candle_core::{Device, Tensor};
    /// # let d = Device::Cpu;
    /// let mut inputs = StepInputs {
    ///     pixel_values: vec![],
    ///     prompts: vec![vec![ScaledPrompt { box_: Some([10.0, 20.0, 30.0, 60.0]), ..Default::default() }]],
    ///     multimask: vec![],
    ///     input_ids: Tensor::zeros((1, 1), candle_core::DType::U32, &d).unwrap(),
    ///     attention_mask: Tensor::ones((1, 1), candle_core::DType::U32, &d).unwrap(),
    ///     gt_masks: None,
    ///     row_keys: vec![0],
    ///     n_tokens: 1,
    ///     n_regions: 1,
    /// };
    /// let mix = PromptMix {
    ///     point_prob: 1.0,
    ///     point_at: PointAt::Centre,
    ///     outputs: MaskOutputs::Multimask,
    ///     seed: 1,
    /// };
    /// inputs.mix_prompts(&mix, 0).unwrap();
    /// assert_eq!(inputs.prompts[0][0].points, vec![(20.0, 40.0)]);
    /// assert_eq!(inputs.prompts[0][0].box_, None);
    /// assert_eq!(inputs.multimask, vec![vec![true]]);
    /// ```
    pub fn mix_prompts(&mut self, mix: &PromptMix, step: u64) -> Result<()> {
        // Foreground pixels of each row's ground-truth mask, for points drawn in the mask.
        let mut fg: Vec<Option<Vec<u32>>> = vec![None; self.n_regions];
        // (mask side, model-frame side)
        let mut frames = (1usize, 1usize);
        if mix.point_at == PointAt::InMask && mix.point_prob > 0.0 {
            if let (Some((t, idx)), Some(px)) = (&self.gt_masks, self.pixel_values.first()) {
                let (_, m, _) = t.dims3()?;
                frames = (m, px.dim(3)?);
                let data = t.flatten_all()?.to_vec1::<f32>()?;
                for (k, &r) in idx.to_vec1::<u32>()?.iter().enumerate() {
                    let on: Vec<u32> = data[k * m * m..(k + 1) * m * m]
                        .iter()
                        .enumerate()
                        .filter(|(_, &v)| v > 0.5)
                        .map(|(j, _)| j as u32)
                        .collect();
                    if let (Some(slot), false) = (fg.get_mut(r as usize), on.is_empty()) {
                        *slot = Some(on);
                    }
                }
            }
        }
        let mut row = 0usize;
        let mut flags = Vec::with_capacity(self.prompts.len());
        for prompts in &mut self.prompts {
            let mut f = Vec::with_capacity(prompts.len());
            for p in prompts.iter_mut() {
                let key = self.row_keys.get(row).copied().unwrap_or(row as u64);
                row += 1;
                let draw = |tag: u64| {
                    (hash_keys(mix.seed, &[0x5ca_9e0, step, key, tag]) >> 11) as f64
                        * (1.0 / (1u64 << 53) as f64)
                };
                if mix.point_prob > 0.0 && draw(0) < mix.point_prob {
                    if let Some([x1, y1, x2, y2]) = p.box_ {
                        let point = match fg.get(row - 1).and_then(Option::as_ref) {
                            Some(on) => {
                                let pick = ((draw(2) * on.len() as f64) as usize).min(on.len() - 1);
                                let (m, side) = frames;
                                let j = on[pick] as usize;
                                let scale = side as f64 / m as f64;
                                (
                                    ((j % m) as f64 + 0.5) * scale,
                                    ((j / m) as f64 + 0.5) * scale,
                                )
                            }
                            None => ((x1 + x2) / 2.0, (y1 + y2) / 2.0),
                        };
                        *p = ScaledPrompt {
                            points: vec![point],
                            labels: vec![1],
                            box_: None,
                        };
                    }
                }
                f.push(match mix.outputs {
                    MaskOutputs::Single => false,
                    MaskOutputs::Multimask => true,
                    MaskOutputs::Both => draw(1) < 0.5,
                });
            }
            flags.push(f);
        }
        self.multimask = flags;
        Ok(())
    }
}

/// What the loss includes.
#[derive(Debug, Clone)]
pub struct LossOptions {
    pub label_smoothing: f64,
    /// Weight of the caption loss; 0 skips the mixer and GPT-2 altogether (a masks-only
    /// stage).
    pub caption_loss_weight: f64,
    /// GPT-2 dropout (rates + seed); `None` = evaluation mode.
    pub dropout: Option<(u64, f64, f64, f64)>,
    /// Weight of SAM's mask loss; `None` = no mask loss.
    pub mask_loss_weight: Option<f64>,
    /// The self-supervised pixel auxiliary (`optim.pixel_aux_weight` > 0).
    pub pixel_aux: Option<PixelAux>,
}

impl LossOptions {
    /// GPT-2's dropout for the regions of `inputs` (`None` in evaluation mode).
    pub fn lm_dropout(&self, inputs: &StepInputs) -> Option<Dropout> {
        self.dropout.map(|(seed, embd, attn, resid)| Dropout {
            seed,
            embd,
            attn,
            resid,
            rows: inputs.row_keys.clone(),
        })
    }
}

/// The losses of one forward pass.
pub struct Losses {
    /// What is differentiated: caption loss + weighted mask loss.
    pub total: Tensor,
    pub caption: f64,
    pub mask: Option<f64>,
    /// The value of `total` when it is not `caption` and `mask` weighted by the config
    /// (distillation).
    pub total_value: Option<f64>,
    /// Further named terms for the log (distillation's `kl_loss`, `seq_loss`, ...).
    pub parts: Vec<(&'static str, f64)>,
}

/// Rows of `t` given in `order` (row p of `t` is batch row `order[p]`) put back in batch
/// order.
pub fn to_row_order(t: &Tensor, order: &[u32]) -> Result<Tensor> {
    if order.iter().enumerate().all(|(p, &r)| p == r as usize) {
        return Ok(t.clone());
    }
    let mut inverse = vec![0u32; order.len()];
    for (p, &r) in order.iter().enumerate() {
        inverse[r as usize] = p as u32;
    }
    let idx = Tensor::from_vec(inverse, order.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Forward pass: SAM encoder per image, decoder + mixer per image's prompts, one batched
/// teacher-forced GPT-2 pass over all regions, label-smoothed caption loss (mean over target
/// tokens), plus SAM's mask loss on regions with ground-truth masks when asked.
pub fn forward(model: &ScaModel, inputs: &StepInputs, opts: &LossOptions) -> Result<Losses> {
    let mut trace = Trace::default();
    let captions = opts.caption_loss_weight > 0.0;
    if !captions && opts.mask_loss_weight.is_none() {
        return Err(Error::Config(
            "optim.caption_loss_weight = 0 needs the mask loss (SAM parts that train)".into(),
        ));
    }
    let mut prefixes = Vec::with_capacity(inputs.pixel_values.len());
    // Batch rows of the prefix parts, in part order (prompts are decoded in groups by output
    // kind; the prefix is put back in row order afterwards).
    let mut order: Vec<u32> = Vec::with_capacity(inputs.n_regions);
    // Per decoded output: mask logits (n, H, W), predicted IoU (n), and the batch rows.
    let mut outputs: Vec<(Tensor, Tensor, Vec<usize>)> = Vec::new();
    let mut row0 = 0usize;
    let mut aux_terms = Vec::new();
    let mut region_term = None;
    for (i, (px, prompts)) in inputs.pixel_values.iter().zip(&inputs.prompts).enumerate() {
        let emb = model.embed_pixels(px, &mut trace)?;
        let mut keys = Vec::new();
        let n = prompts.len();
        let multi = |k: usize| {
            inputs
                .multimask
                .get(i)
                .and_then(|f| f.get(k))
                .copied()
                .unwrap_or(false)
        };
        for mm in [false, true] {
            let ks: Vec<usize> = (0..n).filter(|&k| multi(k) == mm).collect();
            if ks.is_empty() {
                continue;
            }
            let sub: Vec<ScaledPrompt>;
            let group = if ks.len() == n {
                prompts.as_slice()
            } else {
                sub = ks.iter().map(|&k| prompts[k].clone()).collect();
                sub.as_slice()
            };
            let decoder = if captions {
                let out = model.decode_prompts(&emb, group, mm, &mut trace)?;
                prefixes.push(out.prefix);
                out.decoder
            } else {
                decode_masks(model, &emb, group, mm, &mut trace)?
            };
            if opts.pixel_aux.is_some() {
                keys.push(decoder.keys_out.clone());
            }
            let rows: Vec<usize> = ks.iter().map(|&k| row0 + k).collect();
            order.extend(rows.iter().map(|&r| r as u32));
            if opts.mask_loss_weight.is_some() {
                for j in 0..decoder.masks.dim(1)? {
                    outputs.push((
                        decoder.masks.narrow(1, j, 1)?.squeeze(1)?,
                        decoder.iou.narrow(1, j, 1)?.squeeze(1)?,
                        rows.clone(),
                    ));
                }
            }
        }
        if let Some(aux) = &opts.pixel_aux {
            aux_terms.push(aux.loss(px, &emb, &keys)?);
        }
        row0 += n;
    }
    let (cap, caption) = if captions {
        let prefix = to_row_order(&Tensor::cat(&prefixes, 0)?, &order)?;
        let dropout = opts.lm_dropout(inputs);
        let logits = model.teacher_forced_logits_train(
            &prefix,
            &inputs.input_ids,
            &inputs.attention_mask,
            dropout.as_ref(),
        )?;
        if let (Some(aux), Some((gt, idx))) = (&opts.pixel_aux, &inputs.gt_masks) {
            // Regions are image-major: row k belongs to the image whose prompts cover it.
            let mut image_of_row = Vec::with_capacity(inputs.n_regions);
            for (i, p) in inputs.prompts.iter().enumerate() {
                image_of_row.extend(std::iter::repeat_n(i as u32, p.len()));
            }
            let rows = idx.to_vec1::<u32>()?;
            let image_of: Vec<u32> = rows.iter().map(|&r| image_of_row[r as usize]).collect();
            let q = prefix.dim(1)? - model.config.num_task_tokens;
            let caption_part = prefix
                .narrow(1, model.config.num_task_tokens, q)?
                .contiguous()?
                .index_select(idx, 0)?;
            let px = Tensor::cat(&inputs.pixel_values, 0)?;
            region_term = Some(aux.region_loss(&px, &image_of, gt, &caption_part)?);
        }
        let cap = caption_loss(
            &logits,
            &inputs.input_ids,
            &inputs.attention_mask,
            opts.label_smoothing,
        )?;
        let caption = cap.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let cap = if opts.caption_loss_weight == 1.0 {
            cap
        } else {
            (cap * opts.caption_loss_weight)?
        };
        (Some(cap), caption)
    } else {
        (None, 0.0)
    };
    let (total, mask) = match (opts.mask_loss_weight, &inputs.gt_masks) {
        (Some(w), Some((gt, idx))) => {
            // Each decoded output of a region with a ground-truth mask is one term of the loss.
            let gt_rows = idx.to_vec1::<u32>()?;
            let mut gt_of_row = vec![None; inputs.n_regions];
            for (k, &r) in gt_rows.iter().enumerate() {
                if let Some(slot) = gt_of_row.get_mut(r as usize) {
                    *slot = Some(k as u32);
                }
            }
            let (mut logits, mut iou, mut gt_sel) = (Vec::new(), Vec::new(), Vec::new());
            for (m, q, rows) in &outputs {
                let (pos, ks): (Vec<u32>, Vec<u32>) = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(p, &r)| {
                        gt_of_row.get(r).copied().flatten().map(|k| (p as u32, k))
                    })
                    .unzip();
                if pos.is_empty() {
                    continue;
                }
                if pos.len() == rows.len() {
                    logits.push(m.clone());
                    iou.push(q.clone());
                } else {
                    let p = Tensor::from_vec(pos.clone(), pos.len(), m.device())?;
                    logits.push(m.index_select(&p, 0)?);
                    iou.push(q.index_select(&p, 0)?);
                }
                gt_sel.extend(ks);
            }
            if logits.is_empty() {
                (cap, None)
            } else {
                let logits = Tensor::cat(&logits, 0)?;
                let iou = Tensor::cat(&iou, 0)?;
                let n_sel = gt_sel.len();
                let gt = if gt_sel.iter().enumerate().all(|(p, &k)| p == k as usize)
                    && n_sel == gt.dim(0)?
                {
                    gt.clone()
                } else {
                    gt.index_select(&Tensor::from_vec(gt_sel, n_sel, gt.device())?, 0)?
                };
                if logits.dims()[1..] != gt.dims()[1..] {
                    return Err(Error::Other(format!(
                        "mask logits {:?} and ground truth {:?} differ in size",
                        logits.dims(),
                        gt.dims()
                    )));
                }
                let ml = mask_loss(&logits, &iou, &gt)?;
                let mv = ml.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let weighted = (ml * w)?;
                let total = match cap {
                    Some(c) => (c + weighted)?,
                    None => weighted,
                };
                (Some(total), Some(mv))
            }
        }
        _ => (cap, None),
    };
    let total = total.ok_or_else(|| {
        Error::Other("no loss: caption_loss_weight = 0 and no region has a mask".into())
    })?;
    let mut parts = Vec::new();
    let mut total_value = None;
    let total = match &opts.pixel_aux {
        Some(aux) if !aux_terms.is_empty() => {
            // Patch terms averaged over images, plus the region term.
            let region =
                region_term.unwrap_or(Tensor::zeros((), DType::F32, inputs.input_ids.device())?);
            let n = aux_terms.len() as f64;
            let a = ((Tensor::stack(&aux_terms, 0)?.sum_all()? / n)? + region)?;
            let av = a.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            parts.push(("pixel_aux_loss", av));
            let t = (total + (a * aux.weight)?)?;
            total_value = Some(t.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            t
        }
        _ => total,
    };
    Ok(Losses {
        total,
        caption,
        mask,
        total_value,
        parts,
    })
}

/// SAM's prompt encoder and mask decoder only (no mixer): the masks-only stage.
fn decode_masks(
    model: &ScaModel,
    embedding: &Tensor,
    prompts: &[ScaledPrompt],
    multimask: bool,
    trace: &mut Trace,
) -> Result<sca_core::sam::mask_decoder::DecoderOutput> {
    let sparse = prompts
        .iter()
        .map(|p| model.prompt_encoder.embed_sparse(p))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sparse = Tensor::stack(&sparse, 0)?;
    let dense = model.prompt_encoder.embed_dense(None)?.unsqueeze(0)?;
    Ok(model.mask_decoder.forward(
        embedding,
        model.image_positional_embeddings(),
        &sparse,
        &dense,
        multimask,
        trace,
    )?)
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
