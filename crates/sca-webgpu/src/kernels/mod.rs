//! The WGSL kernels (one file each, compiled once per device) and builders for their
//! dispatches. A [`Step`] is one dispatch with its parameters baked into a bind group, so an
//! encoder call only records prebuilt steps.

use std::borrow::Cow;

use crate::context::GpuContext;
use crate::error::{Error, Result};

const GELU: &str = include_str!("gelu.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");
const LAYERNORM: &str = include_str!("layernorm.wgsl");
const IM2COL: &str = include_str!("im2col.wgsl");
const RELPOS: &str = include_str!("relpos.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");

/// The matmul's weight-type line, and its f16 form.
const MATMUL_W_F32: &str = "alias W = f32;";
const MATMUL_W_F16: &str = "enable f16;\nalias W = f16;";

/// The matmul kernel with weights (its `B` operand) in f16 or f32.
fn matmul_source(f16_weights: bool) -> String {
    debug_assert!(MATMUL.contains(MATMUL_W_F32));
    let src = MATMUL.replace("//INCLUDE gelu", GELU);
    if f16_weights {
        src.replace(MATMUL_W_F32, MATMUL_W_F16)
    } else {
        src
    }
}

/// Output tile of the matmul kernel (rows and columns).
const MM_TILE: u32 = 64;
/// Invocations per workgroup of the flat (elementwise / gather) kernels.
const FLAT_WG: u32 = 256;
/// Queries per attention workgroup.
const ATTN_BQ: u32 = 64;

/// One recorded dispatch.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// Records `steps` into one compute pass (wgpu orders dependent dispatches within a pass).
pub(crate) fn record(pass: &mut wgpu::ComputePass<'_>, steps: &[Step]) {
    for s in steps {
        pass.set_pipeline(&s.pipeline);
        pass.set_bind_group(0, &s.bind_group, &[]);
        let [x, y, z] = s.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Operand layout of one matmul `C[m, n] (+)= A[m, k] · B[n, k]ᵀ`, offsets in elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatmulDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_off: usize,
    pub c_off: usize,
}

/// Matmul epilogue: `C = [C +] gelu?(acc [+ bias])`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a wgpu::Buffer>,
    pub gelu: bool,
    pub accumulate: bool,
}

/// Geometry of one attention layer: a `grid x grid` token map cut into `ws x ws` windows
/// (global attention: one window, `ws = grid`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnGeom {
    pub grid: usize,
    pub ws: usize,
    pub heads: usize,
    pub c: usize,
}

impl AttnGeom {
    /// Windows per row of the (padded) grid.
    pub fn per_row(&self) -> usize {
        self.grid.div_ceil(self.ws)
    }
    pub fn windows(&self) -> usize {
        self.per_row() * self.per_row()
    }
    /// Length of each relative-position term buffer.
    pub fn rel_len(&self) -> usize {
        self.heads * self.windows() * self.ws * self.ws * self.ws
    }
}

/// The compiled kernels of one device.
#[derive(Debug)]
pub(crate) struct Kernels {
    ctx: GpuContext,
    matmul: wgpu::ComputePipeline,
    layernorm: wgpu::ComputePipeline,
    patches: wgpu::ComputePipeline,
    conv3x3: wgpu::ComputePipeline,
    relpos: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
    /// Bound where a kernel's optional input is absent.
    dummy: wgpu::Buffer,
    max_wg: u32,
}

fn pipeline(ctx: &GpuContext, name: &str, src: String, entry: &str) -> wgpu::ComputePipeline {
    let module = ctx
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
        });
    ctx.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
}

/// Keys per attention tile: as many as fit workgroup memory (K and V tiles), at most 32.
fn attention_bk(head_dim: usize, wg_storage: u32) -> Option<usize> {
    let mut bk = 32;
    while bk > 0 && 2 * bk * head_dim * 4 > wg_storage as usize {
        bk /= 2;
    }
    (bk > 0).then_some(bk)
}

impl Kernels {
    /// Compiles every kernel; the attention kernel is specialised to `head_dim`, the matmul to
    /// f16 weights (`f16_weights`, on a device with `shader-f16`) or f32 ones.
    pub fn new(ctx: &GpuContext, head_dim: usize, f16_weights: bool) -> Result<Self> {
        let limits = ctx.device.limits();
        let bk =
            attention_bk(head_dim, limits.max_compute_workgroup_storage_size).ok_or_else(|| {
                Error::Config(format!(
                    "head dim {head_dim} does not fit the adapter's {} bytes of workgroup memory",
                    limits.max_compute_workgroup_storage_size
                ))
            })?;
        let attention_src = ATTENTION
            .replace("{{HD}}", &head_dim.to_string())
            .replace("{{BK}}", &bk.to_string());
        let matmul_src = matmul_source(f16_weights);
        let p = |name, src: &str, entry| pipeline(ctx, name, src.to_string(), entry);
        Ok(Self {
            ctx: ctx.clone(),
            matmul: p("matmul", &matmul_src, "main"),
            layernorm: p("layernorm", LAYERNORM, "main"),
            patches: p("patches", IM2COL, "patches"),
            conv3x3: p("conv3x3", IM2COL, "conv3x3"),
            relpos: p("relpos", RELPOS, "main"),
            attention: p("attention", &attention_src, "main"),
            dummy: ctx.storage("dummy", 4)?,
            max_wg: limits.max_compute_workgroups_per_dimension,
        })
    }

    fn step(
        &self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Step {
        let uniform = self.ctx.uniform(params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let bind_group = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        Step {
            pipeline: pipeline.clone(),
            bind_group,
            workgroups,
        }
    }

    /// Workgroups for `total` flat invocations of 256: x up to the per-dimension limit, the
    /// rest in y (the kernels rebuild the flat index from both).
    fn flat_workgroups(&self, total: usize) -> Result<[u32; 3]> {
        let groups = total.div_ceil(FLAT_WG as usize).max(1);
        let x = groups.min(self.max_wg as usize);
        let y = groups.div_ceil(x);
        if y > self.max_wg as usize {
            return Err(Error::Config(format!(
                "{total} invocations exceed the dispatch limits"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// `C[m, n] (+)= epilogue(A · Bᵀ)`, `B` a weight in the kernels' weight type, split into dispatches of at most `max_wg` row tiles.
    pub fn matmul(
        &self,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        c: &wgpu::Buffer,
        d: MatmulDims,
        e: Epilogue<'_>,
    ) -> Result<Vec<Step>> {
        let col_tiles = d.n.div_ceil(MM_TILE as usize);
        if col_tiles > self.max_wg as usize {
            return Err(Error::Config(format!("matmul with {} columns", d.n)));
        }
        let flags = e.bias.is_some() as u32 | (e.gelu as u32) << 1 | (e.accumulate as u32) << 2;
        let bias = e.bias.unwrap_or(&self.dummy);
        let rows_per = self.max_wg as usize * MM_TILE as usize;
        let mut steps = Vec::new();
        let mut row0 = 0;
        while row0 < d.m {
            let rows = rows_per.min(d.m - row0);
            let params =
                [d.m, d.n, d.k, d.a_off, 0, d.c_off, flags as usize, row0].map(|v| v as u32);
            let wg = [col_tiles as u32, rows.div_ceil(MM_TILE as usize) as u32, 1];
            steps.push(self.step(&self.matmul, &params, &[a, b, bias, c], wg));
            row0 += rows;
        }
        Ok(steps)
    }

    /// LayerNorm of each of `rows` rows of `c` values; `transpose` writes (c, rows).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        x: &wgpu::Buffer,
        gamma: &wgpu::Buffer,
        beta: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        c: usize,
        eps: f64,
        transpose: bool,
    ) -> Result<Step> {
        let gx = rows.min(self.max_wg as usize).max(1);
        let gy = rows.div_ceil(gx);
        if gy > self.max_wg as usize {
            return Err(Error::Config(format!("layer norm over {rows} rows")));
        }
        let params = [
            rows as u32,
            c as u32,
            (eps as f32).to_bits(),
            transpose as u32,
        ];
        Ok(self.step(
            &self.layernorm,
            &params,
            &[x, gamma, beta, y],
            [gx as u32, gy as u32, 1],
        ))
    }

    /// Patch-embedding gather: pixels (cin, s, s) -> (g*g, cin*p*p).
    pub fn patches(
        &self,
        pixels: &wgpu::Buffer,
        out: &wgpu::Buffer,
        s: usize,
        p: usize,
        cin: usize,
    ) -> Result<Step> {
        let g = s / p;
        let total = g * g * cin * p * p;
        let params = [s, p, cin, g, total].map(|v| v as u32);
        let wg = self.flat_workgroups(total)?;
        Ok(self.step(&self.patches, &params, &[pixels, out], wg))
    }

    /// 3x3 / pad 1 gather: channels-last (h, w, c) -> (h*w, 9*c).
    pub fn conv3x3(
        &self,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<Step> {
        let total = h * w * 9 * c;
        let params = [h, w, c, 0, total].map(|v| v as u32);
        let wg = self.flat_workgroups(total)?;
        Ok(self.step(&self.conv3x3, &params, &[x, out], wg))
    }

    /// Relative-position terms of every (head, window, query, k) from the unscaled queries.
    #[allow(clippy::too_many_arguments)]
    pub fn relpos(
        &self,
        qkv: &wgpu::Buffer,
        table_h: &wgpu::Buffer,
        table_w: &wgpu::Buffer,
        rel_h: &wgpu::Buffer,
        rel_w: &wgpu::Buffer,
        g: AttnGeom,
    ) -> Result<Step> {
        let total = g.rel_len();
        let params = [
            g.grid,
            g.grid,
            g.ws,
            g.per_row(),
            g.heads,
            g.c,
            g.c / g.heads,
            g.windows(),
            total,
        ]
        .map(|v| v as u32);
        let wg = self.flat_workgroups(total)?;
        Ok(self.step(
            &self.relpos,
            &params,
            &[qkv, table_h, table_w, rel_h, rel_w],
            wg,
        ))
    }

    /// Fused attention: qkv (n, 3c) in grid order -> out (n, c) in grid order. `qkv_bias`
    /// (3c, zeros without a bias) is what padded window tokens project to.
    pub fn attention(
        &self,
        qkv: &wgpu::Buffer,
        qkv_bias: &wgpu::Buffer,
        rel: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
        out: &wgpu::Buffer,
        g: AttnGeom,
    ) -> Result<Step> {
        let hd = g.c / g.heads;
        let scale = (hd as f32).powf(-0.5);
        let params = [
            g.grid as u32,
            g.grid as u32,
            g.ws as u32,
            g.per_row() as u32,
            g.heads as u32,
            g.c as u32,
            scale.to_bits(),
            rel.is_some() as u32,
            g.windows() as u32,
        ];
        let (rh, rw) = rel.unwrap_or((&self.dummy, &self.dummy));
        let wg = [
            (g.ws * g.ws).div_ceil(ATTN_BQ as usize),
            g.heads,
            g.windows(),
        ];
        if wg.iter().any(|&v| v > self.max_wg as usize) {
            return Err(Error::Config(format!("attention dispatch {wg:?}")));
        }
        Ok(self.step(
            &self.attention,
            &params,
            &[qkv, qkv_bias, rh, rw, out],
            wg.map(|v| v as u32),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_tile_fits_workgroup_memory() {
        assert_eq!(attention_bk(64, 16384), Some(32));
        assert_eq!(attention_bk(80, 16384), Some(16));
        assert_eq!(attention_bk(12, 16384), Some(32));
        assert_eq!(attention_bk(4096, 16384), None);
    }

    #[test]
    fn f16_matmul_is_the_same_source() {
        let (a, b) = (matmul_source(false), matmul_source(true));
        assert!(a.contains("array<W>") && !a.contains("enable f16") && !a.contains("//INCLUDE"));
        assert_eq!(b.replace(MATMUL_W_F16, MATMUL_W_F32), a);
        // the directive precedes every declaration
        let first = b
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("//"));
        assert_eq!(first, Some("enable f16;"));
    }
}
