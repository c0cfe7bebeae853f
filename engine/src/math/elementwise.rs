//! Elementwise ops: residuals, activations, time embedding, modulation, guidance.

use rayon::prelude::*;

use super::vector::{self as simd, wide};
use super::{frame_of, mod_vec, rows_per_task, MIN_TASK_ELEMS};

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
            wide(#[inline(always)] || {
                for (r, (h, y)) in h.chunks_exact_mut(d).zip(y.chunks_exact(d)).enumerate() {
                    let f = frame_of(chunk * rows + r, frames, tokens_per_frame);
                    let g = mod_vec(mods, k, d, f, gate);
                    for ((h, &y), &g) in h.iter_mut().zip(y).zip(g) {
                        *h += g * y;
                    }
                }
            })
        });
}

/// `h += y`.
pub fn residual(h: &mut [f32], y: &[f32]) {
    debug_assert_eq!(h.len(), y.len());
    h.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(y.par_chunks(MIN_TASK_ELEMS))
        .for_each(|(h, y)| wide(#[inline(always)] || h.iter_mut().zip(y).for_each(|(h, &y)| *h += y)));
}

/// `x [t, 2*dff]` to `out [t, dff] = SiLU(x[.., :dff]) * x[.., dff:]`.
pub fn swiglu(x: &[f32], dff: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), 2 * out.len());
    debug_assert_eq!(out.len() % dff.max(1), 0);
    let rows = rows_per_task(dff);
    out.par_chunks_mut(rows * dff)
        .zip(x.par_chunks(rows * 2 * dff))
        .for_each(|(o, x)| {
            wide(#[inline(always)] || {
                for (o, x) in o.chunks_exact_mut(dff).zip(x.chunks_exact(2 * dff)) {
                    let (u, g) = x.split_at(dff);
                    for ((o, &u), &g) in o.iter_mut().zip(u).zip(g) {
                        *o = simd::silu(u) * g;
                    }
                }
            })
        });
}

/// Applies `f` elementwise from `x` into `out` in parallel, vectorised ([`wide`]).
fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Copy) {
    debug_assert_eq!(x.len(), out.len());
    out.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(x.par_chunks(MIN_TASK_ELEMS))
        .for_each(|(o, x)| wide(#[inline(always)] || o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x))));
}

/// `out = SiLU(x) = x * sigmoid(x)` elementwise.
pub fn silu(x: &[f32], out: &mut [f32]) {
    map(x, out, simd::silu);
}

/// `out = 0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3)))` elementwise (computed as
/// `x / (1 + exp(-2u))`, the same function).
pub fn gelu_tanh(x: &[f32], out: &mut [f32]) {
    map(x, out, simd::gelu_tanh);
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

/// Wan's timestep embedding `out [F, width]` of `t [F]` taken as given (0..1000 scale):
/// with `half = width/2` and `w_k = 10000^(-k/half)`, `out[f] = [cos(t w_k), sin(t w_k)]`;
/// argument, cos and sin in f64, rounded once (as [`timestep_embedding`]).
pub fn sinusoid(t: &[f32], width: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), t.len() * width);
    let half = width / 2;
    if half == 0 {
        return;
    }
    for (row, &tt) in out.chunks_exact_mut(width).zip(t) {
        for k in 0..half {
            let a = f64::from(tt) * 10000f64.powf(-(k as f64) / half as f64);
            row[k] = a.cos() as f32;
            row[half + k] = a.sin() as f32;
        }
    }
}

/// `out[r] = x[r]` for the rows of `x [R, cols]` whose `mask [R]` is nonzero, zeros for the
/// others.
pub fn mask_rows(x: &[f32], cols: usize, mask: &[f32], out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert_eq!(x.len(), mask.len() * cols);
    for ((o, x), &m) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)).zip(mask) {
        if m != 0.0 {
            o.copy_from_slice(x);
        } else {
            o.fill(0.0);
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
            wide(#[inline(always)] || {
                for ((o, &c), &u) in o.iter_mut().zip(v0).zip(v1) {
                    *o = u + scale * (c - u);
                }
            })
        });
}
