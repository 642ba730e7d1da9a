//! Data-parallel gradient averaging behind a small trait, so that the training step does not
//! care whether it runs alone, as one of several simulated CPU workers (tests), or as one rank
//! of an NCCL group (`--features nccl`).
//!
//! The average is weighted by each worker's number of target tokens: a worker's gradient is
//! that of its *mean* token loss, so `Σ nᵢ·gᵢ / Σ nᵢ` is exactly the gradient of the mean loss
//! over the union of the workers' batches. N workers therefore equal one worker on the N-times
//! larger batch. (DeepSpeed's plain mean over ranks differs only when ranks hold different
//! token counts.)

use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Averages gradients (and logging scalars) across data-parallel workers.
pub trait GradAverager: Send {
    /// This worker's index in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of workers.
    fn world_size(&self) -> usize;
    /// Replaces `grads` (this worker's gradients of its mean loss over `weight` target tokens)
    /// by the weighted average over all workers. Returns the total weight. `None` entries
    /// count as zeros; the result is `None` only where every worker had `None`.
    fn average(&mut self, grads: &mut [Option<Tensor>], weight: f64) -> Result<f64>;
    /// Sums `values` element-wise over all workers (for logging).
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()>;
}

/// A single worker: averaging is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleWorker;

impl GradAverager for SingleWorker {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn average(&mut self, _grads: &mut [Option<Tensor>], weight: f64) -> Result<f64> {
        Ok(weight)
    }
    fn sum_scalars(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// One contribution: weighted gradients or scalars.
enum Contribution {
    Grads(Vec<Option<Tensor>>, f64),
    Scalars(Vec<f64>),
}

struct Round {
    generation: u64,
    slots: Vec<Option<Contribution>>,
    arrived: usize,
    result: Option<Arc<std::result::Result<Contribution, String>>>,
    taken: usize,
}

/// Workers in threads of one process, exchanging through shared memory (a CPU stand-in for
/// NCCL). Sums run in rank order, so results do not depend on thread timing.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use trainer::grad_sync::{GradAverager, ThreadGroup};
/// let mut workers = ThreadGroup::new(2);
/// let mut b = workers.pop().unwrap();
/// let mut a = workers.pop().unwrap();
/// let t = std::thread::spawn(move || {
///     let mut g = vec![Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap())];
///     b.average(&mut g, 1.0).unwrap();
///     g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0]
/// });
/// let mut g = vec![Some(Tensor::new(&[1.0f32], &Device::Cpu).unwrap())];
/// a.average(&mut g, 3.0).unwrap();
/// // (3·1 + 1·3) / 4
/// assert_eq!(g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0], 1.5);
/// assert_eq!(t.join().unwrap(), 1.5);
/// ```
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Round>, Condvar)>,
}

impl ThreadGroup {
    /// `n` connected workers, rank 0 first.
    pub fn new(n: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new((
            Mutex::new(Round {
                generation: 0,
                slots: (0..n).map(|_| None).collect(),
                arrived: 0,
                result: None,
                taken: 0,
            }),
            Condvar::new(),
        ));
        (0..n)
            .map(|rank| ThreadGroup {
                rank,
                world: n,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Contributes and waits for every worker; returns the combined result.
    fn exchange(&self, c: Contribution) -> Result<Arc<std::result::Result<Contribution, String>>> {
        let (lock, cv) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Wait until the previous round has been collected by everyone.
        while r.result.is_some() {
            r = cv.wait(r).unwrap_or_else(|e| e.into_inner());
        }
        let gen = r.generation;
        r.slots[self.rank] = Some(c);
        r.arrived += 1;
        if r.arrived == self.world {
            let slots: Vec<Contribution> = r
                .slots
                .iter_mut()
                .map(|s| s.take().expect("every rank arrived"))
                .collect();
            r.result = Some(Arc::new(combine(slots).map_err(|e| e.to_string())));
            r.arrived = 0;
            r.taken = 0;
            r.generation += 1;
            cv.notify_all();
        } else {
            while r.generation == gen {
                r = cv.wait(r).unwrap_or_else(|e| e.into_inner());
            }
        }
        let res = r.result.clone().expect("result of this round");
        r.taken += 1;
        if r.taken == self.world {
            r.result = None;
            cv.notify_all();
        }
        match &*res {
            Ok(_) => Ok(res),
            Err(e) => Err(Error::Other(e.clone())),
        }
    }
}

/// Rank-ordered sums.
fn combine(slots: Vec<Contribution>) -> Result<Contribution> {
    match &slots[0] {
        Contribution::Scalars(first) => {
            let mut acc = vec![0f64; first.len()];
            for s in &slots {
                let Contribution::Scalars(v) = s else {
                    return Err(Error::Other("workers disagree on the collective".into()));
                };
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += x;
                }
            }
            Ok(Contribution::Scalars(acc))
        }
        Contribution::Grads(first, _) => {
            let n = first.len();
            let mut total_w = 0f64;
            let mut acc: Vec<Option<Tensor>> = vec![None; n];
            for s in &slots {
                let Contribution::Grads(g, w) = s else {
                    return Err(Error::Other("workers disagree on the collective".into()));
                };
                if g.len() != n {
                    return Err(Error::Other(format!(
                        "workers have {} and {} gradients",
                        n,
                        g.len()
                    )));
                }
                total_w += w;
                for (a, gi) in acc.iter_mut().zip(g) {
                    if let Some(gi) = gi {
                        let scaled = (gi.to_dtype(DType::F32)? * *w)?;
                        *a = Some(match a.take() {
                            Some(x) => (x + scaled)?,
                            None => scaled,
                        });
                    }
                }
            }
            if total_w <= 0.0 {
                return Err(Error::Other("gradient averaging over zero tokens".into()));
            }
            let acc = acc
                .into_iter()
                .map(|a| a.map(|t| t / total_w).transpose())
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Contribution::Grads(acc, total_w))
        }
    }
}

impl GradAverager for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn average(&mut self, grads: &mut [Option<Tensor>], weight: f64) -> Result<f64> {
        let res = self.exchange(Contribution::Grads(grads.to_vec(), weight))?;
        match &*res {
            Ok(Contribution::Grads(g, w)) => {
                for (dst, src) in grads.iter_mut().zip(g) {
                    *dst = src.clone();
                }
                Ok(*w)
            }
            _ => Err(Error::Other("workers disagree on the collective".into())),
        }
    }
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()> {
        let res = self.exchange(Contribution::Scalars(values.to_vec()))?;
        match &*res {
            Ok(Contribution::Scalars(v)) => {
                values.copy_from_slice(v);
                Ok(())
            }
            _ => Err(Error::Other("workers disagree on the collective".into())),
        }
    }
}

#[cfg(feature = "nccl")]
pub use nccl::NcclAverager;

#[cfg(feature = "nccl")]
mod nccl {
    //! NCCL all-reduce over one process per GPU (`RANK`, `WORLD_SIZE` from the environment;
    //! rank 0 publishes the NCCL id in a file the other ranks poll).

    use std::path::Path;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

    use super::GradAverager;
    use crate::{Error, Result};

    /// One rank of an NCCL group.
    pub struct NcclAverager {
        comm: Rc<Comm>,
        device: Device,
    }

    // The communicator is used only from the training thread that created it.
    unsafe impl Send for NcclAverager {}

    impl NcclAverager {
        /// Joins the group: rank 0 writes the id to `id_file`, the others wait for it.
        pub fn new(device: &Device, rank: usize, world: usize, id_file: &Path) -> Result<Self> {
            let Device::Cuda(cuda) = device else {
                return Err(Error::Config(
                    "NCCL needs a CUDA device (train.device)".into(),
                ));
            };
            let id = if rank == 0 {
                let id = Id::new().map_err(|e| Error::Other(format!("ncclGetUniqueId: {e:?}")))?;
                let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
                let tmp = id_file.with_extension("tmp");
                std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
                std::fs::rename(&tmp, id_file).map_err(|e| Error::io(id_file, e))?;
                id
            } else {
                let start = Instant::now();
                loop {
                    if let Ok(bytes) = std::fs::read(id_file) {
                        if bytes.len() == 128 {
                            let mut internal = [0 as std::ffi::c_char; 128];
                            for (d, s) in internal.iter_mut().zip(&bytes) {
                                *d = *s as std::ffi::c_char;
                            }
                            break Id::uninit(internal);
                        }
                    }
                    if start.elapsed() > Duration::from_secs(300) {
                        return Err(Error::Other(format!(
                            "rank {rank}: no NCCL id from rank 0 in {} after 300 s",
                            id_file.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            };
            let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
                .map_err(|e| Error::Other(format!("ncclCommInitRank: {e:?}")))?;
            Ok(Self {
                comm: Rc::new(comm),
                device: device.clone(),
            })
        }

        fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
            Ok(t.contiguous()?.apply_op1_no_bwd(&AllReduce {
                comm: self.comm.clone(),
            })?)
        }
    }

    struct AllReduce {
        comm: Rc<Comm>,
    }

    impl CustomOp1 for AllReduce {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce needs CUDA tensors")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("all-reduce input must be contiguous")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            let dev = s.device.clone();
            let mut dst = dev.alloc_zeros::<f32>(end - start)?;
            self.comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }

    impl GradAverager for NcclAverager {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world_size(&self) -> usize {
            self.comm.world_size()
        }
        fn average(&mut self, grads: &mut [Option<Tensor>], weight: f64) -> Result<f64> {
            // One flat buffer: [w·g_0 .. w·g_n, w]; missing gradients are zeros.
            let mut parts = Vec::with_capacity(grads.len() + 1);
            let mut shapes = Vec::with_capacity(grads.len());
            for g in grads.iter() {
                match g {
                    Some(g) => {
                        shapes.push(Some(g.shape().clone()));
                        parts.push((g.to_dtype(DType::F32)?.flatten_all()? * weight)?);
                    }
                    None => shapes.push(None),
                }
            }
            // Ranks must agree on which gradients exist; a flag per slot checks it.
            let present: Vec<f32> = shapes.iter().map(|s| s.is_some() as u8 as f32).collect();
            let n_present = present.len();
            parts.push(Tensor::from_vec(present, n_present, &self.device)?);
            parts.push(Tensor::from_vec(vec![weight as f32], 1, &self.device)?);
            let flat = Tensor::cat(&parts, 0)?;
            let sum = self.all_reduce(&flat)?;
            let total = sum.i_last(1)?;
            let world = self.world_size() as f32;
            let flags = sum
                .narrow(0, sum.dim(0)? - 1 - n_present, n_present)?
                .to_vec1::<f32>()?;
            if flags
                .iter()
                .zip(&shapes)
                .any(|(f, s)| (*f == world) != s.is_some())
            {
                return Err(Error::Other(
                    "ranks disagree on which parameters received gradients".into(),
                ));
            }
            let mut off = 0;
            for (g, shape) in grads.iter_mut().zip(shapes) {
                if let Some(shape) = shape {
                    let n = shape.elem_count();
                    *g = Some((sum.narrow(0, off, n)?.reshape(shape)? / total as f64)?);
                    off += n;
                }
            }
            Ok(total as f64)
        }
        fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()> {
            let t = Tensor::from_vec(
                values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                values.len(),
                &self.device,
            )?;
            let s = self.all_reduce(&t)?.to_vec1::<f32>()?;
            for (d, v) in values.iter_mut().zip(s) {
                *d = v as f64;
            }
            Ok(())
        }
    }

    trait LastScalar {
        fn i_last(&self, from_end: usize) -> Result<f32>;
    }

    impl LastScalar for Tensor {
        fn i_last(&self, from_end: usize) -> Result<f32> {
            let n = self.dim(0)?;
            Ok(self.narrow(0, n - from_end, 1)?.to_vec1::<f32>()?[0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rounds_are_reusable_and_rank_ordered() {
        let workers = ThreadGroup::new(3);
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| {
                std::thread::spawn(move || {
                    let mut outs = Vec::new();
                    for round in 0..5 {
                        let v = (w.rank() * 10 + round) as f32;
                        let mut g = vec![Some(Tensor::new(&[v], &Device::Cpu).unwrap()), None];
                        let tw = w.average(&mut g, (w.rank() + 1) as f64).unwrap();
                        assert_eq!(tw, 6.0);
                        assert!(g[1].is_none());
                        outs.push(g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0]);
                        let mut s = [1.0, w.rank() as f64];
                        w.sum_scalars(&mut s).unwrap();
                        assert_eq!(s, [3.0, 3.0]);
                    }
                    outs
                })
            })
            .collect();
        let results: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..5 {
            // Σ (r+1)(10r + round) / 6
            let expect = (0..3)
                .map(|r| (r + 1) as f32 * (10 * r + round) as f32)
                .sum::<f32>()
                / 6.0;
            for r in &results {
                assert!((r[round] - expect).abs() < 1e-5);
            }
        }
    }
}
