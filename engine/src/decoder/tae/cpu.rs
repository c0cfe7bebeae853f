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

use super::layers::{
    add_saved, attention, conv2d, conv_t, down_s, down_t, group_norm, repeat_frames,
};
use crate::checkpoint::Weights;
use crate::decoder::{to_bytes, Decoder};
use crate::error::{fmt_shape, Error, Result};
use crate::model::tae::{
    TaeGraph, TaeKind, TaeOp, SPATIAL_UPSAMPLE, TEMPORAL_UPSAMPLE,
};

/// Elements a parallel task of an elementwise op or a norm should at least get.
pub(super) const MIN_BLOCK: usize = 1 << 15;

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
    pub(super) fn pixels(&self) -> usize {
        self.height * self.width
    }

    pub(super) fn frame_len(&self) -> usize {
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

    /// Host bytes the causal caches hold now (their allocations' capacity, f32).
    pub(super) fn cache_bytes(&self) -> usize {
        let held = |c: &Option<Vec<f32>>| c.as_ref().map_or(0, Vec::capacity);
        self.caches.iter().map(held).sum::<usize>() * std::mem::size_of::<f32>()
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

