//! The CPU executor of a Wan-family decoder's op list ([`VideoGraph`]): TAEHV and the Wan
//! VAE decoder are both a [`VideoDecoder`] over their own graph (see `decoder::taehv` and
//! `decoder::wan_vae` for their constructors). f32, channels last, the kernels of
//! `video_kernels`; the per-stream caches carry the causal context between chunks, so a
//! stream decoded chunk by chunk gives the same bits as decoded at once.

use crate::decoder::video_kernels::{self as k, Act, ConvWeights};
use crate::decoder::Decoder;
use crate::error::{fmt_shape, Error, Result};
use crate::checkpoint::Weights;
use crate::model::video_ops::{Conv, VideoGraph, VideoOp, MAX_ACTIVATION_ELEMS};
use crate::tensor::Tensor;

/// An op with its weights in the CPU layout.
#[derive(Debug)]
enum Layer {
    Save,
    AddSaved(Option<ConvWeights>),
    Denormalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    SoftClamp(f32),
    Relu,
    RmsNorm {
        gamma: Vec<f32>,
        silu: bool,
    },
    Conv(ConvWeights, Option<usize>),
    WithPast(usize),
    TemporalUp {
        conv: ConvWeights,
        cache: Option<usize>,
        stride: usize,
        keep_first: bool,
    },
    TemporalPool {
        conv: ConvWeights,
        stride: usize,
    },
    TemporalDown {
        conv: ConvWeights,
        cache: usize,
    },
    Normalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    DropFirst(usize),
    Attention {
        wqkv: Vec<f32>,
        bqkv: Vec<f32>,
        wo: Vec<f32>,
        bo: Vec<f32>,
        heads: usize,
    },
}

/// A Wan-family decoder on the CPU with its per-stream state.
#[derive(Debug)]
pub struct VideoDecoder {
    graph: VideoGraph,
    layers: Vec<Layer>,
    /// Per cache of the graph, its frames (zeros at the stream start).
    caches: Vec<Vec<f32>>,
    /// Whether a chunk of this stream was decoded (the first-chunk rules are spent).
    started: bool,
    scratch: Vec<f32>,
}

/// Tensor `name` of `weights` with `shape`, or an error naming both.
fn tensor<'a>(weights: &'a Weights, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = weights.get(name)?;
    if t.shape != shape {
        return Err(Error::Tensor {
            path: weights.source().to_string(),
            tensor: name.to_string(),
            expected: format!("shape {}", fmt_shape(shape)),
            found: format!("shape {}", fmt_shape(&t.shape)),
        });
    }
    Ok(&t.data)
}

fn conv_weights(weights: &Weights, c: &Conv) -> Result<ConvWeights> {
    let w = tensor(weights, &format!("{}.weight", c.name), &c.weight_shape())?;
    let b = if c.bias {
        Some(tensor(weights, &format!("{}.bias", c.name), &[c.cout])?)
    } else {
        None
    };
    let mut cw = ConvWeights::from_checkpoint(w, b, c.cin, c.cout, c.taps_t, c.taps_s, c.upsample);
    cw.downsample = c.downsample;
    cw.pad_after = c.pad_after;
    Ok(cw)
}

impl VideoDecoder {
    /// The decoder of `graph` with its tensors from `weights` (canonical names); a missing
    /// or mis-shaped tensor is an error naming it.
    pub fn new(graph: VideoGraph, weights: &Weights) -> Result<VideoDecoder> {
        let mut layers = Vec::with_capacity(graph.steps.len());
        for step in &graph.steps {
            layers.push(match &step.op {
                VideoOp::Save => Layer::Save,
                VideoOp::AddSaved { skip, .. } => Layer::AddSaved(
                    skip.as_ref()
                        .map(|c| conv_weights(weights, c))
                        .transpose()?,
                ),
                VideoOp::Denormalize { mean, std } => Layer::Denormalize {
                    mean: mean.clone(),
                    std: std.clone(),
                },
                VideoOp::SoftClamp { limit } => Layer::SoftClamp(*limit),
                VideoOp::Relu => Layer::Relu,
                VideoOp::RmsNorm {
                    name,
                    ch,
                    silu,
                    gamma_rank,
                } => {
                    let mut shape = vec![1; *gamma_rank];
                    shape[0] = *ch;
                    Layer::RmsNorm {
                        gamma: tensor(weights, &format!("{name}.gamma"), &shape)?.to_vec(),
                        silu: *silu,
                    }
                }
                VideoOp::Conv(c) => Layer::Conv(conv_weights(weights, c)?, c.cache),
                VideoOp::WithPast { cache, .. } => Layer::WithPast(*cache),
                VideoOp::TemporalUp {
                    conv,
                    stride,
                    keep_first,
                } => Layer::TemporalUp {
                    conv: conv_weights(weights, conv)?,
                    cache: conv.cache,
                    stride: *stride,
                    keep_first: *keep_first,
                },
                VideoOp::TemporalPool { conv, stride } => Layer::TemporalPool {
                    conv: conv_weights(weights, conv)?,
                    stride: *stride,
                },
                VideoOp::TemporalDown { conv } => Layer::TemporalDown {
                    conv: conv_weights(weights, conv)?,
                    cache: conv.cache.ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: temporal downsampling `{}` has no cache",
                            graph.family, conv.name
                        ))
                    })?,
                },
                VideoOp::Normalize { mean, std } => Layer::Normalize {
                    mean: mean.clone(),
                    std: std.clone(),
                },
                VideoOp::DropFirst { frames } => Layer::DropFirst(*frames),
                VideoOp::Attention {
                    qkv,
                    proj,
                    ch,
                    heads,
                } => {
                    let ch = *ch;
                    let get = |n: &str, rows: usize| -> Result<(Vec<f32>, Vec<f32>)> {
                        Ok((
                            tensor(weights, &format!("{n}.weight"), &[rows, ch, 1, 1])?.to_vec(),
                            tensor(weights, &format!("{n}.bias"), &[rows])?.to_vec(),
                        ))
                    };
                    let (wqkv, bqkv) = get(qkv, 3 * ch)?;
                    let (wo, bo) = get(proj, ch)?;
                    Layer::Attention {
                        wqkv,
                        bqkv,
                        wo,
                        bo,
                        heads: *heads,
                    }
                }
            });
        }
        let caches = graph.caches.iter().map(|c| vec![0.0; c.elems()]).collect();
        Ok(VideoDecoder {
            graph,
            layers,
            caches,
            started: false,
            scratch: Vec::new(),
        })
    }

    /// The op list this decoder executes.
    pub fn graph(&self) -> &VideoGraph {
        &self.graph
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.forget_context();
        self.started = false;
    }

    /// Zeroes the causal caches while the stream goes on (the first-chunk rules do not
    /// apply again): what a decoder that lost its caches between chunks would compute.
    /// Tests use it to show that the chunked comparison can fail.
    pub fn forget_context(&mut self) {
        self.caches.iter_mut().for_each(|c| c.fill(0.0));
    }

    /// Whether the next chunk starts a stream.
    pub fn at_stream_start(&self) -> bool {
        !self.started
    }

    /// Elements of one latent frame, `C * H * W`.
    fn latent_elems(&self) -> usize {
        let g = &self.graph;
        g.latent_channels * g.latent_height * g.latent_width
    }

    /// Decodes `latents [n, C, H, W]`, checking its shape.
    pub fn decode_tensor(&mut self, latents: &Tensor, out: &mut Vec<u8>) -> Result<()> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        match latents.shape[..] {
            [_, cc, hh, ww] if (cc, hh, ww) == (c, h, w) => self.decode(&latents.data, out),
            _ => Err(Error::shape(
                format!("{} latents", g.family),
                format!("[n, {c}, {h}, {w}]"),
                fmt_shape(&latents.shape),
            )),
        }
    }

    /// Decodes `latents [n, C, H, W]` (continuing the stream) into the decoder's output
    /// before the byte mapping: `[frames, 8H, 8W, 3]`, channels last.
    pub fn decode_f32(&mut self, latents: &[f32]) -> Result<Vec<f32>> {
        self.decode_observed(latents, |_, _| {})
    }

    /// [`decode_f32`](Self::decode_f32), handing `observe` the index of every op of the
    /// graph with its output `[T, H, W, Ch]`.
    pub fn decode_observed(
        &mut self,
        latents: &[f32],
        mut observe: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let elems = self.latent_elems();
        if latents.len() % elems != 0 {
            return Err(Error::shape(
                format!("{} latents", self.graph.family),
                format!("a multiple of C*H*W = {elems} elements"),
                format!("{} elements", latents.len()),
            ));
        }
        if latents.is_empty() {
            return Ok(Vec::new());
        }
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let what = format!("{} latents", g.family);
        crate::decoder::check_latents(&what, latents, [c, h, w])?;
        let n = latents.len() / elems;
        let first = !self.started;
        let (largest, at) = g.largest_activation(n, first);
        if largest > MAX_ACTIVATION_ELEMS {
            let what = g.steps.get(at).map_or("the output", |s| s.op.kind());
            return Err(Error::shape(
                format!("{} chunk of {n} latent frames", g.family),
                format!("at most {MAX_ACTIVATION_ELEMS} elements per activation (decode fewer latent frames per call)"),
                format!("{largest} elements at op {at} ({what})"),
            ));
        }
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
        Ok(self.run(x, n, &mut observe)?.data)
    }

    /// Runs the op list on `x` (the input of a chunk of `n` latent frames, channels last,
    /// its shape already checked), continuing the stream.
    pub(crate) fn run(
        &mut self,
        mut x: Act,
        n: usize,
        observe: &mut impl FnMut(usize, &[f32]),
    ) -> Result<Act> {
        let first = !self.started;
        let mut saved: Vec<Act> = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            x = match layer {
                Layer::Save => {
                    saved.push(x.clone());
                    x
                }
                Layer::AddSaved(skip) => {
                    let s = saved.pop().ok_or_else(|| {
                        Error::Invalid(format!("{}: AddSaved without a Save", self.graph.family))
                    })?;
                    k::add_saved(&mut x, &s, skip.as_ref());
                    x
                }
                Layer::Denormalize { mean, std } => {
                    k::denormalize(&mut x, mean, std);
                    x
                }
                Layer::SoftClamp(limit) => {
                    let l = *limit;
                    k::map(&mut x.data, |v| (v / l).tanh() * l);
                    x
                }
                Layer::Relu => {
                    k::map(&mut x.data, |v| v.max(0.0));
                    x
                }
                Layer::RmsNorm { gamma, silu } => {
                    k::rms_norm(&mut x, gamma, *silu);
                    x
                }
                Layer::Conv(conv, cache) => {
                    causal_conv(&x, 0, conv, *cache, &mut self.caches, &mut self.scratch)
                }
                Layer::WithPast(cache) => k::with_past(&x, &mut self.caches[*cache]),
                Layer::TemporalUp {
                    conv,
                    cache,
                    stride,
                    keep_first,
                } => {
                    let bypass = usize::from(first && *keep_first);
                    let y = causal_conv(
                        &x,
                        bypass,
                        conv,
                        *cache,
                        &mut self.caches,
                        &mut self.scratch,
                    );
                    let mut data = x.frames(0, bypass).to_vec();
                    k::split_frames(&y, *stride, &mut data);
                    Act {
                        data,
                        frames: bypass + stride * y.frames,
                        ..x
                    }
                }
                Layer::TemporalPool { conv, stride } => {
                    k::temporal_pool(&x, conv, *stride, &mut self.scratch)
                }
                Layer::TemporalDown { conv, cache } => k::temporal_down(
                    &x,
                    first,
                    conv,
                    &mut self.caches[*cache],
                    &mut self.scratch,
                ),
                Layer::Normalize { mean, std } => k::normalize(&x, mean, std),
                Layer::DropFirst(frames) => {
                    let drop = if first { (*frames).min(x.frames) } else { 0 };
                    Act {
                        data: x.frames(drop, x.frames).to_vec(),
                        frames: x.frames - drop,
                        ..x
                    }
                }
                Layer::Attention {
                    wqkv,
                    bqkv,
                    wo,
                    bo,
                    heads,
                } => k::attention(&x, (wqkv, bqkv), (wo, bo), *heads),
            };
            observe(index, &x.data);
        }
        self.started = true;
        let g = &self.graph;
        debug_assert_eq!(x.frames, g.frames_out(n, first));
        Ok(x)
    }
}

/// `conv` over frames `[from, ..)` of `x`, its history from cache `cache` (which then keeps
/// the last input frames) when it is causal.
fn causal_conv(
    x: &Act,
    from: usize,
    conv: &ConvWeights,
    cache: Option<usize>,
    caches: &mut [Vec<f32>],
    scratch: &mut Vec<f32>,
) -> Act {
    match cache {
        Some(i) => {
            let ext = k::with_history(&caches[i], x, from);
            let y = k::conv(&ext, conv, scratch);
            k::keep_last(&ext, &mut caches[i]);
            y
        }
        None if from == 0 => k::conv(x, conv, scratch),
        None => k::conv(&k::with_history(&[], x, from), conv, scratch),
    }
}

impl Decoder for VideoDecoder {
    fn frame_size(&self) -> (usize, usize) {
        self.graph.frame_size()
    }

    fn frames_per_latent(&self) -> usize {
        self.graph.out_frames.per_latent
    }

    fn startup_frames(&self) -> usize {
        self.graph.out_frames.first_less
    }

    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        let rgb = self.decode_f32(latents)?;
        let range = self.graph.output;
        out.reserve(rgb.len());
        out.extend(rgb.iter().map(|&v| range.to_byte(v)));
        Ok(())
    }

    fn reset(&mut self) {
        VideoDecoder::reset(self)
    }
}
