//! `trainer fit`: the training loop (data → loss → gradients → averaging → clipping → AdamW),
//! with the JSONL log, the progress bar, periodic checkpoints and evaluation, exact resume,
//! and the final model in the official layout.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sca_core::config::GenerationConfig;
use sca_core::image::PreprocessorConfig;
use sca_core::tokenizer::Tokenizer;
use sca_core::weights::Weights;
use sca_core::{Decode, Sca, ScaModel};
use sca_data::{open_spec, Batch, CaptionChoice, DataLoader, LoaderConfig, LsjConfig, Split};
use serde_json::{json, Value};

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::evaluate::{evaluate, EvalOptions, MeteorMode};
use crate::grad_sync::{GradAverager, SingleWorker};
use crate::model::{write_model_dir, ModelFiles, ModelSetup};
use crate::optim::{clip_grad_norm, lr_at, AdamW, AdamWParams};
use crate::params::{ParamStore, TrainableSet};
use crate::pixel_aux::PixelAux;
use crate::rng::hash_keys;
use crate::step::{forward, gradients, LossOptions, MaskOutputs, PointAt, PromptMix, StepInputs};
use crate::{Error, Result};

/// How `fit` runs.
pub struct FitOptions {
    pub config: TrainConfig,
    /// Output directory (checkpoints, `log.jsonl`, the final `model/`).
    pub out: PathBuf,
    /// Continue from this checkpoint (or the newest one in this directory).
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) once this many steps are done, without the final model:
    /// for preemptible jobs and tests. The schedule still ends at `optim.max_steps`.
    pub stop_after: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct FitSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The final model directory (absent when stopped early).
    pub model_dir: Option<PathBuf>,
    pub regions_per_s: f64,
}

/// `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Ok(Device::new_cuda(n)?),
            None => Err(Error::Config(format!(
                "train.device must be cpu, cuda or cuda:N, got {other:?}"
            ))),
        },
    }
}

/// The loader settings of a training run.
pub fn loader_config(
    cfg: &TrainConfig,
    image_size: usize,
    world: usize,
    masks: bool,
) -> LoaderConfig {
    let d = &cfg.data;
    let mut lc = LoaderConfig::train(image_size);
    lc.images_per_batch = d.images_per_batch * world;
    lc.regions_per_image = Some(d.regions_per_image);
    lc.max_caption_tokens = d.max_caption_tokens;
    lc.prefetch = d.prefetch;
    lc.masks = masks;
    lc.caption = match d.caption.as_str() {
        "first" => CaptionChoice::First,
        "caption" => CaptionChoice::Caption,
        _ => CaptionChoice::Random,
    };
    lc.lsj = d.lsj.then(|| {
        let mut l = LsjConfig::official(image_size);
        l.min_scale = d.lsj_min_scale;
        l.max_scale = d.lsj_max_scale;
        l
    });
    lc
}

/// An inference model (no gradient tracking) with the current weights.
pub fn inference_model(
    store: &ParamStore,
    setup_files: &ModelFiles,
    config: &sca_core::config::ScaConfig,
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<Sca> {
    let tensors: HashMap<String, Tensor> = store.snapshot()?.into_iter().collect();
    let weights = Weights::from_tensors(tensors, PathBuf::from("<training weights>"));
    let preprocessor = PreprocessorConfig::from_json(&setup_files.preprocessor_json.to_string())?;
    let generation: GenerationConfig = serde_json::from_value(setup_files.generation_json.clone())
        .map_err(|e| Error::Config(format!("generation_config.json: {e}")))?;
    Ok(Sca::from_weights(
        config.clone(),
        &weights,
        tokenizer.clone(),
        preprocessor,
        generation,
        device.clone(),
    )?)
}

/// The log, one JSON object per line; on resume the lines after the checkpoint are dropped.
struct Log {
    file: std::fs::File,
}

impl Log {
    fn open(path: &Path, keep_through: Option<u64>) -> Result<Self> {
        if let Some(step) = keep_through {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self { file })
    }

    fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io("log.jsonl", e))?;
        self.file.flush().map_err(|e| Error::io("log.jsonl", e))
    }
}

/// The state of a run being trained.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: ScaModel,
    pub store: ParamStore,
    pub optimizer: AdamW,
    pub files: ModelFiles,
    pub config: sca_core::config::ScaConfig,
    pub tokenizer: Tokenizer,
    pub device: Device,
    pub trainable: TrainableSet,
    pub step: u64,
    pub regions_seen: u64,
    /// `trainer distill`: the teacher and the distillation losses.
    pub distill: Option<crate::distill::Distiller>,
    /// The training-only heads of `optim.pixel_aux_weight`.
    pub pixel_aux: Option<PixelAux>,
}

impl Trainer {
    /// Builds the model (from the config's starting point, or from `resume`) and the
    /// optimizer. Returns the trainer and the checkpoint's state when resuming.
    pub fn new(cfg: TrainConfig, resume: Option<&Path>) -> Result<(Self, Option<TrainerState>)> {
        let device = parse_device(&cfg.train.device)?;
        let trainable = TrainableSet::parse(&cfg.model.trainable)?;
        let (mut setup, state, opt_state) = match resume {
            Some(path) => {
                let ckpt = checkpoint::resolve_resume(path)?;
                let (state, opt) = checkpoint::read_state(&ckpt)?;
                if state.trainable != cfg.model.trainable {
                    return Err(Error::Config(format!(
                        "the checkpoint trained {:?}, the config says model.trainable = {:?}",
                        state.trainable, cfg.model.trainable
                    )));
                }
                tracing::info!(checkpoint = %ckpt.display(), step = state.step, "resuming");
                (
                    ModelSetup::from_checkpoint(&ckpt, None)?,
                    Some(state),
                    Some(opt),
                )
            }
            None => (ModelSetup::prepare(&cfg.model)?, None, None),
        };
        let tokenizer = Tokenizer::from_dir(&setup.tokenizer_dir)?;
        let (model, store) = setup.build(trainable, &device)?;
        let o = &cfg.optim;
        let pixel_aux = if o.pixel_aux_weight > 0.0 {
            if !trainable.trains_sam() {
                return Err(Error::Config(
                    "optim.pixel_aux_weight trains SAM's features: it needs model.trainable to \
                     include SAM (e.g. \"all\")"
                        .into(),
                ));
            }
            let aux = PixelAux::new(
                o.pixel_aux_weight,
                setup.config.vision_config.output_channels,
                setup.config.text_config.n_embd,
                cfg.train.seed,
                &device,
            )?;
            if let Some(opt) = &opt_state {
                aux.load_state(opt)?;
            }
            Some(aux)
        } else {
            None
        };
        let mut vars = store.trainable();
        if let Some(aux) = &pixel_aux {
            vars.extend(aux.vars());
        }
        let mut optimizer = AdamW::new(
            vars,
            AdamWParams {
                beta1: o.betas[0],
                beta2: o.betas[1],
                eps: o.eps,
                weight_decay: o.weight_decay,
            },
        )?;
        let (lm, mixer, sam) = (o.lm_lr_scale, o.mixer_lr_scale, o.sam_lr_scale);
        if (lm, mixer, sam) != (1.0, 1.0, 1.0) {
            optimizer.set_lr_scales(|k| {
                if k.starts_with("language_model.") {
                    lm
                } else if crate::params::is_mixer_key(k) {
                    mixer
                } else {
                    sam
                }
            });
        }
        if let (Some(st), Some(opt)) = (&state, &opt_state) {
            optimizer.load_state(opt, st.step)?;
        }
        let step = state.as_ref().map_or(0, |s| s.step);
        let regions_seen = state.as_ref().map_or(0, |s| s.regions_seen);
        Ok((
            Trainer {
                files: setup.files()?,
                config: setup.config.clone(),
                cfg,
                model,
                store,
                optimizer,
                tokenizer,
                device,
                trainable,
                step,
                regions_seen,
                distill: None,
                pixel_aux,
            },
            state,
        ))
    }

    /// The input side `S`.
    pub fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    /// Side of SAM's low-resolution masks (4x the embedding grid), the frame of the
    /// ground-truth masks of the mask loss.
    pub fn mask_size(&self) -> usize {
        4 * self.config.vision_config.grid_size()
    }

    /// How a training step prompts its regions (`data.point_prompts`, `optim.mask_outputs`).
    pub fn prompt_mix(&self) -> Result<PromptMix> {
        Ok(PromptMix {
            point_prob: self.cfg.data.point_prompts,
            point_at: PointAt::parse(&self.cfg.data.point_position)?,
            outputs: MaskOutputs::parse(&self.cfg.optim.mask_outputs)?,
            seed: self.cfg.train.seed,
        })
    }

    /// Loss options of a training step.
    pub fn loss_options(&self, step: u64, train: bool) -> LossOptions {
        let t = &self.config.text_config;
        LossOptions {
            label_smoothing: self.cfg.optim.label_smoothing,
            caption_loss_weight: self.cfg.optim.caption_loss_weight,
            dropout: (train && self.cfg.optim.lm_dropout).then(|| {
                (
                    hash_keys(self.cfg.train.seed, &[step]),
                    t.embd_pdrop,
                    t.attn_pdrop,
                    t.resid_pdrop,
                )
            }),
            mask_loss_weight: self
                .trainable
                .trains_sam()
                .then_some(self.cfg.optim.mask_loss_weight),
            pixel_aux: if train { self.pixel_aux.clone() } else { None },
        }
    }

    /// One optimizer step on this worker's share of `batch` (images `rank·B..(rank+1)·B`).
    /// Returns (global mean loss, caption loss, mask loss, grad norm, lr).
    pub fn train_step(
        &mut self,
        batch: &Batch,
        averager: &mut dyn GradAverager,
    ) -> Result<StepReport> {
        let world = averager.world_size();
        let per = batch.images.div_ceil(world);
        let start = (averager.rank() * per).min(batch.images);
        let end = ((averager.rank() + 1) * per).min(batch.images);
        let opts = self.loss_options(self.step, true);
        let vars: Vec<candle_core::Var> = self.optimizer.vars().into_iter().cloned().collect();
        let var_refs: Vec<&candle_core::Var> = vars.iter().collect();
        let (mut grads, local) = if start < end {
            let mut inputs = StepInputs::from_batch(batch, start..end, &self.device)?;
            let mix = self.prompt_mix()?;
            if mix.point_prob > 0.0 || mix.outputs != MaskOutputs::Single {
                inputs.mix_prompts(&mix, self.step)?;
            }
            let losses = match &self.distill {
                Some(d) => d.forward(&self.model, &inputs, &opts)?,
                None => forward(&self.model, &inputs, &opts)?,
            };
            let grads = gradients(&losses.total, &var_refs)?;
            (grads, Some((losses, inputs.n_tokens)))
        } else {
            // A short last batch can leave a worker without images: it contributes nothing.
            (vec![None; vars.len()], None)
        };
        let n_tokens = local.as_ref().map_or(0, |l| l.1) as f64;
        averager.average(&mut grads, n_tokens)?;
        let (cap, mask) = local
            .as_ref()
            .map_or((0.0, 0.0), |(l, _)| (l.caption, l.mask.unwrap_or(0.0)));
        let (total_value, parts) = local.as_ref().map_or((None, Vec::new()), |(l, _)| {
            (l.total_value, l.parts.clone())
        });
        let mut sums = [cap * n_tokens, mask * n_tokens, n_tokens];
        averager.sum_scalars(&mut sums)?;
        let grad_norm = clip_grad_norm(&mut grads, self.cfg.optim.clip_grad_norm)?;
        let o = &self.cfg.optim;
        let lr = lr_at(o.lr, self.step, o.warmup_steps, o.max_steps, &o.schedule);
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let regions = (batch.images * batch.regions_per_image) as u64;
        self.regions_seen += regions;
        let tokens = sums[2].max(1.0);
        let caption = sums[0] / tokens;
        let mask = self.trainable.trains_sam().then_some(sums[1] / tokens);
        Ok(StepReport {
            loss: total_value.unwrap_or(
                caption * o.caption_loss_weight + mask.unwrap_or(0.0) * o.mask_loss_weight,
            ),
            parts,
            caption_loss: caption,
            mask_loss: mask,
            grad_norm,
            lr,
            regions,
        })
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&self, out: &Path, loader: &DataLoader, world: usize) -> Result<PathBuf> {
        let (mut opt, step) = self.optimizer.state();
        if let Some(aux) = &self.pixel_aux {
            opt.extend(aux.state());
        }
        let state = TrainerState {
            step,
            loader: loader.state(),
            seed: self.cfg.train.seed,
            trainable: self.cfg.model.trainable.clone(),
            world_size: world,
            regions_seen: self.regions_seen,
        };
        checkpoint::write_checkpoint(
            out,
            &self.store.snapshot()?,
            &self.files,
            &opt,
            &state,
            self.cfg.train.keep_checkpoints,
        )
    }

    /// Writes the model in the official layout to `dir` (through a temporary directory).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".tmp-model-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write_model_dir(&tmp, &self.store.snapshot()?, &self.files)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    }

    /// Teacher-forced loss (no dropout) and generated-caption metrics on the eval data.
    pub fn evaluate(&self, spec: &str) -> Result<Value> {
        let t0 = Instant::now();
        let ds = open_spec(spec, Split::Test)?;
        let ec = &self.cfg.eval;
        let ds: Arc<dyn sca_data::Dataset> = Arc::new(sca_data::Take::new(ds, ec.max_images));
        let sca = inference_model(
            &self.store,
            &self.files,
            &self.config,
            &self.tokenizer,
            &self.device,
        )?;
        // Teacher-forced loss over every region, mean over target tokens.
        let mut lc = LoaderConfig::eval(self.image_size());
        lc.max_caption_tokens = self.cfg.data.max_caption_tokens;
        lc.masks = false;
        let mut loader = DataLoader::new(ds.clone(), Arc::new(self.tokenizer.clone()), lc, 0)?;
        let opts = LossOptions {
            label_smoothing: self.cfg.optim.label_smoothing,
            caption_loss_weight: 1.0,
            dropout: None,
            mask_loss_weight: None,
            pixel_aux: None,
        };
        let (mut sum, mut tokens) = (0f64, 0usize);
        for _ in 0..loader.batches_per_epoch() {
            let batch = loader.next_batch()?;
            if batch.epoch > 0 {
                break;
            }
            let inputs = StepInputs::from_batch(&batch, 0..batch.images, &self.device)?;
            let l = forward(&sca.model, &inputs, &opts)?;
            sum += l.caption * inputs.n_tokens as f64;
            tokens += inputs.n_tokens;
        }
        let report = evaluate(
            &sca,
            ds.as_ref(),
            &EvalOptions {
                decode: Decode::from_beams(ec.beams, ec.max_new_tokens),
                meteor: if ec.meteor {
                    MeteorMode::Auto
                } else {
                    MeteorMode::Off
                },
                ..Default::default()
            },
            |_, _| {},
        )?;
        let m = &report.metrics;
        Ok(json!({
            "eval_loss": sum / tokens.max(1) as f64,
            "n_regions": report.n_regions,
            "bleu1": m.bleu1, "bleu2": m.bleu2, "bleu3": m.bleu3, "bleu4": m.bleu4,
            "meteor": m.meteor, "rouge_l": m.rouge_l, "cider_d": m.cider_d,
            "mask_iou_mean": report.mask_iou_mean,
            "attribute_accuracy": report.attribute_accuracy,
            "attribute_rates": report.attribute_rates,
            "seconds": t0.elapsed().as_secs_f64(),
        }))
    }
}

/// The numbers of one step.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub loss: f64,
    /// Further named terms (distillation).
    pub parts: Vec<(&'static str, f64)>,
    pub caption_loss: f64,
    pub mask_loss: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    pub regions: u64,
}

/// Trains as configured. With `averager` = [`SingleWorker`] this is the whole of
/// `trainer fit`; data-parallel ranks pass their NCCL averager (only rank 0 writes).
pub fn fit(opts: FitOptions) -> Result<FitSummary> {
    fit_with(opts, &mut SingleWorker)
}

/// [`fit`] as one worker of a data-parallel group.
pub fn fit_with(opts: FitOptions, averager: &mut dyn GradAverager) -> Result<FitSummary> {
    let out = opts.out.clone();
    let lead = averager.rank() == 0;
    let world = averager.world_size();
    if lead {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        checkpoint::clean_stale(&out)?;
    }
    let (mut tr, state) = Trainer::new(opts.config.clone(), opts.resume.as_deref())?;
    if let Some(st) = &state {
        if st.world_size != world {
            return Err(Error::Config(format!(
                "the checkpoint was written by {} workers, this run has {world}: the data order \
                 would differ",
                st.world_size
            )));
        }
    }
    if let Some(d) = tr.cfg.distill.clone() {
        if world > 1 {
            return Err(Error::Config(
                "distillation runs on one worker (WORLD_SIZE=1)".into(),
            ));
        }
        let teacher = d.teacher.clone().ok_or_else(|| {
            Error::Config("distillation needs a teacher (--teacher or distill.teacher)".into())
        })?;
        tr.distill = Some(crate::distill::Distiller::new(
            &teacher, d, &tr.store, &tr.config, &out, &tr.device,
        )?);
    }
    let cfg = tr.cfg.clone();
    tracing::info!(
        trainable = tr.store.trainable_count(),
        set = %cfg.model.trainable,
        step = tr.step,
        "model ready"
    );
    let dataset = open_spec(&cfg.data.train, Split::Train)?;
    let mut lc = loader_config(&cfg, tr.image_size(), world, tr.trainable.trains_sam());
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(dataset, Arc::new(tr.tokenizer.clone()), lc, cfg.data.seed)?;
    if let Some(st) = &state {
        loader.restore(st.loader.clone())?;
    }
    let mut log = if lead {
        Some(Log::open(
            &out.join("log.jsonl"),
            state.as_ref().map(|s| s.step),
        )?)
    } else {
        None
    };
    let max_steps = cfg.optim.max_steps;
    let stop_at = opts.stop_after.unwrap_or(max_steps).min(max_steps);
    let bar = if lead && cfg.train.progress {
        ProgressBar::new(max_steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} ETA {eta_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(tr.step);
    let t_start = Instant::now();
    let start_step = tr.step;
    let mut regions_this_run = 0u64;
    let (mut first_loss, mut last_loss) = (None, None);
    let mut rate = 0.0;
    while tr.step < stop_at {
        let t0 = Instant::now();
        let batch = loader.next_batch()?;
        let wait = t0.elapsed().as_secs_f64();
        let rep = tr.train_step(&batch, averager)?;
        let dt = t0.elapsed().as_secs_f64();
        rate = rep.regions as f64 / dt.max(1e-9);
        regions_this_run += rep.regions;
        first_loss.get_or_insert(rep.loss);
        last_loss = Some(rep.loss);
        if !rep.loss.is_finite() {
            return Err(Error::Other(format!(
                "loss is {} at step {} (lower optim.lr?)",
                rep.loss, tr.step
            )));
        }
        bar.set_position(tr.step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.1} regions/s",
            rep.loss, rep.lr, rate
        ));
        let mut entry = json!({
            "step": tr.step,
            "loss": rep.loss,
            "caption_loss": rep.caption_loss,
            "lr": rep.lr,
            "grad_norm": rep.grad_norm,
            "regions": rep.regions,
            "regions_per_s": rate,
            "data_wait_s": wait,
            "epoch": batch.epoch,
            "elapsed_s": t_start.elapsed().as_secs_f64(),
        });
        if let Some(m) = rep.mask_loss {
            entry["mask_loss"] = json!(m);
        }
        for (k, v) in &rep.parts {
            entry[*k] = json!(v);
        }
        let eval_now = cfg.eval.every > 0 && tr.step % cfg.eval.every == 0;
        if lead && eval_now {
            if let Some(spec) = &cfg.data.eval {
                bar.set_message("evaluating");
                let ev = tr.evaluate(spec)?;
                tracing::info!(step = tr.step, eval = %ev, "evaluation");
                entry["eval"] = ev;
            }
        }
        if let Some(log) = log.as_mut() {
            log.write(&entry)?;
        }
        let ckpt_now = (cfg.train.checkpoint_every > 0
            && tr.step % cfg.train.checkpoint_every == 0)
            || tr.step == stop_at && stop_at < max_steps;
        if lead && ckpt_now {
            let p = tr.checkpoint(&out, &loader, world)?;
            tracing::info!(step = tr.step, dir = %p.display(), "checkpoint");
        }
    }
    bar.finish_and_clear();
    let done = tr.step - start_step;
    let mean_rate = if done > 0 {
        regions_this_run as f64 / t_start.elapsed().as_secs_f64()
    } else {
        rate
    };
    let model_dir = if lead && tr.step >= max_steps {
        let dir = out.join("model");
        tr.save_model(&dir)?;
        if let Some(spec) = &cfg.data.eval {
            let ev = tr.evaluate(spec)?;
            let path = out.join("eval.json");
            std::fs::write(&path, serde_json::to_string_pretty(&ev).unwrap_or_default())
                .map_err(|e| Error::io(&path, e))?;
        }
        Some(dir)
    } else {
        None
    };
    Ok(FitSummary {
        steps: tr.step,
        first_loss,
        last_loss,
        model_dir,
        regions_per_s: mean_rate,
    })
}

/// The trainable parameters' values by key (detached), e.g. to compare runs.
pub fn trainable_values(store: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
    Ok(store
        .trainable()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect())
}
