//! Gradient averaging: N simulated workers (threads exchanging through `ThreadGroup`), each on
//! 1/N of the images, produce the same averaged gradients and the same AdamW update as one
//! worker on the whole batch.

mod common;

use std::sync::Arc;

use candle_core::Tensor;
use sca_data::{open_spec, DataLoader, Split};
use trainer::grad_sync::{GradAverager, SingleWorker, ThreadGroup};
use trainer::train::{loader_config, Trainer};

/// Largest difference relative to the tensor's largest gradient; tensors whose gradient is
/// zero in exact arithmetic (e.g. attention key biases, rounding noise only) are compared
/// against 1e-3 of the largest gradient of all.
fn max_rel_diff(a: &[Option<Tensor>], b: &[Option<Tensor>]) -> f64 {
    let global = a
        .iter()
        .flatten()
        .map(|t| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max);
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (Some(x), Some(y)) => {
                let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = x
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()))
                    .max(1e-3 * global);
                for (p, q) in x.iter().zip(&y) {
                    worst = worst.max(((p - q).abs() / scale) as f64);
                }
            }
            (None, None) => {}
            _ => panic!("gradient present in one run only"),
        }
    }
    worst
}

/// Gradients of one step (no update) of `workers` threads on `batch`, as seen by rank 0.
fn averaged_grads(
    tr: &Trainer,
    batch: &sca_data::Batch,
    workers: usize,
) -> (Vec<Option<Tensor>>, f64) {
    let opts = tr.loss_options(0, true);
    let vars: Vec<candle_core::Var> = tr.optimizer.vars().into_iter().cloned().collect();
    let group: Vec<Box<dyn GradAverager>> = if workers == 1 {
        vec![Box::new(SingleWorker)]
    } else {
        ThreadGroup::new(workers)
            .into_iter()
            .map(|g| Box::new(g) as Box<dyn GradAverager>)
            .collect()
    };
    let per = batch.images / workers;
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|mut avg| {
                let (vars, opts) = (&vars, &opts);
                s.spawn(move || {
                    let r = avg.rank();
                    let inputs = trainer::step::StepInputs::from_batch(
                        batch,
                        r * per..(r + 1) * per,
                        &tr.device,
                    )
                    .unwrap();
                    let losses = trainer::step::forward(&tr.model, &inputs, opts).unwrap();
                    let refs: Vec<&candle_core::Var> = vars.iter().collect();
                    let mut g = trainer::step::gradients(&losses.total, &refs).unwrap();
                    let w = avg.average(&mut g, inputs.n_tokens as f64).unwrap();
                    let mut s = [
                        losses.caption * inputs.n_tokens as f64,
                        inputs.n_tokens as f64,
                    ];
                    avg.sum_scalars(&mut s).unwrap();
                    assert_eq!(w, s[1]);
                    (r, g, s[0] / s[1])
                })
            })
            .collect();
        let mut out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        out.sort_by_key(|o| o.0);
        let (_, g, loss) = out.swap_remove(0);
        (g, loss)
    })
}

#[test]
fn n_workers_equal_one_worker_on_the_n_times_batch() {
    // Mixer + GPT-2 trainable, dropout on: masks are keyed by the region's place in the
    // whole batch, so splitting does not change them.
    let mut cfg = common::tiny_config("", "images_per_batch = 4", "", "+lm");
    cfg.data.lsj = true;
    let (mut tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let lc = loader_config(&cfg, tr.image_size(), 1, false);
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 3).unwrap();
    // LSJ can push every box of an image out of frame; take a batch with all 4 images.
    let batch = (0..20)
        .map(|_| loader.next_batch().unwrap())
        .find(|b| b.images == 4 && b.regions_per_image >= 2)
        .expect("a full batch");

    let (g1, loss1) = averaged_grads(&tr, &batch, 1);
    assert!(g1.iter().filter(|g| g.is_some()).count() > 10);
    for workers in [2, 4] {
        let (gn, lossn) = averaged_grads(&tr, &batch, workers);
        let d = max_rel_diff(&g1, &gn);
        // f32 sums in another order differ by ~1e-5..1e-4 of the largest entry; a wrong split
        // (other dropout masks, other weighting) differs by O(1).
        assert!(
            d < 3e-4,
            "{workers} workers: gradients differ by {d:e} (relative to max)"
        );
        assert!(
            (loss1 - lossn).abs() < 1e-5 * loss1.abs(),
            "{loss1} vs {lossn}"
        );
    }

    // And a full train_step through the trait gives the same weights.
    let before = trainer::train::trainable_values(&tr.store).unwrap();
    let mut single = SingleWorker;
    tr.train_step(&batch, &mut single).unwrap();
    let after_single = trainer::train::trainable_values(&tr.store).unwrap();
    let (mut tr2, _) = Trainer::new(cfg, None).unwrap();
    let init2 = trainer::train::trainable_values(&tr2.store).unwrap();
    for (k, v) in &before {
        let diff = (v - &init2[k]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{k}: same init");
    }
    let group = ThreadGroup::new(2);
    let tr2_ref = &mut tr2;
    let mut ranks = group.into_iter();
    let mut a = ranks.next().unwrap();
    let mut b = ranks.next().unwrap();
    // Rank 1 runs its half in a helper thread with its own trainer over the same weights.
    let (mut tr3, _) = Trainer::new(tr2_ref.cfg.clone(), None).unwrap();
    std::thread::scope(|s| {
        let batch = &batch;
        let h = s.spawn(move || tr3.train_step(batch, &mut b).unwrap());
        tr2_ref.train_step(batch, &mut a).unwrap();
        h.join().unwrap();
    });
    let after_pair = trainer::train::trainable_values(&tr2.store).unwrap();
    for (k, v) in &after_single {
        let w = &after_pair[k];
        let diff = (v - w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let moved = (v - &before[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-6 + 1e-3 * moved,
            "{k}: {diff:e} (update size {moved:e})"
        );
    }
}
