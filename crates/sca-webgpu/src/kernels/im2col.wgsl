// Convolutions as matmuls: gather each output pixel's receptive field into one row.
//  `patches`: pixels (cin, s, s) -> (g*g, cin*p*p), columns (cin, ky, kx) like the
//             (C, cin, p, p) patch-embedding weight; stride = kernel = p.
//  `conv3x3`: channels-last (h, w, c) -> (h*w, 9*c), columns (ky, kx, c), zero padding 1.

struct Params {
    // patches: side s, patch p, channels cin, grid g; conv3x3: h, w, c, unused
    d0: u32,
    d1: u32,
    d2: u32,
    d3: u32,
    total: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn patches(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = flat_index(gid, nwg);
    if (idx >= p.total) {
        return;
    }
    let s = p.d0;
    let ps = p.d1;
    let g = p.d3;
    let cols = p.d2 * ps * ps;
    let tok = idx / cols;
    let col = idx % cols;
    let ci = col / (ps * ps);
    let ky = (col / ps) % ps;
    let kx = col % ps;
    let yy = (tok / g) * ps + ky;
    let xx = (tok % g) * ps + kx;
    dst[idx] = src[(ci * s + yy) * s + xx];
}

@compute @workgroup_size(256)
fn conv3x3(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = flat_index(gid, nwg);
    if (idx >= p.total) {
        return;
    }
    let h = p.d0;
    let w = p.d1;
    let c = p.d2;
    let tok = idx / (9u * c);
    let col = idx % (9u * c);
    let tap = col / c;
    let ci = col % c;
    // i32: the tap may sit one pixel outside the map
    let yy = i32(tok / w) + i32(tap / 3u) - 1;
    let xx = i32(tok % w) + i32(tap % 3u) - 1;
    var v = 0.0;
    if (yy >= 0 && xx >= 0 && yy < i32(h) && xx < i32(w)) {
        v = src[(u32(yy) * w + u32(xx)) * c + ci];
    }
    dst[idx] = v;
}
