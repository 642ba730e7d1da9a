//! Decoding checks on the fixture models: beam search with the KV cache equals a reference beam
//! search that recomputes the whole sequence every step (HF `BeamSearchScorer` rules written out
//! independently here), one beam equals greedy, and streaming/cancellation behave.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use sca_core::generate::{generate, Decode};
use sca_core::gpt2::Gpt2;
use sca_core::Trace;

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
}

/// The fixture's GPT-2 and its official LM prefixes (M, 14, D).
fn fixture_lm(name: &str) -> (Gpt2, Tensor) {
    let dir = parity_dir().join(name);
    let cfg = sca_core::config::ScaConfig::from_file(&dir.join("config.json")).expect("config");
    let w = sca_core::weights::Weights::load(&dir).expect("weights");
    let lm = Gpt2::new(
        &cfg.text_config,
        w.var_builder(&Device::Cpu).pp("language_model"),
    )
    .unwrap();
    let out =
        candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
    (lm, out["lm_prefix_embeds"].clone())
}

/// log-softmax of the next-token logits after `prefix` + `tokens`, without any cache.
fn next_logprobs(lm: &Gpt2, prefix: &Tensor, tokens: &[u32]) -> Vec<f32> {
    let mut x = prefix.unsqueeze(0).unwrap();
    if !tokens.is_empty() {
        let ids = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        x = Tensor::cat(&[&x, &lm.embed_tokens(&ids).unwrap()], 1).unwrap();
    }
    let h = lm
        .forward_embeds(&x, None, &mut lm.new_cache(), "", &mut Trace::default())
        .unwrap();
    let lg = lm.last_logits(&h).unwrap();
    candle_nn::ops::log_softmax(&lg, D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// HF beam search for one sequence, length_penalty 1, early_stopping False.
fn reference_beam(lm: &Gpt2, prefix: &Tensor, nb: usize, max_new: usize, eos: u32) -> Vec<u32> {
    let mut beams: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
    let mut hyps: Vec<(f32, Vec<u32>)> = Vec::new();
    let mut done = false;
    for step in 0..max_new {
        let mut cand: Vec<(f32, usize, u32)> = Vec::new();
        for (bi, (toks, score)) in beams.iter().enumerate() {
            let lp = next_logprobs(lm, prefix, toks);
            for (t, v) in lp.iter().enumerate() {
                cand.push((score + v, bi, t as u32));
            }
        }
        // beams other than the first start at -1e9 in HF: only beam 0 exists at step 0
        cand.sort_by(|a, b| b.0.total_cmp(&a.0));
        cand.truncate(2 * nb);
        let mut next = Vec::new();
        for (rank, &(s, bi, t)) in cand.iter().enumerate() {
            if t == eos {
                if rank < nb {
                    let len = (step + 1) as f32;
                    hyps.push((s / len, beams[bi].0.clone()));
                    hyps.sort_by(|a, b| b.0.total_cmp(&a.0));
                    hyps.truncate(nb);
                }
            } else {
                let mut v = beams[bi].0.clone();
                v.push(t);
                next.push((v, s));
            }
            if next.len() == nb {
                break;
            }
        }
        if hyps.len() == nb {
            let worst = hyps.iter().map(|h| h.0).fold(f32::INFINITY, f32::min);
            if worst >= cand[0].0 / (step + 1) as f32 {
                done = true;
                break;
            }
        }
        beams = next;
    }
    if !done {
        for (toks, s) in &beams {
            hyps.push((s / toks.len() as f32, toks.clone()));
        }
        hyps.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    let mut best = hyps[0].1.clone();
    if best.len() < max_new {
        best.push(eos);
    }
    best
}

#[test]
fn beam_search_with_cache_equals_reference() {
    for fixture in ["sca_b_box_multimask", "sca_a_point_single"] {
        let (lm, prefix) = fixture_lm(fixture);
        let m = prefix.dim(0).unwrap();
        for nb in [2, 3] {
            let d = Decode::Beam {
                num_beams: nb,
                max_new_tokens: 8,
                length_penalty: 1.0,
            };
            let ours = generate(&lm, &prefix, &d, 50256, &mut |_, _| true).unwrap();
            for (i, got) in ours.iter().enumerate().take(m) {
                let want = reference_beam(&lm, &prefix.get(i).unwrap(), nb, 8, 50256);
                assert_eq!(got, &want, "{fixture} region {i}, {nb} beams");
            }
        }
    }
}

#[test]
fn one_beam_is_greedy_and_batching_changes_nothing() {
    let (lm, prefix) = fixture_lm("sca_b_box_multimask");
    let greedy = generate(
        &lm,
        &prefix,
        &Decode::Greedy { max_new_tokens: 10 },
        50256,
        &mut |_, _| true,
    )
    .unwrap();
    let one_beam = generate(
        &lm,
        &prefix,
        &Decode::Beam {
            num_beams: 1,
            max_new_tokens: 10,
            length_penalty: 1.0,
        },
        50256,
        &mut |_, _| true,
    )
    .unwrap();
    assert_eq!(greedy, one_beam);
    for (i, want) in greedy.iter().enumerate() {
        let alone = generate(
            &lm,
            &prefix.narrow(0, i, 1).unwrap(),
            &Decode::Greedy { max_new_tokens: 10 },
            50256,
            &mut |_, _| true,
        )
        .unwrap();
        assert_eq!(&alone[0], want);
    }
    // region 0 of this fixture stops at EOS after 5 tokens
    assert_eq!(greedy[0].len(), 6);
    assert_eq!(*greedy[0].last().unwrap(), 50256);
}

#[test]
fn streaming_callback_sees_every_token_and_can_cancel() {
    let (lm, prefix) = fixture_lm("sca_b_box_multimask");
    let mut seen = vec![Vec::new(); 2];
    let out = generate(
        &lm,
        &prefix,
        &Decode::Greedy { max_new_tokens: 7 },
        50256,
        &mut |s, t| {
            seen[s].push(t);
            true
        },
    )
    .unwrap();
    assert_eq!(seen, out);
    let mut n = 0;
    let out = generate(
        &lm,
        &prefix,
        &Decode::Greedy { max_new_tokens: 7 },
        50256,
        &mut |_, _| {
            n += 1;
            n < 3
        },
    )
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(out.iter().map(|v| v.len()).sum::<usize>(), 3);
}

#[test]
fn loss_of_one_batch_matches_the_official_loss() {
    for fixture in [
        "sca_a_point_single",
        "sca_b_box_multimask",
        "sca_c_points_pos_neg",
    ] {
        let dir = parity_dir().join(fixture);
        let sca = sca_core::Sca::load(&dir, Device::Cpu).expect("load");
        let inp =
            candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
        let out =
            candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
        let ids = inp["input_ids"].to_dtype(DType::U32).unwrap();
        let am = inp["attention_mask"].to_dtype(DType::U32).unwrap();
        let logits = sca
            .model
            .teacher_forced_logits(&out["lm_prefix_embeds"], &ids, &am, &mut Trace::default())
            .unwrap();
        let loss = sca_core::caption_loss(&logits, &ids, &am, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = out["lm_loss"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (loss - want).abs() <= 1e-4 * want.abs(),
            "{fixture}: loss {loss} vs official {want}"
        );
    }
}

/// `begin_caption` + `CaptionSteps` (the browser's one-token-per-turn decoding) give the masks,
/// IoU, tokens and caption of `predict`, and the pieces concatenate to the caption.
#[test]
fn stepwise_caption_equals_predict() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/sca-shapes");
    let sca = sca_core::Sca::load(&root, Device::Cpu).expect("bundled model");
    let img = sca_core::image::load_image(&root.join("examples/shapes-777-0.png")).unwrap();
    let emb = sca.embed(&img).unwrap();
    let prompt = sca_core::Prompt {
        box_: Some([148.0, 114.0, 225.0, 191.0]),
        multimask: true,
        ..Default::default()
    };
    let want = sca
        .predict(&emb, &prompt, &Decode::Greedy { max_new_tokens: 20 })
        .unwrap();
    let (mut region, mut steps) = sca.begin_caption(&emb, &prompt, 20).unwrap();
    assert_eq!(region.masks, want.masks);
    assert_eq!(region.iou, want.iou);
    assert!(region.caption.is_empty() && region.tokens.is_empty());
    let mut text = String::new();
    let mut n = 0;
    while let Some(piece) = steps.next(&sca).unwrap() {
        text.push_str(&piece);
        n += 1;
    }
    assert_eq!(
        steps.next(&sca).unwrap(),
        None,
        "an ended caption stays ended"
    );
    text.extend(steps.finish(&sca, &mut region).unwrap());
    assert_eq!(n, want.tokens.len());
    assert_eq!(region.tokens, want.tokens);
    assert_eq!(region.caption, want.caption);
    assert_eq!(text, want.caption);

    // Cancelling after two tokens keeps them.
    let (mut region, mut steps) = sca.begin_caption(&emb, &prompt, 20).unwrap();
    steps.next(&sca).unwrap();
    steps.next(&sca).unwrap();
    steps.finish(&sca, &mut region).unwrap();
    assert_eq!(region.tokens, want.tokens[..2]);
}
