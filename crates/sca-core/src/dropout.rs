//! Training-time dropout for GPT-2 (`embd_pdrop`, `attn_pdrop`, `resid_pdrop`), with masks
//! drawn from a counter-based hash instead of a stateful generator.
//!
//! Every element's keep/drop decision is a function of `(seed, sequence key, site,
//! coordinates)`: a sequence gets the same mask whatever else shares its batch and however
//! long the batch is padded. That makes training reproducible bit for bit across resumes and
//! makes a batch split over data-parallel workers equal to the unsplit batch.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Where in GPT-2 a dropout applies (HF `GPT2Model`'s `drop`, `attn_dropout`,
/// `resid_dropout` and the MLP's `dropout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After `wte + wpe` (`embd_pdrop`).
    Embeddings,
    /// On the attention probabilities of a layer (`attn_pdrop`).
    Attention(usize),
    /// On the attention block's output projection (`resid_pdrop`).
    AttentionOutput(usize),
    /// On the MLP output (`resid_pdrop`).
    MlpOutput(usize),
}

impl Site {
    fn id(self) -> u64 {
        match self {
            Site::Embeddings => 1,
            Site::Attention(l) => 2 + 3 * l as u64,
            Site::AttentionOutput(l) => 3 + 3 * l as u64,
            Site::MlpOutput(l) => 4 + 3 * l as u64,
        }
    }
}

/// Dropout rates plus one key per sequence of the batch.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sca_core::dropout::{Dropout, Site};
/// let d = Dropout { seed: 1, embd: 0.5, attn: 0.1, resid: 0.1, rows: vec![7, 8] };
/// let x = Tensor::ones((2, 3, 4), candle_core::DType::F32, &Device::Cpu)?;
/// let y = d.apply(&x, Site::Embeddings)?.to_vec3::<f32>()?;
/// // kept values are scaled by 1/(1-p)
/// assert!(y.iter().flatten().flatten().all(|&v| v == 0.0 || v == 2.0));
/// // the same row key gives the same mask in a different batch
/// let d1 = Dropout { rows: vec![8], ..d.clone() };
/// let y1 = d1.apply(&Tensor::ones((1, 3, 4), candle_core::DType::F32, &Device::Cpu)?, Site::Embeddings)?;
/// assert_eq!(y1.to_vec3::<f32>()?[0], y[1]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Dropout {
    pub seed: u64,
    pub embd: f64,
    pub attn: f64,
    pub resid: f64,
    /// One key per sequence (batch row).
    pub rows: Vec<u64>,
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Dropout {
    /// The rate at `site`.
    pub fn rate(&self, site: Site) -> f64 {
        match site {
            Site::Embeddings => self.embd,
            Site::Attention(_) => self.attn,
            Site::AttentionOutput(_) | Site::MlpOutput(_) => self.resid,
        }
    }

    /// `x · mask / (1 − p)` with a 0/1 mask; `x` is (B, ...) with B = `rows.len()`, rank 3
    /// (B, T, D) or 4 (B, H, T, Tk). The identity when p = 0.
    pub fn apply(&self, x: &Tensor, site: Site) -> Result<Tensor> {
        let p = self.rate(site);
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let mask = self.mask(x.dims(), site, p, x.device())?;
        x.broadcast_mul(&mask.to_dtype(x.dtype())?)
    }

    /// The scaled keep mask (f32) for a tensor of `dims`.
    pub fn mask(&self, dims: &[usize], site: Site, p: f64, device: &Device) -> Result<Tensor> {
        let b = dims[0];
        if b != self.rows.len() {
            candle_core::bail!(
                "dropout has {} row keys for a batch of {b}",
                self.rows.len()
            )
        }
        // (outer, inner): the last axis and the rest, each coordinate hashed separately.
        let (mid, inner): (Vec<usize>, usize) = match dims.len() {
            3 => (vec![dims[1]], dims[2]),
            4 => (vec![dims[1], dims[2]], dims[3]),
            n => candle_core::bail!("dropout on a rank-{n} tensor"),
        };
        let outer: usize = mid.iter().product();
        let per_row = outer * inner;
        // keep iff hash >= threshold, threshold = p · 2^64
        let threshold = (p * 18_446_744_073_709_551_616.0).min(u64::MAX as f64) as u64;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut data = vec![0f32; b * per_row];
        data.par_chunks_mut(per_row.max(1))
            .enumerate()
            .for_each(|(r, out)| {
                let base = mix64(
                    self.seed
                        ^ mix64(
                            self.rows[r] ^ mix64(site.id().wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                        ),
                );
                for o in 0..outer {
                    // coordinates of the middle axes packed into the high bits
                    let coord = if mid.len() == 2 {
                        ((o / mid[1]) as u64) << 40 | ((o % mid[1]) as u64) << 20
                    } else {
                        (o as u64) << 20
                    };
                    let row_base = mix64(base ^ coord.wrapping_mul(0xd6e8_feb8_6659_fd93));
                    for (j, v) in out[o * inner..(o + 1) * inner].iter_mut().enumerate() {
                        if mix64(row_base ^ j as u64) >= threshold {
                            *v = scale;
                        }
                    }
                }
            });
        Tensor::from_vec(data, dims, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_padding_invariance() {
        let d = Dropout {
            seed: 3,
            embd: 0.1,
            attn: 0.25,
            resid: 0.1,
            rows: vec![11, 12, 13, 14],
        };
        let m = d
            .mask(&[4, 2, 50, 60], Site::Attention(1), 0.25, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        // a shorter (less padded) batch sees the same leading block of the mask
        let small = d
            .mask(&[4, 2, 30, 40], Site::Attention(1), 0.25, &Device::Cpu)
            .unwrap();
        let big = d
            .mask(&[4, 2, 50, 60], Site::Attention(1), 0.25, &Device::Cpu)
            .unwrap()
            .narrow(2, 0, 30)
            .unwrap()
            .narrow(3, 0, 40)
            .unwrap();
        let diff = (small - big).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // different sites and layers differ
        let a = d
            .mask(&[4, 5, 6], Site::MlpOutput(0), 0.5, &Device::Cpu)
            .unwrap();
        let b = d
            .mask(&[4, 5, 6], Site::MlpOutput(1), 0.5, &Device::Cpu)
            .unwrap();
        let same = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(same.to_scalar::<f32>().unwrap() > 0.0);
    }
}
