//! `x · Wᵀ` for q8_0 and q6_k weights with WebAssembly SIMD (`simd128`).
//!
//! In wasm candle's kernels for these types convert two f16 scales per block in software and
//! (q6_k) accumulate every 8 products in f32; these keep block sums in integers and convert
//! scales with integer ops: 1.6-2x faster per product in wasm (`tests/browser/bench.mjs`
//! measures the effect per click and per token). The activations are quantized
//! exactly as candle quantizes them (q8_0 for q8_0 weights, q8_K for q6_k), so the integer
//! block sums are candle's; only the f32 rounding of the scaled sums may differ (as it already
//! does between candle's own AVX2 and wasm kernels). Natively candle's AVX2/NEON kernels stay
//! in use; the portable versions here are what the tests check against them.

use half::f16;

/// Elements per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per q8_0 block: an f16 scale and 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;
/// Elements per k-quant super-block.
pub const QK_K: usize = 256;
/// Bytes per q6_k block: 128 low nibbles, 64 bytes of high bit pairs, 16 scales, f16 scale.
pub const Q6K_BYTES: usize = 210;

/// A quantized product `(x, m, k, weight bytes, n, out)`, see [`matmul_q8_0`].
pub type Kernel = fn(&[f32], usize, usize, &[u8], usize, &mut [f32]);

/// f16 bits to f32: normal numbers with integer ops (half's portable conversion is a slow
/// software path in wasm), the rest through `half`.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let exp = h & 0x7c00;
    if exp != 0 && exp != 0x7c00 {
        let sign = ((h & 0x8000) as u32) << 16;
        f32::from_bits(sign | ((((h & 0x7fff) as u32) + 0x1c000) << 13))
    } else {
        f16::from_bits(h).to_f32()
    }
}

#[inline(always)]
fn f16_at(b: &[u8]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// Activation rows quantized per block: values and one f32 scale per block.
struct Quantized {
    qs: Vec<i8>,
    d: Vec<f32>,
}

/// q8_0, as candle's `BlockQ8_0::from_float` (scale rounded to f16).
fn quantize_q8_0(x: &[f32]) -> Quantized {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / Q8_0_BLOCK];
    for ((xs, q), d) in x
        .chunks_exact(Q8_0_BLOCK)
        .zip(qs.chunks_exact_mut(Q8_0_BLOCK))
        .zip(d.iter_mut())
    {
        let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let s = amax / 127.0;
        let id = if s != 0.0 { 1.0 / s } else { 0.0 };
        *d = f16::from_f32(s).to_f32();
        for (q, &v) in q.iter_mut().zip(xs) {
            *q = f32::round(v * id) as i8;
        }
    }
    Quantized { qs, d }
}

/// q8_K, as candle's `BlockQ8K::from_float` (signed max, f32 scale).
fn quantize_q8k(x: &[f32]) -> Quantized {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK_K];
    for ((xs, q), d) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(d.iter_mut())
    {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            continue;
        }
        let iscale = -127f32 / max;
        for (q, &v) in q.iter_mut().zip(xs) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        *d = 1.0 / iscale;
    }
    Quantized { qs, d }
}

/// Panics unless the buffers fit an (m, k) x (n, k)ᵀ product with `bytes` per `block` inputs.
fn check(
    x: &[f32],
    out: &[f32],
    (m, k, n): (usize, usize, usize),
    block: usize,
    w: &[u8],
    bytes: usize,
) {
    assert!(k.is_multiple_of(block), "quantized product over {k} inputs");
    assert_eq!(w.len(), n * (k / block) * bytes, "quantized weight size");
    assert!(x.len() >= m * k && out.len() >= m * n, "product buffers");
}

/// `out[i, j] = dot(i, row j of w)` for every activation row `i` and weight row `j`
/// (`nb` blocks of `bytes` per weight row).
fn each_output(
    (m, n, nb): (usize, usize, usize),
    bytes: usize,
    w: &[u8],
    out: &mut [f32],
    mut dot: impl FnMut(usize, &[u8]) -> f32,
) {
    for i in 0..m {
        for (j, o) in out[i * n..(i + 1) * n].iter_mut().enumerate() {
            *o = dot(i, &w[j * nb * bytes..(j + 1) * nb * bytes]);
        }
    }
}

/// `out (m, n) = x (m, k) · Wᵀ` where `w` holds the n rows of a q8_0 (n, k) weight (GGUF
/// layout: `k / 32` blocks of 34 bytes per row). `k` must be a multiple of 32.
///
/// ```
/// use sca_core::ops::qmm::{matmul_q8_0, Q8_0_BYTES};
/// // one row of 32 weights, all 1 (scale 1/127, values 127)
/// let mut w = vec![127u8; Q8_0_BYTES];
/// w[..2].copy_from_slice(&half::f16::from_f32(1.0 / 127.0).to_bits().to_le_bytes());
/// let mut out = [0f32];
/// matmul_q8_0(&[0.5; 32], 1, 32, &w, 1, &mut out);
/// assert!((out[0] - 16.0).abs() < 0.1);
/// ```
pub fn matmul_q8_0(x: &[f32], m: usize, k: usize, w: &[u8], n: usize, out: &mut [f32]) {
    check(x, out, (m, k, n), Q8_0_BLOCK, w, Q8_0_BYTES);
    let nb = k / Q8_0_BLOCK;
    let xq = quantize_q8_0(&x[..m * k]);
    let act = |i: usize| (&xq.qs[i * k..(i + 1) * k], &xq.d[i * nb..(i + 1) * nb]);
    // Four activation rows per pass over a weight row: the weight is read from memory once
    // (prefill, the mixer's tokens) and extended once per four rows.
    let quads = m / 4 * 4;
    for j in 0..n {
        let w = &w[j * nb * Q8_0_BYTES..(j + 1) * nb * Q8_0_BYTES];
        for i in (0..quads).step_by(4) {
            let r = dot4_q8_0(std::array::from_fn(|r| act(i + r)), w);
            for (r, v) in r.into_iter().enumerate() {
                out[(i + r) * n + j] = v;
            }
        }
        for i in quads..m {
            let (xs, xd) = act(i);
            out[i * n + j] = dot_q8_0(xs, xd, w);
        }
    }
}

/// [`dot_q8_0`] of four activation rows with one weight row (the same sums per row).
#[inline(always)]
fn dot4_q8_0(xs: [(&[i8], &[f32]); 4], w: &[u8]) -> [f32; 4] {
    let nb = xs[0].1.len();
    assert!(w.len() >= nb * Q8_0_BYTES);
    assert!(xs
        .iter()
        .all(|(q, d)| d.len() == nb && q.len() >= nb * Q8_0_BLOCK));
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    // SAFETY: every activation row holds nb blocks of 32 values and `w` nb blocks of 34 bytes
    // (checked above); the loads read 8 bytes at offsets 0..24 of a block's values.
    unsafe {
        use core::arch::wasm32::*;
        let mut acc = [f32x4_splat(0.0); 4];
        for b in 0..nb {
            let bp = w.as_ptr().add(b * Q8_0_BYTES);
            let wp = bp.add(2) as *const i8;
            let wv = [
                i16x8_load_extend_i8x8(wp),
                i16x8_load_extend_i8x8(wp.add(8)),
                i16x8_load_extend_i8x8(wp.add(16)),
                i16x8_load_extend_i8x8(wp.add(24)),
            ];
            let dw = f16_bits_to_f32(u16::from_le_bytes([*bp, *bp.add(1)]));
            for (a, (q, d)) in acc.iter_mut().zip(xs) {
                let xp = q.as_ptr().add(b * Q8_0_BLOCK);
                let mut s = i32x4_dot_i16x8(i16x8_load_extend_i8x8(xp), wv[0]);
                s = i32x4_add(s, i32x4_dot_i16x8(i16x8_load_extend_i8x8(xp.add(8)), wv[1]));
                s = i32x4_add(
                    s,
                    i32x4_dot_i16x8(i16x8_load_extend_i8x8(xp.add(16)), wv[2]),
                );
                s = i32x4_add(
                    s,
                    i32x4_dot_i16x8(i16x8_load_extend_i8x8(xp.add(24)), wv[3]),
                );
                let scale = f32x4_splat(*d.get_unchecked(b) * dw);
                *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(s), scale));
            }
        }
        acc.map(|a| {
            f32x4_extract_lane::<0>(a)
                + f32x4_extract_lane::<1>(a)
                + f32x4_extract_lane::<2>(a)
                + f32x4_extract_lane::<3>(a)
        })
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        xs.map(|(q, d)| dot_q8_0(q, d, w))
    }
}

/// One q8_0 dot product of a quantized activation row: per block, 4 integer lanes scaled by
/// `dx * dw` and accumulated per lane (as candle's wasm kernel does), lanes summed last.
#[inline(always)]
fn dot_q8_0(xs: &[i8], xd: &[f32], w: &[u8]) -> f32 {
    let nb = xd.len();
    assert!(xs.len() >= nb * Q8_0_BLOCK && w.len() >= nb * Q8_0_BYTES);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    // SAFETY: `xs` holds nb blocks of 32 values and `w` nb blocks of 34 bytes (checked
    // above); the loads read 8 bytes at offsets 0..24 of a block's values.
    unsafe {
        use core::arch::wasm32::*;
        let mut acc = f32x4_splat(0.0);
        for (b, &dx) in xd.iter().enumerate() {
            let xp = xs.as_ptr().add(b * Q8_0_BLOCK);
            let bp = w.as_ptr().add(b * Q8_0_BYTES);
            let wp = bp.add(2) as *const i8;
            let mut s = i32x4_dot_i16x8(i16x8_load_extend_i8x8(xp), i16x8_load_extend_i8x8(wp));
            for o in [8, 16, 24] {
                let p = i32x4_dot_i16x8(
                    i16x8_load_extend_i8x8(xp.add(o)),
                    i16x8_load_extend_i8x8(wp.add(o)),
                );
                s = i32x4_add(s, p);
            }
            let dw = f16_bits_to_f32(u16::from_le_bytes([*bp, *bp.add(1)]));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), f32x4_splat(dx * dw)));
        }
        f32x4_extract_lane::<0>(acc)
            + f32x4_extract_lane::<1>(acc)
            + f32x4_extract_lane::<2>(acc)
            + f32x4_extract_lane::<3>(acc)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let mut acc = [0f32; 4];
        for (b, &dx) in xd.iter().enumerate() {
            let x = &xs[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
            let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
            let mut s = [0i32; 4];
            for (e, (&xv, &wv)) in x.iter().zip(&blk[2..]).enumerate() {
                s[(e % 8) / 2] += xv as i32 * (wv as i8) as i32;
            }
            let d = dx * f16_at(blk);
            for l in 0..4 {
                acc[l] += s[l] as f32 * d;
            }
        }
        acc[0] + acc[1] + acc[2] + acc[3]
    }
}

/// `out (m, n) = x (m, k) · Wᵀ` for a q6_k (n, k) weight (GGUF layout: `k / 256` blocks of
/// 210 bytes per row). `k` must be a multiple of 256.
pub fn matmul_q6k(x: &[f32], m: usize, k: usize, w: &[u8], n: usize, out: &mut [f32]) {
    check(x, out, (m, k, n), QK_K, w, Q6K_BYTES);
    let nb = k / QK_K;
    let xq = quantize_q8k(&x[..m * k]);
    each_output((m, n, nb), Q6K_BYTES, w, out, |i, row| {
        let xs = &xq.qs[i * k..(i + 1) * k];
        xq.d[i * nb..(i + 1) * nb]
            .iter()
            .enumerate()
            .map(|(b, &dx)| {
                let blk = &row[b * Q6K_BYTES..(b + 1) * Q6K_BYTES];
                block_q6k(&xs[b * QK_K..], blk) as f32 * (dx * f16_at(&blk[208..]))
            })
            .sum()
    });
}

/// `Σ_j scale_j Σ_{16 values of j} q6 * q8` over one q6_k block (values -32..31, 16 scales):
/// exact in i32 (|.| < 2^28).
#[inline(always)]
fn block_q6k(x: &[i8], blk: &[u8]) -> i32 {
    assert!(x.len() >= QK_K && blk.len() >= Q6K_BYTES);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    // SAFETY: `x` holds 256 values and `blk` 210 bytes (checked above); every load below reads
    // 16 bytes within them (ql at 0..128, qh at 128..192, scales at 192..208, x at 0..256).
    unsafe {
        use core::arch::wasm32::*;
        let (ql0, xp) = (blk.as_ptr(), x.as_ptr());
        let (m4, m2, c32) = (u8x16_splat(0xF), u8x16_splat(3), i8x16_splat(32));
        let mut acc = i32x4_splat(0);
        for half in 0..2 {
            let (ql, qh) = (ql0.add(64 * half), ql0.add(128 + 32 * half));
            for l in [0, 16] {
                let h = v128_load(qh.add(l) as *const v128);
                let lo = v128_load(ql.add(l) as *const v128);
                let hi = v128_load(ql.add(l + 32) as *const v128);
                let vals = [
                    v128_or(v128_and(lo, m4), u8x16_shl(v128_and(h, m2), 4)),
                    v128_or(
                        v128_and(hi, m4),
                        u8x16_shl(v128_and(u8x16_shr(h, 2), m2), 4),
                    ),
                    v128_or(
                        u8x16_shr(lo, 4),
                        u8x16_shl(v128_and(u8x16_shr(h, 4), m2), 4),
                    ),
                    v128_or(u8x16_shr(hi, 4), u8x16_shl(u8x16_shr(h, 6), 4)),
                ];
                for (g, v) in vals.into_iter().enumerate() {
                    let e = 128 * half + l + 32 * g;
                    let q = i8x16_sub(v, c32);
                    let xv = v128_load(xp.add(e) as *const v128);
                    // |q6 * q8| <= 32 * 128, so two products fit an i16 lane; the scale
                    // multiplies in the i32 dot product.
                    let p = i16x8_add(
                        i16x8_extmul_low_i8x16(q, xv),
                        i16x8_extmul_high_i8x16(q, xv),
                    );
                    let sc = *(ql0.add(192 + e / 16) as *const i8) as i16;
                    acc = i32x4_add(acc, i32x4_dot_i16x8(p, i16x8_splat(sc)));
                }
            }
        }
        i32x4_extract_lane::<0>(acc)
            + i32x4_extract_lane::<1>(acc)
            + i32x4_extract_lane::<2>(acc)
            + i32x4_extract_lane::<3>(acc)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
        let mut q = [0i8; QK_K];
        for half in 0..2 {
            let (ql, qh, q) = (&ql[64 * half..], &qh[32 * half..], &mut q[128 * half..]);
            for l in 0..32 {
                let h = qh[l];
                q[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
                q[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
                q[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                q[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        (0..16)
            .map(|j| {
                let s: i32 = (16 * j..16 * (j + 1))
                    .map(|e| x[e] as i32 * q[e] as i32)
                    .sum();
                (scales[j] as i8) as i32 * s
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::Kernel;

    fn check_against_candle(dtype: GgmlDType, kernel: Kernel, shapes: &[(usize, usize, usize)]) {
        let dev = Device::Cpu;
        for &(m, k, n) in shapes {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.5, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let mut got = vec![0f32; m * n];
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            kernel(&xs, m, k, &q.data().unwrap(), n, &mut got);
            let want = QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let max = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                // The same integer block sums and scales as candle; only the f32 rounding of
                // the scaled sums differs from candle's (AVX2) kernel.
                assert!(
                    (g - w).abs() <= 1e-5 * max,
                    "{dtype:?} {m}x{k}x{n}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn q8_0_equals_candles_product() {
        check_against_candle(
            GgmlDType::Q8_0,
            super::matmul_q8_0,
            &[(1, 64, 7), (3, 96, 8), (5, 256, 13)],
        );
    }

    #[test]
    fn q8_0_rows_do_not_depend_on_blocking() {
        // Four activation rows share a pass over the weights; each row's sums are the same as
        // alone, bit for bit.
        let (m, k, n) = (6, 128, 5);
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let (xs, bytes) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            q.data().unwrap(),
        );
        let mut all = vec![0f32; m * n];
        super::matmul_q8_0(&xs, m, k, &bytes, n, &mut all);
        for i in 0..m {
            let mut one = vec![0f32; n];
            super::matmul_q8_0(&xs[i * k..(i + 1) * k], 1, k, &bytes, n, &mut one);
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    #[test]
    fn q6k_equals_candles_product() {
        check_against_candle(
            GgmlDType::Q6K,
            super::matmul_q6k,
            &[(1, 256, 5), (2, 512, 8), (3, 768, 9)],
        );
    }
}
