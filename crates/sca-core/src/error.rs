//! The crate's typed error.

use std::path::PathBuf;

/// Everything that can go wrong in `sca-core`. Messages name the file, key, shape or coordinate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image that cannot be decoded or is empty.
    #[error("image {what}: {msg}")]
    Image { what: String, msg: String },
    /// A prompt that does not fit the image (outside, non-finite, inverted box, ...).
    #[error("invalid prompt: {0}")]
    Prompt(String),
    /// A missing or malformed `config.json` / `preprocessor_config.json` / `generation_config.json`.
    #[error("config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// A weight file that cannot be read, or whose content does not fit the config.
    #[error("weights {}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
