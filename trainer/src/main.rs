//! `trainer`: train Segment and Caption Anything's caption mixer (and more) with candle.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use trainer::config::TrainConfig;
use trainer::train::{fit, FitOptions};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train SCA's caption mixer (official recipe by default)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train as a TOML config says; checkpoints, log.jsonl and the final model go to --out.
    Fit(FitArgs),
    /// Distil a teacher SCA into a student with a smaller GPT-2 (shared frozen SAM): KL to
    /// the teacher's next-token distributions, its greedy captions, and the caption loss.
    Distill(DistillArgs),
    /// Time training steps (regions/s) of a model built from a config with random weights.
    Bench(trainer::bench::BenchArgs),
}

#[derive(clap::Args)]
struct FitArgs {
    /// The training config (TOML; see trainer/README.md).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// Where a run goes and how far (fit and distill).
#[derive(clap::Args)]
struct RunArgs {
    /// Output directory: checkpoint-N/, log.jsonl, model/ (distill: also teacher-cache/).
    #[arg(long)]
    out: PathBuf,
    /// Continue from a checkpoint directory, or from the newest checkpoint in a run directory.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Stop with a checkpoint after this many steps (the schedule still runs to max_steps).
    #[arg(long, value_name = "STEPS")]
    stop_after: Option<u64>,
}

impl RunArgs {
    fn options(&self, config: TrainConfig) -> FitOptions {
        FitOptions {
            config,
            out: self.out.clone(),
            resume: self.resume.clone(),
            stop_after: self.stop_after,
        }
    }
}

#[derive(clap::Args)]
struct DistillArgs {
    /// The teacher: an SCA checkpoint or trainer output directory.
    #[arg(long)]
    teacher: PathBuf,
    /// The student's GPT-2: a config.json (init from the teacher's layers where the widths
    /// match, else random), an HF GPT-2 checkpoint directory (its weights), or an earlier
    /// student (SCA model directory: continue from its GPT-2, projection and mixer).
    #[arg(long, value_name = "CONFIG_OR_DIR")]
    student: PathBuf,
    /// Training data spec (overrides the config's data.train), e.g. synthetic:seed=1,n=1000.
    #[arg(long)]
    data: Option<String>,
    /// Training config (TOML): [distill], [optim], [train], [eval] and the rest of [data].
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

fn run_distill(a: &DistillArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let base = a
        .config
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = TrainConfig::for_distill(&text, &base, &a.teacher, &a.student, a.data.as_deref())
        .with_context(|| format!("reading {}", a.config.display()))?;
    let opts = a.run.options(config);
    let summary = fit(opts).with_context(|| format!("distilling into {}", a.run.out.display()))?;
    report("distilled", "student", &summary);
    Ok(())
}

/// The one-line summary of a finished run on stderr.
fn report(verb: &str, what: &str, summary: &trainer::train::FitSummary) {
    eprintln!(
        "{verb} {} steps; loss {} -> {}; {:.2} regions/s{}",
        summary.steps,
        summary.first_loss.map_or("-".into(), |v| format!("{v:.4}")),
        summary.last_loss.map_or("-".into(), |v| format!("{v:.4}")),
        summary.regions_per_s,
        summary
            .model_dir
            .as_ref()
            .map_or(String::new(), |d| format!("; {what} in {}", d.display()))
    );
}

fn run_fit(a: &FitArgs) -> Result<()> {
    let config = TrainConfig::from_file(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let world = std::env::var("WORLD_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    let opts = a.run.options(config);
    let summary = if world > 1 {
        fit_data_parallel(opts, world)?
    } else {
        fit(opts).with_context(|| format!("training into {}", a.run.out.display()))?
    };
    report("trained", "model", &summary);
    Ok(())
}

#[cfg(feature = "nccl")]
fn fit_data_parallel(opts: FitOptions, world: usize) -> Result<trainer::train::FitSummary> {
    let rank: usize = std::env::var("RANK")
        .context("WORLD_SIZE > 1 needs RANK (0..WORLD_SIZE)")?
        .parse()
        .context("RANK must be an integer")?;
    let device = trainer::train::parse_device(&opts.config.train.device)?;
    std::fs::create_dir_all(&opts.out)?;
    let id_file = opts.out.join(".nccl-id");
    if rank == 0 {
        let _ = std::fs::remove_file(&id_file);
    }
    let mut avg = trainer::grad_sync::NcclAverager::new(&device, rank, world, &id_file)?;
    let out = opts.out.clone();
    let res = trainer::train::fit_with(opts, &mut avg)
        .with_context(|| format!("rank {rank}: training into {}", out.display()));
    if rank == 0 {
        let _ = std::fs::remove_file(&id_file);
    }
    res
}

#[cfg(not(feature = "nccl"))]
fn fit_data_parallel(_: FitOptions, world: usize) -> Result<trainer::train::FitSummary> {
    anyhow::bail!("WORLD_SIZE={world}: data-parallel training needs a build with --features nccl")
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Fit(a) => run_fit(&a),
        Command::Distill(a) => run_distill(&a),
        Command::Bench(a) => trainer::bench::run(&a).context("trainer bench"),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
