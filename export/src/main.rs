//! `export`: turns an SCA checkpoint into deployable artefacts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "export",
    about = "Export SCA checkpoints to deployable artefacts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the SAM ViT image encoder as an ONNX graph (opset 17, dynamic batch):
    /// `pixel_values` (B,3,S,S) -> `image_embeddings` (B,256,S/16,S/16).
    Onnx {
        /// Checkpoint directory (config.json + model.safetensors or pytorch_model.bin).
        #[arg(long)]
        from: PathBuf,
        /// Output `.onnx` file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Keep the weights in `<out>.data` (automatic when the model would exceed 2 GiB).
        #[arg(long)]
        external_data: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Onnx {
            from,
            out,
            external_data,
        } => {
            let opts = sca_export::OnnxOptions { external_data };
            let s = sca_export::export_onnx_with(&from, &out, &opts)
                .with_context(|| format!("exporting the encoder of {}", from.display()))?;
            println!(
                "wrote {} ({} bytes, {} nodes, {} initializers)",
                s.path.display(),
                s.bytes,
                s.nodes,
                s.initializers
            );
            if let Some((path, bytes)) = &s.external_data {
                println!("wrote {} ({bytes} bytes of weights)", path.display());
            }
        }
    }
    Ok(())
}
