//! Matrix products through the `gemm` crate, behind a safe, bounds-checked view.

use gemm::Parallelism;

/// A strided read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    pub(crate) fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        View { data, rs, cs }
    }
}

/// Panics unless every element `(r, c)`, `r < rows`, `c < cols` of a matrix with strides
/// `(rs, cs)` lies inside a slice of length `len`. This makes [`matmul`] sound.
fn check_extent(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(
            last < len,
            "matmul: {what} view out of bounds ({last} >= {len})"
        );
    }
}

/// `dst[m, n] = alpha * lhs[m, k] rhs[k, n]`, plus the old `dst` when `accumulate`; `dst` has
/// row stride `dst_rs` and unit column stride. A safe, bounds-checked wrapper of `gemm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    alpha: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_extent("dst", dst.len(), m, n, dst_rs, 1);
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_rs..row * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    check_extent("lhs", lhs.data.len(), m, k, lhs.rs, lhs.cs);
    check_extent("rhs", rhs.data.len(), k, n, rhs.rs, rhs.cs);
    // SAFETY: `check_extent` proved that every element gemm reads from `lhs`/`rhs` or writes
    // to `dst` lies inside its slice; `dst` is borrowed mutably, so it aliases neither input.
    // Strides of live slices fit in `isize`. gemm computes `dst = 1*dst + alpha*lhs*rhs` when
    // `read_dst` is true and `dst = alpha*lhs*rhs` (old values ignored) otherwise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out[t, n] = sum_k x[t, k] * w[n, k] + b[n]`; `x [t, k]`, `w [n, k]` (PyTorch layout),
/// `out [t, n]`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    t: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), t * k);
    debug_assert_eq!(w.len(), n * k);
    debug_assert_eq!(out.len(), t * n);
    if let Some(b) = b {
        debug_assert_eq!(b.len(), n);
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(b);
        }
    }
    // `w^T` as a `[k, n]` view: element `(kk, j)` is `w[j * k + kk]`.
    matmul(
        t,
        n,
        k,
        out,
        n,
        View::new(x, k, 1),
        View::new(w, 1, k),
        1.0,
        b.is_some(),
        Parallelism::Rayon(0),
    );
}

/// The best rate, in FLOP/s, of [`linear`] (the CPU backend's GEMM, all threads) over `reps`
/// timed runs of a `[t, k] x [n, k]^T` product on fixed non-zero inputs, after one untimed
/// run: the machine's GEMM rate at one of a model's shapes, for `bench` to set a call
/// against.
pub fn linear_rate(t: usize, k: usize, n: usize, reps: usize) -> f64 {
    let fill = |len: usize, mult: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * mult) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (x, w) = (fill(t * k, 7919), fill(n * k, 104_729));
    let mut out = vec![0.0; t * n];
    linear(&x, &w, None, t, k, n, &mut out);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = std::time::Instant::now();
        linear(&x, &w, None, t, k, n, &mut out);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (t * k * n) as f64 / best.max(1e-9)
}
