//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use trainer::config::TrainConfig;

/// The parity fixtures (`$SCA_PARITY_DIR`, else `../shared/parity` beside the repository).
pub fn parity_dir() -> PathBuf {
    let dir = std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity"));
    assert!(
        dir.join("sca_a_point_single/config.json").is_file(),
        "parity fixtures not found at {} (set SCA_PARITY_DIR)",
        dir.display()
    );
    dir
}

/// A small training config on the tiny fixture model; `optim`, `data` and `train` are TOML
/// lines added to those sections.
pub fn tiny_config(optim: &str, data: &str, train: &str, trainable: &str) -> TrainConfig {
    let p = parity_dir();
    let text = format!(
        r#"
[model]
init = "checkpoint"
checkpoint = "{}"
trainable = "{trainable}"

[data]
train = "synthetic:seed=5,n=24,size=128,objects=2-4"
{data}

[optim]
{optim}

[train]
progress = false
{train}

[eval]
every = 0
"#,
        p.join("sca_a_point_single").display()
    );
    TrainConfig::from_toml_str(&text, Path::new(".")).expect("valid test config")
}
