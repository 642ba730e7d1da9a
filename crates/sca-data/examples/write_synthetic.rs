//! Writes synthetic scenes as a VG directory (PNG images + region_descriptions.json +
//! densecap_splits.json + image_data.json) that `vg:DIR` reads.
//!
//! `cargo run -p sca-data --example write_synthetic -- OUT_DIR [TRAIN_N] [TEST_N] [SIZE]`
//! (train: seed 1, ids from 0; test: seed 2, ids from 10_000_000).

use sca_data::synthetic::{SyntheticConfig, SyntheticDataset};
use sca_data::vg::{write_vg, Split};
use sca_data::Dataset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: write_synthetic OUT_DIR [TRAIN_N] [TEST_N] [SIZE]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
    };
    let (train_n, test_n, size) = (arg(1, 100)?, arg(2, 20)?, arg(3, 256)?);
    let train = SyntheticDataset::new(SyntheticConfig {
        seed: 1,
        n: train_n,
        size,
        ..Default::default()
    })?;
    let test = SyntheticDataset::new(SyntheticConfig {
        seed: 2,
        n: test_n,
        size,
        first_id: 10_000_000,
        ..Default::default()
    })?;
    let parts: [(&dyn Dataset, Split); 2] = [(&train, Split::Train), (&test, Split::Test)];
    write_vg(std::path::Path::new(out), &parts)?;
    println!("wrote {train_n} train + {test_n} test images to {out}");
    Ok(())
}
