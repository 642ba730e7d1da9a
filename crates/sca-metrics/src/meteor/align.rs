//! METEOR 1.5's aligner: candidate matches from the exact, stem, synonym and paraphrase modules,
//! one-to-one non-overlapping matches fixed up front, then a beam search over the rest.
//!
//! Line 1 is the hypothesis, line 2 the reference; matches are indexed by their start in line 2.
//! The quirks of the original that change results are kept on purpose: words are compared by
//! Java `String.hashCode`, the beam's weighted match counts are truncated to integers, and the
//! distance of a newly chosen match is added to the path it was extended from.

use super::synonym::intersects;
use super::MeteorData;

const BEAM: usize = 40;
/// Module weights used to rank partial alignments (not the scoring weights).
const ALIGN_WEIGHTS: [f64; 4] = [1.0, 0.5, 0.5, 0.5];

#[derive(Clone, Copy, Debug)]
pub(crate) struct Match {
    /// Start and length in line 2 (reference).
    start: usize,
    len: usize,
    /// Start and length in line 1 (hypothesis).
    mstart: usize,
    mlen: usize,
    module: usize,
}

/// `String.hashCode()` over UTF-16 code units.
pub(crate) fn java_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    let mut buf = [0u16; 2];
    for c in s.chars() {
        for u in c.encode_utf16(&mut buf) {
            h = h.wrapping_mul(31).wrapping_add(*u as i32);
        }
    }
    h
}

/// What the scorer needs from an alignment.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlignStats {
    pub len1: usize,
    pub len2: usize,
    pub func1: usize,
    pub func2: usize,
    /// Per module: content/function matched words on each line.
    pub content1: [usize; 4],
    pub content2: [usize; 4],
    pub function1: [usize; 4],
    pub function2: [usize; 4],
    pub chunks: usize,
}

#[derive(Clone)]
struct Partial {
    matches: Vec<Option<u32>>,
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: i64,
    distance: i32,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl Partial {
    fn is_used(&self, m: &Match) -> bool {
        (0..m.len).any(|k| self.used2[m.start + k]) || (0..m.mlen).any(|k| self.used1[m.mstart + k])
    }

    fn set_used(&mut self, m: &Match) {
        for k in 0..m.len {
            self.used2[m.start + k] = true;
        }
        for k in 0..m.mlen {
            self.used1[m.mstart + k] = true;
        }
    }

    /// Java's `int += double` compound assignment truncates.
    fn add_weighted(&mut self, m: &Match) {
        let w = ALIGN_WEIGHTS[m.module];
        self.matches1 = (self.matches1 as f64 + m.mlen as f64 * w) as i32;
        self.matches2 = (self.matches2 as f64 + m.len as f64 * w) as i32;
    }
}

/// `Constants.PARTIAL_COMPARE_TOTAL`: more weighted matches, then fewer chunks, then less
/// distance.
fn compare(x: &Partial, y: &Partial) -> std::cmp::Ordering {
    let md = (y.matches1 + y.matches2) - (x.matches1 + x.matches2);
    if md != 0 {
        return md.cmp(&0);
    }
    let cd = x.chunks - y.chunks;
    if cd != 0 {
        return cd.cmp(&0);
    }
    (x.distance - y.distance).cmp(&0)
}

/// Aligns hypothesis words `w1` to reference words `w2`.
pub(crate) fn align(data: &MeteorData, w1: &[&Word], w2: &[&Word]) -> AlignStats {
    let k1: Vec<i32> = w1.iter().map(|w| w.hash).collect();
    let k2: Vec<i32> = w2.iter().map(|w| w.hash).collect();
    let n1 = w1.len();
    let n2 = w2.len();
    let mut all: Vec<Match> = Vec::new();
    let mut at: Vec<Vec<u32>> = vec![Vec::new(); n2];
    let mut cov1 = vec![0u32; n1];
    let mut cov2 = vec![0u32; n2];
    let mut add = |m: Match, all: &mut Vec<Match>, at: &mut Vec<Vec<u32>>| {
        for k in 0..m.mlen {
            cov1[m.mstart + k] += 1;
        }
        for k in 0..m.len {
            cov2[m.start + k] += 1;
        }
        at[m.start].push(all.len() as u32);
        all.push(m);
    };

    let identical = n1 == n2 && k1 == k2;
    // exact
    for j in 0..n2 {
        for i in 0..n1 {
            if k1[i] == k2[j] {
                add(
                    Match {
                        start: j,
                        len: 1,
                        mstart: i,
                        mlen: 1,
                        module: 0,
                    },
                    &mut all,
                    &mut at,
                );
            }
        }
    }
    if !identical {
        // stem
        for j in 0..n2 {
            for i in 0..n1 {
                if w1[i].stem_hash == w2[j].stem_hash && k1[i] != k2[j] {
                    add(
                        Match {
                            start: j,
                            len: 1,
                            mstart: i,
                            mlen: 1,
                            module: 1,
                        },
                        &mut all,
                        &mut at,
                    );
                }
            }
        }
        // synonym
        for j in 0..n2 {
            for i in 0..n1 {
                if k1[i] != k2[j] && intersects(&w1[i].synsets, &w2[j].synsets) {
                    add(
                        Match {
                            start: j,
                            len: 1,
                            mstart: i,
                            mlen: 1,
                            module: 2,
                        },
                        &mut all,
                        &mut at,
                    );
                }
            }
        }
        // paraphrase
        let pt = &data.paraphrases;
        let l1: Vec<i64> = w1.iter().map(|w| w.para_id).collect();
        let l2: Vec<i64> = w2.iter().map(|w| w.para_id).collect();
        let (l1, l2) = (&l1[..], &l2[..]);
        let mut paths = Vec::new();
        let seq_at = |line: &[i64], pos: usize, words: &[u32]| {
            words
                .iter()
                .enumerate()
                .all(|(k, &w)| pos + k < line.len() && line[pos + k] == w as i64)
        };
        for j in 0..n2 {
            pt.paths(l2, j, &mut paths);
            for &(len, p) in &paths {
                let words = pt.paraphrase(p);
                for i in 0..n1 {
                    if seq_at(l1, i, words) {
                        add(
                            Match {
                                start: j,
                                len,
                                mstart: i,
                                mlen: words.len(),
                                module: 3,
                            },
                            &mut all,
                            &mut at,
                        );
                    }
                }
            }
        }
        for i in 0..n1 {
            pt.paths(l1, i, &mut paths);
            for &(len, p) in &paths {
                let words = pt.paraphrase(p);
                for j in 0..n2 {
                    if seq_at(l2, j, words) {
                        add(
                            Match {
                                start: j,
                                len: words.len(),
                                mstart: i,
                                mlen: len,
                                module: 3,
                            },
                            &mut all,
                            &mut at,
                        );
                    }
                }
            }
        }
    }

    // One-to-one, non-overlapping matches are fixed.
    let mut init = Partial {
        matches: vec![None; n2],
        matches1: 0,
        matches2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: -1,
        distance: 0,
        used1: vec![false; n1],
        used2: vec![false; n2],
    };
    for j in 0..n2 {
        if at[j].len() == 1 {
            let mi = at[j][0];
            let m = all[mi as usize];
            let overlap = (0..m.len).any(|k| cov2[j + k] != 1)
                || (0..m.mlen).any(|k| cov1[m.mstart + k] != 1);
            if !overlap {
                init.matches[j] = Some(mi);
                init.set_used(&m);
            }
        }
    }

    let best = resolve(&all, &at, init);

    // Totals by module and word type.
    let mut st = AlignStats {
        len1: n1,
        len2: n2,
        ..Default::default()
    };
    st.func1 = w1.iter().filter(|w| w.function).count();
    st.func2 = w2.iter().filter(|w| w.function).count();
    for m in best.matches.iter().flatten() {
        let m = all[*m as usize];
        for k in 0..m.mlen {
            if w1[m.mstart + k].function {
                st.function1[m.module] += 1;
            } else {
                st.content1[m.module] += 1;
            }
        }
        for k in 0..m.len {
            if w2[m.start + k].function {
                st.function2[m.module] += 1;
            } else {
                st.content2[m.module] += 1;
            }
        }
    }
    // Chunks, recounted over the final matches.
    let mut chunks = 0;
    let mut idx = 0;
    let mut last_end: i64 = -1;
    while idx < best.matches.len() {
        match best.matches[idx] {
            None => {
                if last_end != -1 {
                    chunks += 1;
                    last_end = -1;
                }
                idx += 1;
            }
            Some(mi) => {
                let m = all[mi as usize];
                if last_end != -1 && m.mstart as i64 != last_end {
                    chunks += 1;
                }
                idx = m.start + m.len;
                last_end = (m.mstart + m.mlen) as i64;
            }
        }
    }
    if last_end != -1 {
        chunks += 1;
    }
    st.chunks = chunks;
    st
}

fn resolve(all: &[Match], at: &[Vec<u32>], start: Partial) -> Partial {
    let n2 = at.len();
    let mut next: Vec<Partial> = vec![start];
    for current in 0..=n2 {
        let mut paths = std::mem::take(&mut next);
        paths.sort_by(compare);
        // The best path dropped in the "used word" branch, kept in case nothing survives.
        let mut dropped: Option<Partial> = None;
        for mut path in paths.drain(..).take(BEAM) {
            if current == n2 {
                if path.last_match_end != -1 {
                    path.chunks += 1;
                }
                next.push(path);
                continue;
            }
            if path.used2[current] {
                if current < path.idx {
                    next.push(path);
                } else if let Some(mi) = path.matches[path.idx] {
                    let m = all[mi as usize];
                    path.add_weighted(&m);
                    if path.last_match_end != -1 && m.mstart as i64 != path.last_match_end {
                        path.chunks += 1;
                    }
                    path.idx = m.start + m.len;
                    path.last_match_end = (m.mstart + m.mlen) as i64;
                    path.distance += (m.start as i32 - m.mstart as i32).abs();
                    next.push(path);
                } else if dropped.is_none() {
                    dropped = Some(path);
                }
                continue;
            }
            for &mi in &at[current] {
                let m = all[mi as usize];
                if path.is_used(&m) {
                    continue;
                }
                let mut np = path.clone();
                np.set_used(&m);
                np.matches[current] = Some(mi);
                np.add_weighted(&m);
                if np.last_match_end != -1 && m.mstart as i64 != np.last_match_end {
                    np.chunks += 1;
                }
                np.idx = m.start + m.len;
                np.last_match_end = (m.mstart + m.mlen) as i64;
                // The original adds the distance to the path being extended, not the new one.
                path.distance += (m.start as i32 - m.mstart as i32).abs();
                next.push(np);
            }
            if path.last_match_end != -1 {
                path.chunks += 1;
                path.last_match_end = -1;
            }
            path.idx += 1;
            next.push(path);
        }
        if next.is_empty() {
            // The original warns and continues with the best path of this step.
            next.extend(dropped);
        }
    }
    next.sort_by(compare);
    next.swap_remove(0)
}

/// What the aligner needs to know about one (normalized) word; computed once per distinct word.
pub(crate) struct Word {
    pub hash: i32,
    pub stem_hash: i32,
    pub synsets: Vec<u32>,
    pub para_id: i64,
    pub function: bool,
}

impl Word {
    pub(crate) fn new(data: &MeteorData, w: &str) -> Self {
        Word {
            hash: java_hash(w),
            stem_hash: java_hash(&super::stem::stem(w)),
            synsets: data.synonyms.all_synsets(w),
            para_id: data.paraphrases.translate(w),
            function: data.function_words.contains(w),
        }
    }
}
