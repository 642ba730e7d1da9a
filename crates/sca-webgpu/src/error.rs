//! Errors of the WebGPU encoder.

/// Everything that can go wrong building or running a [`crate::GpuEncoder`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No WebGPU / Vulkan adapter at all.
    #[error(
        "no GPU adapter found ({0}); on Linux without a GPU install the Vulkan CPU driver \
         lavapipe: `apt-get install -y mesa-vulkan-drivers`; in a browser, WebGPU must be \
         enabled (Chromium: --enable-unsafe-webgpu)"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("cannot create a device on adapter `{adapter}`: {msg}")]
    RequestDevice { adapter: String, msg: String },
    /// A weight the config asks for is absent.
    #[error("missing weight `{name}`")]
    MissingWeight { name: String },
    /// A weight has the wrong shape.
    #[error("weight `{name}` has shape {got:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A weight could not be read as f32.
    #[error("weight `{name}`: {msg}")]
    WeightData { name: String, msg: String },
    /// The config is not an encoder this crate can run.
    #[error("unsupported vision config: {0}")]
    Config(String),
    /// A buffer would exceed the adapter's limits.
    #[error(
        "buffer `{name}` needs {bytes} bytes, the adapter allows {limit} \
         (max_buffer_size / max_storage_buffer_binding_size)"
    )]
    BufferTooLarge {
        name: String,
        bytes: u64,
        limit: u64,
    },
    /// [`crate::Precision::F16`] was asked for on a device without `shader-f16`.
    #[error(
        "f16 precision needs the WebGPU feature `shader-f16` (wgpu::Features::SHADER_F16), \
         which the device on `{adapter}` lacks; use Precision::Auto or Precision::F32"
    )]
    MissingFeature { adapter: String },
    /// The input has the wrong number of values.
    #[error("pixel_values has {got} values, expected {expected} (3 x {size} x {size})")]
    Input {
        got: usize,
        expected: usize,
        size: usize,
    },
    /// `embed` was called while another `embed` on the same encoder was in flight.
    #[error("the encoder is busy with another image")]
    Busy,
    /// A validation / out-of-memory error reported by wgpu, or a failed readback.
    #[error("GPU error while {during}: {msg}")]
    Gpu { during: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
