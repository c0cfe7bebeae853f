//! The CPU kernels of the Wan-family decoders ([`crate::model::video_ops`]), in f32 over
//! channels-last activations `[T, H, W, Ch]`.
//!
//! Every matrix product runs per frame, with shapes that do not depend on how many frames a
//! chunk has, so decoding a stream chunk by chunk gives the same bits as decoding it at once.
//! A convolution is `taps_t * taps_s^2` accumulated GEMMs per output frame over shifted views
//! of a zero-padded copy of each input frame (the nearest 2x upsampling folded into that
//! copy): the output is computed over the padded width, so every tap reads the padded rows
//! with one stride, and the extra columns are dropped (no im2col).

use gemm::Parallelism;
use rayon::prelude::*;

use crate::math::{attend, linear, matmul, View};
use crate::model::video_ops::RMS_EPS;

/// Elements a parallel task of an elementwise op should at least get.
const MIN_BLOCK: usize = 1 << 15;
/// Query rows per attention task.
const QUERY_BLOCK: usize = 64;

/// One activation `[frames, height, width, channels]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Act {
    pub data: Vec<f32>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl Act {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    pub fn frame_len(&self) -> usize {
        self.pixels() * self.channels
    }

    /// Frames `[from, to)` as one slice.
    pub fn frames(&self, from: usize, to: usize) -> &[f32] {
        &self.data[from * self.frame_len()..to * self.frame_len()]
    }
}

/// A convolution's weights in the CPU layout: `w [taps][cin][cout]`, tap `(j, ky, kx)` at
/// `(j * taps_s + ky) * taps_s + kx` (PyTorch's order of the kernel dimensions).
#[derive(Debug, Clone)]
pub(crate) struct ConvWeights {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub cin: usize,
    pub cout: usize,
    pub taps_t: usize,
    pub taps_s: usize,
    pub upsample: bool,
    /// Stride 2 in space (even input sizes; see `conv`).
    pub downsample: bool,
    /// With `downsample`: the zero padding only after each axis (output `(y, x)` reads
    /// input rows `2y ..= 2y + 2`), not centred.
    pub pad_after: bool,
}

impl ConvWeights {
    /// From a checkpoint weight `[cout, cin, (taps_t,) taps_s, taps_s]`, flattened.
    #[allow(clippy::too_many_arguments)]
    pub fn from_checkpoint(
        src: &[f32],
        b: Option<&[f32]>,
        cin: usize,
        cout: usize,
        taps_t: usize,
        taps_s: usize,
        upsample: bool,
    ) -> ConvWeights {
        let taps = taps_t * taps_s * taps_s;
        let mut w = vec![0.0; taps * cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                for t in 0..taps {
                    w[(t * cin + i) * cout + o] = src[(o * cin + i) * taps + t];
                }
            }
        }
        ConvWeights {
            w,
            b: b.map(<[f32]>::to_vec),
            cin,
            cout,
            taps_t,
            taps_s,
            upsample,
            downsample: false,
            pad_after: false,
        }
    }

    /// The `[cin, cout]` matrix of tap `t`.
    fn tap(&self, t: usize) -> View<'_> {
        View::new(&self.w[t * self.cin * self.cout..], self.cout, 1)
    }
}

/// The convolution of `x`'s frames, the first `taps_t - 1` of which are history (cache or
/// zeros): output frame `t` reads input frames `t .. t + taps_t`. `scratch` holds padded
/// input frames and the wide output between calls.
pub(crate) fn conv(x: &Act, c: &ConvWeights, scratch: &mut Vec<f32>) -> Act {
    debug_assert_eq!(x.channels, c.cin);
    let frames = (x.frames + 1).saturating_sub(c.taps_t);
    let s = if c.upsample { 2 } else { 1 };
    // The (upsampled) input size, and the output's: half of it with stride 2.
    let (hi, wi) = (x.height * s, x.width * s);
    let d = if c.downsample { 2 } else { 1 };
    let (ho, wo) = (hi / d, wi / d);
    debug_assert!(!c.downsample || (hi % 2 == 0 && wi % 2 == 0 && !c.upsample));
    let (cin, cout) = (c.cin, c.cout);
    let mut out = vec![0.0; frames * ho * wo * cout];
    let out_len = ho * wo * cout;
    if c.taps_s == 1 && !c.upsample && !c.downsample {
        // Per pixel: the frames themselves are the GEMM operands.
        let m = ho * wo;
        for (t, dst) in out.chunks_exact_mut(out_len).enumerate() {
            init_bias(dst, c.b.as_deref(), cout);
            for j in 0..c.taps_t {
                let src = x.frames(t + j, t + j + 1);
                gemm_acc(m, cout, cin, dst, cout, View::new(src, cin, 1), c.tap(j));
            }
        }
        return Act {
            data: out,
            frames,
            height: ho,
            width: wo,
            channels: cout,
        };
    }
    let p = (c.taps_s - 1) / 2;
    let wp = wi + 2 * p;
    // Padding after only: every tap reads `p` rows and columns further on (`shift` pixels),
    // so the buffer gets that much more zero tail for the dropped columns' reads.
    let shift = if c.pad_after { p * wp + p } else { 0 };
    let padded_len = ((hi + 2 * p) * wp + 2 * p + shift) * cin;
    // Wide row `y * wp + x` is output pixel `(y, x)` for `x < wo`: with stride `d` it reads
    // padded pixel `d (y wp + x) + ky wp + kx (+ shift)`, input row `d y + ky - p` (`+ p`
    // with `pad_after`), column `d x + kx - p` (likewise); the columns `x >= wo` are dropped.
    let wide_len = ho * wp * cout;
    // A ring of `taps_t` padded input frames, then the wide output.
    scratch.resize(c.taps_t * padded_len + wide_len, 0.0);
    let (ring, wide) = scratch.split_at_mut(c.taps_t * padded_len);
    ring.fill(0.0);
    let mut have = 0; // input frames padded so far
    for (t, dst) in out.chunks_exact_mut(out_len).enumerate() {
        while have < t + c.taps_t {
            let slot = &mut ring[(have % c.taps_t) * padded_len..][..padded_len];
            pad_frame(x.frames(have, have + 1), slot, x.width, cin, s, p, wp, hi);
            have += 1;
        }
        init_bias(wide, c.b.as_deref(), cout);
        for j in 0..c.taps_t {
            let padded = &ring[((t + j) % c.taps_t) * padded_len..][..padded_len];
            for ky in 0..c.taps_s {
                for kx in 0..c.taps_s {
                    let lhs = View::new(&padded[(shift + ky * wp + kx) * cin..], d * cin, 1);
                    let tap = (j * c.taps_s + ky) * c.taps_s + kx;
                    gemm_acc(ho * wp, cout, cin, wide, cout, lhs, c.tap(tap));
                }
            }
        }
        for (y, row) in dst.chunks_exact_mut(wo * cout).enumerate() {
            row.copy_from_slice(&wide[y * wp * cout..][..wo * cout]);
        }
    }
    Act {
        data: out,
        frames,
        height: ho,
        width: wo,
        channels: cout,
    }
}

/// Writes frame `src [h, w, cin]` into the interior of `dst`, a zero-bordered
/// `[(ho + 2p) * wp + 2p, cin]` buffer, each pixel repeated `s x s` times. The border is
/// never written, so it stays zero.
#[allow(clippy::too_many_arguments)]
fn pad_frame(
    src: &[f32],
    dst: &mut [f32],
    w: usize,
    cin: usize,
    s: usize,
    p: usize,
    wp: usize,
    ho: usize,
) {
    let wo = w * s;
    dst[p * wp * cin..(p + ho) * wp * cin]
        .par_chunks_mut(wp * cin)
        .enumerate()
        .for_each(|(y, row)| {
            let srow = &src[(y / s) * w * cin..][..w * cin];
            for xo in 0..wo {
                let from = (xo / s) * cin;
                row[(xo + p) * cin..(xo + p + 1) * cin].copy_from_slice(&srow[from..from + cin]);
            }
        });
}

/// Every `cout`-row of `dst` set to the bias (or zero).
fn init_bias(dst: &mut [f32], b: Option<&[f32]>, cout: usize) {
    match b {
        Some(b) => dst
            .chunks_exact_mut(cout)
            .for_each(|r| r.copy_from_slice(b)),
        None => dst.fill(0.0),
    }
}

/// `dst [m, n] += lhs [m, k] rhs [k, n]`.
fn gemm_acc(m: usize, n: usize, k: usize, dst: &mut [f32], rs: usize, lhs: View, rhs: View) {
    matmul(m, n, k, dst, rs, lhs, rhs, 1.0, true, Parallelism::Rayon(0));
}

/// TAEHV's `TPool`: frames `stride t + s` of `x` side by side in channels (frame `s` first
/// at `s * ch`), then `conv` (1x1) per pixel: `x.frames / stride` output frames.
pub(crate) fn temporal_pool(x: &Act, w: &ConvWeights, stride: usize, scratch: &mut Vec<f32>) -> Act {
    let (px, ch) = (x.pixels(), x.channels);
    let frames = x.frames / stride;
    let mut cat = vec![0.0; frames * px * stride * ch];
    cat.par_chunks_mut(px * stride * ch)
        .enumerate()
        .for_each(|(t, dst)| {
            for s in 0..stride {
                let src = x.frames(stride * t + s, stride * t + s + 1);
                for (q, row) in dst.chunks_exact_mut(stride * ch).enumerate() {
                    row[s * ch..(s + 1) * ch].copy_from_slice(&src[q * ch..(q + 1) * ch]);
                }
            }
        });
    let packed = Act {
        data: cat,
        frames,
        channels: stride * ch,
        ..*x
    };
    conv(&packed, w, scratch)
}

/// `[cache, x]` along frames: `x` with `cache`'s frames in front.
pub(crate) fn with_history(cache: &[f32], x: &Act, x_from: usize) -> Act {
    let len = x.frame_len();
    let mut data = Vec::with_capacity(cache.len() + (x.frames - x_from) * len);
    data.extend_from_slice(cache);
    data.extend_from_slice(x.frames(x_from, x.frames));
    Act {
        data,
        frames: cache.len() / len + x.frames - x_from,
        ..*x
    }
}

/// The last `cache.len()` elements (whole frames) of `ext` into `cache`.
pub(crate) fn keep_last(ext: &Act, cache: &mut [f32]) {
    let n = cache.len();
    cache.copy_from_slice(&ext.data[ext.data.len() - n..]);
}

/// Applies `f` to every element in parallel.
pub(crate) fn map(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    x.par_chunks_mut(MIN_BLOCK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
}

pub(crate) fn silu(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// `x * std[c] + mean[c]` per channel, in place.
pub(crate) fn denormalize(x: &mut Act, mean: &[f32], std: &[f32]) {
    x.data.chunks_exact_mut(x.channels).for_each(|px| {
        for ((v, m), s) in px.iter_mut().zip(mean).zip(std) {
            *v = *v * s + m;
        }
    });
}

/// In place, per pixel: `x / max(|x|_2, RMS_EPS) * sqrt(ch) * gamma`, then SiLU if `silu`.
/// The sum of squares is accumulated in f64.
pub(crate) fn rms_norm(x: &mut Act, gamma: &[f32], silu_after: bool) {
    let c = x.channels;
    let root = (c as f64).sqrt();
    let block = (MIN_BLOCK / c).max(1) * c;
    x.data.par_chunks_mut(block).for_each(|part| {
        for px in part.chunks_exact_mut(c) {
            let ss: f64 = px.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let scale = (root / ss.sqrt().max(f64::from(RMS_EPS))) as f32;
            for (v, g) in px.iter_mut().zip(gamma) {
                let y = *v * scale * g;
                *v = if silu_after { silu(y) } else { y };
            }
        }
    });
}

/// `[x[t], x[t-1]]` along channels, `x[-1]` from `cache` (one frame), which becomes the
/// last frame of `x`.
pub(crate) fn with_past(x: &Act, cache: &mut [f32]) -> Act {
    let (len, c) = (x.frame_len(), x.channels);
    let mut data = vec![0.0; 2 * x.data.len()];
    for (t, dst) in data.chunks_exact_mut(2 * len).enumerate() {
        let cur = x.frames(t, t + 1);
        let past = if t == 0 { &*cache } else { x.frames(t - 1, t) };
        dst.par_chunks_mut(2 * c)
            .zip(cur.par_chunks(c).zip(past.par_chunks(c)))
            .for_each(|(d, (a, b))| {
                d[..c].copy_from_slice(a);
                d[c..].copy_from_slice(b);
            });
    }
    if x.frames > 0 {
        cache.copy_from_slice(x.frames(x.frames - 1, x.frames));
    }
    Act {
        data,
        channels: 2 * c,
        ..*x
    }
}

/// Output frames of a temporal upsampling: frame `t` of `y [T, H, W, stride * ch]` becomes
/// frames `stride * t + s` with channels `[s * ch, (s + 1) * ch)`, appended to `out`.
pub(crate) fn split_frames(y: &Act, stride: usize, out: &mut Vec<f32>) {
    let ch = y.channels / stride;
    for frame in y.data.chunks_exact(y.frame_len()) {
        for s in 0..stride {
            let start = out.len();
            out.resize(start + y.pixels() * ch, 0.0);
            out[start..]
                .par_chunks_mut(ch)
                .zip(frame.par_chunks(y.channels))
                .for_each(|(d, px)| d.copy_from_slice(&px[s * ch..(s + 1) * ch]));
        }
    }
}

/// Per-frame self-attention over pixels with its projections, no residual: `wqkv [3 ch,
/// ch]` (q, k, v stacked), `wo [ch, ch]`. Parallel over blocks of query rows.
pub(crate) fn attention(
    x: &Act,
    (wqkv, bqkv): (&[f32], &[f32]),
    (wo, bo): (&[f32], &[f32]),
    heads: usize,
) -> Act {
    let (p, ch) = (x.pixels(), x.channels);
    let dh = ch / heads;
    let mut out = vec![0.0; x.data.len()];
    let mut qkv = vec![0.0; p * 3 * ch];
    let mut o = vec![0.0; p * ch];
    for (src, dst) in x
        .data
        .chunks_exact(x.frame_len())
        .zip(out.chunks_exact_mut(p * ch))
    {
        linear(src, wqkv, Some(bqkv), p, ch, 3 * ch, &mut qkv);
        let qkv = &qkv;
        o.par_chunks_mut(QUERY_BLOCK * ch)
            .enumerate()
            .for_each(|(blk, rows)| {
                let (n, r0) = (rows.len() / ch, blk * QUERY_BLOCK);
                let mut scores = vec![0.0; n * p];
                for e in 0..heads {
                    let q = View::new(&qkv[r0 * 3 * ch + e * dh..], 3 * ch, 1);
                    let k = View::new(&qkv[ch + e * dh..], 3 * ch, 1);
                    let v = View::new(&qkv[2 * ch + e * dh..], 3 * ch, 1);
                    attend(q, k, v, n, p, dh, &mut scores, &mut rows[e * dh..], ch);
                }
            });
        linear(&o, wo, Some(bo), p, ch, ch, dst);
    }
    Act { data: out, ..*x }
}

/// The Wan VAE encoder's temporal downsampling of a chunk `x` (`VideoOp::TemporalDown`):
/// with `first` (the stream's first chunk), frame 0 passes through and is the history;
/// then output `j` is `c` (3 taps) over frames `2j ..= 2j + 2` of `[history, rest of x]`,
/// the history from the one-frame `cache`, which keeps the last frame.
pub(crate) fn temporal_down(
    x: &Act,
    first: bool,
    c: &ConvWeights,
    cache: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Act {
    let from = usize::from(first && x.frames > 0);
    if from == 1 {
        cache.copy_from_slice(x.frames(0, 1));
    }
    let ext = with_history(cache, x, from);
    let outs = (ext.frames - 1) / 2;
    let mut data = x.frames(0, from).to_vec();
    for j in 0..outs {
        let window = Act {
            data: ext.frames(2 * j, 2 * j + 3).to_vec(),
            frames: 3,
            ..*x
        };
        data.extend_from_slice(&conv(&window, c, scratch).data);
    }
    keep_last(&ext, cache);
    Act {
        data,
        frames: from + outs,
        channels: c.cout,
        ..*x
    }
}

/// The first `mean.len()` channels of every pixel as `(x - mean[c]) * (1 / std[c])` (the
/// reference's order: it multiplies by the reciprocal).
pub(crate) fn normalize(x: &Act, mean: &[f32], std: &[f32]) -> Act {
    let z = mean.len();
    let inv: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    let mut data = Vec::with_capacity(x.frames * x.pixels() * z);
    for px in x.data.chunks_exact(x.channels) {
        data.extend(px[..z].iter().zip(mean).zip(&inv).map(|((v, m), i)| (v - m) * i));
    }
    Act {
        data,
        channels: z,
        ..*x
    }
}

/// `x += skip(s)`: `s` through the 1x1 convolution `skip` (per frame), or as it is.
pub(crate) fn add_saved(x: &mut Act, s: &Act, skip: Option<&ConvWeights>) {
    match skip {
        Some(c) => {
            let (m, len) = (s.pixels(), x.frame_len());
            for (t, dst) in x.data.chunks_exact_mut(len).enumerate() {
                if let Some(b) = &c.b {
                    dst.chunks_exact_mut(c.cout).for_each(|r| {
                        r.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    });
                }
                let src = s.frames(t, t + 1);
                gemm_acc(
                    m,
                    c.cout,
                    c.cin,
                    dst,
                    c.cout,
                    View::new(src, c.cin, 1),
                    c.tap(0),
                );
            }
        }
        None => x
            .data
            .par_chunks_mut(MIN_BLOCK)
            .zip(s.data.par_chunks(MIN_BLOCK))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b)),
    }
}
