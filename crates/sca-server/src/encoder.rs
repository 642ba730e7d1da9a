//! The image encoder behind `/v1/embed`: ONNX Runtime (`ort`, library loaded at run time) with
//! the bundle's `encoder.onnx`, or the candle encoder of `sca-core` as the fallback.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use candle_core::{Device, Tensor};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use sca_core::image::Preprocessed;
use sca_core::{ImageEmbedding, Sca, Trace};

use crate::config::{EncoderChoice, ExecutionProvider, ServerConfig};
use crate::error::ServerError;

/// The file name `scripts/setup-onnxruntime.sh` writes under `.cache/onnxruntime/`.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";

/// Finds ONNX Runtime's shared library: `explicit`, then `$ORT_DYLIB_PATH`, then
/// `.cache/onnxruntime/libonnxruntime.so.1.32.0` under the current directory, its ancestors, or
/// the running executable's ancestors (a `target/release/` binary of this repo finds the repo's
/// copy). `None` when there is none.
///
/// ```
/// let missing = std::path::Path::new("/nonexistent/libonnxruntime.so");
/// assert_eq!(sca_server::encoder::find_ort_library(Some(missing)), None);
/// ```
pub fn find_ort_library(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
        .into_iter()
        .map(|r| r.join(".cache/onnxruntime").join(ORT_LIBRARY_FILE))
        .find(|p| p.is_file())
}

/// The process-wide ONNX Runtime environment (the library can be loaded once per process).
fn ort_environment(lib: &Path) -> Result<&'static Environment, String> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let builder = ort::init_from(lib).map_err(|e| format!("{e}"))?;
        builder
            .with_name("sca-server")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A fixed set of sessions; a caller borrows one for a run (`Session::run` needs `&mut`).
struct SessionPool {
    free: Mutex<Vec<Session>>,
    ready: Condvar,
    input: String,
    output: String,
}

impl SessionPool {
    fn run(&self, shape: [usize; 4], data: Vec<f32>) -> Result<(Vec<usize>, Vec<f32>), String> {
        let mut session = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(s) = free.pop() {
                    break s;
                }
                free = self.ready.wait(free).unwrap_or_else(|e| e.into_inner());
            }
        };
        let res = (|| {
            let input = OrtTensor::<f32>::from_array((shape.to_vec(), data))
                .map_err(|e| format!("input tensor: {e}"))?;
            let outputs = session
                .run(ort::inputs![self.input.as_str() => input])
                .map_err(|e| format!("ONNX Runtime run: {e}"))?;
            let (shape, data) = outputs[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output `{}`: {e}", self.output))?;
            Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
        })();
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
        self.ready.notify_one();
        res
    }
}

enum Backend {
    Onnx(SessionPool),
    Candle,
}

/// The encoder in use; [`Encoder::name`] says which (`onnxruntime-cpu`, `candle`, ...).
pub struct Encoder {
    backend: Backend,
    name: String,
    /// Set once a failing ONNX Runtime run has been logged (later ones fall back silently).
    run_failure_logged: AtomicBool,
}

impl Encoder {
    /// The candle encoder of `sca-core`.
    pub fn candle() -> Self {
        Self {
            backend: Backend::Candle,
            name: "candle".into(),
            run_failure_logged: AtomicBool::new(false),
        }
    }

    /// Picks the encoder for `cfg`. `onnx` is the bundle's checked `encoder.onnx`, when it has
    /// one. With [`EncoderChoice::Auto`] anything missing means candle, logged once here.
    pub fn new(cfg: &ServerConfig, onnx: Option<&Path>) -> Result<Self, ServerError> {
        let why_not = match cfg.encoder {
            EncoderChoice::Candle => return Ok(Self::candle()),
            _ => match (onnx, find_ort_library(cfg.ort_lib.as_deref())) {
                (None, _) => format!(
                    "the model at {} has no {} (a bundle written by `export bundle` has one)",
                    cfg.model.display(),
                    sca_core::bundle::ENCODER_ONNX
                ),
                (Some(_), None) => format!(
                    "the ONNX Runtime library was not found ({}); install it with `bash scripts/setup-onnxruntime.sh` or pass --ort-lib / set ORT_DYLIB_PATH",
                    match &cfg.ort_lib {
                        Some(p) => format!("--ort-lib {} does not exist", p.display()),
                        None => "ORT_DYLIB_PATH unset or missing, no .cache/onnxruntime".into(),
                    }
                ),
                (Some(model), Some(lib)) => match Self::onnx(cfg, model, &lib) {
                    Ok(enc) => {
                        tracing::info!(
                            "image encoder: ONNX Runtime ({}) with {} from {}",
                            enc.name,
                            model.display(),
                            lib.display()
                        );
                        return Ok(enc);
                    }
                    Err(e) => e,
                },
            },
        };
        if cfg.encoder == EncoderChoice::Onnx {
            return Err(ServerError::Onnx(why_not));
        }
        tracing::warn!("image encoder: candle (ONNX Runtime not used: {why_not})");
        Ok(Self::candle())
    }

    fn onnx(cfg: &ServerConfig, model: &Path, lib: &Path) -> Result<Self, String> {
        let env = ort_environment(lib)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / cfg.encoder_workers.max(1)).max(1);
        let mut ep_name = cfg.ep.name();
        let mut sessions = Vec::with_capacity(cfg.encoder_workers);
        for _ in 0..cfg.encoder_workers.max(1) {
            let builder = Session::builder(env)
                .map_err(|e| format!("session builder: {e}"))?
                .with_intra_threads(threads)
                .map_err(|e| format!("intra-op threads: {e}"))?;
            let eps = match cfg.ep {
                ExecutionProvider::Cpu => vec![],
                ExecutionProvider::Cuda => {
                    vec![ort::ep::CUDA::default().build().error_on_failure()]
                }
                ExecutionProvider::Tensorrt => vec![
                    ort::ep::TensorRT::default().build().error_on_failure(),
                    ort::ep::CUDA::default().build(),
                ],
            };
            let mut builder = if eps.is_empty() {
                builder
            } else {
                match builder.with_execution_providers(eps) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(
                            "the {} execution provider is not available ({e}); the encoder runs on ONNX Runtime's CPU provider",
                            cfg.ep.name()
                        );
                        ep_name = "cpu";
                        e.recover()
                    }
                }
            };
            let session = builder
                .commit_from_file(model)
                .map_err(|e| format!("loading {}: {e}", model.display()))?;
            sessions.push(session);
        }
        let first = &sessions[0];
        let input = first
            .inputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| format!("{} has no input", model.display()))?;
        let output = first
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| format!("{} has no output", model.display()))?;
        Ok(Self {
            backend: Backend::Onnx(SessionPool {
                free: Mutex::new(sessions),
                ready: Condvar::new(),
                input,
                output,
            }),
            name: format!("onnxruntime-{ep_name}"),
            run_failure_logged: AtomicBool::new(false),
        })
    }

    /// `onnxruntime-cpu`, `onnxruntime-cuda`, `onnxruntime-tensorrt` or `candle`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_onnx(&self) -> bool {
        matches!(self.backend, Backend::Onnx(_))
    }

    /// Runs the encoder on preprocessed pixels. A failing ONNX Runtime run falls back to
    /// candle for that image (logged once).
    pub fn embed(&self, sca: &Sca, pre: &Preprocessed) -> sca_core::Result<ImageEmbedding> {
        if let Backend::Onnx(pool) = &self.backend {
            let s = pre.pad_size;
            match pool.run([1, 3, s, s], pre.pixel_values.clone()) {
                Ok((shape, data)) => return Self::to_embedding(sca, pre, shape, data),
                Err(e) => {
                    if !self.run_failure_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "ONNX Runtime encoder failed ({e}); falling back to candle for such images"
                        );
                    }
                }
            }
        }
        sca.embed_preprocessed(pre, &mut Trace::default())
    }

    /// Runs the ONNX encoder (no fallback) and checks the output shape; a no-op for candle.
    pub fn check(&self, sca: &Sca, pre: &Preprocessed) -> sca_core::Result<()> {
        if let Backend::Onnx(pool) = &self.backend {
            let s = pre.pad_size;
            let (shape, data) = pool
                .run([1, 3, s, s], pre.pixel_values.clone())
                .map_err(sca_core::Error::Bundle)?;
            Self::to_embedding(sca, pre, shape, data)?;
        }
        Ok(())
    }

    fn to_embedding(
        sca: &Sca,
        pre: &Preprocessed,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> sca_core::Result<ImageEmbedding> {
        let vc = &sca.config().vision_config;
        let g = vc.grid_size();
        let want = [1, vc.output_channels, g, g];
        if shape != want {
            return Err(sca_core::Error::Bundle(format!(
                "encoder.onnx returned shape {shape:?}, the model expects {want:?}"
            )));
        }
        let embedding = Tensor::from_vec(data, shape, &Device::Cpu)?;
        Ok(ImageEmbedding {
            embedding,
            original_size: pre.original_size,
            resized_size: pre.resized_size,
        })
    }
}
