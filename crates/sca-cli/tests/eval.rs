//! `sca eval` end to end on synthetic scenes with the tiny fixture model: predictions file,
//! metric table and JSON, mask IoU and attribute accuracy consistent with the predictions, the
//! centre-point ablation, and clear errors for bad `--data` specs.

use std::path::PathBuf;
use std::process::Command;

use sca_data::synthetic::attribute_agreement;
use sca_data::{open_spec, Split};

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
}

fn model() -> PathBuf {
    let m = parity_dir().join("sca_b_box_multimask");
    assert!(
        m.join("config.json").is_file(),
        "fixtures missing at {}",
        m.display()
    );
    m
}

fn sca() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sca"))
}

const DATA: &str = "synthetic:seed=11,n=3,size=128";

#[test]
fn eval_writes_predictions_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("preds.json");
    let out = sca()
        .args([
            "eval",
            "--no-meteor",
            "--json",
            "--max-new-tokens",
            "6",
            "--data",
            DATA,
            "--model",
        ])
        .arg(model())
        .arg("--out")
        .arg(&preds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every region of the data set was predicted, with its references and box.
    let ds = open_spec(DATA, Split::Test).unwrap();
    let mut regions = Vec::new();
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        for r in s.regions {
            regions.push((s.image_id, r));
        }
    }
    assert_eq!(j["n_regions"].as_u64().unwrap() as usize, regions.len());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&preds).unwrap()).unwrap();
    let p = doc["regions"].as_array().unwrap();
    assert_eq!(p.len(), regions.len());
    let mut correct = 0;
    let mut iou_sum = 0.0;
    for (pred, (image_id, r)) in p.iter().zip(&regions) {
        assert_eq!(pred["image_id"].as_u64(), Some(*image_id));
        assert_eq!(pred["region_id"].as_u64(), Some(r.id));
        let refs: Vec<String> = serde_json::from_value(pred["references"].clone()).unwrap();
        assert_eq!(refs, r.references);
        let b: Vec<f64> = serde_json::from_value(pred["box"].clone()).unwrap();
        assert_eq!(b.len(), 4);
        assert!((b[0] - r.box_xywh[0] as f64).abs() < 1e-3);
        assert_eq!(pred["iou_scores"].as_array().unwrap().len(), 3);
        let cand = pred["candidate"].as_str().unwrap();
        let ok = attribute_agreement(cand, r.attributes.as_ref().unwrap()).core();
        assert_eq!(pred["attributes_correct"].as_bool(), Some(ok));
        correct += ok as usize;
        let iou = pred["mask_iou"]
            .as_f64()
            .expect("synthetic regions have masks");
        assert!((0.0..=1.0).contains(&iou));
        iou_sum += iou;
    }
    let m = &j["metrics"];
    for k in [
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "rouge_l",
        "cider_d",
        "mask_iou_mean",
    ] {
        assert!(m[k].as_f64().is_some(), "missing metric {k}: {j}");
    }
    assert!(m["meteor"].is_null());
    assert!((m["mask_iou_mean"].as_f64().unwrap() - iou_sum / p.len() as f64).abs() < 1e-6);
    assert!(
        (j["attribute_accuracy"].as_f64().unwrap() - correct as f64 / p.len() as f64).abs() < 1e-12
    );
    // The predictions file is a `sca score` corpus with the same scores.
    let scored = sca()
        .args(["score", "--json", "--no-meteor", "--corpus"])
        .arg(&preds)
        .output()
        .unwrap();
    assert!(scored.status.success());
    let s: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    for k in ["bleu1", "bleu4", "rouge_l", "cider_d"] {
        assert!(
            (s[k].as_f64().unwrap() - m[k].as_f64().unwrap()).abs() < 1e-12,
            "{k}"
        );
    }

    // Table output and the centre-point ablation.
    let out = sca()
        .args([
            "eval",
            "--no-meteor",
            "--prompt",
            "point",
            "--limit",
            "1",
            "--max-new-tokens",
            "4",
        ])
        .args(["--data", DATA, "--model"])
        .arg(model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for row in [
        "BLEU-4",
        "CIDEr-D",
        "ROUGE-L",
        "METEOR",
        "mask IoU",
        "attribute accuracy",
        "point prompts",
        "1 images",
    ] {
        assert!(text.contains(row), "missing {row:?} in:\n{text}");
    }
}

#[test]
fn bad_data_specs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("bogus:x", "unknown kind"),
        ("no-colon", "KIND:ARGS"),
        ("synthetic:n=3", "seed"),
        (
            "jsonl:/definitely/not/here.jsonl",
            "/definitely/not/here.jsonl",
        ),
        ("vg:/definitely/not/a/vg/dir", "/definitely/not/a/vg/dir"),
    ];
    for (spec, needle) in cases {
        let out = sca()
            .args(["eval", "--no-meteor", "--data", spec, "--model"])
            .arg(model())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: expected {needle:?} in {err}");
        assert!(
            err.contains("--data"),
            "{spec}: the message should name --data: {err}"
        );
    }
    // A bad model directory.
    let out = sca()
        .args(["eval", "--data", DATA, "--model"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

/// `--teacher`: a model agrees exactly with itself (KL 0); another fixture (same random LM,
/// other SAM and mixer weights) has a positive KL.
#[test]
fn teacher_agreement_is_reported() {
    let other = parity_dir().join("sca_a_point_single");
    let run = |teacher: &PathBuf| -> serde_json::Value {
        let out = sca()
            .args(["eval", "--no-meteor", "--json", "--max-new-tokens", "5"])
            .args(["--data", DATA, "--limit", "2", "--model"])
            .arg(model())
            .arg("--teacher")
            .arg(teacher)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["teacher_agreement"].clone()
    };
    let same = run(&model());
    assert_eq!(same["exact_match"], 1.0);
    assert_eq!(same["mean_token_kl"], 0.0);
    assert!(same["regions"].as_u64().unwrap() > 0);
    let diff = run(&other);
    assert!(diff["mean_token_kl"].as_f64().unwrap() > 0.01, "{diff}");
    assert_eq!(diff["regions"], same["regions"]);
}
