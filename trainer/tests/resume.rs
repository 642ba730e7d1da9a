//! Resume equivalence (N steps == N/2 + stop + resume + N/2, bit for bit) and crash safety
//! (kill -9 while a checkpoint is being written leaves the previous one loadable).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trainer::train::{fit, FitOptions};

fn losses(log: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn stop_and_resume_equals_uninterrupted() {
    // Dropout, LSJ, random captions, shuffling and a warm-up + cosine schedule all on: every
    // source of randomness has to be restored. One checkpoint kept: the resumed run deletes
    // the checkpoint it started from, and its later outputs still get the tokenizer.
    let cfg = common::tiny_config(
        "lr = 1e-3\nwarmup_steps = 2\nmax_steps = 6",
        "images_per_batch = 2\nregions_per_image = 4\nlsj = true",
        "checkpoint_every = 1\nkeep_checkpoints = 1",
        "+lm",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = fit(FitOptions {
        config: cfg.clone(),
        out: a.clone(),
        resume: None,
        stop_after: None,
    })
    .unwrap();
    assert_eq!(full.steps, 6);

    let half = fit(FitOptions {
        config: cfg.clone(),
        out: b.clone(),
        resume: None,
        stop_after: Some(3),
    })
    .unwrap();
    assert_eq!(half.steps, 3);
    assert!(half.model_dir.is_none());
    assert!(b.join("checkpoint-3/trainer_state.json").is_file());
    let rest = fit(FitOptions {
        config: cfg,
        out: b.clone(),
        resume: Some(b.clone()),
        stop_after: None,
    })
    .unwrap();
    assert_eq!(rest.steps, 6);
    assert!(
        !b.join("checkpoint-3").exists(),
        "rotation kept checkpoint-3"
    );
    for dir in ["checkpoint-6", "model"] {
        assert!(
            b.join(dir).join("tokenizer.json").is_file(),
            "{dir} has no tokenizer.json"
        );
    }

    let wa = candle_core::safetensors::load(
        a.join("model/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let wb = candle_core::safetensors::load(
        b.join("model/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(wa.len(), wb.len());
    let mut changed = 0;
    let init =
        sca_core::weights::Weights::load(&common::parity_dir().join("sca_a_point_single")).unwrap();
    for (k, ta) in &wa {
        let tb = &wb[k];
        let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = tb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k} differs"
        );
        if let Some(t0) = init.get(k) {
            if t0.flatten_all().unwrap().to_vec1::<f32>().unwrap() != va {
                changed += 1;
            }
        }
    }
    assert!(changed > 20, "training changed only {changed} tensors");
    // The logs agree step for step (the resumed log continues the first half).
    assert_eq!(losses(&a.join("log.jsonl")), losses(&b.join("log.jsonl")));
    // The final model loads as an SCA checkpoint.
    sca_core::Sca::load(&b.join("model"), candle_core::Device::Cpu).unwrap();
}

#[test]
fn resume_continues_the_pixel_auxiliary_exactly() {
    // Everything trainable with SAM's mask loss and the pixel auxiliary's training-only heads,
    // whose values live in the checkpoint's optimizer state.
    let cfg = common::tiny_config(
        "lr = 1e-3\nwarmup_steps = 1\nmax_steps = 4\npixel_aux_weight = 2.0",
        "images_per_batch = 2\nregions_per_image = 2\nlsj = false",
        "checkpoint_every = 2\nkeep_checkpoints = 1",
        "all",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let run = |out: &Path, resume: bool, stop: Option<u64>| {
        fit(FitOptions {
            config: cfg.clone(),
            out: out.to_path_buf(),
            resume: resume.then(|| out.to_path_buf()),
            stop_after: stop,
        })
        .unwrap()
    };
    run(&a, false, None);
    run(&b, false, Some(2));
    let opt = candle_core::safetensors::load(
        b.join("checkpoint-2/optimizer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(opt["param.pixel_aux.keys.weight"].dims(), &[3, 32]);
    assert!(opt.contains_key("m.pixel_aux.embedding.bias"));
    run(&b, true, None);
    let log = |p: &Path| -> Vec<(u64, f64, f64)> {
        std::fs::read_to_string(p.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["step"].as_u64().unwrap(),
                    v["loss"].as_f64().unwrap(),
                    v["pixel_aux_loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (la, lb) = (log(&a), log(&b));
    assert_eq!(la.len(), 4);
    assert!(la.iter().all(|&(_, _, aux)| aux > 0.0 && aux.is_finite()));
    assert_eq!(la, lb);
    // The model directory holds the SCA weights only (no head).
    let w = candle_core::safetensors::load(
        b.join("model/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(w.keys().all(|k| !k.contains("pixel_aux")));
    sca_core::Sca::load(&b.join("model"), candle_core::Device::Cpu).unwrap();
}

#[test]
fn kill_during_checkpoint_keeps_the_last_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg_path = tmp.path().join("run.toml");
    let out = tmp.path().join("out");
    let p = common::parity_dir();
    std::fs::write(
        &cfg_path,
        format!(
            r#"[model]
init = "checkpoint"
checkpoint = "{}"
[data]
train = "synthetic:seed=5,n=24,size=128,objects=2-4"
images_per_batch = 1
regions_per_image = 4
lsj = false
[optim]
lr = 1e-3
warmup_steps = 1
max_steps = 6
[train]
checkpoint_every = 2
keep_checkpoints = 5
progress = false
[eval]
every = 0
"#,
            p.join("sca_a_point_single").display()
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_trainer");
    let mut child = Command::new(exe)
        .args(["fit", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&out)
        .env(trainer::checkpoint::PAUSE_ENV, "4:60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until checkpoint 4 is half written (weights on disk, not yet renamed).
    let start = Instant::now();
    let tmp_ckpt = loop {
        let found = std::fs::read_dir(&out).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".tmp-checkpoint-4-"))
                    && p.join("optimizer.safetensors").is_file()
            })
        });
        if let Some(p) = found {
            break p;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("trainer exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "checkpoint 4 never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(tmp_ckpt.exists());
    assert!(!out.join("checkpoint-4").exists());
    let ckpts = trainer::checkpoint::list_checkpoints(&out).unwrap();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
    // The last good checkpoint loads as a model and as a run state.
    sca_core::Sca::load(&out.join("checkpoint-2"), candle_core::Device::Cpu).unwrap();
    let (state, opt) = trainer::checkpoint::read_state(&out.join("checkpoint-2")).unwrap();
    assert_eq!(state.step, 2);
    assert!(!opt.is_empty());

    // Resuming from the run directory continues from step 2 and cleans the debris.
    let status = Command::new(exe)
        .args(["fit", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&out)
        .arg("--resume")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!tmp_ckpt.exists());
    let steps: Vec<u64> = losses(&out.join("log.jsonl")).iter().map(|l| l.0).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    sca_core::Sca::load(&out.join("model"), candle_core::Device::Cpu).unwrap();
}
