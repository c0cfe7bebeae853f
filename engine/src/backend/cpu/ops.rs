//! The CPU reference ops in f32 (MODEL_SPEC sections 1-4): the semantics of every
//! [`Op`](crate::model::graph::Op), and the reference every GPU kernel is checked against.
//!
//! All tensors are row-major slices. Shapes are validated by the caller (the graph fixes
//! them), so shape mismatches are only `debug_assert!`ed. Row-wise ops run in parallel over
//! chunks of rows with `rayon`; matrix products go through `gemm`; attention runs in
//! parallel over (branch, window, head) or (branch, query chunk).

use gemm::Parallelism;
use rayon::prelude::*;

/// Epsilon of LayerNorm and RMSNorm.
const EPS: f32 = 1e-6;

/// Elements a parallel task should at least get before splitting further.
const MIN_TASK_ELEMS: usize = 16 * 1024;

/// Query rows per cross-attention task.
const CROSS_QUERY_CHUNK: usize = 128;

/// Rows of width `width` per parallel task: enough to amortise the task overhead.
fn rows_per_task(width: usize) -> usize {
    (MIN_TASK_ELEMS / width.max(1)).max(1)
}

/// A strided read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
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

/// `LN(v)` of one row into `out`: mean and biased variance in two passes.
fn ln_row(v: &[f32], out: &mut [f32]) {
    let d = v.len() as f32;
    let mean = v.iter().sum::<f32>() / d;
    let var = v.iter().map(|&a| (a - mean) * (a - mean)).sum::<f32>() / d;
    let inv = 1.0 / (var + EPS).sqrt();
    for (o, &a) in out.iter_mut().zip(v) {
        *o = (a - mean) * inv;
    }
}

/// Row-wise LayerNorm without affine over rows of width `d` (eps 1e-6, biased variance).
pub fn layer_norm(x: &[f32], d: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert_eq!(x.len() % d.max(1), 0);
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                ln_row(x, o);
            }
        });
}

/// The frame of token row `t` when rows repeat the pattern of `frames * tokens_per_frame`
/// tokens (one repetition per branch).
fn frame_of(t: usize, frames: usize, tokens_per_frame: usize) -> usize {
    (t % (frames * tokens_per_frame)) / tokens_per_frame
}

/// Modulation vector `i` of frame `f` in `mods [frames, k, d]`.
fn mod_vec(mods: &[f32], k: usize, d: usize, f: usize, i: usize) -> &[f32] {
    &mods[(f * k + i) * d..(f * k + i + 1) * d]
}

/// `out[t] = LN(x[t]) * (1 + mods[f][scale]) + mods[f][shift]` for rows of width `d`, with
/// `mods [frames, k, d]` and `f = (t % tokens) / tokens_per_frame`,
/// `tokens = frames * tokens_per_frame`.
#[allow(clippy::too_many_arguments)]
pub fn ada_ln(
    x: &[f32],
    d: usize,
    mods: &[f32],
    k: usize,
    shift: usize,
    scale: usize,
    frames: usize,
    tokens_per_frame: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert_eq!(mods.len(), frames * k * d);
    debug_assert!(shift < k && scale < k);
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .enumerate()
        .for_each(|(chunk, (o, x))| {
            for (r, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let f = frame_of(chunk * rows + r, frames, tokens_per_frame);
                let sh = mod_vec(mods, k, d, f, shift);
                let sc = mod_vec(mods, k, d, f, scale);
                ln_row(x, o);
                for ((o, &sh), &sc) in o.iter_mut().zip(sh).zip(sc) {
                    *o = *o * (1.0 + sc) + sh;
                }
            }
        });
}

/// In place: in every row of `x [rows, cols]`, the `dh` entries of head `e < heads` at
/// columns `[offset + e*dh, offset + (e+1)*dh)` become `u / sqrt(mean(u^2) + 1e-6) * gain`.
pub fn head_rms_norm(
    x: &mut [f32],
    cols: usize,
    offset: usize,
    heads: usize,
    dh: usize,
    gain: &[f32],
) {
    debug_assert_eq!(x.len() % cols.max(1), 0);
    debug_assert!(offset + heads * dh <= cols);
    debug_assert_eq!(gain.len(), dh);
    let rows = rows_per_task(cols);
    x.par_chunks_mut(rows * cols).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(cols) {
            for u in row[offset..offset + heads * dh].chunks_exact_mut(dh) {
                let ms = u.iter().map(|&a| a * a).sum::<f32>() / dh as f32;
                let inv = 1.0 / (ms + EPS).sqrt();
                for (a, &g) in u.iter_mut().zip(gain) {
                    *a = *a * inv * g;
                }
            }
        }
    });
}

/// In place, row-wise numerically stable softmax of `s [rows, cols]`.
fn softmax_rows(s: &mut [f32], cols: usize) {
    for row in s.chunks_exact_mut(cols) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
        let mut sum = 0.0;
        for a in row.iter_mut() {
            *a = (*a - max).exp();
            sum += *a;
        }
        let inv = 1.0 / sum;
        for a in row.iter_mut() {
            *a *= inv;
        }
    }
}

/// `out [n, dh] = softmax(q k^T * scale) v` for one head: `q [n, dh]` and `k, v [m, dh]`
/// as views; `scores` is scratch of at least `n * m`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: View,
    k: View,
    v: View,
    n: usize,
    m: usize,
    dh: usize,
    scores: &mut [f32],
    out: &mut [f32],
    out_rs: usize,
) {
    let scale = 1.0 / (dh as f32).sqrt();
    let s = &mut scores[..n * m];
    // k^T as a `[dh, m]` view swaps k's strides.
    let kt = View::new(k.data, k.cs, k.rs);
    matmul(n, m, dh, s, m, q, kt, scale, false, Parallelism::None);
    softmax_rows(s, m);
    matmul(
        n,
        dh,
        m,
        out,
        out_rs,
        View::new(s, m, 1),
        v,
        1.0,
        false,
        Parallelism::None,
    );
}

/// The token ranges `[lo, hi)` along one axis of length `g` whose window key
/// `(i + shift) / window` is `key`.
fn window_range(key: usize, g: usize, window: usize, shift: usize) -> (usize, usize) {
    let lo = (key * window).saturating_sub(shift).min(g);
    let hi = ((key + 1) * window).saturating_sub(shift).min(g);
    (lo, hi)
}

/// Every non-empty window of a grid as the ascending list of its token indices
/// `n = (f*Ht + i)*Wt + j`.
fn windows(grid: [usize; 3], window: [usize; 3], shift: [usize; 3]) -> Vec<Vec<usize>> {
    let keys = |a: usize| {
        if grid[a] == 0 {
            0
        } else {
            (grid[a] - 1 + shift[a]) / window[a] + 1
        }
    };
    let [_, ht, wt] = grid;
    let mut out = Vec::new();
    for kf in 0..keys(0) {
        let (f0, f1) = window_range(kf, grid[0], window[0], shift[0]);
        for ki in 0..keys(1) {
            let (i0, i1) = window_range(ki, grid[1], window[1], shift[1]);
            for kj in 0..keys(2) {
                let (j0, j1) = window_range(kj, grid[2], window[2], shift[2]);
                let mut tokens = Vec::with_capacity((f1 - f0) * (i1 - i0) * (j1 - j0));
                for f in f0..f1 {
                    for i in i0..i1 {
                        tokens.extend((j0..j1).map(|j| (f * ht + i) * wt + j));
                    }
                }
                if !tokens.is_empty() {
                    out.push(tokens);
                }
            }
        }
    }
    out
}

/// Window self-attention (MODEL_SPEC section 3). `qkv [batch*N, 3D]` (q columns `[0, D)`,
/// k `[D, 2D)`, v `[2D, 3D)`, head `e` using `[e*dh, (e+1)*dh)` of each); branch `b` owns
/// rows `[b*N, (b+1)*N)`, token `n = (f*Ht + i)*Wt + j` of `grid = [Ft, Ht, Wt]`. Token
/// `(f, i, j)` attends to every token of its branch with the same window key
/// `((f+s_f)/Fw, (i+s_h)/Hw, (j+s_w)/Ww)` (floor, no modulo), with scale `1/sqrt(dh)`.
/// `out [batch*N, D]` concatenates the heads.
///
/// Parallel over (branch, window, head): each task gathers its window's q/k/v into
/// contiguous buffers, runs two gemms and a stable softmax; results are scattered back.
#[allow(clippy::too_many_arguments)]
pub fn window_attention(
    qkv: &[f32],
    batch: usize,
    grid: [usize; 3],
    window: [usize; 3],
    shift: [usize; 3],
    heads: usize,
    d: usize,
    out: &mut [f32],
) {
    let n_tok: usize = grid.iter().product();
    let dh = d / heads;
    debug_assert_eq!(dh * heads, d);
    debug_assert!(window.iter().all(|&w| w > 0));
    debug_assert_eq!(qkv.len(), batch * n_tok * 3 * d);
    debug_assert_eq!(out.len(), batch * n_tok * d);
    let wins = windows(grid, window, shift);
    let tasks: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| (0..wins.len()).flat_map(move |w| (0..heads).map(move |e| (b, w, e))))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, w, e)| {
            let tokens = &wins[w];
            let m = tokens.len();
            let mut q = Vec::with_capacity(m * dh);
            let mut k = Vec::with_capacity(m * dh);
            let mut v = Vec::with_capacity(m * dh);
            for &t in tokens {
                let row = &qkv[(b * n_tok + t) * 3 * d..(b * n_tok + t + 1) * 3 * d];
                q.extend_from_slice(&row[e * dh..(e + 1) * dh]);
                k.extend_from_slice(&row[d + e * dh..d + (e + 1) * dh]);
                v.extend_from_slice(&row[2 * d + e * dh..2 * d + (e + 1) * dh]);
            }
            let mut scores = vec![0.0; m * m];
            let mut o = vec![0.0; m * dh];
            attend(
                View::new(&q, dh, 1),
                View::new(&k, dh, 1),
                View::new(&v, dh, 1),
                m,
                m,
                dh,
                &mut scores,
                &mut o,
                dh,
            );
            o
        })
        .collect();
    for (&(b, w, e), o) in tasks.iter().zip(&results) {
        for (&t, o) in wins[w].iter().zip(o.chunks_exact(dh)) {
            let r = (b * n_tok + t) * d + e * dh;
            out[r..r + dh].copy_from_slice(o);
        }
    }
}

/// Cross-attention: `q [batch*tokens, D]` to `kv [batch*text_len, 2D]` (keys columns
/// `[0, D)`, values `[D, 2D)`), branch `b`'s queries attending to branch `b`'s text rows
/// whose `mask [batch*text_len]` is 1, scale `1/sqrt(dh)`, into `out [batch*tokens, D]`.
/// A branch without any unmasked row gets zeros (the engine rejects such masks earlier).
///
/// Parallel over (branch, chunk of query rows); the unmasked text rows of a branch are
/// gathered once, and each task writes its rows of `out` directly.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention(
    q: &[f32],
    kv: &[f32],
    mask: &[f32],
    batch: usize,
    tokens: usize,
    text_len: usize,
    heads: usize,
    d: usize,
    out: &mut [f32],
) {
    let dh = d / heads;
    debug_assert_eq!(dh * heads, d);
    debug_assert_eq!(q.len(), batch * tokens * d);
    debug_assert_eq!(kv.len(), batch * text_len * 2 * d);
    debug_assert_eq!(mask.len(), batch * text_len);
    debug_assert_eq!(out.len(), batch * tokens * d);
    if tokens == 0 || d == 0 {
        return;
    }
    // The unmasked K/V rows `[m_b, 2D]` of every branch.
    let valid: Vec<Vec<f32>> = (0..batch)
        .map(|b| {
            (0..text_len)
                .filter(|&l| mask[b * text_len + l] != 0.0)
                .flat_map(|l| &kv[(b * text_len + l) * 2 * d..(b * text_len + l + 1) * 2 * d])
                .copied()
                .collect()
        })
        .collect();
    out.par_chunks_mut(tokens * d)
        .zip(q.par_chunks(tokens * d))
        .zip(&valid)
        .for_each(|((out_b, q_b), kv_b)| {
            let m = kv_b.len() / (2 * d);
            if m == 0 {
                out_b.fill(0.0);
                return;
            }
            out_b
                .par_chunks_mut(CROSS_QUERY_CHUNK * d)
                .zip(q_b.par_chunks(CROSS_QUERY_CHUNK * d))
                .for_each(|(o, qc)| {
                    let n = qc.len() / d;
                    let mut scores = vec![0.0; n * m];
                    for e in 0..heads {
                        attend(
                            View::new(&qc[e * dh..], d, 1),
                            View::new(&kv_b[e * dh..], 2 * d, 1),
                            View::new(&kv_b[d + e * dh..], 2 * d, 1),
                            n,
                            m,
                            dh,
                            &mut scores,
                            &mut o[e * dh..],
                            d,
                        );
                    }
                });
        });
}

/// `h[t] += mods[f][gate] * y[t]` for rows of width `d`, `f` as in [`ada_ln`].
#[allow(clippy::too_many_arguments)]
pub fn gated_residual(
    h: &mut [f32],
    y: &[f32],
    d: usize,
    mods: &[f32],
    k: usize,
    gate: usize,
    frames: usize,
    tokens_per_frame: usize,
) {
    debug_assert_eq!(h.len(), y.len());
    debug_assert_eq!(mods.len(), frames * k * d);
    debug_assert!(gate < k);
    let rows = rows_per_task(d);
    h.par_chunks_mut(rows * d)
        .zip(y.par_chunks(rows * d))
        .enumerate()
        .for_each(|(chunk, (h, y))| {
            for (r, (h, y)) in h.chunks_exact_mut(d).zip(y.chunks_exact(d)).enumerate() {
                let g = mod_vec(
                    mods,
                    k,
                    d,
                    frame_of(chunk * rows + r, frames, tokens_per_frame),
                    gate,
                );
                for ((h, &y), &g) in h.iter_mut().zip(y).zip(g) {
                    *h += g * y;
                }
            }
        });
}

/// `h += y`.
pub fn residual(h: &mut [f32], y: &[f32]) {
    debug_assert_eq!(h.len(), y.len());
    h.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(y.par_chunks(MIN_TASK_ELEMS))
        .for_each(|(h, y)| h.iter_mut().zip(y).for_each(|(h, &y)| *h += y));
}

fn silu1(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// `x [t, 2*dff]` to `out [t, dff] = SiLU(x[.., :dff]) * x[.., dff:]`.
pub fn swiglu(x: &[f32], dff: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), 2 * out.len());
    debug_assert_eq!(out.len() % dff.max(1), 0);
    let rows = rows_per_task(dff);
    out.par_chunks_mut(rows * dff)
        .zip(x.par_chunks(rows * 2 * dff))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(dff).zip(x.chunks_exact(2 * dff)) {
                let (u, g) = x.split_at(dff);
                for ((o, &u), &g) in o.iter_mut().zip(u).zip(g) {
                    *o = silu1(u) * g;
                }
            }
        });
}

/// Applies `f` elementwise from `x` into `out` in parallel.
fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    debug_assert_eq!(x.len(), out.len());
    out.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(x.par_chunks(MIN_TASK_ELEMS))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
}

/// `out = SiLU(x) = x * sigmoid(x)` elementwise.
pub fn silu(x: &[f32], out: &mut [f32]) {
    map(x, out, silu1);
}

/// `out = 0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3)))` elementwise.
pub fn gelu_tanh(x: &[f32], out: &mut [f32]) {
    map(x, out, |z| {
        0.5 * z * (1.0 + (0.797_884_6 * (z + 0.044715 * z * z * z)).tanh())
    });
}

/// Sinusoidal time embedding `out [F, 256]`: `s = 1000 * tau[f]`,
/// `w_k = exp(-ln(10000) k / 128)`, `out[f] = [cos(s w_0..127), sin(s w_0..127)]`.
///
/// The argument `s * w_k` reaches 1000 rad, where an f32 argument alone carries an error of
/// up to ~3e-5 rad (and f32 range reduction more), so the argument, cos and sin are computed
/// in f64 and only the result is rounded to f32: every backend can match this to f32
/// rounding by doing the same (it is 256 values per frame).
pub fn timestep_embedding(tau: &[f32], out: &mut [f32]) {
    debug_assert_eq!(out.len(), tau.len() * 256);
    for (row, &t) in out.chunks_exact_mut(256).zip(tau) {
        let s = 1000.0 * t as f64;
        for k in 0..128 {
            let w = (-(10000f64.ln()) * k as f64 / 128.0).exp();
            let a = s * w;
            row[k] = a.cos() as f32;
            row[128 + k] = a.sin() as f32;
        }
    }
}

/// Per-frame modulation `out [frames, k, d]`: `out[f][i] = src[f][i*d..(i+1)*d] + table[i]`
/// when `src_k == k` (`src [frames, k*d]`), or `src[f][..d] + table[i]` when `src_k == 1`.
pub fn modulation(
    src: &[f32],
    src_k: usize,
    table: &[f32],
    k: usize,
    d: usize,
    frames: usize,
    out: &mut [f32],
) {
    debug_assert!(src_k == k || src_k == 1);
    debug_assert_eq!(src.len(), frames * src_k * d);
    debug_assert_eq!(table.len(), k * d);
    debug_assert_eq!(out.len(), frames * k * d);
    for (f, out_f) in out.chunks_exact_mut(k * d).enumerate() {
        for (i, (o, t)) in out_f
            .chunks_exact_mut(d)
            .zip(table.chunks_exact(d))
            .enumerate()
        {
            let si = if src_k == 1 { 0 } else { i };
            let s = &src[(f * src_k + si) * d..(f * src_k + si + 1) * d];
            for ((o, &s), &t) in o.iter_mut().zip(s).zip(t) {
                *o = s + t;
            }
        }
    }
}

/// Patch embedding input: `x [F, C, H, W]` to `out [F*Ht*Wt, C*4]`, entry `(c*2 + a)*2 + b`
/// of token `(f, i, j)` being `x[f, c, 2i+a, 2j+b]`.
pub fn patchify(x: &[f32], f: usize, c: usize, h: usize, w: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), f * c * h * w);
    debug_assert_eq!(out.len(), x.len());
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    if p == 0 || wt == 0 {
        return;
    }
    out.par_chunks_mut(wt * p)
        .enumerate()
        .for_each(|(fi, row)| {
            let (ff, i) = (fi / ht, fi % ht);
            for (j, tok) in row.chunks_exact_mut(p).enumerate() {
                for cc in 0..c {
                    for a in 0..2 {
                        for b in 0..2 {
                            tok[(cc * 2 + a) * 2 + b] =
                                x[((ff * c + cc) * h + 2 * i + a) * w + 2 * j + b];
                        }
                    }
                }
            }
        });
}

/// Inverse of [`patchify`] for `batch` branches: `x [batch*F*Ht*Wt, C*4]` to
/// `out [batch, F, C, H, W]`.
pub fn unpatchify(
    x: &[f32],
    batch: usize,
    f: usize,
    c: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), batch * f * c * h * w);
    debug_assert_eq!(out.len(), x.len());
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    if h * w == 0 {
        return;
    }
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            // `plane` indexes (branch, frame, channel).
            let (bf, cc) = (plane / c, plane % c);
            for (y, o_row) in o.chunks_exact_mut(w).enumerate() {
                let (i, a) = (y / 2, y % 2);
                for (xx, o) in o_row.iter_mut().enumerate() {
                    let (j, b) = (xx / 2, xx % 2);
                    let token = (bf * ht + i) * wt + j;
                    *o = x[token * p + (cc * 2 + a) * 2 + b];
                }
            }
        });
}

/// `h [Ft*Ht*Wt, D] += pos_t[f] + pos_h[i] + pos_w[j]` for token `n = (f*Ht + i)*Wt + j`.
pub fn add_positions(
    h: &mut [f32],
    grid: [usize; 3],
    d: usize,
    pos_t: &[f32],
    pos_h: &[f32],
    pos_w: &[f32],
) {
    let [ft, ht, wt] = grid;
    debug_assert_eq!(h.len(), ft * ht * wt * d);
    debug_assert!(pos_t.len() >= ft * d && pos_h.len() >= ht * d && pos_w.len() >= wt * d);
    if d == 0 {
        return;
    }
    let rows = rows_per_task(d);
    h.par_chunks_mut(rows * d)
        .enumerate()
        .for_each(|(chunk, h)| {
            for (r, row) in h.chunks_exact_mut(d).enumerate() {
                let n = chunk * rows + r;
                let (f, i, j) = (n / (ht * wt), (n / wt) % ht, n % wt);
                let (pt, ph, pw) = (&pos_t[f * d..], &pos_h[i * d..], &pos_w[j * d..]);
                for (c, a) in row.iter_mut().enumerate() {
                    *a += pt[c] + ph[c] + pw[c];
                }
            }
        });
}

/// Classifier-free guidance: `out = v[1] + scale * (v[0] - v[1])` for `v = [v0 | v1]`, two
/// equal halves (branch 0 the prompt, branch 1 the negative prompt).
pub fn guidance(v: &[f32], scale: f32, out: &mut [f32]) {
    debug_assert_eq!(v.len(), 2 * out.len());
    let (v0, v1) = v.split_at(out.len());
    out.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(
            v0.par_chunks(MIN_TASK_ELEMS)
                .zip(v1.par_chunks(MIN_TASK_ELEMS)),
        )
        .for_each(|(o, (v0, v1))| {
            for ((o, &c), &u) in o.iter_mut().zip(v0).zip(v1) {
                *o = u + scale * (c - u);
            }
        });
}
