//! Large-scale jitter: hand-computed box/size cases, image arithmetic, and masks against a
//! brute-force transform.

use image::{Rgb, RgbImage};
use sca_data::lsj::{pil_nearest_index, LsjConfig, LsjTransform};
use sca_data::rng::Rng;
use sca_data::synthetic::{SyntheticConfig, SyntheticDataset};
use sca_data::{box_nonempty, clamp_box_xyxy};

const MEAN_U8: [u8; 3] = [123, 116, 103]; // trunc(0.485*255), trunc(0.456*255), trunc(0.406*255)

#[test]
fn box_transform_hand_computed() {
    // H=100, W=200, S=64, flip, s=1.5: target 96, f = min(0.96, 0.48) = 0.48 -> 48x96;
    // crop u=0.5: x offset round(32*0.5)=16, y offset 0 (padded instead).
    let t = LsjTransform::with_params(64, 100, 200, true, 1.5, 0.5);
    assert_eq!((t.resized, t.offset), ((48, 96), (0, 16)));
    // float box: flip [150,20,190,60] -> *0.48 [72,9.6,91.2,28.8] -> -16 in x.
    let b = t.apply_box([10.0, 20.0, 50.0, 60.0], false);
    let want = [56.0, 9.6, 75.2, 28.8];
    for k in 0..4 {
        assert!((b[k] - want[k]).abs() < 1e-9, "{b:?}");
    }
    let c = clamp_box_xyxy(b, 64.0, 64.0);
    assert!((c[2] - 64.0).abs() < 1e-12 && (c[3] - 28.8).abs() < 1e-9);
    // integral boxes truncate after the resize, as the official int64 arrays do.
    assert_eq!(
        t.apply_box([10.0, 20.0, 50.0, 60.0], true),
        [56.0, 9.0, 75.0, 28.0]
    );
    // A box that ends up outside the crop vanishes: [0,0,20,20] -> [70.4,0,80,9.6].
    let b = clamp_box_xyxy(t.apply_box([0.0, 0.0, 20.0, 20.0], false), 64.0, 64.0);
    assert_eq!(b[0], 64.0);
    assert!(!box_nonempty(b));
    // No flip, upscale with a crop in both axes: 30x40 at s=2 into 32: f=min(64/30, 64/40)=1.6
    // -> 48x64, u=0.25 -> offsets round(16*.25)=4, round(32*.25)=8.
    let t = LsjTransform::with_params(32, 30, 40, false, 2.0, 0.25);
    assert_eq!((t.resized, t.offset), ((48, 64), (4, 8)));
    assert_eq!(
        t.apply_box([5.0, 10.0, 15.0, 20.0], false),
        [0.0, 12.0, 16.0, 28.0]
    );
    // Half-to-even offsets: (66-64)*0.25 = 0.5 -> 0, (70-64)*0.25 = 1.5 -> 2.
    let t = LsjTransform::with_params(64, 66, 70, false, 70.0 / 64.0, 0.25);
    assert_eq!(t.resized, (66, 70));
    assert_eq!(t.offset, (0, 2));
}

#[test]
fn sampling_draws_three_uniforms_in_order() {
    let cfg = LsjConfig::official(1024);
    let mut a = Rng::new(5);
    let t = LsjTransform::sample(&cfg, 480, 640, &mut a);
    let mut b = Rng::new(5);
    let (u0, u1, u2) = (b.uniform(), b.uniform(), b.uniform());
    let s = 0.1 + (2.0 - 0.1) * u1;
    assert_eq!(
        t,
        LsjTransform::with_params(1024, 480, 640, u0 < 0.5, s, u2)
    );
    assert_eq!(a, b); // exactly three draws
                      // The flip happens about half of the time; scales cover [0.1, 2).
    let mut rng = Rng::new(1);
    let (mut flips, mut lo, mut hi) = (0, f64::MAX, 0f64);
    for _ in 0..2000 {
        let t = LsjTransform::sample(&cfg, 100, 100, &mut rng);
        flips += t.flip as usize;
        lo = lo.min(t.scale);
        hi = hi.max(t.scale);
    }
    assert!((900..1100).contains(&flips), "{flips}");
    assert!(
        (0.1..0.15).contains(&lo) && (1.95..2.0).contains(&hi),
        "{lo} {hi}"
    );
}

fn denorm_identity(v: u8, c: usize) -> u8 {
    let cfg = LsjConfig::official(1);
    let x = (v as f64 / 255.0 - cfg.image_mean[c]) / cfg.image_std[c];
    ((x * cfg.image_std[c] + cfg.image_mean[c]) * 255.0) as u8
}

#[test]
fn image_identity_scale_flip_and_padding() {
    let cfg = LsjConfig::official(8);
    let mut img = RgbImage::new(6, 4);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = Rgb([(x * 40 + y) as u8, (y * 60 + 3) as u8, 250 - x as u8 * 7]);
    }
    // s = 1: f = min(8/4, 8/6) = 4/3 -> 5.33x8... choose s so that the size is unchanged:
    // target = 6 -> f = min(6/4, 6/6) = 1.
    let t = LsjTransform::with_params(8, 4, 6, true, 0.75, 0.9);
    assert_eq!((t.resized, t.offset), ((4, 6), (0, 0)));
    let out = t.apply_image(&img, &cfg).unwrap();
    assert_eq!((out.width(), out.height()), (8, 8));
    for y in 0..8u32 {
        for x in 0..8u32 {
            let got = out.get_pixel(x, y).0;
            if y < 4 && x < 6 {
                // Mirrored, and the normalize/de-normalize round trip truncates like numpy.
                let src = img.get_pixel(5 - x, y).0;
                let want: [u8; 3] = std::array::from_fn(|c| denorm_identity(src[c], c));
                assert_eq!(got, want, "({x},{y})");
                for c in 0..3 {
                    assert!(src[c] - got[c] <= 1);
                }
            } else {
                assert_eq!(got, MEAN_U8, "padding at ({x},{y})");
            }
        }
    }
}

#[test]
fn image_downscale_by_two_averages_blocks() {
    // 4x4 -> 2x2 (s = 0.25 at S = 8): torch bilinear samples at 2d + 0.5, i.e. the mean of
    // each 2x2 block (in normalized space).
    let cfg = LsjConfig::official(8);
    let vals = [
        [100u8, 102, 40, 60],
        [104, 106, 80, 100],
        [0, 0, 255, 255],
        [0, 4, 255, 255],
    ];
    let img = RgbImage::from_fn(4, 4, |x, y| {
        let v = vals[y as usize][x as usize];
        Rgb([v, v, v])
    });
    let t = LsjTransform::with_params(8, 4, 4, false, 0.25, 0.0);
    assert_eq!(t.resized, (2, 2));
    let out = t.apply_image(&img, &cfg).unwrap();
    let expect = [[103u8, 70], [1, 255]];
    for y in 0..2 {
        for x in 0..2 {
            let got = out.get_pixel(x, y).0;
            for (c, &g) in got.iter().enumerate() {
                let e = expect[y as usize][x as usize];
                // truncation may drop the exact mean by one
                assert!(g == e || g + 1 == e, "({x},{y}) channel {c}: {g} vs {e}");
            }
        }
    }
    assert_eq!(out.get_pixel(2, 0).0, MEAN_U8);
}

#[test]
fn uniform_image_keeps_its_colour_at_any_scale() {
    let cfg = LsjConfig::official(64);
    let img = RgbImage::from_pixel(37, 53, Rgb([200, 10, 90]));
    let mut rng = Rng::new(3);
    for _ in 0..20 {
        let t = LsjTransform::sample(&cfg, 53, 37, &mut rng);
        let out = t.apply_image(&img, &cfg).unwrap();
        let (nh, nw) = t.resized;
        let (oy, ox) = t.offset;
        for (x, y, p) in out.enumerate_pixels() {
            let inside = (y as usize + oy) < nh && (x as usize + ox) < nw;
            if inside {
                for c in 0..3 {
                    let want = [200u8, 10, 90][c];
                    assert!(p.0[c] == want || p.0[c] + 1 == want, "{:?}", p.0);
                }
            } else {
                assert_eq!(p.0, MEAN_U8);
            }
        }
    }
}

/// Pillow's NEAREST source index for output `r` of an `input -> output` resize, written as
/// its C loop does it: start at `in/out * 0.5`, add `in/out` per output pixel, truncate.
fn pillow_source(input: usize, output: usize, r: usize) -> usize {
    let a = input as f64 / output as f64;
    let mut xo = a * 0.5;
    for _ in 0..r {
        xo += a;
    }
    (xo as usize).min(input - 1)
}

/// Brute force: every output pixel undoes crop and flip and looks its source pixel up.
fn brute_force_mask(t: &LsjTransform, mask: &[u8]) -> Vec<u8> {
    let (h, w) = t.input;
    let (nh, nw) = t.resized;
    let s = t.size;
    let mut out = vec![0u8; s * s];
    for y in 0..s {
        for x in 0..s {
            let (ry, rx) = (y + t.offset.0, x + t.offset.1);
            if ry >= nh || rx >= nw {
                continue; // padding
            }
            let sy = if nh == h {
                ry
            } else {
                pillow_source(h, nh, ry)
            };
            let fx = if nw == w {
                rx
            } else {
                pillow_source(w, nw, rx)
            };
            let sx = if t.flip { w - 1 - fx } else { fx };
            out[y * s + x] = mask[sy * w + sx];
        }
    }
    out
}

#[test]
fn nearest_index_matches_pillow() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lsj/pil_nearest.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for c in cases {
        let (i, o) = (
            c["input"].as_u64().unwrap() as usize,
            c["output"].as_u64().unwrap() as usize,
        );
        let want: Vec<usize> = serde_json::from_value(c["index"].clone()).unwrap();
        assert_eq!(pil_nearest_index(i, o), want, "{i} -> {o}");
    }
}

fn tight_box(mask: &[u8], w: usize) -> Option<[f64; 4]> {
    let mut b = [f64::MAX, f64::MAX, 0f64, 0f64];
    let mut any = false;
    for (i, &v) in mask.iter().enumerate() {
        if v != 0 {
            any = true;
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            b = [
                b[0].min(x),
                b[1].min(y),
                b[2].max(x + 1.0),
                b[3].max(y + 1.0),
            ];
        }
    }
    any.then_some(b)
}

#[test]
fn masks_match_brute_force_and_follow_their_boxes() {
    let ds = SyntheticDataset::new(SyntheticConfig {
        seed: 21,
        n: 10,
        size: 160,
        ..Default::default()
    })
    .unwrap();
    let cfg = LsjConfig::official(128);
    let mut rng = Rng::new(99);
    let mut checked = 0;
    for i in 0..10 {
        let scene = ds.scene(i);
        for o in &scene.objects {
            for _ in 0..8 {
                let t = LsjTransform::sample(&cfg, 160, 160, &mut rng);
                let got = t.apply_mask(&o.visible_mask);
                let want = brute_force_mask(&t, &o.visible_mask);
                let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(diff, 0, "{diff} pixels differ for {t:?}");
                // The transformed full mask lies inside the transformed, clamped box (±1 px
                // for nearest sampling); when the crop does not cut the box of a shape without
                // thin tips (circle, square), it fills it.
                let full_t = t.apply_mask(&o.full_mask);
                let [x, y, w, h] = o.box_xywh.map(|v| v as f64);
                let raw = t.apply_box([x, y, x + w, y + h], false);
                let b = clamp_box_xyxy(raw, 128.0, 128.0);
                let uncut = raw == b;
                match tight_box(&full_t, 128) {
                    Some(m) => {
                        assert!(box_nonempty(b));
                        let tol = 1.0 + 1e-9;
                        assert!(m[0] >= b[0] - tol && m[1] >= b[1] - tol, "{m:?} vs {b:?}");
                        assert!(m[2] <= b[2] + tol && m[3] <= b[3] + tol, "{m:?} vs {b:?}");
                        if uncut && o.shape <= 1 {
                            for k in 0..4 {
                                assert!((m[k] - b[k]).abs() <= tol, "mask box {m:?} vs {b:?}");
                            }
                            checked += 1;
                        }
                    }
                    None => {
                        // Cropped (the kept part of the box may miss the shape) or too small
                        // to hit a sample point.
                        assert!(
                            !uncut || (b[2] - b[0]) < 2.0 || (b[3] - b[1]) < 2.0,
                            "empty mask for {b:?} ({t:?})"
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 20, "{checked}");
    assert_eq!(pil_nearest_index(160, 128).len(), 128);
}

#[test]
fn image_and_mask_stay_aligned() {
    // A solid red rectangle on grey: wherever the transformed (eroded) mask is set, the
    // transformed image is red; wherever it is far from the mask, grey.
    let (h, w) = (90usize, 120usize);
    let (x0, y0, x1, y1) = (30usize, 20usize, 70usize, 60usize);
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let inside = (x0..x1).contains(&(x as usize)) && (y0..y1).contains(&(y as usize));
        if inside {
            Rgb([220, 30, 30])
        } else {
            Rgb([128, 128, 128])
        }
    });
    let mask: Vec<u8> = (0..h * w)
        .map(|i| ((x0..x1).contains(&(i % w)) && (y0..y1).contains(&(i / w))) as u8)
        .collect();
    let cfg = LsjConfig::official(96);
    let mut rng = Rng::new(4);
    for _ in 0..30 {
        let t = LsjTransform::sample(&cfg, h, w, &mut rng);
        if t.scale < 0.5 {
            continue;
        }
        let out = t.apply_image(&img, &cfg).unwrap();
        let m = t.apply_mask(&mask);
        let s = 96;
        for y in 2..s - 2 {
            for x in 2..s - 2 {
                let all =
                    |v: u8| (y - 2..=y + 2).all(|yy| (x - 2..=x + 2).all(|xx| m[yy * s + xx] == v));
                let p = out.get_pixel(x as u32, y as u32).0;
                if all(1) {
                    assert!(p[0] >= 219 && p[1] <= 31, "{t:?} ({x},{y}) {p:?}");
                }
            }
        }
    }
}
