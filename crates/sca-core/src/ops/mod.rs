//! Fast CPU inference paths: matrix products through BLAS-style strided `sgemm`
//! ([`gemm`]), fused f32 kernels ([`kernels`]), and tensor-level wrappers used by the models.
//!
//! Every wrapper takes its fast path only for f32 CPU tensors that autograd does not track
//! ([`fast_path`]); anything else (another device, training) goes through the equivalent candle
//! ops, so the models stay differentiable.

pub mod gemm;
pub mod kernels;

use std::ops::Deref;

use candle_core::{CpuStorage, DType, Device, Module, Result, Shape, Storage, StorageRef, Tensor};
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
            candle_core::bail!("expected an f32 CPU tensor, got {:?} on {:?}", t.dtype(), t.device())
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("expected a contiguous tensor, got strides {:?}", layout.stride())
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

/// Wraps an output buffer as a CPU tensor (no copy).
pub fn tensor<S: Into<Shape>>(data: Vec<f32>, shape: S) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Rows per rayon task for a row-wise pass over `rows` rows of `cols` values: about 64 KiB of
/// work each, and at least 4 tasks per thread when there is enough to share.
pub fn rows_per_task(rows: usize, cols: usize) -> usize {
    let by_size = (16_384 / cols.max(1)).max(1);
    let by_count = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
    by_size.min(by_count)
}

/// `x @ w^T + b` of a candle [`Linear`] on the last axis of `x`.
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    let mut ts = vec![x, l.weight()];
    ts.extend(l.bias());
    if !fast_path(&ts) {
        return l.forward(x);
    }
    let x = x.contiguous()?;
    let (n, k) = l.weight().dims2()?;
    let m = x.elem_count() / k;
    let w = l.weight().contiguous()?;
    let mut out = vec![0f32; m * n];
    linear_into(&F32Slice::new(&x)?, m, &w, l.bias(), &mut out)?;
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
    gemm::par_gemm(1.0, Mat::dense(&xs, m, k), Mat::dense(&ws, k, n), 0.0, &mut out, n);
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
        _ => ln.forward(x),
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
        _ => ln.forward(&(x + y)?),
    }
}

/// GELU (erf form).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fast_path(&[x]) {
        return x.gelu_erf();
    }
    let x = x.contiguous()?;
    let mut out = F32Slice::new(&x)?.to_vec();
    let chunk = rows_per_task(out.len(), 1).max(4096);
    out.par_chunks_mut(chunk).for_each(kernels::gelu_inplace);
    tensor(out, x.shape())
}

/// Multi-head scaled dot-product attention: q (M, Tq, C), k and v (M, Tk, C), heads split along
/// C -> (M, Tq, C). `softmax(q_h k_h^T * scale) v_h` for each head h.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    let (m, tq, c) = q.dims3()?;
    let tk = k.dim(1)?;
    let hd = c / num_heads;
    if !fast_path(&[q, k, v]) {
        let heads = |x: &Tensor| -> Result<Tensor> {
            let (m, t, c) = x.dims3()?;
            x.reshape((m, t, num_heads, c / num_heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (heads(q)?, heads(k)?, heads(v)?);
        let attn = (qh.matmul(&kh.t()?)? * scale)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        return attn.matmul(&vh)?.transpose(1, 2)?.reshape((m, tq, c));
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ks, vs) = (F32Slice::new(&q)?, F32Slice::new(&k)?, F32Slice::new(&v)?);
    let mut out = vec![0f32; m * tq * c];
    // Tasks: query row blocks of each batch entry; a task runs every head of its rows, so it
    // owns a contiguous block of the output.
    let rows = tq.div_ceil((4 * rayon::current_num_threads()).div_ceil(m)).clamp(1, 256);
    out.par_chunks_mut(tq * c).enumerate().for_each(|(p, out)| {
        let k = Mat::new(&ks[p * tk * c..(p + 1) * tk * c], tk, c, c);
        let v = Mat::new(&vs[p * tk * c..(p + 1) * tk * c], tk, c, c);
        let q = Mat::new(&qs[p * tq * c..(p + 1) * tq * c], tq, c, c);
        out.par_chunks_mut(rows * c)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, out)| {
                let nr = out.len() / c;
                let q = q.rows(i * rows, nr);
                scores.resize(nr * tk, 0.0);
                for h in 0..num_heads {
                    let cols = h * hd;
                    let (qh, kh, vh) = (q.cols(cols, hd), k.cols(cols, hd), v.cols(cols, hd));
                    gemm::gemm(scale as f32, qh, kh.t(), 0.0, scores, tk);
                    kernels::softmax_rows(scores, tk);
                    let p = Mat::dense(scores, nr, tk);
                    gemm::gemm(1.0, p, vh, 0.0, &mut out[cols..], c);
                }
            });
    });
    tensor(out, (m, tq, c))
}
