//! End-to-end test of `sca anything` on the random-weight parity fixture: the JSON schema, the
//! overlay PNG, atomic writes, and the errors bad arguments must give (no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
        .join("sca_b_box_multimask")
}

fn sca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sca"))
        .args(args)
        .output()
        .expect("run sca")
}

fn check_schema(v: &Value) -> usize {
    assert_eq!(v["width"], 160);
    assert_eq!(v["height"], 120);
    let regions = v["regions"].as_array().expect("regions array");
    for r in regions {
        let seg = &r["segmentation"];
        assert_eq!(seg["size"], serde_json::json!([120, 160]));
        assert!(seg["counts"].is_string());
        assert!(r["area"].as_u64().unwrap() > 0);
        let bbox = r["bbox"].as_array().unwrap();
        assert_eq!(bbox.len(), 4);
        assert!(bbox.iter().all(|b| b.as_f64().unwrap() >= 0.0));
        assert!(r["predicted_iou"].is_number());
        assert!(r["stability_score"].is_number());
        assert_eq!(r["point"].as_array().unwrap().len(), 2);
        assert!(r["caption"].is_string());
    }
    regions.len()
}

#[test]
fn writes_json_and_overlay() {
    let dir = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("regions.json");
    let png = tmp.path().join("overlay.png");
    let image = dir.join("image.png");
    let o = sca(&[
        "anything",
        image.to_str().unwrap(),
        "--model",
        dir.to_str().unwrap(),
        "--points-per-side",
        "6",
        "--points-per-batch",
        "5",
        "--pred-iou-thresh",
        "0.3",
        "--stability-thresh",
        "0.2",
        "--beams",
        "1",
        "--out",
        json.to_str().unwrap(),
        "--overlay",
        png.to_str().unwrap(),
        "--timings",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let timing = stderr
        .lines()
        .find(|l| l.starts_with("timings: encoder"))
        .unwrap_or_else(|| panic!("no timing line: {stderr}"));
    for stage in ["decoder batches", "nms", "captions", "total"] {
        assert!(timing.contains(stage), "{timing}");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        check_schema(&v) >= 1,
        "a region should survive the lowered thresholds"
    );
    let ov = image::open(&png).unwrap().to_rgb8();
    let src = image::open(&image).unwrap().to_rgb8();
    assert_eq!(ov.dimensions(), src.dimensions());
    assert_ne!(ov, src, "the overlay paints the masks");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temp files left: {names:?}");

    // without --out the JSON goes to stdout
    let o = sca(&[
        "anything",
        image.to_str().unwrap(),
        "--model",
        dir.to_str().unwrap(),
        "--points-per-side",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    check_schema(&v);
}

#[test]
fn bad_arguments_fail_cleanly() {
    let dir = fixture();
    let image = dir.join("image.png");
    let (img, model) = (image.to_str().unwrap(), dir.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![img, "--model", model, "--points-per-side", "0"],
            "points-per-side",
        ),
        (
            vec![img, "--model", model, "--points-per-batch", "0"],
            "points-per-batch",
        ),
        (vec![img, "--model", model, "--beams", "0"], "beams"),
        (
            vec![img, "--model", model, "--pred-iou-thresh", "abc"],
            "pred-iou-thresh",
        ),
        (vec!["/nonexistent/x.png", "--model", model], "x.png"),
        (vec![img, "--model", "/nonexistent/model"], "model"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["anything"];
        full.extend(args.iter());
        let o = sca(&full);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{full:?} should fail");
        assert!(!stderr.contains("panicked"), "{full:?}: {stderr}");
        assert!(stderr.contains(needle), "{full:?}: {stderr}");
    }
}
