//! The SAM ViT image encoder on WebGPU: `wgpu` with hand-written WGSL compute kernels,
//! natively (Vulkan; lavapipe on machines without a GPU) and in the browser (wasm32, the
//! `webgpu` backend, SwiftShader included). All kernels are f32 (no `shader-f16` needed).
//!
//! Kernels (`src/kernels/*.wgsl`): tiled matmul with bias / exact-GELU / residual-add
//! epilogues; fused flash-style attention (online softmax, windowed and global) with the
//! decomposed relative-position bias; LayerNorm (token-wise and LayerNorm2d); im2col for the
//! patch embedding and the neck's 3x3 convolution. There is no f16 path (yet): weights from
//! f16 bundles are widened to f32 on upload.
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
pub use encoder::GpuEncoder;
pub use error::{Error, Result};
pub use weights::random_weights;
