//! COCO instances (category names as captions, the paper's pre-training style) and
//! RefCOCO / RefCOCO+ / RefCOCOg (referring expressions as captions).
//!
//! **COCO** (`coco:ANNOTATIONS.json,IMAGES_DIR`): a standard instances file
//! (`images[{id, file_name, width, height}]`, `annotations[{id, image_id, category_id, bbox,
//! segmentation, iscrowd}]`, `categories[{id, name}]`). Each image with at least one
//! non-crowd annotation is a sample (file order); each non-crowd annotation is a region with
//! the category name as caption and only reference, its `bbox` as the box, and its
//! segmentation (polygons, uncompressed or compressed RLE) converted to a compressed RLE mask
//! with pycocotools semantics (see [`crate::cocomask`]). Crowd annotations are skipped.
//!
//! **RefCOCO** (`refcoco:REFS.json,INSTANCES.json,IMAGES_DIR[,split=S]`): the `refs(unc).p`
//! pickle of the release converted to JSON, e.g.
//! `python -c "import pickle,json; json.dump(pickle.load(open('refs(unc).p','rb')), open('refs.json','w'))"`
//! — a list of `{ref_id, ann_id, image_id, split, sentences: [{sent, raw, ...}], ...}` — and
//! the release's `instances.json` (COCO format). Each image referenced by a ref of the split is
//! a sample (order of first appearance); each ref is a region with id `ref_id`, box and mask
//! of its annotation, `references` = every sentence's `sent` (`raw` if `sent` is missing) and
//! caption = the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cocomask::Segmentation;
use crate::types::{check_index, Dataset, Region, Sample};
use crate::{Error, ImageSource, Result};

#[derive(Deserialize)]
struct RawInstances {
    images: Vec<RawImage>,
    annotations: Vec<RawAnn>,
    #[serde(default)]
    categories: Vec<RawCategory>,
}

#[derive(Deserialize, Clone)]
struct RawImage {
    id: u64,
    file_name: String,
    width: usize,
    height: usize,
}

#[derive(Deserialize, Clone)]
struct RawAnn {
    id: u64,
    image_id: u64,
    #[serde(default)]
    category_id: Option<u64>,
    bbox: [f64; 4],
    #[serde(default)]
    segmentation: Option<Segmentation>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct RawCategory {
    id: u64,
    name: String,
}

/// A region's texts: a category (index into the dataset's names; COCO) or sentences
/// (RefCOCO). Category names are shared so large files (Objects365) stay small in memory.
#[derive(Debug, Clone)]
enum Texts {
    Category(usize),
    Sentences(Vec<String>),
}

/// One region before its mask is converted (conversion happens in `get`).
#[derive(Debug, Clone)]
struct LazyRegion {
    id: u64,
    box_xywh: [f32; 4],
    texts: Texts,
    segmentation: Option<Segmentation>,
    /// Where the annotation sits in the file, for errors (`annotations[12] (id 345)`).
    at: String,
}

#[derive(Debug, Clone)]
struct LazyImage {
    id: u64,
    path: PathBuf,
    width: usize,
    height: usize,
    regions: Vec<LazyRegion>,
}

fn build_sample(img: &LazyImage, ann_path: &Path, categories: &[String]) -> Result<Sample> {
    let mut regions = Vec::with_capacity(img.regions.len());
    for r in &img.regions {
        let mask =
            match &r.segmentation {
                None => None,
                Some(Segmentation::Polygons(p)) if p.is_empty() => None,
                Some(seg) => Some(seg.to_rle(img.height, img.width).map_err(|msg| {
                    Error::format(ann_path, format!("{}.segmentation", r.at), msg)
                })?),
            };
        let references = match &r.texts {
            Texts::Category(c) => vec![categories[*c].clone()],
            Texts::Sentences(s) => s.clone(),
        };
        regions.push(Region {
            id: r.id,
            box_xywh: r.box_xywh,
            caption: references[0].clone(),
            references,
            mask,
            attributes: None,
        });
    }
    Ok(Sample {
        image: ImageSource::Path(img.path.clone()),
        width: img.width,
        height: img.height,
        regions,
        image_id: img.id,
    })
}

fn load_instances(path: &Path) -> Result<RawInstances> {
    crate::error::parse_json(path, &crate::error::read_file(path)?)
}

fn check_bbox(path: &Path, at: &str, b: [f64; 4]) -> Result<[f32; 4]> {
    if b[2] < 0.0 || b[3] < 0.0 {
        return Err(Error::format(
            path,
            format!("{at}.bbox"),
            format!("negative width or height in {b:?}"),
        ));
    }
    Ok(b.map(|v| v as f32))
}

fn index_images(path: &Path, images: &[RawImage]) -> Result<HashMap<u64, usize>> {
    let mut by_id = HashMap::with_capacity(images.len());
    for (i, im) in images.iter().enumerate() {
        if im.width == 0 || im.height == 0 {
            return Err(Error::format(
                path,
                format!("images[{i}] (id {})", im.id),
                format!("zero image size {}x{}", im.width, im.height),
            ));
        }
        if by_id.insert(im.id, i).is_some() {
            return Err(Error::format(
                path,
                format!("images[{i}]"),
                format!("image id {} is listed twice", im.id),
            ));
        }
    }
    Ok(by_id)
}

/// COCO instances with category names as captions (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct CocoDataset {
    ann_path: PathBuf,
    images: Vec<LazyImage>,
    categories: Vec<String>,
}

impl CocoDataset {
    /// Reads `annotations` (instances JSON); image files are `images_dir/file_name`.
    pub fn open(annotations: &Path, images_dir: &Path) -> Result<Self> {
        let raw = load_instances(annotations)?;
        let by_id = index_images(annotations, &raw.images)?;
        let mut categories = Vec::with_capacity(raw.categories.len());
        let mut cats: HashMap<u64, usize> = HashMap::with_capacity(raw.categories.len());
        for c in raw.categories {
            cats.insert(c.id, categories.len());
            categories.push(c.name);
        }
        let mut regions: Vec<Vec<LazyRegion>> = vec![Vec::new(); raw.images.len()];
        for (i, a) in raw.annotations.into_iter().enumerate() {
            let at = format!("annotations[{i}] (id {})", a.id);
            let img = *by_id.get(&a.image_id).ok_or_else(|| {
                Error::format(
                    annotations,
                    &at,
                    format!("image_id {} is not in \"images\"", a.image_id),
                )
            })?;
            if a.iscrowd != 0 {
                continue;
            }
            let cid = a
                .category_id
                .ok_or_else(|| Error::format(annotations, &at, "missing \"category_id\""))?;
            let cat = *cats.get(&cid).ok_or_else(|| {
                Error::format(
                    annotations,
                    &at,
                    format!("category_id {cid} is not in \"categories\""),
                )
            })?;
            let box_xywh = check_bbox(annotations, &at, a.bbox)?;
            regions[img].push(LazyRegion {
                id: a.id,
                box_xywh,
                texts: Texts::Category(cat),
                segmentation: a.segmentation,
                at,
            });
        }
        let images = raw
            .images
            .into_iter()
            .zip(regions)
            .filter(|(_, r)| !r.is_empty())
            .map(|(im, regions)| LazyImage {
                id: im.id,
                path: images_dir.join(&im.file_name),
                width: im.width,
                height: im.height,
                regions,
            })
            .collect();
        Ok(Self {
            ann_path: annotations.to_path_buf(),
            images,
            categories,
        })
    }
}

impl Dataset for CocoDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.images.len())?;
        build_sample(&self.images[index], &self.ann_path, &self.categories)
    }
    fn describe(&self) -> String {
        format!(
            "COCO {} ({} images, {} regions)",
            self.ann_path.display(),
            self.images.len(),
            self.images.iter().map(|i| i.regions.len()).sum::<usize>()
        )
    }
}

#[derive(Deserialize)]
struct RawRef {
    ref_id: u64,
    ann_id: u64,
    image_id: u64,
    #[serde(default)]
    split: Option<String>,
    sentences: Vec<RawSentence>,
}

#[derive(Deserialize)]
struct RawSentence {
    #[serde(default)]
    sent: Option<String>,
    #[serde(default)]
    raw: Option<String>,
}

/// RefCOCO / RefCOCO+ / RefCOCOg from `refs.json` + `instances.json` (see the
/// [module docs](self)).
#[derive(Debug, Clone)]
pub struct RefCocoDataset {
    refs_path: PathBuf,
    instances_path: PathBuf,
    images: Vec<LazyImage>,
    split: Option<String>,
}

impl RefCocoDataset {
    /// Reads the refs (JSON form of `refs(unc).p`) and the instances; keeps refs whose
    /// `split` equals `split` (`train`, `val`, `test`, `testA`, `testB`; `None` = all).
    pub fn open(
        refs: &Path,
        instances: &Path,
        images_dir: &Path,
        split: Option<&str>,
    ) -> Result<Self> {
        let raw_refs: Vec<RawRef> =
            crate::error::parse_json(refs, &crate::error::read_file(refs)?)?;
        let inst = load_instances(instances)?;
        let by_image = index_images(instances, &inst.images)?;
        let mut anns: HashMap<u64, (usize, RawAnn)> =
            HashMap::with_capacity(inst.annotations.len());
        for (i, a) in inst.annotations.into_iter().enumerate() {
            if anns.contains_key(&a.id) {
                return Err(Error::format(
                    instances,
                    format!("annotations[{i}]"),
                    format!("annotation id {} is listed twice", a.id),
                ));
            }
            anns.insert(a.id, (i, a));
        }
        let mut order: Vec<u64> = Vec::new();
        let mut per_image: HashMap<u64, Vec<LazyRegion>> = HashMap::new();
        for (k, r) in raw_refs.into_iter().enumerate() {
            let at = format!("[{k}] (ref_id {})", r.ref_id);
            if let Some(want) = split {
                if r.split.as_deref() != Some(want) {
                    continue;
                }
            }
            let (ai, ann) = anns.get(&r.ann_id).ok_or_else(|| {
                Error::format(
                    refs,
                    &at,
                    format!("ann_id {} is not in {}", r.ann_id, instances.display()),
                )
            })?;
            if ann.image_id != r.image_id {
                return Err(Error::format(
                    refs,
                    &at,
                    format!(
                        "image_id {} differs from annotation {}'s image_id {}",
                        r.image_id, r.ann_id, ann.image_id
                    ),
                ));
            }
            if !by_image.contains_key(&r.image_id) {
                return Err(Error::format(
                    refs,
                    &at,
                    format!("image_id {} is not in {}", r.image_id, instances.display()),
                ));
            }
            let mut references = Vec::with_capacity(r.sentences.len());
            for (s, sent) in r.sentences.into_iter().enumerate() {
                references.push(sent.sent.or(sent.raw).ok_or_else(|| {
                    Error::format(
                        refs,
                        format!("{at}.sentences[{s}]"),
                        "sentence has neither \"sent\" nor \"raw\"",
                    )
                })?);
            }
            if references.is_empty() {
                return Err(Error::format(refs, &at, "ref has no sentences"));
            }
            let box_xywh = check_bbox(instances, &format!("annotations[{ai}]"), ann.bbox)?;
            let entry = per_image.entry(r.image_id).or_insert_with(|| {
                order.push(r.image_id);
                Vec::new()
            });
            entry.push(LazyRegion {
                id: r.ref_id,
                box_xywh,
                texts: Texts::Sentences(references),
                segmentation: ann.segmentation.clone(),
                at: format!("annotations[{ai}] (id {})", ann.id),
            });
        }
        let images = order
            .into_iter()
            .map(|id| {
                let im = &inst.images[by_image[&id]];
                LazyImage {
                    id,
                    path: images_dir.join(&im.file_name),
                    width: im.width,
                    height: im.height,
                    regions: per_image.remove(&id).unwrap_or_default(),
                }
            })
            .collect();
        Ok(Self {
            refs_path: refs.to_path_buf(),
            instances_path: instances.to_path_buf(),
            images,
            split: split.map(str::to_string),
        })
    }
}

impl Dataset for RefCocoDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.images.len())?;
        // Mask errors name the instances file (where the segmentation lives).
        build_sample(&self.images[index], &self.instances_path, &[])
    }
    fn describe(&self) -> String {
        format!(
            "RefCOCO {} (split {}: {} images, {} refs)",
            self.refs_path.display(),
            self.split.as_deref().unwrap_or("all"),
            self.images.len(),
            self.images.iter().map(|i| i.regions.len()).sum::<usize>()
        )
    }
}
