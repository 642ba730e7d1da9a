//! The browser session natively: a bundle loaded from bytes (without `encoder.onnx`, as the
//! browser fetches it) gives what `Sca` gives, embeddings from elsewhere are checked, and bad
//! input is an error naming the problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use sca_core::{Decode, Prompt, Sca};
use sca_wasm::Session;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes")
}

fn browser_files() -> (Vec<u8>, HashMap<String, Vec<u8>>) {
    let dir = model_dir();
    let files = ["encoder.safetensors", "decoder.gguf", "tokenizer.json"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect();
    (std::fs::read(dir.join("manifest.json")).unwrap(), files)
}

fn prompt() -> Prompt {
    Prompt {
        points: vec![sca_core::Point {
            x: 186.0,
            y: 152.0,
            label: 1,
        }],
        box_: None,
        multimask: true,
    }
}

#[test]
fn session_from_bytes_equals_sca() {
    let (manifest, files) = browser_files();
    let mut s = Session::from_bundle_bytes(&manifest, files).unwrap();
    let png = std::fs::read(model_dir().join("examples/shapes-777-0.png")).unwrap();
    let err = s.segment(&prompt()).unwrap_err().to_string();
    assert!(err.contains("setImage"), "{err}");
    let img = s.decode_image(&png).unwrap();
    s.embed(&img).unwrap();

    let sca = Sca::load(&model_dir(), Device::Cpu).unwrap();
    let emb = sca.embed(&img).unwrap();
    let want = sca
        .predict(&emb, &prompt(), &Decode::Greedy { max_new_tokens: 19 })
        .unwrap();
    assert_eq!(s.segment(&prompt()).unwrap().masks, want.masks);
    let masks = s.begin_caption(&prompt(), 19).unwrap().masks.clone();
    assert_eq!(masks, want.masks);
    let mut text = String::new();
    while let Some(p) = s.next_piece().unwrap() {
        text.push_str(&p);
    }
    let f = s.finish_caption().unwrap();
    text.extend(f.last_piece);
    assert_eq!(f.region.caption, want.caption);
    assert_eq!(f.region.tokens, want.tokens);
    assert_eq!(text, want.caption);
    assert!(s.next_piece().is_err(), "no caption runs after finish");

    // `segment` keeps the mask decoder's outputs for a caption of the *same* prompt only: a
    // caption of another prompt decodes its own masks.
    let other = Prompt {
        points: Vec::new(),
        box_: Some([148.0, 114.0, 225.0, 191.0]),
        multimask: false,
    };
    let want_other = sca
        .predict(&emb, &other, &Decode::Greedy { max_new_tokens: 19 })
        .unwrap();
    s.segment(&prompt()).unwrap();
    let caption = |s: &mut Session, p: &Prompt| {
        let masks = s.begin_caption(p, 19).unwrap().masks.clone();
        while s.next_piece().unwrap().is_some() {}
        let f = s.finish_caption().unwrap();
        (masks, f.region.caption, f.region.tokens)
    };
    let got = caption(&mut s, &other);
    assert_eq!(
        got,
        (
            want_other.masks.clone(),
            want_other.caption.clone(),
            want_other.tokens.clone()
        )
    );
    assert_ne!(want_other.masks, want.masks);
    let got = caption(&mut s, &prompt());
    assert_eq!(
        got,
        (
            want.masks.clone(),
            want.caption.clone(),
            want.tokens.clone()
        )
    );

    // An embedding from elsewhere (here: the same one) gives the same answer.
    let data = emb
        .embedding
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (h, w) = emb.original_size;
    s.set_embedding(data.clone(), h, w).unwrap();
    let r = s
        .caption(&prompt(), &Decode::Greedy { max_new_tokens: 19 })
        .unwrap();
    assert_eq!(r.caption, want.caption);
    let err = s.set_embedding(data[1..].to_vec(), h, w).unwrap_err();
    assert!(err.to_string().contains("values, the model needs"), "{err}");

    // A server's /v1/embed answer.
    let meta = [
        ("original_size".to_string(), format!("{h},{w}")),
        ("resized_size".to_string(), "256,256".to_string()),
    ]
    .into_iter()
    .collect();
    let wire = sca_core::wire::encode(
        &data,
        emb.embedding.dims(),
        sca_core::wire::WireDType::F32,
        &meta,
    );
    assert_eq!(s.set_embedding_wire(&wire).unwrap(), (h, w));
    assert!(s.set_embedding_wire(&wire[..40]).is_err());
}

#[test]
fn bad_bundles_and_images_are_named() {
    let (manifest, mut files) = browser_files();
    files.get_mut("decoder.gguf").unwrap()[1000] ^= 1;
    let err = Session::from_bundle_bytes(&manifest, files).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("decoder.gguf") && msg.contains("sha256"),
        "{msg}"
    );

    let (manifest, mut files) = browser_files();
    files.remove("tokenizer.json");
    let msg = Session::from_bundle_bytes(&manifest, files)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing"),
        "{msg}"
    );

    let (manifest, files) = browser_files();
    let s = Session::from_bundle_bytes(&manifest, files).unwrap();
    assert!(s.decode_image(b"\x89PNG\r\n\x1a\nnot a png").is_err());
    let err = s.preprocess_rgba(&[0; 10], 2, 2).unwrap_err().to_string();
    assert!(err.contains("10 bytes") && err.contains("need 16"), "{err}");
}
