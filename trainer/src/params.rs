//! Model parameters for training: which keys train ([`TrainableSet`]), building a
//! [`ScaModel`] whose trainable weights are candle `Var`s ([`ParamStore::build`]), random
//! initialisation with the official (HF) init ranges, and reading/writing the official key
//! layout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use sca_core::config::ScaConfig;
use sca_core::ScaModel;

use crate::rng::SplitMix;
use crate::{Error, Result};

/// Groups of parameters that can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrainableSet {
    /// Mixer, caption queries, projection, task tokens (always on).
    pub mixer: bool,
    /// GPT-2 (`language_model.*`).
    pub lm: bool,
    /// SAM's mask decoder (`mask_decoder.*` outside the mixer).
    pub sam_decoder: bool,
    /// Everything else too: SAM image and prompt encoders (buffers never train).
    pub all: bool,
}

impl TrainableSet {
    /// Parses `mixer`, `+lm`, `mixer+lm`, `+sam_decoder`, `+lm+sam_decoder`, `all`.
    ///
    /// ```
    /// use trainer::params::TrainableSet;
    /// let s = TrainableSet::parse("+lm").unwrap();
    /// assert!(s.mixer && s.lm && !s.sam_decoder);
    /// assert!(s.contains("language_model.transformer.h.0.ln_1.weight"));
    /// assert!(!s.contains("vision_encoder.pos_embed"));
    /// assert!(TrainableSet::parse("+bogus").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Self> {
        let mut s = TrainableSet {
            mixer: true,
            ..Default::default()
        };
        let spec = spec.trim();
        if spec == "all" {
            return Ok(TrainableSet {
                mixer: true,
                lm: true,
                sam_decoder: true,
                all: true,
            });
        }
        for part in spec.split('+').map(str::trim) {
            match part {
                "" | "mixer" => {}
                "lm" => s.lm = true,
                "sam_decoder" => s.sam_decoder = true,
                other => {
                    return Err(Error::Config(format!(
                        "model.trainable: unknown part {other:?} in {spec:?} (use mixer, +lm, \
                         +sam_decoder or all)"
                    )))
                }
            }
        }
        Ok(s)
    }

    /// Whether SAM weights (whose outputs the mask losses supervise) train.
    pub fn trains_sam(&self) -> bool {
        self.sam_decoder || self.all
    }

    /// Whether the parameter `key` (official layout) trains.
    pub fn contains(&self, key: &str) -> bool {
        if is_buffer(key) {
            return false;
        }
        if is_mixer_key(key) {
            return self.mixer;
        }
        if key.starts_with("language_model.") {
            return self.lm || self.all;
        }
        if key.starts_with("mask_decoder.") {
            return self.sam_decoder || self.all;
        }
        self.all
    }
}

/// The official trainable set (`config_parameters()` in the official code).
pub fn is_mixer_key(key: &str) -> bool {
    key.starts_with("mask_decoder.additional_transformer.")
        || key.starts_with("mask_decoder.caption_tokens.")
        || key.starts_with("language_project.")
        || key.starts_with("task_tokens.")
}

/// Registered buffers (never trained).
pub fn is_buffer(key: &str) -> bool {
    key.ends_with("positional_embedding")
}

/// Whether AdamW applies weight decay to `key`: not to biases nor to the parameters of
/// `nn.LayerNorm` modules (HF Trainer's `get_decay_parameter_names`). SAM's own `SamLayerNorm`
/// (`upscale_layer_norm`, `neck.layer_norm*`, `mask_embed.layer_norm*`) is not an
/// `nn.LayerNorm`, so its weights do get decay, as in the official runs.
///
/// ```
/// use trainer::params::decays;
/// assert!(!decays("mask_decoder.additional_transformer.layers.0.mlp.lin1.bias"));
/// assert!(!decays("mask_decoder.additional_transformer.layers.0.layer_norm1.weight"));
/// assert!(!decays("language_model.transformer.h.0.ln_1.weight"));
/// assert!(decays("mask_decoder.upscale_layer_norm.weight"));
/// assert!(decays("task_tokens.weight"));
/// ```
pub fn decays(key: &str) -> bool {
    if key.contains("bias") {
        return false;
    }
    let module = key.rsplit_once('.').map(|(m, _)| m).unwrap_or(key);
    let last = module.rsplit('.').next().unwrap_or(module);
    let sam_ln = last == "upscale_layer_norm"
        || module.contains(".neck.")
        || module.contains(".mask_embed.");
    let is_ln = last.starts_with("layer_norm") || matches!(last, "ln_1" | "ln_2" | "ln_f");
    !is_ln || sam_ln
}

/// Random initialisation as HF `_init_weights` does for SCA's modules: Linear / conv /
/// embedding weights N(0, `initializer_range`), GPT-2's residual projections
/// N(0, range/sqrt(2·n_layer)), biases 0, LayerNorm 1/0, SAM's absolute and relative position
/// tables 0, the Fourier buffer `scale·N(0,1)` (`scale`: transformers' `vision_hidden/2` unless
/// `positional_embedding_scale` says otherwise). Each key draws from its own stream,
/// so the values do not depend on construction order.
#[derive(Debug, Clone)]
pub struct RandomInit {
    pub seed: u64,
    pub initializer_range: f64,
    pub gpt2_layers: usize,
    pub vision_hidden: usize,
    /// Scale of the Fourier buffer; `None` = transformers' `vision_hidden / 2`.
    pub positional_embedding_scale: Option<f64>,
    /// SAM's parts, the mixer and `language_project` as PyTorch initialises them (see
    /// [`RandomInit::torch_std`]) instead of HF's N(0, `initializer_range`).
    pub torch_defaults: bool,
}

impl RandomInit {
    /// The initial value of `key` with `shape` (f32, CPU).
    pub fn value(&self, key: &str, shape: &Shape) -> Result<Tensor> {
        let n = shape.elem_count();
        let module = key.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
        let last = module.rsplit('.').next().unwrap_or("");
        let ln = last.contains("layer_norm") || matches!(last, "ln_1" | "ln_2" | "ln_f");
        let constant = |v: f32| Tensor::full(v, shape, &Device::Cpu);
        if key.ends_with(".bias") {
            return Ok(constant(0.0)?);
        }
        if ln && key.ends_with(".weight") {
            return Ok(constant(1.0)?);
        }
        if key.ends_with("pos_embed") || key.ends_with("rel_pos_h") || key.ends_with("rel_pos_w") {
            return Ok(constant(0.0)?);
        }
        if let Some(std) = self.torch_std(key, shape) {
            let mut rng = SplitMix::derive(self.seed, key);
            let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            return Ok(Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        let std = if is_buffer(key) {
            self.positional_embedding_scale
                .unwrap_or((self.vision_hidden / 2) as f64)
        } else if key.starts_with("language_model.") && key.ends_with("c_proj.weight") {
            self.initializer_range / ((2 * self.gpt2_layers.max(1)) as f64).sqrt()
        } else {
            self.initializer_range
        };
        let mut rng = SplitMix::derive(self.seed, key);
        let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

impl RandomInit {
    /// With `torch_defaults`, the standard deviation PyTorch's own initialisation gives a
    /// weight of SAM, the mixer or `language_project` (what SAM was trained from): `nn.Linear`
    /// and convolutions `kaiming_uniform(a=√5)`, i.e. U(±1/√fan_in) with std 1/√(3·fan_in)
    /// (drawn here as a normal of that std), `fan_in` = all dims but the first (PyTorch's
    /// rule, transposed convolutions included); `nn.Embedding` tables N(0, 1). GPT-2 and the
    /// task tokens (GPT-2 inputs) keep HF's init. HF's N(0, 0.02) everywhere leaves SAM's
    /// attention paths nearly closed from scratch (outputs ~2% of their inputs), which stalls
    /// the caption path. `None`: HF's rule applies.
    fn torch_std(&self, key: &str, shape: &Shape) -> Option<f64> {
        if !self.torch_defaults
            || key.starts_with("language_model.")
            || key.starts_with("task_tokens.")
            || !key.ends_with(".weight")
        {
            return None;
        }
        let module = key.strip_suffix(".weight")?;
        let last = module.rsplit('.').next().unwrap_or("");
        if last.contains("layer_norm") {
            return None;
        }
        let embedding = matches!(
            last,
            "iou_token" | "mask_tokens" | "caption_tokens" | "no_mask_embed" | "not_a_point_embed"
        ) || module.contains("point_embed.");
        if embedding {
            return Some(1.0);
        }
        let dims = shape.dims();
        if dims.len() < 2 {
            return None;
        }
        let fan_in: usize = dims[1..].iter().product();
        Some(1.0 / (3.0 * fan_in.max(1) as f64).sqrt())
    }
}

/// One parameter or buffer of the model.
#[derive(Clone)]
pub enum Entry {
    Trainable(Var),
    Frozen(Tensor),
}

impl Entry {
    /// The value (for a `Var`, the tracked tensor itself).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Entry::Trainable(v) => v.as_tensor(),
            Entry::Frozen(t) => t,
        }
    }
}

/// Random initialisation plus which missing keys it may fill.
pub type InitMissing = (RandomInit, fn(&str) -> bool);

/// Where the weights of [`ParamStore::build`] come from.
pub struct Source {
    /// Tensors by official key (f32; any device, moved as needed).
    pub tensors: BTreeMap<String, Tensor>,
    /// Keys absent from `tensors` for which this returns true are initialised randomly.
    pub init_missing: Option<InitMissing>,
    /// Description for error messages (a path).
    pub origin: String,
}

/// Every tensor the model read, by official key, with the trainable ones as `Var`s.
pub struct ParamStore {
    entries: BTreeMap<String, Entry>,
}

impl ParamStore {
    /// Builds the model from `source`: keys in `trainable` become `Var`s. Fails on a missing or
    /// mis-shaped key, and on source keys the model does not read (except GPT-2's causal-mask
    /// buffers, the prompt encoder's PE alias and the tied `lm_head`).
    pub fn build(
        config: &ScaConfig,
        source: Source,
        trainable: TrainableSet,
        device: &Device,
    ) -> Result<(ScaModel, ParamStore)> {
        let backend = StoreBackend {
            source: Arc::new(source.tensors),
            init: source.init_missing,
            trainable,
            origin: source.origin.clone(),
            out: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let out = backend.out.clone();
        let src = backend.source.clone();
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = ScaModel::new(config, vb).map_err(|e| Error::Checkpoint {
            path: source.origin.clone().into(),
            msg: e.to_string(),
        })?;
        let entries = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
        let unused: Vec<&String> = src
            .keys()
            .filter(|k| !entries.contains_key(*k) && !sca_core::weights::is_ignorable_key(k))
            .collect();
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(8).map(|s| s.as_str()).collect();
            return Err(Error::Checkpoint {
                path: source.origin.into(),
                msg: format!(
                    "{} weight(s) not used by the model: {}",
                    unused.len(),
                    shown.join(", ")
                ),
            });
        }
        Ok((model, ParamStore { entries }))
    }

    /// The trainable parameters, sorted by key.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Trainable(v) => Some((k.clone(), v.clone())),
                Entry::Frozen(_) => None,
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> usize {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Trainable(v) => Some(v.elem_count()),
                Entry::Frozen(_) => None,
            })
            .sum()
    }

    /// All entries by key.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Detached copies of every tensor (official keys), e.g. to save or to build an inference
    /// model that does not track gradients.
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (k, e) in &self.entries {
            out.insert(k.clone(), e.tensor().detach());
        }
        Ok(out)
    }

    /// Sets every trainable value from `values` (e.g. to resume). All must be present with the
    /// same shapes.
    pub fn load_trainable(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        for (k, e) in &self.entries {
            if let Entry::Trainable(v) = e {
                let t = values.get(k).ok_or_else(|| Error::Checkpoint {
                    path: "<values>".into(),
                    msg: format!("missing trainable `{k}`"),
                })?;
                v.set(&t.to_device(v.device())?.to_dtype(v.dtype())?)?;
            }
        }
        Ok(())
    }
}

struct StoreBackend {
    source: Arc<BTreeMap<String, Tensor>>,
    init: Option<InitMissing>,
    trainable: TrainableSet,
    origin: String,
    out: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = out.get(name) {
            let t = e.tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "weight `{name}` requested with shapes {:?} and {:?}",
                    t.dims(),
                    s.dims()
                )
            }
            return Ok(t.clone());
        }
        let t = match self.source.get(name) {
            Some(t) => {
                if t.shape() != &s {
                    candle_core::bail!(
                        "weight `{name}` in {} has shape {:?}, expected {:?}",
                        self.origin,
                        t.dims(),
                        s.dims()
                    )
                }
                t.clone()
            }
            None => match &self.init {
                Some((init, allow)) if allow(name) => init
                    .value(name, &s)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
                _ => candle_core::bail!(
                    "missing weight `{name}` (expected shape {:?}) in {}",
                    s.dims(),
                    self.origin
                ),
            },
        };
        let t = t.to_dtype(dtype)?.to_device(dev)?;
        let entry = if self.trainable.contains(name) {
            Entry::Trainable(Var::from_tensor(&t)?)
        } else {
            Entry::Frozen(t)
        };
        let res = entry.tensor().clone();
        out.insert(name.to_string(), entry);
        Ok(res)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unshaped weight `{name}` requested")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // The official LM ties its head to `wte`; a separate head would untie them in training.
        if name.ends_with("lm_head.weight") {
            return false;
        }
        self.source.contains_key(name)
    }
}

/// The keys a model of `config` reads, with their shapes (built once with random values on the
/// CPU).
pub fn model_keys(config: &ScaConfig) -> Result<BTreeSet<String>> {
    let init = RandomInit {
        seed: 0,
        initializer_range: 0.02,
        gpt2_layers: config.text_config.n_layer,
        vision_hidden: config.vision_config.hidden_size,
        positional_embedding_scale: None,
        torch_defaults: false,
    };
    let (_, store) = ParamStore::build(
        config,
        Source {
            tensors: BTreeMap::new(),
            init_missing: Some((init, |_| true)),
            origin: "<keys>".into(),
        },
        TrainableSet::default(),
        &Device::Cpu,
    )?;
    Ok(store.entries.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_sets() {
        let m = TrainableSet::parse("mixer").unwrap();
        for k in [
            "mask_decoder.additional_transformer.layers.0.self_attn.q_proj.weight",
            "mask_decoder.caption_tokens.weight",
            "language_project.bias",
            "task_tokens.weight",
        ] {
            assert!(m.contains(k), "{k}");
        }
        for k in [
            "mask_decoder.iou_token.weight",
            "language_model.transformer.wte.weight",
            "vision_encoder.pos_embed",
            "shared_image_embedding.positional_embedding",
        ] {
            assert!(!m.contains(k), "{k}");
        }
        let s = TrainableSet::parse("+sam_decoder").unwrap();
        assert!(s.contains("mask_decoder.iou_token.weight"));
        assert!(!s.contains("vision_encoder.pos_embed"));
        let a = TrainableSet::parse("all").unwrap();
        assert!(a.contains("vision_encoder.pos_embed"));
        assert!(!a.contains("shared_image_embedding.positional_embedding"));
        let b = TrainableSet::parse("+lm+sam_decoder").unwrap();
        assert!(b.lm && b.sam_decoder && !b.all);
    }

    #[test]
    fn init_rules() {
        let init = RandomInit {
            seed: 1,
            initializer_range: 0.02,
            gpt2_layers: 2,
            vision_hidden: 48,
            positional_embedding_scale: None,
            torch_defaults: false,
        };
        let shape = Shape::from((4, 256));
        let ln = init
            .value(
                "mask_decoder.additional_transformer.layers.0.layer_norm1.weight",
                &Shape::from(8),
            )
            .unwrap();
        assert_eq!(ln.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
        let w = init
            .value("mask_decoder.caption_tokens.weight", &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.003 && (std - 0.02).abs() < 0.002,
            "{mean} {std}"
        );
        let p = init
            .value("language_model.transformer.h.0.mlp.c_proj.weight", &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let std_p = (p.iter().map(|v| v * v).sum::<f32>() / p.len() as f32).sqrt();
        assert!((std_p - 0.01).abs() < 0.0015, "{std_p}");
        // deterministic per key
        let again = init
            .value("mask_decoder.caption_tokens.weight", &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(w, again);
    }

    #[test]
    fn torch_default_init() {
        let init = RandomInit {
            seed: 1,
            initializer_range: 0.02,
            gpt2_layers: 2,
            vision_hidden: 48,
            positional_embedding_scale: None,
            torch_defaults: true,
        };
        let std = |key: &str, shape: &[usize]| {
            let v = init
                .value(key, &Shape::from(shape.to_vec()))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt() as f64
        };
        let close = |got: f64, want: f64| {
            assert!((got - want).abs() < 0.08 * want, "std {got}, want {want}")
        };
        // nn.Linear(64 -> 256): 1/sqrt(3*64)
        close(
            std(
                "mask_decoder.transformer.layers.0.mlp.lin1.weight",
                &[256, 64],
            ),
            1.0 / 192f64.sqrt(),
        );
        // ConvTranspose2d weight (in 64, out 16, 2, 2): PyTorch's fan_in = 16*2*2
        close(
            std("mask_decoder.upscale_conv1.weight", &[64, 16, 2, 2]),
            1.0 / 192f64.sqrt(),
        );
        // nn.Embedding: N(0, 1)
        close(std("mask_decoder.caption_tokens.weight", &[8, 64]), 1.0);
        close(std("prompt_encoder.point_embed.2.weight", &[1, 512]), 1.0);
        // GPT-2 and its inputs keep HF's rule
        close(
            std(
                "language_model.transformer.h.0.mlp.c_fc.weight",
                &[128, 512],
            ),
            0.02,
        );
        close(std("task_tokens.weight", &[12, 128]), 0.02);
        let ln = init
            .value("vision_encoder.neck.layer_norm1.weight", &Shape::from(8))
            .unwrap();
        assert_eq!(ln.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
    }
}
