//! SCA in the browser: the wasm-bindgen API that the npm package `sca-wasm` wraps (its Web
//! Worker holds one [`ScaSession`]). Prompt encoder, mask decoder, mixer and GPT-2 run here on
//! the bundle's (quantized) decoder; the image encoder runs here on the CPU or elsewhere
//! (WebGPU, a server) and hands its embedding to [`ScaSession::set_embedding`].
//!
//! ```js
//! import init, { ScaSession } from './sca_wasm.js';
//! await init();
//! const s = new ScaSession(manifestBytes, ['encoder.safetensors', 'decoder.gguf', 'tokenizer.json'], [enc, dec, tok]);
//! s.setImageBytes(pngBytes);
//! const { masks, iou } = s.captionBegin({ points: [{ x: 120, y: 80, label: 1 }] }, 20);
//! let piece; while ((piece = s.captionNext()) !== undefined) console.log(piece);
//! const { caption, tokens } = s.captionFinish();
//! ```
//!
//! Every method returns a JS `Error` with a message on bad input; none panics on it.

#[cfg(target_arch = "wasm32")]
mod gpu;
pub mod session;

use std::collections::HashMap;

use js_sys::{Array, Float32Array, Object, Reflect, Uint32Array, Uint8Array};
use sca_core::anything::{AnythingConfig, AnythingEvent};
use sca_core::{Decode, Point, Prompt, Region};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

#[cfg(target_arch = "wasm32")]
pub use gpu::GpuEncoder;
pub use session::Session;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

/// Panics are bugs, not input errors: say where in the console before the module traps.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error(&format!("sca-wasm panicked: {info}"))
    }));
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A prompt as JS sends it: `{points: [{x, y, label}], box: [x1, y1, x2, y2], multimask}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsPrompt {
    #[serde(default)]
    points: Vec<JsPoint>,
    #[serde(default, rename = "box")]
    box_: Option<[f32; 4]>,
    #[serde(default = "yes")]
    multimask: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsPoint {
    x: f32,
    y: f32,
    #[serde(default = "one")]
    label: i64,
}

fn yes() -> bool {
    true
}

fn one() -> i64 {
    1
}

fn parse_prompt(v: JsValue) -> Result<Prompt, JsError> {
    let p: JsPrompt = serde_wasm_bindgen::from_value(v)
        .map_err(|e| {
            let e = e.to_string();
            js_err(format!(
                "invalid prompt: {} (expected {{points: [{{x, y, label}}], box: [x1, y1, x2, y2], multimask}})",
                e.trim_start_matches("Error: ")
            ))
        })?;
    let mut points = Vec::with_capacity(p.points.len());
    for (i, q) in p.points.iter().enumerate() {
        if q.label != 0 && q.label != 1 {
            return Err(js_err(format!(
                "invalid prompt: point {i} has label {} (1 = object, 0 = background)",
                q.label
            )));
        }
        points.push(Point {
            x: q.x,
            y: q.y,
            label: q.label,
        });
    }
    if points.is_empty() && p.box_.is_none() {
        return Err(js_err("invalid prompt: give at least one point or a box"));
    }
    Ok(Prompt {
        points,
        box_: p.box_,
        multimask: p.multimask,
    })
}

fn set(obj: &Object, key: &str, v: impl Into<JsValue>) -> Result<(), JsError> {
    Reflect::set(obj, &JsValue::from_str(key), &v.into())
        .map(|_| ())
        .map_err(|_| js_err(format!("cannot set `{key}` on a result object")))
}

/// `{masks: [{width, height, data: Uint8Array}], iou: Float32Array, box: [x1, y1, x2, y2]}`.
fn region_masks(r: &Region) -> Result<Object, JsError> {
    let out = Object::new();
    let masks = Array::new();
    for m in &r.masks {
        let o = Object::new();
        set(&o, "width", m.width as u32)?;
        set(&o, "height", m.height as u32)?;
        set(&o, "data", Uint8Array::from(m.data.as_slice()))?;
        masks.push(&o);
    }
    set(&out, "masks", masks)?;
    set(&out, "iou", Float32Array::from(r.iou.as_slice()))?;
    set(&out, "box", Float32Array::from(r.box_.as_slice()))?;
    Ok(out)
}

fn with_caption(o: &Object, r: &Region) -> Result<(), JsError> {
    set(o, "caption", r.caption.as_str())?;
    set(o, "tokens", Uint32Array::from(r.tokens.as_slice()))
}

/// One model and one image; the worker of the npm package owns one.
#[wasm_bindgen]
pub struct ScaSession {
    inner: Session,
}

#[wasm_bindgen]
impl ScaSession {
    /// Loads a bundle: the bytes of `manifest.json` and of the files it lists (`names[i]` ->
    /// `files[i]`; `encoder.onnx` may be left out). Sizes and sha256 are checked; a mismatch
    /// names the file.
    #[wasm_bindgen(constructor)]
    pub fn new(
        manifest: &[u8],
        names: Vec<String>,
        files: Vec<Uint8Array>,
    ) -> Result<ScaSession, JsError> {
        if names.len() != files.len() {
            return Err(js_err(format!(
                "{} file names but {} files",
                names.len(),
                files.len()
            )));
        }
        let files: HashMap<String, Vec<u8>> = names
            .into_iter()
            .zip(files)
            .map(|(n, f)| (n, f.to_vec()))
            .collect();
        let inner = Session::from_bundle_bytes(manifest, files).map_err(js_err)?;
        Ok(Self { inner })
    }

    /// The model's config (the official `config.json`) as JSON text.
    #[wasm_bindgen(js_name = configJson)]
    pub fn config_json(&self) -> Result<String, JsError> {
        serde_json::to_string(self.inner.sca().config()).map_err(js_err)
    }

    /// Side S of the encoder's square input.
    #[wasm_bindgen(js_name = inputSize)]
    pub fn input_size(&self) -> usize {
        self.inner.sca().preprocessor.pad_size
    }

    /// Decodes an encoded image (PNG, JPEG, WebP: the native CLI's decoder, so both see the
    /// same pixels) and runs the CPU encoder. Returns `[height, width]`.
    #[wasm_bindgen(js_name = setImageBytes)]
    pub fn set_image_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u32>, JsError> {
        let img = self.inner.decode_image(bytes).map_err(js_err)?;
        self.inner.embed(&img).map_err(js_err)?;
        Ok(vec![img.height(), img.width()])
    }

    /// Runs the CPU encoder on RGBA pixels (ImageData); alpha is ignored.
    #[wasm_bindgen(js_name = setImageRgba)]
    pub fn set_image_rgba(&mut self, rgba: &[u8], width: u32, height: u32) -> Result<(), JsError> {
        self.inner
            .embed_rgba(rgba, width as usize, height as usize)
            .map_err(js_err)
    }

    /// Preprocessed pixels (3, S, S) of an encoded image, for an external encoder; returns
    /// `{pixels: Float32Array, width, height}`.
    #[wasm_bindgen(js_name = preprocessBytes)]
    pub fn preprocess_bytes(&self, bytes: &[u8]) -> Result<Object, JsError> {
        let img = self.inner.decode_image(bytes).map_err(js_err)?;
        let pre = self.inner.sca().preprocess(&img).map_err(js_err)?;
        let o = Object::new();
        set(
            &o,
            "pixels",
            Float32Array::from(pre.pixel_values.as_slice()),
        )?;
        set(&o, "width", img.width())?;
        set(&o, "height", img.height())?;
        Ok(o)
    }

    /// Preprocessed pixels (3, S, S) of RGBA pixels, for an external encoder.
    #[wasm_bindgen(js_name = preprocessRgba)]
    pub fn preprocess_rgba(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, JsError> {
        self.inner
            .preprocess_rgba(rgba, width as usize, height as usize)
            .map_err(js_err)
    }

    /// An embedding computed elsewhere: (C, g, g) values for an image of height x width.
    #[wasm_bindgen(js_name = setEmbedding)]
    pub fn set_embedding(
        &mut self,
        data: Vec<f32>,
        height: u32,
        width: u32,
    ) -> Result<(), JsError> {
        self.inner
            .set_embedding(data, height as usize, width as usize)
            .map_err(js_err)
    }

    /// A server's `/v1/embed` answer (safetensors, `sca_core::wire`); returns `[height, width]`.
    #[wasm_bindgen(js_name = setEmbeddingSafetensors)]
    pub fn set_embedding_safetensors(&mut self, bytes: &[u8]) -> Result<Vec<u32>, JsError> {
        let (h, w) = self.inner.set_embedding_wire(bytes).map_err(js_err)?;
        Ok(vec![h as u32, w as u32])
    }

    /// Masks and IoU for a prompt (no caption): `{masks, iou, box}`.
    pub fn segment(&mut self, prompt: JsValue) -> Result<Object, JsError> {
        let p = parse_prompt(prompt)?;
        let r = self.inner.segment(&p).map_err(js_err)?;
        region_masks(r)
    }

    /// Starts a greedy caption (cancelling a running one); returns the masks at once. Then
    /// call `captionNext` until it returns `undefined`, and `captionFinish`.
    #[wasm_bindgen(js_name = captionBegin)]
    pub fn caption_begin(
        &mut self,
        prompt: JsValue,
        max_new_tokens: usize,
    ) -> Result<Object, JsError> {
        let p = parse_prompt(prompt)?;
        let r = self
            .inner
            .begin_caption(&p, max_new_tokens)
            .map_err(js_err)?;
        region_masks(r)
    }

    /// Decodes one token: the text it completed (often "" while a word is held back), or
    /// `undefined` when the caption has ended.
    #[wasm_bindgen(js_name = captionNext)]
    pub fn caption_next(&mut self) -> Result<Option<String>, JsError> {
        self.inner.next_piece().map_err(js_err)
    }

    /// Ends the running caption (also to cancel it): `{caption, tokens, lastPiece, masks, iou,
    /// box}`; `lastPiece` is the text still held back (or `undefined`).
    #[wasm_bindgen(js_name = captionFinish)]
    pub fn caption_finish(&mut self) -> Result<Object, JsError> {
        let f = self.inner.finish_caption().map_err(js_err)?;
        let o = region_masks(&f.region)?;
        with_caption(&o, &f.region)?;
        set(
            &o,
            "lastPiece",
            f.last_piece.map_or(JsValue::UNDEFINED, JsValue::from),
        )?;
        Ok(o)
    }

    /// The whole caption in one call (beam search when `beams > 1`): `{caption, tokens, masks,
    /// iou, box}`.
    pub fn caption(
        &mut self,
        prompt: JsValue,
        beams: usize,
        max_new_tokens: usize,
    ) -> Result<Object, JsError> {
        if beams == 0 {
            return Err(js_err("beams must be at least 1"));
        }
        let p = parse_prompt(prompt)?;
        let r = self
            .inner
            .caption(&p, &Decode::from_beams(beams, max_new_tokens))
            .map_err(js_err)?;
        let o = region_masks(&r)?;
        with_caption(&o, &r)?;
        Ok(o)
    }

    /// Anything mode on the current image. `opts`: `{pointsPerSide, pointsPerBatch,
    /// predIouThresh, stabilityScoreThresh, boxNmsThresh, minMaskRegionArea, beams,
    /// maxNewTokens}` (official defaults; beams 3). `onEvent` gets `{type: 'progress',
    /// batchesDone, batchesTotal}`, `{type: 'mask', index, region}` and `{type: 'caption',
    /// index, caption}`; returning `false` cancels. Resolves to the regions (COCO records).
    pub fn anything(
        &mut self,
        opts: JsValue,
        on_event: &js_sys::Function,
    ) -> Result<JsValue, JsError> {
        let cfg = anything_config(opts)?;
        let ser = serde_wasm_bindgen::Serializer::json_compatible();
        let mut cb_err: Option<JsError> = None;
        let mut call = |ev: AnythingEvent| -> bool {
            let o = Object::new();
            let filled = (|| -> Result<(), JsError> {
                match ev {
                    AnythingEvent::Progress {
                        batches_done,
                        batches_total,
                        candidates,
                    } => {
                        set(&o, "type", "progress")?;
                        set(&o, "batchesDone", batches_done as u32)?;
                        set(&o, "batchesTotal", batches_total as u32)?;
                        set(&o, "candidates", candidates as u32)?;
                    }
                    AnythingEvent::Mask { index, region } => {
                        set(&o, "type", "mask")?;
                        set(&o, "index", index as u32)?;
                        let r = serde::Serialize::serialize(region, &ser).map_err(js_err)?;
                        set(&o, "region", r)?;
                    }
                    AnythingEvent::Caption { index, caption } => {
                        set(&o, "type", "caption")?;
                        set(&o, "index", index as u32)?;
                        set(&o, "caption", caption)?;
                    }
                }
                Ok(())
            })();
            if let Err(e) = filled {
                cb_err = Some(e);
                return false;
            }
            match on_event.call1(&JsValue::NULL, &o) {
                Ok(v) => v != JsValue::FALSE,
                Err(e) => {
                    cb_err = Some(js_err(format!(
                        "anything: the onEvent callback threw: {}",
                        e.as_string().unwrap_or_else(|| format!("{e:?}"))
                    )));
                    false
                }
            }
        };
        let out = self.inner.anything(&cfg, &mut call).map_err(js_err)?;
        if let Some(e) = cb_err {
            return Err(e);
        }
        let o = Object::new();
        let regions = serde::Serialize::serialize(&out.regions, &ser).map_err(js_err)?;
        set(&o, "regions", regions)?;
        set(&o, "cancelled", out.cancelled)?;
        set(&o, "candidates", out.candidates as u32)?;
        Ok(o.into())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsAnything {
    points_per_side: Option<usize>,
    points_per_batch: Option<usize>,
    pred_iou_thresh: Option<f32>,
    stability_score_thresh: Option<f32>,
    stability_score_offset: Option<f32>,
    box_nms_thresh: Option<f32>,
    min_mask_region_area: Option<u64>,
    beams: Option<usize>,
    max_new_tokens: Option<usize>,
}

fn anything_config(opts: JsValue) -> Result<AnythingConfig, JsError> {
    let o: JsAnything = if opts.is_undefined() || opts.is_null() {
        JsAnything::default()
    } else {
        serde_wasm_bindgen::from_value(opts)
            .map_err(|e| js_err(format!("anything options: {e}")))?
    };
    let d = AnythingConfig::default();
    let beams = o.beams.unwrap_or(3);
    if beams == 0 {
        return Err(js_err("anything options: beams must be at least 1"));
    }
    Ok(AnythingConfig {
        points_per_side: o.points_per_side.unwrap_or(d.points_per_side),
        points_per_batch: o.points_per_batch.unwrap_or(d.points_per_batch),
        pred_iou_thresh: o.pred_iou_thresh.unwrap_or(d.pred_iou_thresh),
        stability_score_thresh: o.stability_score_thresh.unwrap_or(d.stability_score_thresh),
        stability_score_offset: o.stability_score_offset.unwrap_or(d.stability_score_offset),
        box_nms_thresh: o.box_nms_thresh.unwrap_or(d.box_nms_thresh),
        min_mask_region_area: o.min_mask_region_area.unwrap_or(d.min_mask_region_area),
        decode: Decode::from_beams(beams, o.max_new_tokens.unwrap_or(d.decode.max_new_tokens())),
    })
}
