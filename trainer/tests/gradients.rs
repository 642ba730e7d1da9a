//! Finite-difference check of the gradients on the tiny fixture model with every parameter
//! trainable: for each parameter group, the directional derivative along a random direction
//! from backprop must match the central difference of the loss. Covers the mixer, caption
//! queries, projection, task tokens, GPT-2 (LayerNorm, attention, dropout on), SAM's mask
//! decoder (caption path and mask losses) and SAM's image encoder.

mod common;

use std::sync::Arc;

use candle_core::{Tensor, Var};
use sca_core::Trace;
use sca_data::{open_spec, DataLoader, Split};
use trainer::losses::{dice_loss, sigmoid_focal_loss};
use trainer::step::{forward, gradients, StepInputs};
use trainer::train::{loader_config, Trainer};

/// A unit direction: half along the gradient (a derivative well above f32's resolution of the
/// loss), half random (so that a wrong gradient of the right size is still caught).
fn direction(v: &Var, g: &Tensor, seed: u64) -> Tensor {
    let mut rng = trainer::rng::SplitMix::new(seed);
    let n = v.elem_count();
    let unit = |d: Vec<f32>| -> Vec<f32> {
        let norm = d
            .iter()
            .map(|x| (x * x) as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-30) as f32;
        d.into_iter().map(|x| x / norm).collect()
    };
    let r = unit((0..n).map(|_| rng.normal() as f32).collect());
    let g = unit(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let d = unit(r.iter().zip(&g).map(|(a, b)| a + b).collect());
    Tensor::from_vec(d, v.shape(), v.device()).unwrap()
}

fn check(
    name: &str,
    var: &Var,
    grad: Option<&Tensor>,
    eps: f64,
    loss: &dyn Fn() -> f64,
    seed: u64,
) {
    let g = grad.unwrap_or_else(|| panic!("{name}: no gradient reached it"));
    let u = direction(var, g, seed);
    let analytic = (g * &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let base = var.as_tensor().copy().unwrap();
    var.set(&(&base + (&u * eps).unwrap()).unwrap()).unwrap();
    let plus = loss();
    var.set(&(&base - (&u * eps).unwrap()).unwrap()).unwrap();
    let minus = loss();
    var.set(&base).unwrap();
    let numeric = (plus - minus) / (2.0 * eps);
    eprintln!("{name}: analytic {analytic:.6e} numeric {numeric:.6e}");
    assert!(
        analytic.abs() > 1e-4,
        "{name}: directional derivative {analytic:e} is ~0: the gradient is cut"
    );
    assert!(
        (analytic - numeric).abs() <= 0.03 * analytic.abs().max(numeric.abs()) + 2e-4,
        "{name}: backprop {analytic:e} vs finite difference {numeric:e}"
    );
}

#[test]
fn gradients_match_finite_differences() {
    let cfg = common::tiny_config(
        "",
        "images_per_batch = 2\nregions_per_image = 3\nlsj = false",
        "",
        "all",
    );
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let lc = loader_config(&cfg, tr.image_size(), 1, true);
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let batch = loader.next_batch().unwrap();
    let inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    // Caption loss with GPT-2 dropout on (deterministic masks); no mask loss here (its IoU
    // target is a step function).
    let mut opts = tr.loss_options(0, true);
    opts.mask_loss_weight = None;
    assert!(opts.dropout.is_some());
    let vars = tr.store.trainable();
    let by_name = |n: &str| -> &Var {
        &vars
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("no trainable {n}"))
            .1
    };
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let loss_t = forward(&tr.model, &inputs, &opts).unwrap().total;
    let grads = gradients(&loss_t, &refs).unwrap();
    let grad_of = |n: &str| -> Option<&Tensor> {
        let i = vars.iter().position(|(k, _)| k == n).unwrap();
        grads[i].as_ref()
    };
    let loss = || forward(&tr.model, &inputs, &opts).unwrap().caption;
    let groups = [
        "mask_decoder.caption_tokens.weight",
        "task_tokens.weight",
        "language_project.weight",
        "language_project.bias",
        "mask_decoder.additional_transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.additional_transformer.layers.0.layer_norm1.weight",
        "mask_decoder.additional_transformer.layers.1.cross_attn_token_to_image.v_proj.weight",
        "mask_decoder.additional_transformer.layers.2.layer_norm4.bias",
        "mask_decoder.additional_transformer.final_attn_token_to_image.out_proj.weight",
        "mask_decoder.additional_transformer.layer_norm_final_attn.weight",
        "language_model.transformer.h.0.ln_1.weight",
        "language_model.transformer.h.0.attn.c_attn.weight",
        "language_model.transformer.h.1.mlp.c_fc.weight",
        "language_model.transformer.ln_f.bias",
        "language_model.transformer.wpe.weight",
        "language_model.transformer.wte.weight",
        "mask_decoder.transformer.layers.1.layer_norm3.weight",
        "mask_decoder.transformer.layers.0.cross_attn_image_to_token.k_proj.weight",
        "mask_decoder.iou_token.weight",
        "prompt_encoder.point_embed.2.weight",
        "vision_encoder.neck.layer_norm2.weight",
        "vision_encoder.layers.0.layer_norm1.weight",
        "vision_encoder.layers.1.attn.qkv.weight",
        "vision_encoder.layers.2.attn.rel_pos_h",
    ];
    for (i, name) in groups.iter().enumerate() {
        check(
            name,
            by_name(name),
            grad_of(name),
            1e-2,
            &loss,
            100 + i as u64,
        );
    }

    // SAM's mask head through the (smooth) focal + dice losses.
    let mask_loss = || -> Tensor {
        let mut trace = Trace::default();
        let mut total: Option<Tensor> = None;
        let side = batch.mask_size;
        let gt = batch.masks.as_ref().expect("synthetic scenes have masks");
        let r = batch.regions_per_image;
        for (k, (px, prompts)) in inputs.pixel_values.iter().zip(&inputs.prompts).enumerate() {
            let emb = tr.model.embed_pixels(px, &mut trace).unwrap();
            let out = tr
                .model
                .decode_prompts(&emb, prompts, false, &mut trace)
                .unwrap();
            let logits = out
                .decoder
                .masks
                .squeeze(1)
                .unwrap()
                .flatten_from(1)
                .unwrap();
            let t: Vec<f32> = gt[k * r * side * side..(k + 1) * r * side * side]
                .iter()
                .map(|&v| v as f32)
                .collect();
            let t = Tensor::from_vec(t, logits.shape(), logits.device()).unwrap();
            let l = ((sigmoid_focal_loss(&logits, &t, 0.25, 2.0).unwrap() * 20.0).unwrap()
                + dice_loss(&logits, &t).unwrap())
            .unwrap()
            .mean_all()
            .unwrap();
            total = Some(match total {
                Some(x) => (x + l).unwrap(),
                None => l,
            });
        }
        total.unwrap()
    };
    let ml = mask_loss();
    let mgrads = gradients(&ml, &refs).unwrap();
    let mgrad_of = |n: &str| -> Option<&Tensor> {
        let i = vars.iter().position(|(k, _)| k == n).unwrap();
        mgrads[i].as_ref()
    };
    let mloss = || mask_loss().to_scalar::<f32>().unwrap() as f64;
    for (i, name) in [
        "mask_decoder.output_hypernetworks_mlps.0.proj_out.weight",
        "mask_decoder.upscale_conv1.weight",
        "mask_decoder.upscale_layer_norm.weight",
        "mask_decoder.upscale_conv2.bias",
        "mask_decoder.mask_tokens.weight",
    ]
    .iter()
    .enumerate()
    {
        check(
            name,
            by_name(name),
            mgrad_of(name),
            1e-2,
            &mloss,
            200 + i as u64,
        );
    }
}
