//! SAM's mask losses, used when SAM parts train (`+sam_decoder`, `all`) on data with masks:
//! sigmoid focal loss (α 0.25, γ 2) and dice loss on the low-resolution mask logits, weighted
//! 20 : 1 as in the SAM paper, plus the MSE between the predicted IoU and the IoU of the
//! thresholded prediction with the ground truth.

use candle_core::{DType, Tensor, D};

use crate::Result;

/// Focal-loss weight relative to dice (SAM: 20 : 1).
pub const FOCAL_WEIGHT: f64 = 20.0;

/// Per-mask sigmoid focal loss, mean over pixels: logits and targets (N, P) -> (N).
///
/// `ce = max(x,0) − x·t + log(1 + e^{−|x|})`, `p_t = p·t + (1−p)(1−t)`,
/// `loss = α_t · ce · (1 − p_t)^γ` with `α_t = α·t + (1−α)(1−t)`.
pub fn sigmoid_focal_loss(
    logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    gamma: f64,
) -> Result<Tensor> {
    let t = targets.to_dtype(DType::F32)?;
    let p = sigmoid(logits)?;
    let ce = ((logits.relu()? - (logits * &t)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let p_t = ((&p * &t)? + ((p.affine(-1.0, 1.0))? * t.affine(-1.0, 1.0)?)?)?;
    let one_minus = p_t.affine(-1.0, 1.0)?;
    let modulating = if gamma == 2.0 {
        one_minus.sqr()?
    } else {
        one_minus.powf(gamma)?
    };
    let alpha_t = t.affine(2.0 * alpha - 1.0, 1.0 - alpha)?;
    Ok((ce * modulating)?.mul(&alpha_t)?.mean(D::Minus1)?)
}

/// Per-mask dice loss `1 − (2·Σ p·t + 1) / (Σ p + Σ t + 1)`: (N, P) -> (N).
pub fn dice_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = targets.to_dtype(DType::F32)?;
    let p = sigmoid(logits)?;
    let num = ((&p * &t)?.sum(D::Minus1)? * 2.0)? + 1.0;
    let den = ((p.sum(D::Minus1)? + t.sum(D::Minus1)?)? + 1.0)?;
    Ok((num?.div(&den))?.affine(-1.0, 1.0)?)
}

/// IoU of `logits > 0` with the 0/1 targets, per mask (no gradient): (N, P) -> (N).
pub fn hard_iou(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let pred = logits.detach().gt(0.0)?.to_dtype(DType::F32)?;
    let t = targets.to_dtype(DType::F32)?;
    let inter = (&pred * &t)?.sum(D::Minus1)?;
    let union = ((pred.sum(D::Minus1)? + t.sum(D::Minus1)?)? - &inter)?;
    // An empty prediction of an empty target counts as a perfect match.
    let safe = union.maximum(1e-6)?;
    let iou = (inter / safe)?;
    let both_empty = union.le(0.0)?;
    Ok(both_empty.where_cond(&iou.ones_like()?, &iou)?)
}

/// The mask loss of N regions with one predicted mask each: `20·focal + dice + (iou_pred −
/// IoU)²`, mean over the regions. `logits` (N, H, W), `iou_pred` (N), `targets` (N, H, W) 0/1.
pub fn mask_loss(logits: &Tensor, iou_pred: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let l = logits.reshape((n, ()))?;
    let t = targets.reshape((n, ()))?;
    let focal = sigmoid_focal_loss(&l, &t, 0.25, 2.0)?;
    let dice = dice_loss(&l, &t)?;
    let iou = hard_iou(&l, &t)?;
    let mse = (iou_pred - iou)?.sqr()?;
    Ok(((focal * FOCAL_WEIGHT)? + dice)?.add(&mse)?.mean_all()?)
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    // 1 / (1 + e^{-x}), differentiable with candle's basic ops
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn focal_and_dice_match_the_formulas() {
        let x = [2.0f64, -1.0, 0.5, -3.0];
        let t = [1.0f64, 0.0, 0.0, 1.0];
        let lx = Tensor::new(&[[2.0f32, -1.0, 0.5, -3.0]], &Device::Cpu).unwrap();
        let lt = Tensor::new(&[[1u8, 0, 0, 1]], &Device::Cpu).unwrap();
        let mut focal = 0.0;
        for i in 0..4 {
            let p = sig(x[i]);
            let ce = -(t[i] * p.ln() + (1.0 - t[i]) * (1.0 - p).ln());
            let pt = p * t[i] + (1.0 - p) * (1.0 - t[i]);
            let at = 0.25 * t[i] + 0.75 * (1.0 - t[i]);
            focal += at * ce * (1.0 - pt).powi(2);
        }
        focal /= 4.0;
        let got = sigmoid_focal_loss(&lx, &lt, 0.25, 2.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((got as f64 - focal).abs() < 1e-6, "{got} {focal}");
        let ps: Vec<f64> = x.iter().map(|&v| sig(v)).collect();
        let inter: f64 = ps.iter().zip(&t).map(|(p, t)| p * t).sum();
        let dice = 1.0 - (2.0 * inter + 1.0) / (ps.iter().sum::<f64>() + 2.0 + 1.0);
        let got = dice_loss(&lx, &lt).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((got as f64 - dice).abs() < 1e-6);
        // IoU of {0, 2} vs {0, 3}: 1/3
        let iou = hard_iou(&lx, &lt).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((iou - 1.0 / 3.0).abs() < 1e-6);
    }
}
