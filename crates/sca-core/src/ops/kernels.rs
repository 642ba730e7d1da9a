//! Elementwise and row kernels on f32 slices: exp, GELU (erf), softmax (optionally with SAM's
//! decomposed relative-position bias added on the fly), LayerNorm.
//!
//! The bodies are plain loops written so LLVM vectorises them; on x86-64 each public kernel is
//! compiled a second time with AVX2+FMA and picked at run time (the baseline target is SSE2).

/// Defines `pub fn $name(args)` running `$body` (an `#[inline(always)]` fn) with AVX2 when the
/// CPU has it.
macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    // comparisons rather than f32::clamp: NaN passes through and the select vectorises
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// e^x within 2 ulp on [-87.3, 88.3] (clamped outside): 2^n · P7(r), x = n·ln2 + r.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4; // 355/512, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = clamp(x, -87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO; // |r| <= ln2/2
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // the low mantissa bits of t hold n; 2^n built from its exponent field
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// erf(x), absolute error below 5e-7 (1e-7 for |x| < 0.5): an odd/even rational minimax fit on
/// [-4, 4] (erf is ±1 in f32 beyond).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = clamp(x, -4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// GELU with the exact (erf) form, `x·Φ(x)`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu(*v);
    }
}

dispatch! {
    /// In-place GELU (erf form).
    pub fn gelu_inplace(x: &mut [f32]) => gelu_body
}

#[inline(always)]
fn bias_gelu_body(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu(*v + b);
        }
    }
}

dispatch! {
    /// In-place `gelu(x + bias)` over rows of `bias.len()`.
    pub fn bias_gelu_inplace(x: &mut [f32], bias: &[f32]) => bias_gelu_body
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    // 8 lanes so the reduction vectorises (max is associative: exact in any order)
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut r = m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in chunks.remainder() {
        r = if v > r { v } else { r };
    }
    r
}

/// `x = exp(x - m)` in place; returns the sum.
#[inline(always)]
fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mut s = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - m);
            s[i] += c[i];
        }
    }
    let mut r = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        r += *v;
    }
    s.iter().sum::<f32>() + r
}

#[inline(always)]
fn scale(x: &mut [f32], a: f32) {
    for v in x.iter_mut() {
        *v *= a;
    }
}

#[inline(always)]
fn softmax_body(x: &mut [f32], cols: usize) {
    for row in x.chunks_exact_mut(cols) {
        let m = max(row);
        let s = exp_sub_sum(row, m);
        scale(row, 1.0 / s);
    }
}

dispatch! {
    /// Softmax over each row of `cols` values, in place.
    pub fn softmax_rows(x: &mut [f32], cols: usize) => softmax_body
}

#[inline(always)]
fn softmax_rel_pos_body(x: &mut [f32], rel_h: &[f32], rel_w: &[f32], kh: usize, kw: usize) {
    let rows = x
        .chunks_exact_mut(kh * kw)
        .zip(rel_h.chunks_exact(kh))
        .zip(rel_w.chunks_exact(kw));
    for ((row, rh), rw) in rows {
        for (seg, &h) in row.chunks_exact_mut(kw).zip(rh) {
            for (v, &w) in seg.iter_mut().zip(rw) {
                *v = *v + h + w;
            }
        }
        let m = max(row);
        let s = exp_sub_sum(row, m);
        scale(row, 1.0 / s);
    }
}

dispatch! {
    /// Softmax over rows of `kh * kw` scores after adding SAM's decomposed relative-position
    /// bias: `x[r][k*kw + l] + rel_h[r][k] + rel_w[r][l]`, in place.
    pub fn softmax_rel_pos(x: &mut [f32], rel_h: &[f32], rel_w: &[f32], kh: usize, kw: usize)
        => softmax_rel_pos_body
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            s[i] += c[i];
        }
    }
    s.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Normalises one row in place: `(x - mean) / sqrt(var + eps) * w + b`.
#[inline(always)]
fn layer_norm_row(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut s = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            s[i] += d * d;
        }
    }
    let rem: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (s.iter().sum::<f32>() + rem) / n;
    let r = 1.0 / (var + eps).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * r * w + b;
    }
}

#[inline(always)]
fn layer_norm_body(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let c = w.len();
    for (x, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        out.copy_from_slice(x);
        layer_norm_row(out, w, b, eps);
    }
}

dispatch! {
    /// LayerNorm over rows of `w.len()` values: `out = (x - mean) / sqrt(var + eps) * w + b`.
    pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32])
        => layer_norm_body
}

#[inline(always)]
fn add_layer_norm_body(x: &[f32], y: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let c = w.len();
    let rows = x.chunks_exact(c).zip(y.chunks_exact(c));
    for ((x, y), out) in rows.zip(out.chunks_exact_mut(c)) {
        for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
            *o = x + y;
        }
        layer_norm_row(out, w, b, eps);
    }
}

dispatch! {
    /// `out = LayerNorm(x + y)` over rows of `w.len()` values.
    pub fn add_layer_norm(x: &[f32], y: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32])
        => add_layer_norm_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.3));
        assert!(exp(-1e30) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let mut worst = 0f64;
        for i in -80_000..80_000 {
            let x = i as f32 / 10_000.0;
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "erf error {worst}");
        let mut g: Vec<f32> = (-1000..1000).map(|i| i as f32 / 100.0).collect();
        let x = g.clone();
        gelu_inplace(&mut g);
        for (x, g) in x.iter().zip(&g) {
            let x = *x as f64;
            let want = 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
            assert!((*g as f64 - want).abs() < 1e-6 * x.abs().max(1.0), "gelu({x})");
        }
    }

    #[test]
    fn softmax_matches_the_definition() {
        let (kh, kw) = (3, 5);
        let x: Vec<f32> = (0..2 * kh * kw).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let rh: Vec<f32> = (0..2 * kh).map(|i| i as f32 * 0.1).collect();
        let rw: Vec<f32> = (0..2 * kw).map(|i| -(i as f32) * 0.2).collect();
        let mut y = x.clone();
        softmax_rel_pos(&mut y, &rh, &rw, kh, kw);
        for r in 0..2 {
            let z: Vec<f64> = (0..kh * kw)
                .map(|j| {
                    (x[r * kh * kw + j] + rh[r * kh + j / kw] + rw[r * kw + j % kw]) as f64
                })
                .collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for j in 0..kh * kw {
                let want = (z[j] - m).exp() / s;
                assert!((y[r * kh * kw + j] as f64 - want).abs() < 1e-7);
            }
        }
        let mut y = x.clone();
        softmax_rows(&mut y, kh * kw);
        let s: f32 = y[..kh * kw].iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_matches_the_definition() {
        let c = 37;
        let x: Vec<f32> = (0..3 * c).map(|i| ((i * 13) % 17) as f32 - 4.0).collect();
        let w: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * 0.1).collect();
        let mut out = vec![0f32; 3 * c];
        layer_norm(&x, &w, &b, 1e-6, &mut out);
        for r in 0..3 {
            let row = &x[r * c..(r + 1) * c];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            for j in 0..c {
                let want = (row[j] as f64 - mean) / (var + 1e-6).sqrt() * w[j] as f64 + b[j] as f64;
                assert!((out[r * c + j] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
