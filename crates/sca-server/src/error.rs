//! Errors: [`ServerError`] for start-up (loading the model, binding the address) and
//! [`ApiError`], the JSON error every endpoint answers with: `{"error": {"code", "message"}}`.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model directory could not be loaded.
    #[error("loading the model from {}: {source}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: sca_core::Error,
    },
    /// ONNX Runtime was asked for (`--encoder onnx`) but cannot be used.
    #[error("ONNX Runtime encoder: {0}")]
    Onnx(String),
    /// A setting that cannot work (zero workers, a web directory that does not exist, ...).
    #[error("invalid setting: {0}")]
    Config(String),
    /// Binding or serving the socket failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// An HTTP error answer: a status, a stable machine-readable `code` and a message for people.
///
/// ```
/// use axum::http::StatusCode;
/// let e = sca_server::ApiError::bad_request("invalid_json", "expected an object");
/// assert_eq!(e.status, StatusCode::BAD_REQUEST);
/// assert_eq!(e.body()["error"]["code"], "invalid_json");
/// ```
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413: the request body is larger than `--max-body-mb`.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body is larger than the limit of {limit} bytes ({} MB)",
                limit / (1024 * 1024)
            ),
        )
    }

    /// 415 with a message naming what is accepted.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: a prompt that does not fit the image or the limits.
    pub fn invalid_prompt(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_prompt", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: a bug or an unexpected failure (the message is logged too).
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("internal error: {message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// Maps a `sca-core` error met while serving a request: bad images and prompts are the
/// client's (4xx), everything else is ours (500).
impl From<sca_core::Error> for ApiError {
    fn from(e: sca_core::Error) -> Self {
        match e {
            sca_core::Error::Image { .. } => {
                ApiError::bad_request("invalid_image", format!("cannot decode the image: {e}"))
            }
            sca_core::Error::Prompt(msg) => ApiError::invalid_prompt(msg),
            other => ApiError::internal(other.to_string()),
        }
    }
}
