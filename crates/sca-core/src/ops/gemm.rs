//! Single-precision matrix products on strided slices: OpenBLAS `cblas_sgemm` with the
//! `openblas` feature, the pure-Rust `gemm` crate (what candle uses) otherwise.
//!
//! [`gemm`] runs on the calling thread, so it can be used inside rayon tasks; [`par_gemm`] splits
//! one product over candle's rayon pool. OpenBLAS is kept single-threaded: rayon owns the cores,
//! and OpenBLAS's own spinning worker threads would otherwise compete with it between products.

use rayon::prelude::*;

/// A strided view of an f32 matrix: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix whose rows are `ld` apart.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    /// A dense row-major `rows x cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `r0..r0 + n`.
    pub fn rows(self, r0: usize, n: usize) -> Self {
        assert!(r0 + n <= self.rows, "rows {r0}+{n} of {}", self.rows);
        let data = if n == 0 {
            &self.data[..0]
        } else {
            &self.data[r0 * self.rs..]
        };
        Self {
            data,
            rows: n,
            ..self
        }
    }

    /// `n` rows starting at `r0`, every `step`-th one.
    pub fn rows_step(self, r0: usize, step: usize, n: usize) -> Self {
        assert!(
            n == 0 || r0 + (n - 1) * step < self.rows,
            "rows {r0}+{n}*{step} of {}",
            self.rows
        );
        let data = if n == 0 {
            &self.data[..0]
        } else {
            &self.data[r0 * self.rs..]
        };
        Self {
            data,
            rows: n,
            rs: self.rs * step,
            ..self
        }
    }

    /// Columns `c0..c0 + n`.
    pub fn cols(self, c0: usize, n: usize) -> Self {
        assert!(c0 + n <= self.cols, "cols {c0}+{n} of {}", self.cols);
        let data = if n == 0 {
            &self.data[..0]
        } else {
            &self.data[c0 * self.cs..]
        };
        Self {
            data,
            cols: n,
            ..self
        }
    }

    /// Panics unless every element lies inside `data`: what makes the FFI calls sound.
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "matrix view {}x{} (strides {}, {}) overruns its {} elements",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            );
        }
    }
}

/// Checks a product's operands; false when there is nothing left to compute.
fn prepare(a: &Mat, b: &Mat, beta: f32, c: &mut [f32], ldc: usize) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions {k} and {}", b.rows);
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        ldc >= n && (m - 1) * ldc + n <= c.len(),
        "gemm: {m}x{n} output (ldc {ldc}) in {} elements",
        c.len()
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            for v in &mut row[..n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return false;
    }
    true
}

/// `c = alpha * a @ b + beta * c` on the calling thread; `c` is row-major with rows `ldc` apart.
/// With `beta == 0`, `c` is not read (it may hold garbage, NaN included).
pub fn gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    if prepare(&a, &b, beta, c, ldc) {
        backend::gemm(alpha, a, b, beta, c, ldc);
    }
}

/// [`gemm`] split over rayon's threads (by rows of `c`, or by columns when `a` has few rows).
pub fn par_gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    if !prepare(&a, &b, beta, c, ldc) {
        return;
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = rayon::current_num_threads();
    // below ~4 MFLOP a split costs more than it saves
    if threads == 1 || m * n * k < (1 << 21) {
        return backend::gemm(alpha, a, b, beta, c, ldc);
    }
    if !backend::SPLITS {
        return backend::par_gemm(alpha, a, b, beta, c, ldc, threads);
    }
    if m >= 32 * threads {
        // Row blocks of at least 64 rows, a few per thread so a busy core does not stall the rest.
        let rows = m.div_ceil(4 * threads).max(64);
        c[..(m - 1) * ldc + n]
            .par_chunks_mut(rows * ldc)
            .enumerate()
            .for_each(|(i, c)| {
                let r0 = i * rows;
                let a = a.rows(r0, rows.min(m - r0));
                backend::gemm(alpha, a, b, beta, c, ldc)
            });
    } else {
        // Few rows (LM decoding): split the columns, each block into its own buffer.
        let cols = n.div_ceil(threads).next_multiple_of(16);
        let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(cols))
            .into_par_iter()
            .map(|j| {
                let c0 = j * cols;
                let nj = cols.min(n - c0);
                let mut out = vec![0f32; m * nj];
                if beta != 0.0 {
                    for (r, o) in out.chunks_mut(nj).enumerate() {
                        o.copy_from_slice(&c[r * ldc + c0..r * ldc + c0 + nj]);
                    }
                }
                backend::gemm(alpha, a, b.cols(c0, nj), beta, &mut out, nj);
                (c0, out)
            })
            .collect();
        for (c0, out) in blocks {
            let nj = out.len() / m;
            for (r, o) in out.chunks(nj).enumerate() {
                c[r * ldc + c0..r * ldc + c0 + nj].copy_from_slice(o);
            }
        }
    }
}

#[cfg(feature = "openblas")]
mod backend {
    use super::Mat;
    use std::ffi::c_int;
    use std::sync::Once;

    /// We split products over rayon ourselves.
    pub(super) const SPLITS: bool = true;

    pub(super) fn par_gemm(_: f32, _: Mat, _: Mat, _: f32, _: &mut [f32], _: usize, _: usize) {
        unreachable!("SPLITS")
    }

    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    const TRANS: c_int = 112;

    #[link(name = "openblas")]
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        fn cblas_sgemm(
            order: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn openblas_set_num_threads(n: c_int);
    }

    static INIT: Once = Once::new();

    fn init() {
        // SAFETY: a setter of OpenBLAS's global state, run once before the first product.
        INIT.call_once(|| unsafe { openblas_set_num_threads(1) });
    }

    /// (transpose flag, leading dimension) of a row-major BLAS operand, if the view is one.
    fn operand(m: &Mat) -> Option<(c_int, usize)> {
        if m.cs == 1 || m.cols == 1 {
            let ld = if m.rows == 1 { m.cols } else { m.rs };
            (ld >= m.cols).then_some((NO_TRANS, ld))
        } else if m.rs == 1 || m.rows == 1 {
            let ld = if m.cols == 1 { m.rows } else { m.cs };
            (ld >= m.rows).then_some((TRANS, ld))
        } else {
            None
        }
    }

    /// A dense copy of a view with no unit stride.
    fn dense(m: &Mat) -> Vec<f32> {
        let mut v = Vec::with_capacity(m.rows * m.cols);
        for r in 0..m.rows {
            v.extend((0..m.cols).map(|c| m.data[r * m.rs + c * m.cs]));
        }
        v
    }

    pub(super) fn gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
        init();
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let (a_buf, b_buf);
        let (ta, lda, a) = match operand(&a) {
            Some((t, ld)) => (t, ld, a),
            None => {
                a_buf = dense(&a);
                (NO_TRANS, k, Mat::dense(&a_buf, m, k))
            }
        };
        let (tb, ldb, b) = match operand(&b) {
            Some((t, ld)) => (t, ld, b),
            None => {
                b_buf = dense(&b);
                (NO_TRANS, n, Mat::dense(&b_buf, k, n))
            }
        };
        let int = |v: usize| c_int::try_from(v).expect("matrix dimension exceeds i32");
        // SAFETY: `a` and `b` were bounds-checked by `Mat::check` (or are dense copies), `c` by
        // the caller; the leading dimensions describe exactly those views.
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                ta,
                tb,
                int(m),
                int(n),
                int(k),
                alpha,
                a.data.as_ptr(),
                int(lda.max(1)),
                b.data.as_ptr(),
                int(ldb.max(1)),
                beta,
                c.as_mut_ptr(),
                int(ldc),
            )
        }
    }
}

#[cfg(not(feature = "openblas"))]
mod backend {
    use super::Mat;
    use gemm::Parallelism;

    /// The `gemm` crate parallelises one product better than our row split would.
    pub(super) const SPLITS: bool = false;

    fn run(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize, par: Parallelism) {
        // SAFETY: the views were bounds-checked by `Mat::check`, `c` by the caller.
        // (The crate computes dst = alpha * dst + beta * lhs @ rhs: our alpha and beta swap.)
        unsafe {
            gemm::gemm(
                a.rows,
                b.cols,
                a.cols,
                c.as_mut_ptr(),
                1,
                ldc as isize,
                beta != 0.0,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr(),
                b.cs as isize,
                b.rs as isize,
                beta,
                alpha,
                false,
                false,
                false,
                par,
            )
        }
    }

    pub(super) fn gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
        run(alpha, a, b, beta, c, ldc, Parallelism::None)
    }

    pub(super) fn par_gemm(
        alpha: f32,
        a: Mat,
        b: Mat,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        threads: usize,
    ) {
        run(alpha, a, b, beta, c, ldc, Parallelism::Rayon(threads))
    }
}
