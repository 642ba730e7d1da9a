//! The batch loader: resume equivalence, epoch order, collation, region sampling, errors.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use sca_core::masks::CocoRle;
use sca_core::tokenizer::Tokenizer;
use sca_data::synthetic::{SyntheticConfig, SyntheticDataset};
use sca_data::{
    CaptionChoice, DataLoader, Dataset, Error, ImageSource, LoaderConfig, LoaderState, LsjConfig,
    Region, Sample, VecDataset,
};

fn tokenizer() -> Arc<Tokenizer> {
    let dir = std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
        .join("tokenizer");
    Arc::new(Tokenizer::from_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "GPT-2 tokenizer fixture at {} ({e}); set SCA_PARITY_DIR",
            dir.display()
        )
    }))
}

fn synthetic(n: usize, size: usize) -> Arc<dyn Dataset> {
    Arc::new(
        SyntheticDataset::new(SyntheticConfig {
            seed: 7,
            n,
            size,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn region(id: u64, b: [f32; 4], caption: &str) -> Region {
    Region {
        id,
        box_xywh: b,
        caption: caption.into(),
        references: vec![caption.into(), format!("{caption} again")],
        mask: None,
        attributes: None,
    }
}

fn sample(id: u64, w: u32, h: u32, regions: Vec<Region>) -> Sample {
    Sample {
        image: ImageSource::Rgb(Arc::new(RgbImage::from_pixel(w, h, Rgb([10, 200, 30])))),
        width: w as usize,
        height: h as usize,
        regions,
        image_id: id,
    }
}

#[test]
fn resume_continues_the_stream_exactly() {
    let tok = tokenizer();
    let ds = synthetic(10, 96);
    let mut cfg = LoaderConfig::train(64);
    cfg.lsj = Some(LsjConfig::official(64));
    cfg.images_per_batch = 3; // 4 batches per epoch (3, 3, 3, 1)
    cfg.prefetch = 3;
    // Uninterrupted run: 9 batches (crosses two epoch boundaries).
    let mut a = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), 1234).unwrap();
    let mut run = Vec::new();
    let mut states = Vec::new();
    for _ in 0..9 {
        run.push(a.next_batch().unwrap());
        states.push(a.state());
    }
    // After the last batch of an epoch the state points at the next epoch's start.
    assert_eq!((states[3].epoch, states[3].position), (1, 0));
    assert_eq!((run[3].images, run[3].epoch), (1, 0));
    assert_eq!(run[4].epoch, 1);
    assert_eq!(states[8].batches, 9);
    // Interrupted after 4 batches: the state goes through JSON (as in a checkpoint) and a
    // fresh loader (without prefetch) continues with batches 5..9.
    let json = serde_json::to_string(&states[3]).unwrap();
    let restored: LoaderState = serde_json::from_str(&json).unwrap();
    let mut cfg_b = cfg.clone();
    cfg_b.prefetch = 0;
    let mut b = DataLoader::new(ds.clone(), tok.clone(), cfg_b, 1234).unwrap();
    b.restore(restored).unwrap();
    for (k, expected) in run.iter().enumerate().skip(4) {
        let got = b.next_batch().unwrap();
        assert_eq!(&got, expected, "batch {k}");
        assert_eq!(b.state(), states[k]);
    }
    // Restoring a loader that already prefetched ahead also works.
    a.restore(states[1].clone()).unwrap();
    assert_eq!(a.next_batch().unwrap(), run[2]);
    // Another seed gives another stream.
    let mut c = DataLoader::new(ds, tok, cfg, 99).unwrap();
    assert_ne!(c.next_batch().unwrap().pixel_values, run[0].pixel_values);
}

#[test]
fn epochs_visit_every_image_once_in_a_seeded_order() {
    let tok = tokenizer();
    let ds = synthetic(9, 64);
    let mut cfg = LoaderConfig::train(64);
    cfg.prefetch = 0;
    let order = |seed: u64, cfg: &LoaderConfig| {
        let mut l = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), seed).unwrap();
        let mut epochs = vec![Vec::new(), Vec::new()];
        for _ in 0..18 {
            let b = l.next_batch().unwrap();
            epochs[b.epoch as usize].push(b.dataset_indices[0]);
        }
        epochs
    };
    let e = order(5, &cfg);
    for ep in &e {
        assert_eq!(
            ep.iter().copied().collect::<HashSet<_>>().len(),
            9,
            "{ep:?}"
        );
    }
    assert_ne!(e[0], e[1]);
    assert_eq!(order(5, &cfg), e);
    assert_ne!(order(6, &cfg)[0], e[0]);
    cfg.shuffle = false;
    assert_eq!(order(5, &cfg)[0], (0..9).collect::<Vec<_>>());
}

#[test]
fn eval_batches_keep_all_regions_in_order_and_scale_boxes() {
    let tok = tokenizer();
    // 100x50 image into S=64: resized to (32, 64), factor 0.64.
    let mut mask = vec![0u8; 50 * 100];
    for y in 10..30 {
        for x in 20..60 {
            mask[y * 100 + x] = 1;
        }
    }
    let mut r0 = region(1, [20.0, 10.0, 40.0, 20.0], "a green field");
    r0.mask = Some(CocoRle::encode(&mask, 50, 100));
    let ds = VecDataset {
        samples: vec![
            sample(
                7,
                100,
                50,
                vec![
                    r0,
                    region(2, [90.0, -5.0, 30.0, 10.0], "edge"),
                    region(3, [0.0, 0.0, 0.0, 5.0], "empty"),
                ],
            ),
            sample(
                8,
                30,
                60,
                vec![region(4, [3.0, 6.0, 9.0, 12.0], "tall one")],
            ),
        ],
    };
    let mut cfg = LoaderConfig::eval(64);
    cfg.images_per_batch = 2;
    let mut l = DataLoader::new(Arc::new(ds), tok.clone(), cfg, 0).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(
        (b.images, b.regions_per_image, b.image_size, b.mask_size),
        (2, 1, 64, 16)
    );
    assert_eq!(b.image_ids, vec![7, 8]);
    assert_eq!(b.original_sizes, vec![(50, 100), (60, 30)]);
    assert_eq!(b.resized_sizes, vec![(32, 64), (64, 32)]);
    assert_eq!(b.pixel_values.len(), 2 * 3 * 64 * 64);
    // Truncated to the smallest region count (1): region 1 of image 7, region 4 of image 8.
    assert_eq!(b.region_ids, vec![1, 4]);
    assert_eq!(b.captions, vec!["a green field", "tall one"]);
    let close = |a: [f64; 4], e: [f64; 4]| a.iter().zip(e).all(|(x, y)| (x - y).abs() < 1e-9);
    assert!(
        close(b.boxes[0], [12.8, 6.4, 38.4, 19.2]),
        "{:?}",
        b.boxes[0]
    );
    let f = 64.0 / 60.0;
    assert!(
        close(b.boxes[1], [3.0 * f, 6.0 * f, 12.0 * f, 18.0 * f]),
        "{:?}",
        b.boxes[1]
    );
    // Tokens: encode_caption(.., 18) + right padding with 50256 and the attention mask.
    let ids0 = tok.encode_caption("a green field", 18).unwrap();
    let ids1 = tok.encode_caption("tall one", 18).unwrap();
    let l_max = ids0.len().max(ids1.len());
    assert_eq!(b.seq_len, l_max);
    let row = |k: usize| &b.input_ids[k * l_max..(k + 1) * l_max];
    assert_eq!(&row(0)[..ids0.len()], &ids0[..]);
    assert!(row(1)[ids1.len()..].iter().all(|&t| t == 50256));
    let am: Vec<u32> = b.attention_mask[l_max..].to_vec();
    assert_eq!(am.iter().sum::<u32>() as usize, ids1.len());
    // The mask, in the 16x16 low-res frame of the padded 64x64 input: x in [20,60)*0.64/4,
    // y in [10,30)*0.64/4 -> columns 3..=8, rows 1..=4 (nearest sampling of pixel centres).
    assert_eq!(b.has_mask, vec![true, false]);
    let m = b.masks.as_ref().unwrap();
    assert_eq!(m.len(), 2 * 16 * 16);
    let on: Vec<(usize, usize)> = (0..256)
        .filter(|&p| m[p] != 0)
        .map(|p| (p / 16, p % 16))
        .collect();
    let rows: HashSet<usize> = on.iter().map(|p| p.0).collect();
    let cols: HashSet<usize> = on.iter().map(|p| p.1).collect();
    assert_eq!(rows, (1..=4).collect());
    assert_eq!(cols, (3..=8).collect());
    assert!(m[256..].iter().all(|&v| v == 0));
    // Pixels: the padding below the 32 resized rows of image 7 is zero.
    assert_eq!(b.pixel_values[40 * 64 + 5], 0.0);
}

#[test]
fn training_samples_sixteen_nonempty_regions() {
    let tok = tokenizer();
    let mut regions = Vec::new();
    for k in 0..30u64 {
        let x = (k as f32) * 5.0 - 20.0;
        regions.push(region(k, [x, 4.0, 6.0, 6.0], &format!("thing {k}")));
    }
    let ds: Arc<dyn Dataset> = Arc::new(VecDataset {
        samples: vec![sample(1, 100, 40, regions)],
    });
    let mut cfg = LoaderConfig::train(128);
    cfg.prefetch = 0;
    let mut l = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), 3).unwrap();
    let mut seen_captions = HashSet::new();
    for _ in 0..6 {
        let b = l.next_batch().unwrap();
        assert_eq!(b.regions_per_image, 16);
        for (k, bx) in b.boxes.iter().enumerate() {
            // clamped to the image, scaled into the 128 frame (factor 1.28), never empty
            assert!(
                bx[0] >= 0.0 && bx[2] <= 128.0 && bx[2] - bx[0] > 1e-5,
                "{bx:?}"
            );
            let id = b.region_ids[k];
            // x = 5k - 20, w = 6: regions 3..=23 overlap the 100-pixel-wide image.
            assert!((3..=23).contains(&id), "region {id} is outside the image");
            let c = &b.captions[k];
            assert!(c == &format!("thing {id}") || c == &format!("thing {id} again"));
            seen_captions.insert(c.clone());
        }
        // A random permutation: not the file order.
        let ids: Vec<u64> = b.region_ids.clone();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_ne!(ids, sorted);
    }
    // Captions are drawn among the references.
    assert!(seen_captions.iter().any(|c| c.ends_with("again")));
    assert!(seen_captions.iter().any(|c| !c.ends_with("again")));
    // With CaptionChoice::Caption, the `caption` field is used.
    cfg.caption = CaptionChoice::Caption;
    let mut l = DataLoader::new(ds, tok, cfg, 3).unwrap();
    assert!(l
        .next_batch()
        .unwrap()
        .captions
        .iter()
        .all(|c| !c.ends_with("again")));
}

#[test]
fn images_without_usable_regions_are_skipped() {
    let tok = tokenizer();
    let ds = Arc::new(VecDataset {
        samples: vec![
            sample(
                1,
                20,
                20,
                vec![region(1, [30.0, 30.0, 5.0, 5.0], "outside")],
            ),
            sample(2, 20, 20, vec![region(2, [1.0, 1.0, 5.0, 5.0], "inside")]),
        ],
    });
    let mut cfg = LoaderConfig::train(32);
    cfg.shuffle = false;
    cfg.prefetch = 0;
    let mut l = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), 0).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.image_ids, vec![2]);
    assert_eq!((l.state().epoch, l.state().position), (1, 0));
    // A dataset where nothing is usable is an error, not an endless loop.
    let bad = Arc::new(VecDataset {
        samples: vec![sample(
            1,
            20,
            20,
            vec![region(1, [30.0, 30.0, 5.0, 5.0], "outside")],
        )],
    });
    let mut l = DataLoader::new(bad, tok, cfg, 0).unwrap();
    let e = l.next_batch().unwrap_err();
    assert!(e.to_string().contains("no image"), "{e}");
}

#[test]
fn load_errors_stop_or_are_skipped() {
    let tok = tokenizer();
    let missing = Sample {
        image: ImageSource::Path(PathBuf::from("/nonexistent/sca-data-test.png")),
        width: 10,
        height: 10,
        regions: vec![region(1, [1.0, 1.0, 2.0, 2.0], "x")],
        image_id: 1,
    };
    let ds = Arc::new(VecDataset {
        samples: vec![
            missing,
            sample(2, 20, 20, vec![region(2, [1.0, 1.0, 5.0, 5.0], "ok")]),
        ],
    });
    let mut cfg = LoaderConfig::train(32);
    cfg.shuffle = false;
    for prefetch in [0, 2] {
        cfg.prefetch = prefetch;
        cfg.skip_errors = false;
        let mut l = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), 0).unwrap();
        let before = l.state();
        let e = l.next_batch().unwrap_err();
        assert!(matches!(e, Error::Image { .. }), "{e:?}");
        assert!(e.to_string().contains("sca-data-test.png"), "{e}");
        assert_eq!(l.state(), before);
        cfg.skip_errors = true;
        let mut l = DataLoader::new(ds.clone(), tok.clone(), cfg.clone(), 0).unwrap();
        let b = l.next_batch().unwrap();
        assert_eq!(b.image_ids, vec![2]);
        assert_eq!(l.state().skipped_images, 1);
    }
    // A state from another dataset is refused.
    let mut l = DataLoader::new(ds, tok, cfg, 0).unwrap();
    let mut st = l.state();
    st.dataset_len = 5;
    assert!(matches!(l.restore(st), Err(Error::State(_))));
}

#[test]
fn config_is_validated() {
    let tok = tokenizer();
    let ds = synthetic(2, 64);
    let mut cfg = LoaderConfig::train(64);
    cfg.lsj = Some(LsjConfig::official(1024));
    assert!(DataLoader::new(ds.clone(), tok.clone(), cfg, 0).is_err());
    let mut cfg = LoaderConfig::train(64);
    cfg.images_per_batch = 0;
    assert!(DataLoader::new(ds.clone(), tok.clone(), cfg, 0).is_err());
    let empty: Arc<dyn Dataset> = Arc::new(VecDataset::default());
    assert!(DataLoader::new(empty, tok, LoaderConfig::train(64), 0).is_err());
}
