//! Our own JSON-lines format, accepted by `sca eval` and the trainer (`jsonl:FILE`).
//!
//! One line per image (blank lines are skipped):
//!
//! ```text
//! {"image": "imgs/cat.jpg",            // required; relative paths resolve against the JSONL's directory
//!  "id": 17,                           // optional image id (default: 0-based index of the line among images)
//!  "width": 640, "height": 480,        // optional (default: read from the image header)
//!  "regions": [
//!    {"box": [x, y, w, h],             // required, pixels, w and h >= 0
//!     "caption": "a cat on a mat",     // required unless "references" is given (then its first entry)
//!     "references": ["...", "..."],    // optional: all valid phrasings (default: [caption])
//!     "id": 3,                         // optional region id (default: index within the line)
//!     "mask": {"size": [h, w], "counts": "..."},  // optional COCO RLE (string or list of runs)
//!     "attributes": {"shape": ..., "colour": ..., "size": ..., "texture": ..., "position": ...}}
//!  ]}
//! ```
//!
//! Errors name the file, the line and (for malformed JSON) the column.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cocomask::Segmentation;
use crate::types::{check_index, probe_image_size, Attributes, Dataset, Region, Sample};
use crate::{Error, ImageSource, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    image: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    width: Option<usize>,
    #[serde(default)]
    height: Option<usize>,
    regions: Vec<RawRegion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    #[serde(rename = "box")]
    box_: [f64; 4],
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    references: Option<Vec<String>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    mask: Option<Segmentation>,
    #[serde(default)]
    attributes: Option<Attributes>,
}

#[derive(Debug, Clone)]
struct JsonlImage {
    line: usize,
    path: PathBuf,
    id: u64,
    size: Option<(usize, usize)>,
    regions: Vec<(Region, Option<Segmentation>)>,
}

/// A JSONL region-caption file (format in the [module docs](self)).
#[derive(Debug, Clone)]
pub struct JsonlDataset {
    path: PathBuf,
    images: Vec<JsonlImage>,
}

impl JsonlDataset {
    /// Reads and validates every line of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = crate::error::read_file(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Error::format(path, format!("line {line}"), "invalid UTF-8")
        })?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut images = Vec::new();
        for (ln0, line_text) in text.lines().enumerate() {
            let line = ln0 + 1;
            if line_text.trim().is_empty() {
                continue;
            }
            let raw: RawLine = serde_json::from_str(line_text).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                line,
                column: e.column(),
                msg: {
                    let m = e.to_string();
                    m.rfind(" at line ")
                        .map(|i| m[..i].to_string())
                        .unwrap_or(m)
                },
            })?;
            let at = |what: String| format!("line {line}: {what}");
            let size = match (raw.width, raw.height) {
                (Some(w), Some(h)) if w > 0 && h > 0 => Some((w, h)),
                (None, None) => None,
                _ => {
                    return Err(Error::format(
                        path,
                        at("width/height".into()),
                        "give both \"width\" and \"height\" (> 0) or neither",
                    ))
                }
            };
            if raw.image.is_empty() {
                return Err(Error::format(path, at("image".into()), "empty image path"));
            }
            let mut regions = Vec::with_capacity(raw.regions.len());
            for (j, r) in raw.regions.into_iter().enumerate() {
                let rat = || at(format!("regions[{j}]"));
                let [x, y, w, h] = r.box_;
                if w < 0.0 || h < 0.0 {
                    return Err(Error::format(
                        path,
                        rat(),
                        format!("box [{x}, {y}, {w}, {h}] has a negative width or height"),
                    ));
                }
                let references = match (&r.references, &r.caption) {
                    (Some(refs), _) if !refs.is_empty() => refs.clone(),
                    (Some(_), _) => {
                        return Err(Error::format(path, rat(), "\"references\" is empty"))
                    }
                    (None, Some(c)) => vec![c.clone()],
                    (None, None) => {
                        return Err(Error::format(
                            path,
                            rat(),
                            "region needs a \"caption\" or \"references\"",
                        ))
                    }
                };
                let caption = r.caption.unwrap_or_else(|| references[0].clone());
                regions.push((
                    Region {
                        id: r.id.unwrap_or(j as u64),
                        box_xywh: [x as f32, y as f32, w as f32, h as f32],
                        caption,
                        references,
                        mask: None,
                        attributes: r.attributes,
                    },
                    r.mask,
                ));
            }
            let p = PathBuf::from(&raw.image);
            let id = raw.id.unwrap_or(images.len() as u64);
            images.push(JsonlImage {
                line,
                path: if p.is_absolute() { p } else { base.join(p) },
                id,
                size,
                regions,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            images,
        })
    }
}

impl Dataset for JsonlDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.images.len())?;
        let img = &self.images[index];
        let (width, height) = match img.size {
            Some(s) => s,
            None => probe_image_size(&img.path)?,
        };
        let mut regions = Vec::with_capacity(img.regions.len());
        for (j, (r, seg)) in img.regions.iter().enumerate() {
            let mut r = r.clone();
            if let Some(seg) = seg {
                r.mask = Some(seg.to_rle(height, width).map_err(|msg| {
                    Error::format(
                        &self.path,
                        format!("line {}: regions[{j}].mask", img.line),
                        msg,
                    )
                })?);
            }
            regions.push(r);
        }
        Ok(Sample {
            image: ImageSource::Path(img.path.clone()),
            width,
            height,
            regions,
            image_id: img.id,
        })
    }

    fn describe(&self) -> String {
        format!(
            "JSONL {} ({} images, {} regions)",
            self.path.display(),
            self.images.len(),
            self.images.iter().map(|i| i.regions.len()).sum::<usize>()
        )
    }
}

/// Writes every sample of `dataset` as a JSONL file at `path`. In-memory images are saved as
/// `image_dir/{image_id}.png`; image paths are written relative to the JSONL's directory
/// when they lie inside it, absolute otherwise. `width`, `height`, `id`, `references`,
/// masks and attributes are always written, so [`JsonlDataset::open`] reads back the same
/// samples.
pub fn write_jsonl(path: &Path, dataset: &dyn Dataset, image_dir: &Path) -> Result<()> {
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let base_abs = std::path::absolute(&base).map_err(|e| Error::io(&base, e))?;
    std::fs::create_dir_all(image_dir).map_err(|e| Error::io(image_dir, e))?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    for i in 0..dataset.len() {
        let s = dataset.get(i)?;
        let img_path = match &s.image {
            ImageSource::Rgb(img) => {
                let p = image_dir.join(format!("{}.png", s.image_id));
                img.save_with_format(&p, image::ImageFormat::Png)
                    .map_err(|e| Error::Image {
                        path: p.clone(),
                        msg: e.to_string(),
                    })?;
                p
            }
            ImageSource::Path(p) => p.clone(),
        };
        let abs = std::path::absolute(&img_path).map_err(|e| Error::io(&img_path, e))?;
        let shown = abs
            .strip_prefix(&base_abs)
            .map(Path::to_path_buf)
            .unwrap_or(abs);
        let regions: Vec<Value> = s
            .regions
            .iter()
            .map(|r| {
                let mut o = json!({
                    "id": r.id,
                    "box": r.box_xywh,
                    "caption": r.caption,
                    "references": r.references,
                });
                if let Some(m) = &r.mask {
                    o["mask"] = json!(m);
                }
                if let Some(a) = &r.attributes {
                    o["attributes"] = json!(a);
                }
                o
            })
            .collect();
        let line = json!({
            "image": shown.to_string_lossy(),
            "id": s.image_id,
            "width": s.width,
            "height": s.height,
            "regions": regions,
        });
        serde_json::to_writer(&mut out, &line).map_err(|e| Error::json(path, &e))?;
        out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}
