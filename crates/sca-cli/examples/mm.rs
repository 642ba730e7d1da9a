use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    for &(m, k, n) in &[
        (4096usize, 768usize, 2304usize),
        (4096, 768, 3072),
        (4096, 3072, 768),
        (2048, 2048, 2048),
    ] {
        let a = Tensor::randn(0f32, 1., (m, k), &d)?;
        let b = Tensor::randn(0f32, 1., (n, k), &d)?;
        let bt = b.t()?;
        let bc = bt.contiguous()?;
        a.matmul(&bt)?;
        for (name, rhs) in [("w.t()", &bt), ("contig", &bc)] {
            let t = Instant::now();
            let r = 5;
            for _ in 0..r {
                a.matmul(rhs)?;
            }
            let s = t.elapsed().as_secs_f64() / r as f64;
            println!(
                "{m}x{k}x{n} {name}: {:.1} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
    // attention-like batched: (N, 196, 64) @ (N, 64, 196)
    let q = Tensor::randn(0f32, 1., (300, 196, 64), &d)?;
    let k = Tensor::randn(0f32, 1., (300, 64, 196), &d)?;
    q.matmul(&k)?;
    let t = Instant::now();
    for _ in 0..5 {
        q.matmul(&k)?;
    }
    let s = t.elapsed().as_secs_f64() / 5.0;
    println!(
        "batched 300x196x64x196: {:.1} ms {:.1} GFLOP/s",
        s * 1e3,
        2.0 * 300.0 * 196.0 * 64.0 * 196.0 / s / 1e9
    );
    let x = Tensor::randn(0f32, 1., (300, 196, 196), &d)?;
    let t = Instant::now();
    for _ in 0..5 {
        candle_nn::ops::softmax_last_dim(&x)?;
    }
    println!(
        "softmax 300x196x196: {:.1} ms",
        t.elapsed().as_secs_f64() / 5.0 * 1e3
    );
    let x = Tensor::randn(0f32, 1., (4096, 3072), &d)?;
    let t = Instant::now();
    for _ in 0..5 {
        x.gelu_erf()?;
    }
    println!(
        "gelu_erf 4096x3072: {:.1} ms",
        t.elapsed().as_secs_f64() / 5.0 * 1e3
    );
    Ok(())
}
