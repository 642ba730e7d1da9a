//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments), the
//! learning-rate schedule of HF `get_cosine_schedule_with_warmup`, and global-norm gradient
//! clipping as `torch.nn.utils.clip_grad_norm_`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::params::decays;
use crate::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// The official recipe: β (0.9, 0.999), ε 1e-8, weight decay 1e-4.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// Multiplier of the learning rate (and of the decoupled weight decay) for this parameter.
    lr_scale: f64,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named `Var`s. Weight decay skips biases and LayerNorm parameters
/// ([`decays`]).
///
/// One step with gradient `g`, learning rate `lr` (t = steps so far, after increment):
/// `p ← p·(1 − lr·wd)`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
/// `p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)`.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use trainer::optim::{AdamW, AdamWParams};
/// let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
/// let mut opt = AdamW::new(vec![("w.weight".into(), w.clone())], AdamWParams::default()).unwrap();
/// let g = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
/// opt.step(&[Some(g)], 0.1).unwrap();
/// // the first step moves every coordinate by about lr·sign(g), plus decay
/// let v = w.as_tensor().to_vec1::<f32>().unwrap();
/// assert!((v[0] - (1.0 * (1.0 - 0.1 * 1e-4) - 0.1)).abs() < 1e-6);
/// ```
pub struct AdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    step: u64,
}

impl AdamW {
    /// Zero moments for every parameter.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    decay: decays(&name),
                    lr_scale: 1.0,
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            params,
            step: 0,
        })
    }

    /// Sets each parameter's learning-rate multiplier from its name (1 by default).
    pub fn set_lr_scales(&mut self, scale: impl Fn(&str) -> f64) {
        for s in &mut self.slots {
            s.lr_scale = scale(&s.name);
        }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Parameter names in slot order (the order `step` expects gradients in).
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// The parameters in slot order.
    pub fn vars(&self) -> Vec<&Var> {
        self.slots.iter().map(|s| &s.var).collect()
    }

    /// One update. `grads[i]` belongs to slot `i`; `None` (no gradient reached the parameter)
    /// leaves it and its moments untouched, as PyTorch does for `grad is None`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Other(format!(
                "AdamW: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        let bc2_sqrt = bc2.sqrt();
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let lr = lr * slot.lr_scale;
            let step_size = lr / bc1;
            // Detached, so that the moments never hold a computation graph.
            let g = g.to_dtype(DType::F32)?.detach();
            let mut w = slot.var.as_tensor().detach();
            if slot.decay && p.weight_decay != 0.0 {
                w = (w * (1.0 - lr * p.weight_decay))?;
            }
            // torch: m.lerp_(g, 1-β1) = m + (1-β1)(g - m)
            slot.m = (&slot.m + ((&g - &slot.m)? * (1.0 - p.beta1))?)?;
            slot.v = ((&slot.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((slot.v.sqrt()? / bc2_sqrt)? + p.eps)?;
            let w = (w - ((&slot.m / denom)? * step_size)?)?;
            slot.var.set(&w)?;
        }
        Ok(())
    }

    /// Moments by name (`m.<key>`, `v.<key>`) for a checkpoint, and the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        (out, self.step)
    }

    /// Restores [`AdamW::state`]; every parameter must have both moments with its shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            for (which, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{which}.{}", s.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| Error::Other(format!("optimizer state has no `{key}`")))?;
                if t.shape() != s.var.shape() {
                    return Err(Error::Other(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                *dst = t.to_device(s.var.device())?.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based; the first update uses step 0):
/// linear warm-up `lr·step/warmup`, then `cosine` half-cosine to 0 at `max_steps`
/// (HF `get_cosine_schedule_with_warmup`) or `constant`.
///
/// ```
/// use trainer::optim::lr_at;
/// assert_eq!(lr_at(1e-4, 0, 200, 1000, "cosine"), 0.0);
/// assert!((lr_at(1e-4, 100, 200, 1000, "cosine") - 5e-5).abs() < 1e-15);
/// assert!((lr_at(1e-4, 200, 200, 1000, "cosine") - 1e-4).abs() < 1e-15);
/// assert!((lr_at(1e-4, 600, 200, 1000, "cosine") - 5e-5).abs() < 1e-12);
/// assert!(lr_at(1e-4, 1000, 200, 1000, "cosine").abs() < 1e-15);
/// ```
pub fn lr_at(lr: f64, step: u64, warmup: u64, max_steps: u64, schedule: &str) -> f64 {
    if step < warmup {
        return lr * step as f64 / warmup.max(1) as f64;
    }
    if schedule == "constant" {
        return lr;
    }
    let progress = (step - warmup) as f64 / (max_steps.saturating_sub(warmup)).max(1) as f64;
    lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clip_scales_to_max_norm() {
        let mut g = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-12);
        let a = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = g[2].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-5);
        let mut small = vec![Some(Tensor::new(&[0.5f32], &Device::Cpu).unwrap())];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), [0.5]);
    }

    #[test]
    fn constant_schedule_after_warmup() {
        assert_eq!(lr_at(2e-4, 5, 10, 100, "constant"), 1e-4);
        assert_eq!(lr_at(2e-4, 50, 10, 100, "constant"), 2e-4);
    }
}
