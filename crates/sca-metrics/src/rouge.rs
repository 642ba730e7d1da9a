//! ROUGE-L as `pycocoevalcap.rouge` computes it (beta = 1.2, tokens split on single spaces).

const BETA: f64 = 1.2;

/// Length of the longest common subsequence of two token sequences.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

/// ROUGE-L of one tokenized candidate against its tokenized references.
///
/// Precision and recall are maximised over the references independently; an empty string is
/// one empty token, as in the reference (`"".split(" ") == [""]`).
///
/// ```
/// use sca_metrics::rouge_l;
/// assert_eq!(rouge_l("a man riding a horse", &["a man riding a horse".into()]), 1.0);
/// assert_eq!(rouge_l("", &["a horse".into()]), 0.0);
/// ```
pub fn rouge_l(candidate: &str, references: &[String]) -> f64 {
    let c: Vec<&str> = candidate.split(' ').collect();
    let mut p_max = 0.0f64;
    let mut r_max = 0.0f64;
    for r in references {
        let rt: Vec<&str> = r.split(' ').collect();
        let l = lcs(&rt, &c) as f64;
        p_max = p_max.max(l / c.len() as f64);
        r_max = r_max.max(l / rt.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * p_max * r_max) / (r_max + b2 * p_max)
    } else {
        0.0
    }
}
