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
    /// Writes the deployable bundle: manifest.json, encoder.safetensors (f16 or f32),
    /// decoder.gguf (quantized per tensor), encoder.onnx and tokenizer.json, atomically.
    Bundle {
        /// Checkpoint directory (official SCA checkpoint, safetensors or pytorch_model.bin, fp16
        /// or fp32; or a trainer output).
        #[arg(long)]
        from: PathBuf,
        /// Output directory (must not exist, be empty, or be a bundle with --force).
        #[arg(long)]
        out: PathBuf,
        /// Decoder-side storage of the matrix weights (the rest stays f32).
        #[arg(long, default_value = "q8_0", value_parser = ["f32", "f16", "q8_0", "q4_k"])]
        quant: String,
        /// Storage of encoder.safetensors.
        #[arg(long, default_value = "f16", value_parser = ["f32", "f16"])]
        encoder_dtype: String,
        /// Skip encoder.onnx (only the server needs it).
        #[arg(long)]
        no_onnx: bool,
        /// Replace an existing bundle at --out.
        #[arg(long)]
        force: bool,
    },
    /// Runs a bundle and its f32 reference on the same inputs; prints per-stage differences,
    /// caption agreement and file sizes; exits non-zero past the thresholds.
    Verify {
        /// The bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// The f32 reference: the checkpoint the bundle came from (or an f32 bundle).
        #[arg(long)]
        reference: PathBuf,
        /// Extra images to run (a fixture's image.png in --reference is always used).
        #[arg(long)]
        image: Vec<PathBuf>,
        /// New tokens per caption (default: the reference's generation default).
        #[arg(long)]
        max_new_tokens: Option<usize>,
    },
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
        Command::Bundle {
            from,
            out,
            quant,
            encoder_dtype,
            no_onnx,
            force,
        } => {
            let opts = sca_export::bundle::BundleOptions {
                quant: sca_core::bundle::Quant::parse(&quant)?,
                encoder_f16: encoder_dtype == "f16",
                onnx: !no_onnx,
                force,
            };
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("exporting {} ...", from.display()));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let s = sca_export::bundle::export_bundle(&from, &out, &opts);
            spinner.finish_and_clear();
            let s = s.with_context(|| format!("exporting {} to a bundle", from.display()))?;
            println!(
                "wrote {} (decoder {quant}, encoder {encoder_dtype})",
                s.dir.display()
            );
            for (name, f) in &s.manifest.files {
                println!("  {name:<22} {:>12} bytes  {}", f.bytes, f.dtype);
            }
            for (t, (n, bytes)) in &s.decoder_types {
                println!("  decoder {t:<6} {n:>5} tensors {bytes:>12} bytes");
            }
            println!("  total {} bytes", s.total_bytes());
        }
        Command::Verify {
            bundle,
            reference,
            image,
            max_new_tokens,
        } => {
            let opts = sca_export::verify::VerifyOptions {
                images: image,
                max_new_tokens,
            };
            let r = sca_export::verify::verify(&bundle, &reference, &opts).with_context(|| {
                format!(
                    "verifying {} against {}",
                    bundle.display(),
                    reference.display()
                )
            })?;
            print!("{r}");
            let failures = r.failures();
            if !failures.is_empty() {
                anyhow::bail!(
                    "the bundle fails its thresholds:\n  {}",
                    failures.join("\n  ")
                );
            }
            println!("ok: within every threshold");
        }
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
