//! `trainer fit --config trainer/configs/smoke.toml` on CPU: the loss falls by at least half,
//! and the saved model loads and captions. (Its time is printed, not asserted: a loaded CI
//! machine is no benchmark.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn smoke_config_trains_and_halves_the_loss() {
    let _ = common::parity_dir();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/smoke.toml");
    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["fit", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(status.success());
    let log = std::fs::read_to_string(out.path().join("log.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.len() >= 20);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["step"].as_u64(), Some(i as u64 + 1));
        assert!(e["loss"].as_f64().unwrap().is_finite());
        assert!(e["lr"].as_f64().is_some());
    }
    let mean = |s: &[serde_json::Value]| {
        s.iter().map(|e| e["loss"].as_f64().unwrap()).sum::<f64>() / s.len() as f64
    };
    let first = mean(&entries[..5]);
    let last = mean(&entries[entries.len() - 5..]);
    eprintln!(
        "smoke: {} steps in {secs:.1} s, loss {first:.3} -> {last:.3}",
        entries.len()
    );
    assert!(
        last <= 0.5 * first,
        "loss fell from {first:.3} to only {last:.3}"
    );
    // The final model is an SCA checkpoint that captions.
    let sca = sca_core::Sca::load(&out.path().join("model"), candle_core::Device::Cpu).unwrap();
    let img = image::RgbImage::from_pixel(128, 128, image::Rgb([200, 30, 30]));
    let emb = sca.embed(&img).unwrap();
    let r = sca
        .predict(
            &emb,
            &sca_core::Prompt {
                box_: Some([10.0, 10.0, 60.0, 60.0]),
                ..Default::default()
            },
            &sca_core::Decode::Greedy { max_new_tokens: 8 },
        )
        .unwrap();
    assert!(!r.tokens.is_empty());
    assert!(out.path().join("eval.json").is_file());
    // Periodic evaluation at steps 100 and 200: teacher-forced loss and caption metrics.
    let evals: Vec<&serde_json::Value> = entries.iter().filter_map(|e| e.get("eval")).collect();
    assert_eq!(evals.len(), 2);
    for ev in evals {
        for k in [
            "eval_loss",
            "bleu4",
            "cider_d",
            "rouge_l",
            "attribute_accuracy",
        ] {
            assert!(ev[k].as_f64().is_some(), "eval lacks {k}: {ev}");
        }
    }
    // Checkpoints at 100 and 200, both loadable.
    for step in [100, 200] {
        sca_core::Sca::load(
            &out.path().join(format!("checkpoint-{step}")),
            candle_core::Device::Cpu,
        )
        .unwrap();
    }
}
