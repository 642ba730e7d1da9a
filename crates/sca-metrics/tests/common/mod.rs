//! Helpers shared by the integration tests: where the reference material lives.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// `$SCA_SHARED_DIR`, defaulting to the `shared/` folder beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("SCA_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// The corpora and their expected outputs, sorted by name.
pub fn corpora() -> Vec<(String, PathBuf, Value)> {
    let dir = shared_dir().join("metrics");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir.join("corpora")).unwrap_or_else(|e| {
        panic!(
            "cannot list {}/corpora: {e} (set SCA_SHARED_DIR)",
            dir.display()
        )
    });
    for e in entries {
        let path = e.unwrap().path();
        if path.extension().and_then(|s| s.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let exp_path = dir.join("expected").join(format!("{name}.expected.json"));
        let exp: Value =
            serde_json::from_str(&std::fs::read_to_string(&exp_path).unwrap()).unwrap();
        out.push((name, path, exp));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 20,
        "expected the shared corpora, found {}",
        out.len()
    );
    out
}

/// The METEOR data directory for tests: `$SCA_METEOR_DATA` or `<repo>/.cache/meteor`.
pub fn meteor_dir() -> PathBuf {
    std::env::var_os("SCA_METEOR_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/meteor"))
}

pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("missing number {key} in {v}"))
}
