//! `trainer bench`: training throughput (regions/s) of a model built from a config with random
//! weights (speed does not depend on the values): one image with R box prompts and
//! teacher-forced captions per step, the official recipe's step (forward, backward, clipping,
//! AdamW) for the chosen trainable set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use sca_core::config::ScaConfig;
use sca_core::sam::prompt_encoder::ScaledPrompt;
use sca_core::Trace;
use serde::Serialize;

use crate::optim::{clip_grad_norm, AdamW, AdamWParams};
use crate::params::{ParamStore, RandomInit, Source, TrainableSet};
use crate::rng::SplitMix;
use crate::step::{forward, gradients, LossOptions, StepInputs};
use crate::train::parse_device;
use crate::{Error, Result};

/// Arguments of `trainer bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// An official-layout config.json (e.g. ../shared/bench/sca-vitb-gpt2.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Regions (box prompts) per image.
    #[arg(long, default_value_t = 16)]
    pub regions: usize,
    /// Caption tokens per region (+ EOS).
    #[arg(long, default_value_t = 12)]
    pub caption_tokens: usize,
    /// Timed steps (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Trainable set (`mixer`, `+lm`, `+sam_decoder`, `all`).
    #[arg(long, default_value = "mixer")]
    pub trainable: String,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// GPT-2 dropout on (as in training).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub dropout: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The measured numbers.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub device: String,
    pub trainable: String,
    pub trainable_params: usize,
    pub regions_per_step: usize,
    /// Median seconds of the SAM image encoder alone (frozen: no graph).
    pub encoder_s: f64,
    /// Median seconds of a whole step (encoder, decoder, mixer, LM, backward, AdamW).
    pub step_s: f64,
    /// `regions_per_step / step_s`.
    pub regions_per_s: f64,
    /// Regions/s with the encoder excluded (image embeddings cached, possible when SAM's
    /// encoder is frozen and there is no augmentation).
    pub regions_per_s_without_encoder: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark.
pub fn bench(args: &BenchArgs) -> Result<BenchResult> {
    let device = parse_device(&args.device)?;
    let config = ScaConfig::from_file(&args.config)?;
    let trainable = TrainableSet::parse(&args.trainable)?;
    let init = RandomInit {
        seed: 0,
        initializer_range: 0.02,
        gpt2_layers: config.text_config.n_layer,
        vision_hidden: config.vision_config.hidden_size,
        positional_embedding_scale: None,
        torch_defaults: false,
    };
    let (model, store) = ParamStore::build(
        &config,
        Source {
            tensors: BTreeMap::new(),
            init_missing: Some((init, |_| true)),
            origin: args.config.display().to_string(),
        },
        trainable,
        &device,
    )?;
    let s = config.vision_config.image_size;
    let r = args.regions.max(1);
    let l = args.caption_tokens + 1;
    let mut rng = SplitMix::new(7);
    let pixels: Vec<f32> = (0..3 * s * s).map(|_| rng.normal() as f32).collect();
    let prompts: Vec<ScaledPrompt> = (0..r)
        .map(|_| {
            let x = rng.uniform() * s as f64 * 0.7;
            let y = rng.uniform() * s as f64 * 0.7;
            let w = (0.05 + rng.uniform() * 0.25) * s as f64;
            ScaledPrompt {
                points: vec![],
                labels: vec![],
                box_: Some([x, y, x + w, y + w]),
            }
        })
        .collect();
    let vocab = config.text_config.vocab_size as u64;
    let ids: Vec<u32> = (0..r * l)
        .map(|k| {
            if k % l == l - 1 {
                config.text_config.eos_token_id
            } else {
                (rng.next_u64() % vocab) as u32
            }
        })
        .collect();
    let inputs = StepInputs {
        pixel_values: vec![Tensor::from_vec(pixels, (1, 3, s, s), &device)?],
        prompts: vec![prompts],
        input_ids: Tensor::from_vec(ids, (r, l), &device)?,
        attention_mask: Tensor::ones((r, l), candle_core::DType::U32, &device)?,
        multimask: Vec::new(),
        gt_masks: None,
        row_keys: (0..r as u64).collect(),
        n_tokens: r * l,
        n_regions: r,
    };
    let t = &config.text_config;
    let opts = LossOptions {
        label_smoothing: 0.1,
        caption_loss_weight: 1.0,
        dropout: args
            .dropout
            .then_some((1, t.embd_pdrop, t.attn_pdrop, t.resid_pdrop)),
        mask_loss_weight: None,
        pixel_aux: None,
    };
    let mut opt = AdamW::new(store.trainable(), AdamWParams::default())?;
    let vars: Vec<candle_core::Var> = opt.vars().into_iter().cloned().collect();
    let refs: Vec<&candle_core::Var> = vars.iter().collect();
    let sync = |d: &Device| -> Result<()> { Ok(d.synchronize()?) };
    let (mut enc, mut steps) = (Vec::new(), Vec::new());
    for i in 0..=args.steps.max(1) {
        let t0 = Instant::now();
        let e = model.embed_pixels(&inputs.pixel_values[0], &mut Trace::default())?;
        sync(&device)?;
        let te = t0.elapsed().as_secs_f64();
        drop(e);
        let t1 = Instant::now();
        let losses = forward(&model, &inputs, &opts)?;
        let mut g = gradients(&losses.total, &refs)?;
        clip_grad_norm(&mut g, 1.0)?;
        opt.step(&g, 1e-4)?;
        sync(&device)?;
        let ts = t1.elapsed().as_secs_f64();
        if !losses.caption.is_finite() {
            return Err(Error::Other(format!(
                "loss {} in the benchmark",
                losses.caption
            )));
        }
        if i > 0 {
            enc.push(te);
            steps.push(ts);
        }
    }
    let (encoder_s, step_s) = (median(enc), median(steps));
    Ok(BenchResult {
        device: format!("{device:?}"),
        trainable: args.trainable.clone(),
        trainable_params: store.trainable_count(),
        regions_per_step: r,
        encoder_s,
        step_s,
        regions_per_s: r as f64 / step_s,
        regions_per_s_without_encoder: r as f64 / (step_s - encoder_s).max(1e-9),
    })
}

/// `trainer bench`: prints a table or JSON.
pub fn run(args: &BenchArgs) -> Result<()> {
    let r = bench(args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        println!(
            "{} ({}, trainable {} = {} params)",
            args.config.display(),
            r.device,
            r.trainable,
            r.trainable_params
        );
        println!("regions per step            {:>10}", r.regions_per_step);
        println!("image encoder (frozen)      {:>10.3} s", r.encoder_s);
        println!("training step               {:>10.3} s", r.step_s);
        println!("regions/s                   {:>10.2}", r.regions_per_s);
        println!(
            "regions/s without encoder   {:>10.2}",
            r.regions_per_s_without_encoder
        );
    }
    Ok(())
}
