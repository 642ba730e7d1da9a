//! SAM's two-way transformer (`SamTwoWayTransformer`): used by the mask decoder
//! (`mask_decoder.transformer`, 2 layers) and by the SCA caption mixer
//! (`mask_decoder.additional_transformer`, 12 layers).

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::{layer_norm, linear};
use crate::config::MaskCaptionDecoderConfig;
use crate::ops::gemm::Mat;
use crate::ops::{self, F32Slice, LnSlices, QLinear};
use crate::trace::Trace;

/// `SamAttention`: projections to `dim / downsample_rate`, heads, scaled softmax attention.
pub struct Attention {
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    out_proj: QLinear,
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
        let q = self.q_proj.forward(q)?;
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;
        let out = ops::attention(&q, &k, &v, self.num_heads, self.scale(q.dim(2)?))?;
        self.out_proj.forward(&out)
    }

    fn scale(&self, inner: usize) -> f64 {
        1.0 / ((inner / self.num_heads) as f64).sqrt()
    }

    /// Fast path, tokens attending to the image: q (M,T,C) tokens; k and v the projected image
    /// tokens (M*HW, C') -> (M,T,C).
    fn tokens_to_image(&self, q: &Tensor, k: Mat, v: Mat, m: usize) -> Result<Tensor> {
        let q = self.q_proj.forward(q)?;
        let (_, t, ci) = q.dims3()?;
        let mut out = vec![0f32; m * t * ci];
        let qs = F32Slice::new(&q)?;
        let scale = self.scale(ci) as f32;
        ops::attention_into(
            Mat::dense(&qs, m * t, ci),
            k,
            v,
            m,
            self.num_heads,
            scale,
            &mut out,
        );
        self.out_proj.forward(&ops::tensor(out, (m, t, ci))?)
    }

    /// Fast path, the image attending to tokens: q the projected image tokens (M*HW, C'); k and
    /// v (M,T,C) tokens. Writes the heads' output (M*HW, C'), before `out_proj`.
    fn image_to_tokens(
        &self,
        q: Mat,
        k: &Tensor,
        v: &Tensor,
        m: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;
        let (_, t, ci) = k.dims3()?;
        let (ks, vs) = (F32Slice::new(&k)?, F32Slice::new(&v)?);
        let (k, v) = (Mat::dense(&ks, m * t, ci), Mat::dense(&vs, m * t, ci));
        ops::attention_into(q, k, v, m, self.num_heads, self.scale(ci) as f32, out);
        Ok(())
    }
}

/// Image-side buffers of the fast path, reused by every layer (rows = M*HW).
struct ImageBuffers {
    /// keys + key PE (rows, C)
    kpe: Vec<f32>,
    /// projections of `kpe`: [token-to-image k | image-to-token q] (rows, 2C')
    kq: Vec<f32>,
    /// token-to-image v (rows, C'), then the image-to-token heads' output
    v: Vec<f32>,
    /// image-to-token output after `out_proj` (rows, C)
    y: Vec<f32>,
}

/// One `SamTwoWayAttentionBlock`.
pub struct TwoWayBlock {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    layer_norm2: LayerNorm,
    lin1: QLinear,
    lin2: QLinear,
    layer_norm3: LayerNorm,
    layer_norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
    /// `cross_attn_token_to_image.k_proj` and `cross_attn_image_to_token.q_proj` stacked.
    kq_proj: QLinear,
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
        let cross_attn_token_to_image =
            Attention::new(c, nh, r, vb.pp("cross_attn_token_to_image"))?;
        let cross_attn_image_to_token =
            Attention::new(c, nh, r, vb.pp("cross_attn_image_to_token"))?;
        let kq_proj = QLinear::concat(
            &cross_attn_token_to_image.k_proj,
            &cross_attn_image_to_token.q_proj,
        )?;
        Ok(Self {
            self_attn: Attention::new(c, nh, 1, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(c, eps, vb.pp("layer_norm1"))?,
            cross_attn_token_to_image,
            layer_norm2: layer_norm(c, eps, vb.pp("layer_norm2"))?,
            lin1: linear(c, cfg.mlp_dim, vb.pp("mlp").pp("lin1"))?,
            lin2: linear(cfg.mlp_dim, c, vb.pp("mlp").pp("lin2"))?,
            layer_norm3: layer_norm(c, eps, vb.pp("layer_norm3"))?,
            layer_norm4: layer_norm(c, eps, vb.pp("layer_norm4"))?,
            cross_attn_image_to_token,
            skip_first_layer_pe,
            kq_proj,
        })
    }

    /// The first step: token self-attention and LayerNorm.
    fn self_attention(&self, queries: &Tensor, query_pe: &Tensor) -> Result<Tensor> {
        if self.skip_first_layer_pe {
            // inherited SAM quirk: no residual in the first block's self-attention
            let attn = self.self_attn.forward(queries, queries, queries)?;
            ops::layer_norm(&attn, &self.layer_norm1)
        } else {
            let q = (queries + query_pe)?;
            let attn = self.self_attn.forward(&q, &q, queries)?;
            ops::add_layer_norm(queries, &attn, &self.layer_norm1)
        }
    }

    /// The token MLP with its residual and LayerNorm.
    fn mlp(&self, queries: &Tensor) -> Result<Tensor> {
        let mlp = self.lin2.forward(&self.lin1.forward(queries)?.relu()?)?;
        ops::add_layer_norm(queries, &mlp, &self.layer_norm3)
    }

    /// Fast path of [`TwoWayBlock::forward`]: `keys` (M*HW, C) updated in place, `key_pe`
    /// (HW or M*HW rows, C). Returns the new queries.
    fn forward_fast(
        &self,
        queries: &Tensor,
        query_pe: &Tensor,
        keys: &mut [f32],
        key_pe: &[f32],
        m: usize,
        bufs: &mut ImageBuffers,
    ) -> Result<Tensor> {
        let c = queries.dim(2)?;
        let rows = keys.len() / c;
        let ci = self.kq_proj.out_dim() / 2;
        let queries = self.self_attention(queries, query_pe)?;

        let q = (&queries + query_pe)?;
        ops::add_repeated_rows(keys, key_pe, c, &mut bufs.kpe);
        self.kq_proj.forward_into(&bufs.kpe, rows, &mut bufs.kq)?;
        let t2i = &self.cross_attn_token_to_image;
        t2i.v_proj.forward_into(keys, rows, &mut bufs.v)?;
        let kq = Mat::dense(&bufs.kq[..rows * 2 * ci], rows, 2 * ci);
        let v = Mat::dense(&bufs.v[..rows * ci], rows, ci);
        let attn = t2i.tokens_to_image(&q, kq.cols(0, ci), v, m)?;
        let queries = ops::add_layer_norm(&queries, &attn, &self.layer_norm2)?;
        let queries = self.mlp(&queries)?;

        let q = (&queries + query_pe)?;
        let i2t = &self.cross_attn_image_to_token;
        i2t.image_to_tokens(kq.cols(ci, ci), &q, &queries, m, &mut bufs.v)?;
        i2t.out_proj.forward_into(&bufs.v, rows, &mut bufs.y)?;
        LnSlices::new(&self.layer_norm4)?.add_inplace(keys, &bufs.y);
        Ok(queries)
    }

    /// queries (M,T,C), keys (M,HW,C), query_pe (M,T,C), key_pe (M|1,HW,C) -> (queries, keys)
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = self.self_attention(queries, query_pe)?;

        let q = (&queries + query_pe)?;
        let k = keys.broadcast_add(key_pe)?;
        let attn = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        let queries = ops::add_layer_norm(&queries, &attn, &self.layer_norm2)?;
        let queries = self.mlp(&queries)?;

        let q = (&queries + query_pe)?;
        let attn = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        let keys = ops::add_layer_norm(keys, &attn, &self.layer_norm4)?;
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
    /// image (M|1,HW,C) (one image may serve all M prompts), image_pe (M|1,HW,C).
    /// Returns (queries (M,T,C), keys (M,HW,C)).
    /// Per-layer outputs are traced as `{name}_layer{i}_queries` / `_keys`.
    pub fn forward(
        &self,
        point_embeddings: &Tensor,
        image: &Tensor,
        image_pe: &Tensor,
        name: &str,
        trace: &mut Trace,
    ) -> Result<(Tensor, Tensor)> {
        let mut ts = vec![point_embeddings, image, image_pe];
        ts.extend(self.layers.iter().filter_map(|l| l.kq_proj.dense_weight()));
        if ops::fast_path(&ts) {
            return self.forward_fast(point_embeddings, image, image_pe, name, trace);
        }
        let mut queries = point_embeddings.clone();
        let (m, (_, hw, c)) = (point_embeddings.dim(0)?, image.dims3()?);
        let mut keys = image.broadcast_as((m, hw, c))?;
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

impl TwoWayTransformer {
    /// Fast path of [`TwoWayTransformer::forward`]: the image side lives in flat buffers
    /// reused by every layer.
    fn forward_fast(
        &self,
        point_embeddings: &Tensor,
        image: &Tensor,
        image_pe: &Tensor,
        name: &str,
        trace: &mut Trace,
    ) -> Result<(Tensor, Tensor)> {
        let (m, (mi, hw, c)) = (point_embeddings.dim(0)?, image.dims3()?);
        let rows = m * hw;
        let image_pe = image_pe.contiguous()?;
        let pe = F32Slice::new(&image_pe)?;
        if pe.len() != hw * c && pe.len() != rows * c {
            candle_core::bail!(
                "image PE {:?} for image tokens {:?}",
                image_pe.dims(),
                image.dims()
            )
        }
        let image = image.contiguous()?;
        let mut keys = match (mi, F32Slice::new(&image)?) {
            (1, one) => one.repeat(m),
            (_, all) if mi == m => all.to_vec(),
            _ => candle_core::bail!("{mi} images for {m} prompts"),
        };
        let ci = self.final_attn_token_to_image.k_proj.out_dim();
        let mut bufs = ImageBuffers {
            kpe: vec![0f32; rows * c],
            kq: vec![0f32; rows * 2 * ci],
            v: vec![0f32; rows * ci],
            y: vec![0f32; rows * c],
        };
        let mut queries = point_embeddings.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            queries =
                layer.forward_fast(&queries, point_embeddings, &mut keys, &pe, m, &mut bufs)?;
            if trace.is_enabled() {
                trace.record(format!("{name}_layer{i}_queries"), &queries);
                let k = ops::tensor(keys.clone(), (m, hw, c))?;
                trace.record(format!("{name}_layer{i}_keys"), &k);
            }
        }
        let q = (&queries + point_embeddings)?;
        let attn = &self.final_attn_token_to_image;
        ops::add_repeated_rows(&keys, &pe, c, &mut bufs.kpe);
        attn.k_proj.forward_into(&bufs.kpe, rows, &mut bufs.kq)?;
        attn.v_proj.forward_into(&keys, rows, &mut bufs.v)?;
        let k = Mat::dense(&bufs.kq[..rows * ci], rows, ci);
        let v = Mat::dense(&bufs.v[..rows * ci], rows, ci);
        let attn = attn.tokens_to_image(&q, k, v, m)?;
        let queries = ops::add_layer_norm(&queries, &attn, &self.layer_norm_final_attn)?;
        drop(bufs);
        Ok((queries, ops::tensor(keys, (m, hw, c))?))
    }
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
        let tf = TwoWayTransformer::new(&cfg, 3, random_vb()).unwrap();
        let (m, t, hw, c) = (3, 5, 36, 32);
        let dev = &Device::Cpu;
        let points = Tensor::randn(0f32, 1.0, (m, t, c), dev).unwrap();
        let pe = Tensor::randn(0f32, 1.0, (1, hw, c), dev).unwrap();
        // one image shared by the prompts, and one per prompt
        for image in [(1, hw, c), (m, hw, c)] {
            let image = Tensor::randn(0f32, 1.0, image, dev).unwrap();
            let (q, k) = tf
                .forward(&points, &image, &pe, "t", &mut Trace::default())
                .unwrap();
            let slow = tf.forward(&tracked(&points), &image, &pe, "t", &mut Trace::default());
            let (sq, sk) = slow.unwrap();
            assert_close(&q, &sq.detach(), 1e-5, "queries");
            assert_close(&k, &sk.detach(), 1e-5, "keys");
        }
    }
}
