//! The training paths of the core: GPT-2's `forward_train` without dropout equals the
//! inference pass, with dropout it is deterministic in its seed and drops at the configured
//! rate, and `teacher_forced_logits_train` equals `teacher_forced_logits` in eval mode while
//! gradients reach the prefix.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use sca_core::dropout::Dropout;
use sca_core::Trace;

fn parity_dir() -> PathBuf {
    std::env::var_os("SCA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn train_forward_matches_inference_and_dropout_is_seeded() {
    let dir = parity_dir().join("sca_b_box_multimask");
    let sca = sca_core::Sca::load(&dir, Device::Cpu).expect("fixture");
    let out =
        candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
    let inp = candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
    let prefix = out["lm_prefix_embeds"].clone();
    let ids = inp["input_ids"].to_dtype(DType::U32).unwrap();
    let am = inp["attention_mask"].to_dtype(DType::U32).unwrap();
    let m = &sca.model;

    let eval = m
        .teacher_forced_logits(&prefix, &ids, &am, &mut Trace::default())
        .unwrap();
    let train = m
        .teacher_forced_logits_train(&prefix, &ids, &am, None)
        .unwrap();
    let scale = eval
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max_abs_diff(&eval, &train) <= 1e-5 * scale);

    let drop = |seed| Dropout {
        seed,
        embd: 0.1,
        attn: 0.1,
        resid: 0.1,
        rows: vec![10, 11],
    };
    let a = m
        .teacher_forced_logits_train(&prefix, &ids, &am, Some(&drop(1)))
        .unwrap();
    let b = m
        .teacher_forced_logits_train(&prefix, &ids, &am, Some(&drop(1)))
        .unwrap();
    let c = m
        .teacher_forced_logits_train(&prefix, &ids, &am, Some(&drop(2)))
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0, "same seed, same masks");
    assert!(
        max_abs_diff(&a, &c) > 1e-3 * scale,
        "another seed, other masks"
    );
    assert!(
        max_abs_diff(&a, &eval) > 1e-3 * scale,
        "dropout changes the logits"
    );

    // Gradients reach the LM prefix through the frozen GPT-2.
    let p = Var::from_tensor(&prefix).unwrap();
    let logits = m
        .teacher_forced_logits_train(p.as_tensor(), &ids, &am, Some(&drop(1)))
        .unwrap();
    let loss = sca_core::caption_loss(&logits, &ids, &am, 0.1).unwrap();
    let g = loss.backward().unwrap();
    let gp = g.get(p.as_tensor()).expect("gradient at the prefix");
    assert!(
        gp.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}

#[test]
fn dropout_rate_on_the_embeddings() {
    let d = Dropout {
        seed: 5,
        embd: 0.1,
        attn: 0.0,
        resid: 0.0,
        rows: (0..8).collect(),
    };
    let x = Tensor::ones((8, 40, 64), DType::F32, &Device::Cpu).unwrap();
    let y = d
        .apply(&x, sca_core::dropout::Site::Embeddings)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.1).abs() < 0.01, "{zeros}");
    let kept: Vec<f32> = y.into_iter().filter(|&v| v != 0.0).collect();
    assert!(kept.iter().all(|&v| (v - 1.0 / 0.9).abs() < 1e-6));
    // p = 0 is the identity
    let z = Dropout { embd: 0.0, ..d };
    let y0 = z.apply(&x, sca_core::dropout::Site::Embeddings).unwrap();
    assert_eq!(max_abs_diff(&x, &y0), 0.0);
}
