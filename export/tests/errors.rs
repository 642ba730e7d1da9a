//! Export failures name the file or tensor at fault and leave nothing at `--out`.

use std::path::PathBuf;

use candle_core::Device;

fn fixture() -> PathBuf {
    let root = std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity"));
    root.join("sca_a_point_single")
}

#[test]
fn missing_config_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("enc.onnx");
    let err = sca_export::export_onnx(tmp.path(), &out).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn missing_tensor_names_the_key() {
    let src = fixture();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let key = "vision_encoder.layers.1.attn.rel_pos_h";
    assert!(tensors.remove(key).is_some());
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let out = tmp.path().join("enc.onnx");
    let msg = sca_export::export_onnx(tmp.path(), &out)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(key) && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn wrong_shape_names_the_key_and_shapes() {
    let src = fixture();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let key = "vision_encoder.neck.conv1.weight";
    let t = tensors[key].flatten_all().unwrap();
    tensors.insert(key.to_string(), t);
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let out = tmp.path().join("enc.onnx");
    let msg = sca_export::export_onnx(tmp.path(), &out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(key) && msg.contains("expected"), "{msg}");
    assert!(!out.exists());
}
