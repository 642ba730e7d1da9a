//! SAM prompt encoder (`prompt_encoder.*`) and the shared random-Fourier positional encoding
//! (`shared_image_embedding.positional_embedding`).

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, VarBuilder};

use crate::config::{PromptEncoderConfig, VisionConfig};

/// Point labels as the official model understands them.
pub mod label {
    pub const NEGATIVE: i64 = 0;
    pub const POSITIVE: i64 = 1;
    /// "Not a point": replaced by `not_a_point_embed` (the padding point added without a box).
    pub const NOT_A_POINT: i64 = -1;
    /// Padding: contributes a zero token.
    pub const PAD: i64 = -10;
}

/// Random-Fourier positional encoding with the (2, F) Gaussian matrix G:
/// `pe(c) = [sin(2π(2c-1)G), cos(2π(2c-1)G)]` for c in [0,1]² (x first).
pub struct PositionalEmbedding {
    g: Tensor, // (2, F)
}

impl PositionalEmbedding {
    pub fn new(num_pos_feats: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            g: vb.get((2, num_pos_feats), "positional_embedding")?,
        })
    }

    /// coords (..., 2) already in [0,1] -> (..., 2F).
    pub fn forward(&self, coords01: &Tensor) -> Result<Tensor> {
        let dims = coords01.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let c = ((coords01.reshape((n, 2))? * 2.0)? - 1.0)?;
        let u = (c.matmul(&self.g)? * (2.0 * std::f64::consts::PI))?;
        let pe = Tensor::cat(&[u.sin()?, u.cos()?], 1)?;
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(pe.dim(1)?);
        pe.reshape(out_dims)
    }

    /// Coordinates of pixel positions in the model frame `(x+0.5)/S` computed in f64, as the
    /// official code does for its float64 prompt tensors. `pts`: (x, y) pairs.
    pub fn normalized_coords(
        pts: &[(f64, f64)],
        input_size: usize,
        dev: &Device,
    ) -> Result<Tensor> {
        let s = input_size as f64;
        let v: Vec<f32> = pts
            .iter()
            .flat_map(|&(x, y)| [((x + 0.5) / s) as f32, ((y + 0.5) / s) as f32])
            .collect();
        Tensor::from_vec(v, (pts.len(), 2), dev)
    }

    /// Dense positional encoding of the g x g grid (cell centres): (C, g, g).
    pub fn image_wide(&self, g: usize) -> Result<Tensor> {
        let coords: Vec<f32> = (0..g)
            .flat_map(|r| {
                (0..g).flat_map(move |s| {
                    [((s as f32) + 0.5) / g as f32, ((r as f32) + 0.5) / g as f32]
                })
            })
            .collect();
        let coords = Tensor::from_vec(coords, (g * g, 2), self.g.device())?;
        let pe = self.forward(&coords)?; // (g*g, C)
        let c = pe.dim(1)?;
        pe.t()?.contiguous()?.reshape((c, g, g))
    }
}

/// One prompt: points (x, y in model-frame pixels, i.e. already scaled to the resized image) with
/// labels, and/or a box (x1, y1, x2, y2, same frame).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaledPrompt {
    pub points: Vec<(f64, f64)>,
    pub labels: Vec<i64>,
    pub box_: Option<[f64; 4]>,
}

struct MaskEmbed {
    conv1: Conv2d,
    ln1: LayerNorm,
    conv2: Conv2d,
    ln2: LayerNorm,
    conv3: Conv2d,
}

impl MaskEmbed {
    fn new(cfg: &PromptEncoderConfig, vb: VarBuilder) -> Result<Self> {
        let c4 = cfg.mask_input_channels / 4;
        let cm = cfg.mask_input_channels;
        let k2 = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv1: candle_nn::conv2d(1, c4, 2, k2, vb.pp("conv1"))?,
            ln1: super::layer_norm(c4, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            conv2: candle_nn::conv2d(c4, cm, 2, k2, vb.pp("conv2"))?,
            ln2: super::layer_norm(cm, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            conv3: candle_nn::conv2d(cm, cfg.hidden_size, 1, Default::default(), vb.pp("conv3"))?,
        })
    }

    /// (M,1,4g,4g) -> (M,C,g,g); LayerNorm2d done channels-last.
    fn forward(&self, masks: &Tensor) -> Result<Tensor> {
        let ln2d = |x: &Tensor, ln: &LayerNorm| -> Result<Tensor> {
            crate::ops::layer_norm(&x.permute((0, 2, 3, 1))?.contiguous()?, ln)?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let x = ln2d(&self.conv1.forward(masks)?, &self.ln1)?.gelu_erf()?;
        let x = ln2d(&self.conv2.forward(&x)?, &self.ln2)?.gelu_erf()?;
        self.conv3.forward(&x)
    }
}

/// The SAM prompt encoder.
pub struct PromptEncoder {
    pe: PositionalEmbedding,
    point_embed: Vec<Tensor>, // 4 x (C)
    not_a_point_embed: Tensor,
    no_mask_embed: Tensor,
    mask_embed: MaskEmbed,
    cfg: PromptEncoderConfig,
}

impl PromptEncoder {
    /// `vb_shared` is the root builder (`shared_image_embedding.*` lives at the top level).
    pub fn new(
        cfg: &PromptEncoderConfig,
        vision: &VisionConfig,
        vb: VarBuilder,
        vb_shared: VarBuilder,
    ) -> Result<Self> {
        let c = cfg.hidden_size;
        let pe = PositionalEmbedding::new(vision.num_pos_feats, vb_shared)?;
        let point_embed = (0..cfg.num_point_embeddings)
            .map(|i| vb.pp("point_embed").pp(i).get((1, c), "weight")?.reshape(c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pe,
            point_embed,
            not_a_point_embed: vb
                .pp("not_a_point_embed")
                .get((1, c), "weight")?
                .reshape(c)?,
            no_mask_embed: vb.pp("no_mask_embed").get((1, c), "weight")?.reshape(c)?,
            mask_embed: MaskEmbed::new(cfg, vb.pp("mask_embed"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn positional_embedding(&self) -> &PositionalEmbedding {
        &self.pe
    }

    /// Dense image PE (1, C, g, g) used as key PE by both two-way transformers.
    pub fn image_positional_embeddings(&self) -> Result<Tensor> {
        self.pe
            .image_wide(self.cfg.image_embedding_size())?
            .unsqueeze(0)
    }

    /// Sparse tokens of one prompt: (T, C). Points get a padding "not a point" token when no box
    /// is given; a box adds two corner tokens. No prompt at all gives zero tokens.
    pub fn embed_sparse(&self, p: &ScaledPrompt) -> Result<Tensor> {
        if p.points.len() != p.labels.len() {
            candle_core::bail!("{} points but {} labels", p.points.len(), p.labels.len())
        }
        let dev = self.no_mask_embed.device();
        let s = self.cfg.image_size;
        let c = self.cfg.hidden_size;
        let mut tokens = Vec::new();
        if !p.points.is_empty() {
            let mut pts = p.points.clone();
            let mut labels = p.labels.clone();
            if p.box_.is_none() {
                // padding point at (0,0) *after* the +0.5 shift: its coordinate never matters
                pts.push((-0.5, -0.5));
                labels.push(label::NOT_A_POINT);
            }
            let pe = self
                .pe
                .forward(&PositionalEmbedding::normalized_coords(&pts, s, dev)?)?;
            for (i, &l) in labels.iter().enumerate() {
                let t = match l {
                    label::NOT_A_POINT => self.not_a_point_embed.clone(),
                    label::PAD => Tensor::zeros(c, candle_core::DType::F32, dev)?,
                    label::NEGATIVE => (pe.get(i)? + &self.point_embed[0])?,
                    label::POSITIVE => (pe.get(i)? + &self.point_embed[1])?,
                    // other labels keep the bare positional encoding, as the official code does
                    _ => pe.get(i)?,
                };
                tokens.push(t);
            }
        }
        if let Some([x1, y1, x2, y2]) = p.box_ {
            let pe = self.pe.forward(&PositionalEmbedding::normalized_coords(
                &[(x1, y1), (x2, y2)],
                s,
                dev,
            )?)?;
            tokens.push((pe.get(0)? + &self.point_embed[2])?);
            tokens.push((pe.get(1)? + &self.point_embed[3])?);
        }
        if tokens.is_empty() {
            return Tensor::zeros((0, c), candle_core::DType::F32, dev);
        }
        Tensor::stack(&tokens, 0)
    }

    /// Dense embedding (C, g, g): `no_mask_embed` broadcast, or the mask input (1, 4g, 4g) embedded.
    pub fn embed_dense(&self, mask_input: Option<&Tensor>) -> Result<Tensor> {
        let g = self.cfg.image_embedding_size();
        match mask_input {
            None => self
                .no_mask_embed
                .reshape((self.cfg.hidden_size, 1, 1))?
                .broadcast_as((self.cfg.hidden_size, g, g))?
                .contiguous(),
            Some(m) => {
                let m = m.reshape((1, 1, 4 * g, 4 * g))?;
                self.mask_embed.forward(&m)?.squeeze(0)
            }
        }
    }
}
