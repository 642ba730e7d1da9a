//! Adapter and device acquisition, buffer creation within the adapter's limits, and readback.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// What the encoder runs on, for display ("vulkan (llvmpipe ...)", "webgpu (SwiftShader)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name (in browsers: the description, often empty).
    pub name: String,
    /// `vulkan`, `webgpu`, `metal`, ...
    pub backend: String,
    /// A software / fallback adapter (lavapipe, SwiftShader, WARP).
    pub is_fallback: bool,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu`, ...
    pub device_type: String,
    /// Driver name and version when the backend reports them.
    pub driver: String,
    /// The device was opened with `shader-f16` ([`wgpu::Features::SHADER_F16`]), so encoders
    /// on it may run [`crate::Precision::F16`].
    pub shader_f16: bool,
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: info.backend.to_str().to_string(),
            // wgpu maps WebGPU's `isFallbackAdapter` to DeviceType::Cpu; lavapipe is Cpu too.
            is_fallback: info.device_type == wgpu::DeviceType::Cpu,
            device_type: format!("{:?}", info.device_type),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            shader_f16: false,
        }
    }

    /// A one-line label, e.g. `webgpu (SwiftShader, fallback)`.
    pub fn label(&self) -> String {
        let name = if self.name.is_empty() {
            "unnamed adapter"
        } else {
            &self.name
        };
        let fallback = if self.is_fallback { ", fallback" } else { "" };
        format!("{} ({name}{fallback})", self.backend)
    }
}

/// A device and queue on the best available adapter. Cheap to clone; several encoders may
/// share one.
#[derive(Debug, Clone)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    info: AdapterSummary,
    binding_limit: Option<u64>,
}

impl GpuContext {
    /// Picks an adapter (a hardware one if any, else a fallback such as lavapipe or
    /// SwiftShader) and opens a device with the adapter's full limits and, where the adapter
    /// offers it, `shader-f16` (see [`AdapterSummary::shader_f16`]). `WGPU_BACKEND` (native)
    /// restricts the backends.
    pub async fn new() -> Result<Self> {
        Self::open(true).await
    }

    /// [`GpuContext::new`] without `shader-f16` even where the adapter has it: a device like
    /// SwiftShader's, on which encoders run f32 only.
    pub async fn new_f32_only() -> Result<Self> {
        Self::open(false).await
    }

    async fn open(want_f16: bool) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut tried = Vec::new();
        let mut adapter = None;
        for force_fallback_adapter in [false, true] {
            let opts = wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter,
                compatible_surface: None,
                apply_limit_buckets: false,
            };
            match instance.request_adapter(&opts).await {
                Ok(a) => {
                    adapter = Some(a);
                    break;
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        let adapter = adapter.ok_or_else(|| Error::NoAdapter(tried.join("; ")))?;
        let mut info = AdapterSummary::from_info(&adapter.get_info());
        // optional: SwiftShader has no `shader-f16`, and every kernel has an f32 form
        let features = if want_f16 {
            adapter.features() & wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("sca-webgpu"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            adapter
                .request_device(&desc)
                .await
                .map_err(|e| Error::RequestDevice {
                    adapter: info.label(),
                    msg: e.to_string(),
                })?;
        info.shader_f16 = device.features().contains(wgpu::Features::SHADER_F16);
        Ok(Self {
            device,
            queue,
            info,
            binding_limit: None,
        })
    }

    /// [`GpuContext::new`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// The adapter the device was opened on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.info
    }

    /// Caps every buffer at `bytes` below the adapter's own limits: leaves headroom, and
    /// exercises the chunked paths in tests.
    pub fn with_binding_limit(mut self, bytes: u64) -> Self {
        self.binding_limit = Some(bytes);
        self
    }

    /// The largest buffer a kernel may bind.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.device.limits();
        let adapter = l.max_buffer_size.min(l.max_storage_buffer_binding_size);
        self.binding_limit.map_or(adapter, |b| b.min(adapter))
    }

    fn check_size(&self, name: &str, bytes: u64) -> Result<()> {
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                name: name.to_string(),
                bytes,
                limit,
            });
        }
        Ok(())
    }

    /// A storage buffer holding `data`.
    pub(crate) fn storage_init(&self, name: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.check_size(name, 4 * data.len() as u64)?;
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(name),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// A read-only storage buffer of f16 values (bit patterns), padded to whole 4-byte words.
    pub(crate) fn storage_init_f16(&self, name: &str, data: &[u16]) -> Result<wgpu::Buffer> {
        let mut words = data.to_vec();
        words.resize(data.len().div_ceil(2).max(1) * 2, 0);
        self.check_size(name, 2 * words.len() as u64)?;
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(name),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            }))
    }

    /// A zeroed storage buffer of `len` f32 (at least one, bindings cannot be empty).
    pub(crate) fn storage(&self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        let bytes = 4 * len.max(1) as u64;
        self.check_size(name, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A mappable buffer to copy results into.
    pub(crate) fn readback(&self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        let bytes = 4 * len as u64;
        self.check_size(name, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding a kernel's parameters (`u32`/`f32` words).
    pub(crate) fn uniform(&self, words: &[u32]) -> wgpu::Buffer {
        // uniform structs are 16-byte aligned
        let mut w = words.to_vec();
        w.resize(words.len().div_ceil(4) * 4, 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(&w),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Reads a `MAP_READ` buffer back as f32 once the queued work is done: native polls the
    /// device until the mapping completes; the browser resolves the mapping on its event loop,
    /// so this only awaits (never blocks).
    pub(crate) async fn read_f32(&self, buf: &wgpu::Buffer) -> Result<Vec<f32>> {
        let slice = buf.slice(..);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err("waiting for the GPU", e))?;
        rx.await
            .map_err(|e| gpu_err("reading back", e))?
            .map_err(|e| gpu_err("mapping the result", e))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| gpu_err("mapping the result", e))?;
            bytemuck::pod_collect_to_vec::<u8, f32>(&view)
        };
        buf.unmap();
        Ok(out)
    }
}

pub(crate) fn gpu_err(during: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Gpu {
        during,
        msg: e.to_string(),
    }
}
