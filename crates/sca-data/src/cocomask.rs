//! COCO segmentations to [`CocoRle`], following pycocotools (`maskApi.c`):
//! polygons via `rleFrPoly` (boundary upsampled ×5, y-boundary crossings, column-major runs),
//! `[x, y, w, h]` lists via `rleFrBbox`, uncompressed RLE (`counts` as a list) as is; several
//! parts of one object are merged by union (`annToRLE` → `frPyObjects` + `merge`).

use sca_core::masks::CocoRle;
use serde::{Deserialize, Serialize};

/// Largest polygon coordinate accepted (pixels).
const MAX_COORD: f64 = 1e6;

/// A COCO `segmentation` value as it appears in instances JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// A list of polygons `[[x1, y1, x2, y2, ...], ...]`.
    Polygons(Vec<Vec<f64>>),
    /// RLE with `counts` as a compressed string or an uncompressed list of runs.
    Rle {
        /// `[h, w]`.
        size: [usize; 2],
        /// The runs.
        counts: RleCounts,
    },
}

/// RLE counts: pycocotools' compressed string or the plain list of run lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// Compressed (LEB128-like) string.
    Compressed(String),
    /// Run lengths, starting with background.
    Runs(Vec<u64>),
}

impl Segmentation {
    /// The mask as compressed RLE at `h x w` (the image size). Errors are messages for the
    /// caller to place (file, annotation).
    pub fn to_rle(&self, h: usize, w: usize) -> Result<CocoRle, String> {
        match self {
            Segmentation::Polygons(polys) => {
                if polys.is_empty() {
                    return Err("segmentation is an empty list of polygons".into());
                }
                let first = polys[0].len();
                let mut union = vec![0u8; h * w];
                for (i, p) in polys.iter().enumerate() {
                    if let Some(v) = p.iter().find(|v| !v.is_finite()) {
                        return Err(format!("polygon {i} has a non-finite coordinate {v}"));
                    }
                    // pycocotools walks the boundary pixel by pixel at 5x: keep it bounded.
                    if let Some(v) = p.iter().find(|v| v.abs() > MAX_COORD) {
                        return Err(format!(
                            "polygon {i} has coordinate {v}, beyond ±{MAX_COORD}"
                        ));
                    }
                    let runs = if first == 4 {
                        // pycocotools treats a list whose first entry has 4 numbers as boxes.
                        if p.len() != 4 {
                            return Err(format!(
                                "segmentation entry {i} has {} numbers; boxes need 4",
                                p.len()
                            ));
                        }
                        runs_from_bbox([p[0], p[1], p[2], p[3]], h, w)
                    } else if first > 4 {
                        runs_from_polygon(p, h, w)
                    } else {
                        return Err(format!(
                            "polygon 0 has {first} numbers; at least 3 points (6 numbers) are needed"
                        ));
                    };
                    paint_runs(&runs, h, &mut union);
                }
                Ok(CocoRle::encode(&union, h, w))
            }
            Segmentation::Rle { size, counts } => {
                if size[0] != h || size[1] != w {
                    return Err(format!(
                        "RLE size [{}, {}] differs from the image size [{h}, {w}]",
                        size[0], size[1]
                    ));
                }
                match counts {
                    RleCounts::Compressed(s) => {
                        let rle = CocoRle {
                            size: *size,
                            counts: s.clone(),
                        };
                        check_rle(&rle)?;
                        Ok(rle)
                    }
                    RleCounts::Runs(runs) => {
                        let total: u64 = runs.iter().sum();
                        if total != (h * w) as u64 {
                            return Err(format!("RLE runs sum to {total}, expected {h}x{w}"));
                        }
                        let runs: Vec<u32> = runs
                            .iter()
                            .map(|&r| u32::try_from(r).map_err(|_| format!("run {r} too long")))
                            .collect::<Result<_, _>>()?;
                        let mut mask = vec![0u8; h * w];
                        paint_runs(&runs, h, &mut mask);
                        Ok(CocoRle::encode(&mask, h, w))
                    }
                }
            }
        }
    }
}

/// Checks that a compressed RLE decodes to exactly `h * w` pixels.
pub(crate) fn check_rle(rle: &CocoRle) -> Result<(), String> {
    let runs = rle.runs().map_err(|e| e.to_string())?;
    let total: u64 = runs.iter().map(|&r| r as u64).sum();
    let [h, w] = rle.size;
    if total != (h * w) as u64 {
        return Err(format!(
            "RLE counts sum to {total} pixels, expected {h}x{w} = {}",
            h * w
        ));
    }
    Ok(())
}

/// Sets the foreground runs (odd entries) of column-major `runs` in a row-major mask.
fn paint_runs(runs: &[u32], h: usize, mask: &mut [u8]) {
    if h == 0 {
        return;
    }
    let w = mask.len() / h;
    let mut pos = 0usize;
    for (i, &r) in runs.iter().enumerate() {
        if i % 2 == 1 {
            for p in pos..(pos + r as usize).min(h * w) {
                mask[(p % h) * w + p / h] = 1;
            }
        }
        pos += r as usize;
    }
}

/// pycocotools `rleFrBbox`: the polygon of the box's four corners.
pub fn runs_from_bbox(b: [f64; 4], h: usize, w: usize) -> Vec<u32> {
    let (xs, ys) = (b[0], b[1]);
    let (xe, ye) = (xs + b[2], ys + b[3]);
    runs_from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
}

/// pycocotools `rleFrPoly` for one polygon `[x1, y1, x2, y2, ...]` (an odd trailing number is
/// ignored, as `k = len / 2`): the column-major run lengths, starting with background.
pub fn runs_from_polygon(xy: &[f64], h: usize, w: usize) -> Vec<u32> {
    let k = xy.len() / 2;
    if k == 0 || h == 0 || w == 0 {
        return vec![(h * w) as u32];
    }
    let scale = 5.0f64;
    // C `(int)` conversion: truncation toward zero.
    let mut x: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j] + 0.5) as i32 as i64)
        .collect();
    let mut y: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j + 1] + 0.5) as i32 as i64)
        .collect();
    x.push(x[0]);
    y.push(y[0]);
    // Dense boundary points.
    let mut u: Vec<i64> = Vec::new();
    let mut v: Vec<i64> = Vec::new();
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            if dx == 0 {
                0.0
            } else {
                (ye - ys) as f64 / dx as f64
            }
        } else {
            (xe - xs) as f64 / dy as f64
        };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push((ys as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        }
    }
    // Points along the y-boundary, downsampled.
    let mut a: Vec<u64> = Vec::new();
    for j in 1..u.len() {
        if u[j] != u[j - 1] {
            let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
                continue;
            }
            let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
            let mut yd = (yd + 0.5) / scale - 0.5;
            if yd < 0.0 {
                yd = 0.0;
            } else if yd > h as f64 {
                yd = h as f64;
            }
            let yd = yd.ceil();
            a.push(xd as u64 * h as u64 + yd as u64);
        }
    }
    a.push((h * w) as u64);
    a.sort_unstable();
    let mut p = 0u64;
    for e in a.iter_mut() {
        let t = *e;
        *e -= p;
        p = t;
    }
    let mut b: Vec<u64> = Vec::with_capacity(a.len());
    let mut j = 0;
    b.push(a[j]);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                let last = b.len() - 1;
                b[last] += a[j];
                j += 1;
            }
        }
    }
    b.into_iter().map(|r| r as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(runs: &[u32], h: usize, w: usize) -> Vec<u8> {
        let mut m = vec![0u8; h * w];
        paint_runs(runs, h, &mut m);
        m
    }

    #[test]
    fn square_polygon_covers_expected_pixels() {
        // pycocotools: frPyObjects([[1,1, 1,4, 4,4, 4,1]], 6, 6) covers rows and columns
        // 1..=3 (a column x is sampled near x + 0.4; rows from ceil((5y + .5) / 5 - .5)).
        let runs = runs_from_polygon(&[1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 1.0], 6, 6);
        let m = mask_of(&runs, 6, 6);
        let total: u32 = runs.iter().sum();
        assert_eq!(total, 36);
        let mut expect = vec![0u8; 36];
        for y in 1..4 {
            for x in 1..4 {
                expect[y * 6 + x] = 1;
            }
        }
        assert_eq!(m, expect);
    }

    #[test]
    fn bbox_equals_its_polygon() {
        let a = runs_from_bbox([2.0, 1.0, 3.0, 2.0], 5, 7);
        let b = runs_from_polygon(&[2.0, 1.0, 2.0, 3.0, 5.0, 3.0, 5.0, 1.0], 5, 7);
        assert_eq!(a, b);
    }

    #[test]
    fn uncompressed_rle_roundtrip() {
        let seg = Segmentation::Rle {
            size: [2, 3],
            counts: RleCounts::Runs(vec![1, 2, 3]),
        };
        let rle = seg.to_rle(2, 3).unwrap();
        // column-major: pixel 0 bg, pixels 1,2 fg -> (1,0) and (0,1)
        assert_eq!(rle.decode().unwrap(), vec![0, 1, 0, 1, 0, 0]);
        let bad = Segmentation::Rle {
            size: [2, 3],
            counts: RleCounts::Runs(vec![1, 2]),
        };
        assert!(bad.to_rle(2, 3).unwrap_err().contains("sum to 3"));
    }
}
