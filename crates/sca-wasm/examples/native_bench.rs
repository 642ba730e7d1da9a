//! The browser's per-click work, natively: the same `Session` calls the npm package's worker
//! makes (encoder, `segment`, `begin_caption` + one token per step), on a bundle directory, so
//! `web/bench.html` (driven by `tests/browser/bench.mjs`) has a like-for-like native baseline.
//!
//! ```text
//! cargo run --release -p sca-wasm --example native_bench -- BUNDLE_DIR [CLICKS=5] [TOKENS=20]
//! ```

use std::collections::HashMap;
use std::time::Instant;

use sca_core::{Point, Prompt};
use sca_wasm::Session;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .ok_or("usage: native_bench BUNDLE_DIR [CLICKS] [TOKENS]")?,
    );
    let clicks: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let manifest = std::fs::read(dir.join("manifest.json"))?;
    let files: HashMap<String, Vec<u8>> = ["encoder.safetensors", "decoder.gguf", "tokenizer.json"]
        .iter()
        .map(|n| Ok((n.to_string(), std::fs::read(dir.join(n))?)))
        .collect::<std::io::Result<_>>()?;
    let t = Instant::now();
    let mut s = Session::from_bundle_bytes(&manifest, files)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let size = s.sca().preprocessor.pad_size;
    // A seeded noise image (content does not change the work).
    let mut seed = 777u32;
    let rgba: Vec<u8> = (0..size * size * 4)
        .map(|i| {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            if i % 4 == 3 {
                255
            } else {
                90 + (seed >> 26) as u8
            }
        })
        .collect();
    let t = Instant::now();
    s.embed_rgba(&rgba, size, size)?;
    let encode_s = t.elapsed().as_secs_f64();
    let (mut mask_ms, mut caption_ms, mut per_token) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=clicks {
        let f = (i as f32 + 1.0) / (clicks as f32 + 2.0);
        let prompt = Prompt {
            points: vec![Point {
                x: f * size as f32,
                y: (1.0 - f) * size as f32,
                label: 1,
            }],
            box_: None,
            multimask: true,
        };
        let t = Instant::now();
        s.segment(&prompt)?;
        let m = t.elapsed().as_secs_f64() * 1e3;
        s.begin_caption(&prompt, tokens)?;
        let mut first = None;
        let mut n = 0;
        while s.next_piece()?.is_some() {
            n += 1;
            first.get_or_insert_with(|| t.elapsed().as_secs_f64() * 1e3);
        }
        let done = s.finish_caption()?;
        let c = t.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            continue; // warm-up
        }
        mask_ms.push(m);
        caption_ms.push(c);
        if let (Some(f), true) = (first, n > 1) {
            per_token.push((c - f) / (n - 1) as f64);
        }
        let _ = done;
    }
    println!("native (same Session calls as the browser worker), {size}x{size}, {clicks} clicks, {tokens} tokens");
    println!("| stage | median |");
    println!("|---|---:|");
    println!("| load bundle (verify + build) | {load_ms:.0} ms |");
    println!("| encoder (CPU) | {encode_s:.2} s |");
    println!("| click -> mask | {:.1} ms |", median(mask_ms));
    println!("| click -> full caption | {:.1} ms |", median(caption_ms));
    println!("| LM ms/token | {:.1} ms |", median(per_token));
    Ok(())
}
