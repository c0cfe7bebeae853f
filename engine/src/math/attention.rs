//! Attention: shifted window self-attention and masked cross-attention, both on one
//! shared single-head kernel ([`attend`]) over strided views.

use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::vector::{self as simd, wide};

/// Query rows per cross-attention task.
const CROSS_QUERY_CHUNK: usize = 128;

/// In place, row-wise numerically stable softmax of `s [rows, cols]`, vectorised ([`wide`]).
fn softmax_rows(s: &mut [f32], cols: usize) {
    wide(#[inline(always)] || {
        for row in s.chunks_exact_mut(cols) {
            let max = simd::max(row);
            for a in row.iter_mut() {
                *a = simd::exp(*a - max);
            }
            let inv = 1.0 / simd::sum(row);
            for a in row.iter_mut() {
                *a *= inv;
            }
        }
    })
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

/// Window self-attention (docs/streamdit.md section 3). `qkv [batch*N, 3D]` (q columns `[0, D)`,
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
