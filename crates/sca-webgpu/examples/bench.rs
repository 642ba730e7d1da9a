//! Encoder wall time on the WebGPU adapter (optionally vs the candle CPU encoder).
//!
//! ```text
//! cargo run --release -p sca-webgpu --example bench -- \
//!     [CONFIG.json ...] [--bundle models/sca-shapes] [--image-size S] [--runs N] [--cpu] \
//!     [--precision auto|f32|f16]
//! ```
//!
//! CONFIG.json: a full model config (`vision_config` inside, e.g.
//! ../shared/bench/sca-vitb-gpt2.json) or a bare vision config; it runs with random weights.
//! `--image-size` overrides the configs' image size (random weights follow it; windowed layers
//! keep their window). `--cpu` adds the candle encoder's time on the CPU. `--precision` picks
//! the weight precision (default auto: f16 where the adapter has shader-f16).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use sca_core::config::{ScaConfig, VisionConfig};
use sca_webgpu::{GpuContext, GpuEncoder, Precision};

struct Args {
    configs: Vec<PathBuf>,
    bundle: Option<PathBuf>,
    image_size: Option<usize>,
    runs: usize,
    cpu: bool,
    precision: Precision,
}

fn parse_args() -> Args {
    let mut a = Args {
        configs: Vec::new(),
        bundle: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes")),
        image_size: None,
        runs: 3,
        cpu: false,
        precision: Precision::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--bundle" => a.bundle = Some(value("--bundle").into()),
            "--no-bundle" => a.bundle = None,
            "--image-size" => a.image_size = Some(value("--image-size").parse().expect("size")),
            "--runs" => a.runs = value("--runs").parse().expect("runs"),
            "--cpu" => a.cpu = true,
            "--precision" => {
                a.precision = match value("--precision").as_str() {
                    "auto" => Precision::Auto,
                    "f32" => Precision::F32,
                    "f16" => Precision::F16,
                    other => panic!("--precision auto|f32|f16, not {other}"),
                }
            }
            "-h" | "--help" => {
                eprintln!(
                    "bench [CONFIG.json ...] [--bundle DIR | --no-bundle] [--image-size S] \
                     [--runs N] [--cpu] [--precision auto|f32|f16]"
                );
                std::process::exit(0);
            }
            _ => a.configs.push(arg.into()),
        }
    }
    a
}

fn vision_config(path: &Path) -> VisionConfig {
    match ScaConfig::from_file(path) {
        Ok(c) => c.vision_config,
        Err(_) => {
            let text = std::fs::read_to_string(path).expect("read config");
            serde_json::from_str(&text).expect("a model config or a vision config")
        }
    }
}

fn pixels(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

struct Row {
    name: String,
    size: usize,
    params_m: f64,
    load: f64,
    first: f64,
    mean: f64,
    cpu: Option<f64>,
}

fn bench(
    ctx: &GpuContext,
    name: String,
    cfg: &VisionConfig,
    w: &HashMap<String, Tensor>,
    args: &Args,
) -> Row {
    let params: usize = w
        .iter()
        .filter(|(k, _)| k.starts_with("vision_encoder."))
        .map(|(_, t)| t.elem_count())
        .sum();
    let t = Instant::now();
    let enc = GpuEncoder::with_context_and_precision(ctx, cfg, w, args.precision)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let load = secs(t);
    let px = pixels(3 * cfg.image_size * cfg.image_size);
    let t = Instant::now();
    enc.embed_blocking(&px).unwrap();
    let first = secs(t);
    // `--runs 0`: the first call only (ViT-B/H at 1024 on lavapipe take minutes)
    let mean = if args.runs == 0 {
        first
    } else {
        let t = Instant::now();
        for _ in 0..args.runs {
            enc.embed_blocking(&px).unwrap();
        }
        secs(t) / args.runs as f64
    };
    let cpu = args.cpu.then(|| {
        let vb =
            candle_nn::VarBuilder::from_tensors(w.clone(), candle_core::DType::F32, &Device::Cpu);
        let cenc = sca_core::sam::image_encoder::ImageEncoder::new(cfg, vb.pp("vision_encoder"))
            .expect("candle encoder");
        let s = cfg.image_size;
        let x = Tensor::from_slice(&px, (1, 3, s, s), &Device::Cpu).unwrap();
        cenc.forward(&x, &mut sca_core::Trace::default()).unwrap();
        let t = Instant::now();
        cenc.forward(&x, &mut sca_core::Trace::default()).unwrap();
        secs(t)
    });
    Row {
        name: format!("{name}, {}", enc.precision()),
        size: cfg.image_size,
        params_m: params as f64 / 1e6,
        load,
        first,
        mean,
        cpu,
    }
}

fn main() {
    let args = parse_args();
    let ctx = GpuContext::new_blocking().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "adapter: {} (shader-f16: {})",
        ctx.adapter().label(),
        ctx.adapter().shader_f16
    );
    let mut rows = Vec::new();
    if let Some(dir) = &args.bundle {
        let bundle = sca_core::bundle::Bundle::from_dir(dir).expect("bundle");
        let cfg = bundle.config().expect("config").vision_config;
        let w = bundle.encoder_tensors().expect("weights");
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        rows.push(bench(&ctx, name, &cfg, &w, &args));
    }
    for path in &args.configs {
        let mut cfg = vision_config(path);
        if let Some(s) = args.image_size {
            cfg.image_size = s;
        }
        let w = sca_webgpu::random_weights(&cfg, 7);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        rows.push(bench(&ctx, format!("{name} (random)"), &cfg, &w, &args));
    }
    println!();
    println!(
        "| model | image | params (M) | upload+build (s) | first embed (s) | embed, mean of {} (s) | candle cpu (s) | cpu / gpu |",
        args.runs.max(1)
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (cpu, ratio) = match r.cpu {
            Some(c) => (format!("{c:.3}"), format!("{:.2}", c / r.mean)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {cpu} | {ratio} |",
            r.name, r.size, r.params_m, r.load, r.first, r.mean
        );
    }
}
