//! CIDEr-D as `pycocoevalcap.cider` computes it: TF-IDF n-gram vectors (n = 1..4) with document
//! frequencies from the evaluated references, clipping, a Gaussian length penalty (sigma 6) on
//! the bigram count, and a final x10.

use rayon::prelude::*;

use crate::ngram::{gram_order, FxHashMap, Gram};

const SIGMA: f64 = 6.0;

/// A sentence's TF-IDF vector: (gram, weight) sorted by gram, per-order norms, and the
/// reference's notion of length (number of bigrams).
struct Vec4 {
    w: Vec<(Gram, f64)>,
    norm: [f64; 4],
    len: f64,
}

fn to_vec(counts: &[(Gram, u32)], df: &FxHashMap<Gram, u32>, ref_len: f64) -> Vec4 {
    let mut w = Vec::with_capacity(counts.len());
    let mut norm = [0.0f64; 4];
    let mut len = 0.0;
    for &(g, tf) in counts {
        let d = df.get(&g).copied().unwrap_or(0).max(1) as f64;
        let v = tf as f64 * (ref_len - d.ln());
        let n = gram_order(g) - 1;
        norm[n] += v * v;
        if n == 1 {
            len += tf as f64;
        }
        w.push((g, v));
    }
    for x in &mut norm {
        *x = x.sqrt();
    }
    Vec4 { w, norm, len }
}

fn sim(h: &Vec4, r: &Vec4) -> [f64; 4] {
    let delta = h.len - r.len;
    let mut val = [0.0f64; 4];
    // Both vectors are sorted by gram: merge.
    let mut j = 0;
    for &(g, wh) in &h.w {
        while j < r.w.len() && r.w[j].0 < g {
            j += 1;
        }
        if j < r.w.len() && r.w[j].0 == g {
            let wr = r.w[j].1;
            val[gram_order(g) - 1] += wh.min(wr) * wr;
        }
    }
    let pen = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    for n in 0..4 {
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            val[n] /= h.norm[n] * r.norm[n];
        }
        val[n] *= pen;
    }
    val
}

/// Per-region CIDEr-D scores. `cands[i]` and `refs[i]` are the sorted n-gram counts of region
/// i's candidate and references.
pub(crate) fn cider_d(cands: &[Vec<(Gram, u32)>], refs: &[Vec<Vec<(Gram, u32)>>]) -> Vec<f64> {
    let n_regions = cands.len();
    if n_regions == 0 {
        return Vec::new();
    }
    // Document frequency: regions whose references contain the n-gram.
    let df: FxHashMap<Gram, u32> = refs
        .par_iter()
        .fold(FxHashMap::default, |mut m, rs| {
            let mut grams: Vec<Gram> = rs.iter().flat_map(|r| r.iter().map(|(g, _)| *g)).collect();
            grams.sort_unstable();
            grams.dedup();
            for g in grams {
                *m.entry(g).or_insert(0) += 1;
            }
            m
        })
        .reduce(FxHashMap::default, |mut a, b| {
            let (mut big, small) = if a.len() >= b.len() {
                (std::mem::take(&mut a), b)
            } else {
                (b, a)
            };
            for (g, c) in small {
                *big.entry(g).or_insert(0) += c;
            }
            big
        });
    let ref_len = (n_regions as f64).ln();
    cands
        .par_iter()
        .zip(refs.par_iter())
        .map(|(c, rs)| {
            let h = to_vec(c, &df, ref_len);
            let mut score = [0.0f64; 4];
            for r in rs {
                let rv = to_vec(r, &df, ref_len);
                let s = sim(&h, &rv);
                for n in 0..4 {
                    score[n] += s[n];
                }
            }
            let mean = score.iter().sum::<f64>() / 4.0;
            mean / rs.len() as f64 * 10.0
        })
        .collect()
}
