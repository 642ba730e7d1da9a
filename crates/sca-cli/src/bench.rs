//! `sca bench`: builds a model from a config with random weights and times every stage.
//! Speed does not depend on weight values; a random builder avoids needing a checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use sca_core::anything::AnythingConfig;
use sca_core::config::{GenerationConfig, ScaConfig};
use sca_core::generate::{generate, Decode};
use sca_core::image::PreprocessorConfig;
use sca_core::sam::prompt_encoder::ScaledPrompt;
use sca_core::tokenizer::Tokenizer;
use sca_core::{Sca, ScaModel, Trace};

use crate::anything::{timed_anything, StageTimes};
use serde::Serialize;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// An official-layout config.json (e.g. ../shared/bench/sca-vitb-gpt2.json).
    #[arg(long)]
    config: PathBuf,
    /// Override the encoder input size (vision and prompt encoder image_size).
    #[arg(long)]
    image_size: Option<usize>,
    /// Timed runs of the image encoder (median reported).
    #[arg(long, default_value_t = 3)]
    encoder_runs: usize,
    /// Timed runs of the per-prompt stages (median reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip timing the image encoder (its rows read NaN); the prompt stages use a random
    /// embedding.
    #[arg(long)]
    skip_encoder: bool,
    /// Also time anything mode (official defaults, beam 3) on one synthetic image of the
    /// encoder's input size for each of these grid sizes, e.g. `16,32`: encoder (run once),
    /// decoder batches, NMS, captions.
    #[arg(long, value_delimiter = ',')]
    anything: Vec<usize>,
    /// Directory with the `tokenizer.json` that `--anything` captions with (a GPT-2 tokenizer,
    /// e.g. `models/sca-shapes`).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

/// Random N(0, 0.02) weights, zero biases, unit norm scales.
struct RandomBackend;

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = if name.ends_with("bias") {
            Tensor::zeros(s, DType::F32, dev)?
        } else if s.rank() == 1 {
            Tensor::ones(s, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, 0.02, s, dev)?
        };
        t.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random backend has no unshaped tensor {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

#[derive(Serialize)]
struct BenchResult {
    encoder_ms: f64,
    decoder_ms: f64,
    decoder_mixer_ms: f64,
    lm_prefill_ms: f64,
    lm_ms_per_token: f64,
    prompt_ms: f64,
    batch8_ms: f64,
    batch8_over_one: f64,
    encoder_peak_rss_mb: f64,
    peak_rss_mb: f64,
    /// `--anything`: one row per grid size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    anything: Vec<AnythingRow>,
}

#[derive(Serialize)]
struct AnythingRow {
    points_per_side: usize,
    /// Point batches (the official generator runs the image encoder once per batch; ours once).
    batches: usize,
    candidates: usize,
    regions: usize,
    #[serde(flatten)]
    times: StageTimes,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(v))
}

/// Peak resident set (VmHWM) in MiB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so a phase's own peak can be read.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let tokenizer = match (&a.tokenizer, a.anything.is_empty()) {
        (Some(dir), _) => Some(
            Tokenizer::from_dir(dir)
                .with_context(|| format!("loading the tokenizer from {}", dir.display()))?,
        ),
        (None, false) => {
            bail!("--anything captions its regions: pass --tokenizer DIR (e.g. models/sca-shapes)")
        }
        (None, true) => None,
    };
    if let Some(&n) = a.anything.iter().find(|&&n| n == 0 || n > 1024) {
        bail!("--anything grid sizes must be 1..=1024, got {n}");
    }
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut cfg = ScaConfig::from_json(&text, &a.config)?;
    if let Some(s) = a.image_size {
        cfg.vision_config.image_size = s;
        cfg.prompt_encoder_config.image_size = s;
    }
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("{}: {m}", a.config.display()))?;
    let dev = Device::Cpu;
    let vb = VarBuilder::from_backend(Box::new(RandomBackend), DType::F32, dev.clone());
    let model = ScaModel::new(&cfg, vb).context("building the model")?;
    let s = cfg.vision_config.image_size;
    eprintln!(
        "model: ViT {}x{} layers, mixer {} layers, GPT-2 {}x{}; input {s}x{s}; {} threads",
        cfg.vision_config.hidden_size,
        cfg.vision_config.num_hidden_layers,
        cfg.mask_caption_decoder_config.additional_num_hidden_layers,
        cfg.text_config.n_embd,
        cfg.text_config.n_layer,
        candle_core::utils::get_num_threads()
    );
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, s, s), &dev)?;
    let mut tr = Trace::default();
    let (emb, encoder_ms, encoder_peak) = if a.skip_encoder {
        let (c, g) = (
            cfg.vision_config.output_channels,
            cfg.vision_config.grid_size(),
        );
        (
            Tensor::randn(0f32, 1.0, (1, c, g, g), &dev)?,
            f64::NAN,
            f64::NAN,
        )
    } else {
        let emb = model.embed_pixels(&pixels, &mut tr)?; // warm-up
        reset_peak_rss();
        let mut enc = Vec::new();
        for _ in 0..a.encoder_runs.max(1) {
            let t = Instant::now();
            model.embed_pixels(&pixels, &mut tr)?;
            enc.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (emb, median(enc), peak_rss_mb())
    };

    let box_prompt = |i: usize| ScaledPrompt {
        box_: Some([
            10.0 + i as f64,
            20.0,
            s as f64 / 2.0,
            s as f64 / 2.0 + i as f64,
        ]),
        ..Default::default()
    };
    let one = vec![box_prompt(0)];
    let eight: Vec<ScaledPrompt> = (0..8).map(box_prompt).collect();
    let pe = model.image_positional_embeddings().clone();
    let decoder_ms = time(a.runs, || {
        let sparse = model.prompt_encoder.embed_sparse(&one[0])?.unsqueeze(0)?;
        let dense = model.prompt_encoder.embed_dense(None)?.unsqueeze(0)?;
        Ok(model
            .mask_decoder
            .forward(&emb, &pe, &sparse, &dense, true, &mut Trace::default())?)
    })?;
    let decoder_mixer_ms = time(a.runs, || {
        Ok(model.decode_prompts(&emb, &one, true, &mut Trace::default())?)
    })?;

    // LM: 14-token prefix prefill, then 20 single-token steps with the KV cache.
    let d = cfg.text_config.n_embd;
    let p = cfg.prefix_len();
    let prefix = Tensor::randn(0f32, 1.0, (1, p, d), &dev)?;
    let mut prefill = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..3 {
        let mut cache = model.lm.new_cache();
        let t = Instant::now();
        let h = model
            .lm
            .forward_embeds(&prefix, None, &mut cache, "", &mut tr)?;
        let mut logits = model.lm.last_logits(&h)?;
        prefill.push(t.elapsed().as_secs_f64() * 1e3);
        for _ in 0..20 {
            let t = Instant::now();
            let next = logits.argmax(candle_core::D::Minus1)?.unsqueeze(1)?;
            let e = model.lm.embed_tokens(&next)?;
            let h = model.lm.forward_embeds(&e, None, &mut cache, "", &mut tr)?;
            logits = model.lm.last_logits(&h)?;
            steps.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let lm_prefill_ms = median(prefill);
    let lm_ms_per_token = median(steps);

    // Whole per-prompt path (decoder + mixer + 20 tokens), one prompt vs 8 batched.
    let decode = Decode::Greedy { max_new_tokens: 20 };
    let full = |prompts: &[ScaledPrompt]| -> Result<()> {
        let out = model.decode_prompts(&emb, prompts, true, &mut Trace::default())?;
        // an EOS id outside the vocabulary: always decode all 20 tokens
        generate(&model.lm, &out.prefix, &decode, u32::MAX, &mut |_, _| true)?;
        Ok(())
    };
    let runs = (a.runs / 3).max(2);
    let prompt_ms = time(runs, || full(&one))?;
    let batch8_ms = time(runs, || full(&eight))?;
    let mut res = BenchResult {
        encoder_ms,
        decoder_ms,
        decoder_mixer_ms,
        lm_prefill_ms,
        lm_ms_per_token,
        prompt_ms,
        batch8_ms,
        batch8_over_one: batch8_ms / prompt_ms,
        encoder_peak_rss_mb: encoder_peak,
        peak_rss_mb: peak_rss_mb(),
        anything: Vec::new(),
    };
    if let Some(tok) = tokenizer {
        let sca = Sca::from_parts(
            model,
            tok,
            PreprocessorConfig::for_size(s),
            GenerationConfig::default(),
            &a.config,
        )?;
        res.anything = bench_anything(&sca, s, &a.anything)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
        return Ok(());
    }
    // PyTorch eager figures of ../shared/bench/BASELINES.md (ViT-B + GPT-2 small, 1024, 2 threads)
    let base = |v: f64| -> String { format!("{v:>10.1}") };
    println!("| stage | sca (ms) | PyTorch (ms) | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!(
            "| {name} | {ours:.1} | {} | {:.2}x |",
            base(t).trim(),
            ours / t
        ),
        None => println!("| {name} | {ours:.1} | - | - |"),
    };
    row("image encoder", res.encoder_ms, Some(10_620.0));
    row(
        "prompt encoder + mask decoder, 1 box",
        res.decoder_ms,
        Some(62.6),
    );
    row(
        "decoder + mixer + projection, 1 box",
        res.decoder_mixer_ms,
        Some(314.0),
    );
    row(
        "LM prefill (14-token prefix)",
        res.lm_prefill_ms,
        Some(87.9),
    );
    row("LM decode step (KV cache)", res.lm_ms_per_token, Some(36.7));
    row("1 prompt: decoder+mixer+20 tokens", res.prompt_ms, None);
    row(
        "8 prompts batched: decoder+mixer+20 tokens",
        res.batch8_ms,
        None,
    );
    println!("| 8 batched / 1 prompt | {:.2}x | | |", res.batch8_over_one);
    println!(
        "| peak RSS while encoding (MiB) | {:.0} | | |",
        res.encoder_peak_rss_mb
    );
    println!("| peak RSS, whole run (MiB) | {:.0} | | |", res.peak_rss_mb);
    if res.anything.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "| anything, {s}x{s} | encoder, 1 run (ms) | decoder batches (ms) | NMS (ms) | captions \
         (ms, regions) | total (ms) | official: encoder runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &res.anything {
        println!(
            "| {n}x{n} points, {b} batches | {:.0} | {:.0} | {:.1} | {:.0} ({}) | {:.0} | {b} |",
            r.times.encoder_ms,
            r.times.batches_ms,
            r.times.nms_ms,
            r.times.captions_ms,
            r.regions,
            r.times.total_ms,
            n = r.points_per_side,
            b = r.batches,
        );
    }
    Ok(())
}

/// Anything mode per grid size on one `s` x `s` image. The official generator re-encodes the
/// image for every batch of points; ours encodes once (`timed_anything`).
fn bench_anything(sca: &Sca, s: usize, grids: &[usize]) -> Result<Vec<AnythingRow>> {
    let side = u32::try_from(s).context("image size")?;
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            ((x / 4 + y / 4) % 256) as u8,
        ])
    });
    let mut rows = Vec::new();
    for &n in grids {
        let cfg = AnythingConfig {
            points_per_side: n,
            ..Default::default()
        };
        let (_, out, times) = timed_anything(sca, &img, &cfg, None)?;
        rows.push(AnythingRow {
            points_per_side: n,
            batches: (n * n).div_ceil(cfg.points_per_batch),
            candidates: out.candidates,
            regions: out.regions.len(),
            times,
        });
    }
    Ok(rows)
}
