//! The application: state, router, handlers, and serving with graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
use futures_util::StreamExt;
use sca_core::bundle::{self, Manifest};
use sca_core::{ImageEmbedding, Sca};

use crate::cache::Lru;
use crate::config::ServerConfig;
use crate::encoder::Encoder;
use crate::error::{ApiError, ServerError};
use crate::metrics::{Gauges, Metrics};
use crate::queue::{CancelOnDrop, Pool, Ticket, WorkQueue};
use crate::request::{Limits, PredictRequest, PredictResponse, RegionJson};
use crate::wire::{self, WireDType};

/// The built-in page served at `/` when there is no web directory.
pub const BUILTIN_PAGE: &str = include_str!("page.html");

/// The bundle files served under `/models/<name>/`.
struct BundleFiles {
    dir: PathBuf,
    /// file name -> (sha256 hex, bytes); `manifest.json` included.
    files: BTreeMap<String, (String, u64)>,
}

/// Where `/` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRoot {
    Dir(PathBuf),
    Builtin,
}

/// Everything the handlers share.
pub struct AppState {
    cfg: ServerConfig,
    sca: Arc<Sca>,
    encoder: Arc<Encoder>,
    cache: Mutex<Lru<ImageEmbedding>>,
    queue: WorkQueue,
    metrics: Metrics,
    bundle: Option<BundleFiles>,
    web: WebRoot,
    model_name: String,
}

/// A loaded server, ready to serve on a listener.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = sca_server::Server::load(sca_server::ServerConfig::new("models/sca-shapes"))?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

fn valid_model_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The default web directory: `web/dist` or `web` under the current directory, when it holds
/// an `index.html`.
pub fn default_web_dir() -> Option<PathBuf> {
    ["web/dist", "web"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("index.html").is_file())
}

impl Server {
    /// Loads the model (a bundle is sha256-checked), picks the encoder (ONNX Runtime or
    /// candle), and prepares the page and the bundle files. Blocking: call it before (or
    /// outside) the async runtime.
    pub fn load(cfg: ServerConfig) -> Result<Self, ServerError> {
        cfg.validate().map_err(ServerError::Config)?;
        let dir = cfg.model.clone();
        let model_err = |source| ServerError::Model {
            path: dir.clone(),
            source,
        };
        let t0 = Instant::now();
        let (sca, onnx, bundle_files) = if bundle::is_bundle(&dir) {
            let b = bundle::Bundle::from_dir(&dir).map_err(model_err)?;
            let manifest: Manifest = b.manifest.clone();
            let mbytes =
                std::fs::read(dir.join(bundle::MANIFEST)).map_err(|e| ServerError::Io {
                    what: format!("reading {}", dir.join(bundle::MANIFEST).display()),
                    source: e,
                })?;
            let mut files: BTreeMap<String, (String, u64)> = manifest
                .files
                .iter()
                .map(|(k, v)| (k.clone(), (v.sha256.clone(), v.bytes)))
                .collect();
            files.insert(
                bundle::MANIFEST.to_string(),
                (bundle::sha256_hex(&mbytes), mbytes.len() as u64),
            );
            let onnx = manifest
                .files
                .contains_key(bundle::ENCODER_ONNX)
                .then(|| dir.join(bundle::ENCODER_ONNX));
            let sca = b.into_sca(Device::Cpu).map_err(model_err)?;
            (
                sca,
                onnx,
                Some(BundleFiles {
                    dir: dir.clone(),
                    files,
                }),
            )
        } else {
            let sca = Sca::load(&dir, Device::Cpu).map_err(model_err)?;
            let onnx = dir.join(bundle::ENCODER_ONNX);
            (sca, onnx.is_file().then_some(onnx), None)
        };
        tracing::info!(
            "loaded {} in {:.2}s",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        let sca = Arc::new(sca);
        let encoder = Encoder::new(&cfg, onnx.as_deref())?;
        let encoder = Self::warm_up(&cfg, &sca, encoder)?;
        let web = match &cfg.web {
            Some(d) if d.is_dir() => WebRoot::Dir(d.clone()),
            Some(d) => {
                return Err(ServerError::Config(format!(
                    "--web {}: not a directory",
                    d.display()
                )))
            }
            None => default_web_dir().map_or(WebRoot::Builtin, WebRoot::Dir),
        };
        let model_name = match &cfg.model_name {
            Some(n) => n.clone(),
            None => std::fs::canonicalize(&dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into()),
        };
        if !valid_model_name(&model_name) {
            return Err(ServerError::Config(format!(
                "model name `{model_name}` (used in /models/<name>/) may only hold letters, digits, `-`, `_` and `.`; set --model-name"
            )));
        }
        let state = AppState {
            cache: Mutex::new(Lru::new(cfg.cache_mb.saturating_mul(1024 * 1024))),
            queue: WorkQueue::new(cfg.queue_size, cfg.encoder_workers, cfg.predict_workers),
            metrics: Metrics::default(),
            bundle: bundle_files,
            web,
            model_name,
            sca,
            encoder: Arc::new(encoder),
            cfg,
        };
        Ok(Self {
            state: Arc::new(state),
        })
    }

    /// Runs the ONNX encoder once on a blank image: checks the output shape and warms it up.
    fn warm_up(cfg: &ServerConfig, sca: &Sca, enc: Encoder) -> Result<Encoder, ServerError> {
        if !enc.is_onnx() {
            return Ok(enc);
        }
        let img = image::RgbImage::new(8, 8);
        let res = sca.preprocess(&img).and_then(|pre| enc.check(sca, &pre));
        match res {
            Ok(()) => Ok(enc),
            Err(e) if cfg.encoder == crate::EncoderChoice::Onnx => {
                Err(ServerError::Onnx(e.to_string()))
            }
            Err(e) => {
                tracing::warn!("image encoder: candle (the ONNX encoder failed its check: {e})");
                Ok(Encoder::candle())
            }
        }
    }

    /// `onnxruntime-cpu`, ..., or `candle`.
    pub fn encoder_name(&self) -> &str {
        self.state.encoder.name()
    }

    /// The name under `/models/`.
    pub fn model_name(&self) -> &str {
        &self.state.model_name
    }

    /// What `/` serves.
    pub fn web_root(&self) -> &WebRoot {
        &self.state.web
    }

    /// The work queue (for tests and embedding applications that add their own jobs).
    pub fn queue(&self) -> &WorkQueue {
        &self.state.queue
    }

    /// The loaded model (for in-process comparisons).
    pub fn sca(&self) -> &Arc<Sca> {
        &self.state.sca
    }

    /// The axum router with every route and middleware.
    pub fn router(&self) -> Router {
        let st = self.state.clone();
        Router::new()
            .route("/v1/embed", post(embed))
            .route("/v1/predict", post(predict))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/models", get(list_models))
            .route("/models/{name}/{*file}", get(model_file))
            .fallback(static_files)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::disable())
            .layer(middleware::from_fn_with_state(st.clone(), observe))
            .with_state(st)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting and waits for the
    /// requests in flight (their encoder and decoder work included) to finish.
    pub async fn serve<F>(
        self,
        listener: tokio::net::TcpListener,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Loads the model, binds `cfg.addr`, prints the URL on stdout, and serves until Ctrl-C or
/// SIGTERM (a second signal exits at once). What `sca serve` and `sca-server` run.
pub fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    let server = Server::load(cfg.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sca-server")
        .build()
        .map_err(|e| ServerError::Io {
            what: "starting the async runtime".into(),
            source: e,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.addr)
            .await
            .map_err(|e| ServerError::Io {
                what: format!("listening on {}", cfg.addr),
                source: e,
            })?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| ServerError::Io {
            what: "reading the bound address".into(),
            source: e,
        })?;
        let page = match server.web_root() {
            WebRoot::Dir(d) => format!("page from {}", d.display()),
            WebRoot::Builtin => "built-in page".into(),
        };
        println!(
            "sca-server: model {} ({} encoder, {page}) at http://{addr}/",
            server.model_name(),
            server.encoder_name()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        server
            .serve(listener, async {
                shutdown_signal().await;
                eprintln!("sca-server: shutting down, finishing requests in flight (signal again to exit now)");
                tokio::spawn(async {
                    shutdown_signal().await;
                    eprintln!("sca-server: exiting now");
                    std::process::exit(130);
                });
            })
            .await
            .map_err(|e| ServerError::Io {
                what: "serving".into(),
                source: e,
            })
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

type St = State<Arc<AppState>>;

fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/embed" => "/v1/embed",
        "/v1/predict" => "/v1/predict",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        p if p == "/models" || p.starts_with("/models/") => "/models",
        p if p.starts_with("/v1/") => "/v1/other",
        _ => "static",
    }
}

/// Metrics, the per-request time limit (API routes), and CORS for the API and the bundles.
async fn observe(State(st): St, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let route = route_label(req.uri().path());
    let api = route.starts_with("/v1/");
    let cors = api || route == "/models";
    let mut res = if cors && req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(86400));
        r
    } else if api {
        match tokio::time::timeout(st.cfg.timeout(), next.run(req)).await {
            Ok(r) => r,
            Err(_) => {
                st.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                ApiError::unavailable(
                    "timeout",
                    format!(
                        "the request took longer than the server's limit of {}s",
                        st.cfg.timeout_secs
                    ),
                    st.cfg.retry_after_secs,
                )
                .into_response()
            }
        }
    } else {
        next.run(req).await
    };
    if cors {
        res.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    let status = res.status().as_u16();
    if status == 503 {
        if let Some(v) = res.headers().get(header::RETRY_AFTER) {
            tracing::debug!("503 on {route}, Retry-After {v:?}");
        }
    }
    st.metrics.request(route, status, t0.elapsed());
    res
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads the whole body, refusing one longer than `limit` (by its Content-Length when
/// declared, before reading anything).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if n > limit as u64 {
            return Err(ApiError::body_too_large(limit));
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("body_read", format!("reading the request body failed: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The parts of a multipart form, by field name (files and text alike).
async fn read_multipart(req: Request, limit: usize) -> Result<BTreeMap<String, Bytes>, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, limit).await?;
    let req = Request::from_parts(parts, Body::from(bytes));
    let mut form = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
    let mut fields = BTreeMap::new();
    loop {
        let field = form.next_field().await.map_err(|e| {
            ApiError::bad_request(
                "invalid_multipart",
                format!("the multipart form: {}", e.body_text()),
            )
        })?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        let data = field.bytes().await.map_err(|e| {
            ApiError::bad_request(
                "invalid_multipart",
                format!("form field `{name}`: {}", e.body_text()),
            )
        })?;
        if fields.insert(name.clone(), data).is_some() {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                format!("form field `{name}` is given twice"),
            ));
        }
    }
    Ok(fields)
}

/// Width and height from the image header, before any pixel is decoded; refuses images over
/// `max_pixels` (decompression bombs) and formats other than PNG, JPEG and WebP.
///
/// ```
/// // a PNG header (signature + IHDR) claiming 30000 x 30000 pixels, and nothing else
/// let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
/// png.extend_from_slice(&30000u32.to_be_bytes());
/// png.extend_from_slice(&30000u32.to_be_bytes());
/// png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
/// let e = sca_server::check_image_header(&png, 50_000_000).unwrap_err();
/// assert_eq!(e.status.as_u16(), 413);
/// ```
pub fn check_image_header(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("invalid_image", "the image is empty"));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request("invalid_image", format!("the image: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => {}
        Some(f) => {
            return Err(ApiError::unsupported_media_type(format!(
                "{f:?} images are not accepted (send PNG, JPEG or WebP)"
            )))
        }
        None => {
            return Err(ApiError::unsupported_media_type(
                "the body is not a PNG, JPEG or WebP image",
            ))
        }
    }
    // PNG: the IHDR chunk is always first (read it directly: the decoder wants to see more).
    let ihdr = (reader.format() == Some(image::ImageFormat::Png)
        && bytes.len() >= 24
        && &bytes[12..16] == b"IHDR")
        .then(|| {
            let be =
                |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            (be(16), be(20))
        });
    let dims = match ihdr {
        Some(d) => Ok(d),
        None => reader.into_dimensions(),
    };
    let (w, h) = dims.map_err(|e| {
        ApiError::bad_request(
            "invalid_image",
            format!("cannot read the image header: {e}"),
        )
    })?;
    if w == 0 || h == 0 {
        return Err(ApiError::bad_request(
            "invalid_image",
            format!("zero-size image ({w}x{h})"),
        ));
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            format!(
                "the image is {w}x{h} = {} pixels; the limit is {max_pixels}",
                w as u64 * h as u64
            ),
        ));
    }
    Ok((w, h))
}

fn busy(st: &AppState) -> ApiError {
    st.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
    ApiError::unavailable(
        "busy",
        format!(
            "the server is busy ({} requests queued); retry after {}s",
            st.queue.capacity(),
            st.cfg.retry_after_secs
        ),
        st.cfg.retry_after_secs,
    )
}

/// The embedding of `bytes` (from the cache, or by running the encoder), with its id and
/// whether it was a cache hit.
async fn get_or_embed(
    st: &Arc<AppState>,
    bytes: Bytes,
    ticket: Option<&Ticket>,
    cancel: &CancelOnDrop,
) -> Result<(String, Arc<ImageEmbedding>, bool), ApiError> {
    let id = bundle::sha256_hex(&bytes);
    if let Some(e) = st.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        st.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        return Ok((id, e, true));
    }
    check_image_header(&bytes, st.cfg.max_pixels)?;
    let owned;
    let ticket = match ticket {
        Some(t) => t,
        None => {
            owned = st.queue.admit().ok_or_else(|| busy(st))?;
            &owned
        }
    };
    st.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
    let (sca, enc, st2) = (st.sca.clone(), st.encoder.clone(), st.clone());
    let emb = st
        .queue
        .run(Pool::Encoder, ticket, cancel, move |flag| {
            let t0 = Instant::now();
            let img = sca_core::image::decode_image(&bytes, "the uploaded image")?;
            let pre = sca.preprocess(&img)?;
            drop(img);
            if flag.load(Ordering::Acquire) {
                return Err(cancelled());
            }
            let emb = enc.embed(&sca, &pre)?;
            st2.metrics.job("encode", t0.elapsed());
            Ok(emb)
        })
        .await?;
    let nbytes = emb.embedding.elem_count() * 4;
    let emb = st
        .cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), emb, nbytes);
    Ok((id, emb, false))
}

fn cancelled() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "cancelled",
        "the request was cancelled",
    )
}

fn parse_dtype(query: Option<&str>) -> Result<WireDType, ApiError> {
    let mut dtype = WireDType::F16;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "dtype" => {
                dtype = WireDType::parse(v).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("dtype `{v}`: use f16 (the default) or f32"),
                    )
                })?
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter `{other}` (known: dtype)"),
                ))
            }
        }
    }
    Ok(dtype)
}

fn is_image_body(ct: &str) -> bool {
    ct.is_empty() || ct.starts_with("image/") || ct.starts_with("application/octet-stream")
}

/// `POST /v1/embed`: image bytes (or a multipart form with `image`) -> the embedding.
async fn embed(State(st): St, req: Request) -> Result<Response, ApiError> {
    let dtype = parse_dtype(req.uri().query())?;
    let ct = content_type(req.headers());
    let limit = st.cfg.max_body_bytes();
    let bytes: Bytes = if ct.starts_with("multipart/form-data") {
        let mut form = read_multipart(req, limit).await?;
        form.remove("image").ok_or_else(|| {
            ApiError::bad_request("missing_image", "the form has no `image` file field")
        })?
    } else if is_image_body(&ct) {
        let (parts, body) = req.into_parts();
        Bytes::from(read_body(&parts.headers, body, limit).await?)
    } else {
        return Err(ApiError::unsupported_media_type(format!(
            "Content-Type `{ct}`: send the image bytes as image/png, image/jpeg, image/webp or application/octet-stream, or a multipart form with an `image` field"
        )));
    };
    let cancel = CancelOnDrop::new();
    let (id, emb, hit) = get_or_embed(&st, bytes, None, &cancel).await?;
    let e = emb.clone();
    let data = tokio::task::spawn_blocking(move || -> Result<(Vec<usize>, Vec<f32>), ApiError> {
        let t = &e.embedding;
        let v = t
            .flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(|err| ApiError::internal(format!("reading the embedding: {err}")))?;
        Ok((t.dims().to_vec(), v))
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))??;
    let (h, w) = emb.original_size;
    let (rh, rw) = emb.resized_size;
    let meta: BTreeMap<String, String> = [
        ("embedding_id", id.clone()),
        ("original_size", format!("{h},{w}")),
        ("resized_size", format!("{rh},{rw}")),
        ("encoder", st.encoder.name().to_string()),
        ("model", st.model_name.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let body = wire::encode(&data.1, &data.0, dtype, &meta);
    let mut res = (StatusCode::OK, body).into_response();
    let hd = res.headers_mut();
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    for (k, v) in [
        ("x-sca-embedding-id", id),
        ("x-sca-original-size", format!("{h},{w}")),
        ("x-sca-resized-size", format!("{rh},{rw}")),
        ("x-sca-cache", if hit { "hit" } else { "miss" }.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            hd.insert(k, v);
        }
    }
    Ok(res)
}

/// `POST /v1/predict`: a multipart form with `image` or `embedding_id`, and `request` (JSON);
/// or a JSON body (the request, with `embedding_id`).
async fn predict(State(st): St, req: Request) -> Result<Json<PredictResponse>, ApiError> {
    let ct = content_type(req.headers());
    let limit = st.cfg.max_body_bytes();
    let (image, form_id, request) = if ct.starts_with("multipart/form-data") {
        let mut form = read_multipart(req, limit).await?;
        let image = form.remove("image");
        let id = match form.remove("embedding_id") {
            Some(b) => Some(String::from_utf8(b.to_vec()).map_err(|_| {
                ApiError::bad_request("invalid_embedding_id", "embedding_id is not UTF-8 text")
            })?),
            None => None,
        };
        let request = form.remove("request").ok_or_else(|| {
            ApiError::bad_request(
                "missing_request",
                "the form has no `request` field (the prompts as JSON)",
            )
        })?;
        if let Some(other) = form.keys().next() {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                format!("unknown form field `{other}` (known: image, embedding_id, request)"),
            ));
        }
        (image, id, request)
    } else if ct.starts_with("application/json") {
        let (parts, body) = req.into_parts();
        (
            None,
            None,
            Bytes::from(read_body(&parts.headers, body, limit).await?),
        )
    } else {
        return Err(ApiError::unsupported_media_type(format!(
            "Content-Type `{ct}`: send multipart/form-data with `image` or `embedding_id` and `request`, or application/json with `embedding_id`"
        )));
    };
    let request = PredictRequest::parse(&request)?;
    let limits = Limits {
        max_prompts: st.cfg.max_prompts,
        max_new_tokens: st.cfg.max_new_tokens,
        max_beams: st.cfg.max_beams,
        default_max_new_tokens: st.sca.generation.default_max_new_tokens().max(1),
    };
    let (prompts, decode) = request.validate(&limits)?;
    let id = match (form_id, request.embedding_id.clone()) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "invalid_embedding_id",
                "embedding_id differs between the form field and the request JSON",
            ))
        }
        (a, b) => a.or(b),
    };
    let cancel = CancelOnDrop::new();
    let ticket = st.queue.admit().ok_or_else(|| busy(&st))?;
    let (id, emb) = match (image, id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "ambiguous_input",
                "give either an `image` or an `embedding_id`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_image",
                "give an `image` file field or an `embedding_id` from /v1/embed",
            ))
        }
        (Some(img), None) => {
            let (id, emb, _) = get_or_embed(&st, img, Some(&ticket), &cancel).await?;
            (id, emb)
        }
        (None, Some(id)) => {
            let hit = st.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id);
            match hit {
                Some(e) => {
                    st.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                    (id, e)
                }
                None => {
                    st.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "unknown_embedding",
                        format!(
                            "no cached embedding `{id}` (evicted or never made): send the image again"
                        ),
                    ));
                }
            }
        }
    };
    // Prompts against the image: outside, inverted boxes (422 before any work).
    for p in &prompts {
        st.sca.scale_prompt(&emb, p)?;
    }
    let (sca, st2, emb2) = (st.sca.clone(), st.clone(), emb.clone());
    let regions = st
        .queue
        .run(Pool::Predict, &ticket, &cancel, move |flag| {
            let t0 = Instant::now();
            let mut on_token = |_: usize, _: u32| !flag.load(Ordering::Acquire);
            let regions = sca.predict_inner(
                &emb2,
                &prompts,
                &decode,
                &mut on_token,
                &mut sca_core::Trace::default(),
            )?;
            if flag.load(Ordering::Acquire) {
                return Err(cancelled());
            }
            st2.metrics.job("predict", t0.elapsed());
            Ok(regions.iter().map(RegionJson::from).collect::<Vec<_>>())
        })
        .await?;
    let (h, w) = emb.original_size;
    Ok(Json(PredictResponse {
        embedding_id: id,
        original_size: [h, w],
        regions,
    }))
}

async fn healthz(State(st): St) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "model": st.model_name,
        "encoder": st.encoder.name(),
        "queue_depth": st.queue.depth(),
        "queue_capacity": st.queue.capacity(),
    }))
}

async fn metrics(State(st): St) -> Response {
    let (entries, bytes) = {
        let c = st.cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.len(), c.bytes())
    };
    let g = Gauges {
        queue_depth: st.queue.depth(),
        queue_capacity: st.queue.capacity(),
        encoder_running: st.queue.running(Pool::Encoder),
        predict_running: st.queue.running(Pool::Predict),
        cache_entries: entries,
        cache_bytes: bytes,
        encoder: st.encoder.name().to_string(),
        model: st.model_name.clone(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&g),
    )
        .into_response()
}

async fn list_models(State(st): St) -> Json<serde_json::Value> {
    let models: Vec<serde_json::Value> = st
        .bundle
        .iter()
        .map(|_| {
            serde_json::json!({
                "name": st.model_name,
                "manifest": format!("/models/{}/{}", st.model_name, bundle::MANIFEST),
            })
        })
        .collect();
    Json(serde_json::json!({ "models": models }))
}

fn file_content_type(name: &str) -> &'static str {
    match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|s| s.trim().trim_start_matches("W/"))
                .any(|s| s == etag || s == "*")
        })
}

/// Streams a file in 256 KiB chunks.
async fn file_body(path: &Path) -> Result<(Body, u64), ApiError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?
        .len();
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((Body::from_stream(stream), len))
}

/// `GET /models/<name>/<file>`: the manifest and the files it lists, with a strong ETag (the
/// sha256) and `immutable` caching for the listed files (`no-cache`, i.e. revalidate by ETag,
/// for the manifest, which names them).
async fn model_file(
    State(st): St,
    axum::extract::Path((name, file)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(b) = &st.bundle else {
        return Err(ApiError::not_found(
            "the served model is a checkpoint directory, not a bundle: there are no bundle files to serve (export one with `export bundle`)",
        ));
    };
    if name != st.model_name {
        return Err(ApiError::not_found(format!(
            "no model `{name}` (this server has `{}`)",
            st.model_name
        )));
    }
    let Some((sha, _)) = b.files.get(&file) else {
        return Err(ApiError::not_found(format!(
            "`{file}` is not a file of bundle `{name}`"
        )));
    };
    let etag = format!("\"{sha}\"");
    let cache = if file == bundle::MANIFEST {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut res = if etag_matches(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let (body, len) = file_body(&b.dir.join(&file)).await?;
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file_content_type(&file)),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    Ok(res)
}

/// Headers that let the page use SharedArrayBuffer (wasm threads).
fn page_headers(res: &mut Response, content_type: &'static str) {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-embedder-policy",
        HeaderValue::from_static("require-corp"),
    );
}

/// `GET /...`: the web directory's files, or the built-in page at `/`.
async fn static_files(State(st): St, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if path.starts_with("/v1/") || path.starts_with("/models") {
            return Err(ApiError::not_found(format!("no endpoint {path}")));
        }
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        ));
    }
    match &st.web {
        WebRoot::Builtin => {
            if path == "/" || path == "/index.html" {
                let mut res = Response::new(Body::from(BUILTIN_PAGE));
                page_headers(&mut res, "text/html; charset=utf-8");
                Ok(res)
            } else {
                Err(ApiError::not_found(format!(
                    "no such page or endpoint: {path}"
                )))
            }
        }
        WebRoot::Dir(root) => {
            let rel = path.trim_start_matches('/');
            let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
            if segs
                .iter()
                .any(|s| s.starts_with('.') || s.contains('\\') || s.contains('%'))
            {
                return Err(ApiError::not_found(format!("no such file: {path}")));
            }
            let mut file = segs.iter().fold(root.clone(), |p, s| p.join(s));
            if file.is_dir() {
                file = file.join("index.html");
            }
            if !file.is_file() {
                return Err(ApiError::not_found(format!(
                    "no such page or endpoint: {path}"
                )));
            }
            let name = file.to_string_lossy().into_owned();
            let (body, len) = file_body(&file).await?;
            let mut res = Response::new(body);
            page_headers(&mut res, file_content_type(&name));
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            Ok(res)
        }
    }
}
