//! The exported ONNX encoder, run through ONNX Runtime (`ort`, load-dynamic), matches the candle
//! encoder (`ScaModel::embed_pixels`) within 1e-4 of the max magnitude on every parity fixture,
//! and on a batch of 2 (dynamic batch axis).
//!
//! Needs the ONNX Runtime library: `ORT_DYLIB_PATH`, or `<repo>/.cache/onnxruntime/` as written
//! by `scripts/setup-onnxruntime.sh`. Fixtures: `$SCA_PARITY_DIR` (default `../../shared/parity`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use sca_core::{Sca, Trace};

const TOL: f32 = 1e-4;
const INSTALL: &str = "bash scripts/setup-onnxruntime.sh   (then export \
ORT_DYLIB_PATH=$PWD/.cache/onnxruntime/libonnxruntime.so.1.32.0)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/parity"))
}

/// ONNX Runtime's library; a missing library fails the test with the install command.
fn ort_library() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/onnxruntime/libonnxruntime.so.1.32.0"));
    assert!(
        path.is_file(),
        "ONNX Runtime library not found at {}; install it with: {INSTALL}",
        path.display()
    );
    path
}

/// Loads the library (once per process) and creates an environment.
fn ort_environment() -> Environment {
    let lib = ort_library();
    ort::init_from(&lib)
        .unwrap_or_else(|e| panic!("loading {}: {e}; reinstall with: {INSTALL}", lib.display()))
        .build()
        .unwrap()
}

/// Fixture directories whose outputs hold `pixel_values` (the SCA ones; not `gpt2_only`).
fn sca_fixtures() -> Vec<PathBuf> {
    let root = parity_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("outputs.safetensors").is_file() && p.join("config.json").is_file())
        .filter(|p| {
            let out = candle_core::safetensors::load(p.join("outputs.safetensors"), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.contains_key("pixel_values")
        })
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no SCA fixtures in {}", root.display());
    dirs
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mag = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (diff, mag)
}

fn run_ort(session: &mut Session, pixels: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let shape: Vec<usize> = pixels.dims().to_vec();
    let data = pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let input = OrtTensor::<f32>::from_array((shape, data)).unwrap();
    let outputs = session
        .run(ort::inputs![sca_export::onnx::INPUT_NAME => input])
        .unwrap();
    let (shape, data) = outputs[sca_export::onnx::OUTPUT_NAME]
        .try_extract_tensor::<f32>()
        .unwrap();
    (shape.iter().map(|&d| d as usize).collect(), data.to_vec())
}

fn check(name: &str, ort_out: (Vec<usize>, Vec<f32>), candle_out: &Tensor) {
    assert_eq!(ort_out.0, candle_out.dims(), "{name}: output shape");
    let want = candle_out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (diff, mag) = max_rel_diff(&ort_out.1, &want);
    eprintln!("{name}: max |diff| {diff:.3e}, max magnitude {mag:.3e}");
    assert!(
        diff <= TOL * mag,
        "{name}: ONNX vs candle max |diff| {diff:e} > {TOL:e} x max magnitude {mag:e}"
    );
}

#[test]
fn onnx_encoder_matches_candle_on_every_fixture() {
    let env = ort_environment();
    let tmp = tempfile::tempdir().unwrap();
    for dir in sca_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let onnx_path = tmp.path().join(format!("{name}.onnx"));
        sca_export::export_onnx(&dir, &onnx_path).unwrap();
        let sca = Sca::load(&dir, Device::Cpu).unwrap();
        let outputs =
            candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
        let pixels = outputs["pixel_values"]
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let mut session = Session::builder(&env)
            .unwrap()
            .commit_from_file(&onnx_path)
            .unwrap();

        let want = sca
            .model
            .embed_pixels(&pixels, &mut Trace::default())
            .unwrap();
        check(&name, run_ort(&mut session, &pixels), &want);

        // Dynamic batch: the fixture image and a transformed copy in one call.
        let other = pixels.flip(&[3]).unwrap().affine(-0.5, 0.25).unwrap();
        let batch = Tensor::cat(&[&pixels, &other], 0).unwrap();
        let want = sca
            .model
            .embed_pixels(&batch, &mut Trace::default())
            .unwrap();
        check(
            &format!("{name} (batch 2)"),
            run_ort(&mut session, &batch),
            &want,
        );
    }
}

/// The same graph with its weights in `<out>.data` (the layout SAM ViT-H needs, > 2 GiB).
#[test]
fn onnx_encoder_with_external_data_matches_candle() {
    let env = ort_environment();
    let dir = &sca_fixtures()[0];
    let tmp = tempfile::tempdir().unwrap();
    let onnx_path = tmp.path().join("encoder.onnx");
    let opts = sca_export::OnnxOptions {
        external_data: true,
    };
    let summary = sca_export::export_onnx_with(dir, &onnx_path, &opts).unwrap();
    let (data_path, data_bytes) = summary.external_data.expect("external data written");
    assert_eq!(data_path, tmp.path().join("encoder.onnx.data"));
    assert!(data_bytes > summary.bytes, "weights are in the data file");
    let sca = Sca::load(dir, Device::Cpu).unwrap();
    let outputs =
        candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
    let pixels = outputs["pixel_values"]
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let mut session = Session::builder(&env)
        .unwrap()
        .commit_from_file(&onnx_path)
        .unwrap();
    let want = sca
        .model
        .embed_pixels(&pixels, &mut Trace::default())
        .unwrap();
    check("external data", run_ort(&mut session, &pixels), &want);
}
