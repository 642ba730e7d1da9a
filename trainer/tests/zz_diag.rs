mod common;
use std::sync::Arc;
use candle_core::Var;
use sca_data::{open_spec, DataLoader, Split};
use trainer::step::{forward, gradients, StepInputs};
use trainer::train::{loader_config, Trainer};

#[test]
#[ignore]
fn diag() {
    let path = std::env::var("DIAG_CFG").unwrap();
    let cfg = trainer::config::TrainConfig::from_file(std::path::Path::new(&path)).unwrap();
    let (tr, _) = Trainer::new(cfg.clone(), std::env::var("DIAG_RESUME").ok().as_deref().map(std::path::Path::new)).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let mut lc = loader_config(&cfg, tr.image_size(), 1, true);
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let batch = loader.next_batch().unwrap();
    let inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    let mut opts = tr.loss_options(0, false);
    opts.mask_loss_weight = None;
    let vars = tr.store.trainable();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let l = forward(&tr.model, &inputs, &opts).unwrap();
    eprintln!("caption loss {}", l.caption);
    let g = gradients(&l.total, &refs).unwrap();
    for ((k, v), g) in vars.iter().zip(&g) {
        let n = g.as_ref().map(|t| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt());
        let w = v.as_tensor().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        if !k.contains("layers.1") && !k.contains("layers.2") && !k.contains("layers.3") {
            eprintln!("{k:80} grad {n:?} rms {w:.4}");
        }
    }
}

#[test]
#[ignore]
fn prefix_stats() {
    use sca_core::Trace;
    use candle_core::Tensor;
    let path = std::env::var("DIAG_CFG").unwrap();
    let cfg = trainer::config::TrainConfig::from_file(std::path::Path::new(&path)).unwrap();
    let (tr, _) = Trainer::new(cfg.clone(), std::env::var("DIAG_RESUME").ok().as_deref().map(std::path::Path::new)).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let mut lc = loader_config(&cfg, tr.image_size(), 1, true);
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let batch = loader.next_batch().unwrap();
    let inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    let m = &tr.model;
    let mut pre = vec![];
    let mut qs = vec![];
    for (px, pr) in inputs.pixel_values.iter().zip(&inputs.prompts) {
        let e = m.embed_pixels(px, &mut Trace::default()).unwrap();
        let o = m.decode_prompts(&e, pr, false, &mut Trace::default()).unwrap();
        pre.push(o.prefix);
        qs.push(o.decoder.queries_out);
    }
    let stat = |name: &str, t: &Tensor| {
        let mean = t.mean_keepdim(0).unwrap();
        let dev = t.broadcast_sub(&mean).unwrap();
        let sd = dev.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let rms = t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        eprintln!("{name}: across-region sd {sd:.5} rms {rms:.5}");
    };
    let prefix = Tensor::cat(&pre, 0).unwrap();
    stat("prefix", &prefix);
    stat("prefix caption part", &prefix.narrow(1, 6, 8).unwrap());
    stat("decoder queries_out", &Tensor::cat(&qs, 0).unwrap());
    let wte = tr.store.snapshot().unwrap().remove("language_model.transformer.wte.weight").unwrap();
    stat("wte", &wte);
    let opts = tr.loss_options(0, false);
    let logits = m.teacher_forced_logits_train(&prefix, &inputs.input_ids, &inputs.attention_mask, None).unwrap();
    let l0 = sca_core::caption_loss(&logits, &inputs.input_ids, &inputs.attention_mask, 0.0).unwrap().to_scalar::<f32>().unwrap();
    let n = prefix.dim(0).unwrap();
    let perm: Vec<u32> = (0..n as u32).map(|i| (i + 5) % n as u32).collect();
    let shuffled = prefix.index_select(&Tensor::new(perm.as_slice(), &tr.device).unwrap(), 0).unwrap();
    let logits = m.teacher_forced_logits_train(&shuffled, &inputs.input_ids, &inputs.attention_mask, None).unwrap();
    let l1 = sca_core::caption_loss(&logits, &inputs.input_ids, &inputs.attention_mask, 0.0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("loss true prefix {l0} shuffled {l1} ({:?})", opts.label_smoothing);
}

#[test]
#[ignore]
fn lm_learns_from_prefix() {
    use candle_core::{Tensor, Device, DType};
    use trainer::optim::{AdamW, AdamWParams};
    let path = std::env::var("DIAG_CFG").unwrap();
    let cfg = trainer::config::TrainConfig::from_file(std::path::Path::new(&path)).unwrap();
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let only: String = std::env::var("DIAG_ONLY").unwrap_or("language_model.".into());
    let vars: Vec<(String, Var)> = tr.store.trainable().into_iter().filter(|(k, _)| k.starts_with(&only)).collect();
    eprintln!("{} vars", vars.len());
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default()).unwrap();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let colours = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"];
    let d = tr.config.text_config.n_embd;
    let mut rng = trainer::rng::SplitMix::new(3);
    let protos: Vec<Vec<f32>> = (0..8).map(|_| (0..14 * d).map(|_| (rng.normal() * 0.1) as f32).collect()).collect();
    let scale: f32 = std::env::var("DIAG_SCALE").map(|s| s.parse().unwrap()).unwrap_or(1.0);
    for step in 0..300u64 {
        let n = 16;
        let mut pre = vec![];
        let mut ids = vec![];
        let mut lens = vec![];
        for _ in 0..n {
            let c = (rng.next_u64() % 8) as usize;
            pre.extend(protos[c].iter().map(|v| v * scale + (rng.normal() * 0.1) as f32));
            let t = tr.tokenizer.encode_caption(&format!("a small {} circle", colours[c]), 18).unwrap();
            lens.push(t.len());
            ids.push(t);
        }
        let l = *lens.iter().max().unwrap();
        let mut flat = vec![]; let mut am = vec![];
        for t in &ids { for j in 0..l { flat.push(*t.get(j).unwrap_or(&50256)); am.push((j < t.len()) as u32); } }
        let prefix = Tensor::from_vec(pre, (n, 14, d), &Device::Cpu).unwrap();
        let ids_t = Tensor::from_vec(flat, (n, l), &Device::Cpu).unwrap();
        let am_t = Tensor::from_vec(am, (n, l), &Device::Cpu).unwrap();
        let logits = tr.model.teacher_forced_logits_train(&prefix, &ids_t, &am_t, None).unwrap();
        let loss = sca_core::caption_loss(&logits, &ids_t, &am_t, 0.0).unwrap();
        if step % 20 == 0 { eprintln!("step {step} loss {}", loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()); }
        let g = gradients(&loss, &refs).unwrap();
        opt.step(&g, 1e-3).unwrap();
    }
}

#[test]
#[ignore]
fn cached_mixer() {
    use candle_core::{Tensor, Device, DType, D};
    use sca_core::Trace;
    use trainer::optim::{AdamW, AdamWParams};
    let path = std::env::var("DIAG_CFG").unwrap();
    let cfg = trainer::config::TrainConfig::from_file(std::path::Path::new(&path)).unwrap();
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let mut lc = loader_config(&cfg, tr.image_size(), 1, true);
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let m = &tr.model;
    let colours = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"];
    let nb: usize = std::env::var("DIAG_BATCHES").map(|s| s.parse().unwrap()).unwrap_or(30);
    // cache: per batch (queries_out, keys_out, ids, am, colour labels)
    let mut cache = vec![];
    let mut pooled = vec![];
    let mut prefs = vec![];
    let mut shape_labels: Vec<usize> = vec![];
    let t0 = std::time::Instant::now();
    for _ in 0..nb {
        let batch = loader.next_batch().unwrap();
        let inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
        let mut qs = vec![]; let mut ks = vec![];
        for (px, pr) in inputs.pixel_values.iter().zip(&inputs.prompts) {
            let e = m.embed_pixels(px, &mut Trace::default()).unwrap();
            let o = m.decode_prompts(&e, pr, false, &mut Trace::default()).unwrap();
            qs.push(o.decoder.queries_out.detach()); ks.push(o.decoder.keys_out.detach());
            prefs.push(o.prefix.narrow(1, 6, o.prefix.dim(1).unwrap() - 6).unwrap().mean(1).unwrap().detach());
        }
        // oracle-localised features: keys_out and embedding pooled over the GT mask
        let g = 16usize; let ms = batch.mask_size; let f = ms / g;
        let masks = batch.masks.as_ref().unwrap();
        let kk = Tensor::cat(&ks, 0).unwrap();
        let embs: Vec<Tensor> = inputs.pixel_values.iter().map(|px| m.embed_pixels(px, &mut Trace::default()).unwrap()).collect();
        let r = batch.regions_per_image;
        let mut wv = vec![];
        for row in 0..batch.images * r {
            let mut w = vec![0f32; g * g];
            for y in 0..ms { for x in 0..ms { w[(y / f) * g + x / f] += masks[row * ms * ms + y * ms + x] as f32; } }
            let sum: f32 = w.iter().sum::<f32>().max(1.0); for v in &mut w { *v /= sum; }
            wv.extend(w);
        }
        let wt = Tensor::from_vec(wv, (batch.images * r, 1, g * g), &Device::Cpu).unwrap();
        let pooled_k = wt.matmul(&kk).unwrap().squeeze(1).unwrap();
        let et: Vec<Tensor> = (0..batch.images).map(|i| embs[i].flatten_from(2).unwrap().transpose(1, 2).unwrap().broadcast_as((r, g * g, embs[i].dim(1).unwrap())).unwrap().contiguous().unwrap()).collect();
        let pooled_e = wt.matmul(&Tensor::cat(&et, 0).unwrap()).unwrap().squeeze(1).unwrap();
        pooled.push((pooled_k, pooled_e));
        let oracle = std::env::var("DIAG_ORACLE").is_ok();
        let shapes = ["circle", "square", "triangle", "star", "cross"];
        shape_labels.extend(batch.captions.iter().map(|c| shapes.iter().position(|w| c.split(' ').any(|x| x == *w)).unwrap()));
        let labels: Vec<usize> = batch.captions.iter().map(|c| colours.iter().position(|w| c.split(' ').any(|x| x == *w)).unwrap()).collect();
        let mut keys = Tensor::cat(&ks, 0).unwrap();
        if oracle {
            let c = keys.dim(2).unwrap();
            let mut rng2 = trainer::rng::SplitMix::new(11);
            let emb: Vec<f32> = (0..8 * c).map(|_| (rng2.normal() * 1.0) as f32).collect();
            let emb = Tensor::from_vec(emb, (8, c), &Device::Cpu).unwrap();
            let lab = Tensor::from_vec(labels.iter().map(|&l| l as u32).collect::<Vec<_>>(), labels.len(), &Device::Cpu).unwrap();
            let e = emb.index_select(&lab, 0).unwrap().unsqueeze(1).unwrap(); // (M,1,C)
            // binary object tokens from the pooled weights (wt: (M,1,g*g))
            let w = wt.gt(0.0).unwrap().to_dtype(DType::F32).unwrap().transpose(1, 2).unwrap(); // (M,g*g,1)
            keys = (keys + w.broadcast_mul(&e).unwrap()).unwrap();
        }
        let mut qcat_b = Tensor::cat(&qs, 0).unwrap();
        if std::env::var("DIAG_QORACLE").is_ok() {
            let c = qcat_b.dim(2).unwrap();
            let mut rng2 = trainer::rng::SplitMix::new(12);
            let emb: Vec<f32> = (0..8 * c).map(|_| (rng2.normal() * 0.5) as f32).collect();
            let emb = Tensor::from_vec(emb, (8, c), &Device::Cpu).unwrap();
            let lab = Tensor::from_vec(labels.iter().map(|&l| l as u32).collect::<Vec<_>>(), labels.len(), &Device::Cpu).unwrap();
            let e = emb.index_select(&lab, 0).unwrap().unsqueeze(1).unwrap();
            // mark the 4 mask-token outputs (tokens 1..5)
            let n = qcat_b.dim(1).unwrap();
            let w: Vec<f32> = (0..n).map(|t| if (1..5).contains(&t) { 1.0 } else { 0.0 }).collect();
            let w = Tensor::from_vec(w, (1, n, 1), &Device::Cpu).unwrap();
            qcat_b = (qcat_b + w.broadcast_mul(&e).unwrap()).unwrap();
        }
        cache.push((qcat_b, keys, inputs.input_ids.clone(), inputs.attention_mask.clone(), labels));
    }
    eprintln!("cached {} batches in {:.1}s", nb, t0.elapsed().as_secs_f64());
    // linear probe (least squares via normal equations on CPU f64) from several features
    let probe = |name: &str, feats: Vec<Vec<f32>>, labels: Vec<usize>| {
        let n = feats.len(); let d = feats[0].len() + 1; let ntr = n * 3 / 4;
        let mut a = vec![0f64; d * d]; let mut b = vec![0f64; d * 8];
        for i in 0..ntr { let mut x: Vec<f64> = feats[i].iter().map(|&v| v as f64).collect(); x.push(1.0);
            for p in 0..d { for q in 0..d { a[p*d+q] += x[p]*x[q]; } b[p*8+labels[i]] += x[p]; } }
        for p in 0..d { a[p*d+p] += 1e-2 * ntr as f64; }
        // solve a w = b (gauss)
        let mut w = b.clone();
        for c in 0..d { let piv = a[c*d+c]; for q in 0..d { a[c*d+q] /= piv; } for k in 0..8 { w[c*8+k] /= piv; }
            for r in 0..d { if r != c { let f = a[r*d+c]; if f != 0.0 { for q in 0..d { a[r*d+q] -= f*a[c*d+q]; } for k in 0..8 { w[r*8+k] -= f*w[c*8+k]; } } } } }
        let mut ok = 0; for i in ntr..n { let mut x: Vec<f64> = feats[i].iter().map(|&v| v as f64).collect(); x.push(1.0);
            let s: Vec<f64> = (0..8).map(|k| (0..d).map(|p| x[p]*w[p*8+k]).sum()).collect();
            let best = (0..8).max_by(|&i, &j| s[i].partial_cmp(&s[j]).unwrap()).unwrap(); ok += (best == labels[i]) as usize; }
        eprintln!("probe {name}: colour acc {:.3} (n_test {})", ok as f64 / (n - ntr) as f64, n - ntr);
    };
    let labels: Vec<usize> = cache.iter().flat_map(|c| c.4.clone()).collect();
    let qcat = Tensor::cat(&cache.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), 0).unwrap();
    let ntok = qcat.dim(1).unwrap();
    let mean_q: Vec<Vec<f32>> = qcat.mean(1).unwrap().to_vec2().unwrap();
    probe("mean queries_out", mean_q, labels.clone());
    let pf = Tensor::cat(&prefs, 0).unwrap();
    probe("prefix mean (caption part)", pf.to_vec2().unwrap(), labels.clone());
    probe("SHAPE prefix mean (caption part)", pf.to_vec2().unwrap(), shape_labels.clone());
    probe("SHAPE mean queries_out", qcat.mean(1).unwrap().to_vec2().unwrap(), shape_labels.clone());
    let all_q: Vec<Vec<f32>> = qcat.flatten_from(1).unwrap().to_vec2().unwrap();
    probe("all queries_out", all_q, labels.clone());
    for t in 0..ntok { let f: Vec<Vec<f32>> = qcat.narrow(1, t, 1).unwrap().squeeze(1).unwrap().to_vec2().unwrap(); probe(&format!("token {t}"), f, labels.clone()); }
    let kcat = Tensor::cat(&cache.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), 0).unwrap();
    probe("mean keys_out", kcat.mean(1).unwrap().to_vec2().unwrap(), labels.clone());
    let pk = Tensor::cat(&pooled.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), 0).unwrap();
    probe("GT-mask pooled keys_out", pk.to_vec2().unwrap(), labels.clone());
    let pe_ = Tensor::cat(&pooled.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), 0).unwrap();
    probe("GT-mask pooled image embedding", pe_.to_vec2().unwrap(), labels.clone());
    // train mixer + LM on the cache
    let steps: usize = std::env::var("DIAG_STEPS").map(|s| s.parse().unwrap()).unwrap_or(0);
    if steps == 0 { return; }
    let lr: f64 = std::env::var("DIAG_LR").map(|s| s.parse().unwrap()).unwrap_or(1e-3);
    let vars: Vec<(String, Var)> = tr.store.trainable().into_iter().filter(|(k, _)| k.starts_with("language_model.") || trainer::params::is_mixer_key(k)).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default()).unwrap();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let pe = m.image_positional_embeddings();
    let pe_tok = pe.flatten_from(2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let ntrain = cache.len() - 4;
    let eval = |opt_step: usize| {
        let (mut s, mut nn) = (0f32, 0);
        for c in &cache[ntrain..] {
            let q = m.mixer.forward(&c.0, &c.1, &pe_tok, &mut Trace::default()).unwrap();
            let p = m.mixer.prefix(&q, sca_core::mixer::Task::Caption, &mut Trace::default()).unwrap();
            let lg = m.teacher_forced_logits_train(&p, &c.2, &c.3, None).unwrap();
            s += sca_core::caption_loss(&lg, &c.2, &c.3, 0.0).unwrap().to_scalar::<f32>().unwrap(); nn += 1;
        }
        eprintln!("step {opt_step} heldout caption loss {:.4}", s / nn as f32);
    };
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        if step % 50 == 0 { eval(step); }
        let c = &cache[step % ntrain];
        let q = m.mixer.forward(&c.0, &c.1, &pe_tok, &mut Trace::default()).unwrap();
        let p = m.mixer.prefix(&q, sca_core::mixer::Task::Caption, &mut Trace::default()).unwrap();
        let lg = m.teacher_forced_logits_train(&p, &c.2, &c.3, None).unwrap();
        let loss = sca_core::caption_loss(&lg, &c.2, &c.3, 0.0).unwrap();
        let g = gradients(&loss, &refs).unwrap();
        let lr_t = lr * ((step + 1) as f64 / 50.0).min(1.0);
        opt.step(&g, lr_t).unwrap();
    }
    eval(steps);
    eprintln!("{} steps in {:.1}s", steps, t0.elapsed().as_secs_f64());
    let _ = (DType::F32, D::Minus1, Device::Cpu);
}

#[test]
#[ignore]
fn grad_ratio() {
    let path = std::env::var("DIAG_CFG").unwrap();
    let cfg = trainer::config::TrainConfig::from_file(std::path::Path::new(&path)).unwrap();
    let (tr, _) = Trainer::new(cfg.clone(), None).unwrap();
    let ds = open_spec(&cfg.data.train, Split::Train).unwrap();
    let mut lc = loader_config(&cfg, tr.image_size(), 1, true);
    lc.mask_size = Some(tr.mask_size());
    let mut loader = DataLoader::new(ds, Arc::new(tr.tokenizer.clone()), lc, 9).unwrap();
    let batch = loader.next_batch().unwrap();
    let inputs = StepInputs::from_batch(&batch, 0..batch.images, &tr.device).unwrap();
    let vars = tr.store.trainable();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let mut o1 = tr.loss_options(0, false); o1.mask_loss_weight = None;
    let mut o2 = tr.loss_options(0, false); o2.caption_loss_weight = 0.0; o2.mask_loss_weight = Some(1.0);
    let g1 = gradients(&forward(&tr.model, &inputs, &o1).unwrap().total, &refs).unwrap();
    let g2 = gradients(&forward(&tr.model, &inputs, &o2).unwrap().total, &refs).unwrap();
    let n = |g: &Option<candle_core::Tensor>| g.as_ref().map(|t| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()).unwrap_or(0.0);
    let mut groups: std::collections::BTreeMap<String, (f32, f32)> = Default::default();
    for ((k, _), (a, b)) in vars.iter().zip(g1.iter().zip(&g2)) {
        let grp = if k.starts_with("vision_encoder") { "encoder" } else if k.starts_with("mask_decoder.transformer") { "dec.transformer" } else if trainer::params::is_mixer_key(k) { "mixer" } else if k.starts_with("language_model") { "lm" } else { "other" };
        let e = groups.entry(grp.into()).or_default(); e.0 += n(a).powi(2); e.1 += n(b).powi(2);
    }
    for (k, (a, b)) in groups { eprintln!("{k:20} caption grad {:.3e}  mask grad {:.3e}  ratio {:.3e}", a.sqrt(), b.sqrt(), a.sqrt() / b.sqrt().max(1e-20)); }
}
