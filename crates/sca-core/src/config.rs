//! Serde mirrors of the official `config.json` (class `ScaConfig`) and `generation_config.json`.
//!
//! Only the fields the model reads are kept; unknown fields are ignored so official checkpoints,
//! the parity fixtures and our own trainer outputs all parse. Defaults are the HF defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_eps_6() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

/// `vision_config`: the SAM ViT image encoder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    #[serde(default = "VisionConfig::default_output_channels")]
    pub output_channels: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "VisionConfig::default_num_channels")]
    pub num_channels: usize,
    pub image_size: usize,
    #[serde(default = "VisionConfig::default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_eps_6")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default = "default_true")]
    pub use_abs_pos: bool,
    #[serde(default = "default_true")]
    pub use_rel_pos: bool,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    #[serde(default = "VisionConfig::default_num_pos_feats")]
    pub num_pos_feats: usize,
    pub mlp_dim: usize,
    #[serde(default = "VisionConfig::default_act")]
    pub hidden_act: String,
}

impl VisionConfig {
    fn default_output_channels() -> usize {
        256
    }
    fn default_num_channels() -> usize {
        3
    }
    fn default_patch_size() -> usize {
        16
    }
    fn default_num_pos_feats() -> usize {
        128
    }
    fn default_act() -> String {
        "gelu".into()
    }
    /// Side of the patch grid, `image_size / patch_size` (64 for SAM).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `prompt_encoder_config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptEncoderConfig {
    pub hidden_size: usize,
    pub image_size: usize,
    #[serde(default = "PromptEncoderConfig::default_patch")]
    pub patch_size: usize,
    #[serde(default = "PromptEncoderConfig::default_mask_channels")]
    pub mask_input_channels: usize,
    #[serde(default = "PromptEncoderConfig::default_points")]
    pub num_point_embeddings: usize,
    #[serde(default = "default_eps_6")]
    pub layer_norm_eps: f64,
}

impl PromptEncoderConfig {
    fn default_patch() -> usize {
        16
    }
    fn default_mask_channels() -> usize {
        16
    }
    fn default_points() -> usize {
        4
    }
    pub fn image_embedding_size(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `mask_caption_decoder_config`: SAM's mask decoder plus the SCA mixer fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaskCaptionDecoderConfig {
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "MaskCaptionDecoderConfig::default_rate")]
    pub attention_downsample_rate: usize,
    #[serde(default = "MaskCaptionDecoderConfig::default_multimask")]
    pub num_multimask_outputs: usize,
    #[serde(default = "MaskCaptionDecoderConfig::default_iou_depth")]
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    #[serde(default = "default_eps_6")]
    pub layer_norm_eps: f64,
    /// Mixer depth (12 in the paper's model).
    pub additional_num_hidden_layers: usize,
    /// Caption queries per head (8).
    pub num_caption_tokens: usize,
    #[serde(default = "MaskCaptionDecoderConfig::default_heads")]
    pub num_caption_heads: usize,
}

impl MaskCaptionDecoderConfig {
    fn default_rate() -> usize {
        2
    }
    fn default_multimask() -> usize {
        3
    }
    fn default_iou_depth() -> usize {
        3
    }
    fn default_heads() -> usize {
        1
    }
}

/// `text_config`: a GPT-2 `GPT2Config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "Gpt2Config::default_act")]
    pub activation_function: String,
    #[serde(default = "Gpt2Config::default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "Gpt2Config::default_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "Gpt2Config::default_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "Gpt2Config::default_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "Gpt2Config::default_eos")]
    pub eos_token_id: u32,
    #[serde(default = "Gpt2Config::default_eos")]
    pub bos_token_id: u32,
}

impl Gpt2Config {
    fn default_act() -> String {
        "gelu_new".into()
    }
    fn default_eps() -> f64 {
        1e-5
    }
    fn default_dropout() -> f64 {
        0.1
    }
    fn default_eos() -> u32 {
        50256
    }
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Reads a stand-alone GPT-2 `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }
}

/// The official SCA `config.json` (`model_type = "sca"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vision_config: VisionConfig,
    pub prompt_encoder_config: PromptEncoderConfig,
    pub mask_caption_decoder_config: MaskCaptionDecoderConfig,
    pub text_config: Gpt2Config,
    #[serde(default = "ScaConfig::default_task_tokens")]
    pub num_task_tokens: usize,
}

impl ScaConfig {
    fn default_task_tokens() -> usize {
        6
    }

    /// Reads and validates a checkpoint's `config.json`.
    ///
    /// ```no_run
    /// let cfg = sca_core::config::ScaConfig::from_file("ckpt/config.json".as_ref())?;
    /// assert_eq!(cfg.mask_caption_decoder_config.num_caption_tokens, 8);
    /// # Ok::<(), sca_core::Error>(())
    /// ```
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: ScaConfig = read_json(path)?;
        cfg.validate().map_err(|msg| Error::Config {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Parses and validates a config from JSON text (bundles embed it in their manifest).
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let cfg: ScaConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: origin.to_path_buf(),
            msg: e.to_string(),
        })?;
        cfg.validate().map_err(|msg| Error::Config {
            path: origin.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Consistency checks the model code relies on; the message names the offending fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(a) = self.architectures.first() {
            if a != "ScaMultitaskV2Model" {
                return Err(format!(
                    "architecture `{a}` is not supported (only ScaMultitaskV2Model)"
                ));
            }
        }
        let v = &self.vision_config;
        let p = &self.prompt_encoder_config;
        let m = &self.mask_caption_decoder_config;
        let t = &self.text_config;
        let checks: [(bool, String); 9] = [
            (
                v.patch_size > 0 && v.image_size.is_multiple_of(v.patch_size),
                format!(
                    "vision_config.image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            ),
            (
                v.num_attention_heads > 0 && v.hidden_size.is_multiple_of(v.num_attention_heads),
                format!(
                    "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                    v.hidden_size, v.num_attention_heads
                ),
            ),
            (
                v.global_attn_indexes.iter().all(|&i| i < v.num_hidden_layers),
                format!(
                    "vision_config.global_attn_indexes {:?} out of range for {} layers",
                    v.global_attn_indexes, v.num_hidden_layers
                ),
            ),
            (
                v.output_channels == p.hidden_size && p.hidden_size == m.hidden_size,
                format!(
                    "widths disagree: vision output_channels {}, prompt encoder {}, mask decoder {}",
                    v.output_channels, p.hidden_size, m.hidden_size
                ),
            ),
            (
                2 * v.num_pos_feats == p.hidden_size,
                format!(
                    "vision_config.num_pos_feats {} must be half the prompt width {}",
                    v.num_pos_feats, p.hidden_size
                ),
            ),
            (
                p.image_size == v.image_size && p.image_embedding_size() == v.grid_size(),
                format!(
                    "prompt_encoder_config.image_size {} disagrees with vision_config.image_size {}",
                    p.image_size, v.image_size
                ),
            ),
            (
                m.num_attention_heads > 0
                    && m.attention_downsample_rate > 0
                    && (m.hidden_size / m.attention_downsample_rate).is_multiple_of(m.num_attention_heads),
                format!(
                    "mask_caption_decoder_config: hidden_size {} / rate {} not divisible by {} heads",
                    m.hidden_size, m.attention_downsample_rate, m.num_attention_heads
                ),
            ),
            (
                t.n_head > 0 && t.n_embd.is_multiple_of(t.n_head),
                format!(
                    "text_config.n_embd {} is not divisible by n_head {}",
                    t.n_embd, t.n_head
                ),
            ),
            (
                m.num_caption_heads == 1,
                format!(
                    "mask_caption_decoder_config.num_caption_heads {} is not supported (only 1)",
                    m.num_caption_heads
                ),
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg);
            }
        }
        Ok(())
    }

    /// Length of the LM prefix: task tokens + caption queries (14 for the paper's model).
    pub fn prefix_len(&self) -> usize {
        self.num_task_tokens
            + self.mask_caption_decoder_config.num_caption_tokens
                * self.mask_caption_decoder_config.num_caption_heads
    }
}

/// `generation_config.json` (only the fields that change decoding).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationConfig {
    #[serde(default = "GenerationConfig::default_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "GenerationConfig::default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default = "GenerationConfig::default_beams")]
    pub num_beams: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            eos_token_id: 50256,
            pad_token_id: None,
            max_length: 20,
            max_new_tokens: None,
            num_beams: 1,
        }
    }
}

impl GenerationConfig {
    fn default_eos() -> u32 {
        50256
    }
    fn default_max_length() -> usize {
        20
    }
    fn default_beams() -> usize {
        1
    }
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }
    /// New tokens the official evaluation default yields: transformers 4.36 counts a placeholder
    /// token towards `max_length`, so `max_length = 20` gives at most 19 new tokens.
    pub fn default_max_new_tokens(&self) -> usize {
        self.max_new_tokens
            .unwrap_or(self.max_length.saturating_sub(1))
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}
