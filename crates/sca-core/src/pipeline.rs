//! `Sca`: load a checkpoint, embed an image once, then predict masks and a caption per prompt.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{GenerationConfig, ScaConfig};
use crate::generate::{generate, Decode, GreedySteps};
use crate::gpt2::Gpt2;
use crate::image::{Preprocessed, PreprocessorConfig};
use crate::masks;
use crate::mixer::{Mixer, Task};
use crate::sam::image_encoder::ImageEncoder;
use crate::sam::mask_decoder::{to_tokens, DecoderOutput, MaskDecoder};
use crate::sam::prompt_encoder::{label, PromptEncoder, ScaledPrompt};
use crate::tokenizer::{DecodeState, DecodeStream, Tokenizer};
use crate::trace::Trace;
use crate::weights::Weights;
use crate::{Error, Result};

/// The network of an SCA checkpoint: SAM encoder, prompt encoder, mask decoder, mixer, GPT-2.
pub struct ScaModel {
    pub config: ScaConfig,
    pub image_encoder: ImageEncoder,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
    pub mixer: Mixer,
    pub lm: Gpt2,
    image_pe: Tensor,        // (1, C, g, g)
    image_pe_tokens: Tensor, // (1, g*g, C)
    device: Device,
}

/// What the mask decoder and mixer produce for a batch of prompts sharing a token count.
pub struct PromptBatchOutput {
    pub decoder: DecoderOutput,
    /// LM prefix (M, Tt+Q, D).
    pub prefix: Tensor,
}

impl ScaModel {
    /// Builds the model from a root `VarBuilder` using the official key layout.
    pub fn new(config: &ScaConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let image_encoder = ImageEncoder::new(&config.vision_config, vb.pp("vision_encoder"))?;
        let prompt_encoder = PromptEncoder::new(
            &config.prompt_encoder_config,
            &config.vision_config,
            vb.pp("prompt_encoder"),
            vb.pp("shared_image_embedding"),
        )?;
        let mask_decoder =
            MaskDecoder::new(&config.mask_caption_decoder_config, vb.pp("mask_decoder"))?;
        let mixer = Mixer::new(config, vb.clone())?;
        let lm = Gpt2::new(&config.text_config, vb.pp("language_model"))?;
        let image_pe = prompt_encoder.image_positional_embeddings()?;
        let image_pe_tokens = to_tokens(&image_pe)?;
        Ok(Self {
            config: config.clone(),
            image_encoder,
            prompt_encoder,
            mask_decoder,
            mixer,
            lm,
            image_pe,
            image_pe_tokens,
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dense positional encoding of the embedding grid (1, C, g, g).
    pub fn image_positional_embeddings(&self) -> &Tensor {
        &self.image_pe
    }

    /// pixel_values (1,3,S,S) -> image embedding (1,C,g,g).
    pub fn embed_pixels(
        &self,
        pixel_values: &Tensor,
        trace: &mut Trace,
    ) -> candle_core::Result<Tensor> {
        trace.record("image_positional_embeddings", &self.image_pe);
        self.image_encoder.forward(pixel_values, trace)
    }

    /// Runs prompt encoder, mask decoder, mixer and projection for prompts that all have the
    /// same number of sparse tokens.
    pub fn decode_prompts(
        &self,
        embedding: &Tensor,
        prompts: &[ScaledPrompt],
        multimask: bool,
        trace: &mut Trace,
    ) -> candle_core::Result<PromptBatchOutput> {
        let decoder = self.decode_masks(embedding, prompts, multimask, trace)?;
        let prefix = self.caption_prefix(&decoder.queries_out, &decoder.keys_out, trace)?;
        Ok(PromptBatchOutput { decoder, prefix })
    }

    /// The mixer and projection on mask-decoder outputs (any subset of a batch's rows): the
    /// LM prefix (M, Tt+Q, D). Each row depends only on its own prompt.
    pub fn caption_prefix(
        &self,
        queries_out: &Tensor,
        keys_out: &Tensor,
        trace: &mut Trace,
    ) -> candle_core::Result<Tensor> {
        let queries = self
            .mixer
            .forward(queries_out, keys_out, &self.image_pe_tokens, trace)?;
        self.mixer.prefix(&queries, Task::Caption, trace)
    }

    /// Prompt encoder and mask decoder only (masks, IoU, and the mixer's inputs).
    pub fn decode_masks(
        &self,
        embedding: &Tensor,
        prompts: &[ScaledPrompt],
        multimask: bool,
        trace: &mut Trace,
    ) -> candle_core::Result<DecoderOutput> {
        let sparse = prompts
            .iter()
            .map(|p| self.prompt_encoder.embed_sparse(p))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sparse = Tensor::stack(&sparse, 0)?; // (M, T, C)
        trace.record("sparse_prompt_embeddings", &sparse);
        let dense = self.prompt_encoder.embed_dense(None)?.unsqueeze(0)?;
        trace.record("dense_prompt_embeddings", &dense);
        let decoder = self.mask_decoder.forward(
            embedding,
            &self.image_pe,
            &sparse,
            &dense,
            multimask,
            trace,
        )?;
        trace.record("low_res_masks", &decoder.masks);
        trace.record("iou_predictions", &decoder.iou);
        Ok(decoder)
    }

    /// Teacher forcing: prefix (M,P,D) followed by caption ids (M,L) (right-padded, `mask` 1 for
    /// real tokens). Returns the logits at positions P-1 .. P+L-1, (M, L+1, V): row j predicts
    /// token j (the official loss slice).
    pub fn teacher_forced_logits(
        &self,
        prefix: &Tensor,
        input_ids: &Tensor,
        mask: &Tensor,
        trace: &mut Trace,
    ) -> candle_core::Result<Tensor> {
        let (m, p, _) = prefix.dims3()?;
        let l = input_ids.dim(1)?;
        let text = self.lm.embed_tokens(input_ids)?;
        let inputs = Tensor::cat(&[prefix, &text], 1)?;
        trace.record("lm_inputs_embeds", &inputs);
        let ones = Tensor::ones((m, p), candle_core::DType::U32, prefix.device())?;
        let am = Tensor::cat(&[&ones, &mask.to_dtype(candle_core::DType::U32)?], 1)?;
        trace.record("lm_attention_mask", &am);
        let mut cache = self.lm.new_cache();
        let h = self
            .lm
            .forward_embeds(&inputs, Some(&am), &mut cache, "lm_", trace)?;
        let logits = self.lm.logits(&h.narrow(1, p - 1, l + 1)?)?;
        trace.record("lm_logits", &logits);
        Ok(logits)
    }
}

impl ScaModel {
    /// [`ScaModel::teacher_forced_logits`] for training: differentiable end to end (gradients
    /// reach the prefix and any trainable GPT-2 weight), no KV cache, and GPT-2's dropout
    /// (`embd`/`attn`/`resid`) when `dropout` is given, as the official frozen LM in train
    /// mode. With `dropout = None` the logits equal `teacher_forced_logits`.
    pub fn teacher_forced_logits_train(
        &self,
        prefix: &Tensor,
        input_ids: &Tensor,
        mask: &Tensor,
        dropout: Option<&crate::dropout::Dropout>,
    ) -> candle_core::Result<Tensor> {
        let (m, p, _) = prefix.dims3()?;
        let l = input_ids.dim(1)?;
        let text = self.lm.embed_tokens(input_ids)?;
        let inputs = Tensor::cat(&[prefix, &text], 1)?;
        let ones = Tensor::ones((m, p), candle_core::DType::U32, prefix.device())?;
        let am = Tensor::cat(&[&ones, &mask.to_dtype(candle_core::DType::U32)?], 1)?;
        let h = self.lm.forward_train(&inputs, Some(&am), dropout)?;
        self.lm.logits(&h.narrow(1, p - 1, l + 1)?)
    }
}

/// The official caption loss: cross-entropy with label smoothing over the full vocabulary, mean
/// over the real (mask = 1) target tokens. `logits` (M, L+1, V) from
/// [`ScaModel::teacher_forced_logits`], `input_ids`/`mask` (M, L).
pub fn caption_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    mask: &Tensor,
    label_smoothing: f64,
) -> candle_core::Result<Tensor> {
    let (_, l) = input_ids.dims2()?;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, l)?, candle_core::D::Minus1)?;
    let target = input_ids.to_dtype(candle_core::DType::U32)?.unsqueeze(2)?;
    let nll = logp.gather(&target, 2)?.squeeze(2)?.neg()?; // (M, L)
    let smooth = logp.mean(2)?.neg()?; // (M, L)
    let per_tok = ((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?;
    let w = mask.to_dtype(candle_core::DType::F32)?;
    let total = (per_tok * &w)?.sum_all()?;
    total / w.sum_all()?.to_scalar::<f32>()? as f64
}

/// One clicked point in original-image pixels. `label`: 1 foreground, 0 background.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    pub label: i64,
}

/// A prompt in original-image pixels (x right, y down). Several points form one prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    pub points: Vec<Point>,
    /// (x1, y1, x2, y2)
    pub box_: Option<[f32; 4]>,
    /// Three candidate masks (true) or SAM's single-mask output (false).
    pub multimask: bool,
}

/// A binary mask at original-image resolution, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// The answer for one prompt.
#[derive(Debug, Clone)]
pub struct Region {
    /// Candidate masks (3 with multimask, else 1), at original resolution.
    pub masks: Vec<Mask>,
    /// Mask logits at original resolution, same order as `masks`.
    pub mask_logits: Vec<Vec<f32>>,
    /// Predicted IoU per mask.
    pub iou: Vec<f32>,
    pub caption: String,
    /// Generated token ids (with the final EOS when one was generated).
    pub tokens: Vec<u32>,
    /// Box (x1, y1, x2, y2) of the highest-IoU mask, original pixels.
    pub box_: [f32; 4],
}

/// An image after the (heavy) encoder: reuse it for any number of prompts.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// (1, C, g, g)
    pub embedding: Tensor,
    /// (H, W) of the input image.
    pub original_size: (usize, usize),
    /// (h', w') after the longest-side resize.
    pub resized_size: (usize, usize),
}

/// The complete SCA predictor: model + tokenizer + processor settings.
///
/// ```no_run
/// use sca_core::{Sca, Prompt, Point, Decode};
/// let sca = Sca::load("ckpt".as_ref(), candle_core::Device::Cpu)?;
/// let img = sca_core::image::load_image("photo.jpg".as_ref())?;
/// let emb = sca.embed(&img)?;
/// let prompt = Prompt { points: vec![Point { x: 120.0, y: 80.0, label: 1 }], ..Default::default() };
/// let region = sca.predict(&emb, &prompt, &Decode::EVAL_DEFAULT)?;
/// println!("{} (iou {:?})", region.caption, region.iou);
/// # Ok::<(), sca_core::Error>(())
/// ```
pub struct Sca {
    pub model: ScaModel,
    pub tokenizer: Tokenizer,
    pub preprocessor: PreprocessorConfig,
    pub generation: GenerationConfig,
}

impl Sca {
    /// Loads an official checkpoint directory (`config.json` + `model.safetensors` or
    /// `pytorch_model.bin`, tokenizer files, optional `preprocessor_config.json` and
    /// `generation_config.json`), a trainer output in the same layout, or a bundle written by
    /// `export bundle` (a directory with `manifest.json`; its files' sha256 are checked first).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                msg: "not a directory (expected a checkpoint directory with config.json, or a bundle with manifest.json)".into(),
            });
        }
        if crate::bundle::is_bundle(dir) {
            return crate::bundle::Bundle::from_dir(dir)?.into_sca(device);
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::Config {
                path: cfg_path,
                msg: "missing: a checkpoint directory needs config.json".into(),
            });
        }
        let config = ScaConfig::from_file(&cfg_path)?;
        let pre_path = dir.join("preprocessor_config.json");
        let preprocessor = if pre_path.exists() {
            PreprocessorConfig::from_file(&pre_path)?
        } else {
            PreprocessorConfig::for_size(config.vision_config.image_size)
        };
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() {
            GenerationConfig::from_file(&gen_path)?
        } else {
            GenerationConfig::default()
        };
        let tokenizer = Tokenizer::from_dir(dir)?;
        let weights = Weights::load(dir)?;
        Self::from_weights(
            config,
            &weights,
            tokenizer,
            preprocessor,
            generation,
            device,
        )
    }

    /// Builds from already-loaded weights; fails on missing, mis-shaped or unexpected keys.
    pub fn from_weights(
        config: ScaConfig,
        weights: &Weights,
        tokenizer: Tokenizer,
        preprocessor: PreprocessorConfig,
        generation: GenerationConfig,
        device: Device,
    ) -> Result<Self> {
        let vb = weights.var_builder(&device);
        let model = ScaModel::new(&config, vb).map_err(|e| Error::Weights {
            path: weights.source().to_path_buf(),
            msg: e.to_string(),
        })?;
        weights.check_unused()?;
        Self::from_parts(model, tokenizer, preprocessor, generation, weights.source())
    }

    /// Assembles a loaded model; `origin` names the checkpoint or bundle in messages.
    pub fn from_parts(
        model: ScaModel,
        tokenizer: Tokenizer,
        preprocessor: PreprocessorConfig,
        generation: GenerationConfig,
        origin: &Path,
    ) -> Result<Self> {
        let image_size = model.config.vision_config.image_size;
        if preprocessor.pad_size != image_size {
            return Err(Error::Config {
                path: origin.to_path_buf(),
                msg: format!(
                    "preprocessor pad size {} differs from the encoder's image_size {image_size}",
                    preprocessor.pad_size
                ),
            });
        }
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            generation,
        })
    }

    pub fn config(&self) -> &ScaConfig {
        &self.model.config
    }

    /// Preprocesses an RGB image exactly as SamImageProcessor does.
    pub fn preprocess(&self, img: &::image::RgbImage) -> Result<Preprocessed> {
        crate::image::preprocess(img, &self.preprocessor)
    }

    /// Runs the image encoder once.
    pub fn embed(&self, img: &::image::RgbImage) -> Result<ImageEmbedding> {
        let pre = self.preprocess(img)?;
        self.embed_preprocessed(&pre, &mut Trace::default())
    }

    pub fn embed_preprocessed(
        &self,
        pre: &Preprocessed,
        trace: &mut Trace,
    ) -> Result<ImageEmbedding> {
        let s = pre.pad_size;
        let pixels = Tensor::from_slice(&pre.pixel_values, (1, 3, s, s), self.model.device())?;
        trace.record("pixel_values", &pixels);
        let embedding = self.model.embed_pixels(&pixels, trace)?;
        Ok(ImageEmbedding {
            embedding,
            original_size: pre.original_size,
            resized_size: pre.resized_size,
        })
    }

    /// Masks and caption for one prompt.
    pub fn predict(
        &self,
        emb: &ImageEmbedding,
        prompt: &Prompt,
        decode: &Decode,
    ) -> Result<Region> {
        let mut v = self.predict_many(emb, std::slice::from_ref(prompt), decode)?;
        Ok(v.remove(0))
    }

    /// Batched prompts; results equal predicting them one by one.
    pub fn predict_many(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        decode: &Decode,
    ) -> Result<Vec<Region>> {
        self.predict_inner(
            emb,
            prompts,
            decode,
            &mut |_, _| true,
            &mut Trace::default(),
        )
    }

    /// Like `predict`, calling `on_piece` with each new piece of caption text as it is decoded
    /// (greedy streams token by token; beam search emits when done). Return `false` to cancel.
    pub fn caption_stream(
        &self,
        emb: &ImageEmbedding,
        prompt: &Prompt,
        decode: &Decode,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Region> {
        let mut stream = DecodeStream::new(&self.tokenizer);
        let mut err = None;
        let mut cb = |_seq: usize, tok: u32| -> bool {
            match stream.push(tok) {
                Ok(Some(piece)) => on_piece(&piece),
                Ok(None) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        };
        let mut v = self.predict_inner(
            emb,
            std::slice::from_ref(prompt),
            decode,
            &mut cb,
            &mut Trace::default(),
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(piece) = stream.finish()? {
            on_piece(&piece);
        }
        Ok(v.remove(0))
    }

    /// Validates prompts against the image and scales them to the model frame.
    pub fn scale_prompt(&self, emb: &ImageEmbedding, p: &Prompt) -> Result<ScaledPrompt> {
        let (h, w) = emb.original_size;
        let check = |what: &str, x: f32, y: f32| -> Result<()> {
            if !x.is_finite() || !y.is_finite() {
                return Err(Error::Prompt(format!("{what} ({x}, {y}) is not finite")));
            }
            if x < 0.0 || y < 0.0 || x > w as f32 || y > h as f32 {
                return Err(Error::Prompt(format!(
                    "{what} ({x}, {y}) is outside the {w}x{h} image"
                )));
            }
            Ok(())
        };
        if p.points.is_empty() && p.box_.is_none() {
            return Err(Error::Prompt(
                "a prompt needs at least one point or a box".into(),
            ));
        }
        let mut sp = ScaledPrompt::default();
        for (i, pt) in p.points.iter().enumerate() {
            check(&format!("point {i}"), pt.x, pt.y)?;
            if ![
                label::POSITIVE,
                label::NEGATIVE,
                label::NOT_A_POINT,
                label::PAD,
            ]
            .contains(&pt.label)
            {
                return Err(Error::Prompt(format!(
                    "point {i} has label {} (use 1 = foreground, 0 = background)",
                    pt.label
                )));
            }
            sp.points.push(crate::image::scale_point(
                pt.x as f64,
                pt.y as f64,
                emb.original_size,
                emb.resized_size,
            ));
            sp.labels.push(pt.label);
        }
        if let Some([x1, y1, x2, y2]) = p.box_ {
            check("box corner (x1, y1)", x1, y1)?;
            check("box corner (x2, y2)", x2, y2)?;
            if x2 < x1 || y2 < y1 {
                return Err(Error::Prompt(format!(
                    "box [{x1}, {y1}, {x2}, {y2}] has x2 < x1 or y2 < y1"
                )));
            }
            let (a, b) = crate::image::scale_point(
                x1 as f64,
                y1 as f64,
                emb.original_size,
                emb.resized_size,
            );
            let (c, d) = crate::image::scale_point(
                x2 as f64,
                y2 as f64,
                emb.original_size,
                emb.resized_size,
            );
            sp.box_ = Some([a, b, c, d]);
        }
        Ok(sp)
    }

    /// The whole per-prompt path; `trace` records intermediates of the first batch group.
    pub fn predict_inner(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        decode: &Decode,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
        trace: &mut Trace,
    ) -> Result<Vec<Region>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let DecodedRegions {
            mut regions,
            prefix,
            ..
        } = self.decode_regions(emb, prompts, Then::Prefix, trace)?;
        let prefix = prefix.expect("decode_regions with prefix");
        let eos = self.generation.eos_token_id;
        let tokens = generate(&self.model.lm, &prefix, decode, eos, on_token)?;
        for (region, toks) in regions.iter_mut().zip(tokens) {
            region.caption = self.tokenizer.decode_caption(&toks)?;
            region.tokens = toks;
        }
        Ok(regions)
    }

    /// Masks first, caption later: the prompt's masks and IoU (the region's caption and tokens
    /// still empty) and a greedy decoder over its caption that runs one token per call.
    ///
    /// ```no_run
    /// # fn f(sca: &sca_core::Sca, emb: &sca_core::ImageEmbedding, p: &sca_core::Prompt) -> sca_core::Result<()> {
    /// let (mut region, mut steps) = sca.begin_caption(emb, p, 20)?;
    /// // draw region.masks here, then:
    /// while let Some(piece) = steps.next(sca)? {
    ///     print!("{piece}");
    /// }
    /// steps.finish(sca, &mut region)?;
    /// # Ok(()) }
    /// ```
    pub fn begin_caption(
        &self,
        emb: &ImageEmbedding,
        prompt: &Prompt,
        max_new_tokens: usize,
    ) -> Result<(Region, CaptionSteps)> {
        self.segment_one(emb, prompt)?
            .begin_caption(self, max_new_tokens)
    }

    /// [`Sca::segment`] for one prompt, keeping the mask decoder's outputs so that
    /// [`Segmented::begin_caption`] captions the same prompt without decoding it again.
    pub fn segment_one(&self, emb: &ImageEmbedding, prompt: &Prompt) -> Result<Segmented> {
        let mut d = self.decode_regions(
            emb,
            std::slice::from_ref(prompt),
            Then::Keep,
            &mut Trace::default(),
        )?;
        let (queries_out, keys_out) = d.kept.remove(0);
        Ok(Segmented {
            region: d.regions.remove(0),
            queries_out,
            keys_out,
        })
    }

    /// Masks only: prompt encoder and mask decoder (the mixer and the LM do not run); the
    /// regions' captions and tokens are empty. What a click shows before its caption.
    pub fn segment(&self, emb: &ImageEmbedding, prompts: &[Prompt]) -> Result<Vec<Region>> {
        Ok(self
            .decode_regions(emb, prompts, Then::Stop, &mut Trace::default())?
            .regions)
    }

    /// Prompt encoder, mask decoder and (with [`Then::Prefix`]) the mixer for every prompt:
    /// regions with masks, IoU and box (caption empty), and the LM prefixes (M, P, D) or the
    /// mixer's inputs per prompt, in prompt order.
    fn decode_regions(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        then: Then,
        trace: &mut Trace,
    ) -> Result<DecodedRegions> {
        let prefix = then == Then::Prefix;
        let scaled = prompts
            .iter()
            .map(|p| self.scale_prompt(emb, p))
            .collect::<Result<Vec<_>>>()?;
        // Group by (sparse token count, multimask): each group is one batched decoder call.
        let mut groups: Vec<((usize, bool), Vec<usize>)> = Vec::new();
        for (i, (sp, p)) in scaled.iter().zip(prompts).enumerate() {
            let t = sp.points.len() + if sp.box_.is_some() { 2 } else { 1 };
            let key = (t, p.multimask);
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        // per prompt: (low-res mask planes, IoU)
        type Decoded = (Vec<Vec<f32>>, Vec<f32>);
        let mut decoded: Vec<Option<Decoded>> = vec![None; prompts.len()];
        let mut prefixes: Vec<Option<Tensor>> = vec![None; prompts.len()];
        let mut kept: Vec<Option<(Tensor, Tensor)>> = vec![None; prompts.len()];
        for ((_, multimask), idx) in &groups {
            let group: Vec<ScaledPrompt> = idx.iter().map(|&i| scaled[i].clone()).collect();
            let decoder = self
                .model
                .decode_masks(&emb.embedding, &group, *multimask, trace)?;
            let group_prefix = if prefix {
                Some(
                    self.model
                        .caption_prefix(&decoder.queries_out, &decoder.keys_out, trace)?,
                )
            } else {
                None
            };
            let (m, k, lh, lw) = decoder.masks.dims4()?;
            let flat = decoder.masks.flatten_all()?.to_vec1::<f32>()?;
            let iou = decoder.iou.to_vec2::<f32>()?;
            for (j, &i) in idx.iter().enumerate() {
                let planes = (0..k)
                    .map(|kk| flat[(j * k + kk) * lh * lw..(j * k + kk + 1) * lh * lw].to_vec())
                    .collect();
                decoded[i] = Some((planes, iou[j].clone()));
                if let Some(p) = &group_prefix {
                    prefixes[i] = Some(p.get(j)?);
                }
                if then == Then::Keep {
                    kept[i] = Some((
                        decoder.queries_out.narrow(0, j, 1)?,
                        decoder.keys_out.narrow(0, j, 1)?,
                    ));
                }
            }
            debug_assert_eq!(m, idx.len());
        }
        let prefix = if prefix {
            let rows = prefixes
                .into_iter()
                .map(|p| p.expect("every prompt decoded"))
                .collect::<Vec<_>>();
            Some(Tensor::stack(&rows, 0)?)
        } else {
            None
        };
        let g4 = self.model.config.vision_config.grid_size() * 4;
        let pad = self.preprocessor.pad_size;
        let (h, w) = emb.original_size;
        let mut regions = Vec::with_capacity(prompts.len());
        for (planes, iou) in decoded
            .into_iter()
            .map(|d| d.expect("every prompt decoded"))
        {
            let mut masks_out = Vec::with_capacity(planes.len());
            let mut logits_out = Vec::with_capacity(planes.len());
            for plane in &planes {
                let logits = masks::postprocess_logits(
                    plane,
                    g4,
                    g4,
                    pad,
                    emb.resized_size,
                    emb.original_size,
                );
                masks_out.push(Mask {
                    width: w,
                    height: h,
                    data: masks::binarize(&logits, 0.0),
                });
                logits_out.push(logits);
            }
            let best = iou
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let box_ = masks::mask_to_box(&masks_out[best].data, h, w);
            regions.push(Region {
                masks: masks_out,
                mask_logits: logits_out,
                iou,
                caption: String::new(),
                tokens: Vec::new(),
                box_,
            });
        }
        Ok(DecodedRegions {
            regions,
            prefix,
            kept: kept.into_iter().flatten().collect(),
        })
    }
}

/// What [`Sca::decode_regions`] does after the mask decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing: masks only.
    Stop,
    /// Keep the mixer's inputs per prompt (for [`Segmented`]).
    Keep,
    /// Run the mixer and projection: the LM prefixes.
    Prefix,
}

struct DecodedRegions {
    regions: Vec<Region>,
    /// (M, P, D) with [`Then::Prefix`].
    prefix: Option<Tensor>,
    /// Per prompt with [`Then::Keep`]: (SAM's output tokens (1, T', C), image tokens (1, HW, C)).
    kept: Vec<(Tensor, Tensor)>,
}

/// One prompt's masks and what its caption still needs (the mask decoder's outputs), from
/// [`Sca::segment_one`]: show the masks at once, then [`Segmented::begin_caption`] runs only
/// the mixer and the LM for the same click.
#[derive(Debug, Clone)]
pub struct Segmented {
    /// Masks, IoU and box; caption and tokens empty.
    pub region: Region,
    queries_out: Tensor,
    keys_out: Tensor,
}

impl Segmented {
    /// [`Sca::begin_caption`] for this prompt without decoding its masks again (same region,
    /// same caption).
    pub fn begin_caption(
        &self,
        sca: &Sca,
        max_new_tokens: usize,
    ) -> Result<(Region, CaptionSteps)> {
        let prefix =
            sca.model
                .caption_prefix(&self.queries_out, &self.keys_out, &mut Trace::default())?;
        let steps = GreedySteps::new(
            &sca.model.lm,
            &prefix,
            max_new_tokens,
            sca.generation.eos_token_id,
        )?;
        Ok((
            self.region.clone(),
            CaptionSteps {
                steps,
                text: DecodeState::default(),
            },
        ))
    }
}

/// A caption being decoded token by token (see [`Sca::begin_caption`]).
pub struct CaptionSteps {
    steps: GreedySteps,
    text: DecodeState,
}

impl CaptionSteps {
    /// Decodes one more token; returns the text it completed (possibly empty: text is held back
    /// until final, see [`DecodeStream`]), or `None` when the caption has ended.
    pub fn next(&mut self, sca: &Sca) -> Result<Option<String>> {
        let new = self.steps.step(&sca.model.lm)?;
        let Some(&(_, tok)) = new.first() else {
            return Ok(None);
        };
        Ok(Some(
            self.text.push(&sca.tokenizer, tok)?.unwrap_or_default(),
        ))
    }

    /// Tokens decoded so far (with the EOS when one was generated).
    pub fn tokens(&self) -> &[u32] {
        &self.steps.tokens()[0]
    }

    /// Ends decoding (early, to cancel, or after `next` returned `None`): fills the region's
    /// caption and tokens and returns the text still held back, if any.
    pub fn finish(self, sca: &Sca, region: &mut Region) -> Result<Option<String>> {
        let tokens = self.steps.into_tokens().remove(0);
        region.caption = sca.tokenizer.decode_caption(&tokens)?;
        region.tokens = tokens;
        self.text.finish()
    }
}
