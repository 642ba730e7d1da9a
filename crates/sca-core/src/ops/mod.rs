//! Fast CPU inference paths: matrix products through BLAS-style strided `sgemm`
//! ([`gemm`]), fused f32 kernels ([`kernels`]), and tensor-level wrappers used by the models.
//!
//! Every wrapper takes its fast path only for f32 CPU tensors that autograd does not track
//! ([`fast_path`]); anything else (another device, training) goes through the equivalent candle
//! ops, so the models stay differentiable.

pub mod autograd;
pub mod gemm;
pub mod kernels;
pub mod qlinear;
pub mod qmm;

pub use qlinear::{QLinear, QuantStore};

use std::ops::Deref;

use candle_core::{
    CpuStorage, DType, Device, Module, Result, Shape, Storage, StorageRef, Tensor, D,
};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use gemm::Mat;

/// Whether `ts` can take the slice kernels: f32, on the CPU, not tracked by autograd.
pub fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op())
}

/// The f32 data of a contiguous CPU tensor, borrowed from its storage.
pub struct F32Slice<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> F32Slice<'a> {
    /// Borrows `t`'s elements; errors unless `t` is a contiguous f32 CPU tensor.
    pub fn new(t: &'a Tensor) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            candle_core::bail!(
                "expected an f32 CPU tensor, got {:?} on {:?}",
                t.dtype(),
                t.device()
            )
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!(
                "expected a contiguous tensor, got strides {:?}",
                layout.stride()
            )
        };
        Ok(Self {
            guard,
            start,
            len: end - start,
        })
    }
}

impl Deref for F32Slice<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in F32Slice::new"),
        }
    }
}

/// A LayerNorm's parameters borrowed as slices, for row kernels on flat buffers.
pub struct LnSlices<'a> {
    w: F32Slice<'a>,
    b: F32Slice<'a>,
    eps: f32,
}

impl<'a> LnSlices<'a> {
    pub fn new(ln: &'a LayerNorm) -> Result<Self> {
        let Some(b) = ln.bias() else {
            candle_core::bail!("LayerNorm without bias")
        };
        if !ln.remove_mean() {
            candle_core::bail!("RMS norm where a LayerNorm was expected")
        }
        let (w, b, eps) = (
            F32Slice::new(ln.weight())?,
            F32Slice::new(b)?,
            ln.eps() as f32,
        );
        Ok(Self { w, b, eps })
    }

    /// `out = LayerNorm(x)` over rows, in parallel.
    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        let c = self.w.len();
        let rows = rows_per_task(x.len() / c, c) * c;
        out[..x.len()]
            .par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(o, x)| kernels::layer_norm(x, &self.w, &self.b, self.eps, o));
    }

    /// `x = LayerNorm(x + y)` over rows, in parallel.
    pub fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        let c = self.w.len();
        let rows = rows_per_task(x.len() / c, c) * c;
        x.par_chunks_mut(rows)
            .zip(y.par_chunks(rows))
            .for_each(|(x, y)| kernels::add_layer_norm_inplace(x, y, &self.w, &self.b, self.eps));
    }
}

/// Wraps an output buffer as a CPU tensor (no copy).
pub fn tensor<S: Into<Shape>>(data: Vec<f32>, shape: S) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Rows per rayon task for a row-wise pass over `rows` rows of `cols` values: at least 64 KiB
/// of data each, and at most 4 tasks per thread.
pub fn rows_per_task(rows: usize, cols: usize) -> usize {
    let by_size = (16_384 / cols.max(1)).max(1);
    let by_count = rows.div_ceil(4 * rayon::current_num_threads());
    by_size.max(by_count)
}

/// `x @ w^T + b` of a candle [`Linear`] on the last axis of `x`.
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    linear_parts(x, l.weight(), l.bias())
}

/// `x @ w^T + b` with `w` (N, K) on the last axis of `x`.
pub fn linear_parts(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let mut ts = vec![x, w];
    ts.extend(b);
    if !fast_path(&ts) {
        return Linear::new(w.clone(), b.cloned()).forward(x);
    }
    let x = x.contiguous()?;
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k;
    let w = w.contiguous()?;
    let mut out = vec![0f32; m * n];
    linear_into(&F32Slice::new(&x)?, m, &w, b, &mut out)?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    tensor(out, dims)
}

/// `x @ w` for x (..., K) and a 2-D w (K, N).
pub fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (k, n) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    if !fast_path(&[x, w]) {
        return x.reshape(((), k))?.matmul(w)?.reshape(dims);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (xs, ws) = (F32Slice::new(&x)?, F32Slice::new(&w)?);
    let m = xs.len() / k;
    let mut out = vec![0f32; m * n];
    gemm::par_gemm(
        1.0,
        Mat::dense(&xs, m, k),
        Mat::dense(&ws, k, n),
        0.0,
        &mut out,
        n,
    );
    tensor(out, dims)
}

/// `out (m, N) = x (m, K) @ w^T + b` with `w` (N, K) contiguous, split over rayon.
pub fn linear_into(
    x: &[f32],
    m: usize,
    w: &Tensor,
    b: Option<&Tensor>,
    out: &mut [f32],
) -> Result<()> {
    let (n, k) = w.dims2()?;
    let ws = F32Slice::new(w)?;
    let beta = match b {
        Some(b) => {
            let b = F32Slice::new(b)?;
            out[..m * n]
                .par_chunks_mut(n * rows_per_task(m, n))
                .for_each(|rows| rows.chunks_mut(n).for_each(|r| r.copy_from_slice(&b)));
            1.0
        }
        None => 0.0,
    };
    gemm::par_gemm(
        1.0,
        Mat::dense(&x[..m * k], m, k),
        Mat::dense(&ws, n, k).t(),
        beta,
        out,
        n,
    );
    Ok(())
}

/// The LayerNorm's (weight, bias, eps) when it is a standard one with a bias.
fn ln_params(ln: &LayerNorm) -> Option<(&Tensor, &Tensor, f32)> {
    if !ln.remove_mean() {
        return None;
    }
    Some((ln.weight(), ln.bias()?, ln.eps() as f32))
}

/// Whether autograd tracks any of `ts`: then only differentiable candle ops may touch them
/// (candle-nn's fused LayerNorm and softmax kernels have no backward pass).
pub fn any_tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// LayerNorm over the last axis from differentiable candle ops:
/// `(x - mean) / sqrt(var + eps) * w + b` (biased variance, as PyTorch).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)?;
/// let w = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu)?;
/// let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu)?;
/// let y = sca_core::ops::layer_norm_graph(&x, &w, Some(&b), 1e-5)?.to_vec2::<f32>()?;
/// assert!((y[0][0] + 1.3416).abs() < 1e-3 && (y[0][3] - 1.3416).abs() < 1e-3);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn layer_norm_graph(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// A LayerNorm that autograd can see through when any input is tracked, else candle-nn's.
fn layer_norm_candle(x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    let mut ts = vec![x, ln.weight()];
    ts.extend(ln.bias());
    if !(ln.remove_mean() && any_tracked(&ts)) {
        return ln.forward(x);
    }
    match ln.bias() {
        Some(b) if autograd::supported(&[x, ln.weight(), b]) => {
            autograd::layer_norm(x, ln.weight(), b, ln.eps())
        }
        b => layer_norm_graph(x, ln.weight(), b, ln.eps()),
    }
}

/// Softmax over the last axis: candle-nn's fused kernel, or the differentiable composite
/// when `x` is tracked.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        if autograd::supported(&[x]) {
            autograd::softmax_last_dim(x)
        } else {
            candle_nn::ops::softmax(x, D::Minus1)
        }
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `LayerNorm(x)` over the last axis.
pub fn layer_norm(x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    match ln_params(ln) {
        Some((w, b, eps)) if fast_path(&[x, w, b]) => {
            let x = x.contiguous()?;
            let c = w.dim(0)?;
            let (xs, ws, bs) = (F32Slice::new(&x)?, F32Slice::new(w)?, F32Slice::new(b)?);
            let mut out = vec![0f32; xs.len()];
            let rows = rows_per_task(xs.len() / c, c) * c;
            out.par_chunks_mut(rows)
                .zip(xs.par_chunks(rows))
                .for_each(|(o, x)| kernels::layer_norm(x, &ws, &bs, eps, o));
            tensor(out, x.shape())
        }
        _ => layer_norm_candle(x, ln),
    }
}

/// `LayerNorm(x + y)` over the last axis, without materialising the sum.
pub fn add_layer_norm(x: &Tensor, y: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    match ln_params(ln) {
        Some((w, b, eps)) if fast_path(&[x, y, w, b]) && x.shape() == y.shape() => {
            let (x, y) = (x.contiguous()?, y.contiguous()?);
            let c = w.dim(0)?;
            let (xs, ys) = (F32Slice::new(&x)?, F32Slice::new(&y)?);
            let (ws, bs) = (F32Slice::new(w)?, F32Slice::new(b)?);
            let mut out = vec![0f32; xs.len()];
            let rows = rows_per_task(xs.len() / c, c) * c;
            out.par_chunks_mut(rows)
                .zip(xs.par_chunks(rows).zip(ys.par_chunks(rows)))
                .for_each(|(o, (x, y))| kernels::add_layer_norm(x, y, &ws, &bs, eps, o));
            tensor(out, x.shape())
        }
        _ => layer_norm_candle(&(x + y)?, ln),
    }
}

/// `out = x + pe` for x (rows, c) and pe (pe_rows, c) repeated down the rows (a positional
/// encoding shared by a batch).
pub fn add_repeated_rows(x: &[f32], pe: &[f32], c: usize, out: &mut [f32]) {
    let pe_rows = pe.len() / c;
    let rows = rows_per_task(x.len() / c, c);
    out[..x.len()]
        .par_chunks_mut(rows * c)
        .zip(x.par_chunks(rows * c))
        .enumerate()
        .for_each(|(i, (o, x))| {
            let pairs = o.chunks_exact_mut(c).zip(x.chunks_exact(c));
            for (j, (o, x)) in pairs.enumerate() {
                let r = (i * rows + j) % pe_rows;
                for ((o, x), p) in o.iter_mut().zip(x).zip(&pe[r * c..(r + 1) * c]) {
                    *o = x + p;
                }
            }
        });
}

/// `(B, C, H, W) -> (B, H*W, C)`: channels-first maps to row-major tokens.
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let hw = h * w;
    if !fast_path(&[x]) {
        return x
            .reshape((b, c, hw))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, hw, c));
    }
    let x = x.contiguous()?;
    let xs = F32Slice::new(&x)?;
    let mut out = vec![0f32; b * hw * c];
    const TILE: usize = 64;
    // tasks of 64 tokens: each reads 64-wide runs of every channel
    out.par_chunks_mut(hw * c)
        .zip(xs.par_chunks(hw * c))
        .for_each(|(out, src)| {
            out.par_chunks_mut(TILE * c)
                .enumerate()
                .for_each(|(i, out)| {
                    let (t0, nt) = (i * TILE, out.len() / c);
                    for ch in 0..c {
                        let run = &src[ch * hw + t0..ch * hw + t0 + nt];
                        for (t, &v) in run.iter().enumerate() {
                            out[t * c + ch] = v;
                        }
                    }
                })
        });
    tensor(out, (b, hw, c))
}

/// GELU (erf form).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fast_path(&[x]) {
        return x.gelu_erf();
    }
    map_inplace(x, kernels::gelu_inplace)
}

/// GELU, tanh approximation (candle's `gelu`, GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !fast_path(&[x]) {
        return x.gelu();
    }
    map_inplace(x, kernels::gelu_tanh_inplace)
}

/// A copy of `x` with `f` applied to it in parallel chunks.
fn map_inplace(x: &Tensor, f: impl Fn(&mut [f32]) + Sync + Send) -> Result<Tensor> {
    let x = x.contiguous()?;
    let mut out = F32Slice::new(&x)?.to_vec();
    let chunk = rows_per_task(out.len(), 1);
    out.par_chunks_mut(chunk).for_each(f);
    tensor(out, x.shape())
}

/// Multi-head scaled dot-product attention: q (M, Tq, C), k and v (M, Tk, C), heads split along
/// C -> (M, Tq, C). `softmax(q_h k_h^T * scale) v_h` for each head h.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    num_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (m, tq, c) = q.dims3()?;
    let tk = k.dim(1)?;
    if !fast_path(&[q, k, v]) {
        let heads = |x: &Tensor| -> Result<Tensor> {
            let (m, t, c) = x.dims3()?;
            x.reshape((m, t, num_heads, c / num_heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (heads(q)?, heads(k)?, heads(v)?);
        let attn = (qh.matmul(&kh.t()?)? * scale)?;
        let attn = softmax_last_dim(&attn)?;
        return attn.matmul(&vh)?.transpose(1, 2)?.reshape((m, tq, c));
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ks, vs) = (F32Slice::new(&q)?, F32Slice::new(&k)?, F32Slice::new(&v)?);
    let mut out = vec![0f32; m * tq * c];
    attention_into(
        Mat::dense(&qs, m * tq, c),
        Mat::dense(&ks, m * tk, c),
        Mat::dense(&vs, m * tk, c),
        m,
        num_heads,
        scale as f32,
        &mut out,
    );
    tensor(out, (m, tq, c))
}

/// [`attention`] on matrix views: q (m*Tq, C), k and v (m*Tk, C), rows of batch entry b at
/// `b*T..`; writes the dense (m*Tq, C) `out`. One task per (batch entry, head).
pub fn attention_into(
    q: Mat,
    k: Mat,
    v: Mat,
    m: usize,
    num_heads: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (tq, tk, c) = (q.rows / m, k.rows / m, q.cols);
    let hd = c / num_heads;
    let heads: Vec<Vec<f32>> = (0..m * num_heads)
        .into_par_iter()
        .map(|i| {
            let (b, h) = (i / num_heads, (i % num_heads) * hd);
            let q = q.rows(b * tq, tq).cols(h, hd);
            let k = k.rows(b * tk, tk).cols(h, hd);
            let v = v.rows(b * tk, tk).cols(h, hd);
            let mut s = vec![0f32; tq * tk];
            let mut o = vec![0f32; tq * hd];
            if tq > tk {
                // many queries, few keys: scores transposed (Tk, Tq) so the softmax runs
                // along contiguous rows of Tq
                gemm::gemm(scale, k, q.t(), 0.0, &mut s, tq);
                let (mut mx, mut sum) = (vec![0f32; tq], vec![0f32; tq]);
                kernels::softmax_cols(&mut s, tk, &mut mx, &mut sum);
                gemm::gemm(1.0, Mat::dense(&s, tk, tq).t(), v, 0.0, &mut o, hd);
            } else {
                gemm::gemm(scale, q, k.t(), 0.0, &mut s, tk);
                kernels::softmax_rows(&mut s, tk);
                gemm::gemm(1.0, Mat::dense(&s, tq, tk), v, 0.0, &mut o, hd);
            }
            o
        })
        .collect();
    let rows = rows_per_task(m * tq, c);
    out[..m * tq * c]
        .par_chunks_mut(rows * c)
        .enumerate()
        .for_each(|(i, out)| {
            for (r, row) in out.chunks_exact_mut(c).enumerate() {
                let (b, t) = ((i * rows + r) / tq, (i * rows + r) % tq);
                for (h, dst) in row.chunks_exact_mut(hd).enumerate() {
                    dst.copy_from_slice(&heads[b * num_heads + h][t * hd..(t + 1) * hd]);
                }
            }
        });
}

/// Helpers for tests comparing the fast paths with candle's ops.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Result, Shape, Tensor, Var};
    use candle_nn::var_builder::SimpleBackend;
    use candle_nn::{Init, VarBuilder};

    /// Random plain (untracked) weights: N(0, 0.1) matrices, N(1, 0.1) vectors named
    /// `*weight`, N(0, 0.1) biases.
    struct Random;

    impl SimpleBackend for Random {
        fn get(&self, s: Shape, name: &str, _: Init, _: DType, dev: &Device) -> Result<Tensor> {
            let mean = if s.rank() == 1 && name.ends_with("weight") {
                1.0
            } else {
                0.0
            };
            Tensor::randn(mean, 0.1f32, s, dev)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
            candle_core::bail!("no unshaped {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    pub fn random_vb() -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Random), DType::F32, Device::Cpu)
    }

    /// The same values as a tensor autograd tracks: it sends a model down candle's ops.
    pub fn tracked(t: &Tensor) -> Tensor {
        Var::from_tensor(t).expect("var").as_tensor().clone()
    }

    /// Asserts `|a - b| <= tol * max|b|` elementwise.
    pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= tol * scale,
            "{what}: max |diff| {worst} > {tol} x {scale}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_close, random_vb, tracked};
    use super::*;

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn gemm_handles_strides_transposes_and_beta() {
        let (m, k, n) = (37, 19, 23);
        let a = randn(&[m, k]);
        let b = randn(&[n, k]); // used as b^T
        let c0 = randn(&[m, n]);
        let want =
            ((a.matmul(&b.t().unwrap()).unwrap() * 0.5).unwrap() + (&c0 * 2.0).unwrap()).unwrap();
        let (av, bv) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
        let (av, bv) = (av.to_vec1::<f32>().unwrap(), bv.to_vec1::<f32>().unwrap());
        for split in [false, true] {
            let mut c = c0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (a, b) = (Mat::dense(&av, m, k), Mat::dense(&bv, n, k).t());
            if split {
                gemm::par_gemm(0.5, a, b, 2.0, &mut c, n);
            } else {
                gemm::gemm(0.5, a, b, 2.0, &mut c, n);
            }
            assert_close(&tensor(c, (m, n)).unwrap(), &want, 1e-6, "gemm");
        }
        // a view with no unit stride (every other row and column), large enough to split
        let big = randn(&[300, 200]);
        let bigv = big.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = Mat {
            data: &bigv,
            rows: 150,
            cols: 100,
            rs: 400,
            cs: 2,
        };
        let w = randn(&[100, 90]);
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut c = vec![f32::NAN; 150 * 90];
        gemm::par_gemm(1.0, a, Mat::dense(&wv, 100, 90), 0.0, &mut c, 90);
        let sub = big
            .reshape((150, 2, 100, 2))
            .unwrap()
            .get_on_dim(1, 0)
            .unwrap();
        let sub = sub.get_on_dim(2, 0).unwrap();
        let want = sub.contiguous().unwrap().matmul(&w).unwrap();
        assert_close(&tensor(c, (150, 90)).unwrap(), &want, 1e-5, "strided gemm");
    }

    #[test]
    fn linear_and_layer_norms_match_candle() {
        let vb = random_vb();
        let lin = candle_nn::linear(48, 40, vb.pp("l")).unwrap();
        let ln = candle_nn::layer_norm(40, 1e-6, vb.pp("ln")).unwrap();
        let x = randn(&[3, 70, 48]);
        let y = linear(&x, &lin).unwrap();
        assert_close(&y, &lin.forward(&x).unwrap(), 1e-5, "linear");
        let wt = lin.weight().t().unwrap().contiguous().unwrap();
        let want = x.broadcast_matmul(&wt).unwrap();
        assert_close(&matmul(&x, &wt).unwrap(), &want, 1e-5, "matmul");
        let z = randn(&[3, 70, 40]);
        assert_close(
            &layer_norm(&y, &ln).unwrap(),
            &ln.forward(&y).unwrap(),
            1e-5,
            "ln",
        );
        let want = ln.forward(&(&y + &z).unwrap()).unwrap();
        assert_close(&add_layer_norm(&y, &z, &ln).unwrap(), &want, 1e-5, "add ln");
        assert_close(&gelu_erf(&y).unwrap(), &y.gelu_erf().unwrap(), 1e-5, "gelu");
        assert_close(
            &gelu_tanh(&y).unwrap(),
            &y.gelu().unwrap(),
            1e-5,
            "gelu tanh",
        );
        // tracked inputs take candle's path
        assert!(!fast_path(&[&tracked(&x)]));
        let img = randn(&[2, 5, 9, 11]);
        let want = img.reshape((2, 5, 99)).unwrap().transpose(1, 2).unwrap();
        assert_close(
            &channels_last(&img).unwrap(),
            &want.contiguous().unwrap(),
            0.0,
            "cl",
        );
    }

    #[test]
    fn attention_matches_candle() {
        // both orientations (more queries than keys and fewer), several batch entries
        for (tq, tk) in [(7, 300), (300, 7), (33, 33)] {
            let (m, c, nh) = (3, 32, 4);
            let (q, k, v) = (randn(&[m, tq, c]), randn(&[m, tk, c]), randn(&[m, tk, c]));
            let got = attention(&q, &k, &v, nh, 0.25).unwrap();
            let want = attention(&tracked(&q), &k, &v, nh, 0.25).unwrap();
            assert_close(&got, &want.detach(), 1e-5, "attention");
        }
    }
}
