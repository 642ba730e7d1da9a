//! GPT-2 tokenizer against `shared/parity/tokenizer/cases.json` (transformers 4.36.2
//! GPT2TokenizerFast) for all three construction paths, the SCA fixtures' captions and generated
//! texts, the streaming detokenizer, and error messages.

use std::path::{Path, PathBuf};

use sca_core::tokenizer::{clean_up_tokenization, DecodeStream, Tokenizer, EOS_TOKEN_ID};
use sca_core::Error;
use serde_json::Value;

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
}

fn tok_dir() -> Option<PathBuf> {
    let d = parity_dir().join("tokenizer");
    if d.join("cases.json").is_file() {
        Some(d)
    } else {
        eprintln!("skipping: {} not found (set SCA_PARITY_DIR)", d.display());
        None
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tokenizer built the three ways: tokenizer.json, vocab + merges, bytes.
fn all_three(dir: &Path) -> Vec<(&'static str, Tokenizer)> {
    let vm = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("vocab.json"), vm.path().join("vocab.json")).unwrap();
    std::fs::copy(dir.join("merges.txt"), vm.path().join("merges.txt")).unwrap();
    vec![
        ("tokenizer.json", Tokenizer::from_dir(dir).unwrap()),
        ("vocab+merges dir", Tokenizer::from_dir(vm.path()).unwrap()),
        (
            "vocab+merges",
            Tokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap(),
        ),
        (
            "bytes",
            Tokenizer::from_json_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap())
                .unwrap(),
        ),
    ]
}

fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut s = DecodeStream::new(tok);
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(p) = s.push(id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = s.finish().unwrap() {
        pieces.push(p);
    }
    (pieces.concat(), pieces)
}

#[test]
fn cases_json_all_construction_paths() {
    let Some(dir) = tok_dir() else { return };
    let cases = json(&dir.join("cases.json"));
    assert_eq!(cases["eos_token_id"], EOS_TOKEN_ID);
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for (how, tok) in all_three(&dir) {
        assert_eq!(tok.vocab_size(), 50257, "{how}");
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let ids = u32s(&c["ids"]);
            let ctx = format!("{how}: {text:?}");
            assert_eq!(tok.encode(text).unwrap(), ids, "{ctx}");
            let tokens: Vec<String> = c["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            assert_eq!(tok.tokenize(text).unwrap(), tokens, "{ctx}");
            assert_eq!(
                tok.decode(&ids, false, false).unwrap(),
                c["decoded"],
                "{ctx}"
            );
            assert_eq!(
                tok.decode(&ids, false, true).unwrap(),
                c["decoded_clean_up"],
                "{ctx}"
            );
            let caption = c["decoded_skip_special_clean_up"].as_str().unwrap();
            assert_eq!(tok.decode(&ids, true, true).unwrap(), caption, "{ctx}");
            assert_eq!(tok.decode_caption(&ids).unwrap(), caption, "{ctx}");
            let i64s: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            assert_eq!(tok.decode(&i64s, true, true).unwrap(), caption, "{ctx}");
            let (streamed, _) = stream_all(&tok, &ids);
            assert_eq!(streamed, caption, "{ctx} (stream)");
        }
    }
}

#[test]
fn fixture_captions_and_generated_texts() {
    let Some(dir) = tok_dir() else { return };
    let parity = parity_dir();
    let mut seen = 0;
    for fixture in [
        "sca_a_point_single",
        "sca_b_box_multimask",
        "sca_c_points_pos_neg",
    ] {
        let fdir = parity.join(fixture);
        if !fdir.is_dir() {
            continue;
        }
        seen += 1;
        // Each checkpoint folder carries its own tokenizer files.
        let tok = Tokenizer::from_dir(&fdir).unwrap();
        let inputs = json(&fdir.join("inputs.json"));
        let captions = inputs["captions"].as_array().unwrap();
        for (i, cap) in captions.iter().enumerate() {
            let ids = u32s(&inputs["input_ids"][i]);
            let mask = u32s(&inputs["attention_mask"][i]);
            let real: Vec<u32> = ids
                .iter()
                .zip(&mask)
                .filter(|(_, &m)| m == 1)
                .map(|(&id, _)| id)
                .collect();
            assert_eq!(
                tok.encode_caption(cap.as_str().unwrap(), 18).unwrap(),
                real,
                "{fixture} caption {i}"
            );
        }
        let outputs = json(&fdir.join("outputs.json"));
        let gen = outputs["generated_tokens"].as_array().unwrap();
        for (i, ids) in gen.iter().enumerate() {
            let ids = u32s(ids);
            let want = outputs["generated_text"][i].as_str().unwrap();
            assert_eq!(tok.decode_caption(&ids).unwrap(), want, "{fixture} {i}");
            assert_eq!(stream_all(&tok, &ids).0, want, "{fixture} {i} (stream)");
            let raw = outputs["generated_text_raw"][i].as_str().unwrap();
            assert_eq!(
                tok.decode(&ids, false, true).unwrap(),
                raw,
                "{fixture} {i} raw"
            );
            // With the placeholder and the evaluation-default length.
            let seq = u32s(&outputs["generated_sequences_default"][i]);
            let want = outputs["generated_text_default"][i].as_str().unwrap();
            assert_eq!(
                tok.decode_caption(&seq).unwrap(),
                want,
                "{fixture} {i} default"
            );
        }
    }
    assert!(seen > 0 || !parity.is_dir());
    let _ = dir;
}

#[test]
fn encode_caption_truncates_then_appends_eos() {
    let Some(dir) = tok_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let full = tok.encode(text).unwrap();
    assert!(full.len() > 18);
    let cap = tok.encode_caption(text, 18).unwrap();
    assert_eq!(cap.len(), 19);
    assert_eq!(&cap[..18], &full[..18]);
    assert_eq!(cap[18], EOS_TOKEN_ID);
    assert_eq!(tok.encode_caption("", 18).unwrap(), [EOS_TOKEN_ID]);
}

#[test]
fn ignored_label_decodes_as_eos_and_bad_ids_error() {
    let Some(dir) = tok_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let ids: [i64; 4] = [-100, 64, 2266, -100];
    assert_eq!(tok.decode(&ids, true, true).unwrap(), "a red");
    assert_eq!(
        tok.decode(&ids, false, false).unwrap(),
        "<|endoftext|>a red<|endoftext|>"
    );
    for bad in [-1i64, 50257, 1 << 40] {
        let err = tok.decode(&[bad], true, true).unwrap_err().to_string();
        assert!(
            err.contains(&bad.to_string()) && err.contains("out of range"),
            "{err}"
        );
    }
    let mut s = DecodeStream::new(&tok);
    assert!(s.push(50257).is_err());
}

#[test]
fn clean_up_matches_transformers() {
    // Sequential str.replace semantics, no rescanning.
    assert_eq!(clean_up_tokenization("a , b . c ! d ? e"), "a, b. c! d? e");
    assert_eq!(clean_up_tokenization("and 'single'"), "and'single'");
    assert_eq!(clean_up_tokenization("it ' s"), "it's");
    assert_eq!(
        clean_up_tokenization("do n't I 'm you 're we 've"),
        "don't I'm you're we've"
    );
    assert_eq!(clean_up_tokenization("a  ."), "a .");
    assert_eq!(clean_up_tokenization("x ' 's"), "x''s");
}

/// Deterministic pseudo-random id sequences: byte tokens (partial UTF-8), spaces, punctuation,
/// contraction pieces, EOS; the stream must always reproduce decode_caption.
#[test]
fn stream_equals_decode_caption_on_random_sequences() {
    let Some(dir) = tok_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let mut interesting: Vec<u32> = Vec::new();
    for text in [
        " ", "  ", " .", ".", " ,", " ?", " !", " '", "'", " n't", "n't", " 's", "'s", " 're",
        " 've", " 'm", "s", "m", "t", "re", "ve", "a", " a", " the", " red", "\n", "é", "日本",
        "🙂", " ü", "’", "ß",
    ] {
        interesting.extend(tok.encode(text).unwrap());
    }
    // Single-byte tokens, incl. UTF-8 lead/continuation bytes (ids 0..255 are the byte alphabet
    // in GPT-2's vocab order).
    interesting.extend([
        EOS_TOKEN_ID,
        220,
        13,
        6,
        82,
        0,
        94,
        187,
        188,
        189,
        190,
        223,
        224,
        239,
        255,
    ]);
    interesting.sort();
    interesting.dedup();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..3000 {
        let len = 1 + next(14);
        let ids: Vec<u32> = (0..len)
            .map(|_| {
                if next(4) == 0 {
                    next(50257) as u32
                } else {
                    interesting[next(interesting.len())]
                }
            })
            .collect();
        let want = tok.decode_caption(&ids).unwrap();
        let (got, pieces) = stream_all(&tok, &ids);
        assert_eq!(got, want, "round {round}: ids {ids:?}, pieces {pieces:?}");
    }
}

#[test]
fn stream_emits_early_and_holds_back_only_what_can_change() {
    let Some(dir) = tok_dir() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let mut s = DecodeStream::new(&tok);
    let ids = tok.encode("a red ball on the grass .").unwrap();
    let mut out = Vec::new();
    for &id in &ids {
        out.push(s.push(id).unwrap());
    }
    let rest = s.finish().unwrap();
    let out: Vec<Option<&str>> = out.iter().map(|o| o.as_deref()).collect();
    assert_eq!(
        out,
        [
            Some("a"),
            Some(" red"),
            Some(" ball"),
            None, // " on": a clean-up pattern could still start at its space
            Some(" on the"),
            Some(" grass"),
            None, // " ." becomes "." at the end
        ]
    );
    assert_eq!(rest.as_deref(), Some("."));
    // Incomplete UTF-8 is held back until the character is complete.
    let emoji = tok.encode("🙂").unwrap();
    assert!(emoji.len() > 1);
    let mut s = DecodeStream::new(&tok);
    let mut pieces = Vec::new();
    for &id in &emoji {
        pieces.push(s.push(id).unwrap());
    }
    assert!(pieces[..pieces.len() - 1].iter().all(Option::is_none));
    assert_eq!(pieces.last().unwrap().as_deref(), Some("🙂"));
    assert_eq!(s.finish().unwrap(), None);
    // A dangling partial character becomes U+FFFD, as in decode.
    let mut s = DecodeStream::new(&tok);
    assert_eq!(s.push(emoji[0]).unwrap(), None);
    let tail = s.finish().unwrap().unwrap();
    assert_eq!(tail, tok.decode_caption(&emoji[..1]).unwrap());
    assert!(tail.contains('\u{FFFD}'));
}

#[test]
fn missing_files_name_the_directory_and_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer(_)));
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        assert!(msg.contains(f), "{msg}");
    }
    // vocab.json alone is not enough.
    std::fs::write(dir.path().join("vocab.json"), "{}").unwrap();
    let msg = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("merges.txt"), "{msg}");

    let missing = dir.path().join("nope.json");
    match Tokenizer::from_vocab_merges(&missing, &dir.path().join("merges.txt")).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, missing),
        e => panic!("{e:?}"),
    }
}

#[test]
fn malformed_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let msg = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("invalid"),
        "{msg}"
    );
    assert!(Tokenizer::from_json_bytes(b"\xff\xfe").is_err());

    let vocab = dir.path().join("vocab.json");
    let merges = dir.path().join("merges.txt");
    std::fs::write(&vocab, "[1, 2]").unwrap();
    std::fs::write(&merges, "#version: 0.2\na b\n").unwrap();
    let msg = Tokenizer::from_vocab_merges(&vocab, &merges)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("vocab.json"), "{msg}");

    std::fs::write(&vocab, r#"{"a": 0, "b": 1, "ab": 2}"#).unwrap();
    std::fs::write(&merges, "#version: 0.2\na b c\n").unwrap();
    let msg = Tokenizer::from_vocab_merges(&vocab, &merges)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("merges.txt") && msg.contains("line 2"),
        "{msg}"
    );

    // A valid BPE that is not GPT-2's (no <|endoftext|> at 50256).
    std::fs::write(&merges, "#version: 0.2\na b\n").unwrap();
    let msg = Tokenizer::from_vocab_merges(&vocab, &merges)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("50256"), "{msg}");
}
