//! `export bundle` round trips on every parity fixture, the manifest, atomic writes, and the
//! loader's refusal of corrupted bundles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sca_core::bundle::{self, Bundle, Quant};
use sca_core::{Decode, Point, Prompt, Sca};
use sca_export::bundle::{export_bundle, BundleOptions};
use sca_export::verify::{verify, VerifyOptions};

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity"))
}

/// Every SCA fixture directory (config.json + inputs.json + image.png).
fn fixtures() -> Vec<PathBuf> {
    let root = parity_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "parity fixtures missing at {} ({e}); set SCA_PARITY_DIR",
                root.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("inputs.json").is_file() && p.join("image.png").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no SCA fixture under {}", root.display());
    v
}

fn opts(quant: Quant, encoder_f16: bool, onnx: bool) -> BundleOptions {
    BundleOptions {
        quant,
        encoder_f16,
        onnx,
        force: false,
    }
}

fn outputs(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
    let b = b.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max(0).unwrap();
    let m = b.abs().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
}

/// Tolerance of the f32 paths (DESIGN.md §3).
const F32_TOL: f32 = 1e-4;

#[test]
fn f32_bundles_reproduce_every_fixture() {
    for (i, fx) in fixtures().iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("bundle");
        // ONNX once: it is covered in depth by tests/onnx.rs.
        let s = export_bundle(fx, &out, &opts(Quant::F32, false, i == 0)).unwrap();
        assert_eq!(s.decoder_types.keys().collect::<Vec<_>>(), ["f32"]);

        // Bit-identical to the checkpoint at every stage...
        let r = verify(&out, fx, &VerifyOptions::default()).unwrap();
        for st in &r.stages {
            assert_eq!(st.max_abs, 0.0, "{}: {} differs", fx.display(), st.name);
        }
        assert_eq!(r.captions_equal, r.captions_total);
        assert!(r.failures().is_empty());

        // ...and to the official outputs stored in the fixture.
        let sca = Sca::load(&out, Device::Cpu).unwrap();
        let o = outputs(fx);
        let img = sca_core::image::load_image(&fx.join("image.png")).unwrap();
        let emb = sca.embed(&img).unwrap();
        let d = rel_diff(&emb.embedding, &o["image_embeddings"]);
        assert!(d <= F32_TOL, "{}: embedding rel diff {d}", fx.display());
        let inputs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("inputs.json")).unwrap())
                .unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("outputs.json")).unwrap())
                .unwrap();
        let multimask = inputs["multimask_output"].as_bool().unwrap();
        let new = inputs["max_new_tokens"].as_u64().unwrap() as usize;
        for (j, region) in inputs["regions"].as_array().unwrap().iter().enumerate() {
            let prompt = fixture_prompt(region, multimask);
            let got = sca
                .predict(
                    &emb,
                    &prompt,
                    &Decode::Greedy {
                        max_new_tokens: new,
                    },
                )
                .unwrap();
            let text = want["generated_text"][j].as_str().unwrap();
            assert_eq!(got.caption, text, "{} region {j}", fx.display());
            let iou: Vec<f32> = want["iou_predictions"][0][j]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            for (a, b) in got.iou.iter().zip(&iou) {
                assert!((a - b).abs() <= F32_TOL, "iou {a} vs {b}");
            }
        }
    }
}

fn fixture_prompt(region: &serde_json::Value, multimask: bool) -> Prompt {
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let mut p = Prompt {
        multimask,
        ..Default::default()
    };
    if let Some(b) = region["box"].as_array() {
        p.box_ = Some([f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3])]);
    }
    if let Some(pts) = region["points"].as_array() {
        for (k, pt) in pts.iter().enumerate() {
            p.points.push(Point {
                x: f(&pt[0]),
                y: f(&pt[1]),
                label: region["labels"][k].as_i64().unwrap(),
            });
        }
    }
    p
}

#[test]
fn f16_encoder_is_within_2e_3_on_the_embedding() {
    for fx in fixtures() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        export_bundle(&fx, &out, &opts(Quant::F32, true, false)).unwrap();
        let r = verify(&out, &fx, &VerifyOptions::default()).unwrap();
        let emb = &r.stages[0];
        assert_eq!(emb.name, "embedding");
        assert!(emb.max_abs > 0.0, "f16 storage should change something");
        assert!(emb.rel() <= 2e-3, "{}: {}", fx.display(), emb.rel());
    }
}

/// The fixtures' model is random and tiny (32-wide mixer, 48-wide GPT-2), so quantization
/// error is amplified and greedy captions sit on near-ties (top-2 margins of 0.06 on logits
/// of 18). This test pins what q8_0 does there: quantized tensors are really used, masks,
/// IoU and the LM prefix stay within 5% of the f32 model; the logits and caption agreement
/// are printed (`export verify` prints the same table).
#[test]
fn q8_0_bundles_run_quantized_and_stay_close() {
    for fx in fixtures() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let s = export_bundle(&fx, &out, &opts(Quant::Q8_0, false, false)).unwrap();
        let (n_q8, _) = s.decoder_types["q8_0"];
        assert!(n_q8 > 50, "only {n_q8} q8_0 tensors");
        let r = verify(&out, &fx, &VerifyOptions::default()).unwrap();
        eprintln!("{}:\n{r}", fx.display());
        for st in &r.stages {
            match st.name {
                "embedding" => assert_eq!(st.max_abs, 0.0),
                "masks" | "iou" | "prefix" => {
                    assert!(
                        st.rel() <= 0.05,
                        "{}: {} {}",
                        fx.display(),
                        st.name,
                        st.rel()
                    )
                }
                _ => {}
            }
        }
        // q4_k loads and runs too (no accuracy claim at this size).
        let out4 = tmp.path().join("b4");
        export_bundle(&fx, &out4, &opts(Quant::Q4K, true, false)).unwrap();
        let sca = Sca::load(&out4, Device::Cpu).unwrap();
        let img = sca_export::verify::test_image();
        let emb = sca.embed(&img).unwrap();
        let p = Prompt {
            points: vec![Point {
                x: 20.0,
                y: 20.0,
                label: 1,
            }],
            ..Default::default()
        };
        let region = sca
            .predict(&emb, &p, &Decode::Greedy { max_new_tokens: 4 })
            .unwrap();
        assert!(!region.masks.is_empty() && region.tokens.len() <= 4);
    }
}

#[test]
fn manifest_records_every_file() {
    let fx = &fixtures()[0];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export_bundle(fx, &out, &opts(Quant::Q8_0, true, true)).unwrap();
    let m: bundle::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.format, bundle::FORMAT);
    assert_eq!(
        (m.quant.as_str(), m.encoder_dtype.as_str()),
        ("q8_0", "f16")
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("config.json")).unwrap()).unwrap();
    assert_eq!(m.config, cfg, "the official config is kept unchanged");
    let mut names: Vec<&str> = m.files.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "decoder.gguf",
            "encoder.onnx",
            "encoder.safetensors",
            "tokenizer.json"
        ]
    );
    for (name, f) in &m.files {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{name}");
        assert_eq!(bundle::sha256_hex(&bytes), f.sha256, "{name}");
    }
    assert_eq!(m.files["encoder.safetensors"].dtype, "f16");
    assert!(m.files["decoder.gguf"].dtype.contains("q8_0"));
    for k in ["tool", "version", "candle", "rustc", "source"] {
        assert!(
            m.created_by
                .get(k)
                .is_some_and(|v| !v.is_empty() && v != "unknown"),
            "created_by.{k}: {:?}",
            m.created_by
        );
    }
    // Official key names inside every file.
    let enc =
        candle_core::safetensors::load(out.join("encoder.safetensors"), &Device::Cpu).unwrap();
    assert!(enc.contains_key("vision_encoder.neck.conv1.weight"));
    assert!(enc.keys().all(|k| k.starts_with("vision_encoder.")));
    // Same export twice, same bytes (no timestamps or absolute paths).
    let again = tmp.path().join("again");
    export_bundle(fx, &again, &opts(Quant::Q8_0, true, true)).unwrap();
    let m2: bundle::Manifest =
        serde_json::from_slice(&std::fs::read(again.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.files, m2.files);
}

#[test]
fn from_bytes_equals_from_dir() {
    let fx = &fixtures()[0];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export_bundle(fx, &out, &opts(Quant::Q8_0, true, false)).unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let files: HashMap<String, Vec<u8>> = ["encoder.safetensors", "decoder.gguf", "tokenizer.json"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(out.join(n)).unwrap()))
        .collect();
    let a = Bundle::from_bytes(&manifest, files)
        .unwrap()
        .into_sca(Device::Cpu)
        .unwrap();
    let b = Sca::load(&out, Device::Cpu).unwrap();
    let img = sca_core::image::load_image(&fx.join("image.png")).unwrap();
    let (ea, eb) = (a.embed(&img).unwrap(), b.embed(&img).unwrap());
    assert_eq!(rel_diff(&ea.embedding, &eb.embedding), 0.0);
    let p = Prompt {
        box_: Some([20.0, 30.0, 90.0, 100.0]),
        ..Default::default()
    };
    let d = Decode::Greedy { max_new_tokens: 8 };
    let (ra, rb) = (
        a.predict(&ea, &p, &d).unwrap(),
        b.predict(&eb, &p, &d).unwrap(),
    );
    assert_eq!((ra.tokens, ra.iou), (rb.tokens, rb.iou));
}

/// A bundle read back in the official layout (what `trainer fit` starts from when given a
/// bundle): exactly the checkpoint at f32; at q8_0 the same keys and shapes (GPT-2 `Conv1D`
/// weights transposed back to (in, out)) within the storage types' rounding: 2% of each
/// tensor's max magnitude (q6_k, the coarsest type q8_0 bundles use, rounds to 1/64 of a
/// block's range).
#[test]
fn official_tensors_read_a_bundle_back_in_the_checkpoint_layout() {
    let fx = &fixtures()[0];
    let want = candle_core::safetensors::load(fx.join("model.safetensors"), &Device::Cpu).unwrap();
    for (quant, tol) in [(Quant::F32, 0.0), (Quant::Q8_0, 0.02)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        export_bundle(fx, &out, &opts(quant, false, false)).unwrap();
        let got = Bundle::from_dir(&out).unwrap().official_tensors().unwrap();
        let mut keys: Vec<&String> = got.keys().collect();
        keys.sort();
        let mut want_keys: Vec<&String> = want.keys().collect();
        want_keys.sort();
        assert_eq!(keys, want_keys, "{quant:?}");
        let mut transposed_back = 0;
        for (k, t) in &got {
            let w = &want[k];
            assert_eq!(t.dims(), w.dims(), "{quant:?} {k}");
            assert_eq!(t.dtype(), DType::F32, "{k}");
            let d = rel_diff(t, w);
            assert!(d <= tol, "{quant:?} {k}: rel diff {d} > {tol}");
            transposed_back += usize::from(bundle::is_conv1d_weight(k));
        }
        assert!(transposed_back > 0);
    }
}

fn exported(quant: Quant) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export_bundle(&fixtures()[0], &out, &opts(quant, true, false)).unwrap();
    (tmp, out)
}

fn load_err(dir: &Path) -> String {
    match Sca::load(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_changed_byte_is_caught_by_sha256_and_named() {
    let (_t, out) = exported(Quant::Q8_0);
    let p = out.join("decoder.gguf");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let msg = load_err(&out);
    assert!(
        msg.contains("decoder.gguf") && msg.contains("sha256"),
        "{msg}"
    );
}

#[test]
fn truncation_and_missing_files_are_named() {
    let (_t, out) = exported(Quant::F16);
    let p = out.join("encoder.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(&out);
    assert!(
        msg.contains("encoder.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::write(&p, &bytes).unwrap();
    std::fs::remove_file(out.join("tokenizer.json")).unwrap();
    let msg = load_err(&out);
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn bad_manifests_are_refused_with_reasons() {
    let (_t, out) = exported(Quant::F32);
    let mp = out.join("manifest.json");
    let text = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, text.replace("sca-bundle/1", "sca-bundle/9")).unwrap();
    let msg = load_err(&out);
    assert!(
        msg.contains("sca-bundle/9") && msg.contains("manifest.json"),
        "{msg}"
    );
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["files"].as_object_mut().unwrap().remove("decoder.gguf");
    std::fs::write(&mp, m.to_string()).unwrap();
    let msg = load_err(&out);
    assert!(msg.contains("decoder.gguf"), "{msg}");
    std::fs::write(&mp, "{not json").unwrap();
    let msg = load_err(&out);
    assert!(
        msg.contains("manifest.json") && msg.contains("invalid"),
        "{msg}"
    );
}

#[test]
fn exports_are_atomic_and_never_clobber() {
    let fx = &fixtures()[0];
    let tmp = tempfile::tempdir().unwrap();
    // A directory with other content is refused, untouched.
    let other = tmp.path().join("notes");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.txt"), "keep").unwrap();
    let msg = export_bundle(fx, &other, &opts(Quant::F32, false, false))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("refusing"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(other.join("a.txt")).unwrap(),
        "keep"
    );
    // An existing bundle needs --force, then is replaced whole.
    let out = tmp.path().join("b");
    export_bundle(fx, &out, &opts(Quant::F32, false, false)).unwrap();
    let msg = export_bundle(fx, &out, &opts(Quant::Q8_0, true, false))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--force"), "{msg}");
    let mut o = opts(Quant::Q8_0, true, false);
    o.force = true;
    export_bundle(fx, &out, &o).unwrap();
    let m = Bundle::from_dir(&out).unwrap().manifest;
    assert_eq!(m.quant, "q8_0");
    // Every file is world-readable (servers and browsers read bundles), not a temp file's 0600.
    #[cfg(unix)]
    for name in m
        .files
        .keys()
        .chain(std::iter::once(&"manifest.json".to_string()))
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o044, 0o044, "{name} has mode {mode:o}");
    }
    // A failing export (no config.json) leaves no partial output or temp directory.
    let empty = tmp.path().join("empty-src");
    std::fs::create_dir(&empty).unwrap();
    let bad_out = tmp.path().join("never");
    let msg = export_bundle(&empty, &bad_out, &opts(Quant::F32, false, false))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(!bad_out.exists());
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Exporting a bundle is refused with a hint.
    let msg = export_bundle(&out, &tmp.path().join("x"), &opts(Quant::F32, false, false))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("already a bundle"), "{msg}");
}

#[test]
fn fp16_pytorch_bin_checkpoints_export_exactly() {
    let fx = &fixtures()[0];
    let w = sca_core::weights::Weights::load(fx).unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        w.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    sca_core::weights::save_torch_bin(&src.path().join("pytorch_model.bin"), &tensors, DType::F16)
        .unwrap();
    for f in [
        "config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "tokenizer.json",
    ] {
        std::fs::copy(fx.join(f), src.path().join(f)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    export_bundle(src.path(), &out, &opts(Quant::F32, false, false)).unwrap();
    let r = verify(&out, src.path(), &VerifyOptions::default()).unwrap();
    for st in &r.stages {
        assert_eq!(st.max_abs, 0.0, "{}", st.name);
    }
}
