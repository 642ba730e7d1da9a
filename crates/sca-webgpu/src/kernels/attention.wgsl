// Fused multi-head attention with decomposed relative-position bias and an online softmax
// (flash-attention style): no (N, N) score matrix is ever stored, for windowed and global
// attention alike. Workgroup = 64 queries of one (window, head); keys/values stream through
// workgroup memory BK at a time. Windows read the grid directly: tokens in the bottom/right
// zero padding are keys with k, v = the qkv bias (LayerNorm'd zeros through the qkv Linear),
// and padded queries are not computed. `HD` and `BK` are substituted before compilation.

const HD: u32 = {{HD}}u;
const BK: u32 = {{BK}}u;
const BQ: u32 = 64u;
// finite "minus infinity": WGSL implementations need not honour infinities
const NEG: f32 = -1.0e30;

struct Params {
    h: u32,
    w: u32,
    ws: u32,
    nww: u32,
    heads: u32,
    c: u32,
    scale: f32,
    use_rel: u32,
    windows: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> qkv_bias: array<f32>;
@group(0) @binding(3) var<storage, read> rel_h: array<f32>;
@group(0) @binding(4) var<storage, read> rel_w: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> k_tile: array<f32, BK * HD>;
var<workgroup> v_tile: array<f32, BK * HD>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ws = p.ws;
    let t_all = ws * ws;
    let head = wg.y;
    let win = wg.z;
    let wy = (win / p.nww) * ws;
    let wx = (win % p.nww) * ws;
    let c3 = 3u * p.c;
    let hoff = head * HD;

    let t = wg.x * BQ + lid;
    let qr = wy + t / ws;
    let qc = wx + t % ws;
    let valid = t < t_all && qr < p.h && qc < p.w;
    let qtok = qr * p.w + qc;
    let rel_base = ((head * p.windows + win) * t_all + t) * ws;

    var q: array<f32, HD>;
    var acc: array<f32, HD>;
    if (valid) {
        for (var d = 0u; d < HD; d++) {
            q[d] = qkv[qtok * c3 + hoff + d] * p.scale;
        }
    }
    var m = NEG;
    var l = 0.0;

    for (var kb = 0u; kb < t_all; kb += BK) {
        for (var e = lid; e < BK * HD; e += BQ) {
            let kt = kb + e / HD;
            let d = e % HD;
            var kv = 0.0;
            var vv = 0.0;
            if (kt < t_all) {
                let kr = wy + kt / ws;
                let kc = wx + kt % ws;
                if (kr < p.h && kc < p.w) {
                    let base = (kr * p.w + kc) * c3 + hoff + d;
                    kv = qkv[base + p.c];
                    vv = qkv[base + 2u * p.c];
                } else {
                    kv = qkv_bias[p.c + hoff + d];
                    vv = qkv_bias[2u * p.c + hoff + d];
                }
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        if (valid) {
            var s: array<f32, BK>;
            var tile_max = NEG;
            for (var j = 0u; j < BK; j++) {
                let kt = kb + j;
                var sj = NEG;
                if (kt < t_all) {
                    sj = 0.0;
                    for (var d = 0u; d < HD; d++) {
                        sj = fma(q[d], k_tile[j * HD + d], sj);
                    }
                    if (p.use_rel != 0u) {
                        sj += rel_h[rel_base + kt / ws] + rel_w[rel_base + kt % ws];
                    }
                    tile_max = max(tile_max, sj);
                }
                s[j] = sj;
            }
            let m_new = max(m, tile_max);
            let corr = exp(m - m_new);
            l *= corr;
            for (var d = 0u; d < HD; d++) {
                acc[d] *= corr;
            }
            for (var j = 0u; j < BK; j++) {
                if (kb + j < t_all) {
                    let pj = exp(s[j] - m_new);
                    l += pj;
                    for (var d = 0u; d < HD; d++) {
                        acc[d] = fma(pj, v_tile[j * HD + d], acc[d]);
                    }
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }
    if (valid) {
        let inv = 1.0 / l;
        for (var d = 0u; d < HD; d++) {
            out[qtok * p.c + hoff + d] = acc[d] * inv;
        }
    }
}
