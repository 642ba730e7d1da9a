//! Training with point prompts and SAM's multimask outputs (`data.point_prompts`,
//! `optim.mask_outputs`), and from scratch with a non-default patch size.

mod common;

use std::sync::Arc;

use candle_core::Var;
use sca_data::{open_spec, DataLoader, Split};
use trainer::step::{forward, gradients, MaskOutputs, PointAt, PromptMix, StepInputs};
use trainer::train::{loader_config, Trainer};

fn setup() -> (Trainer, sca_data::Batch) {
    let cfg = common::tiny_config(
        "",
        "images_per_batch = 2\nregions_per_image = 3\nlsj = false",
        "",
        "all",
    );
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let mut lc = loader_config(&cfg, tr.image_size(), 1, true);
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let batch = loader.next_batch().unwrap();
    assert!(batch.images == 2 && batch.regions_per_image >= 2);
    (tr, batch)
}

#[test]
fn mixed_outputs_keep_the_caption_loss_and_train_the_right_tokens() {
    let (tr, batch) = setup();
    let opts = tr.loss_options(0, false);
    assert!(opts.mask_loss_weight.is_some());
    let base = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    let l_single = forward(&tr.model, &base, &opts).unwrap();
    let vars = tr.store.trainable();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let hyper_grad = |inputs: &StepInputs, j: usize| -> bool {
        let l = forward(&tr.model, inputs, &opts).unwrap();
        let g = gradients(&l.total, &refs).unwrap();
        let name = format!("mask_decoder.output_hypernetworks_mlps.{j}.layers.0.weight");
        let i = vars
            .iter()
            .position(|(k, _)| k.starts_with(&name[..name.len() - 6]) && k.ends_with("weight"))
            .unwrap_or_else(|| panic!("no {name}"));
        g[i].as_ref()
            .map(|t| {
                t.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
            .unwrap_or(false)
    };
    assert!(hyper_grad(&base, 0) && !hyper_grad(&base, 1));

    // The caption does not depend on which mask outputs are decoded: decoding the regions in
    // two groups must give back the prefix in row order.
    for (outputs, seed) in [
        (MaskOutputs::Both, 1),
        (MaskOutputs::Both, 2),
        (MaskOutputs::Multimask, 1),
    ] {
        let mut inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
        inputs
            .mix_prompts(
                &PromptMix {
                    point_prob: 0.0,
                    point_at: PointAt::Centre,
                    outputs,
                    seed,
                },
                3,
            )
            .unwrap();
        let l = forward(&tr.model, &inputs, &opts).unwrap();
        assert!(
            (l.caption - l_single.caption).abs() <= 1e-5 * l_single.caption.abs(),
            "{outputs:?}: caption loss {} vs {}",
            l.caption,
            l_single.caption
        );
        let m = l.mask.unwrap();
        assert!(m.is_finite() && m > 0.0);
        if outputs == MaskOutputs::Multimask {
            assert!(!hyper_grad(&inputs, 0) && hyper_grad(&inputs, 1) && hyper_grad(&inputs, 3));
        }
    }

    // Point prompts change the prompts (and so the loss), deterministically.
    let mix = PromptMix {
        point_prob: 0.5,
        point_at: PointAt::Centre,
        outputs: MaskOutputs::Both,
        seed: 7,
    };
    let mut a = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    let mut b = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    a.mix_prompts(&mix, 5).unwrap();
    b.mix_prompts(&mix, 5).unwrap();
    assert_eq!(a.prompts, b.prompts);
    assert_eq!(a.multimask, b.multimask);
    let all: Vec<_> = a.prompts.iter().flatten().collect();
    let points = all.iter().filter(|p| p.box_.is_none()).count();
    let mut many = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    many.mix_prompts(
        &PromptMix {
            point_prob: 1.0,
            ..mix
        },
        5,
    )
    .unwrap();
    for (p, q) in many.prompts.iter().flatten().zip(&base.prompts.concat()) {
        let [x1, y1, x2, y2] = q.box_.unwrap();
        assert_eq!(p.points, vec![((x1 + x2) / 2.0, (y1 + y2) / 2.0)]);
        assert_eq!(p.labels, vec![1]);
    }
    eprintln!("{points} of {} regions prompted with a point", all.len());
    let l = forward(&tr.model, &many, &opts).unwrap();
    assert!(l.caption.is_finite() && (l.caption - l_single.caption).abs() > 1e-6);

    // Points drawn in the mask: every point lies on a pixel of its region's ground-truth mask,
    // and they are not all the box centre.
    let mut inmask = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    inmask
        .mix_prompts(
            &PromptMix {
                point_prob: 1.0,
                point_at: PointAt::InMask,
                ..mix
            },
            5,
        )
        .unwrap();
    let (gt, idx) = inmask.gt_masks.clone().unwrap();
    let m = gt.dim(1).unwrap();
    let side = inmask.pixel_values[0].dim(3).unwrap() as f64;
    let gt = gt.to_vec3::<f32>().unwrap();
    let rows = idx.to_vec1::<u32>().unwrap();
    let mut off_centre = 0;
    for (row, (p, q)) in inmask
        .prompts
        .iter()
        .flatten()
        .zip(&base.prompts.concat())
        .enumerate()
    {
        let (x, y) = p.points[0];
        let k = rows.iter().position(|&r| r as usize == row).unwrap();
        let (mx, my) = (
            (x / side * m as f64) as usize,
            (y / side * m as f64) as usize,
        );
        assert_eq!(
            gt[k][my][mx], 1.0,
            "row {row}: point ({x}, {y}) is off its mask"
        );
        let [x1, y1, x2, y2] = q.box_.unwrap();
        off_centre += usize::from((x, y) != ((x1 + x2) / 2.0, (y1 + y2) / 2.0));
    }
    assert!(off_centre > 0);
    let l = forward(&tr.model, &inmask, &opts).unwrap();
    assert!(l.caption.is_finite() && l.mask.unwrap().is_finite());
}

/// From scratch (`init = "config"`) with patch 8: the ground-truth masks follow the model's
/// low-resolution mask side (4x the grid, not S / 4), and `positional_embedding_scale` sets
/// the Fourier buffer.
#[test]
fn from_scratch_with_patch_8_trains_the_masks() {
    let p = common::parity_dir();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(p.join("sca_a_point_single/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["vision_config"]["patch_size"] = 8.into();
    cfg["prompt_encoder_config"]["patch_size"] = 8.into();
    cfg["prompt_encoder_config"]["image_embedding_size"] = 16.into();
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let toml = format!(
        r#"
[model]
init = "config"
config = "{}"
tokenizer = "{}"
trainable = "all"
positional_embedding_scale = 1.0

[data]
train = "synthetic:seed=5,n=8,size=128,objects=2-3"
caption = "first"
point_prompts = 0.5
images_per_batch = 2
regions_per_image = 2
lsj = false

[optim]
max_steps = 2
warmup_steps = 1
mask_outputs = "both"

[train]
progress = false
checkpoint_every = 0

[eval]
every = 0
"#,
        cfg_path.display(),
        p.join("tokenizer").display()
    );
    let cfg = trainer::config::TrainConfig::from_toml_str(&toml, dir.path()).unwrap();
    let out = dir.path().join("run");
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    assert_eq!(tr.mask_size(), 64);
    let pe = tr
        .store
        .snapshot()
        .unwrap()
        .remove("shared_image_embedding.positional_embedding")
        .unwrap();
    let sd = pe
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((0.5..2.0).contains(&sd), "Fourier scale {sd}");
    drop(tr);
    let summary = trainer::train::fit(trainer::train::FitOptions {
        config: cfg,
        out: out.clone(),
        resume: None,
        stop_after: None,
    })
    .unwrap();
    assert_eq!(summary.steps, 2);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert!(log.lines().all(|l| l.contains("\"mask_loss\"")));
}
