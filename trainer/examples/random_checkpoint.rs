//! Writes a checkpoint directory with the trainer's random initialisation for an official-layout
//! `config.json`: a stand-in for real weights when measuring sizes and speed (e.g. the ViT-B +
//! GPT-2 browser configuration of `../shared/bench/`).
//!
//! ```text
//! cargo run --release -p trainer --example random_checkpoint -- CONFIG.json TOKENIZER_DIR OUT_DIR [SEED]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use trainer::config::ModelConfig;
use trainer::model::{write_model_dir, ModelSetup};
use trainer::params::TrainableSet;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: random_checkpoint CONFIG.json TOKENIZER_DIR OUT_DIR [SEED]");
    }
    let (config, tokenizer, out) = (
        PathBuf::from(&args[0]),
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
    );
    let seed: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let m: ModelConfig = serde_json::from_value(serde_json::json!({
        "init": "config",
        "config": config,
        "tokenizer": tokenizer,
        "init_seed": seed,
    }))?;
    let mut setup = ModelSetup::prepare(&m).context("reading the config")?;
    let (_model, params) = setup.build(TrainableSet::parse("mixer")?, &Device::Cpu)?;
    let tensors = params.snapshot()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_model_dir(&out, &tensors, &setup.files()?)?;
    println!("wrote {} ({} tensors)", out.display(), tensors.len());
    Ok(())
}
