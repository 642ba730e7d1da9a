//! The WebGPU encoder against the official fixtures and against the candle encoder.
//!
//! Tolerance (not to be loosened): max |gpu - reference| <= 1e-3 * max |reference| over the
//! whole (C_out, g, g) embedding.
//!
//! Needs a WebGPU/Vulkan adapter. Without a GPU: `apt-get install -y mesa-vulkan-drivers`
//! (lavapipe). No adapter is a test failure, never a skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sca_core::config::{ScaConfig, VisionConfig};
use sca_webgpu::{GpuContext, GpuEncoder};

const REL_TOL: f32 = 1e-3;

/// `$SCA_PARITY_DIR`, else `../shared/parity` beside the repository.
fn parity_dir() -> PathBuf {
    let dir = std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"));
    assert!(
        dir.is_dir(),
        "parity fixtures not found at {} (set SCA_PARITY_DIR)",
        dir.display()
    );
    dir
}

fn context() -> GpuContext {
    quiet_xdg_runtime_dir();
    GpuContext::new_blocking().unwrap_or_else(|e| panic!("{e}"))
}

/// Mesa's Vulkan drivers print `XDG_RUNTIME_DIR is invalid or not set` on every device when
/// it is unset (CI, containers): point it at a private 0700 directory first.
fn quiet_xdg_runtime_dir() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("sca-webgpu-xdg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    });
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| and max |b|.
fn max_diff(ours: &[f32], reference: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), reference.len(), "length");
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    (diff, scale)
}

fn check(name: &str, ours: &[f32], reference: &[f32]) {
    let (diff, scale) = max_diff(ours, reference);
    println!(
        "{name}: max|diff| = {diff:.3e}, max|ref| = {scale:.3e}, ratio {:.3e}",
        diff / scale
    );
    assert!(
        diff <= REL_TOL * scale,
        "{name}: max|diff| {diff:e} > {REL_TOL} * max|ref| {scale:e}"
    );
}

#[test]
fn parity_fixtures() {
    let ctx = context();
    println!("adapter: {}", ctx.adapter().label());
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parity_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("outputs.safetensors").is_file() && p.join("config.json").is_file())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("sca_")
        })
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no sca_* fixtures in the parity dir");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cfg = ScaConfig::from_file(&dir.join("config.json")).unwrap();
        let weights =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let outputs =
            candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
        let enc = GpuEncoder::with_context(&ctx, &cfg.vision_config, &weights)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let emb = enc
            .embed_blocking(&f32s(&outputs["pixel_values"]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check(&name, &emb, &f32s(&outputs["image_embeddings"]));
    }
}

/// Deterministic pseudo-random pixels in about [-2, 2].
fn pixels(len: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn candle_embed(cfg: &VisionConfig, w: &HashMap<String, Tensor>, px: &[f32]) -> Vec<f32> {
    let vb = candle_nn::VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let enc =
        sca_core::sam::image_encoder::ImageEncoder::new(cfg, vb.pp("vision_encoder")).unwrap();
    let s = cfg.image_size;
    let x = Tensor::from_slice(px, (1, 3, s, s), &Device::Cpu).unwrap();
    f32s(&enc.forward(&x, &mut sca_core::Trace::default()).unwrap())
}

#[test]
fn bundled_model_matches_candle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes");
    let bundle = sca_core::bundle::Bundle::from_dir(&dir).unwrap();
    let cfg = bundle.config().unwrap().vision_config;
    let weights = bundle.encoder_tensors().unwrap();
    let enc =
        GpuEncoder::with_context(&context(), &cfg, &weights).unwrap_or_else(|e| panic!("{e}"));
    let px = pixels(3 * cfg.image_size * cfg.image_size);
    let ours = enc.embed_blocking(&px).unwrap();
    assert_eq!(ours.len(), {
        let (c, h, w) = enc.output_shape();
        c * h * w
    });
    check("sca-shapes", &ours, &candle_embed(&cfg, &weights, &px));
}

#[test]
fn errors_name_the_problem() {
    let dir = parity_dir().join("sca_a_point_single");
    let cfg = ScaConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .vision_config;
    let mut weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let ctx = context();
    let key = "vision_encoder.layers.1.mlp.lin1.weight";
    let t = weights.remove(key).unwrap();
    let e = GpuEncoder::with_context(&ctx, &cfg, &weights).unwrap_err();
    assert!(e.to_string().contains(key), "{e}");
    weights.insert(key.into(), t.t().unwrap());
    let e = GpuEncoder::with_context(&ctx, &cfg, &weights).unwrap_err();
    assert!(
        e.to_string().contains(key) && e.to_string().contains("[192, 48]"),
        "{e}"
    );
    weights.insert(key.into(), t);
    let enc = GpuEncoder::with_context(&ctx, &cfg, &weights).unwrap();
    let e = enc.embed_blocking(&[0.0; 10]).unwrap_err();
    assert!(matches!(e, sca_webgpu::Error::Input { got: 10, .. }), "{e}");
}

/// Paths the fixtures do not take: no qkv bias, no relative / absolute positions, head dim 64,
/// all-windowed layers, eps 1e-5, and the MLP in row chunks under a small binding limit.
#[test]
fn config_variants_match_candle() {
    let ctx = context();
    let variants = [
        (
            r#"{"hidden_size": 40, "num_attention_heads": 2, "num_hidden_layers": 2,
                "image_size": 96, "window_size": 4, "global_attn_indexes": [1],
                "mlp_dim": 80, "output_channels": 16, "qkv_bias": false}"#,
            None,
        ),
        (
            r#"{"hidden_size": 40, "num_attention_heads": 2, "num_hidden_layers": 2,
                "image_size": 96, "window_size": 4, "global_attn_indexes": [0],
                "mlp_dim": 80, "output_channels": 16, "use_rel_pos": false,
                "use_abs_pos": false}"#,
            None,
        ),
        (
            r#"{"hidden_size": 64, "num_attention_heads": 1, "num_hidden_layers": 1,
                "image_size": 64, "window_size": 3, "global_attn_indexes": [],
                "mlp_dim": 128, "output_channels": 24, "layer_norm_eps": 1e-5}"#,
            None,
        ),
        (
            r#"{"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
                "image_size": 48, "patch_size": 4, "window_size": 5,
                "global_attn_indexes": [1], "mlp_dim": 256, "output_channels": 8}"#,
            Some(64 * 1024),
        ),
    ];
    for (i, (json, limit)) in variants.into_iter().enumerate() {
        let cfg: VisionConfig = serde_json::from_str(json).unwrap();
        let weights = sca_webgpu::random_weights(&cfg, i as u64 + 1);
        let ctx = match limit {
            Some(l) => ctx.clone().with_binding_limit(l),
            None => ctx.clone(),
        };
        let enc = GpuEncoder::with_context(&ctx, &cfg, &weights).unwrap_or_else(|e| panic!("{e}"));
        let px = pixels(3 * cfg.image_size * cfg.image_size);
        let ours = enc.embed_blocking(&px).unwrap();
        check(
            &format!("variant {i}"),
            &ours,
            &candle_embed(&cfg, &weights, &px),
        );
    }
}
