//! The trainer library's error type.

use std::path::PathBuf;

/// Everything the trainer library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid configuration value; the message names the key.
    #[error("invalid training config: {0}")]
    Config(String),
    /// A file or directory that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint that is missing, incomplete or does not fit the model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] sca_core::Error),
    #[error(transparent)]
    Data(#[from] sca_data::Error),
    #[error("metrics: {0}")]
    Metrics(String),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
