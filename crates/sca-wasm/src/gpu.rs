//! The WebGPU image encoder (`sca-webgpu`) for JS: created from the bundle's config and
//! `encoder.safetensors`, it turns preprocessed pixels into the embedding that
//! `ScaSession.setEmbedding` takes.

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{Device, Tensor};
use js_sys::Promise;
use sca_core::config::ScaConfig;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::js_err;

#[wasm_bindgen]
pub struct GpuEncoder {
    inner: Rc<sca_webgpu::GpuEncoder>,
}

#[wasm_bindgen]
impl GpuEncoder {
    /// Requests a WebGPU adapter and device and uploads the encoder: `config_json` is
    /// `ScaSession.configJson()`, `encoder` the bytes of the bundle's `encoder.safetensors`.
    /// Rejects when the browser has no adapter.
    pub async fn create(config_json: String, encoder: Vec<u8>) -> Result<GpuEncoder, JsError> {
        let cfg: ScaConfig =
            serde_json::from_str(&config_json).map_err(|e| js_err(format!("model config: {e}")))?;
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&encoder, &Device::Cpu)
                .map_err(|e| js_err(format!("encoder.safetensors: {e}")))?;
        let inner = sca_webgpu::GpuEncoder::new(&cfg.vision_config, &tensors)
            .await
            .map_err(js_err)?;
        Ok(Self {
            inner: Rc::new(inner),
        })
    }

    /// The adapter and the weight precision in words, e.g. "webgpu (SwiftShader, fallback), f32"
    /// (f16 weights where the adapter has `shader-f16`).
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> String {
        format!(
            "{}, {}",
            self.inner.adapter().label(),
            self.inner.precision()
        )
    }

    /// The embedding (C, g, g) of preprocessed pixels (3, S, S): a Promise of a Float32Array.
    pub fn embed(&self, pixels: Vec<f32>) -> Promise {
        let enc = Rc::clone(&self.inner);
        future_to_promise(async move {
            let out = enc
                .embed(&pixels)
                .await
                .map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
            Ok(js_sys::Float32Array::from(out.as_slice()).into())
        })
    }
}
