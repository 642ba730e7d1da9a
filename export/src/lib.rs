//! Export of SCA checkpoints to deployable artefacts: the bundle of DESIGN.md §4
//! ([`bundle::export_bundle`]: f16/f32 encoder, quantized GGUF decoder, ONNX encoder,
//! manifest), the SAM ViT image encoder alone as an ONNX graph ([`onnx::export_onnx`], written
//! from Rust with hand-declared protobuf messages), and the bundle check
//! ([`verify::verify`]).

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod bundle;
pub mod onnx;
pub mod onnx_proto;
pub mod verify;

pub use onnx::{
    build_encoder_model, export_onnx, export_onnx_with, write_onnx, OnnxOptions, OnnxSummary,
};

/// Everything an export can fail on; each message names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the checkpoint or its config failed in `sca-core`.
    #[error(transparent)]
    Core(#[from] sca_core::Error),
    /// A tensor of the checkpoint at `path` is missing or has the wrong shape or dtype.
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// An input file is missing or unusable.
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    /// The checkpoint uses a feature the exporter does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// failed export never leaves a partial file at `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    // Temp files are created 0600; artefacts should be readable like any other output.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
