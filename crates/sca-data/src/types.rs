//! The data model shared by every reader: [`Sample`] (one image and its regions), [`Region`]
//! and the [`Dataset`] trait.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageDecoder, RgbImage};
use sca_core::masks::CocoRle;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Ground-truth attributes of a synthetic object (the words its captions use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// One of [`crate::synthetic::SHAPES`].
    pub shape: String,
    /// One of [`crate::synthetic::COLOURS`].
    pub colour: String,
    /// One of [`crate::synthetic::SIZES`].
    pub size: String,
    /// One of [`crate::synthetic::TEXTURES`] (`"solid"` has no word in the captions).
    pub texture: String,
    /// One of [`crate::synthetic::POSITIONS`] (from the object's centre, image in thirds).
    pub position: String,
}

/// One region of an image: a box, its caption(s) and optionally a mask and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Region id (VG `region_id`, COCO annotation id, RefCOCO `ref_id`, ...).
    pub id: u64,
    /// `[x, y, width, height]` in original-image pixels, as stored by the source (not
    /// clipped; may extend past the image).
    pub box_xywh: [f32; 4],
    /// The caption used for evaluation: the first phrase of the source (VG phrase, COCO
    /// category name, first RefCOCO sentence) or, for synthetic data, one of `references`
    /// drawn with the sample's RNG.
    pub caption: String,
    /// Every valid phrasing of the region (for real data, the ground-truth phrase list; for
    /// synthetic data all phrasings the generator can produce). Training draws one of these;
    /// evaluation scores against all of them. Never empty for the readers of this crate.
    pub references: Vec<String>,
    /// Visible-pixel mask at the image size, if the source has one.
    pub mask: Option<CocoRle>,
    /// Synthetic ground-truth attributes.
    pub attributes: Option<Attributes>,
}

impl Region {
    /// The box as `[x1, y1, x2, y2]` (unclipped).
    pub fn box_xyxy(&self) -> [f32; 4] {
        let [x, y, w, h] = self.box_xywh;
        [x, y, x + w, y + h]
    }

    /// The box as the official evaluation prompts with it: `[x1, y1, x2, y2]` clamped to
    /// `[0, width] x [0, height]` (possibly empty; evaluation keeps every region).
    pub fn prompt_xyxy(&self, width: usize, height: usize) -> [f32; 4] {
        clamp_box_xyxy(
            self.box_xyxy().map(|v| v as f64),
            width as f64,
            height as f64,
        )
        .map(|v| v as f32)
    }

    /// [`Region::prompt_xyxy`], or `None` when that box is empty (width or height
    /// `<= 1e-5`): the regions training keeps.
    pub fn clamped_xyxy(&self, width: usize, height: usize) -> Option<[f32; 4]> {
        let b = clamp_box_xyxy(
            self.box_xyxy().map(|v| v as f64),
            width as f64,
            height as f64,
        );
        box_nonempty(b).then(|| b.map(|v| v as f32))
    }
}

/// Clamps `[x1, y1, x2, y2]` to `[0, w] x [0, h]` (`clamp(min=0)` then `minimum(size)`, as
/// the official `normalize_and_filter_transformed_boxes`).
pub fn clamp_box_xyxy(b: [f64; 4], w: f64, h: f64) -> [f64; 4] {
    let lim = [w, h, w, h];
    let mut out = [0.0; 4];
    for i in 0..4 {
        out[i] = b[i].max(0.0).min(lim[i]);
    }
    out
}

/// detectron2's `Boxes.nonempty(threshold=1e-5)`: width and height both above `1e-5`.
pub fn box_nonempty(b: [f64; 4]) -> bool {
    b[2] - b[0] > 1e-5 && b[3] - b[1] > 1e-5
}

/// Where a sample's pixels come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// An image file (PNG, JPEG or WebP), decoded with `sca_core::image::load_image`
    /// (EXIF orientation applied, converted to RGB as Pillow does).
    Path(PathBuf),
    /// Pixels already in memory (synthetic scenes).
    Rgb(Arc<RgbImage>),
}

impl ImageSource {
    /// Decodes (or clones) the RGB image.
    pub fn load(&self) -> Result<RgbImage> {
        match self {
            ImageSource::Path(p) => sca_core::image::load_image(p).map_err(|e| Error::Image {
                path: p.clone(),
                msg: e.to_string(),
            }),
            ImageSource::Rgb(img) => Ok((**img).clone()),
        }
    }

    /// The file path, if the image is a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageSource::Path(p) => Some(p),
            ImageSource::Rgb(_) => None,
        }
    }
}

/// One image and its regions.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The pixels.
    pub image: ImageSource,
    /// Image width in pixels (after EXIF orientation).
    pub width: usize,
    /// Image height in pixels (after EXIF orientation).
    pub height: usize,
    /// The regions in source order.
    pub regions: Vec<Region>,
    /// Image id (VG / COCO image id, JSONL `id` or line index, synthetic index).
    pub image_id: u64,
}

impl Sample {
    /// Loads the image and checks that its size is the declared `width` x `height`.
    pub fn load_image(&self) -> Result<RgbImage> {
        let img = self.image.load()?;
        if img.width() as usize != self.width || img.height() as usize != self.height {
            return Err(Error::Image {
                path: self
                    .image
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(format!("<image {}>", self.image_id))),
                msg: format!(
                    "decoded size {}x{} differs from the annotated {}x{}",
                    img.width(),
                    img.height(),
                    self.width,
                    self.height
                ),
            });
        }
        Ok(img)
    }
}

/// A random-access collection of samples. `get(i)` is deterministic: the same index always
/// gives the same sample. Implementations are cheap to query concurrently (`Send + Sync`).
pub trait Dataset: Send + Sync {
    /// Number of samples (images).
    fn len(&self) -> usize;

    /// The `index`-th sample; [`Error::OutOfRange`] past the end.
    fn get(&self, index: usize) -> Result<Sample>;

    /// `len() == 0`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short human-readable description (format, source, size) for logs.
    fn describe(&self) -> String;
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        (**self).get(index)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        (**self).get(index)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// The first `limit` samples of another dataset (spec option `limit=N`).
#[derive(Debug, Clone)]
pub struct Take<D> {
    inner: D,
    limit: usize,
}

impl<D: Dataset> Take<D> {
    /// Wraps `inner`, exposing at most `limit` samples.
    pub fn new(inner: D, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<D: Dataset> Dataset for Take<D> {
    fn len(&self) -> usize {
        self.inner.len().min(self.limit)
    }
    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            return Err(Error::OutOfRange {
                index,
                len: self.len(),
            });
        }
        self.inner.get(index)
    }
    fn describe(&self) -> String {
        format!("{} (first {})", self.inner.describe(), self.len())
    }
}

/// Samples held in memory (tests, small hand-made sets).
#[derive(Debug, Clone, Default)]
pub struct VecDataset {
    /// The samples, in order.
    pub samples: Vec<Sample>,
}

impl Dataset for VecDataset {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.samples.get(index).cloned().ok_or(Error::OutOfRange {
            index,
            len: self.samples.len(),
        })
    }
    fn describe(&self) -> String {
        format!("in-memory ({} images)", self.samples.len())
    }
}

pub(crate) fn check_index(index: usize, len: usize) -> Result<()> {
    if index >= len {
        Err(Error::OutOfRange { index, len })
    } else {
        Ok(())
    }
}

/// Width and height of an image file after EXIF orientation (as
/// `sca_core::image::load_image` would decode it), read from the header only.
pub fn probe_image_size(path: &Path) -> Result<(usize, usize)> {
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(err(
            "unrecognised format (expected PNG, JPEG or WebP)".into()
        ));
    }
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    use image::metadata::Orientation::*;
    let swap = matches!(
        orientation,
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
    );
    if w == 0 || h == 0 {
        return Err(err(format!("zero-size image ({w}x{h})")));
    }
    Ok(if swap {
        (h as usize, w as usize)
    } else {
        (w as usize, h as usize)
    })
}
