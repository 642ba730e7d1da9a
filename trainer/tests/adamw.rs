//! One AdamW step on mixer parameters against a hand-computed reference (float64, the
//! formulas of torch.optim.AdamW), with the weight-decay exclusions and the warm-up lr.

use candle_core::{Device, Tensor, Var};
use trainer::optim::{lr_at, AdamW, AdamWParams};

fn var(v: &[f32]) -> Var {
    Var::new(v, &Device::Cpu).unwrap()
}

/// torch.optim.AdamW for one parameter over a sequence of gradients, in f64.
fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], decay: bool) -> Vec<f64> {
    let (b1, b2, eps, wd) = (0.9f64, 0.999f64, 1e-8f64, 1e-4f64);
    let mut p = p0.to_vec();
    let mut m = vec![0.0; p.len()];
    let mut v = vec![0.0; p.len()];
    for (t, (g, &lr)) in grads.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        for i in 0..p.len() {
            if decay {
                p[i] *= 1.0 - lr * wd;
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = m[i] / (1.0 - b1.powi(t));
            let vhat = v[i] / (1.0 - b2.powi(t));
            p[i] -= lr * mhat / (vhat.sqrt() + eps);
        }
    }
    p
}

#[test]
fn adamw_matches_hand_computed_reference() {
    // Warm-up: lr 1e-4, 200 warm-up steps -> step 50 uses 2.5e-5, step 51 2.55e-5.
    let lr0 = lr_at(1e-4, 50, 200, 200_000, "cosine");
    let lr1 = lr_at(1e-4, 51, 200, 200_000, "cosine");
    assert!((lr0 - 2.5e-5).abs() < 1e-18 && (lr1 - 2.55e-5).abs() < 1e-18);

    let params: Vec<(&str, Vec<f32>, bool)> = vec![
        // (key, initial value, gets weight decay)
        (
            "mask_decoder.caption_tokens.weight",
            vec![0.5, -0.25, 1.5],
            true,
        ),
        (
            "mask_decoder.additional_transformer.layers.0.mlp.lin1.bias",
            vec![0.1, -0.2],
            false,
        ),
        (
            "mask_decoder.additional_transformer.layers.0.layer_norm1.weight",
            vec![1.0, 0.9],
            false,
        ),
        ("language_project.weight", vec![2.0, -3.0], true),
        ("task_tokens.weight", vec![-0.75], true),
    ];
    let g1: Vec<Vec<f32>> = vec![
        vec![0.2, -0.1, 0.0],
        vec![1e-3, -4.0],
        vec![0.3, 0.3],
        vec![-2e-6, 5.0],
        vec![0.05],
    ];
    let g2: Vec<Vec<f32>> = vec![
        vec![-0.1, -0.1, 0.4],
        vec![2e-3, 1.0],
        vec![0.0, -0.3],
        vec![1e-6, 2.5],
        vec![0.05],
    ];
    let vars: Vec<(String, Var)> = params
        .iter()
        .map(|(k, v, _)| (k.to_string(), var(v)))
        .collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default()).unwrap();
    let as_tensors = |g: &[Vec<f32>]| -> Vec<Option<Tensor>> {
        g.iter()
            .map(|v| Some(Tensor::new(v.as_slice(), &Device::Cpu).unwrap()))
            .collect()
    };
    opt.step(&as_tensors(&g1), lr0).unwrap();

    // The first step by hand for caption_tokens[0]: m̂ = g, v̂ = g², so
    // p1 = 0.5·(1 − 2.5e-5·1e-4) − 2.5e-5 · 0.2 / (0.2 + 1e-8).
    let by_hand = 0.5 * (1.0 - 2.5e-5 * 1e-4) - 2.5e-5 * 0.2 / (0.2 + 1e-8);
    let got = vars[0].1.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((got - by_hand).abs() < 1e-7, "{got} vs {by_hand}");
    // The bias (no decay) with g = -4: p1 = -0.2 + 2.5e-5 (sign step)
    let got = vars[1].1.as_tensor().to_vec1::<f32>().unwrap()[1] as f64;
    assert!((got - (-0.2 + 2.5e-5 * 4.0 / (4.0 + 1e-8))).abs() < 1e-7);

    opt.step(&as_tensors(&g2), lr1).unwrap();
    assert_eq!(opt.steps(), 2);
    for (i, (key, p0, decay)) in params.iter().enumerate() {
        assert_eq!(trainer::params::decays(key), *decay, "{key}");
        let p0: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let gs: Vec<Vec<f64>> = [&g1[i], &g2[i]]
            .iter()
            .map(|g| g.iter().map(|&v| v as f64).collect())
            .collect();
        let want = reference(&p0, &gs, &[lr0, lr1], *decay);
        let got = vars[i].1.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() <= 1e-7 * b.abs().max(1.0),
                "{key}: {a} vs {b}"
            );
        }
    }

    // Moments survive a save/restore exactly.
    let (state, step) = opt.state();
    let fresh: Vec<(String, Var)> = vars
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut opt2 = AdamW::new(fresh.clone(), AdamWParams::default()).unwrap();
    opt2.load_state(&state, step).unwrap();
    opt.step(&as_tensors(&g1), lr1).unwrap();
    opt2.step(&as_tensors(&g1), lr1).unwrap();
    for ((_, a), (_, b)) in vars.iter().zip(&fresh) {
        assert_eq!(
            a.as_tensor().to_vec1::<f32>().unwrap(),
            b.as_tensor().to_vec1::<f32>().unwrap()
        );
    }
}
