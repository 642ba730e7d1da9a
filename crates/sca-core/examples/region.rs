//! One box prompt through a model or bundle, printed as one JSON line (caption, tokens,
//! predicted IoU, mask areas, the first mask as run lengths, a checksum of the mask logits). Built natively and for
//! `wasm32-wasip1` by `scripts/wasm-check.sh`, which runs both on the same bundle and compares.
//!
//! ```text
//! cargo run --release -p sca-core --example region -- models/sca-shapes \
//!     models/sca-shapes/examples/shapes-777-0.png 148,114,225,191
//! ```

use std::path::Path;

use candle_core::Device;
use sca_core::{Decode, Prompt, Sca};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, boxes] = args.as_slice() else {
        return Err("usage: region MODEL_OR_BUNDLE IMAGE X0,Y0,X1,Y1".into());
    };
    let b: Vec<f32> = boxes
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("box {boxes:?}: {e}"))?;
    let b: [f32; 4] = b
        .try_into()
        .map_err(|_| format!("box {boxes:?}: expected 4 numbers"))?;
    let sca = Sca::load(Path::new(model), Device::Cpu)?;
    let img = image::open(image)
        .map_err(|e| format!("{image}: {e}"))?
        .to_rgb8();
    let emb = sca.embed(&img)?;
    let prompt = Prompt {
        points: vec![],
        box_: Some(b),
        multimask: true,
    };
    let r = sca.predict(&emb, &prompt, &Decode::Greedy { max_new_tokens: 19 })?;
    let areas: Vec<usize> = r
        .masks
        .iter()
        .map(|m| m.data.iter().filter(|&&v| v != 0).count())
        .collect();
    let logit_sums: Vec<f64> = r
        .mask_logits
        .iter()
        .map(|l| l.iter().map(|&v| v as f64).sum())
        .collect();
    // Run lengths of the first mask in row-major order, starting with a run of zeros.
    let mut runs = Vec::new();
    let (mut cur, mut len) = (0u8, 0usize);
    for &v in &r.masks[0].data {
        let v = (v != 0) as u8;
        if v != cur {
            runs.push(len);
            (cur, len) = (v, 0);
        }
        len += 1;
    }
    runs.push(len);
    let out = serde_json::json!({
        "mask0_runs": runs,
        "caption": r.caption,
        "tokens": r.tokens,
        "iou": r.iou,
        "mask_areas": areas,
        "mask_logit_sums": logit_sums,
        "embedding_sum": emb.embedding.sum_all()?.to_scalar::<f32>()?,
    });
    println!("{out}");
    Ok(())
}
