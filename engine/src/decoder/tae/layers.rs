//! The layers of the TAE's CPU executor ([`super::cpu::TaeNet`]), f32 over channels-last
//! activations: GroupNorm(+SiLU), the 3x3 convolution as three GEMMs of depth `3 cin` (one per
//! kernel row), the causal temporal convolution with its cache, the encoder's strided `DownS`
//! and `DownT`, frame repetition, per-frame attention and the residual add.

use rayon::prelude::*;

use super::cpu::{Act, MIN_BLOCK};
use crate::error::{Error, Result};
use crate::math::vector as simd;
use crate::math::{attend, linear, matmul, wide, View};
use crate::model::tae::GN_EPS;

/// In place: GroupNorm per frame over `(H, W, ch / groups)`, affine, then SiLU if `silu`.
/// Statistics are two-pass (mean, then centred squares), accumulated per channel in f64
/// over pixels, then per group; each frame is split into row blocks in parallel.
pub(super) fn group_norm(x: &mut Act, gamma: &[f32], beta: &[f32], groups: usize, silu_after: bool) {
    let c = x.channels;
    let cg = c / groups;
    let len = x.frame_len();
    let count = (x.pixels() * cg) as f64;
    // Pixels per parallel block.
    let block = (MIN_BLOCK / c).max(1) * c;
    for frame in x.data.chunks_exact_mut(len) {
        let sums = |frame: &[f32], centre: Option<&[f64]>| -> Vec<f64> {
            let partial: Vec<Vec<f64>> = frame
                .par_chunks(block)
                .map(|part| {
                    let mut acc = vec![0.0f64; c];
                    wide(#[inline(always)] || for px in part.chunks_exact(c) {
                        match centre {
                            None => acc
                                .iter_mut()
                                .zip(px)
                                .for_each(|(a, &v)| *a += f64::from(v)),
                            Some(m) => acc
                                .iter_mut()
                                .zip(px)
                                .zip(m)
                                .for_each(|((a, &v), m)| *a += (f64::from(v) - m).powi(2)),
                        }
                    });
                    acc
                })
                .collect();
            let mut per_group = vec![0.0f64; groups];
            for acc in &partial {
                for (ch, v) in acc.iter().enumerate() {
                    per_group[ch / cg] += v;
                }
            }
            per_group
        };
        let mean: Vec<f64> = sums(frame, None).iter().map(|s| s / count).collect();
        let mean_ch: Vec<f64> = (0..c).map(|ch| mean[ch / cg]).collect();
        let sq = sums(frame, Some(&mean_ch));
        // Per channel: y = x * scale + shift.
        let mut scale = vec![0.0f32; c];
        let mut shift = vec![0.0f32; c];
        for ch in 0..c {
            let g = ch / cg;
            let rstd = 1.0 / (sq[g] / count + f64::from(GN_EPS)).sqrt();
            scale[ch] = (rstd * f64::from(gamma[ch])) as f32;
            shift[ch] = (f64::from(beta[ch]) - mean[g] * rstd * f64::from(gamma[ch])) as f32;
        }
        frame.par_chunks_mut(block).for_each(|part| {
            wide(#[inline(always)] || {
                for px in part.chunks_exact_mut(c) {
                    for ((v, s), t) in px.iter_mut().zip(&scale).zip(&shift) {
                        let y = *v * s + t;
                        *v = if silu_after { simd::silu(y) } else { y };
                    }
                }
            })
        });
    }
}

/// 3x3 convolution, zero padding 1, per frame; with `upsample` the input is read as if
/// repeated 2x2 (nearest). Three shifted GEMMs, one per kernel row (no im2col): each frame is copied once into a
/// zero-padded `[(H + 2) * (W + 2) + 2, cin]` buffer (upsampled on the way when asked), and
/// the output is computed over the padded width, so tap `(ky, kx)` reads the padded rows
/// from offset `ky * (W + 2) + kx` with a uniform stride; the two extra columns per row are
/// dropped. `scratch` holds the padded input and the wide output.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d(
    x: &Act,
    w: &[f32],
    b: &[f32],
    cin: usize,
    cout: usize,
    upsample: bool,
    scratch: &mut Vec<f32>,
) -> Act {
    debug_assert_eq!(x.channels, cin);
    let s = if upsample { 2 } else { 1 };
    let (ho, wo) = (x.height * s, x.width * s);
    let wp = wo + 2;
    let padded_len = ((ho + 2) * wp + 2) * cin;
    let wide_len = ho * wp * cout;
    let mut out = vec![0.0; x.frames * ho * wo * cout];
    scratch.resize(padded_len + wide_len, 0.0);
    let (padded, wide) = scratch.split_at_mut(padded_len);
    padded.fill(0.0);
    for (src, dst) in x
        .data
        .chunks_exact(x.frame_len())
        .zip(out.chunks_exact_mut(ho * wo * cout))
    {
        // Interior of the padded frame; the border stays zero.
        padded[wp * cin..(ho + 1) * wp * cin]
            .par_chunks_mut(wp * cin)
            .enumerate()
            .for_each(|(y, row)| {
                let srow = &src[(y / s) * x.width * cin..][..x.width * cin];
                for xo in 0..wo {
                    let from = (xo / s) * cin;
                    row[(xo + 1) * cin..(xo + 2) * cin].copy_from_slice(&srow[from..from + cin]);
                }
            });
        for row in wide.chunks_exact_mut(cout) {
            row.copy_from_slice(b);
        }
        // The three taps of a kernel row `ky` read `3 * cin` consecutive padded values from
        // `(ky * wp + xo) * cin` on, and their weights are the consecutive columns
        // `[3 ky cin, 3 (ky + 1) cin)`: one GEMM of depth `3 cin` per kernel row.
        for ky in 0..3 {
            let start = ky * wp * cin;
            matmul(
                ho * wp,
                cout,
                3 * cin,
                wide,
                cout,
                View::new(&padded[start..], cin, 1),
                View::new(&w[3 * ky * cin..], 1, 9 * cin),
                1.0,
                true,
                gemm::Parallelism::Rayon(0),
            );
        }
        for (y, row) in dst.chunks_exact_mut(wo * cout).enumerate() {
            row.copy_from_slice(&wide[y * wp * cout..][..wo * cout]);
        }
    }
    Act {
        data: out,
        frames: x.frames,
        height: ho,
        width: wo,
        channels: cout,
    }
}

/// The causal temporal convolution: `y[t] = W0 e[t] + W1 e[t+1] + W2 e[t+2] + b` over the
/// extended sequence `e = [cache, x]` (the cache is the first frame twice at the stream
/// start); the cache becomes the last two frames of `e`.
pub(super) fn conv_t(x: &Act, w: &[f32], b: &[f32], ch: usize, cache: &mut Option<Vec<f32>>) -> Act {
    let len = x.frame_len();
    let n = x.frames;
    // e = [prev0, prev1, x0, x1, ...], contiguous, so tap `j` of every output frame is one
    // GEMM over frames `j .. j + n` of it.
    let mut ext = match cache.take() {
        Some(prev) => prev,
        None => [&x.data[..len], &x.data[..len]].concat(),
    };
    ext.extend_from_slice(&x.data);
    let rows = n * x.pixels();
    let mut out = vec![0.0; x.data.len()];
    linear(
        &ext[..n * len],
        &w[..ch * ch],
        Some(b),
        rows,
        ch,
        ch,
        &mut out,
    );
    for j in 1..3 {
        // out += e[j..j + n] W_j^T; W_j^T as a [ch_in, ch_out] view.
        matmul(
            rows,
            ch,
            ch,
            &mut out,
            ch,
            View::new(&ext[j * len..(j + n) * len], ch, 1),
            View::new(&w[j * ch * ch..(j + 1) * ch * ch], 1, ch),
            1.0,
            true,
            gemm::Parallelism::Rayon(0),
        );
    }
    // A fresh two-frame cache: keeping `ext` (drained) would hold its whole capacity, the
    // chunk's frames too, between chunks (a first video-to-video push of B * 4 frames).
    *cache = Some(ext[n * len..].to_vec());
    Act {
        data: out,
        frames: n,
        height: x.height,
        width: x.width,
        channels: ch,
    }
}

/// The encoder's `DownS`: a zero column on the right and a zero row at the bottom, then a
/// 3x3 convolution of stride 2. Per frame, the taps of every output pixel are gathered into
/// a `[pixels_out, 9 * ch]` matrix (column `(ky * 3 + kx) * ch + ci`) and multiplied by the
/// weights in one GEMM.
pub(super) fn down_s(x: &Act, w: &[f32], b: &[f32], ch: usize, scratch: &mut Vec<f32>) -> Act {
    let (ho, wo) = (x.height / 2, x.width / 2);
    let k = 9 * ch;
    scratch.resize(ho * wo * k, 0.0);
    let mut out = vec![0.0; x.frames * ho * wo * ch];
    for (src, dst) in x
        .data
        .chunks_exact(x.frame_len())
        .zip(out.chunks_exact_mut(ho * wo * ch))
    {
        scratch
            .par_chunks_mut(wo * k)
            .enumerate()
            .for_each(|(y, rows)| {
                for (xo, row) in rows.chunks_exact_mut(k).enumerate() {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (sy, sx) = (2 * y + ky, 2 * xo + kx);
                            let tap = &mut row[(ky * 3 + kx) * ch..][..ch];
                            if sy < x.height && sx < x.width {
                                tap.copy_from_slice(&src[(sy * x.width + sx) * ch..][..ch]);
                            } else {
                                tap.fill(0.0);
                            }
                        }
                    }
                }
            });
        linear(scratch, w, Some(b), ho * wo, k, ch, dst);
    }
    Act {
        data: out,
        frames: x.frames,
        height: ho,
        width: wo,
        channels: ch,
    }
}

/// The encoder's `DownT`: `y[t] = W0 e[2t] + W1 e[2t+1] + W2 e[2t+2] + b` over the extended
/// sequence `e = [cache, x]` (the cache is the first frame at the stream start); the cache
/// becomes the last input frame.
pub(super) fn down_t(x: &Act, w: &[f32], b: &[f32], ch: usize, cache: &mut Option<Vec<f32>>) -> Result<Act> {
    let len = x.frame_len();
    let n = x.frames;
    if n % 2 != 0 {
        return Err(Error::shape(
            "TAE encoder DownT input",
            "an even number of frames (chunks of a multiple of 4 video frames)",
            format!("{n} frames"),
        ));
    }
    if n == 0 {
        return Ok(x.clone());
    }
    let mut ext = match cache.take() {
        Some(prev) => prev,
        None => x.data[..len].to_vec(),
    };
    ext.extend_from_slice(&x.data);
    let rows = x.pixels();
    let mut out = vec![0.0; n / 2 * len];
    for (t, dst) in out.chunks_exact_mut(len).enumerate() {
        linear(
            &ext[2 * t * len..(2 * t + 1) * len],
            &w[..ch * ch],
            Some(b),
            rows,
            ch,
            ch,
            dst,
        );
        for j in 1..3 {
            let f = 2 * t + j;
            matmul(
                rows,
                ch,
                ch,
                dst,
                ch,
                View::new(&ext[f * len..(f + 1) * len], ch, 1),
                View::new(&w[j * ch * ch..(j + 1) * ch * ch], 1, ch),
                1.0,
                true,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    *cache = Some(ext[n * len..].to_vec());
    Ok(Act {
        data: out,
        frames: n / 2,
        height: x.height,
        width: x.width,
        channels: ch,
    })
}

/// Each frame twice in time.
pub(super) fn repeat_frames(x: &Act) -> Act {
    let len = x.frame_len();
    let mut data = Vec::with_capacity(2 * x.data.len());
    for frame in x.data.chunks_exact(len) {
        data.extend_from_slice(frame);
        data.extend_from_slice(frame);
    }
    Act {
        data,
        frames: 2 * x.frames,
        ..*x
    }
}

/// Per-frame multi-head attention over pixels with its output projection (no residual).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    x: &Act,
    wqkv: &[f32],
    bqkv: &[f32],
    wo: &[f32],
    bo: &[f32],
    ch: usize,
    heads: usize,
    dh: usize,
) -> Act {
    let p = x.pixels();
    let mut out = vec![0.0; x.data.len()];
    let mut qkv = vec![0.0; p * 3 * ch];
    let mut o = vec![0.0; p * ch];
    for (src, dst) in x
        .data
        .chunks_exact(x.frame_len())
        .zip(out.chunks_exact_mut(p * ch))
    {
        linear(src, wqkv, Some(bqkv), p, ch, 3 * ch, &mut qkv);
        let per_head: Vec<Vec<f32>> = (0..heads)
            .into_par_iter()
            .map(|e| {
                let mut scores = vec![0.0; p * p];
                let mut head = vec![0.0; p * dh];
                let q = View::new(&qkv[e * dh..], 3 * ch, 1);
                let k = View::new(&qkv[ch + e * dh..], 3 * ch, 1);
                let v = View::new(&qkv[2 * ch + e * dh..], 3 * ch, 1);
                attend(q, k, v, p, p, dh, &mut scores, &mut head, dh);
                head
            })
            .collect();
        for (e, head) in per_head.iter().enumerate() {
            for (row, src_row) in o.chunks_exact_mut(ch).zip(head.chunks_exact(dh)) {
                row[e * dh..(e + 1) * dh].copy_from_slice(src_row);
            }
        }
        linear(&o, wo, Some(bo), p, ch, ch, dst);
    }
    Act { data: out, ..*x }
}

/// `x += skip(s)`: the saved activation through the 1x1 convolution, or as it is.
pub(super) fn add_saved(x: &mut Act, s: &Act, skip: Option<&(Vec<f32>, Vec<f32>)>, cin: usize, cout: usize) {
    match skip {
        Some((w, b)) => {
            let rows = s.data.len() / cin;
            // x += s W^T + b: fold the bias in, then accumulate the product.
            for row in x.data.chunks_exact_mut(cout) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
            matmul(
                rows,
                cout,
                cin,
                &mut x.data,
                cout,
                View::new(&s.data, cin, 1),
                View::new(w, 1, cin),
                1.0,
                true,
                gemm::Parallelism::Rayon(0),
            );
        }
        None => {
            x.data
                .par_chunks_mut(1 << 14)
                .zip(s.data.par_chunks(1 << 14))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        }
    }
}
