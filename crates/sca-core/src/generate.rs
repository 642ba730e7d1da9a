//! Caption decoding from an LM prefix with the semantics of HF `generate` (transformers 4.36):
//! greedy and beam search (length penalty, early_stopping=False), stop at EOS, a per-token
//! streaming callback with cancellation.

use candle_core::{Result, Tensor, D};

use crate::gpt2::{Gpt2, KvCache};
use crate::trace::Trace;

/// How to decode a caption.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decode {
    /// Argmax at each step.
    Greedy { max_new_tokens: usize },
    /// HF beam search (`num_beams`, `length_penalty`, `early_stopping=False`).
    Beam {
        num_beams: usize,
        max_new_tokens: usize,
        length_penalty: f32,
    },
}

impl Decode {
    /// The official evaluation default: greedy, at most 19 new tokens (see the spec correction).
    pub const EVAL_DEFAULT: Decode = Decode::Greedy { max_new_tokens: 19 };

    /// Greedy with `beams == 1`, else beam search with length penalty 1.0.
    pub fn from_beams(beams: usize, max_new_tokens: usize) -> Self {
        if beams <= 1 {
            Decode::Greedy { max_new_tokens }
        } else {
            Decode::Beam {
                num_beams: beams,
                max_new_tokens,
                length_penalty: 1.0,
            }
        }
    }

    pub fn max_new_tokens(&self) -> usize {
        match *self {
            Decode::Greedy { max_new_tokens } | Decode::Beam { max_new_tokens, .. } => {
                max_new_tokens
            }
        }
    }
}

/// Called with (sequence index, token id) as tokens become final; return `false` to cancel.
pub type OnToken<'a> = dyn FnMut(usize, u32) -> bool + 'a;

/// Decodes one caption per row of `prefix` (B, P, D). Returned tokens include the EOS when one
/// was generated (as HF's sequences do, minus padding). Cancellation returns what was decoded.
pub fn generate(
    lm: &Gpt2,
    prefix: &Tensor,
    decode: &Decode,
    eos: u32,
    on_token: &mut OnToken,
) -> Result<Vec<Vec<u32>>> {
    match *decode {
        Decode::Greedy { max_new_tokens } => greedy(lm, prefix, max_new_tokens, eos, on_token),
        Decode::Beam {
            num_beams,
            max_new_tokens,
            length_penalty,
        } => {
            let out = beam_search(lm, prefix, num_beams, max_new_tokens, length_penalty, eos)?;
            'outer: for (i, toks) in out.iter().enumerate() {
                for &t in toks {
                    if !on_token(i, t) {
                        break 'outer;
                    }
                }
            }
            Ok(out)
        }
    }
}

fn greedy(
    lm: &Gpt2,
    prefix: &Tensor,
    max_new: usize,
    eos: u32,
    on_token: &mut OnToken,
) -> Result<Vec<Vec<u32>>> {
    let mut steps = GreedySteps::new(lm, prefix, max_new, eos)?;
    loop {
        let new = steps.step(lm)?;
        if new.is_empty() {
            break;
        }
        for (k, &(seq, tok)) in new.iter().enumerate() {
            if !on_token(seq, tok) {
                // Rows after the cancelling one never saw this step's token: drop it.
                for &(later, _) in &new[k + 1..] {
                    steps.out[later].pop();
                }
                return Ok(steps.into_tokens());
            }
        }
    }
    Ok(steps.into_tokens())
}

/// Greedy decoding one step at a time: for callers that must return to an event loop between
/// tokens (a browser worker that cancels a caption when a new click arrives).
///
/// ```no_run
/// # fn f(lm: &sca_core::gpt2::Gpt2, prefix: &candle_core::Tensor) -> candle_core::Result<()> {
/// use sca_core::generate::GreedySteps;
/// let mut steps = GreedySteps::new(lm, prefix, 20, 50256)?;
/// loop {
///     let new = steps.step(lm)?; // (sequence, token) pairs, empty when every row is done
///     if new.is_empty() { break; }
/// }
/// let tokens = steps.into_tokens();
/// # Ok(()) }
/// ```
pub struct GreedySteps {
    cache: KvCache,
    /// Logits of the next token per alive row; `None` once decoding has ended.
    logits: Option<Tensor>,
    /// `alive[i]` = original index of the i-th row still decoding
    alive: Vec<usize>,
    out: Vec<Vec<u32>>,
    max_new: usize,
    eos: u32,
}

impl GreedySteps {
    /// Runs the LM over `prefix` (B, P, D); no token is chosen yet.
    pub fn new(lm: &Gpt2, prefix: &Tensor, max_new: usize, eos: u32) -> Result<Self> {
        let b = prefix.dim(0)?;
        let mut cache = lm.new_cache();
        let logits = if max_new == 0 || b == 0 {
            None
        } else {
            let h = lm.forward_embeds(prefix, None, &mut cache, "", &mut Trace::default())?;
            Some(lm.last_logits(&h)?)
        };
        Ok(Self {
            cache,
            logits,
            alive: (0..b).collect(),
            out: vec![Vec::new(); b],
            max_new,
            eos,
        })
    }

    /// Chooses the next token of every unfinished row and runs the LM on them; returns the
    /// (row, token) pairs chosen, empty when decoding has ended (EOS everywhere or the limit).
    pub fn step(&mut self, lm: &Gpt2) -> Result<Vec<(usize, u32)>> {
        let Some(logits) = self.logits.take() else {
            return Ok(Vec::new());
        };
        let next = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut keep = Vec::with_capacity(self.alive.len());
        let mut chosen = Vec::with_capacity(self.alive.len());
        for (row, (&seq, &tok)) in self.alive.iter().zip(&next).enumerate() {
            self.out[seq].push(tok);
            chosen.push((seq, tok));
            if tok != self.eos {
                keep.push(row);
            }
        }
        if keep.is_empty() || self.out[self.alive[0]].len() >= self.max_new {
            return Ok(chosen);
        }
        let tokens: Vec<u32> = keep.iter().map(|&r| next[r]).collect();
        if keep.len() != self.alive.len() {
            let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
            self.cache.select(&idx)?;
            self.alive = keep.iter().map(|&r| self.alive[r]).collect();
        }
        let ids = Tensor::from_vec(tokens, (self.alive.len(), 1), logits.device())?;
        let emb = lm.embed_tokens(&ids)?;
        let h = lm.forward_embeds(&emb, None, &mut self.cache, "", &mut Trace::default())?;
        self.logits = Some(lm.last_logits(&h)?);
        Ok(chosen)
    }

    /// Tokens decoded so far, per row (with the EOS when one was generated).
    pub fn tokens(&self) -> &[Vec<u32>] {
        &self.out
    }

    pub fn into_tokens(self) -> Vec<Vec<u32>> {
        self.out
    }
}

/// Finished hypotheses of one sequence (HF `BeamHypotheses`).
struct Hyps {
    beams: Vec<(f32, Vec<u32>)>,
    worst: f32,
    n: usize,
    length_penalty: f32,
}

impl Hyps {
    fn new(n: usize, length_penalty: f32) -> Self {
        Self {
            beams: Vec::new(),
            worst: 1e9,
            n,
            length_penalty,
        }
    }

    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f32, generated_len: usize) {
        let score = sum_logprobs / (generated_len as f32).powf(self.length_penalty);
        if self.beams.len() < self.n || score > self.worst {
            self.beams.push((score, tokens));
            if self.beams.len() > self.n {
                let (worst_idx, _) = self
                    .beams
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                    .expect("non-empty");
                self.beams.remove(worst_idx);
                self.worst = self.beams.iter().map(|b| b.0).fold(f32::INFINITY, f32::min);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(&self, best_sum_logprobs: f32, generated_len: usize) -> bool {
        if self.beams.len() < self.n {
            return false;
        }
        let highest = best_sum_logprobs / (generated_len as f32).powf(self.length_penalty);
        self.worst >= highest
    }

    fn best(&self) -> Option<&Vec<u32>> {
        self.beams
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|b| &b.1)
    }
}

fn beam_search(
    lm: &Gpt2,
    prefix: &Tensor,
    nb: usize,
    max_new: usize,
    length_penalty: f32,
    eos: u32,
) -> Result<Vec<Vec<u32>>> {
    let (b, p, d) = prefix.dims3()?;
    if max_new == 0 || b == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    let dev = prefix.device();
    // every sequence's prefix repeated num_beams times: row = seq*nb + beam
    let rep = prefix
        .unsqueeze(1)?
        .broadcast_as((b, nb, p, d))?
        .contiguous()?
        .reshape((b * nb, p, d))?;
    let mut cache = lm.new_cache();
    let mut trace = Trace::default();
    let h = lm.forward_embeds(&rep, None, &mut cache, "", &mut trace)?;
    let mut logits = lm.last_logits(&h)?;
    let mut beam_scores: Vec<f32> = (0..b * nb)
        .map(|r| if r % nb == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); b * nb];
    let mut hyps: Vec<Hyps> = (0..b).map(|_| Hyps::new(nb, length_penalty)).collect();
    let mut done = vec![false; b];
    for step in 0..max_new {
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let cur_generated = step + 1; // tokens once this step's token is appended
        let mut next_scores = vec![0f32; b * nb];
        let mut next_tokens = vec![eos; b * nb];
        let mut next_src = vec![0u32; b * nb];
        for s in 0..b {
            if done[s] {
                // keep finished sequences' rows running on padding, as HF does
                for k in 0..nb {
                    next_src[s * nb + k] = (s * nb) as u32;
                }
                continue;
            }
            // top 2*nb over (beam, token)
            let mut cand: Vec<(f32, usize, u32)> = Vec::with_capacity(2 * nb * 4);
            for k in 0..nb {
                let row = s * nb + k;
                let base = beam_scores[row];
                let lp = &logp[row];
                for (t, v) in top_k(lp, 2 * nb) {
                    cand.push((base + v, k, t as u32));
                }
            }
            cand.sort_by(|a, b| b.0.total_cmp(&a.0));
            cand.truncate(2 * nb);
            let mut filled = 0;
            for (rank, &(score, k, tok)) in cand.iter().enumerate() {
                if tok == eos {
                    if rank >= nb {
                        continue;
                    }
                    hyps[s].add(seqs[s * nb + k].clone(), score, cur_generated);
                } else {
                    let row = s * nb + filled;
                    next_scores[row] = score;
                    next_tokens[row] = tok;
                    next_src[row] = (s * nb + k) as u32;
                    filled += 1;
                }
                if filled == nb {
                    break;
                }
            }
            let best = cand.first().map(|c| c.0).unwrap_or(f32::NEG_INFINITY);
            done[s] = done[s] || hyps[s].is_done(best, cur_generated);
        }
        if done.iter().all(|&x| x) {
            break;
        }
        // reorder beams
        let new_seqs: Vec<Vec<u32>> = (0..b * nb)
            .map(|r| {
                let mut v = seqs[next_src[r] as usize].clone();
                v.push(next_tokens[r]);
                v
            })
            .collect();
        seqs = new_seqs;
        beam_scores = next_scores;
        if step + 1 == max_new {
            break;
        }
        cache.select(&next_src)?;
        let ids = Tensor::from_vec(next_tokens.clone(), (b * nb, 1), dev)?;
        let emb = lm.embed_tokens(&ids)?;
        let h = lm.forward_embeds(&emb, None, &mut cache, "", &mut trace)?;
        logits = lm.last_logits(&h)?;
    }
    // finalize: open beams of unfinished sequences become hypotheses
    let mut out = Vec::with_capacity(b);
    for s in 0..b {
        if !done[s] {
            for k in 0..nb {
                let row = s * nb + k;
                let len = seqs[row].len();
                hyps[s].add(seqs[row].clone(), beam_scores[row], len);
            }
        }
        let mut best = hyps[s].best().cloned().unwrap_or_default();
        if best.len() < max_new {
            best.push(eos);
        }
        out.push(best);
    }
    Ok(out)
}

/// Indices and values of the k largest entries, largest first.
fn top_k(v: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in v.iter().enumerate() {
        if best.len() < k || x > best[best.len() - 1].1 {
            let pos = best.partition_point(|&(_, y)| y >= x);
            best.insert(pos, (i, x));
            best.truncate(k);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_keeps_first_on_ties() {
        let v = [0.1, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(top_k(&v, 3), vec![(1, 0.9), (3, 0.9), (2, 0.5)]);
    }

    #[test]
    fn hyps_keep_the_best_n() {
        let mut h = Hyps::new(2, 1.0);
        h.add(vec![1], -1.0, 1);
        h.add(vec![2], -4.0, 2); // -2
        h.add(vec![3], -0.5, 1);
        assert_eq!(h.beams.len(), 2);
        assert_eq!(h.best(), Some(&vec![3]));
        assert!((h.worst - -1.0).abs() < 1e-6);
        assert!(h.is_done(-3.0, 2));
        assert!(!h.is_done(-1.0, 2));
    }
}
