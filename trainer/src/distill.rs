//! Knowledge distillation (`trainer distill`): a student SCA with a smaller GPT-2 learns the
//! teacher's captions. Student and teacher share SAM (frozen, the teacher's weights), so the
//! image embedding and the mask decoder run once per step; the teacher then runs its own mixer
//! and LM on the same decoder outputs.
//!
//! Per step: teacher next-token distributions at temperature T on the ground-truth captions
//! (top-k kept, the rest lumped) and the teacher's greedy caption of every region, either
//! computed or read from the on-disk cache (keyed by pixels, prompts, captions, settings and a
//! hash of the teacher's files; cached and computed values are bit-identical). Loss =
//! `ce_weight` · CE(ground truth) + `kl_weight` · T² · KL(teacher ‖ student) +
//! `seq_weight` · CE(teacher's captions).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, D};
use sca_core::generate::{generate, Decode};
use sca_core::{caption_loss, ScaModel, Trace};
use sha2::{Digest, Sha256};

use crate::config::DistillConfig;
use crate::model::ModelSetup;
use crate::params::{is_mixer_key, ParamStore, TrainableSet};
use crate::step::{to_row_order, LossOptions, Losses, StepInputs};
use crate::{Error, Result};

/// `T² · KL(p ‖ q)`, mean over the target tokens (`mask` 1), where q = softmax(z / T) of the
/// student's logits `z` (N, L, V) and p is the teacher's distribution at temperature T given
/// as its `top_logp` (N, L, k) log-probabilities at `top_ids` (N, L, k). With k < V the other
/// tokens form one outcome of probability 1 − Σ p (the KL of the coarsened distributions, exact
/// when k = V). The gradient w.r.t. z is T (q_j − p_j) for kept tokens and
/// T q_j (1 − p_rest / q_rest) for the others.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let z = Tensor::new(&[[[0f32, 1.0, 2.0]]], &Device::Cpu).unwrap();
/// // The teacher's distribution equal to the student's: zero divergence.
/// let logp = candle_nn::ops::log_softmax(&(&z / 2.0).unwrap(), 2).unwrap();
/// let ids = Tensor::new(&[[[0u32, 1, 2]]], &Device::Cpu).unwrap();
/// let mask = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
/// let kl = trainer::distill::kl_loss(&z, &ids, &logp, &mask, 2.0).unwrap();
/// assert!(kl.to_scalar::<f32>().unwrap().abs() < 1e-6);
/// ```
pub fn kl_loss(
    student_logits: &Tensor,
    top_ids: &Tensor,
    top_logp: &Tensor,
    mask: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (n, l, v) = student_logits.dims3()?;
    let k = top_ids.dim(2)?;
    if top_ids.dims() != [n, l, k] || top_logp.dims() != [n, l, k] || mask.dims() != [n, l] {
        return Err(Error::Other(format!(
            "kl_loss: student logits {:?}, teacher ids {:?}, log-probs {:?}, mask {:?}",
            student_logits.dims(),
            top_ids.dims(),
            top_logp.dims(),
            mask.dims()
        )));
    }
    let logq = candle_nn::ops::log_softmax(&(student_logits / temperature)?, D::Minus1)?;
    let logq_k = logq.gather(&top_ids.to_dtype(DType::U32)?.contiguous()?, 2)?;
    let p_k = top_logp.exp()?;
    let mut per_pos = (&p_k * (top_logp - &logq_k)?)?.sum(2)?; // (N, L)
    if k < v {
        // The lumped rest of the vocabulary.
        let p_rest = (1.0 - p_k.sum(2)?)?.clamp(0f32, 1f32)?;
        let q_rest = (1.0 - logq_k.exp()?.sum(2)?)?.maximum(1e-12)?;
        let log_p_rest = p_rest.maximum(1e-30)?.log()?;
        per_pos = (per_pos + (&p_rest * (log_p_rest - q_rest.log()?)?)?)?;
    }
    let w = mask.to_dtype(DType::F32)?;
    let n_tok = w.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let total = (per_pos * w)?.sum_all()?;
    Ok((total * (temperature * temperature / n_tok))?)
}

/// What the teacher says about one region: its next-token distribution at each real position
/// of the ground-truth caption (top k) and its own greedy caption.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionTeacher {
    /// Real target positions (caption tokens + EOS) and probabilities kept per position.
    pub l: usize,
    pub k: usize,
    /// (l, k) token ids, most probable first.
    pub ids: Vec<u32>,
    /// (l, k) log-probabilities at the distillation temperature.
    pub logp: Vec<f32>,
    /// The teacher's greedy caption (with its EOS when it ended).
    pub caption: Vec<u32>,
}

const CACHE_MAGIC: &[u8; 8] = b"SCATCH02";

impl RegionTeacher {
    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + 8 * self.ids.len() + 4 * self.caption.len());
        b.extend_from_slice(CACHE_MAGIC);
        for x in [self.l, self.k, self.caption.len()] {
            b.extend_from_slice(&(x as u32).to_le_bytes());
        }
        b.extend(self.ids.iter().flat_map(|x| x.to_le_bytes()));
        b.extend(self.logp.iter().flat_map(|x| x.to_le_bytes()));
        b.extend(self.caption.iter().flat_map(|x| x.to_le_bytes()));
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let mut words = b.strip_prefix(CACHE_MAGIC.as_slice())?.chunks_exact(4);
        if !words.remainder().is_empty() {
            return None;
        }
        let mut next = || -> Option<[u8; 4]> { words.next()?.try_into().ok() };
        let mut size = || next().map(|w| u32::from_le_bytes(w) as usize);
        let (l, k, c) = (size()?, size()?, size()?);
        let m = l.checked_mul(k)?;
        if b.len() != CACHE_MAGIC.len() + 4 * (3 + 2 * m + c) {
            return None;
        }
        let ids = (0..m)
            .map(|_| next().map(u32::from_le_bytes))
            .collect::<Option<Vec<_>>>()?;
        let logp = (0..m)
            .map(|_| next().map(f32::from_le_bytes))
            .collect::<Option<Vec<_>>>()?;
        let caption = (0..c)
            .map(|_| next().map(u32::from_le_bytes))
            .collect::<Option<Vec<_>>>()?;
        Some(RegionTeacher {
            l,
            k,
            ids,
            logp,
            caption,
        })
    }
}

/// The teacher model, its identity and the distillation settings.
pub struct Distiller {
    pub teacher: ScaModel,
    pub cfg: DistillConfig,
    /// sha256 of the teacher's weight and config files (hex), part of every cache key.
    pub teacher_hash: String,
    /// `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    eos: u32,
    /// Cache hits and misses of this run (images).
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

/// sha256 over the teacher directory's `config.json` and weight files, in name order.
pub fn hash_model_dir(dir: &Path) -> Result<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json" || n.ends_with(".safetensors") || n.ends_with(".bin")
        })
        .filter(|p| !p.ends_with("optimizer.safetensors"))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Distiller {
    /// Loads the teacher (frozen) and checks that the student's SAM is the teacher's.
    pub fn new(
        teacher_dir: &Path,
        cfg: DistillConfig,
        student: &ParamStore,
        student_config: &sca_core::config::ScaConfig,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let mut setup = ModelSetup::from_checkpoint(teacher_dir, None)?;
        let none = TrainableSet::default();
        let (teacher, store) = setup.build(none, device)?;
        let tv = &setup.config.text_config;
        if tv.vocab_size != student_config.text_config.vocab_size {
            return Err(Error::Config(format!(
                "teacher {} has a vocabulary of {}, the student {}",
                teacher_dir.display(),
                tv.vocab_size,
                student_config.text_config.vocab_size
            )));
        }
        for (key, entry) in student.entries() {
            if key.starts_with("language_model.") || is_mixer_key(key) {
                continue;
            }
            let same = match store.entries().get(key) {
                Some(t) => {
                    let (a, b) = (entry.tensor(), t.tensor());
                    a.dims() == b.dims()
                        && (a - b.to_device(a.device())?)?
                            .abs()?
                            .flatten_all()?
                            .max(0)?
                            .to_scalar::<f32>()?
                            == 0.0
                }
                None => false,
            };
            if !same {
                return Err(Error::Config(format!(
                    "the student's {key} differs from the teacher's ({}): distillation shares the \
                     teacher's frozen SAM",
                    teacher_dir.display()
                )));
            }
        }
        let teacher_hash = hash_model_dir(teacher_dir)?;
        let cache_dir = (cfg.cache && cfg.top_k > 0).then(|| {
            cfg.cache_dir
                .clone()
                .unwrap_or_else(|| out.join("teacher-cache"))
                .join(&teacher_hash[..16])
        });
        if let Some(d) = &cache_dir {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        tracing::info!(teacher = %teacher_dir.display(), hash = %&teacher_hash[..16],
            cache = ?cache_dir, "teacher ready");
        Ok(Distiller {
            eos: setup.config.text_config.eos_token_id,
            teacher,
            cfg,
            teacher_hash,
            cache_dir,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        })
    }

    /// The cache key of row `row` of image `image`: teacher, settings, the image's pixels
    /// (`pixels`: their digest), the region's prompt and its unpadded caption ids.
    fn cache_key(
        &self,
        pixels: &[u8],
        inputs: &StepInputs,
        image: usize,
        row: usize,
        ids: &[u32],
    ) -> String {
        let mut h = Sha256::new();
        h.update(self.teacher_hash.as_bytes());
        h.update(self.cfg.temperature.to_le_bytes());
        h.update((self.cfg.top_k as u64).to_le_bytes());
        h.update((self.cfg.seq_max_tokens as u64).to_le_bytes());
        h.update(pixels);
        let p = &inputs.prompts[image][row];
        let mm = inputs.multimask.get(image).and_then(|m| m.get(row)) == Some(&true);
        h.update([mm as u8, p.box_.is_some() as u8]);
        for v in p.box_.iter().flatten() {
            h.update(v.to_le_bytes());
        }
        for (pt, lab) in p.points.iter().zip(&p.labels) {
            h.update(pt.0.to_le_bytes());
            h.update(pt.1.to_le_bytes());
            h.update(lab.to_le_bytes());
        }
        h.update((ids.len() as u64).to_le_bytes());
        h.update(
            ids.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The teacher's outputs for regions with mask-decoder outputs `queries_out`/`keys_out`
    /// (rows of the shared decoder) and right-padded captions `ids`/`mask` (n, L).
    fn teacher_outputs(
        &self,
        queries_out: &Tensor,
        keys_out: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Vec<RegionTeacher>> {
        let mut trace = Trace::default();
        let prefix =
            self.teacher
                .caption_prefix(&queries_out.detach(), &keys_out.detach(), &mut trace)?;
        let (n, l) = ids.dims2()?;
        let logits = self
            .teacher
            .teacher_forced_logits(&prefix, ids, mask, &mut trace)?
            .narrow(1, 0, l)?;
        let logp = candle_nn::ops::log_softmax(&(logits / self.cfg.temperature)?, D::Minus1)?;
        let v = logp.dim(2)?;
        let k = if self.cfg.top_k == 0 {
            v
        } else {
            self.cfg.top_k.min(v)
        };
        let (top_ids, top_logp) = if k == v {
            let ids = Tensor::arange(0u32, v as u32, logp.device())?
                .reshape((1, 1, v))?
                .broadcast_as((n, l, v))?
                .contiguous()?;
            (ids, logp)
        } else {
            let order = logp
                .arg_sort_last_dim(false)?
                .narrow(2, 0, k)?
                .contiguous()?;
            let vals = logp.gather(&order, 2)?;
            (order, vals)
        };
        let captions = if self.cfg.seq_weight > 0.0 {
            generate(
                &self.teacher.lm,
                &prefix,
                &Decode::Greedy {
                    max_new_tokens: self.cfg.seq_max_tokens,
                },
                self.eos,
                &mut |_, _| true,
            )?
        } else {
            vec![Vec::new(); n]
        };
        let lens = mask.to_dtype(DType::U32)?.sum(1)?.to_vec1::<u32>()?;
        let (top_ids, top_logp) = (top_ids.to_vec3::<u32>()?, top_logp.to_vec3::<f32>()?);
        Ok((0..n)
            .map(|r| {
                let real = (lens[r] as usize).min(l);
                RegionTeacher {
                    l: real,
                    k,
                    ids: top_ids[r][..real].concat(),
                    logp: top_logp[r][..real].concat(),
                    caption: captions[r].clone(),
                }
            })
            .collect())
    }

    /// [`Distiller::teacher_outputs`] for image `image` of `inputs` (batch rows `rows`)
    /// through the cache: rows found there are read, the others computed together and stored.
    fn cached_outputs(
        &self,
        inputs: &StepInputs,
        image: usize,
        rows: std::ops::Range<usize>,
        queries_out: &Tensor,
        keys_out: &Tensor,
    ) -> Result<Vec<RegionTeacher>> {
        let n = rows.len();
        let ids = inputs.input_ids.narrow(0, rows.start, n)?;
        let mask = inputs.attention_mask.narrow(0, rows.start, n)?;
        let Some(dir) = &self.cache_dir else {
            self.cache_misses.fetch_add(n as u64, Ordering::Relaxed);
            return self.teacher_outputs(queries_out, keys_out, &ids, &mask);
        };
        let pixels: Vec<u8> = {
            let px = inputs.pixel_values[image].flatten_all()?.to_vec1::<f32>()?;
            let mut h = Sha256::new();
            h.update(px.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            h.finalize().to_vec()
        };
        let (id_rows, mask_rows) = (ids.to_vec2::<u32>()?, mask.to_vec2::<u32>()?);
        let mut out: Vec<Option<RegionTeacher>> = vec![None; n];
        let mut paths = Vec::with_capacity(n);
        for r in 0..n {
            let real: Vec<u32> = id_rows[r]
                .iter()
                .zip(&mask_rows[r])
                .filter(|(_, m)| **m != 0)
                .map(|(t, _)| *t)
                .collect();
            let key = self.cache_key(&pixels, inputs, image, r, &real);
            let p = dir.join(&key[..2]).join(format!("{key}.bin"));
            if let Ok(bytes) = std::fs::read(&p) {
                match RegionTeacher::from_bytes(&bytes) {
                    Some(t) if t.l == real.len() => out[r] = Some(t),
                    _ => {
                        tracing::warn!(file = %p.display(), "unreadable teacher cache entry; recomputing")
                    }
                }
            }
            paths.push(p);
        }
        let missing: Vec<u32> = (0..n as u32)
            .filter(|&r| out[r as usize].is_none())
            .collect();
        self.cache_hits
            .fetch_add((n - missing.len()) as u64, Ordering::Relaxed);
        self.cache_misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        if !missing.is_empty() {
            let computed = if missing.len() == n {
                self.teacher_outputs(queries_out, keys_out, &ids, &mask)?
            } else {
                let idx = Tensor::new(missing.as_slice(), queries_out.device())?;
                let pick = |t: &Tensor| t.index_select(&idx, 0);
                self.teacher_outputs(
                    &pick(queries_out)?,
                    &pick(keys_out)?,
                    &pick(&ids)?,
                    &pick(&mask)?,
                )?
            };
            for (&r, t) in missing.iter().zip(computed) {
                write_atomic(&paths[r as usize], &t.to_bytes())?;
                out[r as usize] = Some(t);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The distillation loss of one batch (or a worker's share of it) for `student`.
    pub fn forward(
        &self,
        student: &ScaModel,
        inputs: &StepInputs,
        opts: &LossOptions,
    ) -> Result<Losses> {
        let mut trace = Trace::default();
        let dev = student.device().clone();
        let (mut prefixes, mut teacher) = (Vec::new(), Vec::new());
        let mut row0 = 0usize;
        for (i, (px, prompts)) in inputs.pixel_values.iter().zip(&inputs.prompts).enumerate() {
            // SAM is frozen and shared: one embedding and one decoder pass serve both models.
            let emb = student.embed_pixels(px, &mut trace)?.detach();
            let n = prompts.len();
            let multi = |k: usize| inputs.multimask.get(i).and_then(|f| f.get(k)) == Some(&true);
            let (mut q, mut kk, mut order) = (Vec::new(), Vec::new(), Vec::new());
            for mm in [false, true] {
                let ks: Vec<usize> = (0..n).filter(|&k| multi(k) == mm).collect();
                if ks.is_empty() {
                    continue;
                }
                let group: Vec<_> = ks.iter().map(|&k| prompts[k].clone()).collect();
                let d = student.decode_masks(&emb, &group, mm, &mut trace)?;
                q.push(d.queries_out.detach());
                kk.push(d.keys_out.detach());
                order.extend(ks.iter().map(|&k| k as u32));
            }
            let q = to_row_order(&Tensor::cat(&q, 0)?, &order)?;
            let kk = to_row_order(&Tensor::cat(&kk, 0)?, &order)?;
            prefixes.push(student.caption_prefix(&q, &kk, &mut trace)?);
            teacher.extend(self.cached_outputs(inputs, i, row0..row0 + n, &q, &kk)?);
            row0 += n;
        }
        let prefix = Tensor::cat(&prefixes, 0)?;
        let (ids, mask) = (&inputs.input_ids, &inputs.attention_mask);
        let l = ids.dim(1)?;
        let dropout = opts.lm_dropout(inputs);
        let logits = student.teacher_forced_logits_train(&prefix, ids, mask, dropout.as_ref())?;
        let ce = caption_loss(&logits, ids, mask, opts.label_smoothing)?;
        let c = &self.cfg;
        let mut total = (&ce * c.ce_weight)?;
        let mut parts = vec![];
        if c.kl_weight > 0.0 {
            let k = teacher.first().map_or(1, |t| t.k);
            let n = inputs.n_regions;
            // Padded positions (mask 0) get token 0 with probability 1: they do not count.
            let (mut top_ids, mut top_logp) = (vec![0u32; n * l * k], vec![0f32; n * l * k]);
            for (r, t) in teacher.iter().enumerate() {
                let m = t.l.min(l) * k;
                top_ids[r * l * k..r * l * k + m].copy_from_slice(&t.ids[..m]);
                top_logp[r * l * k..r * l * k + m].copy_from_slice(&t.logp[..m]);
            }
            let top_ids = Tensor::from_vec(top_ids, (n, l, k), &dev)?;
            let top_logp = Tensor::from_vec(top_logp, (n, l, k), &dev)?;
            let kl = kl_loss(
                &logits.narrow(1, 0, l)?,
                &top_ids,
                &top_logp,
                mask,
                c.temperature,
            )?;
            parts.push(("kl_loss", kl.to_scalar::<f32>()? as f64));
            total = (total + (kl * c.kl_weight)?)?;
        }
        if c.seq_weight > 0.0 {
            let caps: Vec<&Vec<u32>> = teacher.iter().map(|t| &t.caption).collect();
            let l2 = caps.iter().map(|c| c.len()).max().unwrap_or(0).max(1);
            let mut tok = vec![self.eos; caps.len() * l2];
            let mut am = vec![0u32; caps.len() * l2];
            for (r, cap) in caps.iter().enumerate() {
                let cap = if cap.is_empty() {
                    &vec![self.eos]
                } else {
                    *cap
                };
                tok[r * l2..r * l2 + cap.len()].copy_from_slice(cap);
                am[r * l2..r * l2 + cap.len()].fill(1);
            }
            let tok = Tensor::from_vec(tok, (caps.len(), l2), &dev)?;
            let am = Tensor::from_vec(am, (caps.len(), l2), &dev)?;
            let lg = student.teacher_forced_logits_train(&prefix, &tok, &am, dropout.as_ref())?;
            let seq = caption_loss(&lg, &tok, &am, 0.0)?;
            parts.push(("seq_loss", seq.to_scalar::<f32>()? as f64));
            total = (total + (seq * c.seq_weight)?)?;
        }
        let h = self.cache_hits.load(Ordering::Relaxed);
        let m = self.cache_misses.load(Ordering::Relaxed);
        if self.cache_dir.is_some() {
            parts.push(("teacher_cache_hits", h as f64));
            parts.push(("teacher_cache_misses", m as f64));
        }
        Ok(Losses {
            caption: ce.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            total_value: Some(total.to_dtype(DType::F64)?.to_scalar::<f64>()?),
            total,
            mask: None,
            parts,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_round_trip_and_reject_truncation() {
        let t = RegionTeacher {
            l: 2,
            k: 2,
            ids: vec![5, 1, 7, 2],
            logp: vec![-0.1, -2.5, -0.3, -1.5],
            caption: vec![3, 4, 50256],
        };
        let b = t.to_bytes();
        assert_eq!(RegionTeacher::from_bytes(&b), Some(t));
        assert_eq!(RegionTeacher::from_bytes(&b[..b.len() - 4]), None);
        assert_eq!(RegionTeacher::from_bytes(&b[1..]), None);
        assert_eq!(RegionTeacher::from_bytes(b"SCATCH01"), None);
    }
}
