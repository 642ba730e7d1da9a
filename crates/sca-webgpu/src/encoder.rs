//! The SAM ViT image encoder as a fixed sequence of kernel dispatches: weights and activation
//! buffers are allocated and every dispatch's bind group built once, in [`GpuEncoder::new`];
//! [`GpuEncoder::embed`] uploads pixels, records the steps and reads the embedding back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use sca_core::config::VisionConfig;

use crate::context::{gpu_err, AdapterSummary, GpuContext};
use crate::error::{Error, Result};
use crate::kernels::{self, AttnGeom, Epilogue, Kernels, MatmulDims, Step};
use crate::weights::{conv3x3_taps, to_f16, Weights};

/// The storage precision of the encoder's weight matrices (the matmul weights of qkv, proj and
/// the MLP, the patch embedding and the neck convolutions). Activations, biases, norms,
/// position tables and accumulation are f32 in every precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// [`Precision::F16`] where the device has `shader-f16`, else [`Precision::F32`]. The
    /// default of [`GpuEncoder::new`] and [`GpuEncoder::with_context`].
    #[default]
    Auto,
    /// f32 weights: runs everywhere (SwiftShader included); the reference-exact path (within
    /// 1e-3 of the max output magnitude).
    F32,
    /// f16 weights (half the memory and bandwidth), read with `enable f16;` and widened to f32
    /// in the matmul: within 2e-3 of the max output magnitude. Needs `shader-f16`
    /// ([`crate::AdapterSummary::shader_f16`]); without it, [`Error::MissingFeature`].
    F16,
}

impl Precision {
    /// `auto`, `f32` or `f16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// What this asks for on `ctx`: F32 or F16, never Auto.
    fn resolve(self, ctx: &GpuContext) -> Result<Precision> {
        let f16 = ctx.adapter().shader_f16;
        match self {
            Precision::Auto if f16 => Ok(Precision::F16),
            Precision::Auto | Precision::F32 => Ok(Precision::F32),
            Precision::F16 if f16 => Ok(Precision::F16),
            Precision::F16 => Err(Error::MissingFeature {
                adapter: ctx.adapter().label(),
            }),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SAM ViT image encoder (`vision_encoder.*`) on WebGPU.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sca_core::bundle::Bundle;
/// use sca_webgpu::GpuEncoder;
///
/// let bundle = Bundle::from_dir("models/sca-shapes".as_ref())?;
/// let cfg = bundle.config()?.vision_config;
/// let enc = GpuEncoder::new_blocking(&cfg, &bundle.encoder_tensors()?)?;
/// // e.g. "vulkan (llvmpipe ..., fallback), f16"
/// println!("running on {}, {}", enc.adapter().label(), enc.precision());
/// let s = cfg.image_size;
/// let pixels = vec![0f32; 3 * s * s]; // preprocessed (3, S, S), see sca_core::image
/// let emb = enc.embed_blocking(&pixels)?; // (C_out, S/16, S/16) row-major
/// assert_eq!(emb.len(), cfg.output_channels * (s / 16) * (s / 16));
/// # Ok(()) }
/// ```
///
/// In the browser (wasm32) use the async forms: `GpuEncoder::new(&cfg, &weights).await?` and
/// `enc.embed(&pixels).await?`.
#[derive(Debug)]
pub struct GpuEncoder {
    ctx: GpuContext,
    cfg: VisionConfig,
    precision: Precision,
    steps: Vec<Step>,
    pixels: wgpu::Buffer,
    pos_embed: Option<wgpu::Buffer>,
    x: wgpu::Buffer,
    out: wgpu::Buffer,
    readback: wgpu::Buffer,
    out_len: usize,
    busy: AtomicBool,
}

/// Per-layer weights on the device.
struct LayerBuffers {
    ln1: (wgpu::Buffer, wgpu::Buffer),
    qkv_w: wgpu::Buffer,
    qkv_b: wgpu::Buffer,
    has_qkv_bias: bool,
    proj_w: wgpu::Buffer,
    proj_b: wgpu::Buffer,
    rel: Option<(wgpu::Buffer, wgpu::Buffer)>,
    ln2: (wgpu::Buffer, wgpu::Buffer),
    lin1_w: wgpu::Buffer,
    lin1_b: wgpu::Buffer,
    lin2_w: wgpu::Buffer,
    lin2_b: wgpu::Buffer,
    /// Window side; the grid side for global attention.
    ws: usize,
}

fn check_config(cfg: &VisionConfig) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        ));
    }
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return bad(format!(
            "image_size {} is not a multiple of patch_size {}",
            cfg.image_size, cfg.patch_size
        ));
    }
    if cfg.hidden_act != "gelu" {
        return bad(format!("hidden_act `{}` (only `gelu`)", cfg.hidden_act));
    }
    let all_global = (0..cfg.num_hidden_layers).all(|i| cfg.global_attn_indexes.contains(&i));
    if cfg.window_size == 0 && !all_global {
        return bad("window_size 0 with windowed layers".into());
    }
    Ok(())
}

impl GpuEncoder {
    /// Opens a device on the best adapter ([`GpuContext::new`]) and uploads the encoder with
    /// [`Precision::Auto`]: f16 weights where the device has `shader-f16`, else f32 (see
    /// [`GpuEncoder::precision`]).
    ///
    /// `weights` holds the official keys (`vision_encoder.patch_embed.projection.weight`, ...)
    /// as CPU tensors of any float dtype: [`sca_core::bundle::Bundle::encoder_tensors`], or a
    /// checkpoint's `model.safetensors` via `candle_core::safetensors::load` (other keys are
    /// ignored).
    pub async fn new(cfg: &VisionConfig, weights: &HashMap<String, Tensor>) -> Result<Self> {
        Self::new_with(cfg, weights, Precision::Auto).await
    }

    /// [`GpuEncoder::new`] with the weight precision chosen: [`Precision::F16`] on a device
    /// without `shader-f16` is an [`Error::MissingFeature`].
    pub async fn new_with(
        cfg: &VisionConfig,
        weights: &HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        let ctx = match precision {
            Precision::F32 => GpuContext::new_f32_only().await?,
            Precision::Auto | Precision::F16 => GpuContext::new().await?,
        };
        Self::with_context_and_precision(&ctx, cfg, weights, precision)
    }

    /// [`GpuEncoder::new`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(cfg: &VisionConfig, weights: &HashMap<String, Tensor>) -> Result<Self> {
        pollster::block_on(Self::new(cfg, weights))
    }

    /// [`GpuEncoder::new_with`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking_with(
        cfg: &VisionConfig,
        weights: &HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        pollster::block_on(Self::new_with(cfg, weights, precision))
    }

    /// Uploads the encoder to an existing device, [`Precision::Auto`].
    pub fn with_context(
        ctx: &GpuContext,
        cfg: &VisionConfig,
        weights: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        Self::with_context_and_precision(ctx, cfg, weights, Precision::Auto)
    }

    /// Uploads the encoder to an existing device with the weight precision chosen.
    pub fn with_context_and_precision(
        ctx: &GpuContext,
        cfg: &VisionConfig,
        weights: &HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        check_config(cfg)?;
        let precision = precision.resolve(ctx)?;
        // Validation errors of pipeline and bind group creation surface as `Error::Gpu`.
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::build(ctx, cfg, &Weights::new(weights), precision);
        let err = pop_now(scope);
        let enc = built?;
        if let Some(e) = err {
            return Err(gpu_err("building the encoder", e));
        }
        Ok(enc)
    }

    fn build(
        ctx: &GpuContext,
        cfg: &VisionConfig,
        w: &Weights<'_>,
        precision: Precision,
    ) -> Result<Self> {
        let (c, heads, p, cin) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.patch_size,
            cfg.num_channels,
        );
        let (s, g, cout, mlp) = (
            cfg.image_size,
            cfg.grid_size(),
            cfg.output_channels,
            cfg.mlp_dim,
        );
        let (n, hd, kp) = (g * g, c / heads, cin * p * p);
        let eps = cfg.layer_norm_eps;
        let f16 = precision == Precision::F16;
        let k = Kernels::new(ctx, hd, f16)?;

        // weights: the matmuls' `B` operands in the kernels' weight type, the rest f32
        let up = |name: &str, shape: &[usize]| -> Result<wgpu::Buffer> {
            ctx.storage_init(name, &w.get(name, shape)?)
        };
        let matrix = |name: &str, v: Vec<f32>| -> Result<wgpu::Buffer> {
            if f16 {
                ctx.storage_init_f16(name, &to_f16(&v, name)?)
            } else {
                ctx.storage_init(name, &v)
            }
        };
        let up_matrix = |name: &str, shape: &[usize]| -> Result<wgpu::Buffer> {
            matrix(name, w.get(name, shape)?)
        };
        let patch_w = up_matrix("patch_embed.projection.weight", &[c, cin, p, p])?;
        let patch_b = up("patch_embed.projection.bias", &[c])?;
        let pos_embed = if cfg.use_abs_pos {
            Some(up("pos_embed", &[1, g, g, c])?)
        } else {
            None
        };
        let ln = |pre: &str, dim: usize| -> Result<(wgpu::Buffer, wgpu::Buffer)> {
            Ok((
                up(&format!("{pre}.weight"), &[dim])?,
                up(&format!("{pre}.bias"), &[dim])?,
            ))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("layers.{i}");
            let ws = if cfg.global_attn_indexes.contains(&i) {
                g
            } else {
                cfg.window_size
            };
            let has_qkv_bias = cfg.qkv_bias;
            let qkv_b = if has_qkv_bias {
                up(&format!("{l}.attn.qkv.bias"), &[3 * c])?
            } else {
                ctx.storage("qkv zero bias", 3 * c)?
            };
            let rel = if cfg.use_rel_pos {
                let t = |which: &str| -> Result<wgpu::Buffer> {
                    let name = format!("{l}.attn.rel_pos_{which}");
                    ctx.storage_init(&name, &w.rel_pos(&name, 2 * ws - 1, hd)?)
                };
                Some((t("h")?, t("w")?))
            } else {
                None
            };
            layers.push(LayerBuffers {
                ln1: ln(&format!("{l}.layer_norm1"), c)?,
                qkv_w: up_matrix(&format!("{l}.attn.qkv.weight"), &[3 * c, c])?,
                qkv_b,
                has_qkv_bias,
                proj_w: up_matrix(&format!("{l}.attn.proj.weight"), &[c, c])?,
                proj_b: up(&format!("{l}.attn.proj.bias"), &[c])?,
                rel,
                ln2: ln(&format!("{l}.layer_norm2"), c)?,
                lin1_w: up_matrix(&format!("{l}.mlp.lin1.weight"), &[mlp, c])?,
                lin1_b: up(&format!("{l}.mlp.lin1.bias"), &[mlp])?,
                lin2_w: up_matrix(&format!("{l}.mlp.lin2.weight"), &[c, mlp])?,
                lin2_b: up(&format!("{l}.mlp.lin2.bias"), &[c])?,
                ws,
            });
        }
        let conv1 = up_matrix("neck.conv1.weight", &[cout, c, 1, 1])?;
        let neck_ln1 = ln("neck.layer_norm1", cout)?;
        let conv2 = matrix(
            "neck.conv2.weight",
            conv3x3_taps(
                &w.get("neck.conv2.weight", &[cout, cout, 3, 3])?,
                cout,
                cout,
            ),
        )?;
        let neck_ln2 = ln("neck.layer_norm2", cout)?;
        if w.has("neck.conv1.bias") || w.has("neck.conv2.bias") {
            return Err(Error::Config(
                "the neck convolutions have no bias in SAM".into(),
            ));
        }

        // activations
        let geoms: Vec<AttnGeom> = layers
            .iter()
            .map(|l| AttnGeom {
                grid: g,
                ws: l.ws,
                heads,
                c,
            })
            .collect();
        let rel_len = if cfg.use_rel_pos {
            geoms.iter().map(|g| g.rel_len()).max().unwrap_or(1)
        } else {
            1
        };
        // The MLP hidden state goes in row chunks when (n, mlp) exceeds a binding.
        let max_rows = (ctx.max_binding_bytes() / (4 * mlp as u64)) as usize / 64 * 64;
        let mlp_rows = n.min(max_rows);
        if mlp_rows == 0 {
            return Err(Error::BufferTooLarge {
                name: "mlp hidden".into(),
                bytes: 4 * 64 * mlp as u64,
                limit: ctx.max_binding_bytes(),
            });
        }
        let pixels = ctx.storage("pixel_values", cin * s * s)?;
        let patches = ctx.storage("patches", n * kp)?;
        let x = ctx.storage("x", n * c)?;
        let xn = ctx.storage("x normed", n * c)?;
        let qkv = ctx.storage("qkv", n * 3 * c)?;
        let attn = ctx.storage("attention out", n * c)?;
        let rel_h = ctx.storage("rel_h terms", rel_len)?;
        let rel_w = ctx.storage("rel_w terms", rel_len)?;
        let hidden = ctx.storage("mlp hidden", mlp_rows * mlp)?;
        let y = ctx.storage("neck y", n * cout)?;
        let yn = ctx.storage("neck y normed", n * cout)?;
        let cols = ctx.storage("neck im2col", n * 9 * cout)?;
        let out = ctx.storage("image embeddings", n * cout)?;
        let readback = ctx.readback("readback", n * cout)?;

        // the dispatch sequence
        let dims = |m, nn, kk| MatmulDims {
            m,
            n: nn,
            k: kk,
            a_off: 0,
            c_off: 0,
        };
        let mut steps = vec![k.patches(&pixels, &patches, s, p, cin)?];
        // x holds pos_embed (copied in by `embed`) and the patch projection accumulates onto it
        steps.extend(k.matmul(
            &patches,
            &patch_w,
            &x,
            dims(n, c, kp),
            Epilogue {
                bias: Some(&patch_b),
                accumulate: true,
                ..Default::default()
            },
        )?);
        for (l, geom) in layers.iter().zip(&geoms) {
            steps.push(k.layernorm(&x, &l.ln1.0, &l.ln1.1, &xn, n, c, eps, false)?);
            steps.extend(k.matmul(
                &xn,
                &l.qkv_w,
                &qkv,
                dims(n, 3 * c, c),
                Epilogue {
                    bias: l.has_qkv_bias.then_some(&l.qkv_b),
                    ..Default::default()
                },
            )?);
            let rel = match &l.rel {
                Some((th, tw)) => {
                    steps.push(k.relpos(&qkv, th, tw, &rel_h, &rel_w, *geom)?);
                    Some((&rel_h, &rel_w))
                }
                None => None,
            };
            steps.push(k.attention(&qkv, &l.qkv_b, rel, &attn, *geom)?);
            steps.extend(k.matmul(
                &attn,
                &l.proj_w,
                &x,
                dims(n, c, c),
                Epilogue {
                    bias: Some(&l.proj_b),
                    accumulate: true,
                    ..Default::default()
                },
            )?);
            steps.push(k.layernorm(&x, &l.ln2.0, &l.ln2.1, &xn, n, c, eps, false)?);
            let mut r0 = 0;
            while r0 < n {
                let rows = mlp_rows.min(n - r0);
                let up_dims = MatmulDims {
                    a_off: r0 * c,
                    ..dims(rows, mlp, c)
                };
                steps.extend(k.matmul(
                    &xn,
                    &l.lin1_w,
                    &hidden,
                    up_dims,
                    Epilogue {
                        bias: Some(&l.lin1_b),
                        gelu: true,
                        ..Default::default()
                    },
                )?);
                let down_dims = MatmulDims {
                    c_off: r0 * c,
                    ..dims(rows, c, mlp)
                };
                steps.extend(k.matmul(
                    &hidden,
                    &l.lin2_w,
                    &x,
                    down_dims,
                    Epilogue {
                        bias: Some(&l.lin2_b),
                        accumulate: true,
                        ..Default::default()
                    },
                )?);
                r0 += rows;
            }
        }
        // neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, written NCHW
        steps.extend(k.matmul(&x, &conv1, &y, dims(n, cout, c), Epilogue::default())?);
        steps.push(k.layernorm(&y, &neck_ln1.0, &neck_ln1.1, &yn, n, cout, eps, false)?);
        steps.push(k.conv3x3(&yn, &cols, g, g, cout)?);
        steps.extend(k.matmul(
            &cols,
            &conv2,
            &y,
            dims(n, cout, 9 * cout),
            Epilogue::default(),
        )?);
        steps.push(k.layernorm(&y, &neck_ln2.0, &neck_ln2.1, &out, n, cout, eps, true)?);

        Ok(Self {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            precision,
            steps,
            pixels,
            pos_embed,
            x,
            out,
            readback,
            out_len: n * cout,
            busy: AtomicBool::new(false),
        })
    }

    /// The adapter the encoder runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        self.ctx.adapter()
    }

    /// The weight precision in use: [`Precision::F32`] or [`Precision::F16`] (never `Auto`),
    /// e.g. to show "webgpu, f16".
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device context (to share with other GPU work).
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Output shape (C_out, g, g).
    pub fn output_shape(&self) -> (usize, usize, usize) {
        let g = self.cfg.grid_size();
        (self.cfg.output_channels, g, g)
    }

    /// Embeds one preprocessed image: `pixel_values` (3, S, S) row-major (normalized and
    /// padded as in `sca_core::image`) -> (C_out, S/16, S/16) row-major.
    pub async fn embed(&self, pixel_values: &[f32]) -> Result<Vec<f32>> {
        let s = self.cfg.image_size;
        let expected = self.cfg.num_channels * s * s;
        if pixel_values.len() != expected {
            return Err(Error::Input {
                got: pixel_values.len(),
                expected,
                size: s,
            });
        }
        let _busy = Busy::acquire(&self.busy)?;
        let (device, queue) = (&self.ctx.device, &self.ctx.queue);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        queue.write_buffer(&self.pixels, 0, bytemuck::cast_slice(pixel_values));
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("sca-webgpu encoder"),
        });
        match &self.pos_embed {
            Some(pe) => enc.copy_buffer_to_buffer(pe, 0, &self.x, 0, pe.size()),
            None => enc.clear_buffer(&self.x, 0, None),
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("vit"),
                timestamp_writes: None,
            });
            kernels::record(&mut pass, &self.steps);
        }
        enc.copy_buffer_to_buffer(&self.out, 0, &self.readback, 0, 4 * self.out_len as u64);
        queue.submit([enc.finish()]);
        if let Some(e) = validation.pop().await {
            return Err(gpu_err("running the encoder", e));
        }
        if let Some(e) = oom.pop().await {
            return Err(gpu_err("running the encoder", e));
        }
        self.ctx.read_f32(&self.readback).await
    }

    /// [`GpuEncoder::embed`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_blocking(&self, pixel_values: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.embed(pixel_values))
    }
}

/// Pops an error scope whose result is already known (object creation is validated
/// synchronously by wgpu-core; the browser answers on its event loop, so there it is dropped
/// and errors reach the device's uncaptured-error handler instead).
fn pop_now(scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(scope.pop())
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(scope);
        None
    }
}

/// Marks the encoder's buffers in use for one `embed`.
struct Busy<'a>(&'a AtomicBool);

impl<'a> Busy<'a> {
    fn acquire(flag: &'a AtomicBool) -> Result<Self> {
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::Busy)?;
        Ok(Self(flag))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
