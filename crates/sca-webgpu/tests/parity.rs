//! The WebGPU encoder against the official fixtures and against the candle encoder.
//!
//! Tolerance (not to be loosened): max |gpu - reference| <= 1e-3 * max |reference| over the
//! whole (C_out, g, g) embedding for `Precision::F32`; 2e-3 for `Precision::F16` (f16 weight
//! matrices: the project's criterion for f16 encoder exports). The f16 checks run where the
//! adapter has `shader-f16` (lavapipe does; SwiftShader does not) and say so when skipped.
//!
//! Needs a WebGPU/Vulkan adapter. Without a GPU: `apt-get install -y mesa-vulkan-drivers`
//! (lavapipe). No adapter is a test failure, never a skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sca_core::config::{ScaConfig, VisionConfig};
use sca_webgpu::{GpuContext, GpuEncoder, Precision};

/// Relative tolerance of each precision.
fn rel_tol(p: Precision) -> f32 {
    match p {
        Precision::F16 => 2e-3,
        _ => 1e-3,
    }
}

/// Whether the f16 path can be tested. Our test adapter (lavapipe) has `shader-f16`, so its
/// absence fails the test unless `SCA_WEBGPU_ALLOW_NO_F16=1` says this adapter cannot.
fn f16_testable(ctx: &GpuContext) -> bool {
    if ctx.adapter().shader_f16 {
        return true;
    }
    let label = ctx.adapter().label();
    assert!(
        std::env::var_os("SCA_WEBGPU_ALLOW_NO_F16").is_some(),
        "{label} has no shader-f16, so the f16 path cannot be tested (lavapipe from \
         `apt-get install -y mesa-vulkan-drivers` has it); set SCA_WEBGPU_ALLOW_NO_F16=1 to \
         test the f32 path only"
    );
    println!("f16 checks not run: {label} has no shader-f16 (SCA_WEBGPU_ALLOW_NO_F16 set)");
    false
}

/// F32, and F16 where the device has `shader-f16`.
fn precisions(ctx: &GpuContext) -> Vec<Precision> {
    if f16_testable(ctx) {
        vec![Precision::F32, Precision::F16]
    } else {
        vec![Precision::F32]
    }
}

fn encoder(
    ctx: &GpuContext,
    cfg: &VisionConfig,
    w: &HashMap<String, Tensor>,
    p: Precision,
) -> GpuEncoder {
    let enc = GpuEncoder::with_context_and_precision(ctx, cfg, w, p)
        .unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(enc.precision(), p);
    enc
}

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

fn check(name: &str, p: Precision, ours: &[f32], reference: &[f32]) {
    let (diff, scale) = max_diff(ours, reference);
    let tol = rel_tol(p);
    println!(
        "{name} [{p}]: max|diff| = {diff:.3e}, max|ref| = {scale:.3e}, ratio {:.3e}",
        diff / scale
    );
    assert!(
        diff <= tol * scale,
        "{name} [{p}]: max|diff| {diff:e} > {tol} * max|ref| {scale:e}"
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
        for p in precisions(&ctx) {
            let enc = encoder(&ctx, &cfg.vision_config, &weights, p);
            let emb = enc
                .embed_blocking(&f32s(&outputs["pixel_values"]))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            check(&name, p, &emb, &f32s(&outputs["image_embeddings"]));
        }
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
    let ctx = context();
    let px = pixels(3 * cfg.image_size * cfg.image_size);
    let reference = candle_embed(&cfg, &weights, &px);
    for p in precisions(&ctx) {
        let enc = encoder(&ctx, &cfg, &weights, p);
        let ours = enc.embed_blocking(&px).unwrap();
        assert_eq!(ours.len(), {
            let (c, h, w) = enc.output_shape();
            c * h * w
        });
        check("sca-shapes", p, &ours, &reference);
    }
}

/// The f16 path's only difference from f32 is the rounding of the weight matrices: F16 on the
/// bundled weights equals F32 on those matrices rounded to f16 (by candle) bit for bit.
#[test]
fn f16_is_f32_on_rounded_matrices() {
    let ctx = context();
    if !f16_testable(&ctx) {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes");
    let bundle = sca_core::bundle::Bundle::from_dir(&dir).unwrap();
    let cfg = bundle.config().unwrap().vision_config;
    let weights = bundle.encoder_tensors().unwrap();
    let matrices = [
        "qkv.weight",
        "proj.weight",
        "lin1.weight",
        "lin2.weight",
        "patch_embed.projection.weight",
        "neck.conv1.weight",
        "neck.conv2.weight",
    ];
    let mut rounded = weights.clone();
    let mut n = 0;
    for (k, t) in rounded.iter_mut() {
        if k.starts_with("vision_encoder.") && matrices.iter().any(|m| k.ends_with(m)) {
            *t = t
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 4 * cfg.num_hidden_layers + 3);
    let px = pixels(3 * cfg.image_size * cfg.image_size);
    let f16 = encoder(&ctx, &cfg, &weights, Precision::F16)
        .embed_blocking(&px)
        .unwrap();
    let f32_rounded = encoder(&ctx, &cfg, &rounded, Precision::F32)
        .embed_blocking(&px)
        .unwrap();
    let (diff, _) = max_diff(&f16, &f32_rounded);
    assert_eq!(diff, 0.0, "f16 path vs f32 on f16-rounded matrices");
}

/// `Auto` is F16 exactly where the device has `shader-f16`; F32 on a device opened without it
/// is the f32 path, and F16 there a clear error.
#[test]
fn precision_choice_and_missing_feature() {
    let dir = parity_dir().join("sca_a_point_single");
    let cfg = ScaConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .vision_config;
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let ctx = context();
    let auto = GpuEncoder::with_context(&ctx, &cfg, &weights).unwrap();
    let want = if ctx.adapter().shader_f16 {
        Precision::F16
    } else {
        Precision::F32
    };
    assert_eq!(auto.precision(), want);
    assert_eq!(auto.precision().to_string(), want.as_str());

    quiet_xdg_runtime_dir();
    let plain = pollster::block_on(GpuContext::new_f32_only()).unwrap();
    assert!(!plain.adapter().shader_f16);
    let e =
        GpuEncoder::with_context_and_precision(&plain, &cfg, &weights, Precision::F16).unwrap_err();
    assert!(
        matches!(e, sca_webgpu::Error::MissingFeature { .. })
            && e.to_string().contains("shader-f16"),
        "{e}"
    );
    let px = pixels(3 * cfg.image_size * cfg.image_size);
    let on_plain = GpuEncoder::with_context(&plain, &cfg, &weights).unwrap();
    assert_eq!(on_plain.precision(), Precision::F32);
    // the same f32 path whether or not the device has shader-f16
    let f32_emb = encoder(&ctx, &cfg, &weights, Precision::F32)
        .embed_blocking(&px)
        .unwrap();
    assert_eq!(on_plain.embed_blocking(&px).unwrap(), f32_emb);
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
        let px = pixels(3 * cfg.image_size * cfg.image_size);
        let reference = candle_embed(&cfg, &weights, &px);
        for p in precisions(&ctx) {
            let ours = encoder(&ctx, &cfg, &weights, p)
                .embed_blocking(&px)
                .unwrap();
            check(&format!("variant {i}"), p, &ours, &reference);
        }
    }
}
