//! Visual Genome region descriptions (v1.2) with the DenseCap image splits.
//!
//! Directory layout read by [`VgDataset::open`] (the `vg:DIR` spec):
//!
//! ```text
//! DIR/region_descriptions.json  [{"id": 1, "regions": [{"region_id": 1382, "image_id": 1,
//!                                 "phrase": "the clock is green", "x": 421, "y": 57,
//!                                 "width": 82, "height": 139}, ...]}, ...]
//! DIR/densecap_splits.json      {"train": [ids], "val": [ids], "test": [ids]}
//!                               (needed unless the split is `all`)
//! DIR/image_data.json           optional: [{"image_id": 1, "width": 800, "height": 600, ...}]
//! DIR/VG_100K/, DIR/VG_100K_2/, DIR/images/ or DIR itself: {image_id}.jpg (or .png/.jpeg)
//! ```
//!
//! Boxes are VG's `x, y, width, height` in pixels, kept as stored (training clamps them).
//! Each region has one phrase in VG v1.2 (`phrase`); a `phrases` list is also accepted (the
//! first is the evaluation caption, training draws among all). Samples follow the order of
//! the image ids in the split list (the official loader's order); with split `all`, the order
//! of `region_descriptions.json`. Without `image_data.json`, image sizes are read from the
//! image headers (EXIF orientation applied).
//!
//! Non-standard optional keys this crate writes for its synthetic data (ignored by other
//! VG tools): per region `references` (all phrasings), `mask` (COCO RLE) and `attributes`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sca_core::masks::CocoRle;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::types::{check_index, probe_image_size, Attributes, Dataset, Region, Sample};
use crate::{Error, ImageSource, Result};

/// A DenseCap split of VG (or all images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// DenseCap `train` (77,398 images).
    Train,
    /// DenseCap `val` (5,000 images; unused by SCA).
    Val,
    /// DenseCap `test` (5,000 images; the evaluation split).
    Test,
    /// Every image of the region file, ignoring `densecap_splits.json`.
    All,
}

impl Split {
    /// The key in `densecap_splits.json` (`None` for [`Split::All`]).
    pub fn key(self) -> Option<&'static str> {
        match self {
            Split::Train => Some("train"),
            Split::Val => Some("val"),
            Split::Test => Some("test"),
            Split::All => None,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            _ => Err(format!(
                "unknown split {s:?} (expected train, val, test or all)"
            )),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key().unwrap_or("all"))
    }
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(alias = "image_id")]
    id: u64,
    regions: Vec<RawRegion>,
}

#[derive(Deserialize)]
struct RawRegion {
    #[serde(alias = "id")]
    region_id: u64,
    #[serde(default)]
    image_id: Option<u64>,
    #[serde(default)]
    phrase: Option<String>,
    #[serde(default)]
    phrases: Option<Vec<String>>,
    #[serde(default)]
    references: Option<Vec<String>>,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    #[serde(default)]
    mask: Option<CocoRle>,
    #[serde(default)]
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct RawImageData {
    #[serde(alias = "id")]
    image_id: u64,
    width: usize,
    height: usize,
}

/// A region as stored: `references: None` means `[caption]` (VG's single phrase), which
/// keeps one copy of each phrase in memory.
#[derive(Debug, Clone)]
struct VgRegion {
    id: u64,
    box_xywh: [f32; 4],
    caption: String,
    references: Option<Vec<String>>,
    mask: Option<CocoRle>,
    attributes: Option<Attributes>,
}

impl VgRegion {
    fn to_region(&self) -> Region {
        Region {
            id: self.id,
            box_xywh: self.box_xywh,
            caption: self.caption.clone(),
            references: self
                .references
                .clone()
                .unwrap_or_else(|| vec![self.caption.clone()]),
            mask: self.mask.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct VgImage {
    id: u64,
    regions: Vec<VgRegion>,
}

/// Visual Genome region descriptions restricted to one DenseCap split.
#[derive(Debug, Clone)]
pub struct VgDataset {
    regions_path: PathBuf,
    images: Vec<VgImage>,
    image_dirs: Vec<PathBuf>,
    sizes: Option<HashMap<u64, (usize, usize)>>,
    split: Split,
}

/// The directories searched for `{image_id}.jpg|png|jpeg`, in order.
pub fn default_image_dirs(dir: &Path) -> Vec<PathBuf> {
    vec![
        dir.join("VG_100K"),
        dir.join("VG_100K_2"),
        dir.join("images"),
        dir.to_path_buf(),
    ]
}

impl VgDataset {
    /// Opens `dir` laid out as described in the [module docs](self).
    pub fn open(dir: &Path, split: Split) -> Result<Self> {
        let splits = dir.join("densecap_splits.json");
        let image_data = dir.join("image_data.json");
        Self::open_files(
            &dir.join("region_descriptions.json"),
            (split != Split::All).then_some(splits.as_path()),
            image_data.exists().then_some(image_data.as_path()),
            default_image_dirs(dir),
            split,
        )
    }

    /// Opens explicit files: the region descriptions, the DenseCap splits (required unless
    /// `split` is [`Split::All`]), an optional `image_data.json` with image sizes, and the
    /// directories searched for `{image_id}.jpg|png|jpeg`.
    pub fn open_files(
        regions_path: &Path,
        splits_path: Option<&Path>,
        image_data_path: Option<&Path>,
        image_dirs: Vec<PathBuf>,
        split: Split,
    ) -> Result<Self> {
        let raw: Vec<RawImage> =
            crate::error::parse_json(regions_path, &crate::error::read_file(regions_path)?)?;
        let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(raw.len());
        let mut all = Vec::with_capacity(raw.len());
        for (i, img) in raw.into_iter().enumerate() {
            if let Some(prev) = by_id.insert(img.id, i) {
                return Err(Error::format(
                    regions_path,
                    format!("[{i}]"),
                    format!("image id {} already listed at [{prev}]", img.id),
                ));
            }
            let mut regions = Vec::with_capacity(img.regions.len());
            for (j, r) in img.regions.into_iter().enumerate() {
                let rid = r.region_id;
                let at = || format!("[{i}].regions[{j}] (region_id {rid})");
                if let Some(iid) = r.image_id {
                    if iid != img.id {
                        return Err(Error::format(
                            regions_path,
                            at(),
                            format!(
                                "image_id {iid} differs from the enclosing image id {}",
                                img.id
                            ),
                        ));
                    }
                }
                // caption: `phrase`, else the first of `phrases`; references: `references`,
                // else `phrases`, else [caption] (stored as None).
                let phrases = r.phrases.filter(|p| !p.is_empty());
                let caption = match (r.phrase, &phrases) {
                    (Some(p), _) => p,
                    (None, Some(p)) => p[0].clone(),
                    (None, None) => {
                        return Err(Error::format(
                            regions_path,
                            at(),
                            "region has no \"phrase\" (or non-empty \"phrases\")",
                        ))
                    }
                };
                let references = match r.references {
                    Some(refs) if !refs.is_empty() => Some(refs),
                    Some(_) => {
                        return Err(Error::format(regions_path, at(), "\"references\" is empty"))
                    }
                    None => phrases,
                };
                let references = references.filter(|r| r.len() != 1 || r[0] != caption);
                if let Some(m) = &r.mask {
                    crate::cocomask::check_rle(m).map_err(|msg| {
                        Error::format(regions_path, format!("{}.mask", at()), msg)
                    })?;
                }
                regions.push(VgRegion {
                    id: r.region_id,
                    box_xywh: [r.x as f32, r.y as f32, r.width as f32, r.height as f32],
                    caption,
                    references,
                    mask: r.mask,
                    attributes: r.attributes,
                });
            }
            all.push(Some(VgImage {
                id: img.id,
                regions,
            }));
        }

        let images = match (split.key(), splits_path) {
            (None, _) => all.into_iter().flatten().collect(),
            (Some(_), None) => {
                return Err(Error::Config(format!(
                    "VG split {split} needs densecap_splits.json"
                )))
            }
            (Some(key), Some(sp)) => {
                let splits: HashMap<String, Vec<u64>> =
                    crate::error::parse_json(sp, &crate::error::read_file(sp)?)?;
                let ids = splits.get(key).ok_or_else(|| {
                    Error::format(sp, key, format!("no \"{key}\" list of image ids"))
                })?;
                let mut out = Vec::with_capacity(ids.len());
                for (k, id) in ids.iter().enumerate() {
                    let idx = by_id.get(id).copied().ok_or_else(|| {
                        Error::format(
                            sp,
                            format!("{key}[{k}]"),
                            format!("image id {id} has no entry in {}", regions_path.display()),
                        )
                    })?;
                    let img = all[idx].take().ok_or_else(|| {
                        Error::format(
                            sp,
                            format!("{key}[{k}]"),
                            format!("image id {id} is listed twice"),
                        )
                    })?;
                    out.push(img);
                }
                out
            }
        };

        let sizes = match image_data_path {
            None => None,
            Some(p) => {
                let data: Vec<RawImageData> =
                    crate::error::parse_json(p, &crate::error::read_file(p)?)?;
                Some(
                    data.into_iter()
                        .map(|d| (d.image_id, (d.width, d.height)))
                        .collect(),
                )
            }
        };

        Ok(Self {
            regions_path: regions_path.to_path_buf(),
            images,
            image_dirs,
            sizes,
            split,
        })
    }

    /// Image ids in sample order.
    pub fn image_ids(&self) -> Vec<u64> {
        self.images.iter().map(|i| i.id).collect()
    }

    /// Total number of regions over all samples.
    pub fn num_regions(&self) -> usize {
        self.images.iter().map(|i| i.regions.len()).sum()
    }

    fn find_image(&self, id: u64) -> Result<PathBuf> {
        for d in &self.image_dirs {
            for ext in ["jpg", "png", "jpeg"] {
                let p = d.join(format!("{id}.{ext}"));
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(Error::Image {
            path: self
                .image_dirs
                .first()
                .map(|d| d.join(format!("{id}.jpg")))
                .unwrap_or_default(),
            msg: format!(
                "image {id} not found as {id}.jpg/.png/.jpeg in any of {:?}",
                self.image_dirs
            ),
        })
    }
}

impl Dataset for VgDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.images.len())?;
        let img = &self.images[index];
        let path = self.find_image(img.id)?;
        let (width, height) = match self.sizes.as_ref().and_then(|s| s.get(&img.id)) {
            Some(&s) => s,
            None => probe_image_size(&path)?,
        };
        for r in &img.regions {
            if let Some(m) = &r.mask {
                if m.size != [height, width] {
                    return Err(Error::format(
                        &self.regions_path,
                        format!("image {} region {}", img.id, r.id),
                        format!(
                            "mask size {:?} differs from the image size [{height}, {width}]",
                            m.size
                        ),
                    ));
                }
            }
        }
        Ok(Sample {
            image: ImageSource::Path(path),
            width,
            height,
            regions: img.regions.iter().map(VgRegion::to_region).collect(),
            image_id: img.id,
        })
    }

    fn describe(&self) -> String {
        format!(
            "VG {} ({} split: {} images, {} regions)",
            self.regions_path.display(),
            self.split,
            self.len(),
            self.num_regions()
        )
    }
}

/// A JSON number that stays an integer when the value is integral (VG stores ints).
fn num(v: f32) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Writes datasets as a VG directory that [`VgDataset::open`] reads back: images as
/// `DIR/images/{image_id}.png` (in-memory images) or copies of the source files,
/// `region_descriptions.json`, `densecap_splits.json` (each part's images under its split;
/// parts with [`Split::All`] go to no split list) and `image_data.json` (sizes).
///
/// Regions keep their caption as `phrase`; `references` (when they are not just the
/// caption), `mask` and `attributes` are written as extra keys so the round trip is exact.
/// Image ids must be unique across all parts.
pub fn write_vg(dir: &Path, parts: &[(&dyn Dataset, Split)]) -> Result<()> {
    let img_dir = dir.join("images");
    std::fs::create_dir_all(&img_dir).map_err(|e| Error::io(&img_dir, e))?;
    let mut regions_json = Vec::new();
    let mut image_data = Vec::new();
    let mut splits: HashMap<&str, Vec<u64>> = HashMap::new();
    for k in ["train", "val", "test"] {
        splits.insert(k, Vec::new());
    }
    let mut seen = HashMap::new();
    for (ds, split) in parts {
        for i in 0..ds.len() {
            let s = ds.get(i)?;
            if seen.insert(s.image_id, ()).is_some() {
                return Err(Error::Config(format!(
                    "write_vg: image id {} appears twice (give the parts disjoint ids)",
                    s.image_id
                )));
            }
            match &s.image {
                ImageSource::Rgb(img) => {
                    let p = img_dir.join(format!("{}.png", s.image_id));
                    img.save_with_format(&p, image::ImageFormat::Png)
                        .map_err(|e| Error::Image {
                            path: p.clone(),
                            msg: e.to_string(),
                        })?;
                }
                ImageSource::Path(src) => {
                    let ext = src
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("jpg")
                        .to_ascii_lowercase();
                    let p = img_dir.join(format!("{}.{ext}", s.image_id));
                    std::fs::copy(src, &p).map_err(|e| Error::io(src, e))?;
                }
            }
            let regions: Vec<Value> = s
                .regions
                .iter()
                .map(|r| {
                    let mut o = json!({
                        "region_id": r.id,
                        "image_id": s.image_id,
                        "phrase": r.caption,
                        "x": num(r.box_xywh[0]),
                        "y": num(r.box_xywh[1]),
                        "width": num(r.box_xywh[2]),
                        "height": num(r.box_xywh[3]),
                    });
                    if r.references.len() != 1 || r.references[0] != r.caption {
                        o["references"] = json!(r.references);
                    }
                    if let Some(m) = &r.mask {
                        o["mask"] = json!(m);
                    }
                    if let Some(a) = &r.attributes {
                        o["attributes"] = json!(a);
                    }
                    o
                })
                .collect();
            regions_json.push(json!({"id": s.image_id, "regions": regions}));
            image_data.push(json!({"image_id": s.image_id, "width": s.width, "height": s.height}));
            if let Some(k) = split.key() {
                splits
                    .get_mut(k)
                    .expect("all split keys inserted")
                    .push(s.image_id);
            }
        }
    }
    let write = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        let bytes = serde_json::to_vec(v).map_err(|e| Error::json(&p, &e))?;
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    };
    write("region_descriptions.json", &Value::Array(regions_json))?;
    write(
        "densecap_splits.json",
        &json!({"train": splits["train"], "val": splits["val"], "test": splits["test"]}),
    )?;
    write("image_data.json", &Value::Array(image_data))?;
    Ok(())
}
