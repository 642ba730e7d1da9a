//! GPT-2 language model (HF `GPT2LMHeadModel`): Conv1D weights stored (in, out), pre-LN blocks,
//! learned positions, head tied to `wte` unless the checkpoint carries `lm_head.weight`, KV cache.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::config::Gpt2Config;
use crate::dropout::{Dropout, Site};
use crate::ops::{self, QLinear};
use crate::trace::Trace;

struct Block {
    ln_1: LayerNorm,
    c_attn: QLinear,
    c_proj: QLinear,
    ln_2: LayerNorm,
    c_fc: QLinear,
    mlp_proj: QLinear,
    n_head: usize,
}

impl Block {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.n_embd;
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: candle_nn::layer_norm(d, eps, vb.pp("ln_1"))?,
            c_attn: QLinear::conv1d(d, 3 * d, vb.pp("attn").pp("c_attn"))?,
            c_proj: QLinear::conv1d(d, d, vb.pp("attn").pp("c_proj"))?,
            ln_2: candle_nn::layer_norm(d, eps, vb.pp("ln_2"))?,
            c_fc: QLinear::conv1d(d, cfg.inner_dim(), vb.pp("mlp").pp("c_fc"))?,
            mlp_proj: QLinear::conv1d(cfg.inner_dim(), d, vb.pp("mlp").pp("c_proj"))?,
            n_head: cfg.n_head,
        })
    }

    /// x (B,T,D); mask (B|1,1,T,Tk) additive; cache (k,v) each (B,nh,Tpast,hd); `dropout`
    /// (training) applies HF's `attn_dropout`, `resid_dropout` and the MLP's `dropout` of
    /// layer `layer`.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        layer: usize,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (nh, hd) = (self.n_head, d / self.n_head);
        let qkv = self
            .c_attn
            .forward(&ops::layer_norm(x, &self.ln_1)?)?
            .reshape((b, t, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?; // (3,B,nh,T,hd)
        let q = qkv.get(0)?;
        let mut k = qkv.get(1)?;
        let mut v = qkv.get(2)?;
        if let Some((pk, pv)) = cache.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *cache = Some((k.clone(), v.clone()));
        let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
        let mut att = ops::softmax_last_dim(&att)?;
        if let Some(d) = dropout {
            att = d.apply(&att, Site::Attention(layer))?;
        }
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let mut y = self.c_proj.forward(&y)?;
        if let Some(d) = dropout {
            y = d.apply(&y, Site::AttentionOutput(layer))?;
        }
        let x = (x + y)?;
        let h = ops::gelu_tanh(&self.c_fc.forward(&ops::layer_norm(&x, &self.ln_2)?)?)?; // gelu_new
        let mut h = self.mlp_proj.forward(&h)?;
        if let Some(d) = dropout {
            h = d.apply(&h, Site::MlpOutput(layer))?;
        }
        x + h
    }
}

/// Per-layer key/value cache of one generation (B sequences).
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per-sequence key padding (1 = attend), grown as tokens are appended; None = all ones.
    key_mask: Option<Tensor>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
            key_mask: None,
        }
    }

    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps/reorders sequences (beam search): new sequence i is old `idx[i]`.
    pub fn select(&mut self, idx: &[u32]) -> Result<()> {
        let Some(Some((k0, _))) = self.layers.first() else {
            return Ok(());
        };
        let idx = Tensor::from_slice(idx, idx.len(), k0.device())?;
        for l in self.layers.iter_mut().flatten() {
            *l = (l.0.index_select(&idx, 0)?, l.1.index_select(&idx, 0)?);
        }
        if let Some(m) = self.key_mask.as_mut() {
            *m = m.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// GPT-2 with its LM head. `vb` is at the `GPT2LMHeadModel` level (`transformer.*`, `lm_head.*`).
pub struct Gpt2 {
    wte: TokenEmbedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Head,
    cfg: Gpt2Config,
    device: Device,
}

/// `wte`: dense, or quantized (rows dequantized on lookup) in a quantized bundle.
enum TokenEmbedding {
    Dense(Embedding),
    Quant(Arc<QTensor>),
}

/// The LM head (V, D): dense (the exact path), or quantized.
enum Head {
    Dense(Tensor),
    Quant(QLinear),
}

impl Gpt2 {
    pub fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let t = vb.pp("transformer");
        let d = cfg.n_embd;
        let wte_key = format!("{}.weight", t.pp("wte").prefix());
        let wte = match ops::qlinear::quantized(&wte_key) {
            Some(q) => {
                if q.shape().dims() != [cfg.vocab_size, d] {
                    candle_core::bail!(
                        "quantized weight `{wte_key}` has shape {:?}, expected [{}, {d}]",
                        q.shape().dims(),
                        cfg.vocab_size
                    )
                }
                TokenEmbedding::Quant(q)
            }
            None => TokenEmbedding::Dense(candle_nn::embedding(cfg.vocab_size, d, t.pp("wte"))?),
        };
        let wpe = candle_nn::embedding(cfg.n_positions, d, t.pp("wpe"))?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, t.pp("h").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = candle_nn::layer_norm(d, cfg.layer_norm_epsilon, t.pp("ln_f"))?;
        let head_key = format!("{}.weight", vb.pp("lm_head").prefix());
        // A save_pretrained safetensors file (and a bundle) omits the tied head: use wte.
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Head::Dense(vb.pp("lm_head").get((cfg.vocab_size, d), "weight")?)
        } else if let Some(q) = ops::qlinear::quantized(&head_key) {
            Head::Quant(QLinear::from_quantized(q, None)?)
        } else {
            match &wte {
                TokenEmbedding::Dense(e) => Head::Dense(e.embeddings().clone()),
                TokenEmbedding::Quant(q) => Head::Quant(QLinear::from_quantized(q.clone(), None)?),
            }
        };
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            cfg: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer)
    }

    /// Token embeddings `wte[ids]` (no positions): ids (B,T) -> (B,T,D).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.wte {
            TokenEmbedding::Dense(e) => e.forward(ids),
            TokenEmbedding::Quant(q) => q.embedding(ids),
        }
    }

    /// Runs `embeds` (B,T,D) after what `cache` holds; positions continue from the cache length.
    /// `attention_mask` (B, Tpast+T) with 1 = real token, 0 = padding (None = all real).
    /// Returns the final hidden states (B,T,D) after `ln_f`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
        trace_prefix: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.len();
        let dev = embeds.device();
        if past + t > self.cfg.n_positions {
            candle_core::bail!(
                "sequence of {} tokens exceeds GPT-2's n_positions {}",
                past + t,
                self.cfg.n_positions
            )
        }
        let pos = Tensor::arange(past as u32, (past + t) as u32, dev)?;
        let mut x = embeds.broadcast_add(&self.wpe.forward(&pos)?)?;
        trace.record(format!("{trace_prefix}embeddings"), &x);
        let mask = attention_bias(b, t, past, attention_mask, dev)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, &mask, &mut cache.layers[i], i, None)?;
            if trace.is_enabled() {
                trace.record(format!("{trace_prefix}block{i}_output"), &x);
            }
        }
        let h = ops::layer_norm(&x, &self.ln_f)?;
        trace.record(format!("{trace_prefix}last_hidden_state"), &h);
        Ok(h)
    }

    /// The training forward pass over whole sequences `embeds` (B,T,D) (positions 0..T, no
    /// cache): differentiable with respect to the inputs and every tracked weight, with HF's
    /// dropouts (`embd_pdrop` on the embeddings, `attn_pdrop` on the attention probabilities,
    /// `resid_pdrop` on both residual branches) when `dropout` is given — the official frozen
    /// LM runs in train mode. Returns the hidden states after `ln_f`; equal to
    /// [`Gpt2::forward_embeds`] from an empty cache when `dropout` is `None`.
    ///
    /// ```
    /// # use candle_core::{Device, Tensor};
    /// # let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &Device::Cpu);
    /// # let cfg: sca_core::config::Gpt2Config = serde_json::from_str(
    /// #     r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 4, "n_layer": 1, "n_head": 2}"#).unwrap();
    /// let lm = sca_core::gpt2::Gpt2::new(&cfg, vb)?;
    /// let x = Tensor::ones((2, 3, 4), candle_core::DType::F32, &Device::Cpu)?;
    /// let d = sca_core::dropout::Dropout { seed: 0, embd: 0.1, attn: 0.1, resid: 0.1, rows: vec![0, 1] };
    /// let h = lm.forward_train(&x, None, Some(&d))?;
    /// assert_eq!(h.dims(), &[2, 3, 4]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn forward_train(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let dev = embeds.device();
        if t > self.cfg.n_positions {
            candle_core::bail!(
                "sequence of {t} tokens exceeds GPT-2's n_positions {}",
                self.cfg.n_positions
            )
        }
        let pos = Tensor::arange(0u32, t as u32, dev)?;
        let mut x = embeds.broadcast_add(&self.wpe.forward(&pos)?)?;
        if let Some(d) = dropout {
            x = d.apply(&x, Site::Embeddings)?;
        }
        let mask = attention_bias(b, t, 0, attention_mask, dev)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, &mask, &mut None, i, dropout)?;
        }
        ops::layer_norm(&x, &self.ln_f)
    }

    /// Hidden states (..., D) -> logits (..., V).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = dims[dims.len() - 1];
        let n = hidden.elem_count() / d;
        let h = hidden.reshape((n, d))?;
        let y = match &self.lm_head {
            Head::Dense(w) => h.matmul(&w.t()?)?,
            Head::Quant(l) => l.forward(&h)?,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.cfg.vocab_size;
        y.reshape(out)
    }

    /// Logits of the last position only: hidden (B,T,D) -> (B,V).
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)
    }
}

/// Additive attention bias: causal (1,1,T,Tk) plus key padding (B,1,1,Tk) from
/// `attention_mask` (B, Tk) with 1 = real, for T new tokens after `past` cached ones.
fn attention_bias(
    b: usize,
    t: usize,
    past: usize,
    attention_mask: Option<&Tensor>,
    dev: &Device,
) -> Result<Tensor> {
    let tk = past + t;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mut mask = Tensor::from_vec(causal, (1, 1, t, tk), dev)?;
    if let Some(am) = attention_mask {
        let pad = am
            .to_dtype(DType::F32)?
            .affine(1.0, -1.0)? // 0 for real, -1 for padding
            .reshape((b, 1, 1, tk))?;
        let pad = pad.clamp(-1.0f32, 0.0f32)?.affine(1e30, 0.0)?; // -1e30 for padding
        mask = mask.broadcast_add(&pad)?;
    }
    Ok(mask)
}

/// Index of the maximum of each row (first one on ties, as torch.argmax): (B,V) -> B ids.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
