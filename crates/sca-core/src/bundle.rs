//! The deployable bundle (DESIGN.md §4), what `export bundle` writes and every runtime loads:
//!
//! ```text
//! manifest.json        {"format": "sca-bundle/1", "config": {..official config..},
//!                       "files": {"<name>": {"sha256", "bytes", "dtype"}}, "created_by": {..}}
//! encoder.safetensors  vision_encoder.* (f16 or f32)
//! encoder.onnx         the same encoder as ONNX (optional)
//! decoder.gguf         everything else (prompt encoder, mask decoder with the mixer,
//!                      language_project, task_tokens, language_model.*), f32/f16/q8_0/q4_k
//!                      per tensor by [`decoder_dtype`]
//! tokenizer.json       GPT-2 BPE
//! ```
//!
//! Official key names are kept in every file. The one layout change: a quantized HF `Conv1D`
//! weight of GPT-2 (stored (in, out) officially) is stored transposed, (out, in), because
//! quantized blocks run along the input axis ([`is_conv1d_weight`]).
//!
//! Loading ([`Bundle::from_dir`], [`Bundle::from_bytes`]) checks every file's size and sha256
//! against the manifest before anything is parsed.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{GenerationConfig, ScaConfig};
use crate::image::PreprocessorConfig;
use crate::ops::QuantStore;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use crate::{Error, Result, Sca, ScaModel};

/// The `format` of the manifests this crate reads and writes.
pub const FORMAT: &str = "sca-bundle/1";
pub const MANIFEST: &str = "manifest.json";
pub const ENCODER: &str = "encoder.safetensors";
pub const ENCODER_ONNX: &str = "encoder.onnx";
pub const DECODER: &str = "decoder.gguf";
pub const TOKENIZER: &str = "tokenizer.json";
/// Files every bundle has (`encoder.onnx` is optional).
pub const REQUIRED_FILES: [&str; 3] = [ENCODER, DECODER, TOKENIZER];

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The official `config.json` object, unchanged.
    pub config: serde_json::Value,
    /// `preprocessor_config.json`, when the source had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessor: Option<serde_json::Value>,
    /// `generation_config.json`, when the source had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<serde_json::Value>,
    /// Decoder-side quantization (`f32`, `f16`, `q8_0`, `q4_k`).
    pub quant: String,
    /// `f32` or `f16`.
    pub encoder_dtype: String,
    /// Every file of the bundle but the manifest.
    pub files: BTreeMap<String, FileEntry>,
    /// Tool and library versions that wrote the bundle, and its source.
    pub created_by: BTreeMap<String, String>,
}

/// One file of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Lower-case hex.
    pub sha256: String,
    pub bytes: u64,
    /// The weights' storage type(s), e.g. `f16`, `q8_0+f32`; `json` for the tokenizer.
    pub dtype: String,
}

/// Lower-case hex sha256 of `bytes`.
///
/// ```
/// assert_eq!(
///     sca_core::bundle::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `dir` holds a bundle (a `manifest.json`) rather than a checkpoint.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// Decoder-side storage of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F32,
    F16,
    Q8_0,
    Q4K,
}

impl Quant {
    pub const ALL: [Quant; 4] = [Quant::F32, Quant::F16, Quant::Q8_0, Quant::Q4K];

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4_k",
        }
    }

    /// Parses `f32`, `f16`, `q8_0` or `q4_k`.
    pub fn parse(s: &str) -> Result<Quant> {
        Quant::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| {
                Error::Bundle(format!(
                    "unknown quantization `{s}` (expected f32, f16, q8_0 or q4_k)"
                ))
            })
    }
}

/// What a decoder-side tensor is, for [`decoder_dtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `vision_encoder.*`: goes to `encoder.safetensors`, never quantized.
    Encoder,
    /// A projection of GPT-2's blocks (the bulk of the LM).
    LmMatMul,
    /// GPT-2's `wte` (also the tied head) or a separate `lm_head`.
    LmEmbedding,
    /// A projection of the mask decoder, the mixer or `language_project`.
    DecoderMatMul,
    /// Biases, norms, positional tables, learned tokens, convolutions: kept in f32.
    Other,
}

/// Whether `key` is an HF `Conv1D` weight of GPT-2 (stored (in, out) officially).
pub fn is_conv1d_weight(key: &str) -> bool {
    key.starts_with("language_model.transformer.h.")
        && [
            ".attn.c_attn.weight",
            ".attn.c_proj.weight",
            ".mlp.c_fc.weight",
            ".mlp.c_proj.weight",
        ]
        .iter()
        .any(|s| key.ends_with(s))
}

/// The rule table: which tensors are matrix products (built with [`crate::ops::QLinear`] in
/// the model code) and may be quantized.
pub fn role(key: &str) -> Role {
    const ATTN_AND_MLP: [&str; 6] = [
        ".q_proj.weight",
        ".k_proj.weight",
        ".v_proj.weight",
        ".out_proj.weight",
        ".mlp.lin1.weight",
        ".mlp.lin2.weight",
    ];
    let feed_forward = key.starts_with("mask_decoder.iou_prediction_head.")
        || key.starts_with("mask_decoder.output_hypernetworks_mlps.");
    if key.starts_with("vision_encoder.") {
        Role::Encoder
    } else if is_conv1d_weight(key) {
        Role::LmMatMul
    } else if key == "language_model.transformer.wte.weight"
        || key == "language_model.lm_head.weight"
    {
        Role::LmEmbedding
    } else if key == "language_project.weight"
        || (key.starts_with("mask_decoder.")
            && (ATTN_AND_MLP.iter().any(|s| key.ends_with(s))
                || (feed_forward && key.ends_with(".weight"))))
    {
        Role::DecoderMatMul
    } else {
        Role::Other
    }
}

/// Whether a quantized decoder-side weight is dequantized to f32 when a bundle is loaded: the
/// image-side projections of the mask decoder's and the mixer's two-way transformers
/// (`cross_attn_token_to_image.{k,v}_proj`, `cross_attn_image_to_token.{q,out}_proj`,
/// `final_attn_token_to_image.{k,v}_proj`). They multiply every image token of every prompt
/// (4,096 rows for a 1024-pixel input), where an f32 matrix product beats the quantized kernels
/// (3x in wasm, 1.2-6x natively), and they are about 2% of a decoder's weights. The file keeps
/// them quantized, so bundle sizes do not change; every platform applies the same rule.
///
/// ```
/// use sca_core::bundle::dense_at_load;
/// assert!(dense_at_load("mask_decoder.additional_transformer.layers.3.cross_attn_image_to_token.q_proj.weight"));
/// assert!(!dense_at_load("mask_decoder.additional_transformer.layers.3.cross_attn_image_to_token.k_proj.weight"));
/// assert!(!dense_at_load("language_model.transformer.h.0.mlp.c_fc.weight"));
/// ```
pub fn dense_at_load(key: &str) -> bool {
    const IMAGE_SIDE: [&str; 6] = [
        ".cross_attn_token_to_image.k_proj.weight",
        ".cross_attn_token_to_image.v_proj.weight",
        ".cross_attn_image_to_token.q_proj.weight",
        ".cross_attn_image_to_token.out_proj.weight",
        ".final_attn_token_to_image.k_proj.weight",
        ".final_attn_token_to_image.v_proj.weight",
    ];
    key.starts_with("mask_decoder.") && IMAGE_SIDE.iter().any(|s| key.ends_with(s))
}

/// The storage type of a decoder-side tensor of `shape` (as the model multiplies it: (out, in)
/// for matrix products) in a bundle quantized with `quant`:
///
/// | tensor | f32 | f16 | q8_0 | q4_k |
/// |---|---|---|---|---|
/// | GPT-2 block projections | f32 | f16 | q8_0 | q4_k |
/// | mask decoder / mixer / `language_project` projections | f32 | f16 | q8_0 | q4_k |
/// | `wte` (also the tied head), `lm_head` | f32 | f16 | q6_k | q4_k |
/// | `wpe` (GPT-2 positions) | f32 | f16 | f16 | f16 |
/// | everything else (biases, norms, learned tokens, convolutions, prompt encoder) | f32 | f32 | f32 | f16 |
///
/// The token table takes q6_k in q8_0 bundles (as llama.cpp's mixes store their output
/// tensor): it is a third of GPT-2 small, and this keeps the ViT-B + GPT-2 decoder under
/// 150 MB. A quantized type needs the input axis to be a multiple of its block (32 for
/// q8_0/q4_0, 256 for the k-quants); otherwise the next type that fits is used
/// (q6_k -> q8_0, q4_k -> q4_0 -> q8_0, then f16).
pub fn decoder_dtype(key: &str, shape: &[usize], quant: Quant) -> GgmlDType {
    let role = role(key);
    if key == "language_model.transformer.wpe.weight" {
        return if quant == Quant::F32 {
            GgmlDType::F32
        } else {
            GgmlDType::F16
        };
    }
    let matmul = matches!(
        role,
        Role::LmMatMul | Role::LmEmbedding | Role::DecoderMatMul
    );
    if !matmul || shape.len() != 2 {
        // q4_k bundles are about download size: the small tensors go to f16 too.
        return if quant == Quant::Q4K {
            GgmlDType::F16
        } else {
            GgmlDType::F32
        };
    }
    let wanted: &[GgmlDType] = match (quant, role) {
        (Quant::F32, _) => &[GgmlDType::F32],
        (Quant::F16, _) => &[GgmlDType::F16],
        (Quant::Q8_0, Role::LmEmbedding) => &[GgmlDType::Q6K, GgmlDType::Q8_0],
        (Quant::Q8_0, _) => &[GgmlDType::Q8_0],
        (Quant::Q4K, _) => &[GgmlDType::Q4K, GgmlDType::Q4_0, GgmlDType::Q8_0],
    };
    wanted
        .iter()
        .copied()
        .find(|t| shape[1].is_multiple_of(t.block_size()))
        .unwrap_or(GgmlDType::F16)
}

/// Whether `t` is a block-quantized type (stored transposed for GPT-2 `Conv1D` weights).
pub fn is_blocky(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The name of a GGUF storage type as used in manifests (`f32`, `f16`, `q8_0`, `q4_k`, ...).
pub fn ggml_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q8_0 => "q8_0".into(),
        GgmlDType::Q4_0 => "q4_0".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A file's bytes: memory-mapped where the platform allows (native), else owned.
pub enum FileBytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped(m) => m,
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}

/// Maps `path` read-only (native), or reads it (wasm).
fn read_file(path: &Path) -> Result<FileBytes> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            // mmap of an empty file fails on some platforms
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process; a bundle file changed
        // underneath while loading would show up as a sha256 mismatch (checked right after).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes::Mapped(map))
    }
    #[cfg(target_arch = "wasm32")]
    {
        Ok(FileBytes::Owned(
            std::fs::read(path).map_err(|e| Error::io(path, e))?,
        ))
    }
}

/// A bundle with every file checked against the manifest (native: memory-mapped, so loading
/// does not hold a second copy of the weights).
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    files: HashMap<String, FileBytes>,
    /// Where it came from (messages only).
    origin: PathBuf,
}

fn berr(origin: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Bundle(format!("{}: {msg}", origin.display()))
}

impl Bundle {
    /// Reads and checks the bundle in `dir`: the manifest, then each listed file's size and
    /// sha256. A missing, truncated or altered file is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Bundle> {
        let mpath = dir.join(MANIFEST);
        let mbytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let manifest = parse_manifest(&mbytes, &mpath)?;
        let mut files = HashMap::new();
        for name in manifest.files.keys() {
            files.insert(name.clone(), read_file(&dir.join(name))?);
        }
        Self::checked(manifest, files, dir, false)
    }

    /// A bundle from in-memory files (e.g. fetched by a browser), checked like
    /// [`Bundle::from_dir`]. `files` maps the manifest's file names to their bytes; the
    /// required files must be there, optional ones (`encoder.onnx`, which a browser never
    /// fetches) may be left out.
    pub fn from_bytes(manifest: &[u8], files: HashMap<String, Vec<u8>>) -> Result<Bundle> {
        let origin = Path::new("<bundle>");
        let manifest = parse_manifest(manifest, &origin.join(MANIFEST))?;
        let files = files
            .into_iter()
            .map(|(k, v)| (k, FileBytes::Owned(v)))
            .collect();
        Self::checked(manifest, files, origin, true)
    }

    fn checked(
        manifest: Manifest,
        files: HashMap<String, FileBytes>,
        origin: &Path,
        in_memory: bool,
    ) -> Result<Bundle> {
        for name in REQUIRED_FILES {
            if !manifest.files.contains_key(name) {
                return Err(berr(
                    &origin.join(MANIFEST),
                    format!("the manifest lists no `{name}`"),
                ));
            }
        }
        for (name, entry) in &manifest.files {
            let path = origin.join(name);
            let bytes = match files.get(name) {
                Some(b) => b,
                None if in_memory && !REQUIRED_FILES.contains(&name.as_str()) => continue,
                None => return Err(berr(&path, "missing (listed in the manifest)")),
            };
            if bytes.len() as u64 != entry.bytes {
                let hint = if (bytes.len() as u64) < entry.bytes {
                    " (truncated?)"
                } else {
                    ""
                };
                return Err(berr(
                    &path,
                    format!(
                        "{} bytes, the manifest says {}{hint}",
                        bytes.len(),
                        entry.bytes
                    ),
                ));
            }
            let sha = sha256_hex(bytes);
            if sha != entry.sha256 {
                return Err(berr(
                    &path,
                    format!(
                        "sha256 {sha} differs from the manifest's {} (the file was altered or corrupted)",
                        entry.sha256
                    ),
                ));
            }
        }
        Ok(Bundle {
            manifest,
            files,
            origin: origin.to_path_buf(),
        })
    }

    /// The bytes of one checked file.
    pub fn file(&self, name: &str) -> Result<&[u8]> {
        self.files
            .get(name)
            .map(|b| &**b)
            .ok_or_else(|| berr(&self.origin.join(name), "not in this bundle"))
    }

    /// The validated model config.
    pub fn config(&self) -> Result<ScaConfig> {
        ScaConfig::from_json(
            &self.manifest.config.to_string(),
            &self.origin.join(MANIFEST),
        )
    }

    /// The encoder weights (`vision_encoder.*`) as f32 tensors.
    pub fn encoder_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let path = self.origin.join(ENCODER);
        let raw = candle_core::safetensors::load_buffer(self.file(ENCODER)?, &Device::Cpu)
            .map_err(|e| berr(&path, format!("cannot read safetensors: {e}")))?;
        raw.into_iter()
            .map(|(k, t)| {
                let t = t
                    .to_dtype(DType::F32)
                    .map_err(|e| berr(&path, format!("`{k}`: {e}")))?;
                Ok((k, t))
            })
            .collect()
    }

    /// Reads every tensor of `decoder.gguf`, in name order.
    fn for_each_decoder_tensor(
        &self,
        mut f: impl FnMut(&str, QTensor) -> candle_core::Result<()>,
    ) -> Result<()> {
        let path = self.origin.join(DECODER);
        let mut r = Cursor::new(self.file(DECODER)?);
        let content = gguf_file::Content::read(&mut r)
            .map_err(|e| berr(&path, format!("cannot read GGUF: {e}")))?;
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            content
                .tensor(&mut r, name, &Device::Cpu)
                .and_then(|q| f(name, q))
                .map_err(|e| berr(&path, format!("tensor `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// The decoder tensors: f32/f16 ones and those [`dense_at_load`] names as f32 tensors,
    /// the other quantized ones as they are.
    #[allow(clippy::type_complexity)]
    pub fn decoder_tensors(
        &self,
    ) -> Result<(HashMap<String, Tensor>, HashMap<String, Arc<QTensor>>)> {
        let mut dense = HashMap::new();
        let mut quant = HashMap::new();
        self.for_each_decoder_tensor(|name, q| {
            if !is_blocky(q.dtype()) || dense_at_load(name) {
                dense.insert(name.to_string(), q.dequantize(&Device::Cpu)?);
            } else {
                quant.insert(name.to_string(), Arc::new(q));
            }
            Ok(())
        })?;
        Ok((dense, quant))
    }

    /// Every tensor of the bundle as f32 in the official checkpoint layout: quantized ones
    /// dequantized, GPT-2 `Conv1D` weights back to (in, out). For starting training (or a new
    /// export) from a bundle when the checkpoint it came from is not at hand; the
    /// quantization error stays in the weights.
    ///
    /// ```no_run
    /// let b = sca_core::bundle::Bundle::from_dir("models/sca-shapes".as_ref())?;
    /// let tensors = b.official_tensors()?;
    /// assert!(tensors.contains_key("language_model.transformer.wte.weight"));
    /// # Ok::<(), sca_core::Error>(())
    /// ```
    pub fn official_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut tensors = self.encoder_tensors()?;
        let mut twice = None;
        self.for_each_decoder_tensor(|name, q| {
            let transposed = is_blocky(q.dtype()) && is_conv1d_weight(name);
            let mut t = q.dequantize(&Device::Cpu)?;
            if transposed {
                t = t.t()?.contiguous()?;
            }
            if tensors.insert(name.to_string(), t).is_some() {
                twice = Some(name.to_string());
            }
            Ok(())
        })?;
        match twice {
            Some(k) => Err(berr(
                &self.origin,
                format!("`{k}` is in both {ENCODER} and {DECODER}"),
            )),
            None => Ok(tensors),
        }
    }

    /// Builds the model on `device`. Quantized tensors stay quantized (quantized matmuls),
    /// except those [`dense_at_load`] names; every other weight is f32. Missing, mis-shaped and unused keys are errors.
    pub fn into_sca(self, device: Device) -> Result<Sca> {
        let config = self.config()?;
        let origin = self.origin.clone();
        let preprocessor = match &self.manifest.preprocessor {
            Some(v) => PreprocessorConfig::parse(&v.to_string(), &origin.join(MANIFEST))?,
            None => PreprocessorConfig::for_size(config.vision_config.image_size),
        };
        let generation = match &self.manifest.generation {
            Some(v) => serde_json::from_value::<GenerationConfig>(v.clone())
                .map_err(|e| berr(&origin.join(MANIFEST), format!("generation: {e}")))?,
            None => GenerationConfig::default(),
        };
        let tokenizer = Tokenizer::from_json_bytes(self.file(TOKENIZER)?)?;
        let mut tensors = self.encoder_tensors()?;
        let (dense, quant) = self.decoder_tensors()?;
        for (k, t) in dense {
            if tensors.insert(k.clone(), t).is_some() {
                return Err(berr(
                    &origin,
                    format!("`{k}` is in both {ENCODER} and {DECODER}"),
                ));
            }
        }
        drop(self);
        let store = Arc::new(QuantStore::new(quant));
        let weights = Weights::from_tensors(tensors, origin.clone());
        let vb = weights.var_builder(&device);
        let model = store
            .scope(|| ScaModel::new(&config, vb))
            .map_err(|e| Error::Weights {
                path: origin.clone(),
                msg: e.to_string(),
            })?;
        weights.check_unused()?;
        let unused = store.unused_keys();
        if !unused.is_empty() {
            return Err(Error::Weights {
                path: origin.join(DECODER),
                msg: format!(
                    "quantized tensors the model does not use: {}",
                    unused.join(", ")
                ),
            });
        }
        Sca::from_parts(model, tokenizer, preprocessor, generation, &origin)
    }
}

fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| berr(path, format!("invalid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(berr(
            path,
            format!(
                "format `{}` is not supported (this build reads `{FORMAT}`)",
                m.format
            ),
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_table() {
        let q8 = |k: &str, s: &[usize]| decoder_dtype(k, s, Quant::Q8_0);
        let q4 = |k: &str, s: &[usize]| decoder_dtype(k, s, Quant::Q4K);
        let h = "language_model.transformer.h.3.mlp.c_fc.weight";
        assert!(is_conv1d_weight(h));
        assert_eq!(q8(h, &[3072, 768]), GgmlDType::Q8_0);
        assert_eq!(q4(h, &[3072, 768]), GgmlDType::Q4K);
        // not a multiple of q4_k's 256-block: q4_0, then q8_0, then f16
        assert_eq!(q4(h, &[192, 96]), GgmlDType::Q4_0);
        assert_eq!(q4(h, &[192, 48]), GgmlDType::F16);
        assert_eq!(q8(h, &[192, 48]), GgmlDType::F16);
        let wte = "language_model.transformer.wte.weight";
        assert_eq!(q4(wte, &[50257, 768]), GgmlDType::Q4K);
        assert_eq!(q8(wte, &[50257, 768]), GgmlDType::Q6K);
        assert_eq!(q8(wte, &[50257, 96]), GgmlDType::Q8_0);
        let p = "mask_decoder.additional_transformer.layers.2.self_attn.q_proj.weight";
        assert_eq!(q4(p, &[256, 256]), GgmlDType::Q4K);
        assert_eq!(q8(p, &[256, 256]), GgmlDType::Q8_0);
        let ff = "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight";
        assert_eq!(q8(ff, &[32, 32]), GgmlDType::Q8_0);
        assert_eq!(q8("language_project.weight", &[768, 256]), GgmlDType::Q8_0);
        let wpe = "language_model.transformer.wpe.weight";
        assert_eq!(q8(wpe, &[1024, 768]), GgmlDType::F16);
        assert_eq!(decoder_dtype(wpe, &[1024, 768], Quant::F32), GgmlDType::F32);
        for other in [
            "mask_decoder.transformer.layers.0.self_attn.q_proj.bias",
            "mask_decoder.iou_token.weight",
            "mask_decoder.caption_tokens.weight",
            "language_model.transformer.h.0.ln_1.weight",
            "task_tokens.weight",
            "prompt_encoder.point_embed.0.weight",
            "mask_decoder.upscale_conv1.weight",
        ] {
            assert_eq!(q8(other, &[32, 32]), GgmlDType::F32, "{other}");
            assert_eq!(q4(other, &[32, 32]), GgmlDType::F16, "{other}");
            assert_eq!(decoder_dtype(other, &[32, 32], Quant::F16), GgmlDType::F32);
        }
        assert_eq!(role("vision_encoder.neck.conv1.weight"), Role::Encoder);
        assert_eq!(decoder_dtype(h, &[3072, 768], Quant::F16), GgmlDType::F16);
    }

    #[test]
    fn quant_names_round_trip() {
        for q in Quant::ALL {
            assert_eq!(Quant::parse(q.name()).unwrap(), q);
        }
        assert!(Quant::parse("q5").unwrap_err().to_string().contains("q5"));
    }
}
