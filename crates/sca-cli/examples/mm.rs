//! Scratch micro-benchmark of the sca-core CPU kernels (matmul, GELU, softmax).
use sca_core::ops::{gemm, kernels};
use std::time::Instant;

fn bench(name: &str, flops: f64, reps: usize, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("{name}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
}

fn main() {
    let rnd = |n: usize| (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
    for &(m, k, n) in &[(4096usize, 768usize, 2304usize), (4096, 768, 3072), (4096, 3072, 768), (2048, 2048, 2048), (4096, 256, 128), (1, 768, 2304), (1, 768, 50257), (8, 768, 50257)] {
        let a = rnd(m * k);
        let w = rnd(n * k);
        let mut c = vec![0f32; m * n];
        let reps = if m * n * k > 100_000_000 { 5 } else { 50 };
        bench(&format!("{m}x{k}x{n} par"), 2.0 * (m * k * n) as f64, reps, || {
            gemm::par_gemm(1.0, gemm::Mat::dense(&a, m, k), gemm::Mat::dense(&w, n, k).t(), 0.0, &mut c, n)
        });
        bench(&format!("{m}x{k}x{n} 1thr"), 2.0 * (m * k * n) as f64, reps, || {
            gemm::gemm(1.0, gemm::Mat::dense(&a, m, k), gemm::Mat::dense(&w, n, k).t(), 0.0, &mut c, n)
        });
    }
    let mut x = rnd(4096 * 3072);
    bench("gelu 4096x3072 (1 thread)", 0.0, 5, || kernels::gelu_inplace(&mut x));
    let mut s = rnd(300 * 196 * 196);
    let rh = rnd(300 * 196 * 14);
    bench("softmax_rel_pos 300x196x196 (1 thread)", 0.0, 5, || kernels::softmax_rel_pos(&mut s, &rh, &rh, 14, 14));
    bench("softmax 300x196x196 (1 thread)", 0.0, 5, || kernels::softmax_rows(&mut s, 196));
}
