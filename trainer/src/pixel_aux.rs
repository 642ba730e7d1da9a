//! A self-supervised auxiliary loss for SAM trained from scratch (`optim.pixel_aux_weight`).
//!
//! SAM's mask loss rewards a colour-blind "objectness" embedding, and the caption loss alone
//! reaches the image encoder too weakly to put colour back (`models/sca-shapes/README.md`).
//! Linear heads, trained with the model and then dropped, read pixels back:
//! - each patch's mean pixel (the normalised RGB the encoder saw, averaged over the patch)
//!   from the image embedding (B, C, g, g), and from SAM's per-prompt image tokens after its
//!   two-way transformer (M, g·g, C): the mixer's keys;
//! - each region's mean pixel (averaged over its ground-truth mask) from the LM prefix's
//!   caption part (the mean of the projected caption queries): what GPT-2 reads.
//!
//! The loss is the sum of the three mean squared errors (patch terms averaged over images).
//! It uses no caption labels, and the model's architecture and checkpoint keys do not change:
//! the heads live only in the trainer (their values are kept in the checkpoint's
//! `optimizer.safetensors` as `param.pixel_aux.*`, so a resumed run continues them).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::rng::hash_keys;
use crate::{Error, Result};

/// Key prefix of the heads' values in a checkpoint's optimizer state.
pub const STATE_PREFIX: &str = "param.";

/// The two training-only heads.
#[derive(Debug, Clone)]
pub struct PixelAux {
    /// Weight of the loss in the step's total.
    pub weight: f64,
    /// (name, var): `pixel_aux.{embedding,keys,region}.{weight,bias}`, weights (3, C) (the
    /// region head (3, D) of the LM width), biases (3).
    vars: Vec<(String, Var)>,
}

impl PixelAux {
    /// Heads for SAM's `channels`-wide features and the LM's `lm_width`, initialised like
    /// PyTorch's `nn.Linear` (uniform ±1/sqrt(in) weights, zero biases) from `seed`.
    ///
    /// ```
    /// use candle_core::Device;
    /// let aux = trainer::pixel_aux::PixelAux::new(1.0, 64, 128, 7, &Device::Cpu).unwrap();
    /// assert_eq!(aux.vars().len(), 6);
    /// assert_eq!(aux.vars()[0].1.dims(), &[3, 64]);
    /// assert_eq!(aux.vars()[4].1.dims(), &[3, 128]);
    /// ```
    pub fn new(
        weight: f64,
        channels: usize,
        lm_width: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut vars = Vec::new();
        for (h, (head, channels)) in [
            ("embedding", channels),
            ("keys", channels),
            ("region", lm_width),
        ]
        .into_iter()
        .enumerate()
        {
            let bound = 1.0 / (channels as f64).sqrt();
            let mut state = hash_keys(seed, &[0xa0c5, h as u64]);
            let w: Vec<f32> = (0..3 * channels)
                .map(|_| {
                    state = hash_keys(state, &[1]);
                    let u = (state >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                    ((2.0 * u - 1.0) * bound) as f32
                })
                .collect();
            let w = Tensor::from_vec(w, (3, channels), device)?;
            vars.push((format!("pixel_aux.{head}.weight"), Var::from_tensor(&w)?));
            let b = Tensor::zeros(3, DType::F32, device)?;
            vars.push((format!("pixel_aux.{head}.bias"), Var::from_tensor(&b)?));
        }
        Ok(Self { weight, vars })
    }

    /// The heads' parameters (for the optimizer).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    /// The heads' values, keyed `param.<name>` (stored with the optimizer state).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (format!("{STATE_PREFIX}{n}"), v.as_tensor().clone()))
            .collect()
    }

    /// Restores [`PixelAux::state`] from a checkpoint's optimizer state.
    pub fn load_state(&self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        for (n, v) in &self.vars {
            let key = format!("{STATE_PREFIX}{n}");
            let t = state.get(&key).ok_or_else(|| {
                Error::Other(format!(
                    "optimizer state has no `{key}` (the checkpoint was trained without \
                     optim.pixel_aux_weight)"
                ))
            })?;
            if t.shape() != v.shape() {
                return Err(Error::Other(format!(
                    "optimizer state `{key}` has shape {:?}, the head {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t.to_device(v.device())?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn head(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        // x (.., C) -> (.., 3)
        let (w, b) = (
            self.vars[2 * i].1.as_tensor(),
            self.vars[2 * i + 1].1.as_tensor(),
        );
        Ok(x.broadcast_matmul(&w.t()?)?.broadcast_add(b)?)
    }

    /// The unweighted region term: each region's mean pixel under its ground-truth mask, read
    /// from the mean of its prefix's caption tokens. `pixel_values` (I, 3, S, S) per image,
    /// `image_of` the image of each masked region, `masks` (R, M, M) 0/1 (S a multiple of M),
    /// `caption_prefix` (R, Q, D) those regions' caption part of the prefix.
    pub fn region_loss(
        &self,
        pixel_values: &Tensor,
        image_of: &[u32],
        masks: &Tensor,
        caption_prefix: &Tensor,
    ) -> Result<Tensor> {
        let (r, m, _) = masks.dims3()?;
        let s = pixel_values.dim(D::Minus1)?;
        if m == 0 || s % m != 0 || image_of.len() != r || caption_prefix.dim(0)? != r {
            return Err(Error::Other(format!(
                "pixel auxiliary: {} regions, masks {:?}, prefix {:?}, {s}x{s} images",
                image_of.len(),
                masks.dims(),
                caption_prefix.dims()
            )));
        }
        let low = pixel_values.detach().avg_pool2d(s / m)?; // (I, 3, M, M)
        let idx = Tensor::from_slice(image_of, r, pixel_values.device())?;
        let low = low.index_select(&idx, 0)?; // (R, 3, M, M)
        let w = masks.detach().unsqueeze(1)?; // (R, 1, M, M)
        let area = w.sum((2, 3))?.clamp(1.0, f64::MAX)?; // (R, 1)
        let target = low.broadcast_mul(&w)?.sum((2, 3))?.broadcast_div(&area)?; // (R, 3)
        let pred = self.head(2, &caption_prefix.mean(1)?)?; // (R, 3)
        Ok((pred - target)?.sqr()?.mean_all()?)
    }

    /// The unweighted patch terms of one image: `pixel_values` (1, 3, S, S), its embedding
    /// (1, C, g, g) and the mixer's keys of its prompts (M, g·g, C), in any number of groups.
    pub fn loss(
        &self,
        pixel_values: &Tensor,
        embedding: &Tensor,
        keys: &[Tensor],
    ) -> Result<Tensor> {
        let (_, c, g, g2) = embedding.dims4()?;
        let s = pixel_values.dim(D::Minus1)?;
        if g != g2 || g == 0 || s % g != 0 {
            return Err(Error::Other(format!(
                "pixel auxiliary: embedding {:?} does not tile the {s}x{s} image",
                embedding.dims()
            )));
        }
        // (1, g·g, 3): each patch's mean pixel, a constant target.
        let target = pixel_values
            .detach()
            .avg_pool2d(s / g)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let tokens = embedding.flatten_from(2)?.transpose(1, 2)?; // (1, g·g, C)
        let mse = |pred: Tensor| -> Result<Tensor> {
            Ok(pred.broadcast_sub(&target)?.sqr()?.mean_all()?)
        };
        let mut total = mse(self.head(0, &tokens)?)?;
        if !keys.is_empty() {
            let k = Tensor::cat(keys, 0)?;
            if k.dims()[1..] != [g * g, c] {
                return Err(Error::Other(format!(
                    "pixel auxiliary: keys {:?}, expected (M, {}, {c})",
                    k.dims(),
                    g * g
                )));
            }
            total = (total + mse(self.head(1, &k)?)?)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_heads_give_zero_and_state_round_trips() -> Result<()> {
        let d = Device::Cpu;
        let aux = PixelAux::new(1.0, 3, 3, 1, &d)?;
        // Identity heads on features that are the patch means themselves.
        let eye = Tensor::eye(3, DType::F32, &d)?;
        for i in 0..2 {
            aux.vars[2 * i].1.set(&eye)?;
        }
        let px = Tensor::arange(0f32, 48.0, &d)?.reshape((1, 3, 4, 4))?;
        let emb = px.avg_pool2d(2)?; // (1, 3, 2, 2)
        let keys = emb.flatten_from(2)?.transpose(1, 2)?.repeat((2, 1, 1))?;
        let l = aux
            .loss(&px, &emb, std::slice::from_ref(&keys))?
            .to_scalar::<f32>()?;
        assert_eq!(l, 0.0);
        // One wrong channel: (0.5)^2 over a third of the outputs, for each of the two heads.
        let off = keys.broadcast_add(&Tensor::new(&[0.5f32, 0.0, 0.0], &d)?)?;
        let l = aux.loss(&px, &emb, &[off])?.to_scalar::<f32>()?;
        assert!((l - 0.25 / 3.0).abs() < 1e-6, "{l}");
        let other = PixelAux::new(1.0, 3, 3, 2, &d)?;
        other.load_state(&aux.state())?;
        assert_eq!(
            other.vars[0].1.as_tensor().to_vec2::<f32>()?,
            eye.to_vec2::<f32>()?
        );
        // Region term: identity head on a prefix whose caption tokens average to the region's
        // mean pixel. Image 1's region covers its top-left 2x2 corner of a 4x4 image.
        aux.vars[4].1.set(&eye)?;
        let masks = Tensor::new(&[[[1f32, 0.0], [0.0, 0.0]]], &d)?; // (1, 2, 2): M = 2
        let px2 = (px.clone() * 2.0)?;
        let both = Tensor::cat(&[&px, &px2], 0)?; // (2, 3, 4, 4)
        let corner = px2.narrow(2, 0, 2)?.narrow(3, 0, 2)?.mean((2, 3))?; // (1, 3)
        let prefix = Tensor::stack(&[(&corner - 1.0)?, (&corner + 1.0)?], 1)?; // mean = corner
        let l = aux
            .region_loss(&both, &[1], &masks, &prefix)?
            .to_scalar::<f32>()?;
        assert!(l.abs() < 1e-9, "{l}");
        let l = aux
            .region_loss(&both, &[0], &masks, &prefix)?
            .to_scalar::<f32>()?;
        assert!(l > 1.0, "the other image's corner must not match: {l}");
        let err = PixelAux::new(1.0, 4, 3, 2, &d)?
            .load_state(&aux.state())
            .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
        Ok(())
    }
}
