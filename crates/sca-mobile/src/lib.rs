//! SCA on phones: an object API over `sca-core` exported with UniFFI (proc-macro mode), so the
//! same definitions give Kotlin (Android), Swift (iOS) and Python bindings.
//!
//! ```no_run
//! use sca_mobile::{ScaModel, PromptInput, PointInput};
//! let model = ScaModel::load("models/sca-shapes".into())?;
//! let rgba = vec![128u8; 64 * 48 * 4];
//! let emb = model.embed_rgba(rgba, 64, 48)?;
//! let prompt = PromptInput { points: vec![PointInput { x: 30.0, y: 20.0, label: 1 }], box_xyxy: None, multimask: true };
//! let region = model.predict(emb, prompt, 20, 1)?;
//! println!("{}", region.caption);
//! # Ok::<(), sca_mobile::ScaError>(())
//! ```
//!
//! Errors are typed (`ScaError`, an exception in Kotlin/Swift/Python); no panic crosses the
//! FFI boundary for bad input. A caption in progress can be stopped with
//! [`ScaModel::cancel`] from another thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use sca_core::{Decode, ImageEmbedding, Point, Prompt, Region, Sca};

uniffi::setup_scaffolding!();

/// Everything the library can fail on, as a typed exception.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ScaError {
    /// The bundle or checkpoint could not be loaded (missing or corrupted file, bad config).
    #[error("load: {message}")]
    Load { message: String },
    /// The image buffer does not match its size, or is empty.
    #[error("image: {message}")]
    Image { message: String },
    /// A prompt outside the image, non-finite, or with an inverted box.
    #[error("prompt: {message}")]
    Prompt { message: String },
    /// The model failed while running.
    #[error("model: {message}")]
    Model { message: String },
}

fn model_err(e: sca_core::Error) -> ScaError {
    match e {
        sca_core::Error::Prompt(m) => ScaError::Prompt { message: m },
        sca_core::Error::Image { what, msg } => ScaError::Image {
            message: format!("{what}: {msg}"),
        },
        other => ScaError::Model {
            message: other.to_string(),
        },
    }
}

/// One click, in original-image pixels. `label`: 1 foreground, 0 background.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PointInput {
    pub x: f32,
    pub y: f32,
    pub label: i64,
}

/// Points and/or a box (x1, y1, x2, y2) selecting one region.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PromptInput {
    pub points: Vec<PointInput>,
    pub box_xyxy: Option<Vec<f32>>,
    /// Three candidate masks (true) or one.
    pub multimask: bool,
}

/// One binary mask as COCO RLE (`size` = [height, width], compressed `counts`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct MaskRle {
    pub height: u32,
    pub width: u32,
    pub counts: String,
    pub area: u64,
}

/// The answer for a prompt.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RegionResult {
    pub caption: String,
    pub tokens: Vec<u32>,
    /// Predicted IoU per mask, same order as `masks`.
    pub iou: Vec<f32>,
    pub masks: Vec<MaskRle>,
    /// Box (x1, y1, x2, y2) of the best mask.
    pub box_xyxy: Vec<f32>,
}

/// An encoded image: compute once, prompt many times.
#[derive(uniffi::Object)]
pub struct Embedding {
    inner: ImageEmbedding,
}

#[uniffi::export]
impl Embedding {
    /// (height, width) of the original image.
    pub fn original_size(&self) -> Vec<u32> {
        let (h, w) = self.inner.original_size;
        vec![h as u32, w as u32]
    }
}

/// Receives caption text as it is generated; return false to stop.
#[uniffi::export(with_foreign)]
pub trait CaptionListener: Send + Sync {
    fn on_piece(&self, piece: String) -> bool;
}

/// A loaded model (a bundle from `export bundle`, or a checkpoint directory).
#[derive(uniffi::Object)]
pub struct ScaModel {
    sca: Sca,
    cancel: AtomicBool,
}

fn to_prompt(p: &PromptInput) -> Result<Prompt, ScaError> {
    let box_ = match &p.box_xyxy {
        None => None,
        Some(b) if b.len() == 4 => Some([b[0], b[1], b[2], b[3]]),
        Some(b) => {
            return Err(ScaError::Prompt {
                message: format!("box_xyxy needs 4 numbers (x1, y1, x2, y2), got {}", b.len()),
            })
        }
    };
    Ok(Prompt {
        points: p
            .points
            .iter()
            .map(|q| Point {
                x: q.x,
                y: q.y,
                label: q.label,
            })
            .collect(),
        box_,
        multimask: p.multimask,
    })
}

fn to_result(r: Region) -> RegionResult {
    let masks = r
        .masks
        .iter()
        .map(|m| {
            let rle = sca_core::masks::CocoRle::encode(&m.data, m.height, m.width);
            MaskRle {
                height: m.height as u32,
                width: m.width as u32,
                area: rle.area(),
                counts: rle.counts,
            }
        })
        .collect();
    RegionResult {
        caption: r.caption,
        tokens: r.tokens,
        iou: r.iou,
        masks,
        box_xyxy: r.box_.to_vec(),
    }
}

fn decode(sca: &Sca, max_new_tokens: u32, beams: u32) -> Result<Decode, ScaError> {
    if beams == 0 {
        return Err(ScaError::Prompt {
            message: "beams must be at least 1".into(),
        });
    }
    let n = if max_new_tokens == 0 {
        sca.generation.default_max_new_tokens()
    } else {
        max_new_tokens as usize
    };
    Ok(Decode::from_beams(beams as usize, n))
}

#[uniffi::export]
impl ScaModel {
    /// Loads the bundle or checkpoint directory at `path` (a bundle's sha256 are checked).
    #[uniffi::constructor]
    pub fn load(path: String) -> Result<Arc<Self>, ScaError> {
        let sca = Sca::load(path.as_ref(), Device::Cpu).map_err(|e| ScaError::Load {
            message: e.to_string(),
        })?;
        Ok(Arc::new(Self {
            sca,
            cancel: AtomicBool::new(false),
        }))
    }

    /// Encodes an RGBA (or RGB) 8-bit buffer, row-major, `width` x `height` (alpha ignored).
    /// The image is resized to the encoder's input size first: a 12 MP photo is never encoded
    /// at full resolution.
    pub fn embed_rgba(
        &self,
        pixels: Vec<u8>,
        width: u32,
        height: u32,
    ) -> Result<Arc<Embedding>, ScaError> {
        let (w, h) = (width as usize, height as usize);
        if w == 0 || h == 0 {
            return Err(ScaError::Image {
                message: format!("empty image {width}x{height}"),
            });
        }
        let channels = match pixels.len() {
            n if n == w * h * 4 => 4,
            n if n == w * h * 3 => 3,
            n => {
                return Err(ScaError::Image {
                    message: format!(
                        "{n} bytes for a {width}x{height} image (expected {} RGBA or {} RGB)",
                        w * h * 4,
                        w * h * 3
                    ),
                })
            }
        };
        let rgb: Vec<u8> = if channels == 4 {
            pixels
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect()
        } else {
            pixels
        };
        let img = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| ScaError::Image {
            message: "buffer does not match the size".into(),
        })?;
        let inner = self.sca.embed(&img).map_err(model_err)?;
        Ok(Arc::new(Embedding { inner }))
    }

    /// Masks and caption for one prompt. `max_new_tokens` 0 = the model's default; `beams` 1
    /// = greedy.
    pub fn predict(
        &self,
        embedding: Arc<Embedding>,
        prompt: PromptInput,
        max_new_tokens: u32,
        beams: u32,
    ) -> Result<RegionResult, ScaError> {
        let p = to_prompt(&prompt)?;
        let d = decode(&self.sca, max_new_tokens, beams)?;
        let r = self
            .sca
            .predict(&embedding.inner, &p, &d)
            .map_err(model_err)?;
        Ok(to_result(r))
    }

    /// Like [`ScaModel::predict`] (greedy), handing each piece of caption text to `listener`
    /// as soon as it is decoded. Stops early when the listener returns false or
    /// [`ScaModel::cancel`] is called; the result then holds the caption so far.
    pub fn caption_stream(
        &self,
        embedding: Arc<Embedding>,
        prompt: PromptInput,
        max_new_tokens: u32,
        listener: Arc<dyn CaptionListener>,
    ) -> Result<RegionResult, ScaError> {
        let p = to_prompt(&prompt)?;
        let d = decode(&self.sca, max_new_tokens, 1)?;
        self.cancel.store(false, Ordering::SeqCst);
        let cancel = &self.cancel;
        let r = self
            .sca
            .caption_stream(&embedding.inner, &p, &d, &mut |piece| {
                !cancel.load(Ordering::SeqCst) && listener.on_piece(piece.to_string())
            })
            .map_err(model_err)?;
        Ok(to_result(r))
    }

    /// Stops a running [`ScaModel::caption_stream`] (from any thread).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}
