//! SAM's two-way transformer (`SamTwoWayTransformer`): used by the mask decoder
//! (`mask_decoder.transformer`, 2 layers) and by the SCA caption mixer
//! (`mask_decoder.additional_transformer`, 12 layers).

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::{layer_norm, linear};
use crate::config::MaskCaptionDecoderConfig;
use crate::ops;
use crate::trace::Trace;

/// `SamAttention`: projections to `dim / downsample_rate`, heads, scaled softmax attention.
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, rate: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim / rate;
        Ok(Self {
            q_proj: linear(dim, inner, vb.pp("q_proj"))?,
            k_proj: linear(dim, inner, vb.pp("k_proj"))?,
            v_proj: linear(dim, inner, vb.pp("v_proj"))?,
            out_proj: linear(inner, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    /// q (M,Tq,C), k (M,Tk,C), v (M,Tk,C) -> (M,Tq,C)
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let mut t = std::time::Instant::now();
        let q = ops::linear(q, &self.q_proj)?;
        let k = ops::linear(k, &self.k_proj)?;
        let v = ops::linear(v, &self.v_proj)?;
        crate::sam::image_encoder::lap(&mut t, 5);
        let hd = q.dim(2)? / self.num_heads;
        let out = ops::attention(&q, &k, &v, self.num_heads, 1.0 / (hd as f64).sqrt())?;
        crate::sam::image_encoder::lap(&mut t, 6);
        let r = ops::linear(&out, &self.out_proj);
        crate::sam::image_encoder::lap(&mut t, 7);
        r
    }
}

/// One `SamTwoWayAttentionBlock`.
pub struct TwoWayBlock {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    layer_norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    layer_norm3: LayerNorm,
    layer_norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    pub fn new(
        cfg: &MaskCaptionDecoderConfig,
        skip_first_layer_pe: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (c, nh, r, eps) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.attention_downsample_rate,
            cfg.layer_norm_eps,
        );
        Ok(Self {
            self_attn: Attention::new(c, nh, 1, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(c, eps, vb.pp("layer_norm1"))?,
            cross_attn_token_to_image: Attention::new(
                c,
                nh,
                r,
                vb.pp("cross_attn_token_to_image"),
            )?,
            layer_norm2: layer_norm(c, eps, vb.pp("layer_norm2"))?,
            lin1: linear(c, cfg.mlp_dim, vb.pp("mlp").pp("lin1"))?,
            lin2: linear(cfg.mlp_dim, c, vb.pp("mlp").pp("lin2"))?,
            layer_norm3: layer_norm(c, eps, vb.pp("layer_norm3"))?,
            layer_norm4: layer_norm(c, eps, vb.pp("layer_norm4"))?,
            cross_attn_image_to_token: Attention::new(
                c,
                nh,
                r,
                vb.pp("cross_attn_image_to_token"),
            )?,
            skip_first_layer_pe,
        })
    }

    /// queries (M,T,C), keys (M,HW,C), query_pe (M,T,C), key_pe (M|1,HW,C) -> (queries, keys)
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            // inherited SAM quirk: no residual in the first block's self-attention
            let attn = self.self_attn.forward(queries, queries, queries)?;
            ops::layer_norm(&attn, &self.layer_norm1)?
        } else {
            let q = (queries + query_pe)?;
            let attn = self.self_attn.forward(&q, &q, queries)?;
            ops::add_layer_norm(queries, &attn, &self.layer_norm1)?
        };

        let mut t = std::time::Instant::now();
        let q = (&queries + query_pe)?;
        let k = keys.broadcast_add(key_pe)?;
        crate::sam::image_encoder::lap(&mut t, 0);
        let attn = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        crate::sam::image_encoder::lap(&mut t, 1);
        let queries = ops::add_layer_norm(&queries, &attn, &self.layer_norm2)?;

        let mlp = ops::linear(&ops::linear(&queries, &self.lin1)?.relu()?, &self.lin2)?;
        let queries = ops::add_layer_norm(&queries, &mlp, &self.layer_norm3)?;
        crate::sam::image_encoder::lap(&mut t, 2);

        let q = (&queries + query_pe)?;
        let attn = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        crate::sam::image_encoder::lap(&mut t, 3);
        let keys = ops::add_layer_norm(keys, &attn, &self.layer_norm4)?;
        crate::sam::image_encoder::lap(&mut t, 4);
        Ok((queries, keys))
    }
}

/// `SamTwoWayTransformer`.
pub struct TwoWayTransformer {
    layers: Vec<TwoWayBlock>,
    final_attn_token_to_image: Attention,
    layer_norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    pub fn new(cfg: &MaskCaptionDecoderConfig, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| TwoWayBlock::new(cfg, i == 0, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let c = cfg.hidden_size;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                c,
                cfg.num_attention_heads,
                cfg.attention_downsample_rate,
                vb.pp("final_attn_token_to_image"),
            )?,
            // PyTorch's default eps here, unlike the blocks (HF port quirk)
            layer_norm_final_attn: layer_norm(c, 1e-5, vb.pp("layer_norm_final_attn"))?,
        })
    }

    /// point_embeddings (M,T,C) are both the initial queries and their PE throughout;
    /// image (M,HW,C), image_pe (M|1,HW,C). Returns (queries (M,T,C), keys (M,HW,C)).
    /// Per-layer outputs are traced as `{name}_layer{i}_queries` / `_keys`.
    pub fn forward(
        &self,
        point_embeddings: &Tensor,
        image: &Tensor,
        image_pe: &Tensor,
        name: &str,
        trace: &mut Trace,
    ) -> Result<(Tensor, Tensor)> {
        let mut queries = point_embeddings.clone();
        let mut keys = image.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            (queries, keys) = layer.forward(&queries, &keys, point_embeddings, image_pe)?;
            if trace.is_enabled() {
                trace.record(format!("{name}_layer{i}_queries"), &queries);
                trace.record(format!("{name}_layer{i}_keys"), &keys);
            }
        }
        let q = (&queries + point_embeddings)?;
        let k = keys.broadcast_add(image_pe)?;
        let attn = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = ops::add_layer_norm(&queries, &attn, &self.layer_norm_final_attn)?;
        Ok((queries, keys))
    }
}
