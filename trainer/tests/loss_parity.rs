//! The trainer's forward pass (from pixels, with every weight a tracked `Var`, dropout off)
//! gives the official teacher-forced loss of each parity fixture within 1e-4.

mod common;

use candle_core::{DType, Device, Tensor};
use sca_core::{ImageEmbedding, Point, Prompt, Sca};
use trainer::model::ModelSetup;
use trainer::params::TrainableSet;
use trainer::step::{forward, LossOptions, StepInputs};

#[test]
fn training_forward_matches_the_official_loss() {
    for fixture in [
        "sca_a_point_single",
        "sca_b_box_multimask",
        "sca_c_points_pos_neg",
    ] {
        let dir = common::parity_dir().join(fixture);
        let sca = Sca::load(&dir, Device::Cpu).unwrap();
        let inp =
            candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap())
                .unwrap();
        let want = info["teacher_forcing_loss"].as_f64().unwrap();

        let img = inp["image"].to_dtype(DType::U8).unwrap();
        let (h, w, _) = img.dims3().unwrap();
        let rgb = image::RgbImage::from_raw(
            w as u32,
            h as u32,
            img.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        )
        .unwrap();
        let pre = sca.preprocess(&rgb).unwrap();
        let emb = ImageEmbedding {
            embedding: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            original_size: pre.original_size,
            resized_size: pre.resized_size,
        };
        let prompts: Vec<Prompt> = if let Some(b) = inp.get("boxes") {
            b.to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|b| Prompt {
                    box_: Some([b[0], b[1], b[2], b[3]]),
                    ..Default::default()
                })
                .collect()
        } else {
            let pts = inp["points"].to_vec3::<f32>().unwrap();
            let labels = inp["point_labels"]
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap();
            pts.iter()
                .zip(&labels)
                .map(|(p, l)| Prompt {
                    points: p
                        .iter()
                        .zip(l)
                        .map(|(xy, &label)| Point {
                            x: xy[0],
                            y: xy[1],
                            label,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect()
        };
        let scaled = prompts
            .iter()
            .map(|p| sca.scale_prompt(&emb, p).unwrap())
            .collect();
        let ids = inp["input_ids"].to_dtype(DType::U32).unwrap();
        let am = inp["attention_mask"].to_dtype(DType::U32).unwrap();
        let n = ids.dim(0).unwrap();
        let n_tokens = am.sum_all().unwrap().to_scalar::<u32>().unwrap() as usize;
        let s = pre.pad_size;
        let inputs = StepInputs {
            pixel_values: vec![Tensor::from_vec(
                pre.pixel_values.clone(),
                (1, 3, s, s),
                &Device::Cpu,
            )
            .unwrap()],
            prompts: vec![scaled],
            multimask: Vec::new(),
            input_ids: ids,
            attention_mask: am,
            gt_masks: None,
            row_keys: (0..n as u64).collect(),
            n_tokens,
            n_regions: n,
        };
        for set in ["mixer", "all"] {
            let mut setup = ModelSetup::from_checkpoint(&dir, None).unwrap();
            let (model, store) = setup
                .build(TrainableSet::parse(set).unwrap(), &Device::Cpu)
                .unwrap();
            assert!(store.trainable_count() > 0);
            let l = forward(
                &model,
                &inputs,
                &LossOptions {
                    label_smoothing: 0.1,
                    caption_loss_weight: 1.0,
                    dropout: None,
                    mask_loss_weight: None,
                    pixel_aux: None,
                },
            )
            .unwrap();
            assert!(
                (l.caption - want).abs() <= 1e-4 * want.abs(),
                "{fixture} ({set}): loss {} vs official {want}",
                l.caption
            );
        }
    }
}
