//! Scratch: times the image encoder alone (random weights).
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use sca_core::config::ScaConfig;
use sca_core::sam::image_encoder::ImageEncoder;
use sca_core::Trace;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let path = std::path::Path::new("../shared/bench/sca-vitb-gpt2.json");
    let cfg = ScaConfig::from_json(&std::fs::read_to_string(path)?, path)?;
    let dev = Device::Cpu;
    let vb = VarBuilder::from_backend(Box::new(Rnd), DType::F32, dev.clone());
    let enc = ImageEncoder::new(&cfg.vision_config, vb.pp("vision_encoder"))?;
    let s = cfg.vision_config.image_size;
    let px = Tensor::randn(0f32, 1.0, (1, 3, s, s), &dev)?;
    let runs: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(2);
    for _ in 0..runs {
        let t = Instant::now();
        enc.forward(&px, &mut Trace::default())?;
        println!("encoder: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

struct Rnd;
impl SimpleBackend for Rnd {
    fn get(&self, s: Shape, _: &str, _: Init, _: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, s, dev)
    }
    fn get_unchecked(&self, _: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        unimplemented!()
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}
