//! Scratch: global-attention pieces for one head, single thread (min of reps).
use sca_core::ops::gemm::{gemm, Mat};
use sca_core::ops::kernels;
use std::time::Instant;

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b * 1e3
}

fn main() {
    let (n, hd, c3) = (4096usize, 64usize, 2304usize);
    let rnd = |len: usize| (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
    let qkv = rnd(n * c3);
    let kc = rnd(n * hd);
    let vc = rnd(n * hd);
    let rh = rnd(n * 64);
    for &bq in &[64usize, 128, 256, 512] {
        let mut s = vec![0f32; bq * n];
        let mut o = vec![0f32; bq * hd];
        let blocks = n / bq;
        let q = Mat::new(&qkv, n, hd, c3);
        let k = Mat::new(&qkv[768..], n, hd, c3);
        let v = Mat::new(&qkv[1536..], n, hd, c3);
        let t_s = best(3, || for b in 0..blocks { gemm(0.125, q.rows(b * bq, bq), k.t(), 0.0, &mut s, n) });
        let t_sc = best(3, || for b in 0..blocks { gemm(0.125, q.rows(b * bq, bq), Mat::dense(&kc, n, hd).t(), 0.0, &mut s, n) });
        let t_sm = best(3, || for b in 0..blocks { kernels::softmax_rel_pos(&mut s, &rh[b * bq * 64..], &rh[b * bq * 64..], 64, 64) });
        let t_pv = best(3, || for _ in 0..blocks { gemm(1.0, Mat::dense(&s, bq, n), v, 0.0, &mut o, hd) });
        let t_pvc = best(3, || for _ in 0..blocks { gemm(1.0, Mat::dense(&s, bq, n), Mat::dense(&vc, n, hd), 0.0, &mut o, hd) });
        println!("bq {bq}: S strided {t_s:.1} contig {t_sc:.1} | softmax {t_sm:.1} | PV strided {t_pv:.1} contig {t_pvc:.1}  (ms per head, ideal gemm {:.1})", 2.0 * (n * n * hd) as f64 / 120e9 * 1e3);
    }
}
