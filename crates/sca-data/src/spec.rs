//! Dataset specs for the command lines (`sca eval --data SPEC`, the trainer's config).
//!
//! `KIND:ARG[,ARG...][,key=value...]` — positional arguments first, then options. Paths may
//! not contain commas.
//!
//! | spec | dataset |
//! |---|---|
//! | `vg:DIR[,split=train\|val\|test\|all]` | [`VgDataset`] of `DIR` (layout in [`crate::vg`]); the split defaults to the caller's (trainer: train, eval: test) |
//! | `jsonl:FILE` | [`JsonlDataset`] (format in [`crate::jsonl`]) |
//! | `coco:ANNOTATIONS.json,IMAGES_DIR` | [`CocoDataset`]: category names as captions |
//! | `refcoco:REFS.json,INSTANCES.json,IMAGES_DIR[,split=S]` | [`RefCocoDataset`]; `S` is a refs split (`train`, `val`, `test`, `testA`, `testB`, `all`; default from the caller) |
//! | `synthetic:seed=S,n=N[,size=W][,objects=MIN-MAX][,first_id=K][,noise=P]` | [`SyntheticDataset`] (size 256, 1–4 objects, ids from 0, noise 0.5 by default) |
//!
//! Every kind also takes `limit=N` (only the first `N` images).
//!
//! ```
//! use sca_data::spec::{parse_spec, DataSource};
//! let s = parse_spec("synthetic:seed=3,n=10,size=128").unwrap();
//! match &s.source {
//!     DataSource::Synthetic(c) => assert_eq!((c.seed, c.n, c.size), (3, 10, 128)),
//!     _ => unreachable!(),
//! }
//! let ds = s.open(sca_data::Split::Test).unwrap();
//! assert_eq!(ds.len(), 10);
//! assert!(parse_spec("synthetic:n=10").is_err()); // seed is required
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crate::coco::{CocoDataset, RefCocoDataset};
use crate::jsonl::JsonlDataset;
use crate::synthetic::{SyntheticConfig, SyntheticDataset};
use crate::types::{Dataset, Take};
use crate::vg::{Split, VgDataset};
use crate::{Error, Result};

/// What a spec points at.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// `vg:DIR`; `split: None` = the caller's default.
    Vg {
        /// The VG directory.
        dir: PathBuf,
        /// `split=`.
        split: Option<Split>,
    },
    /// `jsonl:FILE`.
    Jsonl {
        /// The JSONL file.
        file: PathBuf,
    },
    /// `coco:ANNOTATIONS,IMAGES_DIR`.
    Coco {
        /// The instances JSON.
        annotations: PathBuf,
        /// The image directory.
        images: PathBuf,
    },
    /// `refcoco:REFS,INSTANCES,IMAGES_DIR`; `split: None` = the caller's default.
    RefCoco {
        /// `refs.json` (the JSON form of `refs(unc).p`).
        refs: PathBuf,
        /// `instances.json`.
        instances: PathBuf,
        /// The COCO image directory.
        images: PathBuf,
        /// `split=`.
        split: Option<String>,
    },
    /// `synthetic:seed=S,n=N,...`.
    Synthetic(SyntheticConfig),
}

/// A parsed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// The dataset.
    pub source: DataSource,
    /// `limit=N`: only the first `N` images.
    pub limit: Option<usize>,
}

/// Parses a spec (see the [module docs](self)).
pub fn parse_spec(spec: &str) -> Result<DataSpec> {
    let err = |msg: String| Error::Spec {
        spec: spec.to_string(),
        msg,
    };
    let (kind, rest) = spec.split_once(':').ok_or_else(|| {
        err("expected KIND:ARGS with KIND one of vg, jsonl, coco, refcoco, synthetic".into())
    })?;
    let mut positional = Vec::new();
    let mut options: Vec<(&str, &str)> = Vec::new();
    for part in rest.split(',') {
        match part.split_once('=') {
            Some((k, v)) => options.push((k.trim(), v.trim())),
            None => {
                if !options.is_empty() {
                    return Err(err(format!(
                        "positional argument {part:?} after key=value options"
                    )));
                }
                positional.push(part);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &options {
        if !seen.insert(*k) {
            return Err(err(format!("option {k:?} given twice")));
        }
    }
    let allowed: &[&str] = match kind {
        "vg" => &["split", "limit"],
        "jsonl" | "coco" => &["limit"],
        "refcoco" => &["split", "limit"],
        "synthetic" => &["seed", "n", "size", "objects", "first_id", "noise", "limit"],
        _ => {
            return Err(err(format!(
                "unknown kind {kind:?} (expected vg, jsonl, coco, refcoco or synthetic)"
            )))
        }
    };
    for (k, _) in &options {
        if !allowed.contains(k) {
            return Err(err(format!(
                "unknown option {k:?} for {kind} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    let opt = |k: &str| options.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let num = |k: &str| -> Result<Option<u64>> {
        opt(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| err(format!("{k}={v:?} is not a non-negative integer")))
            })
            .transpose()
    };
    let paths = |n: usize, what: &str| -> Result<Vec<PathBuf>> {
        if positional.len() != n || positional.iter().any(|p| p.is_empty()) {
            return Err(err(format!(
                "{kind} takes {what} ({n} comma-separated path{}), got {}",
                if n == 1 { "" } else { "s" },
                positional.len()
            )));
        }
        Ok(positional.iter().map(PathBuf::from).collect())
    };
    let limit = num("limit")?.map(|v| v as usize);
    let source = match kind {
        "vg" => {
            let p = paths(1, "DIR")?;
            let split = opt("split")
                .map(|s| s.parse::<Split>().map_err(err))
                .transpose()?;
            DataSource::Vg {
                dir: p[0].clone(),
                split,
            }
        }
        "jsonl" => DataSource::Jsonl {
            file: paths(1, "FILE")?.remove(0),
        },
        "coco" => {
            let mut p = paths(2, "ANNOTATIONS.json,IMAGES_DIR")?;
            DataSource::Coco {
                images: p.remove(1),
                annotations: p.remove(0),
            }
        }
        "refcoco" => {
            let mut p = paths(3, "REFS.json,INSTANCES.json,IMAGES_DIR")?;
            DataSource::RefCoco {
                images: p.remove(2),
                instances: p.remove(1),
                refs: p.remove(0),
                split: opt("split").map(str::to_string),
            }
        }
        _ => {
            // synthetic
            if !positional.iter().all(|p| p.is_empty()) {
                return Err(err(format!(
                    "synthetic takes only key=value options, got {positional:?}"
                )));
            }
            let mut c = SyntheticConfig {
                seed: num("seed")?.ok_or_else(|| err("synthetic needs seed=S".into()))?,
                n: num("n")?.ok_or_else(|| err("synthetic needs n=N".into()))? as usize,
                ..SyntheticConfig::default()
            };
            if let Some(s) = num("size")? {
                c.size = s as usize;
            }
            if let Some(k) = num("first_id")? {
                c.first_id = k;
            }
            if let Some(v) = opt("objects") {
                let (a, b) = v.split_once('-').unwrap_or((v, v));
                let parse = |x: &str| {
                    x.parse::<usize>()
                        .map_err(|_| err(format!("objects={v:?} is not MIN-MAX")))
                };
                c.min_objects = parse(a)?;
                c.max_objects = parse(b)?;
            }
            if let Some(v) = opt("noise") {
                c.noise_prob = v
                    .parse::<f64>()
                    .map_err(|_| err(format!("noise={v:?} is not a probability")))?;
            }
            // Validate now so spec errors surface at parse time.
            SyntheticDataset::new(c.clone()).map_err(|e| err(e.to_string()))?;
            DataSource::Synthetic(c)
        }
    };
    Ok(DataSpec { source, limit })
}

impl DataSpec {
    /// Opens the dataset; `default_split` applies where the spec names none (VG, RefCOCO).
    pub fn open(&self, default_split: Split) -> Result<Arc<dyn Dataset>> {
        let ds: Arc<dyn Dataset> = match &self.source {
            DataSource::Vg { dir, split } => {
                Arc::new(VgDataset::open(dir, split.unwrap_or(default_split))?)
            }
            DataSource::Jsonl { file } => Arc::new(JsonlDataset::open(file)?),
            DataSource::Coco {
                annotations,
                images,
            } => Arc::new(CocoDataset::open(annotations, images)?),
            DataSource::RefCoco {
                refs,
                instances,
                images,
                split,
            } => {
                let split = split
                    .clone()
                    .or_else(|| default_split.key().map(str::to_string));
                let split = split.filter(|s| s != "all");
                Arc::new(RefCocoDataset::open(
                    refs,
                    instances,
                    images,
                    split.as_deref(),
                )?)
            }
            DataSource::Synthetic(c) => Arc::new(SyntheticDataset::new(c.clone())?),
        };
        Ok(match self.limit {
            Some(n) => Arc::new(Take::new(ds, n)),
            None => ds,
        })
    }
}

/// `parse_spec(spec)?.open(default_split)`.
pub fn open_spec(spec: &str, default_split: Split) -> Result<Arc<dyn Dataset>> {
    parse_spec(spec)?.open(default_split)
}
