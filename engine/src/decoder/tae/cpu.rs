//! The temporal-autoencoder decoder of `docs/tae.md` on the CPU, in f32: it executes the op
//! list of [`TaeGraph`] over channels-last activations `[T, H, W, Ch]`. 3x3 convolutions are
//! three accumulated GEMMs per frame, one per kernel row, of depth `3 cin` over shifted views
//! of a zero-padded copy of the input (the nearest 2x upsampling of `UpS` folded into that
//! copy); the causal temporal convolution is three accumulated GEMMs per frame
//! over the current and the two previous input frames, which come from a per-layer cache
//! between chunks, so decoding a stream chunk by chunk equals decoding it at once.
//!
//! The op list executor ([`TaeNet`]) is shared with the encoder of video-to-video
//! (`super::encoder`), which adds the strided `DownS` (a gathered `[pixels, 9 cin]` matrix
//! times the weights) and `DownT` (three GEMMs per output frame, one cached input frame).

use rayon::prelude::*;

use crate::checkpoint::Weights;
use crate::decoder::{to_bytes, Decoder};
use crate::error::{fmt_shape, Error, Result};
use crate::math::vector as simd;
use crate::math::{attend, linear, matmul, wide, View};
use crate::model::tae::{
    TaeGraph, TaeKind, TaeOp, GN_EPS, SPATIAL_UPSAMPLE, TEMPORAL_UPSAMPLE,
};

/// Elements a parallel task of an elementwise op or a norm should at least get.
const MIN_BLOCK: usize = 1 << 15;

/// One activation `[frames, height, width, channels]`.
#[derive(Debug, Clone)]
pub(super) struct Act {
    pub(super) data: Vec<f32>,
    pub(super) frames: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) channels: usize,
}

impl Act {
    fn pixels(&self) -> usize {
        self.height * self.width
    }

    fn frame_len(&self) -> usize {
        self.pixels() * self.channels
    }
}

/// An op with its weights in the layout the CPU code uses.
#[derive(Debug)]
enum Layer {
    Save,
    GroupNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        groups: usize,
        silu: bool,
    },
    /// `w [cout, 9 * cin]`, column `(ky * 3 + kx) * cin + ci` (channels last).
    Conv2d {
        w: Vec<f32>,
        b: Vec<f32>,
        cin: usize,
        cout: usize,
        upsample: bool,
    },
    /// `w [3, ch, ch]`: `w[j]` multiplies input frame `t - 2 + j`.
    ConvT {
        w: Vec<f32>,
        b: Vec<f32>,
        ch: usize,
        cache: usize,
    },
    RepeatFrames,
    /// The encoder's stride-2 3x3 convolution: `w [ch, 9 * ch]` as [`Layer::Conv2d`]'s.
    DownS { w: Vec<f32>, b: Vec<f32>, ch: usize },
    /// The encoder's stride-2 temporal convolution: `w [3, ch, ch]`, `w[j]` multiplies
    /// input frame `2t - 1 + j`; its cache holds one frame.
    DownT {
        w: Vec<f32>,
        b: Vec<f32>,
        ch: usize,
        cache: usize,
    },
    /// `wqkv [3 ch, ch]` (q, k, v stacked), `wo [ch, ch]`.
    Attention {
        wqkv: Vec<f32>,
        bqkv: Vec<f32>,
        wo: Vec<f32>,
        bo: Vec<f32>,
        ch: usize,
        heads: usize,
        head_dim: usize,
    },
    /// `skip`: `w [cout, cin]` and `b [cout]`.
    AddSaved {
        skip: Option<(Vec<f32>, Vec<f32>)>,
        cin: usize,
        cout: usize,
    },
}

/// The TAE decoder on the CPU, with its per-stream causal caches.
#[derive(Debug)]
pub struct TaeDecoder {
    net: TaeNet,
}

/// An op list of [`TaeGraph`] (decoder or encoder) with its weights and per-stream caches.
#[derive(Debug)]
pub(super) struct TaeNet {
    pub(super) graph: TaeGraph,
    layers: Vec<Layer>,
    /// Per `ConvT`: its last two input frames `[2, H, W, ch]`; per `DownT`: its last input
    /// frame; `None` at the stream start.
    caches: Vec<Option<Vec<f32>>>,
    /// Convolution scratch (padded input, wide output), reused.
    scratch: Vec<f32>,
}

/// A tensor of `weights` with `shape`, or the checkpoint-style error naming it.
fn tensor<'a>(weights: &'a Weights, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = weights.get(name)?;
    if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
        return Err(Error::Tensor {
            path: weights.source().to_string(),
            tensor: name.to_string(),
            expected: format!("shape {}", fmt_shape(shape)),
            found: format!("shape {}", fmt_shape(&t.shape)),
        });
    }
    Ok(&t.data)
}

/// `[cout, cin, ky, kx]` -> `[cout, ky, kx, cin]` (channels last).
fn conv_weight_rows(src: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut w = vec![0.0; cout * 9 * cin];
    for o in 0..cout {
        for ci in 0..cin {
            for k in 0..9 {
                w[(o * 9 + k) * cin + ci] = src[(o * cin + ci) * 9 + k];
            }
        }
    }
    w
}

/// `[out, in, j]` -> `[j, out, in]`.
fn temporal_weight(src: &[f32], ch: usize) -> Vec<f32> {
    let mut w = vec![0.0; 3 * ch * ch];
    for o in 0..ch {
        for i in 0..ch {
            for j in 0..3 {
                w[(j * ch + o) * ch + i] = src[(o * ch + i) * 3 + j];
            }
        }
    }
    w
}

impl TaeNet {
    /// The network of `graph` with its tensors (`decoder.*` or `encoder.*`) from `weights`;
    /// a missing or mis-shaped tensor is an error naming it.
    pub(super) fn new(graph: TaeGraph, weights: &Weights) -> Result<TaeNet> {
        let prefix = graph.kind.prefix();
        let get = |name: &str, shape: &[usize]| tensor(weights, &format!("{prefix}.{name}"), shape);
        let mut layers = Vec::with_capacity(graph.steps.len());
        for step in &graph.steps {
            layers.push(match &step.op {
                TaeOp::Save => Layer::Save,
                TaeOp::RepeatFrames => Layer::RepeatFrames,
                TaeOp::GroupNorm { name, ch, silu } => Layer::GroupNorm {
                    gamma: get(&format!("{name}.weight"), &[*ch])?.to_vec(),
                    beta: get(&format!("{name}.bias"), &[*ch])?.to_vec(),
                    groups: graph.groups,
                    silu: *silu,
                },
                TaeOp::Conv2d {
                    name,
                    cin,
                    cout,
                    upsample,
                } => {
                    let (cin, cout) = (*cin, *cout);
                    let src = get(&format!("{name}.weight"), &[cout, cin, 3, 3])?;
                    Layer::Conv2d {
                        w: conv_weight_rows(src, cin, cout),
                        b: get(&format!("{name}.bias"), &[cout])?.to_vec(),
                        cin,
                        cout,
                        upsample: *upsample,
                    }
                }
                TaeOp::ConvT { name, ch, cache } => {
                    let ch = *ch;
                    let src = get(&format!("{name}.weight"), &[ch, ch, 3])?;
                    Layer::ConvT {
                        w: temporal_weight(src, ch),
                        b: get(&format!("{name}.bias"), &[ch])?.to_vec(),
                        ch,
                        cache: *cache,
                    }
                }
                TaeOp::DownS { name, ch } => {
                    let ch = *ch;
                    let src = get(&format!("{name}.weight"), &[ch, ch, 3, 3])?;
                    Layer::DownS {
                        w: conv_weight_rows(src, ch, ch),
                        b: get(&format!("{name}.bias"), &[ch])?.to_vec(),
                        ch,
                    }
                }
                TaeOp::DownT { name, ch, cache } => {
                    let ch = *ch;
                    let src = get(&format!("{name}.weight"), &[ch, ch, 3])?;
                    Layer::DownT {
                        w: temporal_weight(src, ch),
                        b: get(&format!("{name}.bias"), &[ch])?.to_vec(),
                        ch,
                        cache: *cache,
                    }
                }
                TaeOp::Attention {
                    name,
                    ch,
                    heads,
                    head_dim,
                } => {
                    let ch = *ch;
                    let mut wqkv = Vec::with_capacity(3 * ch * ch);
                    let mut bqkv = Vec::with_capacity(3 * ch);
                    for p in ["q", "k", "v"] {
                        wqkv.extend_from_slice(get(&format!("{name}.{p}.weight"), &[ch, ch])?);
                        bqkv.extend_from_slice(get(&format!("{name}.{p}.bias"), &[ch])?);
                    }
                    Layer::Attention {
                        wqkv,
                        bqkv,
                        wo: get(&format!("{name}.out.weight"), &[ch, ch])?.to_vec(),
                        bo: get(&format!("{name}.out.bias"), &[ch])?.to_vec(),
                        ch,
                        heads: *heads,
                        head_dim: *head_dim,
                    }
                }
                TaeOp::AddSaved { skip, cin, cout } => Layer::AddSaved {
                    skip: match skip {
                        Some(name) => Some((
                            get(&format!("{name}.weight"), &[*cout, *cin, 1, 1])?.to_vec(),
                            get(&format!("{name}.bias"), &[*cout])?.to_vec(),
                        )),
                        None => None,
                    },
                    cin: *cin,
                    cout: *cout,
                },
            });
        }
        let caches = vec![None; graph.caches];
        Ok(TaeNet {
            graph,
            layers,
            caches,
            scratch: Vec::new(),
        })
    }

    /// Forgets the causal caches: the next chunk starts a new stream.
    pub(super) fn reset(&mut self) {
        self.caches.iter_mut().for_each(|c| *c = None);
    }

    /// Test hook: drops cache `index` as if it had never been written (a planted bug: the
    /// chunked output must then differ from the whole-sequence output).
    pub(super) fn forget_cache(&mut self, index: usize) {
        if let Some(c) = self.caches.get_mut(index) {
            *c = None;
        }
    }

    /// Runs every op on `x` (continuing the stream), handing `observe` each op's index and
    /// output.
    pub(super) fn run(&mut self, mut x: Act, mut observe: impl FnMut(usize, &[f32])) -> Result<Act> {
        let mut saved: Vec<Act> = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            x = match layer {
                Layer::Save => {
                    saved.push(x.clone());
                    x
                }
                Layer::GroupNorm {
                    gamma,
                    beta,
                    groups,
                    silu,
                } => {
                    group_norm(&mut x, gamma, beta, *groups, *silu);
                    x
                }
                Layer::Conv2d {
                    w,
                    b,
                    cin,
                    cout,
                    upsample,
                } => conv2d(&x, w, b, *cin, *cout, *upsample, &mut self.scratch),
                Layer::ConvT { w, b, ch, cache } => conv_t(&x, w, b, *ch, &mut self.caches[*cache]),
                Layer::RepeatFrames => repeat_frames(&x),
                Layer::DownS { w, b, ch } => down_s(&x, w, b, *ch, &mut self.scratch),
                Layer::DownT { w, b, ch, cache } => {
                    down_t(&x, w, b, *ch, &mut self.caches[*cache])?
                }
                Layer::Attention {
                    wqkv,
                    bqkv,
                    wo,
                    bo,
                    ch,
                    heads,
                    head_dim,
                } => attention(&x, wqkv, bqkv, wo, bo, *ch, *heads, *head_dim),
                Layer::AddSaved { skip, cin, cout } => {
                    let s = saved.pop().ok_or_else(|| {
                        Error::Invalid("TAE: AddSaved without a saved activation".into())
                    })?;
                    add_saved(&mut x, &s, skip.as_ref(), *cin, *cout);
                    x
                }
            };
            observe(index, &x.data);
        }
        Ok(x)
    }
}

impl TaeDecoder {
    /// The decoder of `graph` with the `decoder.*` tensors of `weights`; a missing or
    /// mis-shaped tensor is an error naming it.
    pub fn new(graph: TaeGraph, weights: &Weights) -> Result<TaeDecoder> {
        if graph.kind != TaeKind::Decoder {
            return Err(Error::Invalid(
                "TaeDecoder: the op list is the encoder's (TaeGraph::encoder); use TaeEncoder".into(),
            ));
        }
        Ok(TaeDecoder {
            net: TaeNet::new(graph, weights)?,
        })
    }

    /// The op list this decoder executes.
    pub fn graph(&self) -> &TaeGraph {
        &self.net.graph
    }

    /// Forgets the causal caches: the next chunk starts a new stream.
    pub fn reset(&mut self) {
        self.net.reset()
    }

    /// Elements of one latent frame, `C * H * W`.
    fn latent_elems(&self) -> usize {
        let g = &self.net.graph;
        g.latent_channels * g.latent_height * g.latent_width
    }

    /// Decodes `latents [n, C, H, W]` (continuing the stream) into the decoder's output
    /// before the byte mapping: `[4n, 8H, 8W, 3]`, channels last.
    pub fn decode_f32(&mut self, latents: &[f32]) -> Result<Vec<f32>> {
        self.decode_observed(latents, |_, _| {})
    }

    /// [`decode_f32`](Self::decode_f32), handing `observe` the index of every op in
    /// [`TaeGraph::steps`] with its output `[T, H, W, Ch]` (to check activation scales, or
    /// to compare a device's activations layer by layer).
    pub fn decode_observed(
        &mut self,
        latents: &[f32],
        mut observe: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let elems = self.latent_elems();
        if latents.len() % elems != 0 {
            return Err(Error::shape(
                "TAE decoder latents",
                format!("a multiple of C*H*W = {elems} elements"),
                format!("{} elements", latents.len()),
            ));
        }
        if latents.is_empty() {
            return Ok(Vec::new());
        }
        let g = &self.net.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        crate::decoder::check_latents("TAE decoder latents", latents, [c, h, w])?;
        let n = latents.len() / elems;
        // [n, C, H, W] -> [n, H, W, C]
        let mut data = vec![0.0; latents.len()];
        for f in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    data[(f * h * w + p) * c + ch] = latents[(f * c + ch) * h * w + p];
                }
            }
        }
        let x = Act {
            data,
            frames: n,
            height: h,
            width: w,
            channels: c,
        };
        let x = self.net.run(x, &mut observe)?;
        debug_assert_eq!(
            (x.frames, x.height, x.width, x.channels),
            (
                n * TEMPORAL_UPSAMPLE,
                h * SPATIAL_UPSAMPLE,
                w * SPATIAL_UPSAMPLE,
                3
            )
        );
        Ok(x.data)
    }
}

impl Decoder for TaeDecoder {
    fn frame_size(&self) -> (usize, usize) {
        self.net.graph.frame_size()
    }

    fn frames_per_latent(&self) -> usize {
        TEMPORAL_UPSAMPLE
    }

    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        to_bytes(&self.decode_f32(latents)?, out);
        Ok(())
    }

    fn reset(&mut self) {
        TaeDecoder::reset(self)
    }
}

/// In place: GroupNorm per frame over `(H, W, ch / groups)`, affine, then SiLU if `silu`.
/// Statistics are two-pass (mean, then centred squares), accumulated per channel in f64
/// over pixels, then per group; each frame is split into row blocks in parallel.
fn group_norm(x: &mut Act, gamma: &[f32], beta: &[f32], groups: usize, silu_after: bool) {
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
fn conv2d(
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
fn conv_t(x: &Act, w: &[f32], b: &[f32], ch: usize, cache: &mut Option<Vec<f32>>) -> Act {
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
    ext.drain(..n * len);
    *cache = Some(ext);
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
fn down_s(x: &Act, w: &[f32], b: &[f32], ch: usize, scratch: &mut Vec<f32>) -> Act {
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
fn down_t(x: &Act, w: &[f32], b: &[f32], ch: usize, cache: &mut Option<Vec<f32>>) -> Result<Act> {
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
fn repeat_frames(x: &Act) -> Act {
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
fn attention(
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
fn add_saved(x: &mut Act, s: &Act, skip: Option<&(Vec<f32>, Vec<f32>)>, cin: usize, cout: usize) {
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
