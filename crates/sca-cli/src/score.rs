//! `sca score`: caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) of a corpus, computed as
//! coco-caption's `pycocoevalcap` does, without Python or Java.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sca_metrics::{
    load_corpus, score_tokenized, tokenize_regions, MeteorData, Metrics, RegionId, Stage,
};

/// Corpora at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_REGIONS: usize = 5_000;

/// Arguments of `sca score`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Corpus to score: `{"regions": [{"id", "candidate", "references": [..]}, ..]}` (extra keys
    /// are ignored, so the predictions file written by `sca eval` works too).
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,

    /// Print JSON (corpus metrics plus `per_region`) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// METEOR 1.5 data directory [default: $SCA_METEOR_DATA, else the nearest `.cache/meteor`].
    /// Install it with `bash scripts/setup-meteor.sh`.
    #[arg(long, value_name = "DIR")]
    pub meteor_data: Option<PathBuf>,

    /// Skip METEOR (its values are reported as null).
    #[arg(long)]
    pub no_meteor: bool,
}

/// The JSON document `--json` prints (field order is the output order).
#[derive(serde::Serialize)]
struct JsonOut {
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    meteor: Option<f64>,
    rouge_l: f64,
    cider_d: f64,
    per_region: Vec<JsonRegion>,
}

#[derive(serde::Serialize)]
struct JsonRegion {
    id: RegionId,
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    meteor: Option<f64>,
    rouge_l: f64,
    cider_d: f64,
}

/// Runs `sca score`.
pub fn run(args: &ScoreArgs) -> Result<()> {
    let regions = load_corpus(&args.corpus)?;
    let n = regions.len();
    let bar = if n >= PROGRESS_MIN_REGIONS {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} regions ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    let progress = |stage: Stage, done: usize, total: usize| {
        let msg = match stage {
            Stage::Tokenize => "tokenizing",
            Stage::Ngram => "BLEU/ROUGE/CIDEr",
            Stage::Meteor => "METEOR",
        };
        bar.set_message(msg);
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    // Locate the METEOR data before any work, so that a missing install fails fast.
    let meteor_dir = if args.no_meteor {
        None
    } else {
        Some(MeteorData::locate(args.meteor_data.as_deref())?)
    };
    let tokenized = tokenize_regions(&regions, Some(&progress));
    let meteor = match meteor_dir {
        None => None,
        Some(dir) => {
            bar.set_message("loading METEOR data");
            bar.enable_steady_tick(Duration::from_millis(200));
            // Only the paraphrases this corpus can use: same scores, much faster to load.
            let sentences = tokenized.iter().flat_map(|r| {
                std::iter::once(r.candidate.as_str()).chain(r.references.iter().map(String::as_str))
            });
            let data = MeteorData::load_for(&dir, sentences)
                .with_context(|| format!("loading METEOR data from {}", dir.display()))?;
            bar.disable_steady_tick();
            Some(data)
        }
    };
    let scores = score_tokenized(&tokenized, meteor.as_ref(), Some(&progress))
        .with_context(|| format!("scoring {}", args.corpus.display()))?;
    bar.finish_and_clear();

    let mut out = std::io::stdout().lock();
    if args.json {
        let c = &scores.corpus;
        let doc = JsonOut {
            bleu1: c.bleu1,
            bleu2: c.bleu2,
            bleu3: c.bleu3,
            bleu4: c.bleu4,
            meteor: c.meteor,
            rouge_l: c.rouge_l,
            cider_d: c.cider_d,
            per_region: scores
                .per_region
                .iter()
                .map(|r| {
                    let m = &r.metrics;
                    JsonRegion {
                        id: r.id.clone(),
                        bleu1: m.bleu1,
                        bleu2: m.bleu2,
                        bleu3: m.bleu3,
                        bleu4: m.bleu4,
                        meteor: m.meteor,
                        rouge_l: m.rouge_l,
                        cider_d: m.cider_d,
                    }
                })
                .collect(),
        };
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &scores.corpus, n, &args.corpus)?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, c: &Metrics, n: usize, path: &std::path::Path) -> Result<()> {
    writeln!(out, "{} ({n} regions)", path.display())?;
    writeln!(out, "{:<8} {:>10}", "metric", "score")?;
    let meteor = c
        .meteor
        .map_or_else(|| "-".to_string(), |m| format!("{m:.4}"));
    for (k, v) in [
        ("BLEU-1", format!("{:.4}", c.bleu1)),
        ("BLEU-2", format!("{:.4}", c.bleu2)),
        ("BLEU-3", format!("{:.4}", c.bleu3)),
        ("BLEU-4", format!("{:.4}", c.bleu4)),
        ("METEOR", meteor),
        ("ROUGE-L", format!("{:.4}", c.rouge_l)),
        ("CIDEr-D", format!("{:.4}", c.cider_d)),
    ] {
        writeln!(out, "{k:<8} {v:>10}")?;
    }
    writeln!(out, "(pycocoevalcap scale; papers report x100)")?;
    Ok(())
}
