//! The wire format of `/v1/embed`: a [safetensors](https://huggingface.co/docs/safetensors)
//! file holding one tensor, `image_embeddings`, shape `(1, C, g, g)`, dtype `F16` (default) or
//! `F32`, little-endian, row-major; the sizes travel in the header's `__metadata__`:
//!
//! ```text
//! u64 LE  N                      header length
//! N bytes JSON header            {"__metadata__": {"format": "sca-embedding/1",
//!                                  "embedding_id": "<sha256 of the image bytes>",
//!                                  "original_size": "H,W", "resized_size": "h,w",
//!                                  "encoder": "onnxruntime-cpu", "model": "<name>"},
//!                                 "image_embeddings": {"dtype": "F16", "shape": [1, C, g, g],
//!                                                      "data_offsets": [0, 2*C*g*g]}}
//!                                (padded with spaces to a multiple of 8)
//! data                           C*g*g values
//! ```
//!
//! Any safetensors reader loads it (`candle_core::safetensors::load_buffer`, Python
//! `safetensors.numpy.load`); [`decode`] also returns the metadata.

use std::collections::BTreeMap;

use half::f16;

/// The value of `__metadata__.format`.
pub const FORMAT: &str = "sca-embedding/1";
/// The tensor's name.
pub const TENSOR: &str = "image_embeddings";

/// Element type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDType {
    F16,
    F32,
}

impl WireDType {
    pub fn name(self) -> &'static str {
        match self {
            WireDType::F16 => "F16",
            WireDType::F32 => "F32",
        }
    }

    /// Parses `f16` / `f32` (either case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(WireDType::F16),
            "f32" => Some(WireDType::F32),
            _ => None,
        }
    }
}

/// A decoded `/v1/embed` answer.
#[derive(Debug, Clone)]
pub struct WireEmbedding {
    pub shape: Vec<usize>,
    pub dtype: WireDType,
    /// The values as f32.
    pub data: Vec<f32>,
    /// `__metadata__` (format, embedding_id, original_size, resized_size, encoder, model).
    pub metadata: BTreeMap<String, String>,
}

impl WireEmbedding {
    /// `(H, W)` from `original_size`.
    pub fn original_size(&self) -> Option<(usize, usize)> {
        parse_size(self.metadata.get("original_size")?)
    }

    /// `(h, w)` from `resized_size`.
    pub fn resized_size(&self) -> Option<(usize, usize)> {
        parse_size(self.metadata.get("resized_size")?)
    }
}

fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (a, b) = s.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Writes the safetensors bytes for `data` (row-major, `shape`).
///
/// ```
/// use sca_core::wire::{decode, encode, WireDType};
/// let meta = [("original_size".to_string(), "3,4".to_string())].into();
/// let bytes = encode(&[1.0, -2.5], &[1, 2], WireDType::F16, &meta);
/// let back = decode(&bytes).unwrap();
/// assert_eq!((back.shape, back.data), (vec![1, 2], vec![1.0, -2.5]));
/// assert_eq!(back.metadata["format"], "sca-embedding/1");
/// assert_eq!(back.metadata["original_size"], "3,4");
/// ```
pub fn encode(
    data: &[f32],
    shape: &[usize],
    dtype: WireDType,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    let width = match dtype {
        WireDType::F16 => 2,
        WireDType::F32 => 4,
    };
    let nbytes = data.len() * width;
    let header = serde_json::json!({
        "__metadata__": meta,
        TENSOR: {"dtype": dtype.name(), "shape": shape, "data_offsets": [0, nbytes]},
    });
    let mut h = serde_json::to_vec(&header).expect("JSON of strings and numbers");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + nbytes);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    match dtype {
        WireDType::F16 => {
            for v in data {
                out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        WireDType::F32 => {
            for v in data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// Reads what [`encode`] wrote (or any one-tensor F16/F32 safetensors with `image_embeddings`).
pub fn decode(bytes: &[u8]) -> Result<WireEmbedding, String> {
    if bytes.len() < 8 {
        return Err(format!("{} bytes: too short for safetensors", bytes.len()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let body = bytes.get(8..8usize.saturating_add(n)).ok_or_else(|| {
        format!(
            "header length {n} exceeds the {} bytes received",
            bytes.len()
        )
    })?;
    let header: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("header: {e}"))?;
    let metadata: BTreeMap<String, String> = header
        .get("__metadata__")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("__metadata__: {e}"))?
        .unwrap_or_default();
    let t = header
        .get(TENSOR)
        .ok_or_else(|| format!("no tensor `{TENSOR}`"))?;
    let dtype = t["dtype"]
        .as_str()
        .and_then(WireDType::parse)
        .ok_or_else(|| format!("dtype {} (expected F16 or F32)", t["dtype"]))?;
    let shape: Vec<usize> =
        serde_json::from_value(t["shape"].clone()).map_err(|e| format!("shape: {e}"))?;
    let offs: [usize; 2] = serde_json::from_value(t["data_offsets"].clone())
        .map_err(|e| format!("data_offsets: {e}"))?;
    let data = &bytes[8 + n..];
    let raw = data
        .get(offs[0]..offs[1])
        .ok_or_else(|| format!("data_offsets {offs:?} exceed {} data bytes", data.len()))?;
    let count: usize = shape.iter().product();
    let values: Vec<f32> = match dtype {
        WireDType::F16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WireDType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    if values.len() != count {
        return Err(format!(
            "{} values for shape {shape:?} ({count})",
            values.len()
        ));
    }
    Ok(WireEmbedding {
        shape,
        dtype,
        data: values,
        metadata,
    })
}
