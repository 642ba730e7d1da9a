//! Linear layers whose weight may be a quantized GGUF tensor (a bundle's `decoder.gguf`).
//!
//! Model code builds every decoder-side projection with [`QLinear`]. A plain checkpoint gives
//! dense f32 weights (the exact path, differentiable for training); while a bundle is being
//! loaded, [`QuantStore::scope`] makes its quantized tensors visible to the constructors, which
//! then keep them quantized and multiply with candle's quantized kernels.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::F32Slice;

thread_local! {
    static STORE: RefCell<Option<Arc<QuantStore>>> = const { RefCell::new(None) };
}

/// The quantized tensors of a bundle, by official key, handed to [`QLinear`] constructors
/// while [`QuantStore::scope`] runs. Records which keys were taken.
#[derive(Debug, Default)]
pub struct QuantStore {
    tensors: HashMap<String, Arc<QTensor>>,
    used: Mutex<HashSet<String>>,
}

impl QuantStore {
    pub fn new(tensors: HashMap<String, Arc<QTensor>>) -> Self {
        Self {
            tensors,
            used: Mutex::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Runs `f` (a model constructor) with this store visible to [`QLinear`] on this thread.
    pub fn scope<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> T {
        struct Reset(Option<Arc<QuantStore>>);
        impl Drop for Reset {
            fn drop(&mut self) {
                let prev = self.0.take();
                STORE.with(|s| *s.borrow_mut() = prev);
            }
        }
        let prev = STORE.with(|s| s.borrow_mut().replace(self.clone()));
        let _reset = Reset(prev);
        f()
    }

    /// Keys no constructor took, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn take(&self, key: &str) -> Option<Arc<QTensor>> {
        let t = self.tensors.get(key)?.clone();
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        Some(t)
    }
}

/// The quantized tensor stored under `key` in the store of the current [`QuantStore::scope`].
pub fn quantized(key: &str) -> Option<Arc<QTensor>> {
    STORE.with(|s| s.borrow().as_ref().and_then(|st| st.take(key)))
}

fn key(vb: &VarBuilder, name: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        name.to_string()
    } else {
        format!("{p}.{name}")
    }
}

fn check_shape(key: &str, q: &QTensor, out_dim: usize, in_dim: usize) -> Result<()> {
    if q.shape().dims() != [out_dim, in_dim] {
        candle_core::bail!(
            "quantized weight `{key}` has shape {:?}, expected [{out_dim}, {in_dim}]",
            q.shape().dims()
        )
    }
    Ok(())
}

enum Weight {
    /// (out, in), `x @ w^T`.
    Dense(Tensor),
    /// (in, out), `x @ w` (HF `Conv1D`).
    DenseT(Tensor),
    /// (out, in) quantized.
    Quant(Arc<QTensor>, QMatMul),
}

/// `y = x W^T + b` with a dense or quantized `W`.
///
/// ```
/// # use candle_core::{DType, Device, Tensor};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let l = sca_core::ops::QLinear::new(8, 4, vb.pp("proj"))?;
/// let y = l.forward(&Tensor::ones((2, 8), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[2, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct QLinear {
    weight: Weight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

impl QLinear {
    /// `nn.Linear(in_dim, out_dim)` at `vb` (`weight` (out, in), `bias` (out)).
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let bias = Some(vb.get(out_dim, "bias")?);
        Self::with_bias(in_dim, out_dim, bias, vb)
    }

    /// `nn.Linear(in_dim, out_dim, bias=False)` at `vb`.
    pub fn new_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_bias(in_dim, out_dim, None, vb)
    }

    fn with_bias(
        in_dim: usize,
        out_dim: usize,
        bias: Option<Tensor>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = key(&vb, "weight");
        let weight = match quantized(&k) {
            Some(q) => {
                check_shape(&k, &q, out_dim, in_dim)?;
                Weight::Quant(q.clone(), QMatMul::from_arc(q)?)
            }
            None => Weight::Dense(vb.get((out_dim, in_dim), "weight")?),
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// HF `Conv1D(out_dim, in_dim)` at `vb`: the official weight is stored (in, out); a
    /// quantized bundle stores it transposed, (out, in), under the same key.
    pub fn conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let k = key(&vb, "weight");
        let weight = match quantized(&k) {
            Some(q) => {
                check_shape(&k, &q, out_dim, in_dim)?;
                Weight::Quant(q.clone(), QMatMul::from_arc(q)?)
            }
            None => Weight::DenseT(vb.get((in_dim, out_dim), "weight")?),
        };
        Ok(Self {
            weight,
            bias: Some(vb.get(out_dim, "bias")?),
            in_dim,
            out_dim,
        })
    }

    /// A projection by an existing (out, in) weight, e.g. GPT-2's head tied to `wte`.
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Self {
            weight: Weight::Dense(weight),
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A projection by an existing quantized (out, in) weight.
    pub fn from_quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        Ok(Self {
            weight: Weight::Quant(weight.clone(), QMatMul::from_arc(weight)?),
            bias,
            in_dim,
            out_dim,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The dense weight tensor (for autograd checks), `None` when quantized.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) | Weight::DenseT(w) => Some(w),
            Weight::Quant(..) => None,
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quant(..))
    }

    /// x (..., in) -> (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = self.out_dim;
        let n = x.elem_count() / self.in_dim;
        let y = match &self.weight {
            Weight::Dense(w) => {
                return super::linear_parts(x, w, self.bias.as_ref());
            }
            Weight::DenseT(w) => x.reshape((n, self.in_dim))?.matmul(w)?,
            Weight::Quant(q, mm) => {
                let x = x.contiguous()?.reshape((n, self.in_dim))?;
                // In wasm, candle's kernels are ~3x slower than ours (the same products).
                let kernel: Option<super::qmm::Kernel> = match q.dtype() {
                    GgmlDType::Q8_0 => Some(super::qmm::matmul_q8_0),
                    GgmlDType::Q6K => Some(super::qmm::matmul_q6k),
                    _ => None,
                };
                match kernel {
                    Some(kernel)
                        if cfg!(all(target_arch = "wasm32", target_feature = "simd128"))
                            && super::fast_path(&[&x]) =>
                    {
                        let xs = F32Slice::new(&x)?;
                        let mut out = vec![0f32; n * self.out_dim];
                        kernel(&xs, n, self.in_dim, &q.data()?, self.out_dim, &mut out);
                        super::tensor(out, (n, self.out_dim))?
                    }
                    _ => mm.forward(&x)?,
                }
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(dims)
    }

    /// `out (m, out) = x (m, in) W^T + b` on flat buffers (the fast paths).
    pub fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        match &self.weight {
            Weight::Dense(w) => super::linear_into(x, m, &w.contiguous()?, self.bias.as_ref(), out),
            _ => {
                let xt = Tensor::from_slice(
                    &x[..m * self.in_dim],
                    (m, self.in_dim),
                    &candle_core::Device::Cpu,
                )?;
                let y = self.forward(&xt)?;
                out[..m * self.out_dim].copy_from_slice(&F32Slice::new(&y)?);
                Ok(())
            }
        }
    }

    /// The projections of `a` and `b` stacked on the output axis (one product for both).
    pub fn concat(a: &QLinear, b: &QLinear) -> Result<QLinear> {
        if a.in_dim != b.in_dim {
            candle_core::bail!(
                "concat of projections from {} and {} inputs",
                a.in_dim,
                b.in_dim
            )
        }
        let bias = match (&a.bias, &b.bias) {
            (Some(x), Some(y)) => Some(Tensor::cat(&[x, y], 0)?),
            _ => None,
        };
        let out_dim = a.out_dim + b.out_dim;
        let weight = match (&a.weight, &b.weight) {
            (Weight::Quant(qa, _), Weight::Quant(qb, _)) if qa.dtype() == qb.dtype() => {
                // Quantized rows are independent blocks: stacking rows is stacking bytes.
                let mut data = qa.data()?.into_owned();
                data.extend_from_slice(&qb.data()?);
                let storage = QStorage::from_data(data.into(), &qa.device(), qa.dtype())?;
                let q = Arc::new(QTensor::new(storage, (out_dim, a.in_dim))?);
                Weight::Quant(q.clone(), QMatMul::from_arc(q)?)
            }
            _ => Weight::Dense(Tensor::cat(&[&a.dense_out_in()?, &b.dense_out_in()?], 0)?),
        };
        Ok(QLinear {
            weight,
            bias,
            in_dim: a.in_dim,
            out_dim,
        })
    }

    /// The weight as a dense (out, in) tensor.
    fn dense_out_in(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::DenseT(w) => w.t()?.contiguous(),
            Weight::Quant(q, _) => q.dequantize(&q.device()),
        }
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        QLinear::forward(self, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rand(shape: (usize, usize)) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn quantized_weight_from_the_store_is_used_and_close() {
        let w = rand((64, 96));
        let b = rand((1, 64)).squeeze(0).unwrap();
        let mut dense = HashMap::new();
        dense.insert("p.weight".to_string(), w.clone());
        dense.insert("p.bias".to_string(), b.clone());
        let vb = candle_nn::VarBuilder::from_tensors(dense.clone(), DType::F32, &Device::Cpu);
        let exact = QLinear::new(96, 64, vb.pp("p")).unwrap();
        assert!(!exact.is_quantized());

        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let store = Arc::new(QuantStore::new(HashMap::from([(
            "p.weight".to_string(),
            q,
        )])));
        dense.remove("p.weight");
        let vb = candle_nn::VarBuilder::from_tensors(dense, DType::F32, &Device::Cpu);
        let ql = store.scope(|| QLinear::new(96, 64, vb.pp("p"))).unwrap();
        assert!(ql.is_quantized());
        assert!(store.unused_keys().is_empty());
        // outside the scope, nothing is quantized
        assert!(quantized("p.weight").is_none());

        let x = rand((5, 96));
        let (a, b) = (exact.forward(&x).unwrap(), ql.forward(&x).unwrap());
        let max = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff < 0.02 * max, "q8_0 error {diff} vs max {max}");

        let mut out = vec![0f32; 5 * 64];
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        ql.forward_into(&xs, 5, &mut out).unwrap();
        assert_eq!(out, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn concat_of_quantized_rows_equals_both_products() {
        let (wa, wb) = (rand((32, 64)), rand((16, 64)));
        let qa = Arc::new(QTensor::quantize(&wa, GgmlDType::Q8_0).unwrap());
        let qb = Arc::new(QTensor::quantize(&wb, GgmlDType::Q8_0).unwrap());
        let a = QLinear::from_quantized(qa, None).unwrap();
        let b = QLinear::from_quantized(qb, None).unwrap();
        let ab = QLinear::concat(&a, &b).unwrap();
        assert!(ab.is_quantized());
        let x = rand((3, 64));
        let want = Tensor::cat(&[a.forward(&x).unwrap(), b.forward(&x).unwrap()], 1).unwrap();
        let got = ab.forward(&x).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn mis_shaped_quantized_weight_names_the_key() {
        let q = Arc::new(QTensor::quantize(&rand((32, 64)), GgmlDType::Q8_0).unwrap());
        let store = Arc::new(QuantStore::new(HashMap::from([(
            "m.l.weight".to_string(),
            q,
        )])));
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = store
            .scope(|| QLinear::new_no_bias(32, 64, vb.pp("m").pp("l")))
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("m.l.weight") && msg.contains("[64, 32]"),
            "{msg}"
        );
    }
}
