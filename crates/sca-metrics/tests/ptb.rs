//! The tokenizer oracle: every case of `shared/metrics/ptb_cases.json` must tokenize exactly.

mod common;

use sca_metrics::ptb_tokenize;

#[test]
fn every_ptb_case_tokenizes_exactly() {
    let path = common::shared_dir().join("metrics/ptb_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 4000, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let raw = c["raw"].as_str().unwrap();
        let want = c["tokenized"].as_str().unwrap();
        let got = ptb_tokenize(raw);
        if got != want {
            failures.push(format!("{raw:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
