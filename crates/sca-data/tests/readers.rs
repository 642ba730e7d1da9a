//! Readers on the small hand-written files under `tests/data/`, including malformed inputs.

use std::path::{Path, PathBuf};

use sca_data::coco::{CocoDataset, RefCocoDataset};
use sca_data::cocomask::{runs_from_polygon, Segmentation};
use sca_data::jsonl::{write_jsonl, JsonlDataset};
use sca_data::vg::{Split, VgDataset};
use sca_data::{open_spec, parse_spec, Dataset, Error};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

fn mask_rows(m: &[u8], w: usize) -> Vec<Vec<u8>> {
    m.chunks(w).map(|r| r.to_vec()).collect()
}

#[test]
fn vg_train_split_in_densecap_order() {
    let ds = VgDataset::open(&data("vg"), Split::Train).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.image_ids(), vec![3, 1]);
    // Image 3: EXIF orientation 6 turns the stored 10x4 JPEG into 4x10.
    let s = ds.get(0).unwrap();
    assert_eq!((s.image_id, s.width, s.height), (3, 4, 10));
    assert!(s.image.path().unwrap().ends_with("images/3.jpg"));
    let img = s.load_image().unwrap();
    assert_eq!((img.width(), img.height()), (4, 10));
    assert_eq!(s.regions.len(), 2);
    let r = &s.regions[0];
    assert_eq!(r.id, 301);
    assert_eq!(r.box_xywh, [1.0, 3.0, 2.5, 4.0]);
    assert_eq!(r.caption, "a tall tree");
    assert_eq!(r.references, vec!["a tall tree", "tree on a hill"]);
    assert!(r.mask.is_none() && r.attributes.is_none());

    let s = ds.get(1).unwrap();
    assert_eq!((s.image_id, s.width, s.height), (1, 8, 6));
    assert!(s.image.path().unwrap().ends_with("VG_100K/1.jpg"));
    assert_eq!(s.regions[0].caption, "a red ball");
    assert_eq!(s.regions[0].references, vec!["a red ball"]);
    assert_eq!(s.regions[0].box_xywh, [2.0, 1.0, 4.0, 3.0]);
    // Boxes are kept as stored; clamping happens when prompting.
    assert_eq!(s.regions[1].box_xywh, [-3.0, 0.0, 20.0, 2.0]);
    assert_eq!(s.regions[1].clamped_xyxy(8, 6), Some([0.0, 0.0, 8.0, 2.0]));
    assert!(matches!(
        ds.get(2),
        Err(Error::OutOfRange { index: 2, len: 2 })
    ));
}

#[test]
fn vg_test_and_all_splits() {
    let ds = VgDataset::open(&data("vg"), Split::Test).unwrap();
    assert_eq!(ds.image_ids(), vec![2]);
    let s = ds.get(0).unwrap();
    assert_eq!(s.regions[0].id, 900_100_184_613);
    assert_eq!((s.width, s.height), (5, 4));
    assert!(s.image.path().unwrap().ends_with("VG_100K_2/2.png"));
    let all = VgDataset::open(&data("vg"), Split::All).unwrap();
    assert_eq!(all.image_ids(), vec![1, 2, 3, 4]);
    assert_eq!(all.num_regions(), 5);
    // Image 4 has no file: the error names the id and the searched folders.
    let e = all.get(3).unwrap_err().to_string();
    assert!(e.contains("image 4 not found"), "{e}");
    // The spec parser opens the same thing, with the caller's default split.
    let ds = open_spec(&format!("vg:{}", data("vg").display()), Split::Train).unwrap();
    assert_eq!(ds.len(), 2);
    let ds = open_spec(
        &format!("vg:{},split=test", data("vg").display()),
        Split::Train,
    )
    .unwrap();
    assert_eq!(ds.get(0).unwrap().image_id, 2);
}

fn vg_files(regions: &str, splits: &str) -> sca_data::Result<VgDataset> {
    VgDataset::open_files(
        &data(regions),
        Some(&data(splits)),
        None,
        sca_data::vg::default_image_dirs(&data("vg")),
        Split::Train,
    )
}

#[test]
fn vg_malformed_inputs_name_file_and_position() {
    let e = vg_files("vg_bad/missing_phrase.json", "vg/densecap_splits.json").unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("vg_bad/missing_phrase.json"));
            assert_eq!(at, "[0].regions[1] (region_id 102)");
            assert!(msg.contains("phrase"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = vg_files("vg_bad/wrong_type.json", "vg/densecap_splits.json").unwrap_err();
    match &e {
        Error::Json {
            path,
            line,
            column,
            msg,
        } => {
            assert!(path.ends_with("vg_bad/wrong_type.json"));
            assert_eq!(*line, 3);
            assert!(*column > 30, "column {column}");
            assert!(msg.contains("invalid type"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = vg_files("vg_bad/truncated.json", "vg/densecap_splits.json").unwrap_err();
    assert!(
        matches!(&e, Error::Json { path, line: 1, .. } if path.ends_with("truncated.json")),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("truncated.json: line 1, column"),
        "{e}"
    );
    let e = vg_files(
        "vg/region_descriptions.json",
        "vg_bad/splits_unknown_id.json",
    )
    .unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("splits_unknown_id.json"));
            assert_eq!(at, "train[1]");
            assert!(msg.contains("image id 99"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A missing file is an I/O error naming it.
    let e = VgDataset::open(&data("nowhere"), Split::Train).unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path.ends_with("region_descriptions.json")));
}

#[test]
fn coco_categories_boxes_and_masks() {
    let expected: serde_json::Value = serde_json::from_str(
        r#"{
        "10": ["22310001O00O1O1O0", [[0,0,0,0,0,0,0,0],[0,1,1,1,1,1,1,1],[1,1,1,1,1,1,1,0],[1,1,1,1,1,1,0,0],[0,0,0,1,1,0,0,0],[0,0,0,0,0,0,0,0]]],
        "11": [":2d01_O04", [[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],[0,0,0,0,0,1,1,0],[0,0,0,0,0,1,1,0],[0,1,0,0,0,1,1,0],[0,1,0,0,0,0,0,0]]],
        "12": ["123<", [[0,0,1,1,1],[1,0,1,1,1],[1,1,1,1,1],[0,1,1,1,1]]],
        "13": ["922000O", [[0,0,0,0,0],[0,0,1,1,1],[0,0,1,1,1],[0,0,0,0,0]]]
    }"#,
    )
    .unwrap();
    let ds = CocoDataset::open(&data("coco/instances.json"), &data("coco/images")).unwrap();
    // Image 3 has only a crowd annotation: not a sample.
    assert_eq!(ds.len(), 2);
    let mut seen = 0;
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        let img = s.load_image().unwrap();
        assert_eq!(
            (img.width() as usize, img.height() as usize),
            (s.width, s.height)
        );
        for r in &s.regions {
            let exp = &expected[r.id.to_string()];
            let m = r.mask.as_ref().unwrap();
            // Same compressed string as pycocotools (annToRLE: frPyObjects + merge).
            assert_eq!(m.counts, exp[0].as_str().unwrap(), "annotation {}", r.id);
            let rows: Vec<Vec<u8>> = serde_json::from_value(exp[1].clone()).unwrap();
            assert_eq!(mask_rows(&m.decode().unwrap(), s.width), rows);
            assert_eq!(r.references, vec![r.caption.clone()]);
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
    let spec = format!(
        "coco:{},{}",
        data("coco/instances.json").display(),
        data("coco/images").display()
    );
    assert_eq!(open_spec(&spec, Split::Test).unwrap().len(), 2);
    let s = ds.get(0).unwrap();
    assert_eq!(s.regions[0].caption, "cat");
    assert_eq!(s.regions[1].caption, "traffic light");
    assert_eq!(s.regions[0].box_xywh, [-0.4, 0.8, 9.0, 3.9]);
}

#[test]
fn coco_polygons_match_pycocotools() {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("coco/polygon_cases.json")).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 45);
    for (i, c) in cases.iter().enumerate() {
        let h = c["h"].as_u64().unwrap() as usize;
        let w = c["w"].as_u64().unwrap() as usize;
        let polys: Vec<Vec<f64>> = serde_json::from_value(c["polygons"].clone()).unwrap();
        let rle = Segmentation::Polygons(polys).to_rle(h, w).unwrap();
        assert_eq!(rle.counts, c["counts"].as_str().unwrap(), "case {i}");
    }
    let far = Segmentation::Polygons(vec![vec![0.0, 0.0, 5e8, 0.0, 1.0, 1.0]]);
    assert!(far.to_rle(4, 4).unwrap_err().contains("beyond"));
    // Run lengths always cover the image.
    let runs = runs_from_polygon(&[0.0, 0.0, 100.0, 0.0, 50.0, 100.0], 10, 12);
    assert_eq!(runs.iter().sum::<u32>(), 120);
}

#[test]
fn coco_malformed_inputs() {
    let imgs = data("coco/images");
    let e = CocoDataset::open(&data("coco/bad_category.json"), &imgs).unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("bad_category.json"));
            assert_eq!(at, "annotations[1] (id 11)");
            assert!(msg.contains("category_id 7"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The polygon is converted lazily: the error names the annotation's segmentation.
    let ds = CocoDataset::open(&data("coco/bad_polygon.json"), &imgs).unwrap();
    let e = ds.get(0).unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("bad_polygon.json"));
            assert_eq!(at, "annotations[0] (id 10).segmentation");
            assert!(msg.contains("3 numbers"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = CocoDataset::open(&data("coco/bad_bbox.json"), &imgs).unwrap_err();
    match &e {
        Error::Json {
            path, line, msg, ..
        } => {
            assert!(path.ends_with("bad_bbox.json"));
            assert_eq!(*line, 5);
            assert!(msg.contains("invalid length 3"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn refcoco_refs_and_instances() {
    let imgs = data("coco/images");
    let ds = RefCocoDataset::open(
        &data("refcoco/refs.json"),
        &data("refcoco/instances.json"),
        &imgs,
        Some("testA"),
    )
    .unwrap();
    assert_eq!(ds.len(), 1);
    let s = ds.get(0).unwrap();
    assert_eq!((s.image_id, s.width, s.height), (581_857, 8, 6));
    assert_eq!(s.regions.len(), 2);
    let r = &s.regions[0];
    assert_eq!(r.id, 0);
    assert_eq!(r.caption, "the lady in blue");
    assert_eq!(r.references, vec!["the lady in blue", "woman left"]);
    assert_eq!(r.box_xywh, [1.0, 1.0, 3.0, 2.0]);
    let m = r.mask.as_ref().unwrap().decode().unwrap();
    // pycocotools: the square [1,4]x[1,3] covers columns 1..=3, rows 1..=2.
    let mut expect = vec![0u8; 48];
    for y in 1..3 {
        for x in 1..4 {
            expect[y * 8 + x] = 1;
        }
    }
    assert_eq!(m, expect);
    // A sentence without "sent" falls back to "raw".
    assert_eq!(s.regions[1].references, vec!["right guy"]);
    let all = RefCocoDataset::open(
        &data("refcoco/refs.json"),
        &data("refcoco/instances.json"),
        &imgs,
        None,
    )
    .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.get(1).unwrap().regions[0].caption, "man");
    // Through the spec (default split from the caller).
    let spec = format!(
        "refcoco:{},{},{}",
        data("refcoco/refs.json").display(),
        data("refcoco/instances.json").display(),
        imgs.display()
    );
    assert_eq!(open_spec(&spec, Split::Train).unwrap().len(), 1);
    assert_eq!(open_spec(&spec, Split::All).unwrap().len(), 2);
    assert_eq!(
        open_spec(&format!("{spec},split=testA"), Split::Train)
            .unwrap()
            .get(0)
            .unwrap()
            .image_id,
        581_857
    );

    let e = RefCocoDataset::open(
        &data("refcoco/refs_bad_ann.json"),
        &data("refcoco/instances.json"),
        &imgs,
        Some("val"),
    )
    .unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("refs_bad_ann.json"));
            assert_eq!(at, "[1] (ref_id 1)");
            assert!(msg.contains("ann_id 4242"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn jsonl_reads_relative_paths_masks_and_options() {
    let ds = JsonlDataset::open(&data("jsonl/data.jsonl")).unwrap();
    assert_eq!(ds.len(), 2);
    let s = ds.get(0).unwrap();
    assert_eq!((s.image_id, s.width, s.height), (0, 6, 5));
    assert_eq!(s.image.path().unwrap(), data("jsonl/imgs/one.png"));
    assert_eq!(s.regions[0].id, 0);
    assert_eq!(s.regions[0].references, vec!["a red thing"]);
    let r = &s.regions[1];
    assert_eq!((r.id, r.caption.as_str()), (77, "first"));
    assert_eq!(r.references, vec!["first", "second"]);
    assert_eq!(r.box_xywh, [0.5, 0.0, 2.25, 5.0]);
    let m = r.mask.as_ref().unwrap();
    assert_eq!(m.size, [5, 6]);
    assert_eq!(m.area(), 3 + 3);
    let s = ds.get(1).unwrap();
    assert_eq!((s.image_id, s.width, s.height), (42, 3, 7));
    assert_eq!(s.regions[0].caption, "whole image");
    assert_eq!(s.regions[0].attributes.as_ref().unwrap().colour, "red");
    assert_eq!(s.load_image().unwrap().height(), 7);

    // Round trip through the writer.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy.jsonl");
    write_jsonl(&out, &ds, &tmp.path().join("imgs")).unwrap();
    let back = JsonlDataset::open(&out).unwrap();
    for i in 0..ds.len() {
        let (a, b) = (ds.get(i).unwrap(), back.get(i).unwrap());
        assert_eq!(a.regions, b.regions);
        assert_eq!(
            (a.image_id, a.width, a.height),
            (b.image_id, b.width, b.height)
        );
        assert_eq!(a.image.path(), b.image.path());
    }
    let spec = parse_spec(&format!(
        "jsonl:{},limit=1",
        data("jsonl/data.jsonl").display()
    ))
    .unwrap();
    assert_eq!(spec.limit, Some(1));
    assert_eq!(spec.open(Split::Test).unwrap().len(), 1);
}

#[test]
fn jsonl_malformed_inputs_name_file_and_line() {
    let check_json = |f: &str, want_line: usize| {
        let e = JsonlDataset::open(&data(f)).unwrap_err();
        match &e {
            Error::Json { path, line, .. } => {
                assert!(path.ends_with(f));
                assert_eq!(*line, want_line, "{e}");
            }
            other => panic!("{f}: unexpected {other:?}"),
        }
        e.to_string()
    };
    let msg = check_json("jsonl/bad_syntax.jsonl", 3);
    assert!(msg.contains("bad_syntax.jsonl: line 3, column"), "{msg}");
    let msg = check_json("jsonl/unknown_key.jsonl", 1);
    assert!(msg.contains("unknown field `bbox`"), "{msg}");
    let check_format = |f: &str, want_at: &str, want_msg: &str| {
        let e = JsonlDataset::open(&data(f)).unwrap_err();
        match &e {
            Error::Format { path, at, msg } => {
                assert!(path.ends_with(f));
                assert_eq!(at, want_at);
                assert!(msg.contains(want_msg), "{msg}");
            }
            other => panic!("{f}: unexpected {other:?}"),
        }
    };
    check_format("jsonl/bad_box.jsonl", "line 2: regions[0]", "negative");
    check_format("jsonl/no_caption.jsonl", "line 1: regions[0]", "caption");
    // Mask errors surface when the sample is built, still naming the line.
    let ds = JsonlDataset::open(&data("jsonl/bad_mask.jsonl")).unwrap();
    let e = ds.get(0).unwrap_err();
    match &e {
        Error::Format { path, at, msg } => {
            assert!(path.ends_with("bad_mask.jsonl"));
            assert_eq!(at, "line 1: regions[0].mask");
            assert!(msg.contains("sum to 9"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn spec_errors() {
    for (spec, want) in [
        ("nothing", "expected KIND:ARGS"),
        ("foo:bar", "unknown kind"),
        ("vg:a,b", "vg takes DIR"),
        ("vg:dir,split=dev", "unknown split"),
        ("coco:only_one", "coco takes ANNOTATIONS.json,IMAGES_DIR"),
        ("synthetic:seed=1", "needs n=N"),
        ("synthetic:seed=1,n=2,size=8", "outside 64..=4096"),
        ("synthetic:seed=1,n=2,objects=3-2", "1 <= min <= max"),
        ("synthetic:seed=x,n=2", "not a non-negative integer"),
        ("synthetic:seed=1,n=2,colour=red", "unknown option"),
        ("jsonl:f,limit=1,limit=2", "given twice"),
    ] {
        let e = parse_spec(spec).unwrap_err();
        assert!(matches!(e, Error::Spec { .. }), "{spec}: {e:?}");
        assert!(e.to_string().contains(want), "{spec}: {e}");
    }
    let s = parse_spec("synthetic:seed=5,n=3,objects=2-3,first_id=100,noise=0").unwrap();
    let ds = s.open(Split::Train).unwrap();
    let smp = ds.get(2).unwrap();
    assert_eq!(smp.image_id, 102);
    assert!((2..=3).contains(&smp.regions.len()));
}
