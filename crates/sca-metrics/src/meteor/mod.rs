//! METEOR 1.5 (`-l en -norm`, task "rank") re-implemented in Rust, as `pycocoevalcap` drives
//! `meteor-1.5.jar`: per region, the hypothesis is aligned to every reference (exact, Snowball
//! stem, WordNet synonym and paraphrase matches), the best-scoring reference's statistics are
//! kept, and the corpus score comes from the summed statistics.
//!
//! The linguistic data (function words, synonym sets, paraphrase table, non-breaking prefixes)
//! is read at run time from a directory that `bash scripts/setup-meteor.sh` fills from the
//! `pycocoevalcap` package; nothing of it is compiled in and no Java is needed.

mod align;
mod normalize;
mod paraphrase;
mod stem;
mod synonym;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use stem::stem;

use align::{align, AlignStats, Word};
use rayon::prelude::*;

use crate::ngram::{FxHashMap, FxHashSet};
use normalize::Nbp;

/// Environment variable naming the METEOR data directory.
pub const DATA_ENV: &str = "SCA_METEOR_DATA";

/// The command that installs the METEOR data.
pub const SETUP_HINT: &str = "bash scripts/setup-meteor.sh";

// Scoring parameters of METEOR 1.5 for English, task "rank".
const ALPHA: f64 = 0.85;
const BETA: f64 = 0.2;
const GAMMA: f64 = 0.6;
const DELTA: f64 = 0.75;
const WEIGHTS: [f64; 4] = [1.0, 0.6, 0.8, 0.6];

/// Files of the data directory, relative to it.
const FILES: [&str; 5] = [
    "function/english.words",
    "synonym/english.exceptions",
    "synonym/english.synsets",
    "nonbreaking/english.prefixes",
    "paraphrase-en.gz",
];

/// Errors loading the METEOR data.
#[derive(Debug, thiserror::Error)]
pub enum MeteorError {
    /// The data directory or one of its files does not exist.
    #[error(
        "METEOR data not found: {missing} does not exist. METEOR needs the METEOR 1.5 data \
         (WordNet synsets, paraphrase table, function words). Install it with `{SETUP_HINT}` \
         (run from the sca repository root; it fills .cache/meteor, or $SCA_METEOR_DATA if set), \
         then point {DATA_ENV} at that directory or pass its path explicitly (--meteor-data DIR)."
    )]
    Missing {
        /// The path that was looked for.
        missing: PathBuf,
    },
    /// A data file could not be read.
    #[error("cannot read METEOR data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file is malformed.
    #[error("malformed METEOR data file {path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// The METEOR 1.5 English data, loaded once and shared (it is `Sync`).
pub struct MeteorData {
    function_words: HashSet<String>,
    synonyms: synonym::Synonyms,
    paraphrases: paraphrase::Paraphrases,
    nbp: HashMap<String, Nbp>,
}

impl MeteorData {
    /// The data directory to use: `explicit` if given, else `$SCA_METEOR_DATA`, else the first
    /// `.cache/meteor` found in the current directory or one of its ancestors.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, MeteorError> {
        if let Some(p) = explicit {
            return Ok(p.to_owned());
        }
        if let Some(p) = std::env::var_os(DATA_ENV) {
            return Ok(PathBuf::from(p));
        }
        if let Ok(cwd) = std::env::current_dir() {
            for dir in cwd.ancestors() {
                let cand = dir.join(".cache/meteor");
                if cand.join(FILES[0]).exists() {
                    return Ok(cand);
                }
            }
        }
        Err(MeteorError::Missing {
            missing: PathBuf::from(".cache/meteor"),
        })
    }

    /// Loads the data from `dir` (see [`MeteorData::locate`]). Takes a few seconds: most of it
    /// is the 60 MB paraphrase table.
    ///
    /// ```no_run
    /// use sca_metrics::meteor::MeteorData;
    /// let data = MeteorData::load(&MeteorData::locate(None)?)?;
    /// # Ok::<(), sca_metrics::meteor::MeteorError>(())
    /// ```
    pub fn load(dir: &Path) -> Result<Self, MeteorError> {
        Self::load_impl(dir, None::<std::iter::Empty<&str>>)
    }

    /// Loads the data keeping only the part of the paraphrase table that can match the given
    /// sentences (PTB-tokenized hypotheses and references): entries with a word that does not
    /// occur in them can never match, so the scores of these sentences are exactly those of
    /// [`MeteorData::load`], and loading is several times faster.
    ///
    /// ```no_run
    /// use sca_metrics::meteor::MeteorData;
    /// let dir = MeteorData::locate(None)?;
    /// let data = MeteorData::load_for(&dir, ["a man riding a horse", "a person rides a horse"])?;
    /// # Ok::<(), sca_metrics::meteor::MeteorError>(())
    /// ```
    pub fn load_for<'s>(
        dir: &Path,
        sentences: impl IntoIterator<Item = &'s str>,
    ) -> Result<Self, MeteorError> {
        Self::load_impl(dir, Some(sentences.into_iter()))
    }

    fn load_impl<'s>(
        dir: &Path,
        sentences: Option<impl Iterator<Item = &'s str>>,
    ) -> Result<Self, MeteorError> {
        for f in FILES {
            let p = dir.join(f);
            if !p.exists() {
                return Err(MeteorError::Missing { missing: p });
            }
        }
        let read = |rel: &str| {
            let path = dir.join(rel);
            std::fs::read_to_string(&path).map_err(|source| MeteorError::Io { path, source })
        };
        let mut nbp = HashMap::new();
        for line in read(FILES[3])?.lines() {
            let mut tok = line
                .split(normalize::is_tok_delim)
                .filter(|t| !t.is_empty());
            let Some(pre) = tok.next() else { continue };
            if pre.starts_with('#') {
                continue;
            }
            let ty = if tok.next() == Some("#NUMERIC_ONLY#") {
                Nbp::NumericOnly
            } else {
                Nbp::Any
            };
            nbp.insert(pre.to_string(), ty);
        }
        // The words METEOR will see: the normalized sentences, as the scorer prepares them.
        let keep: Option<FxHashSet<Vec<u8>>> = sentences.map(|it| {
            let sents: Vec<&str> = it.collect();
            sents
                .par_iter()
                .fold(FxHashSet::default, |mut set, s| {
                    let (h, _) = prepare_segment(s, &[]);
                    for w in normalize::normalize(&h, &nbp).split(normalize::is_tok_delim) {
                        if !w.is_empty() && !set.contains(w.as_bytes()) {
                            set.insert(w.as_bytes().to_vec());
                        }
                    }
                    set
                })
                .reduce(FxHashSet::default, |mut a, b| {
                    a.extend(b);
                    a
                })
        });
        let para_path = dir.join("paraphrase-en.gz");
        let (paraphrases, rest) = rayon::join(
            || -> Result<paraphrase::Paraphrases, MeteorError> {
                let file = std::fs::File::open(&para_path).map_err(|source| MeteorError::Io {
                    path: para_path.clone(),
                    source,
                })?;
                let gz =
                    flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
                paraphrase::Paraphrases::read(gz, keep.as_ref()).map_err(|source| MeteorError::Io {
                    path: para_path.clone(),
                    source,
                })
            },
            || -> Result<_, MeteorError> {
                let function_words: HashSet<String> =
                    read(FILES[0])?.lines().map(str::to_string).collect();
                let synonyms = synonym::Synonyms::parse(&read(FILES[1])?, &read(FILES[2])?)
                    .map_err(|msg| MeteorError::Format {
                        path: dir.join(FILES[2]),
                        msg,
                    })?;
                Ok((function_words, synonyms))
            },
        );
        let paraphrases = paraphrases?;
        let (function_words, synonyms) = rest?;
        Ok(MeteorData {
            function_words,
            synonyms,
            paraphrases,
            nbp,
        })
    }

    /// METEOR's `-norm` normalization (tokenization and lower-casing) of one line.
    ///
    /// ```no_run
    /// # let data = sca_metrics::meteor::MeteorData::load("d".as_ref()).unwrap();
    /// assert_eq!(data.normalize("a girl 's t-shirt"), "a girl ' s t shirt");
    /// ```
    pub fn normalize(&self, line: &str) -> String {
        normalize::normalize(line, &self.nbp)
    }

    /// The sufficient statistics of one region: the hypothesis against each reference, keeping
    /// the best-scoring reference (the first one on ties). Inputs are PTB-tokenized strings.
    ///
    /// ```no_run
    /// # let data = sca_metrics::meteor::MeteorData::load("d".as_ref()).unwrap();
    /// let s = data.segment_stats("a man riding a horse",
    ///     &["a person rides a horse".to_string(), "a man on a horse".to_string()]);
    /// assert!((s.score() - 0.78182).abs() < 1e-5);
    /// ```
    pub fn segment_stats(&self, hypothesis: &str, references: &[String]) -> MeteorStats {
        let (hyp, refs) = prepare_segment(hypothesis, references);
        let hn = self.normalize(&hyp);
        let hw: Vec<Word> = split_words(&hn).map(|w| Word::new(self, w)).collect();
        let rns: Vec<String> = refs.iter().map(|r| self.normalize(r)).collect();
        let rws: Vec<Vec<Word>> = rns
            .iter()
            .map(|r| split_words(r).map(|w| Word::new(self, w)).collect())
            .collect();
        let h: Vec<&Word> = hw.iter().collect();
        self.best_reference(&h, rws.iter().map(|r| r.iter().collect::<Vec<_>>()))
    }

    /// Statistics of many segments (hypothesis, references) at once, in parallel; per-word
    /// data is computed once per distinct word.
    pub fn corpus_stats(&self, segments: &[(&str, &[String])]) -> Vec<MeteorStats> {
        // Normalize every sentence.
        let norm: Vec<(String, Vec<String>)> = segments
            .par_iter()
            .with_min_len(256)
            .map(|(h, rs)| {
                let (h, rs) = prepare_segment(h, rs);
                (
                    self.normalize(&h),
                    rs.iter().map(|r| self.normalize(r)).collect(),
                )
            })
            .collect();
        // Distinct words -> per-word data.
        let mut index: FxHashMap<&str, u32> = FxHashMap::default();
        let mut distinct: Vec<&str> = Vec::new();
        for (h, rs) in &norm {
            for w in std::iter::once(h).chain(rs).flat_map(|s| split_words(s)) {
                index.entry(w).or_insert_with(|| {
                    distinct.push(w);
                    (distinct.len() - 1) as u32
                });
            }
        }
        let words: Vec<Word> = distinct
            .par_iter()
            .with_min_len(256)
            .map(|w| Word::new(self, w))
            .collect();
        let lookup =
            |s: &str| -> Vec<&Word> { split_words(s).map(|w| &words[index[w] as usize]).collect() };
        norm.par_iter()
            .with_min_len(64)
            .map(|(h, rs)| self.best_reference(&lookup(h), rs.iter().map(|r| lookup(r))))
            .collect()
    }

    /// Aligns the hypothesis to each reference and keeps the best (first on ties).
    fn best_reference<'w>(
        &self,
        h: &[&Word],
        refs: impl Iterator<Item = Vec<&'w Word>>,
    ) -> MeteorStats {
        let mut best: Option<MeteorStats> = None;
        let mut best_score = -1.0;
        for r in refs {
            let st = MeteorStats::from_alignment(&align(self, h, &r));
            let sc = st.score();
            if sc > best_score {
                best_score = sc;
                best = Some(st);
            }
        }
        best.unwrap_or_default()
    }
}

fn split_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(normalize::is_tok_delim).filter(|t| !t.is_empty())
}

/// What pycocoevalcap's wrapper and the jar's stdio protocol do to a segment: `|||` is removed
/// from the hypothesis, double spaces collapse, and the line is split on `|||` and trimmed.
fn prepare_segment(hypothesis: &str, references: &[String]) -> (String, Vec<String>) {
    let jtrim = |s: &str| s.trim_matches(|c: char| c <= ' ').to_string();
    let hyp = jtrim(&hypothesis.replace("|||", "").replace("  ", " "));
    let refs = references
        .iter()
        .flat_map(|r| r.split("|||").map(jtrim).collect::<Vec<_>>())
        .collect();
    (hyp, refs)
}

/// METEOR's sufficient statistics (word counts) of a segment or, summed, of a corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MeteorStats {
    /// Hypothesis length in words.
    pub test_length: f64,
    /// Reference length in words.
    pub reference_length: f64,
    /// Function words in the hypothesis.
    pub test_function_words: f64,
    /// Function words in the reference.
    pub reference_function_words: f64,
    /// Matched hypothesis content words per module (exact, stem, synonym, paraphrase).
    pub test_content: [f64; 4],
    /// Matched reference content words per module.
    pub reference_content: [f64; 4],
    /// Matched hypothesis function words per module.
    pub test_function: [f64; 4],
    /// Matched reference function words per module.
    pub reference_function: [f64; 4],
    /// Number of chunks.
    pub chunks: f64,
    /// Matched hypothesis words (all modules).
    pub test_word_matches: f64,
    /// Matched reference words (all modules).
    pub reference_word_matches: f64,
}

impl MeteorStats {
    fn from_alignment(a: &AlignStats) -> Self {
        let f = |v: [usize; 4]| v.map(|x| x as f64);
        let mut s = MeteorStats {
            test_length: a.len1 as f64,
            reference_length: a.len2 as f64,
            test_function_words: a.func1 as f64,
            reference_function_words: a.func2 as f64,
            test_content: f(a.content1),
            reference_content: f(a.content2),
            test_function: f(a.function1),
            reference_function: f(a.function2),
            chunks: a.chunks as f64,
            ..Default::default()
        };
        for i in 0..4 {
            s.test_word_matches += s.test_content[i] + s.test_function[i];
            s.reference_word_matches += s.reference_content[i] + s.reference_function[i];
        }
        s
    }

    /// Total matched words on each side (the stdio protocol re-derives them from the
    /// per-module matches).
    fn totals(&self) -> (f64, f64) {
        let mut test_total = 0.0;
        let mut ref_total = 0.0;
        for i in 0..4 {
            test_total += self.test_content[i];
            test_total += self.test_function[i];
            ref_total += self.reference_content[i];
            ref_total += self.reference_function[i];
        }
        (test_total, ref_total)
    }

    /// Adds another segment's statistics (to form the corpus aggregate).
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        for i in 0..4 {
            self.test_content[i] += o.test_content[i];
            self.reference_content[i] += o.reference_content[i];
            self.test_function[i] += o.test_function[i];
            self.reference_function[i] += o.reference_function[i];
        }
        // As the jar's `addStats`: a perfectly matched segment (everything aligned in one chunk)
        // adds no chunks to the aggregate.
        let (t, r) = o.totals();
        if !(t == o.test_length && r == o.reference_length && o.chunks == 1.0) {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    /// The METEOR score of these statistics (`MeteorScorer.computeMetrics`).
    ///
    /// ```
    /// use sca_metrics::meteor::MeteorStats;
    /// assert_eq!(MeteorStats::default().score(), 0.0); // empty hypothesis: NaN becomes 0
    /// ```
    pub fn score(&self) -> f64 {
        let test_wlen = DELTA * (self.test_length - self.test_function_words)
            + (1.0 - DELTA) * self.test_function_words;
        let ref_wlen = DELTA * (self.reference_length - self.reference_function_words)
            + (1.0 - DELTA) * self.reference_function_words;
        let mut test_wm = 0.0;
        let mut ref_wm = 0.0;
        for i in 0..4 {
            test_wm += self.test_content[i] * WEIGHTS[i] * DELTA;
        }
        for i in 0..4 {
            ref_wm += self.reference_content[i] * WEIGHTS[i] * DELTA;
        }
        for i in 0..4 {
            test_wm += self.test_function[i] * WEIGHTS[i] * (1.0 - DELTA);
        }
        for i in 0..4 {
            ref_wm += self.reference_function[i] * WEIGHTS[i] * (1.0 - DELTA);
        }
        let precision = test_wm / test_wlen;
        let recall = ref_wm / ref_wlen;
        let fmean = 1.0 / ((1.0 - ALPHA) / precision + ALPHA / recall);
        let (test_total, ref_total) = self.totals();
        let frag = if test_total == self.test_length
            && ref_total == self.reference_length
            && self.chunks == 1.0
        {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let penalty = GAMMA * frag.powf(BETA);
        let score = fmean * (1.0 - penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}
