//! SAM mask decoder (`mask_decoder.*` minus the SCA mixer): output tokens, the 2-layer two-way
//! transformer, upscaling, hypernetwork MLPs and the IoU head.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use rayon::prelude::*;

use super::two_way_transformer::TwoWayTransformer;
use super::{layer_norm, ConvTranspose2x2, FeedForward};
use crate::config::MaskCaptionDecoderConfig;
use crate::ops::gemm::{self, Mat};
use crate::ops::{self, kernels, F32Slice};
use crate::trace::Trace;

/// What the SAM decoder gives per prompt (M prompts).
pub struct DecoderOutput {
    /// Low-resolution mask logits (M, K, 4g, 4g); K = 3 with multimask, else 1.
    pub masks: Tensor,
    /// Predicted IoU (M, K).
    pub iou: Tensor,
    /// All output tokens of the two-way transformer (M, 5+T, C): the mixer's queries.
    pub queries_out: Tensor,
    /// Updated image tokens (M, g*g, C): the mixer's keys.
    pub keys_out: Tensor,
}

pub struct MaskDecoder {
    iou_token: Tensor,   // (1, C)
    mask_tokens: Tensor, // (4, C)
    transformer: TwoWayTransformer,
    upscale_conv1: ConvTranspose2x2,
    upscale_layer_norm: LayerNorm,
    upscale_conv2: ConvTranspose2x2,
    hypernetworks: Vec<FeedForward>,
    iou_head: FeedForward,
    num_mask_tokens: usize,
}

impl MaskDecoder {
    pub fn new(cfg: &MaskCaptionDecoderConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        let num_mask_tokens = cfg.num_multimask_outputs + 1;
        let hypernetworks = (0..num_mask_tokens)
            .map(|i| FeedForward::new(c, c, c / 8, 3, vb.pp("output_hypernetworks_mlps").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            iou_token: vb.pp("iou_token").get((1, c), "weight")?,
            mask_tokens: vb.pp("mask_tokens").get((num_mask_tokens, c), "weight")?,
            transformer: TwoWayTransformer::new(cfg, cfg.num_hidden_layers, vb.pp("transformer"))?,
            upscale_conv1: ConvTranspose2x2::new(c, c / 4, vb.pp("upscale_conv1"))?,
            upscale_layer_norm: layer_norm(c / 4, cfg.layer_norm_eps, vb.pp("upscale_layer_norm"))?,
            upscale_conv2: ConvTranspose2x2::new(c / 4, c / 8, vb.pp("upscale_conv2"))?,
            hypernetworks,
            iou_head: FeedForward::new(
                c,
                cfg.iou_head_hidden_dim,
                num_mask_tokens,
                cfg.iou_head_depth,
                vb.pp("iou_prediction_head"),
            )?,
            num_mask_tokens,
        })
    }

    /// image_embeddings (1,C,g,g), image_pe (1,C,g,g), sparse (M,T,C), dense (1|M,C,g,g).
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask: bool,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let (m, _t, c) = sparse.dims3()?;
        let (_, _, g, _) = image_embeddings.dims4()?;
        let output_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)?
            .unsqueeze(0)?
            .broadcast_as((m, 1 + self.num_mask_tokens, c))?;
        let tokens = Tensor::cat(&[&output_tokens, sparse], 1)?.contiguous()?; // (M, 5+T, C)
        trace.record("mask_decoder_transformer_queries_in", &tokens);

        // (1|M, C, g, g) -> (1|M, g*g, C) channels-last tokens; the transformer broadcasts one
        // image over the M prompts
        let src = to_tokens(&image_embeddings.broadcast_add(dense)?)?;
        let pos = to_tokens(image_pe)?;
        let (queries_out, keys_out) =
            self.transformer
                .forward(&tokens, &src, &pos, "mask_decoder_transformer", trace)?;
        trace.record("mask_decoder_transformer_queries_out", &queries_out);
        trace.record("mask_decoder_transformer_keys_out", &keys_out);

        let iou_token_out = queries_out.narrow(1, 0, 1)?.squeeze(1)?; // (M, C)
        let hyper = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&queries_out.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // (M, 4, C/8)
        let (conv1, conv2) = (&self.upscale_conv1, &self.upscale_conv2);
        let upscale = [
            conv1.weight_taps(),
            conv2.weight_taps(),
            conv1.bias(),
            conv2.bias(),
        ];
        let masks = if ops::fast_path(&[&[&keys_out, &hyper], &upscale[..]].concat()) {
            let up = self.upscale_fast(&keys_out, g)?; // (M, 4g, 4g, C/8)
            if trace.is_enabled() {
                let up = up.permute((0, 3, 1, 2))?.contiguous()?;
                trace.record("mask_decoder_upscaled_embedding", &up);
            }
            self.masks_fast(&hyper, &up)?
        } else {
            let up = self.upscale(&keys_out, g)?; // (M, C/8, 4g, 4g)
            trace.record("mask_decoder_upscaled_embedding", &up);
            let (_, c8, h4, w4) = up.dims4()?;
            let masks = hyper.matmul(&up.reshape((m, c8, h4 * w4))?)?;
            masks.reshape((m, self.num_mask_tokens, h4, w4))?
        };
        let iou = self.iou_head.forward(&iou_token_out)?; // (M, 4)
        trace.record("iou_predictions_all", &iou);
        let (masks, iou) = if multimask {
            let k = self.num_mask_tokens - 1;
            (masks.narrow(1, 1, k)?, iou.narrow(1, 1, k)?)
        } else {
            (masks.narrow(1, 0, 1)?, iou.narrow(1, 0, 1)?)
        };
        Ok(DecoderOutput {
            masks: masks.contiguous()?,
            iou: iou.contiguous()?,
            queries_out,
            keys_out,
        })
    }

    /// keys (M, g*g, C) -> GELU(convT2(GELU(LN2d(convT1(x))))) as (M, C/8, 4g, 4g)
    fn upscale(&self, keys: &Tensor, g: usize) -> Result<Tensor> {
        let (m, _, c) = keys.dims3()?;
        let x = keys.reshape((m, g, g, c))?;
        let x = self.upscale_conv1.forward(&x)?;
        let x = ops::gelu_erf(&ops::layer_norm(&x, &self.upscale_layer_norm)?)?;
        let x = ops::gelu_erf(&self.upscale_conv2.forward(&x)?)?; // (M, 4g, 4g, C/8)
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// (B, C, g, g) -> (B, g*g, C), row-major tokens.
pub(crate) fn to_tokens(x: &Tensor) -> Result<Tensor> {
    ops::channels_last(x)
}

impl MaskDecoder {
    /// Fast path of `upscale`, channels-last: keys (M, g*g, C) -> (M, 4g, 4g, C/8).
    fn upscale_fast(&self, keys: &Tensor, g: usize) -> Result<Tensor> {
        let m = keys.dim(0)?;
        let keys = keys.contiguous()?;
        let (conv1, conv2) = (&self.upscale_conv1, &self.upscale_conv2);
        let ln = &self.upscale_layer_norm;
        let Some(ln_b) = ln.bias() else {
            candle_core::bail!("LayerNorm without bias")
        };
        let (ln_w, ln_b) = (F32Slice::new(ln.weight())?, F32Slice::new(ln_b)?);
        let eps = ln.eps() as f32;
        let y = conv1.taps(&F32Slice::new(&keys)?)?;
        let x = pixel_shuffle(&y, (m, g, g), conv1, |row| {
            kernels::layer_norm_inplace(row, &ln_w, &ln_b, eps);
            kernels::gelu_inplace(row);
        })?;
        let y = conv2.taps(&x)?;
        let x = pixel_shuffle(&y, (m, 2 * g, 2 * g), conv2, kernels::gelu_inplace)?;
        ops::tensor(x, (m, 4 * g, 4 * g, conv2.out_channels()))
    }

    /// hyper (M, K, C/8) against the channels-last upscaled map (M, H, W, C/8) -> (M, K, H, W).
    fn masks_fast(&self, hyper: &Tensor, up: &Tensor) -> Result<Tensor> {
        let (m, h, w, c8) = up.dims4()?;
        let k = hyper.dim(1)?;
        let hyper = hyper.contiguous()?;
        let (hs, us) = (F32Slice::new(&hyper)?, F32Slice::new(up)?);
        let mut out = vec![0f32; m * k * h * w];
        for (i, out) in out.chunks_exact_mut(k * h * w).enumerate() {
            let a = Mat::dense(&hs[i * k * c8..(i + 1) * k * c8], k, c8);
            let b = Mat::dense(&us[i * h * w * c8..(i + 1) * h * w * c8], h * w, c8).t();
            gemm::par_gemm(1.0, a, b, 0.0, out, h * w);
        }
        ops::tensor(out, (m, k, h, w))
    }
}

/// Spreads a 2x2 transposed convolution's taps (M*h*w, 4*Cout) (columns (dy, dx, cout)) to
/// the (M, 2h, 2w, Cout) map, adds the bias and applies `f` to each output row.
fn pixel_shuffle(
    y: &[f32],
    (m, h, w): (usize, usize, usize),
    conv: &ConvTranspose2x2,
    f: impl Fn(&mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    let co = conv.out_channels();
    let bias = F32Slice::new(conv.bias())?;
    let mut out = vec![0f32; m * 4 * h * w * co];
    out.par_chunks_mut(2 * w * co)
        .enumerate()
        .for_each(|(r, row)| {
            let (mi, oy) = (r / (2 * h), r % (2 * h));
            let (i, dy) = (oy / 2, oy % 2);
            for (ox, dst) in row.chunks_exact_mut(co).enumerate() {
                let (j, dx) = (ox / 2, ox % 2);
                let src = ((mi * h + i) * w + j) * 4 * co + (dy * 2 + dx) * co;
                for ((d, &s), &b) in dst.iter_mut().zip(&y[src..src + co]).zip(bias.iter()) {
                    *d = s + b;
                }
            }
            f(row);
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_vb, tracked};
    use candle_core::Device;

    #[test]
    fn fast_path_matches_candle_ops() {
        let cfg: MaskCaptionDecoderConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "iou_head_hidden_dim": 32, "additional_num_hidden_layers": 3, "num_caption_tokens": 2,
        }))
        .unwrap();
        let dec = MaskDecoder::new(&cfg, random_vb()).unwrap();
        let dev = &Device::Cpu;
        let (m, g, c) = (2, 6, 32);
        let emb = Tensor::randn(0f32, 1.0, (1, c, g, g), dev).unwrap();
        let pe = Tensor::randn(0f32, 1.0, (1, c, g, g), dev).unwrap();
        let sparse = Tensor::randn(0f32, 1.0, (m, 3, c), dev).unwrap();
        let dense = Tensor::randn(0f32, 1.0, (1, c, g, g), dev).unwrap();
        for multimask in [true, false] {
            let mut tr = Trace::enabled();
            let fast = dec
                .forward(&emb, &pe, &sparse, &dense, multimask, &mut tr)
                .unwrap();
            let (s, d) = (tracked(&sparse), &dense);
            let slow = dec
                .forward(&emb, &pe, &s, d, multimask, &mut Trace::default())
                .unwrap();
            assert_close(&fast.masks, &slow.masks.detach(), 1e-4, "masks");
            assert_close(&fast.iou, &slow.iou.detach(), 1e-4, "iou");
            assert_close(&fast.keys_out, &slow.keys_out.detach(), 1e-5, "keys");
            let up = tr.get("mask_decoder_upscaled_embedding").unwrap();
            assert_eq!(up.dims(), [m, c / 8, 4 * g, 4 * g]);
        }
    }
}
