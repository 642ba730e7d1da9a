//! Where a training run's model comes from (an official checkpoint, separate SAM + GPT-2
//! checkpoints with a fresh mixer, or a config alone) and how a model directory is written in
//! the official layout that `Sca::load` reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sca_core::config::ScaConfig;
use sca_core::weights::Weights;
use sca_core::ScaModel;
use serde_json::{json, Value};

use crate::config::{InitKind, ModelConfig};
use crate::params::{is_mixer_key, ParamStore, RandomInit, Source, TrainableSet};
use crate::{Error, Result};

/// Tokenizer files copied into every written model directory (those that exist).
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Everything needed to build the model and to write it back out.
pub struct ModelSetup {
    pub config: ScaConfig,
    /// The config as JSON (the full official document, extra fields kept).
    pub config_json: Value,
    /// Directory holding the tokenizer files.
    pub tokenizer_dir: PathBuf,
    /// `generation_config.json` to write (the source's, or transformers' defaults).
    pub generation_json: Value,
    /// `preprocessor_config.json` to write (the source's, or SAM's for the input size).
    pub preprocessor_json: Value,
    /// Initial weights.
    pub source: Source,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

fn parse_config(v: &Value, origin: &Path) -> Result<ScaConfig> {
    Ok(ScaConfig::from_json(&v.to_string(), origin)?)
}

fn weights_map(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let w = Weights::load(dir)?;
    Ok(w.iter().map(|(k, t)| (k.to_string(), t.clone())).collect())
}

fn optional_json(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// SAM's image processor for input side `s` (what `SamImageProcessor` saves).
pub fn default_preprocessor_json(s: usize) -> Value {
    json!({
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_pad": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "SamImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "pad_size": {"height": s, "width": s},
        "processor_class": "SamProcessor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": s}
    })
}

fn default_generation_json(cfg: &ScaConfig) -> Value {
    json!({
        "bos_token_id": cfg.text_config.bos_token_id,
        "eos_token_id": cfg.text_config.eos_token_id,
        "max_length": 20,
    })
}

fn initializer_range(v: &Value) -> f64 {
    v.get("initializer_range")
        .and_then(Value::as_f64)
        .unwrap_or(0.02)
}

impl ModelSetup {
    /// Reads the configured starting point.
    pub fn prepare(m: &ModelConfig) -> Result<ModelSetup> {
        let need = |p: &Option<PathBuf>, key: &str| -> Result<PathBuf> {
            p.clone()
                .ok_or_else(|| Error::Config(format!("model.{key} is required")))
        };
        let setup = match m.init {
            InitKind::Checkpoint => {
                let dir = need(&m.checkpoint, "checkpoint")?;
                Self::from_checkpoint(&dir, m.tokenizer.as_deref())?
            }
            InitKind::SamGpt2 => {
                let sam = need(&m.sam, "sam")?;
                let gpt2 = need(&m.gpt2, "gpt2")?;
                Self::from_sam_gpt2(&sam, &gpt2, m)?
            }
            InitKind::Config => {
                let path = need(&m.config, "config")?;
                let config_json = read_json(&path)?;
                let config = parse_config(&config_json, &path)?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let init = RandomInit {
                    seed: m.init_seed,
                    initializer_range: initializer_range(&config_json),
                    gpt2_layers: config.text_config.n_layer,
                    vision_hidden: config.vision_config.hidden_size,
                    positional_embedding_scale: m.positional_embedding_scale,
                    torch_defaults: m.init_scheme == "torch",
                };
                ModelSetup {
                    generation_json: optional_json(&dir.join("generation_config.json"))?
                        .unwrap_or_else(|| default_generation_json(&config)),
                    preprocessor_json: optional_json(&dir.join("preprocessor_config.json"))?
                        .unwrap_or_else(|| {
                            default_preprocessor_json(config.vision_config.image_size)
                        }),
                    tokenizer_dir: m.tokenizer.clone().unwrap_or(dir),
                    config,
                    config_json,
                    source: Source {
                        tensors: BTreeMap::new(),
                        init_missing: Some((init, |_| true)),
                        origin: path.display().to_string(),
                    },
                }
            }
        };
        let mut setup = setup;
        if let Some(lm) = &m.language_model {
            setup.replace_language_model(lm, m)?;
        }
        if m.mixer_from_sam_decoder {
            setup.mixer_from_sam_decoder()?;
        }
        // Fail early on a missing tokenizer.
        sca_core::tokenizer::Tokenizer::from_dir(&setup.tokenizer_dir)?;
        Ok(setup)
    }

    /// An official SCA checkpoint, a trainer output directory, or an `export` bundle (its
    /// weights dequantized to f32, see [`sca_core::bundle::Bundle::official_tensors`]).
    pub fn from_checkpoint(dir: &Path, tokenizer: Option<&Path>) -> Result<ModelSetup> {
        if sca_core::bundle::is_bundle(dir) {
            return Self::from_bundle(dir, tokenizer);
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                msg: "no config.json (expected an SCA checkpoint directory)".into(),
            });
        }
        let config_json = read_json(&cfg_path)?;
        let config = parse_config(&config_json, &cfg_path)?;
        Ok(ModelSetup {
            generation_json: optional_json(&dir.join("generation_config.json"))?
                .unwrap_or_else(|| default_generation_json(&config)),
            preprocessor_json: optional_json(&dir.join("preprocessor_config.json"))?
                .unwrap_or_else(|| default_preprocessor_json(config.vision_config.image_size)),
            tokenizer_dir: tokenizer
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf()),
            source: Source {
                tensors: weights_map(dir)?,
                init_missing: None,
                origin: dir.display().to_string(),
            },
            config,
            config_json,
        })
    }

    fn from_bundle(dir: &Path, tokenizer: Option<&Path>) -> Result<ModelSetup> {
        let b = sca_core::bundle::Bundle::from_dir(dir)?;
        let config = b.config()?;
        let m = &b.manifest;
        Ok(ModelSetup {
            generation_json: m
                .generation
                .clone()
                .unwrap_or_else(|| default_generation_json(&config)),
            preprocessor_json: m
                .preprocessor
                .clone()
                .unwrap_or_else(|| default_preprocessor_json(config.vision_config.image_size)),
            tokenizer_dir: tokenizer
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf()),
            source: Source {
                tensors: b.official_tensors()?.into_iter().collect(),
                init_missing: None,
                origin: format!("{} ({} bundle, dequantized)", dir.display(), m.quant),
            },
            config_json: m.config.clone(),
            config,
        })
    }

    /// HF SAM (`SamModel`: `vision_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`,
    /// `shared_image_embedding.*`) + HF GPT-2 (`GPT2LMHeadModel` or `GPT2Model` keys) with a
    /// freshly initialised mixer, projection and task tokens.
    pub fn from_sam_gpt2(sam: &Path, gpt2: &Path, m: &ModelConfig) -> Result<ModelSetup> {
        let sam_cfg = read_json(&sam.join("config.json"))?;
        let gpt_cfg = read_json(&gpt2.join("config.json"))?;
        let field = |v: &Value, k: &str, p: &Path| -> Result<Value> {
            v.get(k).cloned().ok_or_else(|| {
                Error::Config(format!("{}: no `{k}` (expected a SAM config)", p.display()))
            })
        };
        let sam_path = sam.join("config.json");
        let mut decoder = field(&sam_cfg, "mask_decoder_config", &sam_path)?;
        if let Value::Object(o) = &mut decoder {
            o.insert("additional_num_hidden_layers".into(), json!(m.mixer_layers));
            o.insert("num_caption_tokens".into(), json!(m.num_caption_tokens));
            o.insert("num_caption_heads".into(), json!(1));
        }
        let range = initializer_range(&sam_cfg);
        let config_json = json!({
            "_name_or_path": sam_cfg.get("_name_or_path").cloned().unwrap_or(json!("")),
            "architectures": ["ScaMultitaskV2Model"],
            "model_type": "sca",
            "initializer_range": range,
            "num_task_tokens": m.num_task_tokens,
            "tie_word_embeddings": true,
            "use_decoder_only_language_model": true,
            "vl_projector_type": "linear",
            "vl_projector_norm_type": "none",
            "torch_dtype": "float32",
            "vision_config": field(&sam_cfg, "vision_config", &sam_path)?,
            "prompt_encoder_config": field(&sam_cfg, "prompt_encoder_config", &sam_path)?,
            "mask_caption_decoder_config": decoder,
            "text_config": gpt_cfg,
        });
        let origin = PathBuf::from(format!("{} + {}", sam.display(), gpt2.display()));
        let config = parse_config(&config_json, &origin)?;
        let mut tensors = weights_map(sam)?;
        for (k, t) in weights_map(gpt2)? {
            tensors.insert(gpt2_key(&k), t);
        }
        let init = RandomInit {
            seed: m.init_seed,
            initializer_range: range,
            gpt2_layers: config.text_config.n_layer,
            vision_hidden: config.vision_config.hidden_size,
            positional_embedding_scale: m.positional_embedding_scale,
            torch_defaults: m.init_scheme == "torch",
        };
        Ok(ModelSetup {
            generation_json: optional_json(&gpt2.join("generation_config.json"))?
                .unwrap_or_else(|| default_generation_json(&config)),
            preprocessor_json: optional_json(&sam.join("preprocessor_config.json"))?
                .unwrap_or_else(|| default_preprocessor_json(config.vision_config.image_size)),
            tokenizer_dir: m.tokenizer.clone().unwrap_or_else(|| gpt2.to_path_buf()),
            source: Source {
                tensors,
                init_missing: Some((init, is_mixer_key)),
                origin: origin.display().to_string(),
            },
            config,
            config_json,
        })
    }

    /// Swaps in another GPT-2 (`model.language_model`): `lm` is a GPT-2 `config.json`, an HF
    /// GPT-2 checkpoint directory, or an SCA model directory (e.g. an earlier student: its
    /// GPT-2, projection, task tokens and mixer continue). Weights come from that directory,
    /// else from the source's LM by even layer selection when the widths match, else random;
    /// `language_project` and the task tokens are kept only when the width is unchanged; the
    /// mixer is kept unless `model.fresh_mixer`. SAM is untouched.
    pub fn replace_language_model(&mut self, lm: &Path, m: &ModelConfig) -> Result<()> {
        let (cfg_path, weights_dir) = if lm.is_dir() {
            (lm.join("config.json"), Some(lm))
        } else {
            (lm.to_path_buf(), None)
        };
        let mut text = read_json(&cfg_path)?;
        // An SCA model (e.g. an earlier student) names the GPT-2 part `text_config`.
        let sca_dir = text.get("text_config").is_some();
        if let Some(t) = text.get("text_config") {
            text = t.clone();
        }
        let mut config_json = self.config_json.clone();
        config_json["text_config"] = text;
        let config = parse_config(&config_json, &cfg_path)?;
        let (old, new) = (&self.config.text_config, &config.text_config);
        if old.vocab_size != new.vocab_size {
            return Err(Error::Config(format!(
                "{}: vocab_size {} differs from the source's {} (the tokenizer is shared)",
                cfg_path.display(),
                new.vocab_size,
                old.vocab_size
            )));
        }
        let tensors = &mut self.source.tensors;
        let old_lm: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| k.starts_with("language_model."))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        tensors.retain(|k, _| !k.starts_with("language_model."));
        if new.n_embd != old.n_embd {
            tensors.retain(|k, _| {
                !k.starts_with("language_project.") && !k.starts_with("task_tokens.")
            });
        }
        if m.fresh_mixer {
            tensors.retain(|k, _| !is_mixer_key(k));
        }
        let how = if let Some(dir) = weights_dir.filter(|d| has_weights(d)) {
            for (k, t) in weights_map(dir)? {
                if !sca_dir {
                    tensors.insert(gpt2_key(&k), t);
                } else if k.starts_with("language_model.") || is_mixer_key(&k) {
                    // An SCA model continues as it was: its GPT-2, projection, task tokens
                    // and mixer (unless `fresh_mixer`); SAM stays the source's.
                    if !(m.fresh_mixer && is_mixer_key(&k)) {
                        tensors.insert(k, t);
                    }
                }
            }
            format!("weights of {}", dir.display())
        } else if new.n_embd == old.n_embd && new.n_positions <= old.n_positions {
            let picked = select_layers(old.n_layer, new.n_layer);
            for (k, t) in &old_lm {
                let Some(rest) = k.strip_prefix("language_model.transformer.h.") else {
                    let t = if k == "language_model.transformer.wpe.weight" {
                        t.narrow(0, 0, new.n_positions)?
                    } else {
                        t.clone()
                    };
                    tensors.insert(k.clone(), t);
                    continue;
                };
                let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let i: usize = i.parse().unwrap_or(usize::MAX);
                for (j, _) in picked.iter().enumerate().filter(|(_, &src)| src == i) {
                    tensors.insert(
                        format!("language_model.transformer.h.{j}.{tail}"),
                        t.clone(),
                    );
                }
            }
            format!("layers {picked:?} of the source's GPT-2")
        } else {
            "random".to_string()
        };
        tracing::info!(
            n_layer = new.n_layer,
            n_embd = new.n_embd,
            init = %how,
            "language model replaced"
        );
        let init = RandomInit {
            seed: m.init_seed,
            initializer_range: initializer_range(&config_json),
            gpt2_layers: new.n_layer,
            vision_hidden: config.vision_config.hidden_size,
            positional_embedding_scale: m.positional_embedding_scale,
            torch_defaults: m.init_scheme == "torch",
        };
        self.source.init_missing = Some((init, |k| {
            k.starts_with("language_model.") || is_mixer_key(k)
        }));
        self.source.origin = format!(
            "{} with the language model of {}",
            self.source.origin,
            lm.display()
        );
        self.config = config;
        self.config_json = config_json;
        Ok(())
    }

    /// Replaces the mixer's transformer weights with copies of SAM's mask-decoder transformer
    /// (`model.mixer_from_sam_decoder`): mixer layer `i` from decoder layer `i mod depth`, and
    /// the final token-to-image attention and its norm.
    pub fn mixer_from_sam_decoder(&mut self) -> Result<()> {
        let m = &self.config.mask_caption_decoder_config;
        let (depth, mixer) = (m.num_hidden_layers, m.additional_num_hidden_layers);
        let tensors = &mut self.source.tensors;
        let src: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| k.starts_with("mask_decoder.transformer."))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        if src.is_empty() || depth == 0 {
            return Err(Error::Config(format!(
                "model.mixer_from_sam_decoder: {} has no mask-decoder transformer weights",
                self.source.origin
            )));
        }
        tensors.retain(|k, _| !k.starts_with("mask_decoder.additional_transformer."));
        // The caption queries start as the mask tokens (cycled) plus their own values, so that
        // the copied attention treats them as it treats the mask tokens: it finds the object.
        if let (Some(mask), Some(cap)) = (
            tensors.get("mask_decoder.mask_tokens.weight").cloned(),
            tensors.get("mask_decoder.caption_tokens.weight").cloned(),
        ) {
            let (q, k) = (cap.dim(0)?, mask.dim(0)?);
            if k > 0 && mask.dim(1)? == cap.dim(1)? {
                let idx: Vec<u32> = (0..q).map(|i| (i % k) as u32).collect();
                let idx = Tensor::from_vec(idx, q, mask.device())?;
                let init = (mask.index_select(&idx, 0)? + cap)?;
                tensors.insert("mask_decoder.caption_tokens.weight".into(), init);
            }
        }
        for (k, t) in src {
            let rest = &k["mask_decoder.transformer.".len()..];
            match rest.strip_prefix("layers.") {
                Some(layer) => {
                    let (i, tail) = layer
                        .split_once('.')
                        .ok_or_else(|| Error::Config(format!("unexpected decoder key {k}")))?;
                    let i: usize = i
                        .parse()
                        .map_err(|_| Error::Config(format!("unexpected decoder key {k}")))?;
                    for j in (0..mixer).filter(|j| j % depth == i) {
                        tensors.insert(
                            format!("mask_decoder.additional_transformer.layers.{j}.{tail}"),
                            t.clone(),
                        );
                    }
                }
                None => {
                    tensors.insert(format!("mask_decoder.additional_transformer.{rest}"), t);
                }
            }
        }
        Ok(())
    }

    /// Builds the model (consumes the initial weights).
    pub fn build(
        &mut self,
        trainable: TrainableSet,
        device: &Device,
    ) -> Result<(ScaModel, ParamStore)> {
        let source = std::mem::replace(
            &mut self.source,
            Source {
                tensors: BTreeMap::new(),
                init_missing: None,
                origin: String::new(),
            },
        );
        ParamStore::build(&self.config, source, trainable, device)
    }

    /// The side files of a model directory, without weights.
    pub fn files(&self) -> Result<ModelFiles> {
        // Read now: the tokenizer directory may be a checkpoint that rotation deletes later.
        let mut tokenizer_files = Vec::new();
        for name in TOKENIZER_FILES {
            let src = self.tokenizer_dir.join(name);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
                tokenizer_files.push((name.to_string(), bytes));
            }
        }
        if tokenizer_files.is_empty() {
            return Err(Error::Config(format!(
                "no tokenizer files ({}) in {}",
                TOKENIZER_FILES.join(", "),
                self.tokenizer_dir.display()
            )));
        }
        Ok(ModelFiles {
            config_json: self.config_json.clone(),
            tokenizer_files,
            generation_json: self.generation_json.clone(),
            preprocessor_json: self.preprocessor_json.clone(),
        })
    }
}

/// An HF GPT-2 key (`GPT2LMHeadModel` or `GPT2Model` layout) as an SCA key.
fn gpt2_key(k: &str) -> String {
    if k.starts_with("transformer.") || k.starts_with("lm_head.") {
        format!("language_model.{k}")
    } else {
        format!("language_model.transformer.{k}")
    }
}

fn has_weights(dir: &Path) -> bool {
    [
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// `n` of `total` layers, evenly spaced, first and last included (layer selection, as
/// DistilBERT-style students are initialised).
///
/// ```
/// use trainer::model::select_layers;
/// assert_eq!(select_layers(12, 6), [0, 2, 4, 7, 9, 11]);
/// assert_eq!(select_layers(6, 3), [0, 3, 5]);
/// assert_eq!(select_layers(2, 1), [0]);
/// ```
pub fn select_layers(total: usize, n: usize) -> Vec<usize> {
    match (total, n) {
        (_, 0) | (0, _) => Vec::new(),
        (_, 1) => vec![0],
        _ => (0..n)
            .map(|j| ((j * (total - 1)) as f64 / (n - 1) as f64).round() as usize)
            .collect(),
    }
}

/// What a model directory holds besides the weights.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config_json: Value,
    /// The tokenizer files (name, contents) copied into every written model directory.
    pub tokenizer_files: Vec<(String, Vec<u8>)>,
    pub generation_json: Value,
    pub preprocessor_json: Value,
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Saves tensors as safetensors (moved to the CPU first).
pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let cpu: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Writes `dir/` in the official layout: `model.safetensors` (official keys, tied `lm_head`
/// omitted as `save_pretrained` does), `config.json`, tokenizer files,
/// `generation_config.json`, `preprocessor_config.json`. `dir` must exist.
pub fn write_model_dir(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    files: &ModelFiles,
) -> Result<()> {
    save_safetensors(&dir.join("model.safetensors"), tensors)?;
    write_json(&dir.join("config.json"), &files.config_json)?;
    write_json(&dir.join("generation_config.json"), &files.generation_json)?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &files.preprocessor_json,
    )?;
    for (name, bytes) in &files.tokenizer_files {
        let dst = dir.join(name);
        std::fs::write(&dst, bytes).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}
