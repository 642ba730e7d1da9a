//! `sca score` end to end: the built binary on a shared corpus, checked against pycocoevalcap's
//! numbers, plus its error messages. METEOR needs `bash scripts/setup-meteor.sh` first.

use std::path::PathBuf;
use std::process::Command;

fn shared_dir() -> PathBuf {
    std::env::var_os("SCA_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn meteor_dir() -> PathBuf {
    std::env::var_os("SCA_METEOR_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/meteor"))
}

fn sca() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sca"))
}

#[test]
fn json_output_matches_pycocoevalcap() {
    let name = "coco_sample_four_refs";
    let corpus = shared_dir().join(format!("metrics/corpora/{name}.json"));
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            shared_dir().join(format!("metrics/expected/{name}.expected.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let out = sca()
        .args(["score", "--json", "--corpus"])
        .arg(&corpus)
        .arg("--meteor-data")
        .arg(meteor_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sca score failed (METEOR data comes from `bash scripts/setup-meteor.sh`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = [
        "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d",
    ];
    let obj = got.as_object().unwrap();
    let mut want_keys: Vec<&str> = keys.to_vec();
    want_keys.push("per_region");
    let mut have: Vec<&str> = obj.keys().map(|s| s.as_str()).collect();
    have.sort();
    want_keys.sort();
    assert_eq!(have, want_keys, "top-level keys");
    for k in keys {
        let tol = if k == "meteor" { 1e-3 } else { 1e-6 };
        let (g, w) = (
            got[k].as_f64().unwrap(),
            expected["metrics"][k].as_f64().unwrap(),
        );
        assert!((g - w).abs() <= tol, "{k}: {g} vs {w}");
    }
    let per = got["per_region"].as_array().unwrap();
    let exp_per = expected["per_region"].as_array().unwrap();
    assert_eq!(per.len(), exp_per.len());
    for (g, w) in per.iter().zip(exp_per) {
        assert_eq!(g["id"], w["id"]);
        assert_eq!(
            g.as_object().unwrap().len(),
            keys.len() + 1,
            "per-region keys: {g}"
        );
        for k in keys {
            let tol = if k == "meteor" { 1e-3 } else { 1e-6 };
            let (a, b) = (g[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!((a - b).abs() <= tol, "region {}: {k}: {a} vs {b}", g["id"]);
        }
    }
}

#[test]
fn table_output_lists_every_metric() {
    let corpus = shared_dir().join("metrics/corpora/adv_two_regions.json");
    let out = sca()
        .args(["score", "--no-meteor", "--corpus"])
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for m in ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "5.1443"] {
        assert!(text.contains(m), "missing {m} in:\n{text}");
    }
}

fn run_err(json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.json");
    std::fs::write(&path, json).unwrap();
    let out = sca()
        .args(["score", "--no-meteor", "--corpus"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected failure for {json}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("corpus.json"),
        "error does not name the file: {err}"
    );
    err
}

#[test]
fn malformed_json_reports_path_and_position() {
    let err = run_err("{\"regions\": [\n  {\"id\": 1, \"candidate\": \"a\",, }\n]}");
    assert!(err.contains(":2:"), "no line number: {err}");
}

#[test]
fn duplicate_ids_and_missing_fields_are_rejected() {
    let dup = r#"{"regions":[{"id":3,"candidate":"a","references":["b"]},{"id":3,"candidate":"c","references":["d"]}]}"#;
    assert!(run_err(dup).contains("duplicate region id 3"));
    let missing = r#"{"regions":[{"id":1,"candidate":"a"}]}"#;
    assert!(run_err(missing).contains("missing field \"references\""));
}

#[test]
fn missing_meteor_data_says_how_to_install_it() {
    let corpus = shared_dir().join("metrics/corpora/adv_two_regions.json");
    let out = sca()
        .args(["score", "--corpus"])
        .arg(&corpus)
        .args(["--meteor-data", "/nonexistent/meteor"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash scripts/setup-meteor.sh"), "{err}");
}
