//! Checkpoint loading and writing.
//!
//! [`Weights::load`] reads the official checkpoint formats: `model.safetensors`, a sharded
//! `model.safetensors.index.json`, `pytorch_model.bin` (a `torch.save` zip archive holding a
//! pickled state dict, fp16 or fp32) and `pytorch_model.bin.index.json`. Every tensor is upcast to
//! f32 on the CPU and kept under its official key (`sca-spec.md` §3.2).
//!
//! The PyTorch reader is our own rather than `candle_core::pickle`: that one skips entries it does
//! not understand with an `eprintln!`, merges an `OrderedDict`'s `BUILD` state (`_metadata`) into
//! its items and re-opens the archive for every tensor. Ours evaluates just enough pickle to find
//! `torch._utils._rebuild_tensor_v2` calls, reads each storage once and reports every problem as an
//! [`Error::Weights`] naming the file.
//!
//! [`Weights::var_builder`] hands the tensors to model code and records which keys were read, so
//! that [`Weights::check_unused`] can reject checkpoints that carry weights the model ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// File names looked for in a checkpoint directory, in order of preference.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

fn werr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The tensors of one checkpoint by official key (f32, CPU; f16/bf16 storage is upcast on load).
///
/// ```no_run
/// # fn main() -> sca_core::Result<()> {
/// use sca_core::weights::Weights;
/// let w = Weights::load(std::path::Path::new("checkpoints/sca-gpt2-large-vg"))?;
/// let vb = w.var_builder(&candle_core::Device::Cpu);
/// let wte = vb.get((50257, 1280), "language_model.transformer.wte.weight")?;
/// // ... build the rest of the model from `vb`, then:
/// w.check_unused()?;
/// # let _ = wte;
/// # Ok(()) }
/// ```
pub struct Weights {
    tensors: Arc<BTreeMap<String, Tensor>>,
    source: PathBuf,
    used: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("source", &self.source)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Weights {
    /// Loads a checkpoint.
    ///
    /// `path`: a checkpoint directory holding `model.safetensors` (or sharded
    /// `model.safetensors.index.json` + shards) or `pytorch_model.bin` (PyTorch zip pickle, as
    /// `torch.save` of a state dict, fp16 or fp32; also `pytorch_model.bin.index.json` shards), or
    /// one such file directly. Prefers safetensors when both exist (see [`CHECKPOINT_FILES`]).
    /// A file is read as safetensors when its name ends in `.safetensors`, as a shard index when it
    /// ends in `.json`, and as a PyTorch archive otherwise.
    pub fn load(path: &Path) -> Result<Weights> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let file = if meta.is_dir() {
            CHECKPOINT_FILES
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    werr(
                        path,
                        format!(
                            "no weights found in this directory; looked for {}",
                            CHECKPOINT_FILES.join(", ")
                        ),
                    )
                })?
        } else {
            path.to_path_buf()
        };
        let name = file_name(&file);
        let tensors = if name.ends_with(".json") {
            load_index(&file)?
        } else {
            load_single(&file)?
        };
        tracing::debug!(file = %file.display(), tensors = tensors.len(), "loaded weights");
        Ok(Weights {
            tensors: Arc::new(tensors),
            source: file,
            used: Arc::default(),
        })
    }

    /// Wraps tensors that are already in memory; `source` is only used in messages.
    /// Tensors are kept as given (no dtype or device conversion).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: PathBuf) -> Weights {
        Weights {
            tensors: Arc::new(tensors.into_iter().collect()),
            source,
            used: Arc::default(),
        }
    }

    /// The file the tensors were read from (the index file for sharded checkpoints).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The tensor stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Whether the checkpoint has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// All `(key, tensor)` pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Adds or replaces a tensor (e.g. an alias the model expects). VarBuilders created earlier
    /// keep seeing the old set.
    pub fn insert(&mut self, key: String, t: Tensor) {
        Arc::make_mut(&mut self.tensors).insert(key, t);
    }

    /// A candle_nn `VarBuilder` (f32, on `device`) over these tensors that records every key it
    /// hands out (for [`Weights::check_unused`]).
    ///
    /// A missing key errors with ``missing weight `<key>` (expected shape [..]) in <file>``, a
    /// mis-shaped one with ``weight `<key>` in <file> has shape [..], expected [..]``.
    /// `contains_tensor` does not count as a use.
    pub fn var_builder(&self, device: &Device) -> candle_nn::VarBuilder<'static> {
        let backend = TrackingBackend {
            tensors: self.tensors.clone(),
            used: self.used.clone(),
            source: self.source.clone(),
        };
        candle_nn::VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    /// Keys that no `VarBuilder` from [`Weights::var_builder`] handed out so far, sorted, except
    /// those for which [`is_ignorable_key`] holds.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = lock(&self.used);
        self.tensors
            .keys()
            .filter(|k| !used.contains(k.as_str()) && !is_ignorable_key(k))
            .cloned()
            .collect()
    }

    /// After a model was built from [`Weights::var_builder`]: errors (listing the first 10 and the
    /// count) when the checkpoint holds keys the model never read, which usually means a wrong
    /// config or a key-naming bug. Known non-persistent or aliased buffers are ignored
    /// ([`is_ignorable_key`]).
    pub fn check_unused(&self) -> Result<()> {
        let unused = self.unused_keys();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(10).map(String::as_str).collect();
        let more = if unused.len() > shown.len() {
            format!(" (and {} more)", unused.len() - shown.len())
        } else {
            String::new()
        };
        Err(werr(
            &self.source,
            format!(
                "{} weight(s) not used by the model: {}{more}",
                unused.len(),
                shown.join(", ")
            ),
        ))
    }
}

/// Keys a checkpoint may carry that the model need not read: GPT-2 `...attn.bias` /
/// `...attn.masked_bias` causal buffers, `prompt_encoder.shared_embedding.positional_embedding`
/// (alias of `shared_image_embedding.positional_embedding`) and the tied
/// `language_model.lm_head.weight` (also `lm_head.weight` of a stand-alone GPT-2); the model
/// decides whether to read the latter.
pub fn is_ignorable_key(key: &str) -> bool {
    if key == "prompt_encoder.shared_embedding.positional_embedding"
        || key == "language_model.lm_head.weight"
        || key == "lm_head.weight"
    {
        return true;
    }
    (key.starts_with("transformer.h.") || key.contains(".transformer.h."))
        && (key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias"))
}

fn lock(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // A panic elsewhere while holding the lock cannot leave the set inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct TrackingBackend {
    tensors: Arc<BTreeMap<String, Tensor>>,
    used: Arc<Mutex<HashSet<String>>>,
    source: PathBuf,
}

impl TrackingBackend {
    fn fetch(&self, name: &str, expected: Option<&Shape>) -> candle_core::Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            let shape = expected
                .map(|s| format!(" (expected shape {:?})", s.dims()))
                .unwrap_or_default();
            candle_core::Error::Msg(format!(
                "missing weight `{name}`{shape} in {}",
                self.source.display()
            ))
        })?;
        if let Some(s) = expected {
            if t.shape() != s {
                return Err(candle_core::Error::Msg(format!(
                    "weight `{name}` in {} has shape {:?}, expected {:?}",
                    self.source.display(),
                    t.dims(),
                    s.dims()
                )));
            }
        }
        lock(&self.used).insert(name.to_string());
        Ok(t.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for TrackingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.fetch(name, Some(&s))?.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, None)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

fn load_single(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if file_name(path).ends_with(".safetensors") {
        load_safetensors(path)
    } else {
        load_torch(path)
    }
}

fn load_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len == 0 {
        return Err(werr(path, "empty file"));
    }
    let raw = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| werr(path, format!("cannot read safetensors file: {e}")))?;
    raw.into_iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32)
                    .map_err(|e| werr(path, format!("cannot convert `{k}` to f32: {e}")))?
            };
            Ok((k, t))
        })
        .collect()
}

/// `*.index.json` as written by `save_pretrained` for sharded checkpoints.
fn load_index(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| werr(path, format!("invalid shard index JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| werr(path, "shard index has no `weight_map` object"))?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| werr(path, format!("`weight_map[{key:?}]` is not a file name")))?;
        shards.entry(file).or_default().push(key);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut all = BTreeMap::new();
    for (file, keys) in shards {
        let shard = dir.join(file);
        let tensors = load_single(&shard)?;
        if let Some(missing) = keys.iter().find(|k| !tensors.contains_key(**k)) {
            return Err(werr(
                path,
                format!("`{missing}` is mapped to {file} but that shard does not contain it"),
            ));
        }
        all.extend(tensors);
    }
    Ok(all)
}

/// Element types of PyTorch storages (`torch.<Name>Storage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StorageType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Element `i` of a little-endian buffer as f32.
    fn get(self, b: &[u8], i: usize) -> f32 {
        let s = self.size();
        let e = &b[i * s..(i + 1) * s];
        match self {
            Self::F32 => f32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            Self::F16 => half::f16::from_bits(u16::from_le_bytes([e[0], e[1]])).to_f32(),
            Self::BF16 => half::bf16::from_bits(u16::from_le_bytes([e[0], e[1]])).to_f32(),
            Self::F64 => {
                f64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]) as f32
            }
            Self::I64 => {
                i64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]) as f32
            }
            Self::I32 => i32::from_le_bytes([e[0], e[1], e[2], e[3]]) as f32,
            Self::I16 => i16::from_le_bytes([e[0], e[1]]) as f32,
            Self::I8 => e[0] as i8 as f32,
            Self::U8 => e[0] as f32,
            Self::Bool => (e[0] != 0) as u8 as f32,
        }
    }

    /// A whole contiguous buffer as f32.
    fn to_f32(self, b: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Self::F16 => {
                // half's slice conversion is vectorised (F16C) where available.
                let h: Vec<half::f16> = b
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect();
                let mut out = vec![0f32; h.len()];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&h[..], &mut out);
                out
            }
            Self::BF16 => {
                let h: Vec<half::bf16> = b
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect();
                let mut out = vec![0f32; h.len()];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&h[..], &mut out);
                out
            }
            _ => (0..b.len() / self.size()).map(|i| self.get(b, i)).collect(),
        }
    }
}

/// Legacy (pre-1.6) `torch.save` files start with a pickled magic number: PROTO 2, LONG1 10 bytes.
const LEGACY_TORCH_MAGIC: [u8; 4] = [0x80, 0x02, 0x8a, 0x0a];

fn load_torch(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len == 0 {
        return Err(werr(path, "empty file"));
    }
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
    if magic[..n] == LEGACY_TORCH_MAGIC[..n] && n == 4 {
        return Err(werr(
            path,
            "legacy (pre-1.6, non-zip) PyTorch serialization is not supported; re-save it with \
             torch>=1.6 or convert it to safetensors",
        ));
    }
    if magic[..n] != b"PK\x03\x04"[..n] || n < 4 {
        return Err(werr(
            path,
            format!(
                "not a PyTorch checkpoint: expected a zip archive as written by torch.save, \
                 the file starts with {:02x?}",
                &magic[..n]
            ),
        ));
    }
    file.rewind().map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        werr(
            path,
            format!("truncated or corrupt zip archive (cannot read its directory): {e}"),
        )
    })?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .map(Into::into)
        .collect();
    let pkls: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pkl_name = match pkls.as_slice() {
        [one] => one.as_str(),
        [] => {
            let listed: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
            return Err(werr(
                path,
                format!(
                    "zip archive has no `<archive>/data.pkl` record, so it is not a torch.save \
                     checkpoint (records: {})",
                    listed.join(", ")
                ),
            ));
        }
        _ => return Err(werr(path, "zip archive has several `*/data.pkl` records")),
    };
    let prefix = pkl_name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_string();

    let byteorder_name = format!("{prefix}byteorder");
    if names.contains(&byteorder_name) {
        let bo = read_entry(&mut zip, path, &byteorder_name, file_len)?;
        if bo != b"little" {
            return Err(werr(
                path,
                format!(
                    "byte order `{}` is not supported (only little-endian checkpoints)",
                    String::from_utf8_lossy(&bo)
                ),
            ));
        }
    }

    let pkl = read_entry(&mut zip, path, pkl_name, file_len)?;
    let sd = pickle::state_dict(&pkl).map_err(|e| {
        werr(
            path,
            format!("corrupt or unsupported pickle in {pkl_name}: {e}"),
        )
    })?;
    if !sd.skipped.is_empty() {
        tracing::warn!(
            file = %path.display(),
            keys = ?sd.skipped,
            "skipping non-tensor state-dict entries"
        );
    }

    // Read every storage once; several tensors may view one (tied weights).
    let mut storages: HashMap<&str, (pickle::StorageRef, Vec<u8>)> = HashMap::new();
    for (_, t) in &sd.tensors {
        if storages.contains_key(t.storage.key.as_str()) {
            continue;
        }
        let dtype = storage_type(&t.storage.class).ok_or_else(|| {
            werr(
                path,
                format!(
                    "unsupported storage type torch.{} (supported: float, half, bfloat16, \
                     double and integer/bool storages)",
                    t.storage.class
                ),
            )
        })?;
        let name = format!("{prefix}data/{}", t.storage.key);
        let bytes = read_entry(&mut zip, path, &name, file_len)?;
        let expected = t.storage.numel.checked_mul(dtype.size());
        if expected != Some(bytes.len()) {
            return Err(werr(
                path,
                format!(
                    "storage record {name} has {} bytes, but the pickle declares {} elements of \
                     {} bytes",
                    bytes.len(),
                    t.storage.numel,
                    dtype.size()
                ),
            ));
        }
        storages.insert(&t.storage.key, (t.storage.clone(), bytes));
    }

    let mut out = BTreeMap::new();
    for (key, t) in &sd.tensors {
        let (storage, bytes) = &storages[t.storage.key.as_str()];
        if storage.class != t.storage.class {
            return Err(werr(
                path,
                format!(
                    "storage {} is used with two element types ({} and {})",
                    storage.key, storage.class, t.storage.class
                ),
            ));
        }
        let dtype = storage_type(&storage.class).unwrap_or(StorageType::F32);
        let data = gather(dtype, bytes, storage.numel, t)
            .map_err(|m| werr(path, format!("tensor `{key}`: {m}")))?;
        let tensor = Tensor::from_vec(data, t.shape.clone(), &Device::Cpu)
            .map_err(|e| werr(path, format!("tensor `{key}`: {e}")))?;
        out.insert(key.clone(), tensor);
    }
    Ok(out)
}

fn storage_type(class: &str) -> Option<StorageType> {
    StorageType::from_class(class)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    file_len: u64,
) -> Result<Vec<u8>> {
    let mut entry = zip.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => werr(
            path,
            format!("record {name} is missing from the zip archive"),
        ),
        e => werr(path, format!("cannot read record {name}: {e}")),
    })?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(werr(
            path,
            format!(
                "record {name} is compressed ({:?}); torch.save stores records uncompressed",
                entry.compression()
            ),
        ));
    }
    let size = entry.size();
    if size > file_len {
        return Err(werr(
            path,
            format!(
                "record {name} claims {size} bytes but the file has only {file_len} (truncated?)"
            ),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut buf).map_err(|e| {
        werr(
            path,
            format!("cannot read record {name} (truncated or corrupt archive): {e}"),
        )
    })?;
    if buf.len() as u64 != size {
        return Err(werr(
            path,
            format!("record {name} has {} bytes, expected {size}", buf.len()),
        ));
    }
    Ok(buf)
}

/// The elements of a strided view of a storage, row-major, as f32.
fn gather(
    dtype: StorageType,
    bytes: &[u8],
    numel: usize,
    t: &pickle::TensorRef,
) -> std::result::Result<Vec<f32>, String> {
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            t.shape, t.stride
        ));
    }
    let count = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("element count overflows")?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // Last element reached by the view, relative to the storage start.
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or("view extent overflows")?;
    }
    if last >= numel {
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches past its storage of {numel} elements",
            t.offset, t.shape, t.stride
        ));
    }
    // Broadcast views (stride 0) could expand to anything; bound them.
    if count > numel.saturating_mul(16).max(1 << 20) {
        return Err(format!(
            "view of {count} elements over a storage of {numel} is not supported"
        ));
    }
    let mut expected = 1usize;
    let mut contiguous = true;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && s != expected {
            contiguous = false;
            break;
        }
        expected *= d;
    }
    let es = dtype.size();
    if contiguous {
        return Ok(dtype.to_f32(&bytes[t.offset * es..(t.offset + count) * es]));
    }
    let rank = t.shape.len();
    let mut idx = vec![0usize; rank];
    let mut out = Vec::with_capacity(count);
    let mut pos = t.offset;
    for _ in 0..count {
        out.push(dtype.get(bytes, pos));
        // Odometer increment of the multi-index, keeping `pos` in step. Wrapping arithmetic:
        // a size-1 axis may carry any stride; `pos` is exact again whenever it is read.
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            pos = pos.wrapping_add(t.stride[ax]);
            if idx[ax] < t.shape[ax] {
                break;
            }
            pos = pos.wrapping_sub(t.stride[ax].wrapping_mul(t.shape[ax]));
            idx[ax] = 0;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `tensors` as a PyTorch `pytorch_model.bin` exactly as `torch.save(state_dict)` does,
/// storing in `dtype` (`F16`, `BF16` or `F32`), in the given order.
///
/// Layout (torch 2.1, `_use_new_zipfile_serialization`): an uncompressed zip with records
/// `archive/data.pkl`, `archive/byteorder` (`little`), `archive/data/<i>` (raw little-endian
/// storage bytes, one storage per tensor, 64-byte aligned, in lexicographic order of `<i>` as
/// torch sorts them) and `archive/version` (`3\n`). `data.pkl` is pickle protocol 2 of an
/// `OrderedDict`, opcode for opcode what Python's pickler emits for torch's `persistent_id`:
///
/// ```text
/// PROTO 2
/// GLOBAL 'collections OrderedDict'   BINPUT 0
/// EMPTY_TUPLE REDUCE                 BINPUT 1
/// MARK                               (SETITEMS batches of 1000; a batch of one uses SETITEM)
///   BINUNICODE '<key>'               BINPUT
///   GLOBAL 'torch._utils _rebuild_tensor_v2' BINPUT  (later: BINGET)
///   MARK                             (args of _rebuild_tensor_v2)
///     MARK BINUNICODE 'storage' BINPUT|BINGET, GLOBAL 'torch HalfStorage' BINPUT|BINGET,
///          BINUNICODE '<i>' BINPUT, BINUNICODE 'cpu' BINPUT|BINGET, BININT* numel
///     TUPLE BINPUT  BINPERSID        (the storage, as a persistent id)
///     BININT1 0                      (storage offset)
///     size tuple, stride tuple       (EMPTY_TUPLE | ints TUPLE1..3 BINPUT | MARK ints TUPLE BINPUT)
///     NEWFALSE                       (requires_grad)
///     BINGET 0 EMPTY_TUPLE REDUCE BINPUT   (backward_hooks = OrderedDict())
///   TUPLE BINPUT
///   REDUCE BINPUT
/// SETITEMS
/// STOP
/// ```
///
/// The file is written to a temporary file in the same directory and renamed into place.
pub fn save_torch_bin(path: &Path, tensors: &[(String, Tensor)], dtype: DType) -> Result<()> {
    let class = match dtype {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        other => {
            return Err(werr(
                path,
                format!("cannot save as {other:?}; use F32, F16 or BF16"),
            ))
        }
    };
    let mut seen = HashSet::new();
    for (k, _) in tensors {
        if !seen.insert(k.as_str()) {
            return Err(werr(path, format!("duplicate key `{k}`")));
        }
    }

    let infos: Vec<(&str, Vec<i64>, i64)> = tensors
        .iter()
        .map(|(k, t)| {
            let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
            (k.as_str(), dims, t.elem_count() as i64)
        })
        .collect();
    let pkl = pickle::write_state_dict(&infos, class);

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.tmp{}", file_name(path), process_id()));
    let result = write_archive(&tmp, &pkl, tensors, dtype)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(not(target_arch = "wasm32"))]
fn process_id() -> u32 {
    std::process::id()
}

/// `std::process::id` panics on wasm32-unknown-unknown.
#[cfg(target_arch = "wasm32")]
fn process_id() -> u32 {
    0
}

fn write_archive(tmp: &Path, pkl: &[u8], tensors: &[(String, Tensor)], dtype: DType) -> Result<()> {
    let zerr = |e: zip::result::ZipError| werr(tmp, format!("cannot write zip archive: {e}"));
    let ioerr = |e: std::io::Error| Error::io(tmp, e);
    let file = File::create(tmp).map_err(ioerr)?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(file));
    let opts = |len: usize| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(len as u64 >= u32::MAX as u64)
    };
    let put = |zip: &mut zip::ZipWriter<BufWriter<File>>, name: &str, data: &[u8]| {
        zip.start_file(format!("archive/{name}"), opts(data.len()))
            .map_err(zerr)?;
        zip.write_all(data).map_err(ioerr)
    };
    put(&mut zip, "data.pkl", pkl)?;
    put(&mut zip, "byteorder", b"little")?;
    let mut keys: Vec<(String, usize)> = (0..tensors.len()).map(|i| (i.to_string(), i)).collect();
    keys.sort();
    for (key, i) in keys {
        let (name, t) = &tensors[i];
        let bytes = tensor_bytes(t, dtype)
            .map_err(|e| werr(tmp, format!("cannot convert `{name}` to {dtype:?}: {e}")))?;
        put(&mut zip, &format!("data/{key}"), &bytes)?;
    }
    put(&mut zip, "version", b"3\n")?;
    let w = zip.finish().map_err(zerr)?;
    let file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().map_err(ioerr)
}

fn tensor_bytes(t: &Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(dtype)?.flatten_all()?;
    Ok(match dtype {
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        _ => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------

/// Just enough of Python's pickle machine for `torch.save` state dicts: objects live in an arena
/// so the memo has reference semantics; calls are kept symbolic and interpreted afterwards.
mod pickle {
    use std::collections::{HashMap, HashSet};

    type Id = usize;
    type Res<T> = std::result::Result<T, String>;

    #[derive(Debug)]
    enum Value {
        None,
        Bool(bool),
        Int(i64),
        // Contents of floats and bytes are never needed.
        Float,
        Str(String),
        Bytes,
        Tuple(Vec<Id>),
        List(Vec<Id>),
        Dict(Vec<(Id, Id)>),
        Global(String, String),
        Call(Id, Id),
        Persistent(Id),
    }

    enum Slot {
        Mark,
        Obj(Id),
    }

    struct Vm<'a> {
        data: &'a [u8],
        pos: usize,
        arena: Vec<Value>,
        stack: Vec<Slot>,
        memo: HashMap<u64, Id>,
    }

    impl<'a> Vm<'a> {
        fn take(&mut self, n: usize) -> Res<&'a [u8]> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.data.len())
                .ok_or("unexpected end of data (truncated pickle)")?;
            let s = &self.data[self.pos..end];
            self.pos = end;
            Ok(s)
        }
        fn u8(&mut self) -> Res<u8> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Res<u16> {
            let b = self.take(2)?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        }
        fn u32(&mut self) -> Res<u32> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn u64(&mut self) -> Res<u64> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }
        fn line(&mut self) -> Res<&'a str> {
            let rest = &self.data[self.pos..];
            let n = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("unterminated text argument")?;
            let s = std::str::from_utf8(&rest[..n]).map_err(|_| "text argument is not UTF-8")?;
            self.pos += n + 1;
            Ok(s)
        }
        fn string(&mut self, n: u64) -> Res<String> {
            let n = usize::try_from(n).map_err(|_| "string too long")?;
            let b = self.take(n)?;
            String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".into())
        }
        fn bytes(&mut self, n: u64) -> Res<Vec<u8>> {
            let n = usize::try_from(n).map_err(|_| "bytes too long")?;
            Ok(self.take(n)?.to_vec())
        }
        fn alloc(&mut self, v: Value) -> Id {
            self.arena.push(v);
            self.arena.len() - 1
        }
        fn push(&mut self, v: Value) {
            let id = self.alloc(v);
            self.stack.push(Slot::Obj(id));
        }
        fn pop(&mut self) -> Res<Id> {
            match self.stack.pop() {
                Some(Slot::Obj(id)) => Ok(id),
                Some(Slot::Mark) => Err("unexpected MARK on the stack".into()),
                None => Err("stack underflow".into()),
            }
        }
        fn top(&self) -> Res<Id> {
            match self.stack.last() {
                Some(Slot::Obj(id)) => Ok(*id),
                Some(Slot::Mark) => Err("unexpected MARK on the stack".into()),
                None => Err("stack underflow".into()),
            }
        }
        fn pop_mark(&mut self) -> Res<Vec<Id>> {
            let m = self
                .stack
                .iter()
                .rposition(|s| matches!(s, Slot::Mark))
                .ok_or("MARK not found")?;
            // Everything after the last MARK is an object.
            let items = self
                .stack
                .drain(m + 1..)
                .filter_map(|s| match s {
                    Slot::Obj(id) => Some(id),
                    Slot::Mark => None,
                })
                .collect();
            self.stack.pop();
            Ok(items)
        }
        fn memo_put(&mut self, k: u64) -> Res<()> {
            let id = self.top()?;
            self.memo.insert(k, id);
            Ok(())
        }
        fn memo_get(&mut self, k: u64) -> Res<()> {
            let id = *self
                .memo
                .get(&k)
                .ok_or_else(|| format!("memo key {k} not found"))?;
            self.stack.push(Slot::Obj(id));
            Ok(())
        }
        fn int_arg(s: &str) -> Res<i64> {
            s.trim()
                .trim_end_matches('L')
                .parse()
                .map_err(|_| format!("bad integer {s:?}"))
        }
        fn long(&mut self, n: usize) -> Res<i64> {
            if n > 8 {
                return Err(format!("integer of {n} bytes is too large"));
            }
            let b = self.take(n)?;
            if n == 0 {
                return Ok(0);
            }
            let mut v: i64 = if b[n - 1] & 0x80 != 0 { -1 } else { 0 };
            for &x in b.iter().rev() {
                v = (v << 8) | x as i64;
            }
            Ok(v)
        }
        fn is_dict_type(&self, id: Id) -> bool {
            matches!(&self.arena[id], Value::Global(m, n)
                if (m == "collections" && (n == "OrderedDict" || n == "defaultdict"))
                    || ((m == "builtins" || m == "__builtin__") && n == "dict"))
        }
        fn call(&mut self, func: Id, args: Id) {
            let v = if self.is_dict_type(func) {
                Value::Dict(Vec::new())
            } else {
                Value::Call(func, args)
            };
            self.push(v);
        }
        fn set_items(&mut self, items: Vec<Id>) -> Res<()> {
            let pairs = pairs(&items).ok_or("odd number of items for SETITEMS")?;
            let target = self.top()?;
            match &mut self.arena[target] {
                Value::Dict(d) => {
                    d.extend(pairs);
                    Ok(())
                }
                _ => Err("SETITEM(S) on an object that is not a dict".into()),
            }
        }
        fn append(&mut self, items: Vec<Id>) -> Res<()> {
            let target = self.top()?;
            match &mut self.arena[target] {
                Value::List(l) => {
                    l.extend(items);
                    Ok(())
                }
                _ => Err("APPEND(S)/ADDITEMS on an object that is not a list".into()),
            }
        }

        fn run(&mut self) -> Res<Id> {
            loop {
                let op = self.u8()?;
                match op {
                    0x80 => {
                        let v = self.u8()?;
                        if v > 5 {
                            return Err(format!("unsupported pickle protocol {v}"));
                        }
                    }
                    0x95 => {
                        self.u64()?; // FRAME length: frames are transparent here
                    }
                    b'.' => return self.pop(),
                    b'(' => self.stack.push(Slot::Mark),
                    b'0' => {
                        self.pop()?;
                    }
                    b'1' => {
                        self.pop_mark()?;
                    }
                    b'2' => {
                        let id = self.top()?;
                        self.stack.push(Slot::Obj(id));
                    }
                    b'N' => self.push(Value::None),
                    0x88 => self.push(Value::Bool(true)),
                    0x89 => self.push(Value::Bool(false)),
                    b'J' => {
                        let v = self.u32()? as i32;
                        self.push(Value::Int(v as i64))
                    }
                    b'K' => {
                        let v = self.u8()?;
                        self.push(Value::Int(v as i64))
                    }
                    b'M' => {
                        let v = self.u16()?;
                        self.push(Value::Int(v as i64))
                    }
                    b'I' => {
                        let s = self.line()?;
                        let v = match s {
                            "00" => Value::Bool(false),
                            "01" => Value::Bool(true),
                            s => Value::Int(Self::int_arg(s)?),
                        };
                        self.push(v)
                    }
                    b'L' => {
                        let s = self.line()?;
                        let v = Self::int_arg(s)?;
                        self.push(Value::Int(v))
                    }
                    0x8a => {
                        let n = self.u8()? as usize;
                        let v = self.long(n)?;
                        self.push(Value::Int(v))
                    }
                    0x8b => {
                        let n = self.u32()? as usize;
                        let v = self.long(n)?;
                        self.push(Value::Int(v))
                    }
                    b'G' => {
                        self.take(8)?;
                        self.push(Value::Float)
                    }
                    b'F' => {
                        let s = self.line()?;
                        s.trim()
                            .parse::<f64>()
                            .map_err(|_| format!("bad float {s:?}"))?;
                        self.push(Value::Float)
                    }
                    b'X' => {
                        let n = self.u32()? as u64;
                        let s = self.string(n)?;
                        self.push(Value::Str(s))
                    }
                    0x8c => {
                        let n = self.u8()? as u64;
                        let s = self.string(n)?;
                        self.push(Value::Str(s))
                    }
                    0x8d => {
                        let n = self.u64()?;
                        let s = self.string(n)?;
                        self.push(Value::Str(s))
                    }
                    b'T' | b'U' => {
                        // Python-2 byte strings: decoded as latin-1 like torch.load does.
                        let n = if op == b'T' {
                            self.u32()? as u64
                        } else {
                            self.u8()? as u64
                        };
                        let b = self.bytes(n)?;
                        self.push(Value::Str(b.iter().map(|&c| c as char).collect()))
                    }
                    b'B' | b'C' | 0x8e => {
                        let n = match op {
                            b'B' => self.u32()? as u64,
                            b'C' => self.u8()? as u64,
                            _ => self.u64()?,
                        };
                        self.bytes(n)?;
                        self.push(Value::Bytes)
                    }
                    b')' => self.push(Value::Tuple(Vec::new())),
                    b't' => {
                        let items = self.pop_mark()?;
                        self.push(Value::Tuple(items))
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        let mut items = Vec::with_capacity(n);
                        for _ in 0..n {
                            items.push(self.pop()?);
                        }
                        items.reverse();
                        self.push(Value::Tuple(items))
                    }
                    b']' | 0x8f => self.push(Value::List(Vec::new())),
                    b'l' | 0x91 => {
                        let items = self.pop_mark()?;
                        self.push(Value::List(items))
                    }
                    b'a' => {
                        let v = self.pop()?;
                        self.append(vec![v])?
                    }
                    b'e' | 0x90 => {
                        let items = self.pop_mark()?;
                        self.append(items)?
                    }
                    b'}' => self.push(Value::Dict(Vec::new())),
                    b'd' => {
                        let items = self.pop_mark()?;
                        let pairs = pairs(&items).ok_or("odd number of items for DICT")?;
                        self.push(Value::Dict(pairs))
                    }
                    b's' => {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        self.set_items(vec![k, v])?
                    }
                    b'u' => {
                        let items = self.pop_mark()?;
                        self.set_items(items)?
                    }
                    b'c' => {
                        let m = self.line()?.to_string();
                        let n = self.line()?.to_string();
                        self.push(Value::Global(m, n))
                    }
                    0x93 => {
                        let n = self.pop()?;
                        let m = self.pop()?;
                        match (&self.arena[m], &self.arena[n]) {
                            (Value::Str(m), Value::Str(n)) => {
                                let g = Value::Global(m.clone(), n.clone());
                                self.push(g)
                            }
                            _ => return Err("STACK_GLOBAL needs two strings".into()),
                        }
                    }
                    b'R' | 0x81 => {
                        let args = self.pop()?;
                        let func = self.pop()?;
                        self.call(func, args)
                    }
                    0x92 => {
                        self.pop()?; // kwargs
                        let args = self.pop()?;
                        let func = self.pop()?;
                        self.call(func, args)
                    }
                    b'b' => {
                        // Object state (e.g. a state dict's `_metadata`): not needed.
                        self.pop()?;
                        self.top()?;
                    }
                    b'q' => {
                        let k = self.u8()? as u64;
                        self.memo_put(k)?
                    }
                    b'r' => {
                        let k = self.u32()? as u64;
                        self.memo_put(k)?
                    }
                    0x94 => {
                        let k = self.memo.len() as u64;
                        self.memo_put(k)?
                    }
                    b'p' => {
                        let k = Self::int_arg(self.line()?)?;
                        self.memo_put(k as u64)?
                    }
                    b'h' => {
                        let k = self.u8()? as u64;
                        self.memo_get(k)?
                    }
                    b'j' => {
                        let k = self.u32()? as u64;
                        self.memo_get(k)?
                    }
                    b'g' => {
                        let k = Self::int_arg(self.line()?)?;
                        self.memo_get(k as u64)?
                    }
                    b'Q' => {
                        let pid = self.pop()?;
                        self.push(Value::Persistent(pid))
                    }
                    b'P' => {
                        let s = self.line()?.to_string();
                        let id = self.alloc(Value::Str(s));
                        self.push(Value::Persistent(id))
                    }
                    op => return Err(format!("unsupported opcode 0x{op:02x}")),
                }
            }
        }
    }

    /// `[k0, v0, k1, v1, ..]` as pairs; `None` for an odd count.
    fn pairs(items: &[Id]) -> Option<Vec<(Id, Id)>> {
        let chunks = items.chunks_exact(2);
        chunks
            .remainder()
            .is_empty()
            .then(|| chunks.map(|c| (c[0], c[1])).collect())
    }

    /// A storage as referenced from the pickle (`('storage', torch.<class>, key, location, numel)`).
    #[derive(Clone, Debug)]
    pub(super) struct StorageRef {
        pub class: String,
        pub key: String,
        pub numel: usize,
    }

    /// A `_rebuild_tensor_v2(storage, offset, size, stride, ...)` call.
    #[derive(Debug)]
    pub(super) struct TensorRef {
        pub storage: StorageRef,
        pub offset: usize,
        pub shape: Vec<usize>,
        pub stride: Vec<usize>,
    }

    pub(super) struct StateDict {
        pub tensors: Vec<(String, TensorRef)>,
        pub skipped: Vec<String>,
    }

    const MAX_DEPTH: usize = 16;

    struct Interp<'a> {
        arena: &'a [Value],
    }

    impl Interp<'_> {
        fn global(&self, id: Id) -> Option<(&str, &str)> {
            match &self.arena[id] {
                Value::Global(m, n) => Some((m, n)),
                _ => None,
            }
        }
        fn items(&self, id: Id) -> Option<&[Id]> {
            match &self.arena[id] {
                Value::Tuple(v) | Value::List(v) => Some(v),
                _ => None,
            }
        }
        fn int(&self, id: Id, what: &str) -> Res<i64> {
            match &self.arena[id] {
                Value::Int(v) => Ok(*v),
                Value::Bool(b) => Ok(*b as i64),
                v => Err(format!("{what}: expected an integer, found {}", kind(v))),
            }
        }
        fn usize(&self, id: Id, what: &str) -> Res<usize> {
            let v = self.int(id, what)?;
            usize::try_from(v).map_err(|_| format!("{what}: negative value {v}"))
        }
        fn usizes(&self, id: Id, what: &str) -> Res<Vec<usize>> {
            let items = self
                .items(id)
                .ok_or_else(|| format!("{what}: expected a tuple"))?;
            items.iter().map(|&i| self.usize(i, what)).collect()
        }

        /// The tensor an object evaluates to, `None` when it is not a tensor.
        fn tensor(&self, id: Id, depth: usize) -> Res<Option<TensorRef>> {
            if depth > MAX_DEPTH {
                return Err("object nesting too deep".into());
            }
            match &self.arena[id] {
                Value::Call(func, args) => self.call(*func, *args, depth),
                _ => Ok(None),
            }
        }

        fn call(&self, func: Id, args: Id, depth: usize) -> Res<Option<TensorRef>> {
            let Some((module, name)) = self.global(func) else {
                return Ok(None);
            };
            let args_v = self.items(args).unwrap_or(&[]);
            match (module, name) {
                ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                    self.rebuild(args_v).map(Some)
                }
                ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                    let data = *args_v.first().ok_or("_rebuild_parameter without data")?;
                    self.tensor(data, depth + 1)
                }
                ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
                    // (func, new_type, args, state): a Tensor subclass; rebuild the plain tensor.
                    match args_v {
                        [f, _, a, ..] => self.call(*f, *a, depth + 1),
                        _ => Err("malformed _rebuild_from_type_v2 arguments".into()),
                    }
                }
                (m, n) if m.starts_with("torch") && n.contains("rebuild") => Err(format!(
                    "unsupported tensor kind {m}.{n} (only dense CPU tensors are supported)"
                )),
                _ => Ok(None),
            }
        }

        fn rebuild(&self, args: &[Id]) -> Res<TensorRef> {
            let [storage, offset, size, stride, ..] = args else {
                return Err("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)".into());
            };
            let pid = match &self.arena[*storage] {
                Value::Persistent(pid) => *pid,
                v => {
                    return Err(format!(
                        "tensor storage is {}, expected a persistent id",
                        kind(v)
                    ))
                }
            };
            let storage = self.storage(pid)?;
            Ok(TensorRef {
                storage,
                offset: self.usize(*offset, "storage offset")?,
                shape: self.usizes(*size, "tensor size")?,
                stride: self.usizes(*stride, "tensor stride")?,
            })
        }

        fn storage(&self, pid: Id) -> Res<StorageRef> {
            let items = self.items(pid).ok_or("persistent id is not a tuple")?;
            let [tag, class, key, _location, numel, ..] = items else {
                return Err("persistent id is not ('storage', type, key, location, numel)".into());
            };
            if !matches!(&self.arena[*tag], Value::Str(s) if s == "storage") {
                return Err("persistent id does not start with 'storage'".into());
            }
            let class = match self.global(*class) {
                Some(("torch", n)) => n.to_string(),
                Some((m, n)) => return Err(format!("unsupported storage type {m}.{n}")),
                None => return Err("storage type is not a class".into()),
            };
            let key = match &self.arena[*key] {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                v => return Err(format!("storage key is {}", kind(v))),
            };
            if key.is_empty() || key.contains('/') || key.contains("..") {
                return Err(format!("invalid storage key {key:?}"));
            }
            Ok(StorageRef {
                class,
                key,
                numel: self.usize(*numel, "storage size")?,
            })
        }
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(..) => "a class",
            Value::Call(..) => "an object",
            Value::Persistent(_) => "a persistent id",
        }
    }

    /// Unpickles `data` and extracts the state dict: the top-level dict, or a dict under
    /// `state_dict` / `model` / `module` when the top level holds no tensors.
    pub(super) fn state_dict(data: &[u8]) -> Res<StateDict> {
        let mut vm = Vm {
            data,
            pos: 0,
            arena: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
        };
        let root = vm.run().map_err(|e| format!("{e} (at byte {})", vm.pos))?;
        let it = Interp { arena: &vm.arena };
        let mut dict = root;
        for _ in 0..4 {
            let Value::Dict(pairs) = &it.arena[dict] else {
                return Err(format!(
                    "the pickled object is {}, expected a dict of tensors",
                    kind(&it.arena[dict])
                ));
            };
            let mut tensors = Vec::new();
            let mut skipped = Vec::new();
            let mut nested = None;
            let mut seen = HashSet::new();
            for &(k, v) in pairs {
                let key = match &it.arena[k] {
                    Value::Str(s) => s.clone(),
                    other => return Err(format!("state-dict key is {}", kind(other))),
                };
                match it.tensor(v, 0).map_err(|e| format!("entry `{key}`: {e}"))? {
                    Some(t) => {
                        if seen.insert(key.clone()) {
                            tensors.push((key, t));
                        } else if let Some(slot) = tensors.iter_mut().find(|(k, _)| *k == key) {
                            slot.1 = t;
                        }
                    }
                    None => {
                        if nested.is_none()
                            && matches!(key.as_str(), "state_dict" | "model" | "module")
                            && matches!(it.arena[v], Value::Dict(_))
                        {
                            nested = Some(v);
                        }
                        skipped.push(key);
                    }
                }
            }
            match (tensors.is_empty(), nested) {
                (true, Some(inner)) => dict = inner,
                _ => return Ok(StateDict { tensors, skipped }),
            }
        }
        Err("no tensors found in nested dicts".into())
    }

    /// Protocol-2 pickle of an `OrderedDict` of `_rebuild_tensor_v2` calls, one storage per entry
    /// (`(key, dims, numel)`), storage `i` for entry `i`. See `save_torch_bin` for the layout.
    pub(super) fn write_state_dict(entries: &[(&str, Vec<i64>, i64)], class: &str) -> Vec<u8> {
        let mut w = Writer::default();
        w.out.extend([0x80, 2]);
        w.global("collections", "OrderedDict");
        let od = w.put();
        w.out.extend(b")R");
        w.put();
        let mut rebuild = None;
        let mut storage_tag = None;
        let mut storage_class = None;
        let mut cpu = None;
        for batch in entries.chunks(1000) {
            if batch.len() > 1 {
                w.out.push(b'(');
            }
            for (key, dims, numel) in batch {
                w.unicode(key);
                w.put();
                w.memo_or(&mut rebuild, |w| {
                    w.global("torch._utils", "_rebuild_tensor_v2")
                });
                w.out.push(b'('); // args
                w.out.push(b'('); // persistent id
                w.memo_or(&mut storage_tag, |w| w.unicode("storage"));
                w.memo_or(&mut storage_class, |w| w.global("torch", class));
                let storage_key = w.next_storage.to_string();
                w.unicode(&storage_key);
                w.put();
                w.memo_or(&mut cpu, |w| w.unicode("cpu"));
                w.int(*numel);
                w.out.push(b't');
                w.put();
                w.out.push(b'Q');
                w.int(0);
                w.int_tuple(dims);
                w.int_tuple(&contiguous_stride(dims));
                w.out.push(0x89);
                w.get(od);
                w.out.extend(b")R");
                w.put();
                w.out.push(b't');
                w.put();
                w.out.push(b'R');
                w.put();
                w.next_storage += 1;
            }
            w.out.push(if batch.len() > 1 { b'u' } else { b's' });
        }
        w.out.push(b'.');
        w.out
    }

    /// torch's strides of a contiguous tensor (`stride[i] = stride[i+1] * max(size[i+1], 1)`).
    fn contiguous_stride(dims: &[i64]) -> Vec<i64> {
        let mut s = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * dims[i + 1].max(1);
        }
        s
    }

    #[derive(Default)]
    struct Writer {
        out: Vec<u8>,
        memo: u32,
        next_storage: usize,
    }

    impl Writer {
        fn put(&mut self) -> u32 {
            let i = self.memo;
            if i < 256 {
                self.out.extend([b'q', i as u8]);
            } else {
                self.out.push(b'r');
                self.out.extend(i.to_le_bytes());
            }
            self.memo += 1;
            i
        }
        fn get(&mut self, i: u32) {
            if i < 256 {
                self.out.extend([b'h', i as u8]);
            } else {
                self.out.push(b'j');
                self.out.extend(i.to_le_bytes());
            }
        }
        /// Emits an object once, memoized; later uses are BINGETs (Python memoizes by identity,
        /// and these are the same objects every time in torch's pickler).
        fn memo_or(&mut self, slot: &mut Option<u32>, emit: impl FnOnce(&mut Self)) {
            match *slot {
                Some(i) => self.get(i),
                None => {
                    emit(self);
                    *slot = Some(self.put());
                }
            }
        }
        fn global(&mut self, module: &str, name: &str) {
            self.out.push(b'c');
            self.out.extend(module.as_bytes());
            self.out.push(b'\n');
            self.out.extend(name.as_bytes());
            self.out.push(b'\n');
        }
        fn unicode(&mut self, s: &str) {
            self.out.push(b'X');
            self.out.extend((s.len() as u32).to_le_bytes());
            self.out.extend(s.as_bytes());
        }
        /// Python's `save_long` for protocol 2.
        fn int(&mut self, v: i64) {
            if (0..=0xff).contains(&v) {
                self.out.extend([b'K', v as u8]);
            } else if (0..=0xffff).contains(&v) {
                self.out.push(b'M');
                self.out.extend((v as u16).to_le_bytes());
            } else if i32::try_from(v).is_ok() {
                self.out.push(b'J');
                self.out.extend((v as i32).to_le_bytes());
            } else {
                // LONG1: minimal little-endian two's complement.
                let mut b = v.to_le_bytes().to_vec();
                while b.len() > 1 {
                    let last = b[b.len() - 1];
                    let prev = b[b.len() - 2];
                    if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                        b.pop();
                    } else {
                        break;
                    }
                }
                self.out.extend([0x8a, b.len() as u8]);
                self.out.extend(b);
            }
        }
        fn int_tuple(&mut self, v: &[i64]) {
            match v.len() {
                0 => self.out.push(b')'),
                n @ 1..=3 => {
                    for &x in v {
                        self.int(x);
                    }
                    self.out.push(0x84 + n as u8);
                    self.put();
                }
                _ => {
                    self.out.push(b'(');
                    for &x in v {
                        self.int(x);
                    }
                    self.out.push(b't');
                    self.put();
                }
            }
        }
    }
}
