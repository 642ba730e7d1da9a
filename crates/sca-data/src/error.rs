//! The crate's typed error. Every variant that comes from a file names the file, and the
//! position (line/column, or the key path such as `annotations[3].segmentation`) where known.

use std::path::PathBuf;

/// Everything that can go wrong while reading, generating or batching data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Syntactically invalid JSON, or JSON of the wrong shape (a missing key, a string where a
    /// number belongs, ...). `line`/`column` are 1-based, as `serde_json` reports them.
    #[error("{}: line {line}, column {column}: {msg}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        msg: String,
    },
    /// Well-formed JSON whose content is invalid; `at` names the key path or record.
    #[error("{}: {at}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Key path or record, e.g. `annotations[3] (id 17).segmentation` or `line 4: regions[0]`.
        at: String,
        /// What is wrong.
        msg: String,
    },
    /// An image that cannot be found or decoded.
    #[error("image {}: {msg}", path.display())]
    Image {
        /// The image file (or `<image ID>` for in-memory images).
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A dataset spec (`vg:DIR`, `jsonl:FILE`, ...) that cannot be parsed.
    #[error("dataset spec {spec:?}: {msg}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        msg: String,
    },
    /// An invalid configuration value (augmentation, loader, generator).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A sample index outside the dataset.
    #[error("sample index {index} is out of range for a dataset of {len} samples")]
    OutOfRange {
        /// The requested index.
        index: usize,
        /// The dataset size.
        len: usize,
    },
    /// A loader state that does not belong to this loader (other dataset size or seed).
    #[error("cannot restore loader state: {0}")]
    State(String),
    /// An error from `sca-core` (tokenizer, preprocessing, RLE).
    #[error(transparent)]
    Core(#[from] sca_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, e: &serde_json::Error) -> Self {
        Error::Json {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            msg: strip_position(&e.to_string()),
        }
    }

    pub(crate) fn format(
        path: impl Into<PathBuf>,
        at: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            at: at.into(),
            msg: msg.into(),
        }
    }
}

/// `serde_json` appends " at line L column C" to its messages; the error carries those
/// separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Parses JSON bytes into `T`, naming the file and the line/column in the error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::json(path, &e))
}
