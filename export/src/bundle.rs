//! `export bundle`: a checkpoint -> the deployable bundle of DESIGN.md §4 (format and loading
//! in [`sca_core::bundle`]; the per-tensor storage rules in [`sca_core::bundle::decoder_dtype`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Tensor};
use sca_core::bundle::{
    self, decoder_dtype, ggml_name, is_conv1d_weight, sha256_hex, FileEntry, Manifest, Quant, Role,
};
use sca_core::config::ScaConfig;
use sca_core::tokenizer::Tokenizer;
use sca_core::weights::Weights;

use crate::{ExportError, OnnxOptions};

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct BundleOptions {
    /// Decoder-side storage (the rule table decides per tensor).
    pub quant: Quant,
    /// `encoder.safetensors` storage: f32 or f16.
    pub encoder_f16: bool,
    /// Also write `encoder.onnx` (f32, for the server).
    pub onnx: bool,
    /// Replace an existing bundle at the output path.
    pub force: bool,
}

impl Default for BundleOptions {
    fn default() -> Self {
        Self {
            quant: Quant::Q8_0,
            encoder_f16: true,
            onnx: true,
            force: false,
        }
    }
}

/// What [`export_bundle`] wrote.
#[derive(Debug, Clone)]
pub struct BundleSummary {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Decoder tensors per storage type: (count, bytes).
    pub decoder_types: BTreeMap<String, (usize, u64)>,
}

impl BundleSummary {
    /// Total bytes of the bundle's files (manifest excluded).
    pub fn total_bytes(&self) -> u64 {
        self.manifest.files.values().map(|f| f.bytes).sum()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_json_value(path: &Path) -> Result<Option<serde_json::Value>, ExportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let v = serde_json::from_str(&text).map_err(|e| ExportError::Input {
        path: path.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })?;
    Ok(Some(v))
}

/// Reads the checkpoint in `from` (any layout `Sca::load` reads, a bundle excepted), checks
/// that it builds, and writes the bundle to `out` atomically: everything goes to a temporary
/// directory next to `out` that is renamed into place at the end.
///
/// ```no_run
/// use sca_export::bundle::{export_bundle, BundleOptions};
/// let s = export_bundle("ckpt".as_ref(), "bundle".as_ref(), &BundleOptions::default())?;
/// println!("{} bytes", s.total_bytes());
/// # Ok::<(), sca_export::ExportError>(())
/// ```
pub fn export_bundle(
    from: &Path,
    out: &Path,
    opts: &BundleOptions,
) -> Result<BundleSummary, ExportError> {
    if bundle::is_bundle(from) {
        return Err(ExportError::Input {
            path: from.to_path_buf(),
            msg: "this is already a bundle; export from the checkpoint it was made from".into(),
        });
    }
    let cfg_path = from.join("config.json");
    let config_json = read_json_value(&cfg_path)?.ok_or_else(|| ExportError::Input {
        path: cfg_path.clone(),
        msg: "missing: the checkpoint directory needs config.json".into(),
    })?;
    let config = ScaConfig::from_file(&cfg_path)?;
    let preprocessor = read_json_value(&from.join("preprocessor_config.json"))?;
    let generation = read_json_value(&from.join("generation_config.json"))?;
    let tokenizer = Tokenizer::from_dir(from)?;
    let weights = Weights::load(from)?;
    // Fail now, with the loader's messages, on a checkpoint that does not fit its config.
    sca_core::Sca::from_weights(
        config.clone(),
        &weights,
        tokenizer.clone(),
        match &preprocessor {
            Some(v) => sca_core::image::PreprocessorConfig::parse(
                &v.to_string(),
                &from.join("preprocessor_config.json"),
            )?,
            None => sca_core::image::PreprocessorConfig::for_size(config.vision_config.image_size),
        },
        Default::default(),
        candle_core::Device::Cpu,
    )?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    if out.exists() {
        let is_empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(io_err(out))?
                .next()
                .is_none();
        let replaceable = opts.force && bundle::is_bundle(out);
        if !(is_empty_dir || replaceable) {
            return Err(ExportError::Input {
                path: out.to_path_buf(),
                msg: if bundle::is_bundle(out) {
                    "a bundle is already there (pass --force to replace it)".into()
                } else {
                    "exists and is not an empty directory or a bundle; refusing to overwrite".into()
                },
            });
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let dir = tmp.path();

    let mut files = BTreeMap::new();
    let mut entry = |name: &str, dtype: String| -> Result<(), ExportError> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        files.insert(
            name.to_string(),
            FileEntry {
                sha256: sha256_hex(&bytes),
                bytes: bytes.len() as u64,
                dtype,
            },
        );
        Ok(())
    };

    // encoder.safetensors
    let enc_dtype = if opts.encoder_f16 {
        DType::F16
    } else {
        DType::F32
    };
    let mut enc: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in weights.iter() {
        if bundle::role(k) == Role::Encoder {
            enc.insert(k.to_string(), t.to_dtype(enc_dtype)?);
        }
    }
    if enc.is_empty() {
        return Err(ExportError::Weights {
            path: weights.source().to_path_buf(),
            msg: "no `vision_encoder.*` tensors".into(),
        });
    }
    let enc_path = dir.join(bundle::ENCODER);
    candle_core::safetensors::save(&enc, &enc_path).map_err(|e| ExportError::Weights {
        path: enc_path.clone(),
        msg: e.to_string(),
    })?;
    drop(enc);
    // safetensors writes through its own temp file (0600); a bundle is served to browsers.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&enc_path, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(&enc_path))?;
    }
    entry(
        bundle::ENCODER,
        if opts.encoder_f16 { "f16" } else { "f32" }.into(),
    )?;

    // decoder.gguf
    let (decoder_types, dec_dtype) =
        write_decoder(&weights, &dir.join(bundle::DECODER), opts.quant)?;
    entry(bundle::DECODER, dec_dtype)?;

    // tokenizer.json
    let tok_path = dir.join(bundle::TOKENIZER);
    std::fs::write(&tok_path, tokenizer.to_json()?).map_err(io_err(&tok_path))?;
    entry(bundle::TOKENIZER, "json".into())?;

    // encoder.onnx (+ .data for > 2 GiB encoders)
    if opts.onnx {
        let s = crate::onnx::write_onnx(
            &config.vision_config,
            &weights,
            &dir.join(bundle::ENCODER_ONNX),
            &OnnxOptions::default(),
        )?;
        entry(bundle::ENCODER_ONNX, "f32".into())?;
        if let Some((p, _)) = s.external_data {
            let name = p.file_name().expect("data file name").to_string_lossy();
            entry(&name, "f32".into())?;
        }
    }
    drop(weights);

    let mut created_by = BTreeMap::new();
    created_by.insert("tool".into(), "sca export".into());
    created_by.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    created_by.insert("candle".into(), env!("SCA_CANDLE_VERSION").into());
    created_by.insert("rustc".into(), env!("SCA_RUSTC_VERSION").into());
    created_by.insert("source".into(), weights_source_name(from));
    let manifest = Manifest {
        format: bundle::FORMAT.into(),
        config: config_json,
        preprocessor,
        generation,
        quant: opts.quant.name().into(),
        encoder_dtype: if opts.encoder_f16 { "f16" } else { "f32" }.into(),
        files,
        created_by,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    let mpath = dir.join(bundle::MANIFEST);
    std::fs::write(&mpath, text).map_err(io_err(&mpath))?;
    for name in manifest
        .files
        .keys()
        .map(String::as_str)
        .chain([bundle::MANIFEST])
    {
        let p = dir.join(name);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&p))?;
    }

    // Move into place: the old bundle (with --force) is renamed aside first and removed last.
    let tmp_path = tmp.keep();
    set_dir_mode(&tmp_path);
    let old = if out.exists() {
        let aside = parent.join(format!(
            ".{}-old-{}",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &aside).map_err(io_err(out))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp_path, out) {
        if let Some(aside) = &old {
            let _ = std::fs::rename(aside, out);
        }
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(io_err(out)(e));
    }
    if let Some(aside) = old {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(BundleSummary {
        dir: out.to_path_buf(),
        manifest,
        decoder_types,
    })
}

/// The checkpoint's directory name (no absolute paths in manifests: they would leak the
/// machine's layout and make identical exports differ).
fn weights_source_name(from: &Path) -> String {
    std::fs::canonicalize(from)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| from.display().to_string())
}

#[cfg(unix)]
fn set_dir_mode(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
}

#[cfg(not(unix))]
fn set_dir_mode(_: &Path) {}

/// Writes every non-encoder tensor to `path` (GGUF) with the storage of the rule table.
/// Returns the per-type tally and the file's dtype label (types joined by `+`).
#[allow(clippy::type_complexity)]
fn write_decoder(
    weights: &Weights,
    path: &Path,
    quant: Quant,
) -> Result<(BTreeMap<String, (usize, u64)>, String), ExportError> {
    let werr = |k: &str, e: candle_core::Error| ExportError::Weights {
        path: weights.source().to_path_buf(),
        msg: format!("`{k}`: {e}"),
    };
    let wte = weights.get("language_model.transformer.wte.weight");
    let mut keys: Vec<&str> = weights
        .keys()
        .filter(|k| bundle::role(k) != Role::Encoder)
        .collect();
    keys.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(keys.len());
    let mut tally: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for k in keys {
        let t = weights.get(k).expect("listed key");
        // A head tied to wte (HF `.bin` files carry both) is stored once.
        if k == "language_model.lm_head.weight" {
            if let Some(w) = wte {
                if same_tensor(t, w).map_err(|e| werr(k, e))? {
                    continue;
                }
            }
        }
        if sca_core::weights::is_ignorable_key(k) && k != "language_model.lm_head.weight" {
            continue;
        }
        let conv1d = is_conv1d_weight(k);
        // Conv1D weights are (in, out); the model multiplies by (out, in).
        let dims = t.dims().to_vec();
        let mm_shape: Vec<usize> = if conv1d && dims.len() == 2 {
            vec![dims[1], dims[0]]
        } else {
            dims.clone()
        };
        let dtype = decoder_dtype(k, &mm_shape, quant);
        let blocky = bundle::is_blocky(dtype);
        let src = if conv1d && blocky {
            t.t().and_then(|x| x.contiguous()).map_err(|e| werr(k, e))?
        } else {
            t.clone()
        };
        let q = QTensor::quantize(&src, dtype).map_err(|e| werr(k, e))?;
        let e = tally.entry(ggml_name(dtype)).or_default();
        e.0 += 1;
        e.1 += q.storage_size_in_bytes() as u64;
        tensors.push((k.to_string(), q));
    }
    let meta_format = gguf_file::Value::String(bundle::FORMAT.to_string());
    let meta_quant = gguf_file::Value::String(quant.name().to_string());
    let meta_arch = gguf_file::Value::String("sca".to_string());
    let metadata = [
        ("general.architecture", &meta_arch),
        ("sca.format", &meta_format),
        ("sca.quant", &meta_quant),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &metadata, &refs).map_err(|e| ExportError::Weights {
        path: path.to_path_buf(),
        msg: format!("writing GGUF: {e}"),
    })?;
    w.flush().map_err(io_err(path))?;
    let types: BTreeSet<&String> = tally.keys().collect();
    let label = types.into_iter().cloned().collect::<Vec<_>>().join("+");
    Ok((tally, label))
}

fn same_tensor(a: &Tensor, b: &Tensor) -> candle_core::Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    let ne = a
        .ne(b)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(ne == 0.0)
}
