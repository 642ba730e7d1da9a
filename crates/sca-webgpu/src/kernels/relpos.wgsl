// Decomposed relative-position terms (MViTv2 / SAM) for every query of every window and head:
//   rel_h[q, k] = q_unscaled · table_h[a - k + ws - 1],  rel_w[q, l] = q_unscaled · table_w[b - l + ws - 1]
// for the query at (a, b) inside its ws x ws window. Layout: ((head * windows + window) * ws*ws + t) * ws.
// Global attention is the one-window case (ws = grid side).

struct Params {
    h: u32,
    w: u32,
    ws: u32,
    nww: u32,
    heads: u32,
    c: u32,
    hd: u32,
    windows: u32,
    total: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> table_h: array<f32>;
@group(0) @binding(3) var<storage, read> table_w: array<f32>;
@group(0) @binding(4) var<storage, read_write> rel_h: array<f32>;
@group(0) @binding(5) var<storage, read_write> rel_w: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= p.total) {
        return;
    }
    let ws = p.ws;
    let t_all = ws * ws;
    let k = idx % ws;
    let t = (idx / ws) % t_all;
    let win = (idx / (ws * t_all)) % p.windows;
    let head = idx / (ws * t_all * p.windows);
    let a = t / ws;
    let b = t % ws;
    let r = (win / p.nww) * ws + a;
    let col = (win % p.nww) * ws + b;
    // queries in the zero padding are cropped away after attention
    if (r >= p.h || col >= p.w) {
        return;
    }
    let q0 = (r * p.w + col) * 3u * p.c + head * p.hd;
    let th = (a + ws - 1u - k) * p.hd;
    let tw = (b + ws - 1u - k) * p.hd;
    var sh = 0.0;
    var sw = 0.0;
    for (var d = 0u; d < p.hd; d++) {
        let q = qkv[q0 + d];
        sh = fma(q, table_h[th + d], sh);
        sw = fma(q, table_w[tw + d], sw);
    }
    rel_h[idx] = sh;
    rel_w[idx] = sw;
}
