//! SAM ViT image encoder (`vision_encoder.*`): patch embedding, absolute positions, windowed and
//! global attention blocks with decomposed relative-position bias, and the convolutional neck.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

use super::layer_norm;
use crate::config::VisionConfig;
use crate::ops::gemm::{self, Mat};
use crate::ops::{self, kernels, F32Slice, LnSlices};
use crate::trace::Trace;
use candle_nn::linear;

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
    /// The raw tables `rel_pos_h`, `rel_pos_w` and the input size: when they train, the
    /// gather is redone every forward pass so that updates are seen.
    rel_tables: Option<(Tensor, Tensor, usize)>,
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
        let (rel_h, rel_w, rel_tables) = if cfg.use_rel_pos {
            let len = 2 * input_size - 1;
            let h = vb.get((len, head_dim), "rel_pos_h")?;
            let w = vb.get((len, head_dim), "rel_pos_w")?;
            (
                Some(gather_rel_pos(&h, input_size)?),
                Some(gather_rel_pos(&w, input_size)?),
                Some((h, w, input_size)),
            )
        } else {
            (None, None, None)
        };
        Ok(Self {
            qkv,
            proj,
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            rel_h,
            rel_w,
            rel_tables,
        })
    }

    /// x: (B, H, W, C) -> (B, H, W, C). `row_chunk` bounds how many grid rows of queries are
    /// scored at once.
    fn forward(&self, x: &Tensor, row_chunk: usize) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        // Trained tables are gathered afresh (the cached gather would not see updates).
        let (rel_h, rel_w) = match &self.rel_tables {
            Some((th, tw, size)) if ops::any_tracked(&[th, tw]) => (
                Some(gather_rel_pos(th, *size)?),
                Some(gather_rel_pos(tw, *size)?),
            ),
            _ => (self.rel_h.clone(), self.rel_w.clone()),
        };
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
            let scores = match (&rel_h, &rel_w) {
                (Some(rh), Some(rw)) => {
                    let bias = self.rel_bias(&q_rows, rh, rw, n, r0, rows, h, w)?; // (N, rows*W, HW)
                    (scores + bias)?
                }
                _ => scores,
            };
            let probs = ops::softmax_last_dim(&scores)?;
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
        let x = ops::layer_norm(x, &self.layer_norm1)?;
        let x = if self.window_size > 0 {
            let ws = self.window_size;
            let (windows, hp, wp) = window_partition(&x, ws)?;
            let y = self.attn.forward(&windows, ws)?;
            window_unpartition(&y, ws, (hp, wp), (h, w), b)?
        } else {
            self.attn.forward(&x, GLOBAL_ATTN_ROWS)?
        };
        let x = (shortcut + x)?;
        let y = ops::layer_norm(&x, &self.layer_norm2)?.reshape((b * h * w, c))?;
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
    /// conv2's weight as (C_out, 3*3*C_out), taps (ky, kx) outer: the fast path's layout.
    conv2_taps: Tensor,
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
        let conv2_taps = conv2
            .weight()
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((cout, 9 * cout))?;
        Ok(Self {
            conv1,
            layer_norm1: layer_norm(cout, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            conv2,
            conv2_taps,
            layer_norm2: layer_norm(cout, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    /// (B,H,W,Cin) channels-last -> (B,Cout,H,W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, cin) = x.dims4()?;
        let cout = self.conv1.dim(0)?;
        let y = x.reshape((b * h * w, cin))?.matmul(&self.conv1.t()?)?;
        // LayerNorm2d over channels == LayerNorm over the last axis of a channels-last map.
        let y = ops::layer_norm(&y.reshape((b, h, w, cout))?, &self.layer_norm1)?;
        let y = self
            .conv2
            .forward(&y.permute((0, 3, 1, 2))?.contiguous()?)?;
        let y = ops::layer_norm(&y.permute((0, 2, 3, 1))?.contiguous()?, &self.layer_norm2)?;
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
        let pixel_values = pixel_values.to_dtype(DType::F32)?;
        let fast = ops::fast_path(&self.fast_path_inputs(&pixel_values));
        if fast && (b == 1 || !trace.is_enabled()) {
            let out = (0..b)
                .map(|i| self.forward_fast(&pixel_values.get(i)?, trace))
                .collect::<Result<Vec<_>>>()?;
            let out = Tensor::stack(&out, 0)?;
            trace.record("image_embeddings", &out);
            return Ok(out);
        }
        let g = s / p;
        let c = self.cfg.hidden_size;
        // Stride-p patch conv as a matmul: (B,3,g,p,g,p) -> (B*g*g, 3*p*p)
        let patches = pixel_values
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

// ---------------------------------------------------------------------------------------------
// Fast CPU path (f32 inference): the same computation on flat buffers reused across layers,
// products through `ops::gemm`, fused softmax + relative-position bias, no window padding copies.
// ---------------------------------------------------------------------------------------------

/// Buffers of one encoder call, reused by every layer. `n` = H*W tokens.
struct Workspace {
    /// LayerNorm output (n, C).
    xn: Vec<f32>,
    /// qkv (n, 3C), later the MLP hidden state (n, mlp).
    big: Vec<f32>,
    /// Attention output before `proj`, tokens in grid order (n, C).
    attn: Vec<f32>,
    /// Windowed attention output in window order (windows*ws*ws, C).
    windows: Vec<f32>,
    /// Global attention's relative-position terms, per head: (nh, n, H) and (nh, n, W).
    rel_h: Vec<f32>,
    rel_w: Vec<f32>,
}

/// `x[r] += b` for every row `r`.
fn add_bias(x: &mut [f32], b: Option<&Tensor>) -> Result<()> {
    let Some(b) = b else { return Ok(()) };
    let b = F32Slice::new(b)?;
    let c = b.len();
    let rows = ops::rows_per_task(x.len() / c, c) * c;
    x.par_chunks_mut(rows).for_each(|x| {
        for row in x.chunks_exact_mut(c) {
            for (v, b) in row.iter_mut().zip(b.iter()) {
                *v += b;
            }
        }
    });
    Ok(())
}

/// Decomposed relative-position terms of one head over an `h x w` grid of queries `q`
/// (h*w rows of hd): `rel_h[(i,j), k] = q(i,j)·Rh[i,k]` and `rel_w[(i,j), l] = q(i,j)·Rw[j,l]`,
/// with `rh` (h, Hk, hd) and `rw` (w, Wk, hd) the gathered tables.
fn rel_pos_terms(
    q: Mat,
    rh: &[f32],
    rw: &[f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    rel_h: &mut [f32],
    rel_w: &mut [f32],
) {
    let hd = q.cols;
    for i in 0..h {
        let r = Mat::dense(&rh[i * kh * hd..(i + 1) * kh * hd], kh, hd).t();
        gemm::gemm(1.0, q.rows(i * w, w), r, 0.0, &mut rel_h[i * w * kh..], kh);
    }
    for j in 0..w {
        let r = Mat::dense(&rw[j * kw * hd..(j + 1) * kw * hd], kw, hd).t();
        gemm::gemm(
            1.0,
            q.rows_step(j, w, h),
            r,
            0.0,
            &mut rel_w[j * kw..],
            w * kw,
        );
    }
}

/// Per-thread scratch of windowed attention.
#[derive(Default)]
struct WindowScratch {
    qkv: Vec<f32>,
    scores: Vec<f32>,
    rel_h: Vec<f32>,
    rel_w: Vec<f32>,
    inv_sums: Vec<f32>,
}

/// `out[r][..n] *= s[r]` for rows `ld` apart.
fn scale_rows(out: &mut [f32], ld: usize, n: usize, s: &[f32]) {
    for (r, &s) in s.iter().enumerate() {
        out[r * ld..r * ld + n].iter_mut().for_each(|v| *v *= s);
    }
}

impl Attention {
    fn rel_tables(&self) -> Result<Option<(F32Slice<'_>, F32Slice<'_>)>> {
        match (&self.rel_h, &self.rel_w) {
            (Some(h), Some(w)) => Ok(Some((F32Slice::new(h)?, F32Slice::new(w)?))),
            _ => Ok(None),
        }
    }

    /// Windowed attention over the `h x w` grid: qkv (n, 3C) in grid order -> `ws.attn` (n, C).
    /// Windows past the grid's edge see zero-padded tokens, whose qkv is just the bias.
    fn forward_windows(&self, h: usize, w: usize, win: usize, ws: &mut Workspace) -> Result<()> {
        let (nh, hd) = (self.num_heads, self.head_dim);
        let c = nh * hd;
        let (nwh, nww) = (h.div_ceil(win), w.div_ceil(win));
        let t = win * win;
        let bias = self.qkv.bias().map(F32Slice::new).transpose()?;
        let rel = self.rel_tables()?;
        let scale = self.scale as f32;
        let qkv = &ws.big;
        ws.windows.resize(nwh * nww * t * c, 0.0);
        ws.windows.par_chunks_mut(t * c).enumerate().for_each_init(
            WindowScratch::default,
            |s, (wi, out)| {
                let (wy, wx) = (wi / nww, wi % nww);
                // gather the window's tokens (padding: the bias)
                s.qkv.resize(t * 3 * c, 0.0);
                for (ti, dst) in s.qkv.chunks_exact_mut(3 * c).enumerate() {
                    let (r, col) = (wy * win + ti / win, wx * win + ti % win);
                    if r < h && col < w {
                        let src = (r * w + col) * 3 * c;
                        dst.copy_from_slice(&qkv[src..src + 3 * c]);
                    } else {
                        match &bias {
                            Some(b) => dst.copy_from_slice(b),
                            None => dst.fill(0.0),
                        }
                    }
                }
                s.scores.resize(t * t, 0.0);
                s.rel_h.resize(t * win, 0.0);
                s.rel_w.resize(t * win, 0.0);
                s.inv_sums.resize(t, 0.0);
                let all = Mat::new(&s.qkv, t, 3 * c, 3 * c);
                for hi in 0..nh {
                    let q = all.cols(hi * hd, hd);
                    let k = all.cols(c + hi * hd, hd);
                    let v = all.cols(2 * c + hi * hd, hd);
                    gemm::gemm(scale, q, k.t(), 0.0, &mut s.scores, t);
                    let out = &mut out[hi * hd..];
                    match &rel {
                        Some((rh, rw)) => {
                            let (g, k) = ((win, win), (win, win));
                            rel_pos_terms(q, rh, rw, g, k, &mut s.rel_h, &mut s.rel_w);
                            let (x, inv) = (&mut s.scores, &mut s.inv_sums);
                            kernels::exp_rel_pos(x, &s.rel_h, &s.rel_w, win, inv);
                            gemm::gemm(1.0, Mat::dense(x, t, t), v, 0.0, out, c);
                            scale_rows(out, c, hd, inv);
                        }
                        None => {
                            kernels::softmax_rows(&mut s.scores, t);
                            gemm::gemm(1.0, Mat::dense(&s.scores, t, t), v, 0.0, out, c);
                        }
                    }
                }
            },
        );
        // back to grid order, dropping the padding
        let windows = &ws.windows;
        ws.attn[..h * w * c]
            .par_chunks_mut(w * c)
            .enumerate()
            .for_each(|(r, row)| {
                let (wy, a) = (r / win, r % win);
                for (col, dst) in row.chunks_exact_mut(c).enumerate() {
                    let (wx, b) = (col / win, col % win);
                    let src = ((wy * nww + wx) * t + a * win + b) * c;
                    dst.copy_from_slice(&windows[src..src + c]);
                }
            });
        Ok(())
    }

    /// Global attention over the `h x w` grid: qkv (n, 3C) -> `ws.attn` (n, C). Queries go in
    /// blocks of grid rows so a block's scores (rows*W x n) stay in cache.
    fn forward_global(&self, h: usize, w: usize, ws: &mut Workspace) -> Result<()> {
        let (nh, hd) = (self.num_heads, self.head_dim);
        let (c, n) = (nh * hd, h * w);
        let rel = self.rel_tables()?;
        let scale = self.scale as f32;
        let qkv = Mat::new(&ws.big, n, 3 * c, 3 * c);
        if let Some((rh, rw)) = &rel {
            ws.rel_h.resize(nh * n * h, 0.0);
            ws.rel_w.resize(nh * n * w, 0.0);
            ws.rel_h
                .par_chunks_mut(n * h)
                .zip(ws.rel_w.par_chunks_mut(n * w))
                .enumerate()
                .for_each(|(hi, (rel_h, rel_w))| {
                    let q = qkv.cols(hi * hd, hd);
                    rel_pos_terms(q, rh, rw, (h, w), (h, w), rel_h, rel_w)
                });
        }
        let (rel_h, rel_w) = (&ws.rel_h, &ws.rel_w);
        let grid_rows = (GLOBAL_BLOCK_QUERIES / w).max(1);
        ws.attn[..n * c]
            .par_chunks_mut(grid_rows * w * c)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(scores, inv), (bi, out)| {
                    let q0 = bi * grid_rows * w;
                    let nq = out.len() / c;
                    scores.resize(nq * n, 0.0);
                    inv.resize(nq, 0.0);
                    for hi in 0..nh {
                        let q = qkv.rows(q0, nq).cols(hi * hd, hd);
                        let k = qkv.cols(c + hi * hd, hd);
                        let v = qkv.cols(2 * c + hi * hd, hd);
                        gemm::gemm(scale, q, k.t(), 0.0, scores, n);
                        let out = &mut out[hi * hd..];
                        if rel.is_some() {
                            let rh = &rel_h[(hi * n + q0) * h..(hi * n + q0 + nq) * h];
                            let rw = &rel_w[(hi * n + q0) * w..(hi * n + q0 + nq) * w];
                            kernels::exp_rel_pos(scores, rh, rw, w, inv);
                            gemm::gemm(1.0, Mat::dense(scores, nq, n), v, 0.0, out, c);
                            scale_rows(out, c, hd, inv);
                        } else {
                            kernels::softmax_rows(scores, n);
                            gemm::gemm(1.0, Mat::dense(scores, nq, n), v, 0.0, out, c);
                        }
                    }
                },
            );
        Ok(())
    }
}

/// Queries per block of global attention: 64 x 4096 scores are 1 MiB, an L2's worth.
const GLOBAL_BLOCK_QUERIES: usize = 64;

impl Block {
    /// x (H*W, C) in place.
    fn forward_fast(&self, x: &mut [f32], h: usize, w: usize, ws: &mut Workspace) -> Result<()> {
        let n = h * w;
        let c = x.len() / n;
        LnSlices::new(&self.layer_norm1)?.apply(x, &mut ws.xn);
        let qkv_w = self.attn.qkv.weight();
        ws.big
            .resize(n * qkv_w.dim(0)?.max(self.lin1.weight().dim(0)?), 0.0);
        ops::linear_into(&ws.xn, n, qkv_w, self.attn.qkv.bias(), &mut ws.big)?;
        if self.window_size > 0 {
            self.attn.forward_windows(h, w, self.window_size, ws)?;
        } else {
            self.attn.forward_global(h, w, ws)?;
        }
        // x += attn @ proj^T + b
        add_bias(x, self.attn.proj.bias())?;
        let proj = F32Slice::new(self.attn.proj.weight())?;
        let a = Mat::dense(&ws.attn[..n * c], n, c);
        gemm::par_gemm(1.0, a, Mat::dense(&proj, c, c).t(), 1.0, x, c);
        // x += gelu(LN2(x) @ lin1^T + b1) @ lin2^T + b2
        LnSlices::new(&self.layer_norm2)?.apply(x, &mut ws.xn);
        let mlp = self.lin1.weight().dim(0)?;
        let hidden = &mut ws.big[..n * mlp];
        ops::linear_into(&ws.xn, n, self.lin1.weight(), None, hidden)?;
        match self.lin1.bias() {
            Some(b) => {
                let b = F32Slice::new(b)?;
                let rows = ops::rows_per_task(n, mlp) * mlp;
                hidden
                    .par_chunks_mut(rows)
                    .for_each(|h| kernels::bias_gelu_inplace(h, &b));
            }
            None => hidden
                .par_chunks_mut(ops::rows_per_task(n, mlp) * mlp)
                .for_each(kernels::gelu_inplace),
        }
        add_bias(x, self.lin2.bias())?;
        let w2 = F32Slice::new(self.lin2.weight())?;
        let hidden = Mat::dense(&ws.big[..n * mlp], n, mlp);
        gemm::par_gemm(1.0, hidden, Mat::dense(&w2, c, mlp).t(), 1.0, x, c);
        Ok(())
    }
}

impl Neck {
    /// x (H*W, Cin) channels-last -> (Cout, H, W).
    fn forward_fast(&self, x: &[f32], h: usize, w: usize) -> Result<Tensor> {
        let n = h * w;
        let cout = self.conv1.dim(0)?;
        let mut y = vec![0f32; n * cout];
        ops::linear_into(x, n, &self.conv1, None, &mut y)?;
        let mut yn = vec![0f32; n * cout];
        LnSlices::new(&self.layer_norm1)?.apply(&y, &mut yn);
        // 3x3 conv, padding 1, as one product over (ky, kx, cin)-ordered patches
        let mut cols = vec![0f32; n * 9 * cout];
        cols.par_chunks_mut(w * 9 * cout)
            .enumerate()
            .for_each(|(r, row)| {
                for (col, patch) in row.chunks_exact_mut(9 * cout).enumerate() {
                    for (tap, dst) in patch.chunks_exact_mut(cout).enumerate() {
                        let (ry, cx) = ((r + tap / 3) as isize - 1, (col + tap % 3) as isize - 1);
                        if ry < 0 || cx < 0 || ry >= h as isize || cx >= w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = (ry as usize * w + cx as usize) * cout;
                            dst.copy_from_slice(&yn[src..src + cout]);
                        }
                    }
                }
            });
        let k = F32Slice::new(&self.conv2_taps)?;
        let a = Mat::dense(&cols, n, 9 * cout);
        gemm::par_gemm(
            1.0,
            a,
            Mat::dense(&k, cout, 9 * cout).t(),
            0.0,
            &mut y,
            cout,
        );
        LnSlices::new(&self.layer_norm2)?.apply(&y, &mut yn);
        ops::tensor(yn, (h, w, cout))?
            .permute((2, 0, 1))?
            .contiguous()
    }
}

impl ImageEncoder {
    /// The input and every weight: the fast path needs them all untracked f32 CPU tensors.
    fn fast_path_inputs<'a>(&'a self, pixels: &'a Tensor) -> Vec<&'a Tensor> {
        let mut ts = vec![
            pixels,
            &self.patch_weight,
            &self.neck.conv1,
            &self.neck.conv2_taps,
        ];
        for l in &self.layers {
            ts.extend([l.attn.qkv.weight(), l.attn.proj.weight(), l.lin1.weight()]);
            ts.extend([
                l.lin2.weight(),
                l.layer_norm1.weight(),
                l.layer_norm2.weight(),
            ]);
        }
        ts
    }

    /// The fast path of [`ImageEncoder::forward`] for one image: pixels (3, S, S) -> (C_out, g, g).
    fn forward_fast(&self, pixels: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (cin, s, _) = pixels.dims3()?;
        let p = self.cfg.patch_size;
        let (g, c) = (s / p, self.cfg.hidden_size);
        let n = g * g;
        let patches = pixels
            .reshape((cin, g, p, g, p))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?;
        let mut x = vec![0f32; n * c];
        let patches = F32Slice::new(&patches)?;
        ops::linear_into(
            &patches,
            n,
            &self.patch_weight,
            Some(&self.patch_bias),
            &mut x,
        )?;
        if trace.is_enabled() {
            trace.record("vision_patch_embed", &ops::tensor(x.clone(), (1, g, g, c))?);
        }
        if let Some(pe) = &self.pos_embed {
            let pe = F32Slice::new(pe)?;
            x.iter_mut().zip(pe.iter()).for_each(|(x, p)| *x += p);
        }
        if trace.is_enabled() {
            trace.record("vision_layer_input", &ops::tensor(x.clone(), (1, g, g, c))?);
        }
        let mut ws = Workspace {
            xn: vec![0f32; n * c],
            big: Vec::new(),
            attn: vec![0f32; n * c],
            windows: Vec::new(),
            rel_h: Vec::new(),
            rel_w: Vec::new(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            layer.forward_fast(&mut x, g, g, &mut ws)?;
            if trace.is_enabled() {
                let t = ops::tensor(x.clone(), (1, g, g, c))?;
                trace.record(format!("vision_layer{i}_output"), &t);
            }
        }
        drop(ws);
        self.neck.forward_fast(&x, g, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_vb, tracked};

    fn config(qkv_bias: bool) -> VisionConfig {
        // grid 8 with window 5: padded windows; layer 1 global
        serde_json::from_value(serde_json::json!({
            "hidden_size": 48, "output_channels": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 128, "patch_size": 16,
            "window_size": 5, "global_attn_indexes": [1], "mlp_dim": 96, "qkv_bias": qkv_bias,
        }))
        .unwrap()
    }

    #[test]
    fn fast_path_matches_candle_ops() {
        for qkv_bias in [true, false] {
            let enc = ImageEncoder::new(&config(qkv_bias), random_vb()).unwrap();
            let px = Tensor::randn(0f32, 1.0, (2, 3, 128, 128), &candle_core::Device::Cpu).unwrap();
            let fast = enc.forward(&px, &mut Trace::default()).unwrap();
            let slow = enc.forward(&tracked(&px), &mut Trace::default()).unwrap();
            assert_close(&fast, &slow.detach(), 1e-4, "image embeddings");
            let mut tr = Trace::enabled();
            let one = enc.forward(&px.narrow(0, 1, 1).unwrap(), &mut tr).unwrap();
            assert_close(&one, &fast.narrow(0, 1, 1).unwrap(), 1e-6, "batch entry");
            assert_eq!(
                tr.get("vision_layer2_output").unwrap().dims(),
                [1, 8, 8, 48]
            );
        }
    }
}
