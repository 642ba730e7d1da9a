//! `sca`: Segment and Caption Anything from the command line.

mod anything;
mod bench;
mod caption;
mod eval;
mod score;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sca",
    version,
    about = "Segment and Caption Anything: masks and captions for clicked regions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption (and segment) the region a point or box prompt selects.
    Caption(caption::CaptionArgs),
    /// Score captions against references: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.
    Score(score::ScoreArgs),
    /// Time every stage of a model built from a config with random weights.
    Bench(bench::BenchArgs),
    /// Caption every region of a dataset and score the captions (and masks).
    Eval(eval::EvalArgs),
    /// Segment and caption everything in an image (automatic masks + one caption each).
    Anything(anything::AnythingArgs),
    /// Serve the model over HTTP: /v1/embed, /v1/predict, the page, the bundle files.
    Serve(serve::ServeArgs),
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
        Command::Caption(a) => caption::run(&a),
        Command::Score(a) => score::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Anything(a) => anything::run(&a),
        Command::Serve(a) => serve::run(&a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
