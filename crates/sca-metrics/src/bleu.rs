//! BLEU-1..4 as `pycocoevalcap.bleu` computes it: corpus level from summed counts, the
//! "closest" reference length, and the reference's tiny smoothing constants.

use crate::ngram::{count_grams, gram_order, lookup, Gram};

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// Sufficient statistics of BLEU for one region or a whole corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BleuStats {
    /// Number of candidate words.
    pub testlen: u64,
    /// Sum of the "closest" reference lengths.
    pub reflen: u64,
    /// Candidate n-grams of each order 1..=4.
    pub guess: [u64; 4],
    /// Clipped matches of each order 1..=4.
    pub correct: [u64; 4],
}

impl BleuStats {
    /// Adds another region's statistics (corpus BLEU sums them).
    pub fn add(&mut self, o: &BleuStats) {
        self.testlen += o.testlen;
        self.reflen += o.reflen;
        for k in 0..4 {
            self.guess[k] += o.guess[k];
            self.correct[k] += o.correct[k];
        }
    }

    /// BLEU-1..4 from these statistics, with the brevity penalty.
    ///
    /// ```
    /// use sca_metrics::BleuStats;
    /// let s = BleuStats { testlen: 10, reflen: 10, guess: [10, 8, 6, 4], correct: [9, 6, 4, 2] };
    /// let b = s.scores();
    /// assert!((b[0] - 0.8999999998200003).abs() < 1e-15);
    /// ```
    pub fn scores(&self) -> [f64; 4] {
        let mut out = [0.0; 4];
        let mut prod = 1.0f64;
        for k in 0..4 {
            prod *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            out[k] = prod.powf(1.0 / (k as f64 + 1.0));
        }
        let ratio = (self.testlen as f64 + TINY) / (self.reflen as f64 + SMALL);
        if ratio < 1.0 {
            let bp = (1.0 - 1.0 / ratio).exp();
            for v in &mut out {
                *v *= bp;
            }
        }
        out
    }
}

/// BLEU statistics of one candidate (word ids) against its references (word ids).
pub(crate) fn region_stats(
    cand: &[u32],
    cand_counts: &[(Gram, u32)],
    refs: &[Vec<u32>],
) -> BleuStats {
    let testlen = cand.len() as u64;
    // Maximum count of each n-gram over the references (only the candidate's n-grams matter).
    let mut maxref: Vec<u32> = vec![0; cand_counts.len()];
    let mut reflen: Option<(u64, u64)> = None;
    for r in refs {
        let rc = count_grams(r);
        for (slot, (g, _)) in maxref.iter_mut().zip(cand_counts) {
            let c = lookup(&rc, *g);
            if c > *slot {
                *slot = c;
            }
        }
        let l = r.len() as u64;
        let key = (l.abs_diff(testlen), l);
        // min over (|l - c|, l): ties go to the shorter reference.
        if reflen.is_none_or(|best| key < best) {
            reflen = Some(key);
        }
    }
    let mut correct = [0u64; 4];
    for ((g, c), m) in cand_counts.iter().zip(&maxref) {
        correct[gram_order(*g) - 1] += (*c).min(*m) as u64;
    }
    let mut guess = [0u64; 4];
    for (k, slot) in guess.iter_mut().enumerate() {
        *slot = testlen.saturating_sub(k as u64);
    }
    BleuStats {
        testlen,
        reflen: reflen.map_or(0, |r| r.1),
        guess,
        correct,
    }
}
