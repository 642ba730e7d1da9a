//! The three starting points: an SCA checkpoint, separate HF SAM + GPT-2 checkpoints with a
//! fresh mixer, and a config alone; each trains a step and saves a model `Sca::load` reads.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use trainer::config::TrainConfig;
use trainer::model::ModelSetup;
use trainer::params::{is_mixer_key, TrainableSet};
use trainer::train::{fit, FitOptions};

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Splits the SCA fixture into an HF SAM checkpoint and takes the GPT-2 fixture as the LM.
fn hf_checkpoints(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let p = common::parity_dir();
    let sca_dir = p.join("sca_a_point_single");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sca_dir.join("config.json")).unwrap())
            .unwrap();
    let sam = root.join("sam");
    std::fs::create_dir_all(&sam).unwrap();
    let mut dec = cfg["mask_caption_decoder_config"].clone();
    for k in [
        "additional_num_hidden_layers",
        "num_caption_tokens",
        "num_caption_heads",
    ] {
        dec.as_object_mut().unwrap().remove(k);
    }
    write_json(
        &sam.join("config.json"),
        &serde_json::json!({
            "architectures": ["SamModel"],
            "model_type": "sam",
            "initializer_range": 0.02,
            "vision_config": cfg["vision_config"],
            "prompt_encoder_config": cfg["prompt_encoder_config"],
            "mask_decoder_config": dec,
        }),
    );
    let w =
        candle_core::safetensors::load(sca_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let sam_w: HashMap<String, Tensor> = w
        .into_iter()
        .filter(|(k, _)| {
            (k.starts_with("vision_encoder.")
                || k.starts_with("prompt_encoder.")
                || k.starts_with("mask_decoder.")
                || k.starts_with("shared_image_embedding."))
                && !is_mixer_key(k)
        })
        .collect();
    candle_core::safetensors::save(&sam_w, sam.join("model.safetensors")).unwrap();
    // The GPT-2 fixture (32 wide) with the tokenizer files beside it.
    let gpt2 = root.join("gpt2");
    std::fs::create_dir_all(&gpt2).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(p.join("gpt2_only").join(f), gpt2.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::copy(p.join("tokenizer").join(f), gpt2.join(f)).unwrap();
    }
    (sam, gpt2)
}

fn config(model: &str) -> TrainConfig {
    let text = format!(
        r#"{model}
[data]
train = "synthetic:seed=3,n=8,size=128"
regions_per_image = 4
images_per_batch = 1
lsj = false
[optim]
max_steps = 2
warmup_steps = 1
[train]
checkpoint_every = 0
progress = false
[eval]
every = 0
"#
    );
    TrainConfig::from_toml_str(&text, Path::new("/")).unwrap()
}

#[test]
fn sam_and_gpt2_checkpoints_with_a_fresh_mixer() {
    let tmp = tempfile::tempdir().unwrap();
    let (sam, gpt2) = hf_checkpoints(tmp.path());
    let model = format!(
        "[model]\ninit = \"sam_gpt2\"\nsam = \"{}\"\ngpt2 = \"{}\"\nmixer_layers = 2\n",
        sam.display(),
        gpt2.display()
    );
    let cfg = config(&model);
    let mut setup = ModelSetup::prepare(&cfg.model).unwrap();
    assert_eq!(
        setup
            .config
            .mask_caption_decoder_config
            .additional_num_hidden_layers,
        2
    );
    assert_eq!(setup.config.text_config.n_embd, 32);
    let (_, store) = setup
        .build(TrainableSet::parse("mixer").unwrap(), &Device::Cpu)
        .unwrap();
    let sam_w =
        candle_core::safetensors::load(sam.join("model.safetensors"), &Device::Cpu).unwrap();
    let lm_w =
        candle_core::safetensors::load(gpt2.join("model.safetensors"), &Device::Cpu).unwrap();
    let snap = store.snapshot().unwrap();
    let same = |a: &Tensor, b: &Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    for (k, t) in &sam_w {
        if let Some(s) = snap.get(k) {
            assert!(same(s, t), "{k} differs from the SAM checkpoint");
        }
    }
    for (k, t) in &lm_w {
        assert!(same(&snap[&format!("language_model.{k}")], t), "{k}");
    }
    // The fresh mixer: N(0, 0.02) weights, zero biases, unit LayerNorm scales.
    let w = snap["mask_decoder.additional_transformer.layers.0.mlp.lin1.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.003, "{std}");
    let b = snap["language_project.bias"]
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(b.to_scalar::<f32>().unwrap(), 0.0);
    let ln = snap["mask_decoder.additional_transformer.layers.1.layer_norm2.weight"]
        .to_vec1::<f32>()
        .unwrap();
    assert!(ln.iter().all(|&v| v == 1.0));
    assert_eq!(
        store.trainable().len(),
        store
            .trainable()
            .iter()
            .filter(|(k, _)| is_mixer_key(k))
            .count()
    );

    let out = tmp.path().join("run");
    let s = fit(FitOptions {
        config: cfg,
        out: out.clone(),
        resume: None,
        stop_after: None,
    })
    .unwrap();
    assert_eq!(s.steps, 2);
    let sca = sca_core::Sca::load(&out.join("model"), Device::Cpu).unwrap();
    assert_eq!(
        sca.config()
            .mask_caption_decoder_config
            .additional_num_hidden_layers,
        2
    );
}

#[test]
fn config_alone_and_missing_files() {
    let p = common::parity_dir();
    let tmp = tempfile::tempdir().unwrap();
    let model = format!(
        "[model]\ninit = \"config\"\nconfig = \"{}\"\ntokenizer = \"{}\"\ntrainable = \"all\"\n",
        p.join("sca_a_point_single/config.json").display(),
        p.join("tokenizer").display()
    );
    let out = tmp.path().join("run");
    let s = fit(FitOptions {
        config: config(&model),
        out: out.clone(),
        resume: None,
        stop_after: None,
    })
    .unwrap();
    assert!(s.last_loss.unwrap().is_finite());
    sca_core::Sca::load(&out.join("model"), Device::Cpu).unwrap();

    // A checkpoint directory without config.json, and a missing tokenizer, fail clearly.
    let bad = format!(
        "[model]\ninit = \"checkpoint\"\ncheckpoint = \"{}\"\n",
        tmp.path().display()
    );
    let e = ModelSetup::prepare(&config(&bad).model)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    let no_tok = format!(
        "[model]\ninit = \"config\"\nconfig = \"{}\"\ntokenizer = \"{}\"\n",
        p.join("sca_a_point_single/config.json").display(),
        tmp.path().display()
    );
    let e = ModelSetup::prepare(&config(&no_tok).model)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer"), "{e}");
}

/// An `export` bundle (the shipped `models/sca-shapes`, q8_0 decoder side) is a starting point
/// too: its weights dequantized, in the official layout, and the run saves a plain checkpoint.
#[test]
fn an_export_bundle_is_a_starting_point() {
    let bundle_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/sca-shapes");
    let tmp = tempfile::tempdir().unwrap();
    let model = format!(
        "[model]\ninit = \"checkpoint\"\ncheckpoint = \"{}\"\n",
        bundle_dir.display()
    );
    let cfg = config(&model);
    let mut setup = ModelSetup::prepare(&cfg.model).unwrap();
    let want = sca_core::bundle::Bundle::from_dir(&bundle_dir)
        .unwrap()
        .official_tensors()
        .unwrap();
    let (_, store) = setup
        .build(TrainableSet::parse("mixer").unwrap(), &Device::Cpu)
        .unwrap();
    let snap = store.snapshot().unwrap();
    for (k, t) in &want {
        let s = &snap[k];
        assert_eq!(s.dims(), t.dims(), "{k}");
        let d = (s - t).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }

    let out = tmp.path().join("run");
    let s = fit(FitOptions {
        config: cfg,
        out: out.clone(),
        resume: None,
        stop_after: None,
    })
    .unwrap();
    assert!(s.last_loss.unwrap().is_finite());
    let sca = sca_core::Sca::load(&out.join("model"), Device::Cpu).unwrap();
    assert_eq!(
        sca.config().text_config.n_layer,
        sca_core::Sca::load(&bundle_dir, Device::Cpu)
            .unwrap()
            .config()
            .text_config
            .n_layer
    );
}
