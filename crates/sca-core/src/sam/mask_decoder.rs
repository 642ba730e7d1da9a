//! SAM mask decoder (`mask_decoder.*` minus the SCA mixer): output tokens, the 2-layer two-way
//! transformer, upscaling, hypernetwork MLPs and the IoU head.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::two_way_transformer::TwoWayTransformer;
use super::{layer_norm, ConvTranspose2x2, FeedForward};
use crate::config::MaskCaptionDecoderConfig;
use crate::ops;
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

        // (1|M, C, g, g) -> (M, g*g, C) channels-last tokens
        let src = image_embeddings.broadcast_add(dense)?;
        let src = to_tokens(&src)?.broadcast_as((m, g * g, c))?.contiguous()?;
        let pos = to_tokens(image_pe)?;
        let (queries_out, keys_out) =
            self.transformer
                .forward(&tokens, &src, &pos, "mask_decoder_transformer", trace)?;
        trace.record("mask_decoder_transformer_queries_out", &queries_out);
        trace.record("mask_decoder_transformer_keys_out", &keys_out);

        let iou_token_out = queries_out.narrow(1, 0, 1)?.squeeze(1)?; // (M, C)
        let up = self.upscale(&keys_out, g)?; // (M, C/8, 4g, 4g)
        trace.record("mask_decoder_upscaled_embedding", &up);
        let hyper = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&queries_out.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // (M, 4, C/8)
        let (_, c8, h4, w4) = up.dims4()?;
        let masks = hyper.matmul(&up.reshape((m, c8, h4 * w4))?)?.reshape((
            m,
            self.num_mask_tokens,
            h4,
            w4,
        ))?;
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
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, h * w, c))
}
