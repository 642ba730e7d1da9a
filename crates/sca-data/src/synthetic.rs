//! Deterministic synthetic scenes with systematic, VG-style captions (`synthetic:seed=S,n=N`).
//!
//! Every sample `i` of a [`SyntheticDataset`] is a pure function of `(seed, i)` and of the
//! generator's settings: it uses this crate's own PRNG ([`crate::rng`]) and only exactly
//! rounded arithmetic (no `sin`/`cos` at run time), so the bytes are identical on every
//! machine. Train/test splits are made by seed (e.g. train `seed=1`, test `seed=2`: the
//! streams are unrelated).
//!
//! **Scene** (default 256 x 256): a grey background (level 80–160 with a slight tint; half
//! of the images add per-pixel noise of ±12), then 1–4 objects painted in order, later ones on
//! top. Each object has
//! - a shape from [`SHAPES`] (circle, square, triangle, star, cross), axis-aligned;
//! - a colour from [`COLOURS`] (8 saturated, well-separated colours, [`COLOUR_RGB`]);
//! - a size from [`SIZES`]: the half-extent `r` is `[0.060, 0.075]`, `[0.105, 0.125]` or
//!   `[0.160, 0.185]` of the image side (clear gaps between classes);
//! - a texture from [`TEXTURES`]: solid, striped (diagonal white stripes) or dotted (white
//!   dots);
//! - a position from [`POSITIONS`]: the 3 x 3 cell (image in thirds) holding its centre;
//!   centres keep a margin of 4% of the side from the cell borders between thirds, so the
//!   position word is unambiguous, and every shape lies fully inside the image.
//!
//! Objects may overlap, but every object keeps at least half of its pixels visible, and two
//! objects of the same colour never touch. A region's box is the tight box of the object's
//! full (amodal) shape, integral pixels; its mask is exactly its *visible* pixels (pixel
//! centres inside the shape and not covered by a later object), as COCO RLE.
//!
//! **Captions** come from templates (in this order; duplicates removed; `X` = texture
//! adjective or nothing for solid, `N` = "stripes"/"dots", `P` = position phrase such as "on
//! the left", "at the top", "in the top left corner", "in the center"):
//!
//! 1. `a {size} {colour} {X}{shape}` — "a small red striped circle"
//! 2. `the {size} {colour} {X}{shape}`
//! 3. `{size} {colour} {X}{shape}`
//! 4. `a {size} {colour} {X}{shape} {P}`
//! 5. `the {size} {colour} {X}{shape} {P}`
//! 6. `{colour} {X}{shape} {P}` — "red striped square on the left"
//! 7. `a {size} {colour} {shape} with {N}` (textured objects only)
//!
//! Every phrasing contains the colour and shape words; all but template 6 contain the size
//! word. A region's `references` are all its phrasings (this order), its `caption` is one of
//! them drawn with the sample's RNG, and its `attributes` hold the five ground-truth words.
//! [`attribute_words`] gives the vocabulary and [`parse_attributes`] /
//! [`attribute_agreement`] read the attributes back from a generated caption.

use std::sync::Arc;

use image::RgbImage;
use sca_core::masks::CocoRle;

use crate::rng::Rng;
use crate::types::{check_index, Attributes, Dataset, Region, Sample};
use crate::{Error, ImageSource, Result};

/// Shape words.
pub const SHAPES: [&str; 5] = ["circle", "square", "triangle", "star", "cross"];
/// Colour words.
pub const COLOURS: [&str; 8] = [
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink",
];
/// RGB of each entry of [`COLOURS`].
pub const COLOUR_RGB: [[u8; 3]; 8] = [
    [220, 30, 30],
    [245, 140, 20],
    [245, 225, 40],
    [40, 170, 60],
    [40, 200, 220],
    [30, 60, 210],
    [130, 50, 180],
    [245, 120, 200],
];
/// Colour of stripes and dots.
pub const TEXTURE_RGB: [u8; 3] = [250, 250, 250];
/// Size words.
pub const SIZES: [&str; 3] = ["small", "medium", "large"];
/// Half-extent ranges (fraction of the image side) of each size class.
pub const SIZE_RANGES: [(f64, f64); 3] = [(0.060, 0.075), (0.105, 0.125), (0.160, 0.185)];
/// Texture words (`"solid"` does not appear in captions).
pub const TEXTURES: [&str; 3] = ["solid", "striped", "dotted"];
/// Position words: the 3 x 3 cell of the object's centre, row-major from the top left.
pub const POSITIONS: [&str; 9] = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
];

/// The phrase used for each entry of [`POSITIONS`].
pub const POSITION_PHRASES: [&str; 9] = [
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
];

/// The vocabulary of each attribute (for evaluation: attribute accuracy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeVocab {
    /// [`SHAPES`].
    pub shape: &'static [&'static str],
    /// [`COLOURS`].
    pub colour: &'static [&'static str],
    /// [`SIZES`].
    pub size: &'static [&'static str],
    /// [`TEXTURES`].
    pub texture: &'static [&'static str],
    /// [`POSITIONS`].
    pub position: &'static [&'static str],
}

/// The words of every attribute of the synthetic scenes.
///
/// ```
/// let v = sca_data::synthetic::attribute_words();
/// assert!(v.colour.contains(&"red") && v.shape.contains(&"circle") && v.size.contains(&"large"));
/// ```
pub fn attribute_words() -> AttributeVocab {
    AttributeVocab {
        shape: &SHAPES,
        colour: &COLOURS,
        size: &SIZES,
        texture: &TEXTURES,
        position: &POSITIONS,
    }
}

/// Attributes read back from a caption: for each attribute, the first vocabulary word found
/// (`None` when the caption has none). `texture` is `"striped"` / `"dotted"` when the caption
/// says so (also "with stripes"/"with dots"), else `"solid"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttributes {
    /// First shape word.
    pub shape: Option<&'static str>,
    /// First colour word.
    pub colour: Option<&'static str>,
    /// First size word.
    pub size: Option<&'static str>,
    /// `"striped"`, `"dotted"` or `"solid"`.
    pub texture: &'static str,
    /// Position from the first vertical (`top`/`bottom`) and horizontal
    /// (`left`/`right`/`center`) words.
    pub position: Option<&'static str>,
}

/// Reads the synthetic attributes out of a (generated) caption; case-insensitive, words are
/// split at non-letters.
///
/// ```
/// use sca_data::synthetic::parse_attributes;
/// let p = parse_attributes("The large blue dotted star in the top left corner.");
/// assert_eq!((p.size, p.colour, p.shape), (Some("large"), Some("blue"), Some("star")));
/// assert_eq!((p.texture, p.position), ("dotted", Some("top left")));
/// ```
pub fn parse_attributes(caption: &str) -> ParsedAttributes {
    let lower = caption.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let first = |vocab: &'static [&'static str]| -> Option<&'static str> {
        words
            .iter()
            .find_map(|w| vocab.iter().find(|v| *v == w).copied())
    };
    let texture = words
        .iter()
        .find_map(|w| match *w {
            "striped" | "stripes" => Some("striped"),
            "dotted" | "dots" => Some("dotted"),
            _ => None,
        })
        .unwrap_or("solid");
    let vertical = words.iter().find_map(|w| match *w {
        "top" => Some(0usize),
        "bottom" => Some(2),
        _ => None,
    });
    let horizontal = words.iter().find_map(|w| match *w {
        "left" => Some(0usize),
        "right" => Some(2),
        "center" | "centre" | "middle" => Some(1),
        _ => None,
    });
    let position = match (vertical, horizontal) {
        (None, None) => None,
        (Some(v), None) => Some(POSITIONS[v * 3 + 1]),
        (None, Some(h)) => Some(POSITIONS[3 + h]),
        (Some(v), Some(h)) => Some(POSITIONS[v * 3 + h]),
    };
    ParsedAttributes {
        shape: first(&SHAPES),
        colour: first(&COLOURS),
        size: first(&SIZES),
        texture,
        position,
    }
}

/// Which attributes of a caption agree with the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeAgreement {
    /// The caption's first colour word is the true colour.
    pub colour: bool,
    /// The caption's first shape word is the true shape.
    pub shape: bool,
    /// The caption's first size word is the true size (false when it names none).
    pub size: bool,
    /// The texture read from the caption (solid when unnamed) is the true texture.
    pub texture: bool,
    /// `None` when the caption names no position.
    pub position: Option<bool>,
}

impl AttributeAgreement {
    /// Colour, shape and size all correct (the headline attribute accuracy).
    pub fn core(&self) -> bool {
        self.colour && self.shape && self.size
    }
}

/// Compares the attributes named in `caption` with `truth`.
///
/// ```
/// use sca_data::synthetic::attribute_agreement;
/// use sca_data::Attributes;
/// let truth = Attributes { shape: "circle".into(), colour: "red".into(), size: "small".into(),
///                          texture: "solid".into(), position: "left".into() };
/// let a = attribute_agreement("a small red circle on the left", &truth);
/// assert!(a.core() && a.texture && a.position == Some(true));
/// assert!(!attribute_agreement("a large red circle", &truth).core());
/// ```
pub fn attribute_agreement(caption: &str, truth: &Attributes) -> AttributeAgreement {
    let p = parse_attributes(caption);
    AttributeAgreement {
        colour: p.colour == Some(truth.colour.as_str()),
        shape: p.shape == Some(truth.shape.as_str()),
        size: p.size == Some(truth.size.as_str()),
        texture: p.texture == truth.texture,
        position: p.position.map(|pos| pos == truth.position),
    }
}

/// Every phrasing of an object with these attribute indices, in template order (see the
/// [module docs](self)).
pub fn phrasings(
    shape: usize,
    colour: usize,
    size: usize,
    texture: usize,
    position: usize,
) -> Vec<String> {
    let (h, c, s, p) = (
        SHAPES[shape],
        COLOURS[colour],
        SIZES[size],
        POSITION_PHRASES[position],
    );
    let x = match texture {
        1 => "striped ",
        2 => "dotted ",
        _ => "",
    };
    let mut out = vec![
        format!("a {s} {c} {x}{h}"),
        format!("the {s} {c} {x}{h}"),
        format!("{s} {c} {x}{h}"),
        format!("a {s} {c} {x}{h} {p}"),
        format!("the {s} {c} {x}{h} {p}"),
        format!("{c} {x}{h} {p}"),
    ];
    match texture {
        1 => out.push(format!("a {s} {c} {h} with stripes")),
        2 => out.push(format!("a {s} {c} {h} with dots")),
        _ => {}
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|t| seen.insert(t.clone()));
    out
}

/// Settings of the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Stream seed: different seeds give unrelated scenes (use one per split).
    pub seed: u64,
    /// Number of images.
    pub n: usize,
    /// Image side in pixels (square images), 64..=4096.
    pub size: usize,
    /// Fewest objects per image (>= 1).
    pub min_objects: usize,
    /// Most objects per image (<= 8). Crowded scenes may end with fewer when no placement
    /// keeps every object half visible.
    pub max_objects: usize,
    /// Image id of sample 0 (ids are `first_id + i`; region ids `image_id * 16 + k`).
    pub first_id: u64,
    /// Probability of a noisy background.
    pub noise_prob: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            n: 1000,
            size: 256,
            min_objects: 1,
            max_objects: 4,
            first_id: 0,
            noise_prob: 0.5,
        }
    }
}

/// One object of a generated scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SIZES`].
    pub size: usize,
    /// Index into [`TEXTURES`].
    pub texture: usize,
    /// Index into [`POSITIONS`].
    pub position: usize,
    /// Centre in pixels.
    pub center: (f64, f64),
    /// Half-extent in pixels.
    pub radius: f64,
    /// Tight box `[x, y, w, h]` of the full shape (integral).
    pub box_xywh: [f32; 4],
    /// Full shape pixels (row-major 0/1, image size).
    pub full_mask: Vec<u8>,
    /// Visible pixels (row-major 0/1, image size).
    pub visible_mask: Vec<u8>,
}

/// A generated image with its objects in painting order.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The rendered RGB image.
    pub image: RgbImage,
    /// The objects, in painting order (later ones on top).
    pub objects: Vec<SceneObject>,
}

/// The synthetic dataset: sample `i` is generated on demand from `(seed, i)`.
///
/// ```
/// use sca_data::{Dataset, synthetic::{SyntheticConfig, SyntheticDataset}};
/// let ds = SyntheticDataset::new(SyntheticConfig { seed: 1, n: 4, ..Default::default() }).unwrap();
/// let s = ds.get(0).unwrap();
/// assert_eq!((s.width, s.height), (256, 256));
/// assert!((1..=4).contains(&s.regions.len()));
/// let r = &s.regions[0];
/// assert!(r.references.contains(&r.caption));
/// let a = r.attributes.as_ref().unwrap();
/// assert!(r.caption.contains(&a.colour) && r.caption.contains(&a.shape));
/// ```
#[derive(Debug, Clone)]
pub struct SyntheticDataset {
    cfg: SyntheticConfig,
}

// cos/sin of -90° + 36°·k (star vertices), as literals so no libm is involved.
const STAR_DIRS: [(f64, f64); 10] = [
    (0.0, -1.0),
    (0.587_785_252_292_473_1, -0.809_016_994_374_947_5),
    (0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
    (0.951_056_516_295_153_5, 0.309_016_994_374_947_4),
    (0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (0.0, 1.0),
    (-0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.951_056_516_295_153_5, 0.309_016_994_374_947_4),
    (-0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
    (-0.587_785_252_292_473_1, -0.809_016_994_374_947_5),
];
const STAR_INNER: f64 = 0.5;
const SQUARE_HALF: f64 = 0.85;
const CROSS_ARM: f64 = 0.33;
const TRIANGLE_BASE: f64 = 0.75;
const CELL_MARGIN: f64 = 0.04;
const MAX_ATTEMPTS: usize = 40;

/// Even-odd point-in-polygon test.
fn in_polygon(px: f64, py: f64, poly: &[(f64, f64)]) -> bool {
    let mut inside = false;
    let n = poly.len();
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Whether the point `(dx, dy)` relative to the centre lies in `shape` of half-extent `r`.
fn inside(shape: usize, dx: f64, dy: f64, r: f64) -> bool {
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= SQUARE_HALF * r && dy.abs() <= SQUARE_HALF * r,
        2 => in_polygon(
            dx,
            dy,
            &[(0.0, -r), (r, TRIANGLE_BASE * r), (-r, TRIANGLE_BASE * r)],
        ),
        3 => {
            let mut poly = [(0.0, 0.0); 10];
            for (k, &(c, s)) in STAR_DIRS.iter().enumerate() {
                let rad = if k % 2 == 0 { r } else { STAR_INNER * r };
                poly[k] = (c * rad, s * rad);
            }
            in_polygon(dx, dy, &poly)
        }
        _ => {
            let a = CROSS_ARM * r;
            (dx.abs() <= r && dy.abs() <= a) || (dx.abs() <= a && dy.abs() <= r)
        }
    }
}

/// Pixel `(x, y)` of a textured object shows the texture colour.
fn texture_pixel(texture: usize, x: usize, y: usize, side: usize) -> bool {
    match texture {
        1 => {
            let w = (side / 48).max(2);
            ((x + y) / w) % 2 == 1
        }
        2 => {
            let d = (side / 20).max(4);
            let rd = d as f64 * 0.3;
            let fx = (x % d) as f64 + 0.5 - d as f64 / 2.0;
            let fy = (y % d) as f64 + 0.5 - d as f64 / 2.0;
            fx * fx + fy * fy <= rd * rd
        }
        _ => false,
    }
}

impl SyntheticDataset {
    /// Validates the settings.
    pub fn new(cfg: SyntheticConfig) -> Result<Self> {
        if !(64..=4096).contains(&cfg.size) {
            return Err(Error::Config(format!(
                "synthetic size {} is outside 64..=4096",
                cfg.size
            )));
        }
        if cfg.min_objects == 0 || cfg.min_objects > cfg.max_objects || cfg.max_objects > 8 {
            return Err(Error::Config(format!(
                "synthetic objects per image {}..={} must satisfy 1 <= min <= max <= 8",
                cfg.min_objects, cfg.max_objects
            )));
        }
        if !(0.0..=1.0).contains(&cfg.noise_prob) {
            return Err(Error::Config(format!(
                "synthetic noise_prob {} is outside [0, 1]",
                cfg.noise_prob
            )));
        }
        Ok(Self { cfg })
    }

    /// The settings.
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    /// Renders scene `index` (no bounds check against `n`).
    pub fn scene(&self, index: usize) -> Scene {
        let side = self.cfg.size;
        let sf = side as f64;
        let mut rng = Rng::derive(self.cfg.seed, &[index as u64, 0]);

        // Background.
        let level = 80 + rng.below(81) as i32;
        let tint: [i32; 3] = std::array::from_fn(|_| rng.below(17) as i32 - 8);
        let noisy = rng.chance(self.cfg.noise_prob);
        let mut image = RgbImage::new(side as u32, side as u32);
        let mut noise_rng = Rng::derive(self.cfg.seed, &[index as u64, 1]);
        for px in image.pixels_mut() {
            for (v, t) in px.0.iter_mut().zip(tint) {
                let n = if noisy {
                    noise_rng.below(25) as i32 - 12
                } else {
                    0
                };
                *v = (level + t + n).clamp(0, 255) as u8;
            }
        }

        // Objects.
        let target = rng.range_inclusive(self.cfg.min_objects, self.cfg.max_objects);
        let mut objects: Vec<SceneObject> = Vec::with_capacity(target);
        let mut areas: Vec<u64> = Vec::new();
        for _ in 0..target {
            let mut placed = None;
            for _ in 0..MAX_ATTEMPTS {
                let shape = rng.below(SHAPES.len());
                let colour = rng.below(COLOURS.len());
                let size = rng.below(SIZES.len());
                let texture = rng.below(TEXTURES.len());
                let position = rng.below(POSITIONS.len());
                let (lo, hi) = SIZE_RANGES[size];
                let r = rng.uniform_range(lo, hi) * sf;
                let (row, col) = (position / 3, position % 3);
                let range = |cell: usize| -> (f64, f64) {
                    let mut a = cell as f64 * sf / 3.0;
                    let mut b = (cell + 1) as f64 * sf / 3.0;
                    if cell > 0 {
                        a += CELL_MARGIN * sf;
                    }
                    if cell < 2 {
                        b -= CELL_MARGIN * sf;
                    }
                    (a.max(r + 1.0), b.min(sf - r - 1.0))
                };
                let (x0, x1) = range(col);
                let (y0, y1) = range(row);
                let ux = rng.uniform();
                let uy = rng.uniform();
                if x0 >= x1 || y0 >= y1 {
                    continue;
                }
                let cx = x0 + (x1 - x0) * ux;
                let cy = y0 + (y1 - y0) * uy;
                let full = self.rasterize(shape, cx, cy, r);
                let Some(bbox) = mask_box(&full, side) else {
                    continue;
                };
                // Same-colour objects never touch (3 px apart at least).
                let touches = objects
                    .iter()
                    .any(|o| o.colour == colour && boxes_overlap(o.box_xywh, bbox, 3.0));
                if touches {
                    continue;
                }
                // Every earlier object keeps at least half of its pixels visible.
                let ok = objects.iter().zip(&areas).all(|(o, &area)| {
                    let still: u64 = o
                        .visible_mask
                        .iter()
                        .zip(&full)
                        .filter(|(&v, &f)| v != 0 && f == 0)
                        .count() as u64;
                    2 * still >= area
                });
                if !ok {
                    continue;
                }
                placed = Some(SceneObject {
                    shape,
                    colour,
                    size,
                    texture,
                    position,
                    center: (cx, cy),
                    radius: r,
                    box_xywh: bbox,
                    visible_mask: full.clone(),
                    full_mask: full,
                });
                break;
            }
            let Some(obj) = placed else { break };
            for o in objects.iter_mut() {
                for (v, &f) in o.visible_mask.iter_mut().zip(&obj.full_mask) {
                    if f != 0 {
                        *v = 0;
                    }
                }
            }
            areas.push(obj.full_mask.iter().filter(|&&v| v != 0).count() as u64);
            objects.push(obj);
        }

        // Paint in order (later objects on top).
        for o in &objects {
            let rgb = COLOUR_RGB[o.colour];
            for (i, &f) in o.full_mask.iter().enumerate() {
                if f != 0 {
                    let (x, y) = (i % side, i / side);
                    let c = if texture_pixel(o.texture, x, y, side) {
                        TEXTURE_RGB
                    } else {
                        rgb
                    };
                    image.put_pixel(x as u32, y as u32, image::Rgb(c));
                }
            }
        }
        Scene { image, objects }
    }

    /// The full-shape mask (row-major 0/1) of a shape centred at `(cx, cy)`: pixel `(x, y)`
    /// is inside when its centre `(x + 0.5, y + 0.5)` is.
    fn rasterize(&self, shape: usize, cx: f64, cy: f64, r: f64) -> Vec<u8> {
        let side = self.cfg.size;
        let mut m = vec![0u8; side * side];
        let x_lo = ((cx - r - 2.0).floor().max(0.0)) as usize;
        let x_hi = ((cx + r + 2.0).ceil() as usize).min(side);
        let y_lo = ((cy - r - 2.0).floor().max(0.0)) as usize;
        let y_hi = ((cy + r + 2.0).ceil() as usize).min(side);
        for y in y_lo..y_hi {
            for x in x_lo..x_hi {
                let dx = x as f64 + 0.5 - cx;
                let dy = y as f64 + 0.5 - cy;
                if inside(shape, dx, dy, r) {
                    m[y * side + x] = 1;
                }
            }
        }
        m
    }

    /// Sample `index` with references drawn for its caption.
    fn sample(&self, index: usize) -> Sample {
        let scene = self.scene(index);
        let side = self.cfg.size;
        let image_id = self.cfg.first_id + index as u64;
        let mut cap_rng = Rng::derive(self.cfg.seed, &[index as u64, 2]);
        let regions = scene
            .objects
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let references = phrasings(o.shape, o.colour, o.size, o.texture, o.position);
                let caption = references[cap_rng.below(references.len())].clone();
                Region {
                    id: image_id * 16 + k as u64,
                    box_xywh: o.box_xywh,
                    caption,
                    references,
                    mask: Some(CocoRle::encode(&o.visible_mask, side, side)),
                    attributes: Some(Attributes {
                        shape: SHAPES[o.shape].into(),
                        colour: COLOURS[o.colour].into(),
                        size: SIZES[o.size].into(),
                        texture: TEXTURES[o.texture].into(),
                        position: POSITIONS[o.position].into(),
                    }),
                }
            })
            .collect();
        Sample {
            image: ImageSource::Rgb(Arc::new(scene.image)),
            width: side,
            height: side,
            regions,
            image_id,
        }
    }
}

/// Tight integral box `[x, y, w, h]` of a row-major mask (`None` if empty).
fn mask_box(mask: &[u8], side: usize) -> Option<[f32; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    for (i, &v) in mask.iter().enumerate() {
        if v != 0 {
            let (x, y) = (i % side, i / side);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    (x0 != usize::MAX).then(|| {
        [
            x0 as f32,
            y0 as f32,
            (x1 + 1 - x0) as f32,
            (y1 + 1 - y0) as f32,
        ]
    })
}

fn boxes_overlap(a: [f32; 4], b: [f32; 4], gap: f32) -> bool {
    a[0] - gap < b[0] + b[2]
        && b[0] - gap < a[0] + a[2]
        && a[1] - gap < b[1] + b[3]
        && b[1] - gap < a[1] + a[3]
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.cfg.n
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.cfg.n)?;
        Ok(self.sample(index))
    }

    fn describe(&self) -> String {
        format!(
            "synthetic (seed {}, {} images of {}x{}, {}-{} objects)",
            self.cfg.seed,
            self.cfg.n,
            self.cfg.size,
            self.cfg.size,
            self.cfg.min_objects,
            self.cfg.max_objects
        )
    }
}
