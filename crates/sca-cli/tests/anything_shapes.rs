//! Anything mode on the bundled default model (`models/sca-shapes`) and its example images:
//! the ground-truth objects covering at least 1% of the image that are found (IoU >= 0.7 with a
//! kept region), and how many of those the region's caption names by colour and shape.
//!
//! The anything-mode issue asks for >= 90% found and >= 85% named. The bundled model's
//! predicted IoU and stability scores from off-centre grid points stay below SAM's filters
//! (0.88, 0.95), so this test prints both rates with the official filters and with relaxed ones,
//! and guards what it does today with the relaxed ones (`RECALL_MIN`, `NAMING_MIN`, a little
//! below the measured values).
//!
//! The examples' `objects.json` names the generator spec that drew them; the ground-truth
//! masks and attributes come from regenerating those scenes with `sca-data`. Set
//! `SCA_ANYTHING_SCENES` (e.g. `synthetic:seed=4242,n=20`) to measure on other scenes.

use std::path::PathBuf;

use candle_core::Device;
use sca_core::anything::{anything, AnythingConfig};
use sca_core::{Decode, Sca};
use sca_data::synthetic::attribute_agreement;
use sca_data::{open_spec, Dataset, Split};

// The committed model on the example images: official filters 0 of 12 objects found; relaxed
// (0.7, 0.5) 11 of 12 found, all 11 named by colour and shape. (On `synthetic:seed=4242,n=20`:
// 34 of 40 found, 32 of those 34 named.)
const RELAXED_PRED_IOU: f32 = 0.7;
const RELAXED_STABILITY: f32 = 0.5;
const RECALL_MIN: f64 = 0.9;
const NAMING_MIN: f64 = 0.9;

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes");
    assert!(
        dir.join("manifest.json").is_file(),
        "the bundled default model is missing at {}",
        dir.display()
    );
    dir
}

fn iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x != 0, y != 0);
        inter += u64::from(x && y);
        union += u64::from(x || y);
    }
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// Objects of the scenes of `spec` (area >= 1% of the image), how many a kept region finds
/// (IoU >= 0.7), how many of those its caption names by colour and shape, and the misses.
fn measure(sca: &Sca, spec: &str, cfg: &AnythingConfig) -> (usize, usize, usize, Vec<String>) {
    let ds = open_spec(spec, Split::Test).unwrap();
    let (mut total, mut found, mut named) = (0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    for i in 0..ds.len() {
        let sample = ds.get(i).unwrap();
        let img = sample.load_image().unwrap();
        let emb = sca.embed(&img).unwrap();
        let out = anything(sca, &emb, cfg, &mut |_| true).unwrap();
        let kept: Vec<(Vec<u8>, &str)> = out
            .regions
            .iter()
            .map(|r| (r.segmentation.decode().unwrap(), r.caption.as_str()))
            .collect();
        let min_area = (sample.width * sample.height) as u64 / 100;
        for region in &sample.regions {
            let gt = region.mask.as_ref().unwrap();
            if gt.area() < min_area {
                continue;
            }
            total += 1;
            let gt = gt.decode().unwrap();
            let best = kept
                .iter()
                .map(|(m, c)| (iou(m, &gt), *c))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((v, caption)) if v >= 0.7 => {
                    found += 1;
                    let truth = region.attributes.as_ref().unwrap();
                    let a = attribute_agreement(caption, truth);
                    if a.colour && a.shape {
                        named += 1;
                    } else {
                        misses.push(format!(
                            "image {i}: {:?} captioned {caption:?}",
                            region.references[0]
                        ));
                    }
                }
                other => misses.push(format!(
                    "image {i}: {:?} not found (best IoU {:?})",
                    region.references[0],
                    other.map(|o| o.0)
                )),
            }
        }
    }
    (total, found, named, misses)
}

#[test]
fn anything_finds_and_names_the_objects_of_the_example_images() {
    let model = model_dir();
    let spec = match std::env::var("SCA_ANYTHING_SCENES") {
        Ok(s) => s,
        Err(_) => {
            let text = std::fs::read_to_string(model.join("examples/objects.json")).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            doc["generator"].as_str().unwrap().to_string()
        }
    };
    let sca = Sca::load(&model, Device::Cpu).unwrap();
    let official = AnythingConfig {
        decode: Decode::Greedy {
            max_new_tokens: sca.generation.default_max_new_tokens(),
        },
        ..Default::default()
    };
    let relaxed = AnythingConfig {
        pred_iou_thresh: RELAXED_PRED_IOU,
        stability_score_thresh: RELAXED_STABILITY,
        ..official.clone()
    };
    let mut rates = Vec::new();
    for (name, cfg) in [
        ("official filters", &official),
        ("relaxed filters", &relaxed),
    ] {
        let (total, found, named, misses) = measure(&sca, &spec, cfg);
        assert!(total >= 5, "too few objects to measure ({total})");
        let recall = found as f64 / total as f64;
        let naming = named as f64 / found.max(1) as f64;
        eprintln!(
            "{spec}, {name} (predicted IoU >= {}, stability >= {}): {found}/{total} objects \
             found ({:.1}%), {named}/{found} named correctly ({:.1}%); issue targets: found >= \
             90% ({}), named >= 85% ({})\n{}",
            cfg.pred_iou_thresh,
            cfg.stability_score_thresh,
            100.0 * recall,
            100.0 * naming,
            if recall >= 0.9 { "met" } else { "not met" },
            if naming >= 0.85 { "met" } else { "not met" },
            misses.join("\n")
        );
        rates.push((recall, naming));
    }
    let (recall, naming) = rates[1];
    assert!(recall >= RECALL_MIN, "recall {recall:.3} < {RECALL_MIN}");
    assert!(
        naming >= NAMING_MIN,
        "colour+shape naming {naming:.3} < {NAMING_MIN}"
    );
}
