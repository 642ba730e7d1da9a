//! Writes a few synthetic scenes as PNG test images plus `objects.json` with their ground
//! truth (what `models/sca-shapes/examples/` holds).
//!
//! `cargo run -p sca-data --example write_examples -- OUT_DIR [SEED] [N]` (defaults: seed
//! 777, 4 images of 256 x 256). For each image, `objects.json` lists its objects in painting
//! order (later ones on top) with their attributes, box `[x, y, w, h]`, centre, the number of
//! visible pixels and every caption phrasing; ready-made `sca caption` prompts are included.

use sca_data::synthetic::{
    phrasings, SyntheticConfig, SyntheticDataset, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES,
};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: write_examples OUT_DIR [SEED] [N]");
        std::process::exit(2);
    };
    let seed: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(777);
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    let ds = SyntheticDataset::new(SyntheticConfig {
        seed,
        n,
        ..Default::default()
    })?;
    let mut images = Vec::new();
    for i in 0..n {
        let scene = ds.scene(i);
        let file = format!("shapes-{seed}-{i}.png");
        scene.image.save(out.join(&file))?;
        let objects: Vec<_> = scene
            .objects
            .iter()
            .map(|o| {
                let [x, y, w, h] = o.box_xywh;
                let (cx, cy) = (x + w / 2.0, y + h / 2.0);
                json!({
                    "shape": SHAPES[o.shape],
                    "colour": COLOURS[o.colour],
                    "size": SIZES[o.size],
                    "texture": TEXTURES[o.texture],
                    "position": POSITIONS[o.position],
                    "box_xywh": o.box_xywh,
                    "box_xyxy": [x, y, x + w, y + h],
                    "box_center": [cx, cy],
                    "visible_pixels": o.visible_mask.iter().filter(|&&v| v != 0).count(),
                    "captions": phrasings(o.shape, o.colour, o.size, o.texture, o.position),
                    "sca_caption_box": format!("--box {},{},{},{}", x, y, x + w, y + h),
                    "sca_caption_point": format!("--point {cx},{cy}"),
                })
            })
            .collect();
        images.push(json!({
            "file": file,
            "width": scene.image.width(),
            "height": scene.image.height(),
            "objects": objects,
        }));
    }
    let doc = json!({
        "generator": format!("synthetic:seed={seed},n={n}"),
        "note": "objects in painting order (later ones on top); boxes are the tight boxes of the full shapes, in pixels",
        "images": images,
    });
    std::fs::write(
        out.join("objects.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!("wrote {n} images to {}", out.display());
    Ok(())
}
