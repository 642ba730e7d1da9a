//! Reading corpora: `{"regions": [{"id", "candidate", "references": [..]}, ..]}` (extra keys are
//! ignored), or a bare array of such regions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One region to score: an id, the generated caption and its reference captions (all raw,
/// untokenized).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    /// The region's id (a JSON number or string, kept as its JSON text for numbers).
    pub id: RegionId,
    /// The candidate (generated) caption.
    pub candidate: String,
    /// The reference captions (at least one).
    pub references: Vec<String>,
}

/// A region id: JSON integers and strings are both accepted and echoed back as they came.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum RegionId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionId::Int(i) => write!(f, "{i}"),
            RegionId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Why a corpus could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The corpus file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{path}:{line}:{column}: malformed JSON: {msg}")]
    Json {
        /// The corpus file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        msg: String,
    },
    /// The JSON is valid but not a corpus (missing or mistyped fields).
    #[error("{path}: {msg}")]
    Format {
        /// The corpus file.
        path: PathBuf,
        /// What is wrong, naming the region index and field.
        msg: String,
    },
    /// Two regions share an id.
    #[error("{path}: duplicate region id {id} (regions {first} and {second})")]
    DuplicateId {
        /// The corpus file.
        path: PathBuf,
        /// The repeated id.
        id: RegionId,
        /// Index of its first occurrence.
        first: usize,
        /// Index of the repeat.
        second: usize,
    },
}

/// Reads a corpus file.
///
/// ```no_run
/// let regions = sca_metrics::load_corpus("corpus.json".as_ref()).unwrap();
/// println!("{} regions", regions.len());
/// ```
pub fn load_corpus(path: &Path) -> Result<Vec<Region>, CorpusError> {
    let text = std::fs::read_to_string(path).map_err(|source| CorpusError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_corpus(&text, path)
}

/// Parses corpus JSON; `path` is only used in error messages.
///
/// ```
/// let json = r#"{"regions":[{"id":1,"candidate":"a dog","references":["a dog ."]}]}"#;
/// let regions = sca_metrics::parse_corpus(json, "x.json".as_ref()).unwrap();
/// assert_eq!(regions[0].references, vec!["a dog ."]);
/// ```
pub fn parse_corpus(text: &str, path: &Path) -> Result<Vec<Region>, CorpusError> {
    let value: Value = serde_json::from_str(text).map_err(|e| CorpusError::Json {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        // serde_json appends " at line L column C"; the position is reported separately.
        msg: {
            let m = e.to_string();
            match m.rfind(" at line ") {
                Some(k) => m[..k].to_string(),
                None => m,
            }
        },
    })?;
    let fmt = |msg: String| CorpusError::Format {
        path: path.to_owned(),
        msg,
    };
    let list = match &value {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("regions") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(fmt("field \"regions\" must be an array".into())),
            None => {
                return Err(fmt(
                    "missing field \"regions\" (expected {\"regions\": [...]})".into(),
                ))
            }
        },
        _ => {
            return Err(fmt(
                "expected an object with \"regions\" or an array of regions".into(),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    let mut seen: std::collections::HashMap<RegionId, usize> = Default::default();
    for (i, r) in list.iter().enumerate() {
        let o = r
            .as_object()
            .ok_or_else(|| fmt(format!("region {i}: expected an object")))?;
        let id = match o.get("id") {
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                RegionId::Int(n.as_i64().unwrap_or(0))
            }
            Some(Value::String(s)) => RegionId::Str(s.clone()),
            Some(_) => {
                return Err(fmt(format!(
                    "region {i}: \"id\" must be an integer or a string"
                )))
            }
            None => return Err(fmt(format!("region {i}: missing field \"id\""))),
        };
        let candidate = match o
            .get("candidate")
            .or_else(|| o.get("caption"))
            .or_else(|| o.get("prediction"))
        {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(fmt(format!(
                    "region {i} (id {id}): \"candidate\" must be a string"
                )))
            }
            None => {
                return Err(fmt(format!(
                    "region {i} (id {id}): missing field \"candidate\""
                )))
            }
        };
        let references = match o.get("references") {
            Some(Value::Array(a)) => {
                let mut refs = Vec::with_capacity(a.len());
                for (k, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) => refs.push(s.clone()),
                        _ => {
                            return Err(fmt(format!(
                                "region {i} (id {id}): references[{k}] must be a string"
                            )))
                        }
                    }
                }
                refs
            }
            Some(_) => {
                return Err(fmt(format!(
                    "region {i} (id {id}): \"references\" must be an array of strings"
                )))
            }
            None => {
                return Err(fmt(format!(
                    "region {i} (id {id}): missing field \"references\""
                )))
            }
        };
        if references.is_empty() {
            return Err(fmt(format!(
                "region {i} (id {id}): \"references\" is empty (at least one is needed)"
            )));
        }
        if let Some(&first) = seen.get(&id) {
            return Err(CorpusError::DuplicateId {
                path: path.to_owned(),
                id,
                first,
                second: i,
            });
        }
        seen.insert(id.clone(), i);
        out.push(Region {
            id,
            candidate,
            references,
        });
    }
    Ok(out)
}

/// Checks that region ids are unique; returns the first repeated one.
pub(crate) fn check_unique<'a>(ids: impl Iterator<Item = &'a RegionId>) -> Result<(), RegionId> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(id.clone());
        }
    }
    Ok(())
}
