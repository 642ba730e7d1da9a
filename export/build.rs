//! Records the candle and rustc versions for bundle manifests (`created_by`).

use std::path::Path;

fn main() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let candle = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| {
            let i = text.find("name = \"candle-core\"\nversion = \"")?;
            let rest = &text[i + "name = \"candle-core\"\nversion = \"".len()..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCA_CANDLE_VERSION={candle}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCA_RUSTC_VERSION={version}");
}
