//! Caption metrics that reproduce the coco-caption evaluation (`pycocoevalcap` 1.2) in pure
//! Rust: the PTB tokenization and punctuation filter, BLEU-1..4, METEOR 1.5, ROUGE-L and
//! CIDEr-D, at corpus level and per region.
//!
//! ```
//! use sca_metrics::{score_regions, Region, RegionId};
//! let regions = vec![
//!     Region { id: RegionId::Int(1), candidate: "A man riding a horse.".into(),
//!              references: vec!["a man riding a horse".into(), "a person on a horse".into()] },
//!     Region { id: RegionId::Int(2), candidate: "white clouds in the sky".into(),
//!              references: vec!["white clouds in blue sky".into()] },
//! ];
//! let scores = score_regions(&regions, None, None).unwrap();
//! assert!((scores.corpus.cider_d - 5.144345238095239).abs() < 1e-9);
//! assert!(scores.corpus.meteor.is_none()); // no METEOR data given
//! ```
//!
//! METEOR needs its data directory: install it with `bash scripts/setup-meteor.sh` and load it
//! with [`meteor::MeteorData::load`].

#![warn(missing_docs)]
// The ports keep the reference implementations' index loops so they can be compared line by line.
#![allow(clippy::needless_range_loop)]

mod bleu;
mod cider;
mod corpus;
pub mod meteor;
mod ngram;
mod ptb;
mod rouge;

use rayon::prelude::*;

pub use bleu::BleuStats;
pub use corpus::{load_corpus, parse_corpus, CorpusError, Region, RegionId};
pub use meteor::{MeteorData, MeteorError, MeteorStats};
pub use ptb::{ptb_tokenize, ptb_tokenize_followed_by, ptb_tokens};
pub use rouge::rouge_l;

use ngram::{count_grams, Vocab};

/// The metrics of one region or of a corpus, on pycocoevalcap's scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// BLEU-1.
    pub bleu1: f64,
    /// BLEU-2.
    pub bleu2: f64,
    /// BLEU-3.
    pub bleu3: f64,
    /// BLEU-4.
    pub bleu4: f64,
    /// METEOR (absent when scored without METEOR data).
    pub meteor: Option<f64>,
    /// ROUGE-L.
    pub rouge_l: f64,
    /// CIDEr-D (in [0, 10] for one region).
    pub cider_d: f64,
}

/// One region's tokenized text and scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegionScores {
    /// The region's id.
    pub id: RegionId,
    /// The candidate after PTB tokenization and filtering.
    pub candidate_tokenized: String,
    /// The references after PTB tokenization and filtering.
    pub references_tokenized: Vec<String>,
    /// The region's metrics (BLEU here uses the region's own counts and brevity penalty).
    pub metrics: Metrics,
}

/// Corpus-level scores plus the per-region breakdown, in input order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    /// Corpus metrics: BLEU and METEOR from summed statistics, ROUGE-L and CIDEr-D as means.
    pub corpus: Metrics,
    /// Summed BLEU statistics.
    pub bleu_stats: BleuStats,
    /// Summed METEOR statistics (when METEOR was computed).
    pub meteor_stats: Option<MeteorStats>,
    /// Per-region results.
    pub per_region: Vec<RegionScores>,
}

/// Errors of [`score_regions`].
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Two regions share an id.
    #[error("duplicate region id {0}")]
    DuplicateId(RegionId),
    /// A region has no references.
    #[error("region {0} has no references")]
    NoReferences(RegionId),
}

/// The stage of the pipeline a progress report refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PTB tokenization.
    Tokenize,
    /// BLEU, ROUGE-L and CIDEr-D.
    Ngram,
    /// METEOR alignment.
    Meteor,
}

/// Progress callback: (stage, regions done in this stage, total regions). Called from worker
/// threads; must be cheap.
pub type Progress<'a> = &'a (dyn Fn(Stage, usize, usize) + Sync);

const CHUNK: usize = 512;

/// A region after tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The region's id.
    pub id: RegionId,
    /// Tokenized candidate.
    pub candidate: String,
    /// Tokenized references.
    pub references: Vec<String>,
}

/// PTB-tokenizes every caption of the regions (in parallel).
///
/// ```
/// let r = sca_metrics::Region { id: sca_metrics::RegionId::Int(7), candidate: "A Dog.".into(),
///                               references: vec!["a dog's toy".into()] };
/// let t = sca_metrics::tokenize_regions(&[r], None);
/// assert_eq!(t[0].candidate, "a dog");
/// assert_eq!(t[0].references[0], "a dog 's toy");
/// ```
pub fn tokenize_regions(regions: &[Region], progress: Option<Progress>) -> Vec<Tokenized> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    // pycocoevalcap tokenizes all candidates as one file and all references as another, in
    // region order; a caption's tokens can depend on the first character of the next line.
    let next_cand = |k: usize| regions.get(k + 1).map(|r| r.candidate.as_str());
    let next_ref = |k: usize, j: usize| {
        regions[k]
            .references
            .get(j + 1)
            .map(String::as_str)
            .or_else(|| {
                regions[k + 1..]
                    .iter()
                    .find_map(|r| r.references.first())
                    .map(String::as_str)
            })
    };
    let indexed: Vec<usize> = (0..regions.len()).collect();
    indexed
        .par_chunks(CHUNK)
        .flat_map_iter(|chunk| {
            let out: Vec<Tokenized> = chunk
                .iter()
                .map(|&k| {
                    let r = &regions[k];
                    Tokenized {
                        id: r.id.clone(),
                        candidate: ptb_tokenize_followed_by(&r.candidate, next_cand(k)),
                        references: (0..r.references.len())
                            .map(|j| ptb_tokenize_followed_by(&r.references[j], next_ref(k, j)))
                            .collect(),
                    }
                })
                .collect();
            if let Some(p) = progress {
                let d =
                    done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed) + chunk.len();
                p(Stage::Tokenize, d, regions.len());
            }
            out
        })
        .collect()
}

/// Scores raw (untokenized) regions: tokenizes them, then runs [`score_tokenized`].
pub fn score_regions(
    regions: &[Region],
    meteor: Option<&MeteorData>,
    progress: Option<Progress>,
) -> Result<Scores, ScoreError> {
    let tok = tokenize_regions(regions, progress);
    score_tokenized(&tok, meteor, progress)
}

/// Scores already-tokenized regions (BLEU, ROUGE-L, CIDEr-D, and METEOR when `meteor` is
/// given).
pub fn score_tokenized(
    regions: &[Tokenized],
    meteor: Option<&MeteorData>,
    progress: Option<Progress>,
) -> Result<Scores, ScoreError> {
    if let Some(r) = regions.iter().find(|r| r.references.is_empty()) {
        return Err(ScoreError::NoReferences(r.id.clone()));
    }
    if let Err(id) = corpus::check_unique(regions.iter().map(|r| &r.id)) {
        return Err(ScoreError::DuplicateId(id));
    }
    let n = regions.len();
    // Word ids (interning is sequential; everything after runs in parallel).
    let mut vocab = Vocab::default();
    let cand_ids: Vec<Vec<u32>> = regions.iter().map(|r| vocab.ids(&r.candidate)).collect();
    let ref_ids: Vec<Vec<Vec<u32>>> = regions
        .iter()
        .map(|r| r.references.iter().map(|s| vocab.ids(s)).collect())
        .collect();
    drop(vocab);

    let cand_counts: Vec<_> = cand_ids.par_iter().map(|c| count_grams(c)).collect();
    let ref_counts: Vec<Vec<_>> = ref_ids
        .par_iter()
        .map(|rs| rs.iter().map(|r| count_grams(r)).collect())
        .collect();

    let done = std::sync::atomic::AtomicUsize::new(0);
    let report = |stage: Stage, k: usize| {
        if let Some(p) = progress {
            let d = done.fetch_add(k, std::sync::atomic::Ordering::Relaxed) + k;
            p(stage, d.min(n), n);
        }
    };
    let cider = cider::cider_d(&cand_counts, &ref_counts);
    let per: Vec<(BleuStats, f64)> = (0..n)
        .into_par_iter()
        .with_min_len(CHUNK)
        .map(|i| {
            let b = bleu::region_stats(&cand_ids[i], &cand_counts[i], &ref_ids[i]);
            let r = rouge_l(&regions[i].candidate, &regions[i].references);
            if i % CHUNK == 0 {
                report(Stage::Ngram, CHUNK.min(n - i));
            }
            (b, r)
        })
        .collect();

    let met: Option<Vec<MeteorStats>> = meteor.map(|data| {
        // In slices, so that progress can be reported.
        let segs: Vec<(&str, &[String])> = regions
            .iter()
            .map(|r| (r.candidate.as_str(), r.references.as_slice()))
            .collect();
        let mut out = Vec::with_capacity(n);
        let step = (n / 20).max(4096);
        for chunk in segs.chunks(step) {
            out.extend(data.corpus_stats(chunk));
            if let Some(p) = progress {
                p(Stage::Meteor, out.len(), n);
            }
        }
        out
    });

    let mut bleu_stats = BleuStats::default();
    let mut rouge_sum = 0.0;
    let mut cider_sum = 0.0;
    let mut meteor_stats = MeteorStats::default();
    let mut per_region = Vec::with_capacity(n);
    for i in 0..n {
        let (b, r) = per[i];
        bleu_stats.add(&b);
        rouge_sum += r;
        cider_sum += cider[i];
        let bs = b.scores();
        let m = met.as_ref().map(|v| {
            meteor_stats.add(&v[i]);
            v[i].score()
        });
        per_region.push(RegionScores {
            id: regions[i].id.clone(),
            candidate_tokenized: regions[i].candidate.clone(),
            references_tokenized: regions[i].references.clone(),
            metrics: Metrics {
                bleu1: bs[0],
                bleu2: bs[1],
                bleu3: bs[2],
                bleu4: bs[3],
                meteor: m,
                rouge_l: r,
                cider_d: cider[i],
            },
        });
    }
    let bs = bleu_stats.scores();
    let mean = |s: f64| if n == 0 { 0.0 } else { s / n as f64 };
    let corpus = Metrics {
        bleu1: bs[0],
        bleu2: bs[1],
        bleu3: bs[2],
        bleu4: bs[3],
        meteor: met.as_ref().map(|_| meteor_stats.score()),
        rouge_l: mean(rouge_sum),
        cider_d: mean(cider_sum),
    };
    Ok(Scores {
        corpus,
        bleu_stats,
        meteor_stats: met.map(|_| meteor_stats),
        per_region,
    })
}
