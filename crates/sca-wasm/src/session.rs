//! The browser session in plain Rust (no JS types): a loaded bundle, the current image
//! embedding and the caption being decoded. `lib.rs` wraps it for JS; native tests drive it
//! directly and compare with `sca_core::Sca`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sca_core::anything::{anything, AnythingConfig, AnythingEvent, AnythingOutput};
use sca_core::bundle::Bundle;
use sca_core::pipeline::CaptionSteps;
use sca_core::{Decode, Error, ImageEmbedding, Prompt, Region, Result, Sca, Segmented};

/// A caption in progress: its region (masks known, caption not yet) and the decoder state.
struct Job {
    region: Region,
    steps: CaptionSteps,
}

/// One model, one image at a time, one caption at a time.
pub struct Session {
    sca: Sca,
    embedding: Option<ImageEmbedding>,
    job: Option<Job>,
    /// The last `segment` (a click shows its masks, then captions the same prompt): its
    /// caption starts from the mask decoder's outputs instead of decoding them again.
    last_segment: Option<(Prompt, Segmented)>,
}

/// The result of a finished (or cancelled) caption.
pub struct Finished {
    pub region: Region,
    /// Text still held back by the streaming detokenizer when decoding ended.
    pub last_piece: Option<String>,
}

impl Session {
    /// Loads a bundle from its files' bytes (sha256 and sizes checked against the manifest).
    pub fn from_bundle_bytes(manifest: &[u8], files: HashMap<String, Vec<u8>>) -> Result<Self> {
        let sca = Bundle::from_bytes(manifest, files)?.into_sca(Device::Cpu)?;
        Ok(Self::new(sca))
    }

    pub fn new(sca: Sca) -> Self {
        Self {
            sca,
            embedding: None,
            job: None,
            last_segment: None,
        }
    }

    pub fn sca(&self) -> &Sca {
        &self.sca
    }

    /// (H, W) of the current image, if any.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        self.embedding.as_ref().map(|e| e.original_size)
    }

    /// Preprocessed pixels (3, S, S) of an RGBA image, for an encoder outside this module
    /// (WebGPU); `set_embedding` then takes its output.
    pub fn preprocess_rgba(&self, rgba: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
        let img = rgb_from_rgba(rgba, width, height)?;
        Ok(self.sca.preprocess(&img)?.pixel_values)
    }

    /// Decodes an encoded image (PNG, JPEG, WebP) with the same decoder as the native CLI.
    pub fn decode_image(&self, bytes: &[u8]) -> Result<image::RgbImage> {
        sca_core::image::decode_image(bytes, "bytes")
    }

    /// Runs the CPU encoder on an image and keeps its embedding.
    pub fn embed(&mut self, img: &image::RgbImage) -> Result<()> {
        self.job = None;
        self.last_segment = None;
        self.embedding = Some(self.sca.embed(img)?);
        Ok(())
    }

    pub fn embed_rgba(&mut self, rgba: &[u8], width: usize, height: usize) -> Result<()> {
        let img = rgb_from_rgba(rgba, width, height)?;
        self.embed(&img)
    }

    /// Takes an embedding computed elsewhere (WebGPU encoder, a server's `/v1/embed`):
    /// `data` is (C, g, g) row-major for an image of `height` x `width` pixels.
    pub fn set_embedding(&mut self, data: Vec<f32>, height: usize, width: usize) -> Result<()> {
        let cfg = &self.sca.config().vision_config;
        let (c, g) = (cfg.output_channels, cfg.grid_size());
        if data.len() != c * g * g {
            return Err(Error::Image {
                what: "embedding".into(),
                msg: format!(
                    "{} values, the model needs {c}x{g}x{g} = {}",
                    data.len(),
                    c * g * g
                ),
            });
        }
        if height == 0 || width == 0 {
            return Err(Error::Image {
                what: "embedding".into(),
                msg: format!("image size {width}x{height}: both sides must be at least 1 pixel"),
            });
        }
        let resized_size =
            sca_core::image::resized_size(height, width, self.sca.preprocessor.longest_edge);
        let embedding = Tensor::from_vec(data, (1, c, g, g), self.sca.model.device())?;
        self.job = None;
        self.last_segment = None;
        self.embedding = Some(ImageEmbedding {
            embedding,
            original_size: (height, width),
            resized_size,
        });
        Ok(())
    }

    /// Takes a server's `/v1/embed` answer (`sca_core::wire`); returns the image's (H, W).
    pub fn set_embedding_wire(&mut self, bytes: &[u8]) -> Result<(usize, usize)> {
        let bad = |msg: String| Error::Image {
            what: "server embedding".into(),
            msg,
        };
        let e = sca_core::wire::decode(bytes).map_err(bad)?;
        let (h, w) = e
            .original_size()
            .ok_or_else(|| bad("no original_size in its metadata".into()))?;
        self.set_embedding(e.data, h, w)?;
        Ok((h, w))
    }

    fn embedding(&self) -> Result<&ImageEmbedding> {
        self.embedding.as_ref().ok_or_else(|| Error::Image {
            what: "(none)".into(),
            msg: "no image is set: call setImage first".into(),
        })
    }

    /// Masks and IoU only (the mixer and LM do not run).
    pub fn segment(&mut self, prompt: &Prompt) -> Result<&Region> {
        let seg = self.sca.segment_one(self.embedding()?, prompt)?;
        Ok(&self.last_segment.insert((prompt.clone(), seg)).1.region)
    }

    /// Starts a caption (cancelling any running one) and returns its masks and IoU at once.
    /// After `segment` of the same prompt the mask decoder does not run again.
    pub fn begin_caption(&mut self, prompt: &Prompt, max_new_tokens: usize) -> Result<&Region> {
        self.job = None;
        let (region, steps) = match &self.last_segment {
            Some((p, seg)) if p == prompt => seg.begin_caption(&self.sca, max_new_tokens)?,
            _ => self
                .sca
                .begin_caption(self.embedding()?, prompt, max_new_tokens)?,
        };
        Ok(&self.job.insert(Job { region, steps }).region)
    }

    /// One more token of the running caption: the text it completed (maybe empty), or `None`
    /// when the caption has ended (then call `finish_caption`).
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        let job = self
            .job
            .as_mut()
            .ok_or_else(|| Error::Prompt("no caption is running".into()))?;
        job.steps.next(&self.sca)
    }

    /// Ends the running caption (finished or not) and returns its region with the caption.
    pub fn finish_caption(&mut self) -> Result<Finished> {
        let Job { mut region, steps } = self
            .job
            .take()
            .ok_or_else(|| Error::Prompt("no caption is running".into()))?;
        let last_piece = steps.finish(&self.sca, &mut region)?;
        Ok(Finished { region, last_piece })
    }

    /// The whole caption at once (beam search, or greedy without streaming).
    pub fn caption(&mut self, prompt: &Prompt, decode: &Decode) -> Result<Region> {
        self.job = None;
        let emb = self.embedding()?;
        self.sca.predict(emb, prompt, decode)
    }

    /// Anything mode on the current image (see `sca_core::anything`).
    pub fn anything(
        &mut self,
        cfg: &AnythingConfig,
        on_event: &mut dyn FnMut(AnythingEvent) -> bool,
    ) -> Result<AnythingOutput> {
        self.job = None;
        let emb = self.embedding()?;
        anything(&self.sca, emb, cfg, on_event)
    }
}

/// Drops the alpha channel (the model sees RGB, as the native loader gives it).
pub fn rgb_from_rgba(rgba: &[u8], width: usize, height: usize) -> Result<image::RgbImage> {
    if width == 0 || height == 0 || rgba.len() != width * height * 4 {
        return Err(Error::Image {
            what: "RGBA data".into(),
            msg: format!(
                "{} bytes; {width}x{height} pixels need {}",
                rgba.len(),
                width * height * 4
            ),
        });
    }
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    image::RgbImage::from_raw(width as u32, height as u32, rgb).ok_or_else(|| Error::Image {
        what: "RGBA data".into(),
        msg: "inconsistent size".into(),
    })
}
