//! `trainer distill`: the KL loss and its gradient against a hand-computed case, the student
//! built from the teacher, and the teacher cache giving the same training as computing the
//! teacher's outputs on the fly.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use trainer::config::TrainConfig;
use trainer::distill::kl_loss;
use trainer::train::{fit, FitOptions};

/// Student logits z = [0.5, -1, 2, 0], teacher logits [1, 0, 3, -2], T = 2, V = 4. By hand
/// (double precision): p = softmax(t/2) = [0.219880, 0.133364, 0.597695, 0.049062],
/// q = softmax(z/2) = [0.228929, 0.108138, 0.484643, 0.178290];
/// T²·KL(p‖q) = 4 Σ p ln(p/q) = 0.324424022; ∂/∂z = T(q − p).
/// Keeping the top 2 teacher tokens {2, 0} and lumping {1, 3} (p_rest = 0.182426,
/// q_rest = 0.286428): 4 [Σ_{2,0} p ln(p/q) + p_rest ln(p_rest/q_rest)] = 0.136596394;
/// ∂/∂z_j = T(q_j − p_j) for kept j, T q_j (1 − p_rest/q_rest) for the others.
/// A second, masked-out position must not count.
#[test]
fn kl_loss_and_gradient_match_a_hand_computed_case() {
    let dev = Device::Cpu;
    let z = Var::from_tensor(
        &Tensor::new(&[[[0.5f32, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]], &dev).unwrap(),
    )
    .unwrap();
    let t = Tensor::new(&[[[1.0f32, 0.0, 3.0, -2.0], [0.0, 0.0, 0.0, 5.0]]], &dev).unwrap();
    let logp = candle_nn::ops::log_softmax(&(t / 2.0).unwrap(), 2).unwrap();
    let mask = Tensor::new(&[[1u32, 0]], &dev).unwrap();
    let cases: [(&[u32], f64, [f64; 4]); 2] = [
        (
            &[0, 1, 2, 3],
            0.32442402226407524,
            [0.0180986324, -0.0504507229, -0.2261044536, 0.2584565441],
        ),
        (
            &[2, 0],
            0.1365963937327721,
            [0.0180986324, 0.0785306568, -0.2261044536, 0.1294751643],
        ),
    ];
    for (keep, want, want_grad) in cases {
        let k = keep.len();
        let ids: Vec<u32> = keep.iter().chain(keep).copied().collect();
        let ids = Tensor::from_vec(ids, (1, 2, k), &dev).unwrap();
        let top = logp.gather(&ids, 2).unwrap();
        let loss = kl_loss(z.as_tensor(), &ids, &top, &mask, 2.0).unwrap();
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() <= 1e-5 * want, "k={k}: {got} vs {want}");
        let grads = loss.backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().to_vec3::<f32>().unwrap();
        for j in 0..4 {
            let (a, b) = (g[0][0][j] as f64, want_grad[j]);
            assert!((a - b).abs() <= 1e-5, "k={k} grad[{j}]: {a} vs {b}");
            assert_eq!(g[0][1][j], 0.0, "the masked position has a gradient");
        }
    }
}

/// A GPT-2 config for the student: the fixture's with `layers` x `width`.
fn student_lm(dir: &Path, layers: usize, width: usize, heads: usize) -> std::path::PathBuf {
    let fx = common::parity_dir().join("sca_a_point_single/config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    let mut t = cfg["text_config"].clone();
    t["n_layer"] = layers.into();
    t["n_embd"] = width.into();
    t["n_head"] = heads.into();
    let p = dir.join(format!("student-{layers}x{width}.json"));
    std::fs::write(&p, t.to_string()).unwrap();
    p
}

fn distill_config(student: &Path, cache: &str) -> TrainConfig {
    let text = format!(
        r#"
[data]
train = "synthetic:seed=5,n=24,size=128,objects=2-4"
images_per_batch = 2
regions_per_image = 4
point_prompts = 0.5

[distill]
temperature = 2.0
top_k = 8
{cache}

[optim]
lr = 1e-3
warmup_steps = 1
max_steps = 3

[train]
progress = false

[eval]
every = 0
"#
    );
    let teacher = common::parity_dir().join("sca_a_point_single");
    TrainConfig::for_distill(&text, Path::new("."), &teacher, student, None).unwrap()
}

fn weights(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model/model.safetensors"), &Device::Cpu).unwrap()
}

/// One whole run of `cfg` into `out`.
fn train(cfg: TrainConfig, out: impl AsRef<Path>) -> trainer::Result<trainer::train::FitSummary> {
    fit(FitOptions {
        config: cfg,
        out: out.as_ref().to_path_buf(),
        resume: None,
        stop_after: None,
    })
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn last_log(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn teacher_cache_gives_the_same_training_as_computing_on_the_fly() {
    let tmp = tempfile::tempdir().unwrap();
    let student = student_lm(tmp.path(), 1, 24, 2);
    let cache = tmp.path().join("cache");
    let run = |name: &str, cache_line: &str| {
        let out = tmp.path().join(name);
        let cfg = distill_config(&student, cache_line);
        train(cfg, &out).unwrap();
        out
    };
    let live = run("live", "cache = false");
    let cache_line = format!("cache_dir = \"{}\"", cache.display());
    let first = run("first", &cache_line);
    let second = run("second", &cache_line);
    // Every region a miss in the first run, a hit in the second.
    let misses = last_log(&first)["teacher_cache_misses"].as_f64().unwrap();
    assert!(misses >= 6.0, "{misses}");
    assert_eq!(last_log(&first)["teacher_cache_hits"], 0.0);
    assert_eq!(last_log(&second)["teacher_cache_hits"], misses);
    assert_eq!(last_log(&second)["teacher_cache_misses"], 0.0);
    assert!(last_log(&live).get("teacher_cache_hits").is_none());
    let w = weights(&live);
    assert_eq!(
        w["language_model.transformer.wte.weight"].dims(),
        [50257, 24]
    );
    for other in [&first, &second] {
        let o = weights(other);
        assert_eq!(o.len(), w.len());
        for (k, t) in &w {
            let d = max_diff(t, &o[k]);
            assert_eq!(
                d, 0.0,
                "{k} differs between cached and live teacher outputs"
            );
        }
    }
    for key in ["kl_loss", "seq_loss", "caption_loss"] {
        assert!(last_log(&live)[key].as_f64().unwrap().is_finite(), "{key}");
    }
}

#[test]
fn the_student_keeps_the_teachers_sam_and_selects_its_layers() {
    let tmp = tempfile::tempdir().unwrap();
    // Same width as the teacher's GPT-2 (48), one of its two layers: layer 0 is copied.
    let student = student_lm(tmp.path(), 1, 48, 4);
    let mut cfg = distill_config(&student, "cache = false");
    cfg.optim.max_steps = 1;
    cfg.optim.lr = 0.0;
    let out = tmp.path().join("s");
    train(cfg, &out).unwrap();
    let s = weights(&out);
    let t = candle_core::safetensors::load(
        common::parity_dir().join("sca_a_point_single/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (k, v) in &s {
        let want = if k.starts_with("language_model.transformer.h.0.")
            || !k.starts_with("language_model.transformer.h.")
        {
            t.get(k)
        } else {
            None
        };
        let Some(want) = want else {
            panic!("unexpected student key {k}");
        };
        let d = max_diff(v, want);
        assert_eq!(d, 0.0, "{k}: lr = 0 keeps the initial copy of the teacher");
    }
    assert!(s
        .keys()
        .all(|k| !k.starts_with("language_model.transformer.h.1.")));
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(c["text_config"]["n_layer"], 1);

    // A second stage: `--student` = an earlier student (here that one with its GPT-2 and
    // mixer moved away from the teacher's) continues from its own weights.
    let earlier = tmp.path().join("earlier");
    std::fs::create_dir(&earlier).unwrap();
    for e in std::fs::read_dir(out.join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), earlier.join(e.file_name())).unwrap();
    }
    let s: std::collections::HashMap<String, Tensor> = s
        .into_iter()
        .map(|(k, v)| {
            let own = k.starts_with("language_model.") || k.starts_with("mask_decoder.additional");
            let v = if own { (v + 0.25).unwrap() } else { v };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&s, earlier.join("model.safetensors")).unwrap();
    let mut cfg = distill_config(&earlier, "cache = false");
    cfg.optim.max_steps = 1;
    cfg.optim.lr = 0.0;
    let again = tmp.path().join("again");
    train(cfg, &again).unwrap();
    let a = weights(&again);
    assert_eq!(a.len(), s.len());
    for (k, v) in &s {
        let d = max_diff(v, &a[k]);
        assert_eq!(
            d, 0.0,
            "{k}: the second stage did not start from the student"
        );
    }
}

#[test]
fn distill_config_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let student = student_lm(tmp.path(), 1, 24, 2);
    let teacher = common::parity_dir().join("sca_a_point_single");
    let err = |text: &str| {
        TrainConfig::for_distill(
            text,
            Path::new("."),
            &teacher,
            &student,
            Some("synthetic:n=4"),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(
        err("[model]\ncheckpoint = \"x\"").contains("model.checkpoint is set by trainer distill")
    );
    assert!(err("[model]\ntrainable = \"all\"").contains("frozen SAM"));
    assert!(err("[distill]\ntemperature = 0.0").contains("distill.temperature"));
    let mut wrong =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&student).unwrap())
            .unwrap();
    wrong["vocab_size"] = 1000.into();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, wrong.to_string()).unwrap();
    let cfg = TrainConfig::for_distill("", Path::new("."), &teacher, &bad, Some("synthetic:n=4"))
        .unwrap();
    let e = train(cfg, tmp.path().join("o")).err().unwrap().to_string();
    assert!(e.contains("vocab_size 1000"), "{e}");
}
