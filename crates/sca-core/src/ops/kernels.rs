//! Elementwise and row kernels on f32 slices: exp, GELU (erf), softmax (optionally with SAM's
//! decomposed relative-position bias added on the fly), LayerNorm.
//!
//! The bodies are plain loops written so LLVM vectorises them; on x86-64 each public kernel is
//! compiled a second time with AVX2+FMA and picked at run time (the baseline target is SSE2).

/// Defines `pub fn $name(args)` running `$body` (an `#[inline(always)]` fn generic over "the
/// CPU has FMA") with AVX2+FMA when the CPU has them.
macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}

/// `a * b + c`, fused when `F` (set only where the CPU has FMA).
#[inline(always)]
fn fmadd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
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
pub(crate) fn exp<const F: bool>(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4; // 355/512, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = clamp(x, -87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO; // |r| <= ln2/2
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = fmadd::<F>(p, r, c);
    }
    // the low mantissa bits of t hold n; 2^n built from its exponent field
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// erf(x), absolute error below 5e-7 (1e-7 for |x| < 0.5): an odd/even rational minimax fit on
/// [-4, 4] (erf is ±1 in f32 beyond).
#[inline(always)]
pub(crate) fn erf<const F: bool>(x: f32) -> f32 {
    let x = clamp(x, -4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ] {
        p = fmadd::<F>(p, x2, c);
    }
    let mut q = -1.456_607_2e-5;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = fmadd::<F>(q, x2, c);
    }
    x * p / q
}

/// GELU with the exact (erf) form, `x·Φ(x)`.
#[inline(always)]
fn gelu<const F: bool>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf::<F>(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_body<const F: bool>(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu::<F>(*v);
    }
}

dispatch! {
    /// In-place GELU (erf form).
    pub fn gelu_inplace(x: &mut [f32]) => gelu_body
}

#[inline(always)]
fn bias_gelu_body<const F: bool>(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu::<F>(*v + b);
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
    let mut r = m
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in chunks.remainder() {
        r = if v > r { v } else { r };
    }
    r
}

/// `x = exp(x - m)` in place; returns the sum.
#[inline(always)]
fn exp_sub_sum<const F: bool>(x: &mut [f32], m: f32) -> f32 {
    let mut s = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp::<F>(c[i] - m);
            s[i] += c[i];
        }
    }
    let mut r = 0.0;
    for v in chunks.into_remainder() {
        *v = exp::<F>(*v - m);
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
fn softmax_body<const F: bool>(x: &mut [f32], cols: usize) {
    for row in x.chunks_exact_mut(cols) {
        let m = max(row);
        let s = exp_sub_sum::<F>(row, m);
        scale(row, 1.0 / s);
    }
}

dispatch! {
    /// Softmax over each row of `cols` values, in place.
    pub fn softmax_rows(x: &mut [f32], cols: usize) => softmax_body
}

#[inline(always)]
fn softmax_cols_body<const F: bool>(x: &mut [f32], rows: usize, m: &mut [f32], s: &mut [f32]) {
    let cols = x.len() / rows;
    let (m, s) = (&mut m[..cols], &mut s[..cols]);
    m.copy_from_slice(&x[..cols]);
    for row in x.chunks_exact(cols).skip(1) {
        for (m, &v) in m.iter_mut().zip(row) {
            *m = if v > *m { v } else { *m };
        }
    }
    s.fill(0.0);
    for row in x.chunks_exact_mut(cols) {
        for ((v, &m), s) in row.iter_mut().zip(m.iter()).zip(s.iter_mut()) {
            *v = exp::<F>(*v - m);
            *s += *v;
        }
    }
    for v in s.iter_mut() {
        *v = 1.0 / *v;
    }
    for row in x.chunks_exact_mut(cols) {
        for (v, &r) in row.iter_mut().zip(s.iter()) {
            *v *= r;
        }
    }
}

dispatch! {
    /// Softmax down each column of a `rows x (x.len() / rows)` matrix, in place (attention
    /// scores stored transposed); `m` and `s` are scratch of at least one row.
    pub fn softmax_cols(x: &mut [f32], rows: usize, m: &mut [f32], s: &mut [f32]) => softmax_cols_body
}

#[inline(always)]
fn exp_rel_pos_body<const F: bool>(
    x: &mut [f32],
    rel_h: &[f32],
    rel_w: &[f32],
    kw: usize,
    inv_sums: &mut [f32],
) {
    let kh = rel_h.len() / inv_sums.len();
    let rows = x
        .chunks_exact_mut(kh * kw)
        .zip(rel_h.chunks_exact(kh))
        .zip(rel_w.chunks_exact(kw));
    for (((row, rh), rw), inv) in rows.zip(inv_sums.iter_mut()) {
        for (seg, &h) in row.chunks_exact_mut(kw).zip(rh) {
            for (v, &w) in seg.iter_mut().zip(rw) {
                *v = *v + h + w;
            }
        }
        let m = max(row);
        *inv = 1.0 / exp_sub_sum::<F>(row, m);
    }
}

dispatch! {
    /// Unnormalised softmax over rows of `kh * kw` scores after adding SAM's decomposed
    /// relative-position bias: `x[r][k*kw + l] + rel_h[r][k] + rel_w[r][l]` is replaced by its
    /// exp (minus the row max) and `inv_sums[r]` gets 1 / the row's sum, to scale the product
    /// with the values instead of every score.
    pub fn exp_rel_pos(
        x: &mut [f32],
        rel_h: &[f32],
        rel_w: &[f32],
        kw: usize,
        inv_sums: &mut [f32],
    ) => exp_rel_pos_body
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
    let rem: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (s.iter().sum::<f32>() + rem) / n;
    let r = 1.0 / (var + eps).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * r * w + b;
    }
}

#[inline(always)]
fn layer_norm_body<const F: bool>(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
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
fn layer_norm_inplace_body<const F: bool>(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    for x in x.chunks_exact_mut(w.len()) {
        layer_norm_row(x, w, b, eps);
    }
}

dispatch! {
    /// LayerNorm over rows of `w.len()` values, in place.
    pub fn layer_norm_inplace(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) => layer_norm_inplace_body
}

#[inline(always)]
fn add_layer_norm_body<const F: bool>(
    x: &[f32],
    y: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
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

#[inline(always)]
fn add_layer_norm_inplace_body<const F: bool>(
    x: &mut [f32],
    y: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let c = w.len();
    for (x, y) in x.chunks_exact_mut(c).zip(y.chunks_exact(c)) {
        for (x, &y) in x.iter_mut().zip(y) {
            *x += y;
        }
        layer_norm_row(x, w, b, eps);
    }
}

dispatch! {
    /// `x = LayerNorm(x + y)` over rows of `w.len()` values.
    pub fn add_layer_norm_inplace(x: &mut [f32], y: &[f32], w: &[f32], b: &[f32], eps: f32)
        => add_layer_norm_inplace_body
}

/// GELU with the tanh approximation (`gelu_new`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// tanh through `exp`: `tanh(u) = 1 - 2 / (e^{2u} + 1)`.
#[inline(always)]
fn gelu_tanh<const F: bool>(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * x * fmadd::<F>(0.044_715 * x, x, 1.0);
    let t = 1.0 - 2.0 / (exp::<F>(2.0 * u) + 1.0);
    0.5 * x * (1.0 + t)
}

#[inline(always)]
fn gelu_tanh_body<const F: bool>(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu_tanh::<F>(*v);
    }
}

dispatch! {
    /// In-place GELU, tanh approximation (GPT-2's `gelu_new`).
    pub fn gelu_tanh_inplace(x: &mut [f32]) => gelu_tanh_body
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
            worst = worst.max(((exp::<false>(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp::<false>(f32::NEG_INFINITY), exp::<false>(-87.3));
        assert!(exp::<true>(-1e30) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let mut worst = 0f64;
        for i in -80_000..80_000 {
            let x = i as f32 / 10_000.0;
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((erf::<false>(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "erf error {worst}");
        let mut g: Vec<f32> = (-1000..1000).map(|i| i as f32 / 100.0).collect();
        let x = g.clone();
        gelu_inplace(&mut g);
        for (x, g) in x.iter().zip(&g) {
            let x = *x as f64;
            let want = 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
            assert!(
                (*g as f64 - want).abs() < 1e-6 * x.abs().max(1.0),
                "gelu({x})"
            );
        }
    }

    #[test]
    fn gelu_tanh_is_accurate() {
        let mut g: Vec<f32> = (-2000..2000).map(|i| i as f32 / 100.0).collect();
        let x = g.clone();
        gelu_tanh_inplace(&mut g);
        for (x, g) in x.iter().zip(&g) {
            let x = *x as f64;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (*g as f64 - want).abs() < 1e-6 * x.abs().max(1.0),
                "gelu_tanh({x})"
            );
        }
    }

    #[test]
    fn softmax_matches_the_definition() {
        let (kh, kw) = (3, 5);
        let x: Vec<f32> = (0..2 * kh * kw)
            .map(|i| ((i * 7) % 11) as f32 * 0.3)
            .collect();
        let rh: Vec<f32> = (0..2 * kh).map(|i| i as f32 * 0.1).collect();
        let rw: Vec<f32> = (0..2 * kw).map(|i| -(i as f32) * 0.2).collect();
        let mut y = x.clone();
        let mut inv = [0f32; 2];
        exp_rel_pos(&mut y, &rh, &rw, kw, &mut inv);
        for r in 0..2 {
            for v in &mut y[r * kh * kw..(r + 1) * kh * kw] {
                *v *= inv[r];
            }
            let z: Vec<f64> = (0..kh * kw)
                .map(|j| (x[r * kh * kw + j] + rh[r * kh + j / kw] + rw[r * kw + j % kw]) as f64)
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
        // column softmax == row softmax of the transpose
        let (r, c) = (6, 5);
        let t: Vec<f32> = (0..r * c).map(|i| x[(i % r) * c + i / r]).collect();
        let mut z = x[..r * c].to_vec();
        let (mut m, mut s) = (vec![0f32; c], vec![0f32; c]);
        softmax_cols(&mut z, r, &mut m, &mut s);
        let mut tz = t.clone();
        softmax_rows(&mut tz, r);
        for i in 0..r * c {
            assert!((tz[i] - z[(i % r) * c + i / r]).abs() < 1e-7);
        }
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
