//! `sca eval`: region captioning on a dataset (`sca-spec.md` §5): every region is prompted with
//! its ground-truth box (or the box centre with `--prompt point`), captions are generated and
//! scored with the coco-caption metrics; mask IoU where the data has masks; colour/shape/size
//! agreement on synthetic scenes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sca_core::{Decode, Sca};
use sca_data::{parse_spec, Split};
use trainer::evaluate::{
    evaluate, teacher_agreement, Agreement, EvalOptions, EvalReport, MeteorMode, PromptKind,
};

/// Arguments of `sca eval`.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model directory (official checkpoint or trainer output).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: `vg:DIR[,split=test]`, `jsonl:FILE`, `coco:ANN.json,IMAGES`,
    /// `refcoco:REFS,INSTANCES,IMAGES`, `synthetic:seed=S,n=N[,size=W]` (+ `limit=N`).
    #[arg(long, value_name = "SPEC")]
    pub data: String,
    /// Write the predictions here: `{"regions": [{"id", "candidate", "references", "image_id",
    /// "region_id", "box", "pred_box", "iou_scores", ..}], "metrics": {..}}` (readable by
    /// `sca score --corpus`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// `box` (the official protocol) or `point` (one positive point at the box centre).
    #[arg(long, default_value = "box", value_parser = ["box", "point"])]
    pub prompt: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Beam width (1 = greedy, the official evaluation).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// New tokens at most (default: the checkpoint's generation config, 19 officially).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// METEOR 1.5 data directory [default: $SCA_METEOR_DATA, else `.cache/meteor`; METEOR is
    /// skipped with a warning when neither exists].
    #[arg(long, value_name = "DIR")]
    pub meteor_data: Option<PathBuf>,
    /// Skip METEOR.
    #[arg(long)]
    pub no_meteor: bool,
    /// A teacher model (for a distilled student): also report the exact caption agreement
    /// with it and the mean per-token KL(teacher ‖ student) on the teacher's captions.
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
}

/// Runs `sca eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    if args.beams == 0 {
        bail!("--beams must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    // Parse the spec before loading the model, so that a typo fails fast.
    let spec = parse_spec(&args.data).with_context(|| format!("--data {:?}", args.data))?;
    let dataset = spec
        .open(Split::Test)
        .with_context(|| format!("opening --data {:?}", args.data))?;
    if dataset.is_empty() {
        bail!("--data {:?} has no images", args.data);
    }
    let sca = Sca::load(&args.model, candle_core::Device::Cpu)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let teacher = match &args.teacher {
        Some(t) => Some(
            Sca::load(t, candle_core::Device::Cpu)
                .with_context(|| format!("loading teacher {}", t.display()))?,
        ),
        None => None,
    };
    let max_new = args
        .max_new_tokens
        .unwrap_or_else(|| sca.generation.default_max_new_tokens());
    let meteor = if args.no_meteor {
        MeteorMode::Off
    } else if let Some(d) = &args.meteor_data {
        MeteorMode::Dir(d.clone())
    } else {
        MeteorMode::Auto
    };
    let opts = EvalOptions {
        prompt: if args.prompt == "point" {
            PromptKind::Point
        } else {
            PromptKind::Box
        },
        decode: Decode::from_beams(args.beams, max_new),
        limit: args.limit,
        meteor,
        ..Default::default()
    };
    let total = args.limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("evaluating [{bar:40}] {pos}/{len} images ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = evaluate(&sca, dataset.as_ref(), &opts, |done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("evaluating {} on {:?}", args.model.display(), args.data))?;
    bar.finish_and_clear();
    let agreement = match &teacher {
        Some(t) => {
            bar.reset();
            bar.set_style(
                ProgressStyle::with_template("teacher [{bar:40}] {pos}/{len} images ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            let a = teacher_agreement(&sca, t, dataset.as_ref(), &opts, &report, |done, _| {
                bar.set_position(done as u64)
            })
            .context("comparing with the teacher")?;
            bar.finish_and_clear();
            Some(a)
        }
        None => None,
    };
    if let Some(path) = &args.out {
        let doc = serde_json::json!({
            "model": args.model,
            "data": args.data,
            "prompt": args.prompt,
            "metrics": metrics_json(&report),
            "regions": report.predictions,
            "teacher_agreement": agreement,
        });
        let text = serde_json::to_string(&doc)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing predictions to {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut doc = serde_json::json!({
            "n_regions": report.n_regions,
            "metrics": metrics_json(&report),
        });
        if let Some(a) = report.attribute_accuracy {
            doc["attribute_accuracy"] = a.into();
            doc["attribute_rates"] = serde_json::to_value(report.attribute_rates)?;
        }
        if let Some(a) = &agreement {
            doc["teacher_agreement"] = serde_json::to_value(a)?;
        }
        writeln!(out, "{doc}")?;
    } else {
        print_table(&mut out, &report, args, agreement.as_ref())?;
    }
    Ok(())
}

fn metrics_json(r: &EvalReport) -> serde_json::Value {
    let m = &r.metrics;
    serde_json::json!({
        "bleu1": m.bleu1, "bleu2": m.bleu2, "bleu3": m.bleu3, "bleu4": m.bleu4,
        "meteor": m.meteor, "rouge_l": m.rouge_l, "cider_d": m.cider_d,
        "mask_iou_mean": r.mask_iou_mean,
    })
}

fn print_table(
    out: &mut impl Write,
    r: &EvalReport,
    args: &EvalArgs,
    agreement: Option<&Agreement>,
) -> Result<()> {
    writeln!(
        out,
        "{} on {} ({} images, {} regions, {} prompts)",
        args.model.display(),
        args.data,
        r.n_images,
        r.n_regions,
        args.prompt
    )?;
    if r.skipped_regions > 0 {
        writeln!(
            out,
            "({} regions with empty boxes skipped)",
            r.skipped_regions
        )?;
    }
    let m = &r.metrics;
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    writeln!(out, "{:<20} {:>10}", "metric", "score")?;
    for (k, v) in [
        ("BLEU-1", f(Some(m.bleu1))),
        ("BLEU-2", f(Some(m.bleu2))),
        ("BLEU-3", f(Some(m.bleu3))),
        ("BLEU-4", f(Some(m.bleu4))),
        ("METEOR", f(m.meteor)),
        ("ROUGE-L", f(Some(m.rouge_l))),
        ("CIDEr-D", f(Some(m.cider_d))),
        ("mask IoU (mean)", f(r.mask_iou_mean)),
    ] {
        writeln!(out, "{k:<20} {v:>10}")?;
    }
    if let (Some(a), Some(rates)) = (r.attribute_accuracy, r.attribute_rates) {
        writeln!(out, "{:<20} {:>10.4}", "attribute accuracy", a)?;
        writeln!(
            out,
            "  (colour {:.4}, shape {:.4}, size {:.4})",
            rates.colour, rates.shape, rates.size
        )?;
    }
    if let Some(a) = agreement {
        writeln!(out, "{:<20} {:>10.4}", "teacher exact match", a.exact_match)?;
        writeln!(out, "{:<20} {:>10.4}", "teacher token KL", a.mean_token_kl)?;
    }
    writeln!(out, "(pycocoevalcap scale; papers report x100)")?;
    Ok(())
}
