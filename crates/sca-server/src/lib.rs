//! `sca-server`: the HTTP server of Segment and Caption Anything (DESIGN.md §5).
//!
//! - `POST /v1/embed`: image bytes (PNG/JPEG/WebP, raw body or a multipart `image` field) ->
//!   the image embedding as safetensors ([`wire`]: `image_embeddings` (1,C,g,g), f16 by
//!   default, `?dtype=f32`), with the original and resized sizes and the `embedding_id`.
//!   The encoder runs on ONNX Runtime with the bundle's `encoder.onnx` ([`encoder`]), or on
//!   candle when ONNX Runtime or the file is missing.
//! - `POST /v1/predict`: multipart `image` or `embedding_id` + `request` (JSON, see
//!   [`PredictRequest`]) -> `{"embedding_id", "original_size", "regions": [{"caption",
//!   "tokens", "iou", "masks" (COCO RLE), "box" (xywh)}]}`.
//! - `GET /` the page, `GET /models/<name>/<file>` the bundle (ETag, immutable), `/healthz`,
//!   `/metrics` (Prometheus text).
//!
//! Embeddings are cached by the image's sha256 ([`cache`]); heavy work goes through a bounded
//! queue ([`queue`]) that answers 503 + `Retry-After` when full. Errors are JSON
//! `{"error": {"code", "message"}}` ([`ApiError`]).
//!
//! ```no_run
//! let cfg = sca_server::ServerConfig::new("models/sca-shapes");
//! sca_server::run(cfg)?; // prints the URL, serves until Ctrl-C / SIGTERM
//! # Ok::<(), sca_server::ServerError>(())
//! ```

pub mod app;
pub mod cache;
pub mod config;
pub mod encoder;
pub mod error;
pub mod metrics;
pub mod queue;
pub mod request;
pub use sca_core::wire;

pub use app::{check_image_header, default_web_dir, run, Server, WebRoot, BUILTIN_PAGE};
pub use config::{EncoderChoice, ExecutionProvider, ServerConfig};
pub use error::{ApiError, ServerError};
pub use request::{PredictRequest, PredictResponse, PromptJson, RegionJson};

/// Installs the `tracing` subscriber the binaries use: `RUST_LOG`, else `info` for this crate
/// and `warn` elsewhere, on stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sca_server=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
