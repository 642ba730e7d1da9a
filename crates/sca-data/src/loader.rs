//! Region sampling, augmentation and batching for the trainer (`sca-spec.md` §4.3), with a
//! deterministic, resumable order.
//!
//! Per image (training, [`LoaderConfig::train`]):
//! 1. LSJ parameters are drawn (if enabled), then a random permutation of the regions, then
//!    one caption per region in permuted order ([`CaptionChoice::Random`]: uniform over
//!    `references`, as the official `random.choice(phrases)`);
//! 2. boxes `[x, y, x+w, y+h]` are transformed (LSJ) and clamped to the image (`[0, S]` after
//!    LSJ, `[0, W] x [0, H]` without), and boxes of width or height `<= 1e-5` are dropped;
//! 3. the first `regions_per_image` (16) regions are kept;
//! 4. the image (LSJ output, or the original) goes through `sca_core::image::preprocess`
//!    (SAM resize + normalize + pad to `S`), and boxes are scaled into that `S x S` frame
//!    (`x * w'/W`, as `SamProcessor`);
//! 5. captions are tokenized with `encode_caption(text, 18)` (+ EOS).
//!
//! Batching (the official collator): images without regions are skipped; the others are
//! truncated to the smallest region count `R` of the batch; captions are right-padded with
//! 50256 to the longest kept caption, with an attention mask. A batch whose images are all
//! empty is skipped.
//!
//! Order and randomness: the epoch's image order is a permutation drawn from
//! `(seed, epoch)`; every image's randomness comes from `(seed, epoch, dataset index)`, so a
//! batch depends only on `(seed, epoch, position)` — not on threads or prefetching. A batch
//! holds the next `images_per_batch` images of the order (fewer at the end of an epoch; batches
//! never span epochs). [`DataLoader::state`] after a batch + [`DataLoader::restore`] continue
//! the stream exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;
use sca_core::image::{preprocess, scale_box, PreprocessorConfig};
use sca_core::sam::prompt_encoder::ScaledPrompt;
use sca_core::tokenizer::{Tokenizer, EOS_TOKEN_ID};
use serde::{Deserialize, Serialize};

use crate::lsj::{resize_mask_nearest, LsjConfig, LsjTransform};
use crate::rng::Rng;
use crate::types::{box_nonempty, clamp_box_xyxy, Dataset};
use crate::{Error, Result};

/// Which text of a region becomes its training caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptionChoice {
    /// Uniformly random among `references` (official training: `random.choice(phrases)`).
    Random,
    /// The first reference (official evaluation: `phrases[0]`).
    First,
    /// The region's `caption` field.
    Caption,
}

/// Loader settings. Start from [`LoaderConfig::train`] or [`LoaderConfig::eval`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (official: 1 per GPU).
    pub images_per_batch: usize,
    /// Regions kept per image (official training: 16); `None` keeps all.
    pub regions_per_image: Option<usize>,
    /// SAM preprocessing (its `pad_size` is the model input side `S`).
    pub preprocessor: PreprocessorConfig,
    /// Large-scale jitter (its `size` must equal `preprocessor.pad_size`); `None` = off.
    pub lsj: Option<LsjConfig>,
    /// Shuffle the image order each epoch.
    pub shuffle: bool,
    /// Randomly permute each image's regions (training) instead of keeping file order.
    pub shuffle_regions: bool,
    /// Drop regions whose clamped box is empty (training).
    pub drop_empty_boxes: bool,
    /// Which caption to train on.
    pub caption: CaptionChoice,
    /// Caption tokens kept before EOS (official: 18).
    pub max_caption_tokens: usize,
    /// Produce ground-truth masks in the low-resolution mask frame when regions have them.
    pub masks: bool,
    /// Side of the low-resolution mask frame (`None` = `S / 4`, SAM's 256 for `S = 1024`).
    pub mask_size: Option<usize>,
    /// Skip images that fail to load (counted in [`LoaderState::skipped_images`]) instead of
    /// returning the error.
    pub skip_errors: bool,
    /// Batches computed ahead on a background thread (0 = compute on demand). Does not
    /// change the batches.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// The official training recipe at model input side `image_size`: shuffled images,
    /// 1 image per batch, 16 random regions, random caption among the references, empty boxes
    /// dropped, 18 caption tokens, no LSJ (set `lsj` to `Some(LsjConfig::official(S))` for
    /// the LSJ runs), masks on, prefetch 2.
    pub fn train(image_size: usize) -> Self {
        Self {
            images_per_batch: 1,
            regions_per_image: Some(16),
            preprocessor: PreprocessorConfig::for_size(image_size),
            lsj: None,
            shuffle: true,
            shuffle_regions: true,
            drop_empty_boxes: true,
            caption: CaptionChoice::Random,
            max_caption_tokens: 18,
            masks: true,
            mask_size: None,
            skip_errors: false,
            prefetch: 2,
        }
    }

    /// Evaluation (teacher-forced loss): file order, all regions in order, first reference,
    /// boxes clamped but kept, no augmentation, no prefetch.
    pub fn eval(image_size: usize) -> Self {
        Self {
            images_per_batch: 1,
            regions_per_image: None,
            preprocessor: PreprocessorConfig::for_size(image_size),
            lsj: None,
            shuffle: false,
            shuffle_regions: false,
            drop_empty_boxes: false,
            caption: CaptionChoice::First,
            max_caption_tokens: 18,
            masks: true,
            mask_size: None,
            skip_errors: false,
            prefetch: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        let s = self.preprocessor.pad_size;
        if self.images_per_batch == 0 {
            return Err(Error::Config("images_per_batch must be >= 1".into()));
        }
        if self.regions_per_image == Some(0) {
            return Err(Error::Config("regions_per_image must be >= 1".into()));
        }
        if let Some(l) = &self.lsj {
            l.validate()?;
            if l.size != s {
                return Err(Error::Config(format!(
                    "LSJ size {} differs from the model input size {s}",
                    l.size
                )));
            }
        }
        if self.mask_size == Some(0) || (self.mask_size.is_none() && s < 4) {
            return Err(Error::Config("mask size must be >= 1".into()));
        }
        Ok(())
    }

    /// The low-resolution mask side.
    pub fn mask_side(&self) -> usize {
        self.mask_size.unwrap_or(self.preprocessor.pad_size / 4)
    }
}

/// Where the data stream stands: enough to continue it exactly (serializable for
/// checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The loader's seed.
    pub seed: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Next position in the epoch's image order.
    pub position: usize,
    /// Dataset size the state was made for (checked on restore).
    pub dataset_len: usize,
    /// Batches handed out so far.
    pub batches: u64,
    /// Images skipped because they failed to load (`skip_errors`).
    pub skipped_images: u64,
}

/// One training batch: `B` images with `R` regions each.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B`.
    pub images: usize,
    /// `R` (the smallest region count of the batch's images).
    pub regions_per_image: usize,
    /// Model input side `S`.
    pub image_size: usize,
    /// `(B, 3, S, S)` preprocessed pixels, row-major.
    pub pixel_values: Vec<f32>,
    /// `(B*R)` boxes `[x1, y1, x2, y2]` in the `S x S` model frame (what
    /// `ScaledPrompt::box_` takes), image-major.
    pub boxes: Vec<[f64; 4]>,
    /// `L`: longest tokenized caption of the batch (EOS included).
    pub seq_len: usize,
    /// `(B*R, L)` caption ids + EOS, right-padded with 50256.
    pub input_ids: Vec<u32>,
    /// `(B*R, L)`: 1 for real tokens (EOS included), 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Side `M` of the low-resolution mask frame (covers the `S x S` input).
    pub mask_size: usize,
    /// `(B*R, M, M)` 0/1 ground-truth masks when at least one region has a mask (zeros where
    /// `has_mask` is false); `None` otherwise.
    pub masks: Option<Vec<u8>>,
    /// `(B*R)`: whether the region has a ground-truth mask.
    pub has_mask: Vec<bool>,
    /// `(B*R)` training captions (text).
    pub captions: Vec<String>,
    /// `(B*R)` region ids.
    pub region_ids: Vec<u64>,
    /// `(B)` image ids.
    pub image_ids: Vec<u64>,
    /// `(B)` dataset indices.
    pub dataset_indices: Vec<usize>,
    /// `(B)` sizes `(H, W)` of the image given to SAM preprocessing (`(S, S)` after LSJ).
    pub original_sizes: Vec<(usize, usize)>,
    /// `(B)` sizes `(h', w')` after SAM's resize.
    pub resized_sizes: Vec<(usize, usize)>,
    /// Epoch the batch belongs to.
    pub epoch: u64,
}

impl Batch {
    /// Index of region `k` of image `b` in the per-region vectors (`b * R + k`).
    pub fn region_index(&self, b: usize, k: usize) -> usize {
        b * self.regions_per_image + k
    }

    /// The box prompts of image `b`, ready for `ScaModel::decode_prompts` (model frame).
    pub fn box_prompts(&self, b: usize) -> Vec<ScaledPrompt> {
        let r = self.regions_per_image;
        self.boxes[b * r..(b + 1) * r]
            .iter()
            .map(|&bx| ScaledPrompt {
                box_: Some(bx),
                ..Default::default()
            })
            .collect()
    }
}

/// One processed image before collation.
struct Item {
    dataset_index: usize,
    image_id: u64,
    pixel_values: Vec<f32>,
    original_size: (usize, usize),
    resized_size: (usize, usize),
    boxes: Vec<[f64; 4]>,
    ids: Vec<Vec<u32>>,
    captions: Vec<String>,
    region_ids: Vec<u64>,
    masks: Vec<Option<Vec<u8>>>,
}

struct Ctx {
    dataset: Arc<dyn Dataset>,
    tokenizer: Arc<Tokenizer>,
    cfg: LoaderConfig,
    order_cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
}

const TAG_ORDER: u64 = 0x0bde_0001;
const TAG_IMAGE: u64 = 0x1a6e_0002;

impl Ctx {
    fn order(&self, seed: u64, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = self.order_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, o)) = cache.as_ref() {
            if *e == epoch {
                return o.clone();
            }
        }
        let n = self.dataset.len();
        let o = Arc::new(if self.cfg.shuffle {
            Rng::derive(seed, &[TAG_ORDER, epoch]).permutation(n)
        } else {
            (0..n).collect()
        });
        *cache = Some((epoch, o.clone()));
        o
    }

    fn process(&self, seed: u64, epoch: u64, di: usize) -> Result<Option<Item>> {
        let cfg = &self.cfg;
        let sample = self.dataset.get(di)?;
        let img = sample.load_image()?;
        let (h, w) = (sample.height, sample.width);
        let mut rng = Rng::derive(seed, &[TAG_IMAGE, epoch, di as u64]);
        let lsj = cfg
            .lsj
            .as_ref()
            .map(|c| (c, LsjTransform::sample(c, h, w, &mut rng)));
        let n = sample.regions.len();
        let order: Vec<usize> = if cfg.shuffle_regions {
            rng.permutation(n)
        } else {
            (0..n).collect()
        };
        let captions: Vec<String> = order
            .iter()
            .map(|&k| {
                let r = &sample.regions[k];
                match cfg.caption {
                    CaptionChoice::Random if !r.references.is_empty() => {
                        r.references[rng.below(r.references.len())].clone()
                    }
                    CaptionChoice::First if !r.references.is_empty() => r.references[0].clone(),
                    _ => r.caption.clone(),
                }
            })
            .collect();
        // Boxes in the frame given to SAM preprocessing, clamped, filtered, truncated.
        let (frame_h, frame_w) = match &lsj {
            Some((c, _)) => (c.size, c.size),
            None => (h, w),
        };
        let mut kept: Vec<(usize, [f64; 4], String)> = Vec::new();
        for (pos, &k) in order.iter().enumerate() {
            let r = &sample.regions[k];
            let mut b = r.box_xyxy().map(|v| v as f64);
            if let Some((c, t)) = &lsj {
                let integral = c.integer_boxes && r.box_xywh.iter().all(|v| v.fract() == 0.0);
                b = t.apply_box(b, integral);
            }
            let b = clamp_box_xyxy(b, frame_w as f64, frame_h as f64);
            if cfg.drop_empty_boxes && !box_nonempty(b) {
                continue;
            }
            kept.push((k, b, captions[pos].clone()));
        }
        if let Some(limit) = cfg.regions_per_image {
            kept.truncate(limit);
        }
        if kept.is_empty() {
            return Ok(None);
        }
        let model_img = match &lsj {
            Some((c, t)) => t.apply_image(&img, c)?,
            None => img,
        };
        let pre = preprocess(&model_img, &cfg.preprocessor)?;
        let s = pre.pad_size;
        let m = cfg.mask_side();
        let mut item = Item {
            dataset_index: di,
            image_id: sample.image_id,
            pixel_values: pre.pixel_values,
            original_size: pre.original_size,
            resized_size: pre.resized_size,
            boxes: Vec::with_capacity(kept.len()),
            ids: Vec::with_capacity(kept.len()),
            captions: Vec::with_capacity(kept.len()),
            region_ids: Vec::with_capacity(kept.len()),
            masks: Vec::with_capacity(kept.len()),
        };
        for (k, b, caption) in kept {
            let r = &sample.regions[k];
            item.boxes
                .push(scale_box(b, pre.original_size, pre.resized_size));
            item.ids.push(
                self.tokenizer
                    .encode_caption(&caption, cfg.max_caption_tokens)?,
            );
            item.captions.push(caption);
            item.region_ids.push(r.id);
            let mask = match (&r.mask, cfg.masks) {
                (Some(rle), true) => {
                    if rle.size != [h, w] {
                        return Err(Error::Config(format!(
                            "image {} region {}: mask size {:?} differs from the image size [{h}, {w}]",
                            sample.image_id, r.id, rle.size
                        )));
                    }
                    let full = rle.decode()?;
                    let framed = match &lsj {
                        Some((_, t)) => t.apply_mask(&full),
                        None => {
                            let (rh, rw) = pre.resized_size;
                            let resized = resize_mask_nearest(&full, h, w, rh, rw);
                            let mut f = vec![0u8; s * s];
                            for y in 0..rh {
                                f[y * s..y * s + rw]
                                    .copy_from_slice(&resized[y * rw..(y + 1) * rw]);
                            }
                            f
                        }
                    };
                    Some(resize_mask_nearest(&framed, s, s, m, m))
                }
                _ => None,
            };
            item.masks.push(mask);
        }
        Ok(Some(item))
    }

    /// The batch starting at `st` and the state after it; on error, `st` is returned
    /// unchanged.
    fn produce(&self, st: &LoaderState) -> (Result<Batch>, LoaderState) {
        let n = self.dataset.len();
        let b = self.cfg.images_per_batch;
        let mut cur = st.clone();
        let mut scanned = 0usize;
        loop {
            if cur.position >= n {
                cur.epoch += 1;
                cur.position = 0;
            }
            if scanned > n {
                return (
                    Err(Error::Config(format!(
                        "no image of {} has a usable region (a whole epoch yielded no batch)",
                        self.dataset.describe()
                    ))),
                    st.clone(),
                );
            }
            let order = self.order(cur.seed, cur.epoch);
            let end = (cur.position + b).min(n);
            let idx = &order[cur.position..end];
            let results: Vec<Result<Option<Item>>> = idx
                .par_iter()
                .map(|&di| self.process(cur.seed, cur.epoch, di))
                .collect();
            let mut items = Vec::with_capacity(idx.len());
            for r in results {
                match r {
                    Ok(Some(it)) => items.push(it),
                    Ok(None) => {}
                    Err(_) if self.cfg.skip_errors => cur.skipped_images += 1,
                    Err(e) => return (Err(e), st.clone()),
                }
            }
            scanned += end - cur.position;
            let epoch = cur.epoch;
            cur.position = end;
            if end == n {
                cur.epoch += 1;
                cur.position = 0;
            }
            if items.is_empty() {
                continue;
            }
            cur.batches += 1;
            return (Ok(self.collate(items, epoch)), cur);
        }
    }

    fn collate(&self, items: Vec<Item>, epoch: u64) -> Batch {
        let r = items.iter().map(|i| i.boxes.len()).min().unwrap_or(0);
        let s = self.cfg.preprocessor.pad_size;
        let m = self.cfg.mask_side();
        let l = items
            .iter()
            .flat_map(|i| i.ids[..r].iter().map(Vec::len))
            .max()
            .unwrap_or(1);
        let n = items.len() * r;
        let mut batch = Batch {
            images: items.len(),
            regions_per_image: r,
            image_size: s,
            pixel_values: Vec::with_capacity(items.len() * 3 * s * s),
            boxes: Vec::with_capacity(n),
            seq_len: l,
            input_ids: Vec::with_capacity(n * l),
            attention_mask: Vec::with_capacity(n * l),
            mask_size: m,
            masks: None,
            has_mask: Vec::with_capacity(n),
            captions: Vec::with_capacity(n),
            region_ids: Vec::with_capacity(n),
            image_ids: Vec::with_capacity(items.len()),
            dataset_indices: Vec::with_capacity(items.len()),
            original_sizes: Vec::with_capacity(items.len()),
            resized_sizes: Vec::with_capacity(items.len()),
            epoch,
        };
        let any_mask = items
            .iter()
            .any(|i| i.masks[..r].iter().any(Option::is_some));
        let mut masks = if any_mask {
            Vec::with_capacity(n * m * m)
        } else {
            Vec::new()
        };
        for it in items {
            batch.pixel_values.extend_from_slice(&it.pixel_values);
            batch.image_ids.push(it.image_id);
            batch.dataset_indices.push(it.dataset_index);
            batch.original_sizes.push(it.original_size);
            batch.resized_sizes.push(it.resized_size);
            for k in 0..r {
                batch.boxes.push(it.boxes[k]);
                let ids = &it.ids[k];
                batch.input_ids.extend_from_slice(ids);
                batch
                    .input_ids
                    .extend(std::iter::repeat_n(EOS_TOKEN_ID, l - ids.len()));
                batch
                    .attention_mask
                    .extend(std::iter::repeat_n(1u32, ids.len()));
                batch
                    .attention_mask
                    .extend(std::iter::repeat_n(0u32, l - ids.len()));
                batch.captions.push(it.captions[k].clone());
                batch.region_ids.push(it.region_ids[k]);
                batch.has_mask.push(it.masks[k].is_some());
                if any_mask {
                    match &it.masks[k] {
                        Some(mk) => masks.extend_from_slice(mk),
                        None => masks.extend(std::iter::repeat_n(0u8, m * m)),
                    }
                }
            }
        }
        if any_mask {
            batch.masks = Some(masks);
        }
        batch
    }
}

struct Prefetcher {
    rx: Option<Receiver<(Result<Batch>, LoaderState)>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    fn start(ctx: Arc<Ctx>, from: LoaderState, depth: usize) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("sca-data-prefetch".into())
            .spawn(move || {
                let mut st = from;
                while !stop2.load(Ordering::Relaxed) {
                    let (res, next) = ctx.produce(&st);
                    let failed = res.is_err();
                    if tx.send((res, next.clone())).is_err() || failed {
                        break;
                    }
                    st = next;
                }
            })
            .ok();
        Self {
            rx: Some(rx),
            stop,
            handle,
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full channel.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The batch stream: deterministic in `(seed, epoch, position)`, endless (epochs follow each
/// other), resumable.
///
/// ```
/// use std::sync::Arc;
/// use sca_data::{DataLoader, LoaderConfig, Dataset};
/// use sca_data::synthetic::{SyntheticConfig, SyntheticDataset};
/// # let tok_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity/tokenizer");
/// # if !tok_dir.exists() { return; }
/// let tok = sca_core::tokenizer::Tokenizer::from_dir(&tok_dir).unwrap();
/// let ds = SyntheticDataset::new(SyntheticConfig { seed: 1, n: 8, size: 64, ..Default::default() }).unwrap();
/// let mut cfg = LoaderConfig::train(64);
/// cfg.images_per_batch = 2;
/// let mut loader = DataLoader::new(Arc::new(ds), Arc::new(tok), cfg, 42).unwrap();
/// let batch = loader.next_batch().unwrap();
/// assert_eq!(batch.pixel_values.len(), batch.images * 3 * 64 * 64);
/// assert_eq!(batch.input_ids.len(), batch.images * batch.regions_per_image * batch.seq_len);
/// let saved = loader.state();            // store with the checkpoint (serde)
/// let next = loader.next_batch().unwrap();
/// loader.restore(saved).unwrap();        // --resume
/// assert_eq!(loader.next_batch().unwrap().input_ids, next.input_ids);
/// ```
pub struct DataLoader {
    ctx: Arc<Ctx>,
    state: LoaderState,
    prefetcher: Option<Prefetcher>,
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("dataset", &self.ctx.dataset.describe())
            .field("state", &self.state)
            .finish()
    }
}

impl DataLoader {
    /// A loader at epoch 0, position 0.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        tokenizer: Arc<Tokenizer>,
        cfg: LoaderConfig,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if dataset.is_empty() {
            return Err(Error::Config(format!(
                "dataset {} is empty",
                dataset.describe()
            )));
        }
        let state = LoaderState {
            seed,
            epoch: 0,
            position: 0,
            dataset_len: dataset.len(),
            batches: 0,
            skipped_images: 0,
        };
        Ok(Self {
            ctx: Arc::new(Ctx {
                dataset,
                tokenizer,
                cfg,
                order_cache: Mutex::new(None),
            }),
            state,
            prefetcher: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.ctx.cfg
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.ctx.dataset
    }

    /// The state after the last batch handed out (what a checkpoint stores).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Continues from `state` (from [`DataLoader::state`] of a loader over the same dataset
    /// and seed); the next batch is the one that followed when the state was taken.
    pub fn restore(&mut self, state: LoaderState) -> Result<()> {
        if state.dataset_len != self.ctx.dataset.len() {
            return Err(Error::State(format!(
                "state is for a dataset of {} images, this one has {}",
                state.dataset_len,
                self.ctx.dataset.len()
            )));
        }
        if state.position > state.dataset_len {
            return Err(Error::State(format!(
                "position {} is past the dataset end {}",
                state.position, state.dataset_len
            )));
        }
        self.prefetcher = None;
        self.state = state;
        Ok(())
    }

    /// Image batches per epoch, at most (fewer when empty images are skipped).
    pub fn batches_per_epoch(&self) -> usize {
        self.ctx
            .dataset
            .len()
            .div_ceil(self.ctx.cfg.images_per_batch)
    }

    /// The next batch. On error the state does not advance (the same error repeats).
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.ctx.cfg.prefetch == 0 {
            let (res, next) = self.ctx.produce(&self.state);
            let batch = res?;
            self.state = next;
            return Ok(batch);
        }
        if self.prefetcher.is_none() {
            self.prefetcher = Some(Prefetcher::start(
                self.ctx.clone(),
                self.state.clone(),
                self.ctx.cfg.prefetch,
            ));
        }
        let received = self
            .prefetcher
            .as_ref()
            .and_then(|p| p.rx.as_ref())
            .and_then(|rx| rx.recv().ok());
        match received {
            Some((Ok(batch), next)) => {
                self.state = next;
                Ok(batch)
            }
            Some((Err(e), _)) => {
                self.prefetcher = None;
                Err(e)
            }
            None => {
                self.prefetcher = None;
                Err(Error::State(
                    "the prefetch thread stopped unexpectedly".into(),
                ))
            }
        }
    }
}

impl Iterator for DataLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}
