//! LayerNorm and softmax as candle custom ops *with* a backward pass, for training on the CPU.
//!
//! candle-nn's fused LayerNorm and softmax have no backward pass, and their compositions of
//! elementwise candle ops keep many full-size intermediates alive for autograd (a LayerNorm
//! is nine of them). These ops keep only their input and output, and run forward and backward
//! as parallel row kernels. They take f32 CPU tensors; [`super::layer_norm`] and
//! [`super::softmax_last_dim`] use the composite elsewhere (another device or dtype).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{kernels, rows_per_task};

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// LayerNorm over the last axis (x, weight, bias) with its backward pass.
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "sca-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer-norm input")?;
        let w = contiguous_f32(s2, l2, "layer-norm weight")?;
        let b = contiguous_f32(s3, l3, "layer-norm bias")?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(x.len() / c.max(1), c) * c;
        out.par_chunks_mut(rows.max(1))
            .zip(x.par_chunks(rows.max(1)))
            .for_each(|(o, x)| kernels::layer_norm(x, w, b, self.eps, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        let rows = x.elem_count() / c;
        let packed = x.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?; // (rows + 2, C): dx rows, then dw, db
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(c)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The LayerNorm gradients packed as rows: `dx` (rows), `dw`, `db`.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "sca-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer-norm input")?;
        let w = contiguous_f32(s2, l2, "layer-norm weight")?;
        let g = contiguous_f32(s3, l3, "layer-norm gradient")?;
        let c = w.len();
        let rows = x.len() / c;
        let chunk = rows_per_task(rows, c);
        let mut out = vec![0f32; (rows + 2) * c];
        let (dx, rest) = out.split_at_mut(rows * c);
        // Per-task partial sums of dw/db, reduced in task order (deterministic).
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(chunk * c)
            .zip(x.par_chunks(chunk * c).zip(g.par_chunks(chunk * c)))
            .map(|(dx, (x, g))| {
                let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
                let mut xhat = vec![0f32; c];
                for ((dx, x), g) in dx
                    .chunks_exact_mut(c)
                    .zip(x.chunks_exact(c))
                    .zip(g.chunks_exact(c))
                {
                    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                    let rstd = 1.0 / (var + self.eps as f64).sqrt();
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for k in 0..c {
                        let xh = ((x[k] as f64 - mean) * rstd) as f32;
                        xhat[k] = xh;
                        let gw = (g[k] * w[k]) as f64;
                        s1 += gw;
                        s2 += gw * xh as f64;
                        dw[k] += (g[k] * xh) as f64;
                        db[k] += g[k] as f64;
                    }
                    let (m1, m2) = (s1 / c as f64, s2 / c as f64);
                    for k in 0..c {
                        let gw = (g[k] * w[k]) as f64;
                        dx[k] = (rstd * (gw - m1 - xhat[k] as f64 * m2)) as f32;
                    }
                }
                (dw, db)
            })
            .collect();
        let (dw_out, db_out) = rest.split_at_mut(c);
        for k in 0..c {
            dw_out[k] = partials.iter().map(|p| p.0[k]).sum::<f64>() as f32;
            db_out[k] = partials.iter().map(|p| p.1[k]).sum::<f64>() as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}

/// Softmax over the last axis with its backward pass.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "sca-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "softmax input")?;
        let c = *l.dims().last().unwrap_or(&1);
        let mut out = x.to_vec();
        let rows = rows_per_task(out.len() / c.max(1), c) * c;
        out.par_chunks_mut(rows.max(1))
            .for_each(|r| kernels::softmax_rows(r, c));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `dx = s · (g − Σ g·s)` row by row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "sca-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = contiguous_f32(s1, l1, "softmax output")?;
        let g = contiguous_f32(s2, l2, "softmax gradient")?;
        let c = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; s.len()];
        let rows = rows_per_task(s.len() / c.max(1), c) * c;
        out.par_chunks_mut(rows.max(1))
            .zip(s.par_chunks(rows.max(1)).zip(g.par_chunks(rows.max(1))))
            .for_each(|(o, (s, g))| {
                for ((o, s), g) in o
                    .chunks_exact_mut(c)
                    .zip(s.chunks_exact(c))
                    .zip(g.chunks_exact(c))
                {
                    let dot: f32 = s.iter().zip(g).map(|(a, b)| a * b).sum();
                    for k in 0..c {
                        o[k] = s[k] * (g[k] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Whether these ops apply: f32 tensors on the CPU.
pub fn supported(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == candle_core::DType::F32 && t.device().is_cpu())
}

/// Differentiable LayerNorm over the last axis (CPU, f32).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

/// Differentiable softmax over the last axis (CPU, f32).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Gradients of `sum(f(x, w, b) * t)` for x, w, b.
    fn grads(f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor) -> Vec<Vec<f32>> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 560.0, &dev)
            .unwrap()
            .reshape((5, 7, 16))
            .unwrap();
        let x = Var::from_tensor(&(x * 0.37).unwrap().cos().unwrap()).unwrap();
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 16.0, &dev)
                .unwrap()
                .affine(1.0 / 15.0, 0.5)
                .unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(
            &Tensor::arange(0f32, 16.0, &dev)
                .unwrap()
                .affine(0.025, -0.2)
                .unwrap(),
        )
        .unwrap();
        let t = Tensor::arange(0f32, 560.0, &dev)
            .unwrap()
            .reshape((5, 7, 16))
            .unwrap();
        let t = (t * 0.11).unwrap().sin().unwrap();
        let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor());
        let g = (y * t).unwrap().sum_all().unwrap().backward().unwrap();
        [&x, &w, &b]
            .iter()
            .filter_map(|v| g.get(v.as_tensor()))
            .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn gradients_equal_the_composites() {
        assert_close(
            &grads(&|x, w, b| layer_norm(x, w, b, 1e-5).unwrap()),
            &grads(&|x, w, b| super::super::layer_norm_graph(x, w, Some(b), 1e-5).unwrap()),
        );
        assert_close(
            &grads(&|x, _, _| softmax_last_dim(&(x * 3.0).unwrap()).unwrap()),
            &grads(&|x, _, _| candle_nn::ops::softmax(&(x * 3.0).unwrap(), D::Minus1).unwrap()),
        );
    }
}
