//! The FFI surface, exercised from Python through UniFFI-generated bindings (the same
//! definitions the Kotlin and Swift bindings come from): load a bundle, embed an RGBA buffer, predict, stream and cancel a caption, typed errors — and the caption equals what
//! `sca caption` computes (`Sca::predict` with the same prompt and decoding).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use sca_core::{Decode, Point, Prompt, Sca};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/debug (or release) of this test binary.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The model the test drives: `SCA_MOBILE_TEST_MODEL`, else the bundled default model when it
/// is there, else a q8_0 bundle exported from the parity fixture (quantized decoder side, f16
/// encoder: the kind of bundle an app ships).
fn model_dir(tmp: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("SCA_MOBILE_TEST_MODEL") {
        return PathBuf::from(dir);
    }
    let bundled = repo().join("models/sca-shapes");
    if bundled.join("manifest.json").is_file() {
        return bundled;
    }
    let fixture = std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/parity"))
        .join("sca_a_point_single");
    assert!(
        fixture.is_dir(),
        "parity fixture missing at {} (set SCA_PARITY_DIR)",
        fixture.display()
    );
    let out = tmp.join("bundle");
    let opts = sca_export::bundle::BundleOptions {
        quant: sca_core::bundle::Quant::Q8_0,
        encoder_f16: true,
        onnx: false,
        force: false,
    };
    sca_export::bundle::export_bundle(&fixture, &out, &opts).unwrap();
    out
}

fn example_image(model: &Path) -> image::RgbImage {
    let ex = model.join("examples");
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(&ex)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    pngs.retain(|p| p.extension().is_some_and(|e| e == "png"));
    pngs.sort();
    match pngs.first() {
        Some(p) => sca_core::image::load_image(p).unwrap(),
        None => image::RgbImage::from_fn(160, 120, |x, y| {
            if (x as i32 - 60).pow(2) + (y as i32 - 50).pow(2) < 900 {
                image::Rgb([220, 40, 40])
            } else {
                image::Rgb([110, 120, 130])
            }
        }),
    }
}

#[test]
fn python_through_uniffi_matches_the_core() {
    let profile = target_profile_dir();
    let name = format!(
        "{}sca_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    // The cdylib built alongside this test (deps/), else the last `cargo build` (uplifted).
    let lib = [profile.join("deps").join(&name), profile.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} missing under {} (cargo build -p sca-mobile)",
                profile.display()
            )
        });
    let bindgen = profile.join("uniffi-bindgen");
    assert!(
        bindgen.is_file(),
        "{} missing: run `cargo build -p sca-uniffi-bindgen` (cargo test --workspace builds it)",
        bindgen.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bindings");
    let st = Command::new(&bindgen)
        .args(["generate", "--library"])
        .arg(&lib)
        .args(["--language", "python", "--out-dir"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "uniffi-bindgen failed");
    // The generated module loads the library from its own directory.
    std::fs::copy(&lib, out.join(lib.file_name().unwrap())).unwrap();

    let model = model_dir(tmp.path());
    let img = example_image(&model);
    let (w, h) = img.dimensions();
    let rgba: Vec<u8> = img.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let raw = tmp.path().join("image.rgba");
    std::fs::write(&raw, &rgba).unwrap();
    let (x, y) = (w as f32 * 0.37, h as f32 * 0.41);
    let new = 12;
    let py = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/ffi_check.py"))
        .arg(&out)
        .arg(&model)
        .arg(&raw)
        .args([
            w.to_string(),
            h.to_string(),
            x.to_string(),
            y.to_string(),
            new.to_string(),
        ])
        .output()
        .expect("python3 (apt-get install -y python3)");
    let stderr = String::from_utf8_lossy(&py.stderr);
    assert!(py.status.success(), "python failed:\n{stderr}");
    let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();

    // What `sca caption --point x,y --max-new-tokens 12` computes.
    let sca = Sca::load(&model, Device::Cpu).unwrap();
    let emb = sca.embed(&img).unwrap();
    let prompt = Prompt {
        points: vec![Point { x, y, label: 1 }],
        box_: None,
        multimask: true,
    };
    let want = sca
        .predict(
            &emb,
            &prompt,
            &Decode::Greedy {
                max_new_tokens: new,
            },
        )
        .unwrap();
    assert_eq!(got["caption"], want.caption.as_str());
    let tokens: Vec<u32> = serde_json::from_value(got["tokens"].clone()).unwrap();
    assert_eq!(tokens, want.tokens);
    let iou: Vec<f32> = serde_json::from_value(got["iou"].clone()).unwrap();
    assert_eq!(iou, want.iou);
    let rle = sca_core::masks::CocoRle::encode(&want.masks[0].data, h as usize, w as usize);
    assert_eq!(got["masks"][0][3], rle.counts.as_str());
    // streaming gives the same caption, piece by piece
    assert_eq!(got["streamed_caption"], want.caption.as_str());
    let pieces: Vec<String> = serde_json::from_value(got["pieces"].clone()).unwrap();
    assert_eq!(pieces.concat(), want.caption);
    assert!(got["stopped_pieces"].as_u64().unwrap() <= 1);
    if pieces.len() > 1 {
        assert_eq!(
            got["cancelled_pieces"].as_u64().unwrap(),
            1,
            "cancel() stops the stream"
        );
    }
    // typed exceptions with messages naming the problem
    let e = &got["errors"];
    assert!(e["image"].as_str().unwrap().contains("4x4"), "{e}");
    assert!(e["prompt"].as_str().unwrap().contains("box_xyxy"), "{e}");
    assert!(e["outside"].as_str().is_some(), "{e}");
    assert!(
        e["load"].as_str().unwrap().contains("does-not-exist"),
        "{e}"
    );
}
