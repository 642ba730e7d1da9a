//! The SAM ViT image encoder on WebGPU: `wgpu` with hand-written WGSL compute kernels,
//! natively (Vulkan; lavapipe on machines without a GPU) and in the browser (wasm32, the
//! `webgpu` backend, SwiftShader included). Every kernel has an f32 form (no `shader-f16`
//! needed); where the device has `shader-f16`, the weight matrices can be stored as f16
//! ([`Precision`]; [`GpuEncoder::new`] picks f16 where available, [`GpuEncoder::precision`]
//! says which).
//!
//! Kernels (`src/kernels/*.wgsl`): tiled matmul with bias / exact-GELU / residual-add
//! epilogues; fused flash-style attention (online softmax, windowed and global) with the
//! decomposed relative-position bias; LayerNorm (token-wise and LayerNorm2d); im2col for the
//! patch embedding and the neck's 3x3 convolution. Activations and accumulation are always
//! f32. [`Precision::F16`] stores the matmul weights (qkv, proj, MLP, patch embedding, neck
//! convolutions) as f16, half their memory and bandwidth, read by an `enable f16;` variant of
//! the same matmul source; [`Precision::F32`] widens f16 bundles' weights to f32 on upload.
//! Accuracy against the f32 reference: F32 within 1e-3, F16 within 2e-3 of the max output
//! magnitude (the project's f16-export criterion).
//!
//! Weights: a `HashMap<String, candle_core::Tensor>` with the official `vision_encoder.*` keys
//! ([`sca_core::bundle::Bundle::encoder_tensors`], or `candle_core::safetensors::load` of a
//! checkpoint), checked against the config with errors naming the key and both shapes.
//!
//! Setup without a GPU (Debian/Ubuntu): `apt-get install -y mesa-vulkan-drivers` (lavapipe).
//! `WGPU_BACKEND=vulkan` is optional; Mesa prints `XDG_RUNTIME_DIR is invalid` unless that
//! variable points at a 0700 directory (harmless; the tests set one).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bundle = sca_core::bundle::Bundle::from_dir("models/sca-shapes".as_ref())?;
//! let cfg = bundle.config()?.vision_config;
//! let enc = sca_webgpu::GpuEncoder::new_blocking(&cfg, &bundle.encoder_tensors()?)?;
//! let emb = enc.embed_blocking(&vec![0.0; 3 * cfg.image_size * cfg.image_size])?;
//! # Ok(()) }
//! ```

mod context;
mod encoder;
mod error;
mod kernels;
mod weights;

pub use context::{AdapterSummary, GpuContext};
pub use encoder::{GpuEncoder, Precision};
pub use error::{Error, Result};
pub use weights::random_weights;
