//! Row-wise norms: LayerNorm, adaLN modulate, per-head RMSNorm.

use rayon::prelude::*;

use super::vector::{self as simd, wide};
use super::{frame_of, mod_vec, rows_per_task, EPS};

/// `LN(v)` of one row into `out`: mean and biased variance in two passes, each summed over
/// [`simd::LANES`] partial sums (so that it vectorises).
#[inline(always)]
fn ln_row(v: &[f32], out: &mut [f32]) {
    let d = v.len() as f32;
    let mean = simd::sum(v) / d;
    let var = simd::sum_sq_dev(v, mean) / d;
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
            wide(#[inline(always)] || {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    ln_row(x, o);
                }
            })
        });
}

/// Row-wise LayerNorm with affine: `out = LN(x) * weight + bias` per row of width `d`.
pub fn layer_norm_affine(x: &[f32], d: usize, weight: &[f32], bias: &[f32], out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    debug_assert!(weight.len() == d && bias.len() == d);
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(o, x)| {
            wide(#[inline(always)] || {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    ln_row(x, o);
                    for ((o, &w), &b) in o.iter_mut().zip(weight).zip(bias) {
                        *o = *o * w + b;
                    }
                }
            })
        });
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
            wide(#[inline(always)] || {
                for (r, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    let f = frame_of(chunk * rows + r, frames, tokens_per_frame);
                    let sh = mod_vec(mods, k, d, f, shift);
                    let sc = mod_vec(mods, k, d, f, scale);
                    ln_row(x, o);
                    for ((o, &sh), &sc) in o.iter_mut().zip(sh).zip(sc) {
                        *o = *o * (1.0 + sc) + sh;
                    }
                }
            })
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
        wide(#[inline(always)] || {
            for row in chunk.chunks_exact_mut(cols) {
                for u in row[offset..offset + heads * dh].chunks_exact_mut(dh) {
                    let ms = simd::sum_sq_dev(u, 0.0) / dh as f32;
                    let inv = 1.0 / (ms + EPS).sqrt();
                    for (a, &g) in u.iter_mut().zip(gain) {
                        *a = *a * inv * g;
                    }
                }
            }
        })
    });
}
