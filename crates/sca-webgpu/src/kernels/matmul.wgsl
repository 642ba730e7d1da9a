// C[m, n] (op)= epilogue(sum_k A[m, k] * B[n, k]): activations times a PyTorch-layout weight
// (out, in). 64x64 output tiles; each invocation owns a 4x4 block (4 consecutive rows x 4
// consecutive columns) held in vec4 registers. Accumulation is f32; the weight B is stored as
// `W`: f32 here, f16 in the variant kernels/mod.rs makes by substituting the line below (on
// devices with shader-f16; it must stay the first declaration: the f16 enable directive
// goes right before it).

alias W = f32;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    // bit 0: add bias[n]; bit 1: exact GELU; bit 2: accumulate into C (residual add)
    flags: u32,
    // first output row of this dispatch (dispatches are split at 65535 workgroups)
    row0: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<W>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// k-major tiles of 4-row (4-column) groups: one vec4 load feeds four FMAs
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

//INCLUDE gelu

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m0 = p.row0 + wg.y * TM;
    let n0 = wg.x * TN;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // loads: invocation li fetches k = li % 16 of tile rows 4 * (li / 16) .. +3
    let lk = li % TK;
    let lg = li / TK;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        let kk = k0 + lk;
        var av = vec4<f32>(0.0);
        var bv = vec4<f32>(0.0);
        if (kk < p.k) {
            for (var e = 0u; e < 4u; e++) {
                let ar = m0 + 4u * lg + e;
                if (ar < p.m) {
                    av[e] = a[p.a_off + ar * p.k + kk];
                }
                let br = n0 + 4u * lg + e;
                if (br < p.n) {
                    bv[e] = f32(b[p.b_off + br * p.k + kk]);
                }
            }
        }
        a_tile[lk * 16u + lg] = av;
        b_tile[lk * 16u + lg] = bv;
        workgroupBarrier();
        for (var t = 0u; t < TK; t++) {
            let ar = a_tile[t * 16u + lid.y];
            let br = b_tile[t * 16u + lid.x];
            acc0 = fma(vec4<f32>(ar.x), br, acc0);
            acc1 = fma(vec4<f32>(ar.y), br, acc1);
            acc2 = fma(vec4<f32>(ar.z), br, acc2);
            acc3 = fma(vec4<f32>(ar.w), br, acc3);
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + 4u * lid.y + i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + 4u * lid.x + j;
            if (row < p.m && col < p.n) {
                var v = accs[i][j];
                if ((p.flags & 1u) != 0u) {
                    v += bias[col];
                }
                if ((p.flags & 2u) != 0u) {
                    v = gelu(v);
                }
                let ci = p.c_off + row * p.n + col;
                if ((p.flags & 4u) != 0u) {
                    v += c[ci];
                }
                c[ci] = v;
            }
        }
    }
}
