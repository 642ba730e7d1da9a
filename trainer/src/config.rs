//! The training configuration (`trainer fit --config FILE.toml`). Every field has the official
//! recipe's value as its default (`sca-spec.md` §4), so a config only names what differs: the
//! model to start from and the data.
//!
//! Relative paths are resolved against the directory of the config file; `${NAME}` and
//! `${NAME:-default}` are replaced by environment variables first.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The whole `FILE.toml`.
///
/// ```
/// let cfg = trainer::config::TrainConfig::from_toml_str(r#"
///     [model]
///     init = "checkpoint"
///     checkpoint = "ckpt"
///     [data]
///     train = "synthetic:seed=1,n=100"
/// "#, std::path::Path::new("/runs")).unwrap();
/// assert_eq!(cfg.optim.lr, 1e-4);
/// assert_eq!(cfg.optim.warmup_steps, 200);
/// assert_eq!(cfg.model.checkpoint.as_deref(), Some(std::path::Path::new("/runs/ckpt")));
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: RunConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `trainer distill` only: the teacher and the distillation losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// Knowledge distillation into a smaller caption LM (`trainer distill`). The student shares
/// the teacher's frozen SAM; its mixer starts as the teacher's (or fresh) and trains with its
/// LM. Loss = `ce_weight` · caption CE + `kl_weight` · T² · KL(teacher ‖ student) at
/// temperature T on the ground-truth captions + `seq_weight` · CE on the teacher's own greedy
/// captions of the same regions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher: an SCA checkpoint or trainer output (`--teacher`).
    pub teacher: Option<PathBuf>,
    /// Softmax temperature of the token-level KL term.
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    /// Teacher probabilities kept per position (the rest of the vocabulary is one lumped
    /// outcome of the KL); 0 = the full vocabulary (no cache then: too large).
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    #[serde(default = "d_one_f")]
    pub kl_weight: f64,
    #[serde(default = "d_one_f")]
    pub seq_weight: f64,
    #[serde(default = "d_one_f")]
    pub ce_weight: f64,
    /// Longest teacher caption for the sequence-level term (new tokens).
    #[serde(default = "d_seq_tokens")]
    pub seq_max_tokens: usize,
    /// Cache the teacher's outputs on disk, keyed by pixels, prompt, caption and teacher hash.
    #[serde(default = "d_true")]
    pub cache: bool,
    /// Cache directory (default `<out>/teacher-cache`).
    pub cache_dir: Option<PathBuf>,
}

fn d_temperature() -> f64 {
    2.0
}
fn d_top_k() -> usize {
    64
}
fn d_seq_tokens() -> usize {
    19
}
impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            teacher: None,
            temperature: d_temperature(),
            top_k: d_top_k(),
            kl_weight: 1.0,
            seq_weight: 1.0,
            ce_weight: 1.0,
            seq_max_tokens: d_seq_tokens(),
            cache: true,
            cache_dir: None,
        }
    }
}

/// Where the weights come from and what trains.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `checkpoint` (an official SCA checkpoint or a trainer output), `sam_gpt2` (a SAM and a
    /// GPT-2 checkpoint in HF layout, fresh mixer) or `config` (random init from a config.json).
    pub init: InitKind,
    /// `init = "checkpoint"`: the checkpoint directory.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// `init = "sam_gpt2"`: HF SAM checkpoint directory (config.json + weights).
    #[serde(default)]
    pub sam: Option<PathBuf>,
    /// `init = "sam_gpt2"`: HF GPT-2 checkpoint directory (config.json + weights + tokenizer).
    #[serde(default)]
    pub gpt2: Option<PathBuf>,
    /// `init = "config"`: an official-layout SCA config.json.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Tokenizer directory (`tokenizer.json` or `vocab.json` + `merges.txt`); defaults to the
    /// checkpoint / GPT-2 / config directory.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// `sam_gpt2` only: mixer depth, caption queries and task tokens of the fresh mixer.
    #[serde(default = "d_mixer_layers")]
    pub mixer_layers: usize,
    #[serde(default = "d_caption_tokens")]
    pub num_caption_tokens: usize,
    #[serde(default = "d_task_tokens")]
    pub num_task_tokens: usize,
    /// Which parameters train: `mixer` (official: mixer, caption queries, projection, task
    /// tokens), `+lm`, `+sam_decoder`, `+lm+sam_decoder` or `all`.
    #[serde(default = "d_trainable")]
    pub trainable: String,
    /// Seed of the random initialisation (fresh mixer / `init = "config"`).
    #[serde(default = "d_seed")]
    pub init_seed: u64,
    /// `init = "config"`: scale of the random Fourier features of the positional encoding
    /// (`shared_image_embedding.positional_embedding`, a buffer that never trains). Default:
    /// transformers' `SamPositionalEmbedding` (`vision_config.hidden_size / 2`); the original
    /// SAM uses 1.0, which is what a model trained from scratch needs (a scale in the hundreds
    /// makes the encoding of neighbouring positions unrelated).
    #[serde(default)]
    pub positional_embedding_scale: Option<f64>,
    /// Start the mixer's transformer (`mask_decoder.additional_transformer.*`) as a copy of
    /// SAM's mask-decoder transformer (`mask_decoder.transformer.*`, layer `i` from layer
    /// `i mod depth`) instead of the source's or random weights: a mixer whose attention
    /// already finds the prompted object, for a second stage after SAM was trained from
    /// scratch. Needs decoder weights in the source (`init = "checkpoint"` or `"sam_gpt2"`).
    #[serde(default)]
    pub mixer_from_sam_decoder: bool,
    /// Random init (`init = "config"`) of SAM's parts, the mixer and `language_project`:
    /// `"hf"` (transformers' `_init_weights`, N(0, initializer_range)) or `"torch"`
    /// (PyTorch's layer defaults, what SAM trains from; much faster from scratch). GPT-2 always
    /// uses HF's.
    #[serde(default = "d_init_scheme")]
    pub init_scheme: String,
    /// Replace the source's GPT-2 (and, where its width changes, `language_project` and the
    /// task tokens): a GPT-2 `config.json` (weights: the source's layers, evenly selected,
    /// where the widths match, else random), an HF GPT-2 checkpoint directory (its weights) or
    /// an SCA model directory (its GPT-2, projection, task tokens and mixer: a second stage).
    /// The vocabulary must stay the source's. How `trainer distill` builds its student.
    #[serde(default)]
    pub language_model: Option<PathBuf>,
    /// With `language_model`: start the mixer afresh instead of copying the source's.
    #[serde(default)]
    pub fresh_mixer: bool,
}

fn d_init_scheme() -> String {
    "hf".into()
}

/// How the model is initialised.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InitKind {
    Checkpoint,
    SamGpt2,
    Config,
}

/// Training and evaluation data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset spec: `vg:DIR`, `jsonl:FILE`, `coco:...`, `synthetic:seed=S,n=N`, ...
    pub train: String,
    /// Evaluation dataset spec (defaults to none: no periodic evaluation).
    #[serde(default)]
    pub eval: Option<String>,
    /// Regions sampled per image (official: 16).
    #[serde(default = "d_regions")]
    pub regions_per_image: usize,
    /// Images per step on each worker (official: 1).
    #[serde(default = "d_one")]
    pub images_per_batch: usize,
    /// Large-scale jitter with horizontal flip (`lsj-0_1-2_0`); off = resize + pad only.
    #[serde(default = "d_true")]
    pub lsj: bool,
    #[serde(default = "d_lsj_min")]
    pub lsj_min_scale: f64,
    #[serde(default = "d_lsj_max")]
    pub lsj_max_scale: f64,
    /// Which text of a region is its training caption: `random` (official: uniform over its
    /// references), `first` (its first reference) or `caption` (its `caption` field).
    #[serde(default = "d_caption")]
    pub caption: String,
    /// Fraction of the regions prompted with one positive point (see `point_position`)
    /// instead of their box (official: 0).
    #[serde(default)]
    pub point_prompts: f64,
    /// Where those points go: `centre` (the box centre, as `sca eval --prompt point`) or
    /// `mask` (a pixel drawn uniformly from the region's ground-truth mask, as SAM's
    /// training does; what anything mode's grid points look like).
    #[serde(default = "d_point_position")]
    pub point_position: String,
    /// Caption tokens before EOS (official: 18).
    #[serde(default = "d_caption_len")]
    pub max_caption_tokens: usize,
    /// Batches prepared ahead of the step by the loader thread.
    #[serde(default = "d_prefetch")]
    pub prefetch: usize,
    /// Seed of sampling, augmentation and order.
    #[serde(default = "d_seed")]
    pub seed: u64,
}

/// AdamW and the schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Applied to every trainable weight except biases and `nn.LayerNorm` parameters.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: u64,
    /// Total optimizer steps (the cosine reaches 0 here).
    #[serde(default = "d_max_steps")]
    pub max_steps: u64,
    /// `cosine` (official) or `constant` (after warm-up).
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "d_one_f")]
    pub clip_grad_norm: f64,
    #[serde(default = "d_smoothing")]
    pub label_smoothing: f64,
    /// GPT-2 dropout (embd/attn/resid at the config's rates) during training, as the official
    /// frozen LM in train mode.
    #[serde(default = "d_true")]
    pub lm_dropout: bool,
    /// Learning-rate multipliers of the parameter groups: GPT-2 (`language_model.*`), the
    /// mixer (`model.trainable = "mixer"`'s set) and SAM (everything else).
    #[serde(default = "d_one_f")]
    pub lm_lr_scale: f64,
    #[serde(default = "d_one_f")]
    pub mixer_lr_scale: f64,
    #[serde(default = "d_one_f")]
    pub sam_lr_scale: f64,
    /// Weight of the caption loss; 0 leaves the mixer and GPT-2 out of the step (a masks-only
    /// first stage when SAM trains from scratch).
    #[serde(default = "d_one_f")]
    pub caption_loss_weight: f64,
    /// Weight of SAM's mask loss (20·focal + dice + IoU MSE) when SAM parts train on data with
    /// masks.
    #[serde(default = "d_one_f")]
    pub mask_loss_weight: f64,
    /// Which of SAM's mask outputs the step decodes and the mask loss trains: `single` (the
    /// single output, SAM's choice for unambiguous prompts), `multimask` (the three multimask
    /// outputs, each against the ground truth: what `sca eval` and `sca caption --multimask`
    /// read) or `both` (each region draws one of the two).
    #[serde(default = "d_mask_outputs")]
    pub mask_outputs: String,
    /// Weight of the pixel auxiliary ([`crate::pixel_aux`]): linear heads, used in training
    /// only, read each patch's mean pixel back from the image embedding and from SAM's
    /// per-prompt image tokens (the mixer's keys), and each region's mean pixel under its
    /// ground-truth mask from the LM prefix. 0 (the default, the official recipe) leaves it
    /// out. For SAM trained from scratch, whose mask loss alone keeps no colour in those
    /// features.
    #[serde(default)]
    pub pixel_aux_weight: f64,
}

/// Run control: device, seeds, checkpoints, logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "d_device")]
    pub device: String,
    /// Seed of dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Write a checkpoint every N steps (0 = only at the end).
    #[serde(default = "d_ckpt_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept (oldest deleted first).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Progress bar on stderr (when it is a terminal).
    #[serde(default = "d_true")]
    pub progress: bool,
}

/// Periodic evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every N steps (0 = never; the final model is evaluated when `data.eval` is set).
    #[serde(default = "d_ckpt_every")]
    pub every: u64,
    /// First N images of the eval set (official: 800).
    #[serde(default = "d_eval_images")]
    pub max_images: usize,
    /// Greedy decoding with at most this many new tokens (official eval default: 19).
    #[serde(default = "d_new_tokens")]
    pub max_new_tokens: usize,
    /// Beam width for the generated captions (1 = greedy).
    #[serde(default = "d_one")]
    pub beams: usize,
    /// Score METEOR too when its data is installed (`scripts/setup-meteor.sh`).
    #[serde(default = "d_true")]
    pub meteor: bool,
}

fn d_mixer_layers() -> usize {
    12
}
fn d_caption_tokens() -> usize {
    8
}
fn d_task_tokens() -> usize {
    6
}
fn d_trainable() -> String {
    "mixer".into()
}
fn d_seed() -> u64 {
    42
}
fn d_regions() -> usize {
    16
}
fn d_one() -> usize {
    1
}
fn d_true() -> bool {
    true
}
fn d_lsj_min() -> f64 {
    0.1
}
fn d_lsj_max() -> f64 {
    2.0
}
fn d_caption() -> String {
    "random".into()
}
fn d_mask_outputs() -> String {
    "single".into()
}
fn d_caption_len() -> usize {
    18
}
fn d_prefetch() -> usize {
    2
}
fn d_lr() -> f64 {
    1e-4
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_point_position() -> String {
    "centre".into()
}
fn d_wd() -> f64 {
    1e-4
}
fn d_warmup() -> u64 {
    200
}
fn d_max_steps() -> u64 {
    200_000
}
fn d_schedule() -> String {
    "cosine".into()
}
fn d_one_f() -> f64 {
    1.0
}
fn d_smoothing() -> f64 {
    0.1
}
fn d_device() -> String {
    "cpu".into()
}
fn d_ckpt_every() -> u64 {
    5000
}
fn d_keep() -> usize {
    3
}
fn d_eval_images() -> usize {
    800
}
fn d_new_tokens() -> usize {
    19
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: d_lr(),
            betas: d_betas(),
            eps: d_eps(),
            weight_decay: d_wd(),
            warmup_steps: d_warmup(),
            max_steps: d_max_steps(),
            schedule: d_schedule(),
            clip_grad_norm: d_one_f(),
            label_smoothing: d_smoothing(),
            lm_dropout: true,
            lm_lr_scale: d_one_f(),
            mixer_lr_scale: d_one_f(),
            sam_lr_scale: d_one_f(),
            caption_loss_weight: d_one_f(),
            mask_loss_weight: d_one_f(),
            mask_outputs: d_mask_outputs(),
            pixel_aux_weight: 0.0,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            device: d_device(),
            seed: d_seed(),
            checkpoint_every: d_ckpt_every(),
            keep_checkpoints: d_keep(),
            progress: true,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: d_ckpt_every(),
            max_images: d_eval_images(),
            max_new_tokens: d_new_tokens(),
            beams: 1,
            meteor: true,
        }
    }
}

impl TrainConfig {
    /// Reads `path`, expands `${VAR}`, resolves relative paths against its directory and
    /// validates the values.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml_str(&text, &base).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The config of `trainer distill`: `text` (a TOML file in `base`, whose `[model]` and
    /// `[data]` sections are optional) with the command line's teacher, student LM and
    /// training data filled in: the student starts as the teacher (`model.init =
    /// "checkpoint"`) with `model.language_model = student`; `model.trainable` defaults to
    /// `+lm` (mixer and LM). Paths on the command line are taken as given (relative to the
    /// working directory).
    pub fn for_distill(
        text: &str,
        base: &Path,
        teacher: &Path,
        student: &Path,
        data: Option<&str>,
    ) -> Result<Self> {
        let text = expand_env(text)?;
        let mut v: toml::Table = toml::from_str(&text).map_err(|e| Error::Config(e.to_string()))?;
        let abs = |p: &Path| -> Result<String> {
            let p = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
            Ok(p.display().to_string())
        };
        let section = |v: &mut toml::Table, name: &str| -> Result<toml::Table> {
            match v.remove(name) {
                None => Ok(toml::Table::new()),
                Some(toml::Value::Table(t)) => Ok(t),
                Some(_) => Err(Error::Config(format!("[{name}] must be a table"))),
            }
        };
        let mut model = section(&mut v, "model")?;
        for key in [
            "init",
            "checkpoint",
            "language_model",
            "sam",
            "gpt2",
            "config",
        ] {
            if model.contains_key(key) {
                return Err(Error::Config(format!(
                    "model.{key} is set by trainer distill (--teacher, --student); remove it"
                )));
            }
        }
        model.insert("init".into(), "checkpoint".into());
        model.insert("checkpoint".into(), abs(teacher)?.into());
        model.insert("language_model".into(), abs(student)?.into());
        model.entry("trainable").or_insert("+lm".into());
        v.insert("model".into(), model.into());
        let mut d = section(&mut v, "data")?;
        if let Some(spec) = data {
            d.insert("train".into(), spec.into());
        } else if !d.contains_key("train") {
            return Err(Error::Config(
                "no training data: pass --data SPEC or set data.train".into(),
            ));
        }
        v.insert("data".into(), d.into());
        let mut dist = section(&mut v, "distill")?;
        dist.insert("teacher".into(), abs(teacher)?.into());
        v.insert("distill".into(), dist.into());
        let text = toml::to_string(&v).map_err(|e| Error::Config(e.to_string()))?;
        Self::from_toml_str(&text, base)
    }

    /// Parses TOML text; relative paths are taken relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self> {
        let text = expand_env(text)?;
        let mut cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| Error::Config(e.to_string()))?;
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        fix(&mut cfg.model.checkpoint);
        fix(&mut cfg.model.sam);
        fix(&mut cfg.model.gpt2);
        fix(&mut cfg.model.config);
        fix(&mut cfg.model.tokenizer);
        fix(&mut cfg.model.language_model);
        if let Some(d) = cfg.distill.as_mut() {
            fix(&mut d.teacher);
            fix(&mut d.cache_dir);
        }
        cfg.data.train = resolve_spec_path(&cfg.data.train, base);
        cfg.data.eval = cfg.data.eval.map(|s| resolve_spec_path(&s, base));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range and consistency checks, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let m = &self.model;
        match m.init {
            InitKind::Checkpoint if m.checkpoint.is_none() => {
                return bad("model.init = \"checkpoint\" needs model.checkpoint".into())
            }
            InitKind::SamGpt2 if m.sam.is_none() || m.gpt2.is_none() => {
                return bad("model.init = \"sam_gpt2\" needs model.sam and model.gpt2".into())
            }
            InitKind::Config if m.config.is_none() => {
                return bad("model.init = \"config\" needs model.config".into())
            }
            _ => {}
        }
        crate::params::TrainableSet::parse(&m.trainable)?;
        if m.mixer_from_sam_decoder && m.init == InitKind::Config {
            return bad(
                "model.mixer_from_sam_decoder needs trained decoder weights (init = \"checkpoint\" \
                 or \"sam_gpt2\")"
                    .into(),
            );
        }
        if (m.language_model.is_some() || m.fresh_mixer) && m.init != InitKind::Checkpoint {
            return bad(
                "model.language_model / fresh_mixer replace parts of a trained model: they need \
                 model.init = \"checkpoint\""
                    .into(),
            );
        }
        if m.fresh_mixer && m.language_model.is_none() {
            return bad("model.fresh_mixer needs model.language_model".into());
        }
        if let Some(d) = &self.distill {
            let t = d.temperature;
            if !(t > 0.0 && t.is_finite()) {
                return bad(format!("distill.temperature must be > 0, got {t}"));
            }
            let ws = [d.kl_weight, d.seq_weight, d.ce_weight];
            if ws.iter().any(|w| !(*w >= 0.0 && w.is_finite())) || ws.iter().all(|w| *w == 0.0) {
                return bad(format!(
                    "distill.kl_weight, seq_weight and ce_weight must be >= 0 and not all 0, got \
                     {ws:?}"
                ));
            }
            if d.seq_weight > 0.0 && d.seq_max_tokens == 0 {
                return bad("distill.seq_max_tokens must be > 0 when seq_weight > 0".into());
            }
            if crate::params::TrainableSet::parse(&m.trainable)?.trains_sam() {
                return bad(format!(
                    "distillation shares the teacher's frozen SAM: model.trainable must be \
                     \"mixer\" or \"+lm\", got {:?}",
                    m.trainable
                ));
            }
        }
        if !matches!(m.init_scheme.as_str(), "hf" | "torch") {
            return bad(format!(
                "model.init_scheme must be \"hf\" or \"torch\", got {:?}",
                m.init_scheme
            ));
        }
        if let Some(v) = m.positional_embedding_scale {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!(
                    "model.positional_embedding_scale must be > 0, got {v}"
                ));
            }
        }
        let o = &self.optim;
        if !(o.lr >= 0.0 && o.lr.is_finite()) {
            return bad(format!("optim.lr must be >= 0, got {}", o.lr));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("optim.betas must be in [0, 1), got {:?}", o.betas));
        }
        if o.eps <= 0.0 || o.weight_decay < 0.0 || o.clip_grad_norm < 0.0 {
            return bad("optim.eps must be > 0; weight_decay and clip_grad_norm >= 0".into());
        }
        if !(o.pixel_aux_weight >= 0.0 && o.pixel_aux_weight.is_finite()) {
            return bad(format!(
                "optim.pixel_aux_weight must be >= 0, got {}",
                o.pixel_aux_weight
            ));
        }
        if o.max_steps == 0 {
            return bad("optim.max_steps must be > 0".into());
        }
        if !matches!(o.schedule.as_str(), "cosine" | "constant") {
            return bad(format!(
                "optim.schedule must be \"cosine\" or \"constant\", got {:?}",
                o.schedule
            ));
        }
        if !(0.0..1.0).contains(&o.label_smoothing) {
            return bad(format!(
                "optim.label_smoothing must be in [0, 1), got {}",
                o.label_smoothing
            ));
        }
        crate::step::MaskOutputs::parse(&o.mask_outputs)?;
        if [o.lm_lr_scale, o.mixer_lr_scale, o.sam_lr_scale]
            .iter()
            .any(|v| !(*v >= 0.0 && v.is_finite()))
        {
            return bad("optim.lm_lr_scale, mixer_lr_scale and sam_lr_scale must be >= 0".into());
        }
        let weight_ok = |w: f64| w >= 0.0 && w.is_finite();
        if !weight_ok(o.caption_loss_weight) || !weight_ok(o.mask_loss_weight) {
            return bad("optim.caption_loss_weight and mask_loss_weight must be >= 0".into());
        }
        if o.caption_loss_weight == 0.0
            && !crate::params::TrainableSet::parse(&m.trainable)?.trains_sam()
        {
            return bad(
                "optim.caption_loss_weight = 0 leaves nothing to train unless SAM parts train \
                 (model.trainable = \"+sam_decoder\" or \"all\")"
                    .into(),
            );
        }
        let d = &self.data;
        if !matches!(d.caption.as_str(), "random" | "first" | "caption") {
            return bad(format!(
                "data.caption must be \"random\", \"first\" or \"caption\", got {:?}",
                d.caption
            ));
        }
        crate::step::PointAt::parse(&d.point_position)?;
        if !(0.0..=1.0).contains(&d.point_prompts) {
            return bad(format!(
                "data.point_prompts must be in [0, 1], got {}",
                d.point_prompts
            ));
        }
        if d.regions_per_image == 0 || d.images_per_batch == 0 || d.max_caption_tokens == 0 {
            return bad(
                "data.regions_per_image, images_per_batch and max_caption_tokens must be > 0"
                    .into(),
            );
        }
        if !(d.lsj_min_scale > 0.0 && d.lsj_min_scale <= d.lsj_max_scale) {
            return bad(format!(
                "data.lsj_min_scale {} must be > 0 and <= lsj_max_scale {}",
                d.lsj_min_scale, d.lsj_max_scale
            ));
        }
        if self.train.keep_checkpoints == 0 {
            return bad("train.keep_checkpoints must be >= 1".into());
        }
        if self.eval.beams == 0 || self.eval.max_new_tokens == 0 {
            return bad("eval.beams and eval.max_new_tokens must be >= 1".into());
        }
        Ok(())
    }
}

/// `${NAME}` / `${NAME:-default}` from the environment; an unset variable without default is
/// an error.
fn expand_env(text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find('}')
            .ok_or_else(|| Error::Config("unterminated ${ in config".into()))?;
        let inner = &after[..j];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => {
                return Err(Error::Config(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}})"
                )))
            }
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// In `kind:PATH[,opts]` specs whose path is relative, makes the path relative to `base`.
/// Synthetic specs (no path) are kept.
fn resolve_spec_path(spec: &str, base: &Path) -> String {
    let Some((kind, rest)) = spec.split_once(':') else {
        return spec.to_string();
    };
    if kind == "synthetic" || rest.is_empty() {
        return spec.to_string();
    }
    // The path ends at the first `,` that starts an option (`key=value`).
    let (path, opts) = match rest.find(',') {
        Some(k) if rest[k + 1..].contains('=') => (&rest[..k], &rest[k..]),
        _ => (rest, ""),
    };
    let p = Path::new(path);
    if p.is_relative() {
        format!("{kind}:{}{opts}", base.join(p).display())
    } else {
        spec.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_official_recipe() {
        let c = TrainConfig::from_toml_str(
            "[model]\ninit='config'\nconfig='c.json'\n[data]\ntrain='synthetic:seed=1,n=4'\n",
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(c.optim.betas, [0.9, 0.999]);
        assert_eq!(c.optim.eps, 1e-8);
        assert_eq!(c.optim.weight_decay, 1e-4);
        assert_eq!(c.optim.clip_grad_norm, 1.0);
        assert_eq!(c.optim.label_smoothing, 0.1);
        assert_eq!(c.data.regions_per_image, 16);
        assert_eq!(c.data.max_caption_tokens, 18);
        assert!(c.optim.lm_dropout);
        assert_eq!(c.model.trainable, "mixer");
        assert_eq!(c.train.keep_checkpoints, 3);
        assert_eq!(c.model.config.as_deref(), Some(Path::new("/x/c.json")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = TrainConfig::from_toml_str(
            "[model]\ninit='checkpoint'\n[data]\ntrain='x'\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("model.checkpoint"), "{e}");
        let e = TrainConfig::from_toml_str(
            "[model]\ninit='config'\nconfig='c'\n[data]\ntrain='x'\n[optim]\nlr=-1.0\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("optim.lr"), "{e}");
        let e = TrainConfig::from_toml_str(
            "[model]\ninit='config'\nconfig='c'\nbogus=1\n[data]\ntrain='x'\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn from_scratch_options_parse_and_validate() {
        let base = "[model]\ninit='config'\nconfig='c.json'\ntrainable='all'\n\
                    positional_embedding_scale=1.0\n[data]\ntrain='synthetic:seed=1,n=4'\n";
        let c = TrainConfig::from_toml_str(
            &format!(
                "{base}caption='first'\npoint_prompts=0.3\n[optim]\ncaption_loss_weight=0.0\n\
                 mask_outputs='both'\n"
            ),
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(c.data.caption, "first");
        assert_eq!(c.data.point_prompts, 0.3);
        assert_eq!(c.optim.caption_loss_weight, 0.0);
        assert_eq!(c.optim.mask_outputs, "both");
        assert_eq!(c.model.positional_embedding_scale, Some(1.0));
        // Defaults: the official recipe.
        let d = TrainConfig::from_toml_str(base, Path::new("/x")).unwrap();
        assert_eq!(d.data.caption, "random");
        assert_eq!(d.data.point_prompts, 0.0);
        assert_eq!(d.optim.caption_loss_weight, 1.0);
        assert_eq!(d.optim.mask_outputs, "single");
        for (extra, key) in [
            ("caption='any'\n", "data.caption"),
            ("point_prompts=1.5\n", "data.point_prompts"),
            ("[optim]\nmask_outputs='three'\n", "optim.mask_outputs"),
            ("[optim]\ncaption_loss_weight=-1.0\n", "caption_loss_weight"),
        ] {
            let e =
                TrainConfig::from_toml_str(&format!("{base}{extra}"), Path::new(".")).unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
        // Masks only needs SAM parts that train.
        let e = TrainConfig::from_toml_str(
            "[model]\ninit='config'\nconfig='c'\n[data]\ntrain='x'\n[optim]\n\
             caption_loss_weight=0.0\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("caption_loss_weight"), "{e}");
    }

    #[test]
    fn env_expansion_and_spec_paths() {
        std::env::set_var("SCA_TRAINER_TEST_DIR", "/data");
        assert_eq!(
            expand_env("a=${SCA_TRAINER_TEST_DIR}/x b=${SCA_UNSET_VAR_XYZ:-d}").unwrap(),
            "a=/data/x b=d"
        );
        assert!(expand_env("${SCA_UNSET_VAR_XYZ}").is_err());
        let b = Path::new("/cfg");
        assert_eq!(resolve_spec_path("jsonl:a.jsonl", b), "jsonl:/cfg/a.jsonl");
        assert_eq!(
            resolve_spec_path("vg:vg,split=test", b),
            "vg:/cfg/vg,split=test"
        );
        assert_eq!(resolve_spec_path("vg:/abs", b), "vg:/abs");
        assert_eq!(
            resolve_spec_path("synthetic:seed=1,n=2", b),
            "synthetic:seed=1,n=2"
        );
    }
}
