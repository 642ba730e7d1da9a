// LayerNorm over the last axis of (rows, c), one workgroup per row. Also LayerNorm2d: a
// channels-last map normalised per pixel over channels. With `transpose` the result is written
// channel-major (c, rows): the neck's NCHW output.

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    transpose: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        s += x[base + i];
    }
    let mean = reduce_sum(lid, s) / f32(p.c);
    // two-pass variance: no cancellation for large means
    var s2 = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let d = x[base + i] - mean;
        s2 += d * d;
    }
    let inv = 1.0 / sqrt(reduce_sum(lid, s2) / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += WG) {
        let v = (x[base + i] - mean) * inv * gamma[i] + beta[i];
        if (p.transpose != 0u) {
            y[i * p.rows + row] = v;
        } else {
            y[base + i] = v;
        }
    }
}
