//! End-to-end tests of `sca caption` and `sca bench` against the parity fixtures, and of the
//! errors bad input must produce (non-zero exit, a message naming the problem, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
}

fn sca_fixtures() -> Vec<PathBuf> {
    let dir = parity_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "parity fixtures missing at {} ({e}); set SCA_PARITY_DIR",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists() && p.join("image.png").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no SCA fixtures in {}", dir.display());
    v
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn sca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sca"))
        .args(args)
        .output()
        .expect("run sca")
}

/// The prompt flags of one fixture region.
fn prompt_args(region: &Value) -> Vec<String> {
    let mut a = Vec::new();
    if let (Some(ps), Some(ls)) = (region["points"].as_array(), region["labels"].as_array()) {
        for (p, l) in ps.iter().zip(ls) {
            a.push("--point".into());
            a.push(format!("{},{},{}", p[0], p[1], l));
        }
    }
    if let Some(b) = region["box"].as_array() {
        a.push("--box".into());
        a.push(
            b.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    a
}

#[test]
fn caption_prints_each_fixtures_expected_caption() {
    for dir in sca_fixtures() {
        let inputs = read_json(&dir.join("inputs.json"));
        let outputs = read_json(&dir.join("outputs.json"));
        let multimask = inputs["multimask_output"].as_bool().unwrap_or(false);
        for (i, region) in inputs["regions"].as_array().unwrap().iter().enumerate() {
            for (max_new, key) in [
                (Some("12"), "generated_text"),
                (None, "generated_text_default"),
            ] {
                let mut args: Vec<String> = vec![
                    "caption".into(),
                    dir.join("image.png").to_string_lossy().into(),
                    "--model".into(),
                    dir.to_string_lossy().into(),
                ];
                args.extend(prompt_args(region));
                if multimask {
                    args.push("--multimask".into());
                }
                if let Some(n) = max_new {
                    args.push("--max-new-tokens".into());
                    args.push(n.into());
                }
                let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                let out = sca(&argv);
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let want = outputs[key][i].as_str().unwrap();
                let first = stdout.lines().next().unwrap_or("");
                assert_eq!(first, want, "{} region {i} ({key})", dir.display());
                let iou_line = stdout.lines().nth(1).unwrap_or("");
                assert!(iou_line.starts_with("iou: "), "{stdout}");
                let n_iou = iou_line.split_whitespace().count() - 1;
                assert_eq!(n_iou, if multimask { 3 } else { 1 });
            }
        }
    }
}

#[test]
fn caption_json_and_mask_png() {
    let dir = sca_fixtures()
        .into_iter()
        .find(|d| d.ends_with("sca_b_box_multimask"))
        .expect("box fixture");
    let outputs = read_json(&dir.join("outputs.json"));
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("mask.png");
    let out = sca(&[
        "caption",
        dir.join("image.png").to_str().unwrap(),
        "--model",
        dir.to_str().unwrap(),
        "--box",
        "20,40,95,110",
        "--multimask",
        "--json",
        "--mask-out",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let r = &v["regions"][0];
    assert_eq!(
        r["caption"].as_str().unwrap(),
        outputs["generated_text_default"][1].as_str().unwrap()
    );
    let tokens: Vec<u64> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let want: Vec<u64> = outputs["generated_sequences_default"][1]
        .as_array()
        .expect("sequences")
        .iter()
        .skip(1) // the placeholder token
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tokens, want[..tokens.len()].to_vec());
    let iou = r["iou"].as_array().unwrap();
    assert_eq!(iou.len(), 3);
    for (a, b) in iou
        .iter()
        .zip(outputs["iou_predictions"][0][1].as_array().unwrap())
    {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
    }
    let masks = r["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3);
    assert_eq!(masks[0]["size"], serde_json::json!([120, 160]));
    assert!(masks[0]["counts"].is_string());
    let b = r["box"].as_array().unwrap();
    assert_eq!(b.len(), 4, "box is [x, y, w, h]");
    let img = image::open(&png).expect("mask PNG written").to_luma8();
    assert_eq!((img.width(), img.height()), (160, 120));
    assert!(img.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
}

/// Runs `sca caption` expecting failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = sca(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure for {args:?}, got success"
    );
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn fixture() -> PathBuf {
    sca_fixtures()
        .into_iter()
        .find(|d| d.ends_with("sca_b_box_multimask"))
        .expect("box fixture")
}

#[test]
fn bad_images_are_reported() {
    let dir = fixture();
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.png");
    let err = fails(&[
        "caption",
        missing.to_str().unwrap(),
        "--model",
        model,
        "--point",
        "1,1",
    ]);
    assert!(err.contains("nope.png"), "{err}");
    let empty = tmp.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = fails(&[
        "caption",
        empty.to_str().unwrap(),
        "--model",
        model,
        "--point",
        "1,1",
    ]);
    assert!(err.contains("empty.png"), "{err}");
    let garbage = tmp.path().join("garbage.jpg");
    std::fs::write(&garbage, b"this is not an image at all").unwrap();
    let err = fails(&[
        "caption",
        garbage.to_str().unwrap(),
        "--model",
        model,
        "--point",
        "1,1",
    ]);
    assert!(err.contains("garbage.jpg"), "{err}");
}

#[test]
fn bad_prompts_are_reported() {
    let dir = fixture();
    let model = dir.to_str().unwrap();
    let img = dir.join("image.png");
    let img = img.to_str().unwrap();
    // 160 x 120 image
    let err = fails(&["caption", img, "--model", model, "--point", "200,10"]);
    assert!(
        err.contains("(200, 10)") && err.contains("outside"),
        "{err}"
    );
    let err = fails(&["caption", img, "--model", model, "--point", "-1,10"]);
    assert!(err.contains("outside"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--point", "NaN,10"]);
    assert!(err.contains("not finite"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--point", "inf,10"]);
    assert!(err.contains("not finite"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--box", "50,10,20,40"]);
    assert!(err.contains("x2 < x1"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--box", "10,20,30"]);
    assert!(err.contains("--box"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--point", "10,abc"]);
    assert!(err.contains("abc"), "{err}");
    let err = fails(&["caption", img, "--model", model, "--point", "10,10,2"]);
    assert!(err.contains("label"), "{err}");
    let err = fails(&["caption", img, "--model", model]);
    assert!(err.contains("--point"), "{err}");
}

/// A copy of a fixture checkpoint whose files the test may break.
fn copy_checkpoint(dir: &Path, to: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn bad_checkpoints_are_reported() {
    let dir = fixture();
    let img = dir.join("image.png");
    let img = img.to_str().unwrap();
    let run = |ckpt: &Path| {
        fails(&[
            "caption",
            img,
            "--model",
            ckpt.to_str().unwrap(),
            "--point",
            "10,10",
        ])
    };

    // missing weights
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let err = run(t.path());
    assert!(
        err.contains("model.safetensors") || err.contains("pytorch_model.bin"),
        "{err}"
    );

    // truncated weights
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    let w = t.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = run(t.path());
    assert!(err.contains("model.safetensors"), "{err}");

    // corrupt weights
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    std::fs::write(
        t.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let err = run(t.path());
    assert!(err.contains("model.safetensors"), "{err}");

    // missing config
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    let err = run(t.path());
    assert!(err.contains("config.json"), "{err}");

    // config that does not match the weights: names the key and both shapes
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    let mut cfg = read_json(&dir.join("config.json"));
    cfg["vision_config"]["mlp_dim"] = serde_json::json!(96);
    std::fs::write(
        t.path().join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let err = run(t.path());
    assert!(
        err.contains("vision_encoder.layers.0.mlp.lin1.weight"),
        "{err}"
    );
    assert!(err.contains("96") && err.contains("192"), "{err}");

    // malformed config
    let t = tempfile::tempdir().unwrap();
    copy_checkpoint(&dir, t.path());
    std::fs::write(t.path().join("config.json"), b"{\"vision_config\": ").unwrap();
    let err = run(t.path());
    assert!(err.contains("config.json"), "{err}");

    // not a directory
    let err = run(&dir.join("image.png"));
    assert!(err.contains("image.png"), "{err}");
}

#[test]
fn bench_runs_on_a_tiny_config() {
    let dir = fixture();
    let out = sca(&[
        "bench",
        "--config",
        dir.join("config.json").to_str().unwrap(),
        "--encoder-runs",
        "1",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "encoder_ms",
        "decoder_ms",
        "decoder_mixer_ms",
        "lm_ms_per_token",
        "batch8_ms",
        "peak_rss_mb",
    ] {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"));
        assert!(x.is_finite() && x > 0.0, "{k} = {x}");
    }
    assert!(v.get("anything").is_none(), "{v}");
}

#[test]
fn bench_times_anything_mode_per_grid_size() {
    let dir = fixture();
    let cfg = dir.join("config.json");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "bench",
            "--config",
            cfg.to_str().unwrap(),
            "--encoder-runs",
            "1",
            "--runs",
            "1",
            "--json",
        ];
        v.extend_from_slice(extra);
        sca(&v)
    };
    let out = args(&["--anything", "2,4", "--tokenizer", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["anything"].as_array().unwrap_or_else(|| panic!("{v}"));
    let grids: Vec<u64> = rows
        .iter()
        .map(|r| r["points_per_side"].as_u64().unwrap())
        .collect();
    assert_eq!(grids, [2, 4]);
    for r in rows {
        for k in [
            "encoder_ms",
            "batches_ms",
            "nms_ms",
            "captions_ms",
            "total_ms",
        ] {
            let x = r[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {r}"));
            assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
        }
        assert!(r["encoder_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["batches"].as_u64(), Some(1), "{r}");
    }

    // Without a tokenizer, and with a bad grid size: clear errors.
    let out = args(&["--anything", "16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tokenizer"),
        "{err}"
    );
    let out = args(&["--anything", "0", "--tokenizer", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("1..=1024"), "{err}");
}
