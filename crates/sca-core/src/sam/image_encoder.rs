//! SAM ViT image encoder (`vision_encoder.*`): patch embedding, absolute positions, windowed and
//! global attention blocks with decomposed relative-position bias, and the convolutional neck.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::{layer_norm, linear};
use crate::config::VisionConfig;
use crate::trace::Trace;

/// Query rows of the grid processed at once in global attention: bounds the score matrix to
/// `rows*W x H*W` per head (64 MiB for a full 4096x4096 one; 8 MiB with 8 rows of 64).
const GLOBAL_ATTN_ROWS: usize = 8;

struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
    /// (H, Hk, hd) and (W, Wk, hd): `rel_pos_h[i - k + S - 1]` gathered once at load time.
    rel_h: Option<Tensor>,
    rel_w: Option<Tensor>,
}

/// Gathers the decomposed relative-position table for query/key size `size`: (S, S, hd).
fn gather_rel_pos(table: &Tensor, size: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..size)
        .flat_map(|q| (0..size).map(move |k| (q + size - 1 - k) as u32))
        .collect();
    let idx = Tensor::from_vec(idx, size * size, table.device())?;
    let hd = table.dim(1)?;
    table.index_select(&idx, 0)?.reshape((size, size, hd))
}

impl Attention {
    fn new(cfg: &VisionConfig, input_size: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.hidden_size;
        let num_heads = cfg.num_attention_heads;
        let head_dim = dim / num_heads;
        let qkv = if cfg.qkv_bias {
            candle_nn::linear(dim, 3 * dim, vb.pp("qkv"))?
        } else {
            candle_nn::linear_no_bias(dim, 3 * dim, vb.pp("qkv"))?
        };
        let proj = linear(dim, dim, vb.pp("proj"))?;
        let (rel_h, rel_w) = if cfg.use_rel_pos {
            let len = 2 * input_size - 1;
            let h = vb.get((len, head_dim), "rel_pos_h")?;
            let w = vb.get((len, head_dim), "rel_pos_w")?;
            (
                Some(gather_rel_pos(&h, input_size)?),
                Some(gather_rel_pos(&w, input_size)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            qkv,
            proj,
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            rel_h,
            rel_w,
        })
    }

    /// x: (B, H, W, C) -> (B, H, W, C). `row_chunk` bounds how many grid rows of queries are
    /// scored at once.
    fn forward(&self, x: &Tensor, row_chunk: usize) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (nh, hd) = (self.num_heads, self.head_dim);
        // (B*H*W, 3C) -> (3, B, nh, HW, hd)
        let qkv = self
            .qkv
            .forward(&x.reshape((b * h * w, c))?)?
            .reshape((b, h * w, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?
            .reshape((3, b * nh, h * w, hd))?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let kt = k.t()?.contiguous()?; // (N, hd, HW)
        let qs = (&q * self.scale)?;
        let n = b * nh;
        let mut outs = Vec::with_capacity(h.div_ceil(row_chunk));
        let mut r0 = 0;
        while r0 < h {
            let rows = row_chunk.min(h - r0);
            let q_rows = q.narrow(1, r0 * w, rows * w)?; // unscaled, for the bias
            let qs_rows = qs.narrow(1, r0 * w, rows * w)?;
            let scores = qs_rows.matmul(&kt)?; // (N, rows*W, HW)
            let scores = match (&self.rel_h, &self.rel_w) {
                (Some(rh), Some(rw)) => {
                    let bias = self.rel_bias(&q_rows, rh, rw, n, r0, rows, h, w)?; // (N, rows*W, HW)
                    (scores + bias)?
                }
                _ => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(probs.matmul(&v)?); // (N, rows*W, hd)
            r0 += rows;
        }
        let out = Tensor::cat(&outs, 1)?; // (N, HW, hd)
        let out = out
            .reshape((b, nh, h, w, hd))?
            .permute((0, 2, 3, 1, 4))?
            .reshape((b * h * w, c))?;
        self.proj.forward(&out)?.reshape((b, h, w, c))
    }

    /// Decomposed relative-position bias for query rows `r0..r0+rows`:
    /// bias[n, (i,j), (k,l)] = q(i,j)·Rh[i,k] + q(i,j)·Rw[j,l].
    #[allow(clippy::too_many_arguments)]
    fn rel_bias(
        &self,
        q_rows: &Tensor,
        rh: &Tensor,
        rw: &Tensor,
        n: usize,
        r0: usize,
        rows: usize,
        h: usize,
        w: usize,
    ) -> Result<Tensor> {
        let hd = self.head_dim;
        let q4 = q_rows.reshape((n, rows, w, hd))?;
        // rel_h: for each query row i: (n*w, hd) @ Rh[i]^T (hd, Hk) -> (rows, n*w, Hk)
        let qi = q4
            .permute((1, 0, 2, 3))?
            .contiguous()?
            .reshape((rows, n * w, hd))?;
        let rh_t = rh.narrow(0, r0, rows)?.transpose(1, 2)?.contiguous()?;
        let rel_h = qi
            .matmul(&rh_t)?
            .reshape((rows, n, w, h))?
            .permute((1, 0, 2, 3))?; // (n, rows, w, Hk)
                                     // rel_w: for each query col j: (n*rows, hd) @ Rw[j]^T (hd, Wk) -> (w, n*rows, Wk)
        let qj = q4
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((w, n * rows, hd))?;
        let rw_t = rw.transpose(1, 2)?.contiguous()?;
        let rel_w = qj
            .matmul(&rw_t)?
            .reshape((w, n, rows, w))?
            .permute((1, 2, 0, 3))?; // (n, rows, w, Wk)
        let bias = rel_h
            .unsqueeze(D::Minus1)?
            .broadcast_add(&rel_w.unsqueeze(3)?)?; // (n, rows, w, Hk, Wk)
        bias.reshape((n, rows * w, h * w))
    }
}

struct Block {
    layer_norm1: LayerNorm,
    attn: Attention,
    layer_norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    window_size: usize,
}

impl Block {
    fn new(cfg: &VisionConfig, window_size: usize, vb: VarBuilder) -> Result<Self> {
        let input_size = if window_size == 0 {
            cfg.grid_size()
        } else {
            window_size
        };
        let dim = cfg.hidden_size;
        Ok(Self {
            layer_norm1: layer_norm(dim, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(cfg, input_size, vb.pp("attn"))?,
            layer_norm2: layer_norm(dim, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            lin1: linear(dim, cfg.mlp_dim, vb.pp("mlp").pp("lin1"))?,
            lin2: linear(cfg.mlp_dim, dim, vb.pp("mlp").pp("lin2"))?,
            window_size,
        })
    }

    /// x: (B, H, W, C) -> (B, H, W, C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let shortcut = x;
        let x = self.layer_norm1.forward(x)?;
        let x = if self.window_size > 0 {
            let ws = self.window_size;
            let (windows, hp, wp) = window_partition(&x, ws)?;
            let y = self.attn.forward(&windows, ws)?;
            window_unpartition(&y, ws, (hp, wp), (h, w), b)?
        } else {
            self.attn.forward(&x, GLOBAL_ATTN_ROWS)?
        };
        let x = (shortcut + x)?;
        let y = self.layer_norm2.forward(&x)?.reshape((b * h * w, c))?;
        let y = self.lin1.forward(&y)?.gelu_erf()?;
        let y = self.lin2.forward(&y)?.reshape((b, h, w, c))?;
        x + y
    }
}

/// Zero-pads (bottom/right) to a multiple of `ws` and splits into windows:
/// (B,H,W,C) -> (B*nw, ws, ws, C), plus the padded size.
fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, usize, usize)> {
    let (b, h, w, c) = x.dims4()?;
    let ph = (ws - h % ws) % ws;
    let pw = (ws - w % ws) % ws;
    let x = if ph > 0 {
        x.pad_with_zeros(1, 0, ph)?
    } else {
        x.clone()
    };
    let x = if pw > 0 {
        x.pad_with_zeros(2, 0, pw)?
    } else {
        x
    };
    let (hp, wp) = (h + ph, w + pw);
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, hp, wp))
}

fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
    b: usize,
) -> Result<Tensor> {
    let c = windows.dim(D::Minus1)?;
    let x = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()
    } else {
        Ok(x)
    }
}

struct Neck {
    conv1: Tensor, // (C_out, C_in) — 1x1 conv as a matmul
    layer_norm1: LayerNorm,
    conv2: Conv2d,
    layer_norm2: LayerNorm,
}

impl Neck {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (cin, cout) = (cfg.hidden_size, cfg.output_channels);
        let conv1 = vb
            .pp("conv1")
            .get((cout, cin, 1, 1), "weight")?
            .reshape((cout, cin))?;
        let conv2_cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv2 = candle_nn::conv2d_no_bias(cout, cout, 3, conv2_cfg, vb.pp("conv2"))?;
        Ok(Self {
            conv1,
            layer_norm1: layer_norm(cout, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            conv2,
            layer_norm2: layer_norm(cout, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    /// (B,H,W,Cin) channels-last -> (B,Cout,H,W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, cin) = x.dims4()?;
        let cout = self.conv1.dim(0)?;
        let y = x.reshape((b * h * w, cin))?.matmul(&self.conv1.t()?)?;
        // LayerNorm2d over channels == LayerNorm over the last axis of a channels-last map.
        let y = self.layer_norm1.forward(&y.reshape((b, h, w, cout))?)?;
        let y = self
            .conv2
            .forward(&y.permute((0, 3, 1, 2))?.contiguous()?)?;
        let y = self
            .layer_norm2
            .forward(&y.permute((0, 2, 3, 1))?.contiguous()?)?;
        y.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// The SAM ViT image encoder.
pub struct ImageEncoder {
    patch_weight: Tensor, // (C, 3*p*p)
    patch_bias: Tensor,
    pos_embed: Option<Tensor>, // (1, g, g, C)
    layers: Vec<Block>,
    neck: Neck,
    cfg: VisionConfig,
}

impl ImageEncoder {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (c, p, cin) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let g = cfg.grid_size();
        let pe = vb.pp("patch_embed").pp("projection");
        let patch_weight = pe
            .get((c, cin, p, p), "weight")?
            .reshape((c, cin * p * p))?;
        let patch_bias = pe.get(c, "bias")?;
        let pos_embed = if cfg.use_abs_pos {
            Some(vb.get((1, g, g, c), "pos_embed")?)
        } else {
            None
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let ws = if cfg.global_attn_indexes.contains(&i) {
                    0
                } else {
                    cfg.window_size
                };
                Block::new(cfg, ws, vb.pp("layers").pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight,
            patch_bias,
            pos_embed,
            layers,
            neck: Neck::new(cfg, vb.pp("neck"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// pixel_values (B, 3, S, S) -> image embeddings (B, C_out, S/16, S/16).
    pub fn forward(&self, pixel_values: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (b, cin, s, s2) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        if s != self.cfg.image_size || s2 != self.cfg.image_size || cin != self.cfg.num_channels {
            candle_core::bail!(
                "pixel_values has shape {:?}, the encoder expects (B, {}, {}, {})",
                pixel_values.dims(),
                self.cfg.num_channels,
                self.cfg.image_size,
                self.cfg.image_size
            )
        }
        let g = s / p;
        let c = self.cfg.hidden_size;
        // Stride-p patch conv as a matmul: (B,3,g,p,g,p) -> (B*g*g, 3*p*p)
        let patches = pixel_values
            .to_dtype(DType::F32)?
            .reshape((b, cin, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, cin * p * p))?;
        let x = patches
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g, g, c))?;
        trace.record("vision_patch_embed", &x);
        let mut x = match &self.pos_embed {
            Some(pe) => x.broadcast_add(pe)?,
            None => x,
        };
        trace.record("vision_layer_input", &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if trace.is_enabled() {
                trace.record(format!("vision_layer{i}_output"), &x);
            }
        }
        let out = self.neck.forward(&x)?;
        trace.record("image_embeddings", &out);
        Ok(out)
    }
}
