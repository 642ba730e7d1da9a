//! The server's settings: one struct, parsed by `sca serve` and `sca-server` alike.

use std::path::PathBuf;
use std::time::Duration;

/// Which implementation runs the image encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EncoderChoice {
    /// ONNX Runtime with the bundle's `encoder.onnx` when both are there, else candle (logged).
    #[default]
    Auto,
    /// ONNX Runtime only: start-up fails when it cannot be used.
    Onnx,
    /// The candle encoder of `sca-core`.
    Candle,
}

/// ONNX Runtime execution provider for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs an ONNX Runtime build with CUDA, e.g. the `onnxruntime-gpu` wheel).
    Cuda,
    /// NVIDIA TensorRT, with CUDA as the fallback for unsupported nodes.
    Tensorrt,
}

impl ExecutionProvider {
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Tensorrt => "tensorrt",
        }
    }
}

/// Everything `sca serve` / `sca-server` take on the command line.
///
/// ```
/// let cfg = sca_server::ServerConfig::new("models/sca-shapes");
/// assert_eq!(cfg.addr, "127.0.0.1:8080");
/// assert_eq!(cfg.encoder, sca_server::EncoderChoice::Auto);
/// ```
#[derive(Debug, Clone, clap::Args)]
#[command(about = None, long_about = None)]
pub struct ServerConfig {
    /// Model: a bundle directory (manifest.json, as `export bundle` writes) or a checkpoint
    /// directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (`HOST:PORT`; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Name of the bundle under `/models/<NAME>/` (default: the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Directory served at `/` (default: `web/dist` or `web` under the current directory when
    /// it holds an index.html; otherwise the built-in page).
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Image encoder implementation.
    #[arg(long, value_enum, default_value_t = EncoderChoice::Auto)]
    pub encoder: EncoderChoice,
    /// ONNX Runtime execution provider (falls back to CPU, with a warning, when unavailable).
    #[arg(long, value_enum, default_value_t = ExecutionProvider::Cpu)]
    pub ep: ExecutionProvider,
    /// ONNX Runtime shared library (default: `$ORT_DYLIB_PATH`, then
    /// `.cache/onnxruntime/libonnxruntime.so.1.32.0` under the current directory or the
    /// executable's ancestors, as `scripts/setup-onnxruntime.sh` writes it).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Image encoder runs at the same time.
    #[arg(long, default_value_t = 1)]
    pub encoder_workers: usize,
    /// Prompt decoding (masks + caption) runs at the same time.
    #[arg(long, default_value_t = 1)]
    pub predict_workers: usize,
    /// Requests admitted to the work queue (running or waiting); more get 503 + Retry-After.
    #[arg(long, default_value_t = 32)]
    pub queue_size: usize,
    /// Per-request time limit in seconds (reading the body, waiting, running).
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_body_mb: usize,
    /// Largest image in pixels (width x height), checked from the header before decoding.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_pixels: u64,
    /// Memory for cached embeddings, in MiB (LRU by the image's sha256).
    #[arg(long, default_value_t = 256)]
    pub cache_mb: usize,
    /// Most prompts in one /v1/predict request.
    #[arg(long, default_value_t = 16)]
    pub max_prompts: usize,
    /// Upper bound for a request's `max_new_tokens`.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Upper bound for a request's `beams`.
    #[arg(long, default_value_t = 8)]
    pub max_beams: usize,
    /// `Retry-After` seconds in 503 answers.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
}

#[derive(clap::Parser)]
struct Wrapper {
    #[command(flatten)]
    cfg: ServerConfig,
}

impl ServerConfig {
    /// The defaults (as on the command line) for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        let model: PathBuf = model.into();
        let args: [std::ffi::OsString; 3] = ["sca-server".into(), "--model".into(), model.into()];
        <Wrapper as clap::Parser>::parse_from(args).cfg
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_mb.saturating_mul(1024 * 1024)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs.max(0.001))
    }

    /// Checks the numbers that must be positive.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("--encoder-workers", self.encoder_workers),
            ("--predict-workers", self.predict_workers),
            ("--queue-size", self.queue_size),
            ("--max-body-mb", self.max_body_mb),
            ("--max-prompts", self.max_prompts),
            ("--max-new-tokens", self.max_new_tokens),
            ("--max-beams", self.max_beams),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return Err(format!(
                "--timeout-secs must be positive, got {}",
                self.timeout_secs
            ));
        }
        if self.max_pixels == 0 {
            return Err("--max-pixels must be at least 1".into());
        }
        Ok(())
    }
}
