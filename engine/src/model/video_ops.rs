//! The op vocabulary of the Wan-family latent decoders as data: TAEHV (`taew2_1`,
//! `docs/taehv.md`) and the Wan 2.1 VAE decoder (`docs/wan_vae.md`) are both a flat list of
//! [`VideoOp`]s over one channels-last activation `[T, H, W, Ch]`, built by
//! [`super::taehv`] and [`super::wan_vae`]. The CPU decoder (`decoder::video`) executes the
//! list; the cost model and a device lowering read the same list. Nothing here executes.
//!
//! Like the TAE's op list ([`super::tae`]) it is a tiny stack machine: [`VideoOp::Save`]
//! pushes the current activation, [`VideoOp::AddSaved`] pops it and adds it. Unlike the TAE,
//! the number of frames an op sees depends on whether a chunk is a stream's first: both
//! decoders turn the first latent frame into 1 video frame and every later one into 4, so a
//! chunk of `n` latent frames gives `4n - 3` frames when it starts a stream and `4n` after.
//! [`Frames`] carries that rule through the list.

use crate::error::{Error, Result};

pub use super::video_types::{CacheSpec, RgbRange, Role, VideoTensor};

/// `F.normalize`'s floor on the L2 norm (PyTorch default `eps = 1e-12`).
pub const RMS_EPS: f32 = 1e-12;
/// Most elements one activation of a chunk may have (16 GiB in f32): a longer chunk is an
/// error asking for fewer latent frames per call, not an allocation failure.
pub const MAX_ACTIVATION_ELEMS: usize = 1 << 32;

/// A convolution over frames: `taps_t` taps in time (1, or 3 = causal: output frame `t` reads
/// input frames `t-2, t-1, t`, the earlier ones from cache `cache` across chunks, zeros
/// before the stream), `taps_s x taps_s` taps in space (1 or 3, zero padding `(taps_s-1)/2`),
/// stride 1. With `upsample` the input is first repeated 2x2 in H and W (nearest); with
/// `downsample` the stride is 2 in H and W (output pixel `(y, x)` centred on input pixel
/// `(2y, 2x)`: `nn.Conv2d(stride=2, padding=(taps_s-1)/2)` on even sizes). Weight
/// `{name}.weight`: `[cout, cin, taps_t, taps_s, taps_s]` when `conv3d` (a PyTorch Conv3d),
/// `[cout, cin, taps_s, taps_s]` otherwise (a Conv2d, `taps_t == 1`); `{name}.bias [cout]`
/// when `bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub taps_t: usize,
    pub taps_s: usize,
    pub upsample: bool,
    /// Stride 2 in space (the TAEHV encoder); never together with `upsample`.
    pub downsample: bool,
    /// With `downsample`: zero padding after each axis only (`ZeroPad2d((0, 1, 0, 1))`, the
    /// Wan VAE encoder), so output pixel `(y, x)` reads input rows `2y ..= 2y + 2`.
    pub pad_after: bool,
    pub bias: bool,
    pub conv3d: bool,
    /// The cache of its last two input frames, when `taps_t == 3`.
    pub cache: Option<usize>,
    /// Scale of its random weights (1 keeps the input's scale); random checkpoints only.
    pub gain: f32,
}

impl Conv {
    /// The checkpoint shape of `{name}.weight`.
    pub fn weight_shape(&self) -> Vec<usize> {
        let (o, i, t, s) = (self.cout, self.cin, self.taps_t, self.taps_s);
        if self.conv3d {
            vec![o, i, t, s, s]
        } else {
            vec![o, i, s, s]
        }
    }

    /// Multiply-adds per output pixel of one output frame.
    pub fn macs_per_pixel(&self) -> u64 {
        (self.taps_t * self.taps_s * self.taps_s * self.cin * self.cout) as u64
    }
}

/// One op. Tensor names are full checkpoint names in the family's canonical naming.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoOp {
    /// Pushes the current activation for a later [`VideoOp::AddSaved`].
    Save,
    /// Pops the saved activation `s [.., cin]` and adds `skip(s)` to the current
    /// `[.., cout]`: `skip` is a 1x1 convolution when given, the identity otherwise.
    AddSaved {
        skip: Option<Conv>,
        cin: usize,
    },
    /// `x * std[c] + mean[c]` per channel: latents from the DiT's normalised space back to
    /// the VAE's.
    Denormalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    /// `tanh(x / limit) * limit`.
    SoftClamp {
        limit: f32,
    },
    /// `max(x, 0)`.
    Relu,
    /// Per pixel over channels: `x / max(|x|_2, RMS_EPS) * sqrt(ch) * gamma`, then SiLU when
    /// `silu`. `{name}.gamma` has shape `[ch, 1, ..]` with `gamma_rank` dimensions.
    RmsNorm {
        name: String,
        ch: usize,
        silu: bool,
        gamma_rank: usize,
    },
    Conv(Conv),
    /// Appends the previous frame's channels: output `[x[t], x[t-1]]` (`2 ch`), the frame
    /// before a chunk from cache `cache`, zeros before the stream (TAEHV's `MemBlock` input).
    WithPast {
        ch: usize,
        cache: usize,
    },
    /// Temporal upsampling: `conv` (`cin -> stride * cin`, per pixel) maps input frame `t` to
    /// output frames `stride * t + s`, `s < stride`, frame `s` taking output channels
    /// `[s * cin, (s + 1) * cin)`. With `keep_first` the stream's first input frame bypasses
    /// it (one output frame, itself) and the convolution's history starts at the second.
    TemporalUp {
        conv: Conv,
        stride: usize,
        keep_first: bool,
    },
    /// Temporal pooling (TAEHV's `TPool`): input frames `stride * t + s`, `s < stride`, are
    /// concatenated along channels (frame `s` in channels `[s * ch, (s + 1) * ch)`) and
    /// `conv` (`stride * ch -> ch`, per pixel) makes output frame `t`. A chunk's frames must
    /// be a multiple of `stride`, so no state crosses chunks.
    TemporalPool {
        conv: Conv,
        stride: usize,
    },
    /// Temporal downsampling (the Wan VAE encoder's `downsample3d`): the stream's first input
    /// frame passes through; output frame `k >= 1` is `conv` (`cin -> cin`, 3 taps, per
    /// pixel) over input frames `2k - 2, 2k - 1, 2k`, the frame before a chunk from
    /// `conv.cache` (one frame). A first chunk has an odd number of frames, a later one even.
    TemporalDown {
        conv: Conv,
    },
    /// The encoder's latents: the first `mean.len()` channels (the mean; the rest are the
    /// log-variance) mapped to `(x - mean[c]) / std[c]`, the DiT's normalised space.
    Normalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    /// Drops the stream's first `frames` frames.
    DropFirst {
        frames: usize,
    },
    /// Per-frame self-attention over pixels on an already normalised input, no residual:
    /// `qkv = {qkv}.weight [3 ch, ch, 1, 1] x + {qkv}.bias` (q, k, v stacked in that
    /// order), `heads` heads of `ch / heads` channels, softmax scale `1/sqrt(ch / heads)`,
    /// then `{proj}.weight [ch, ch, 1, 1]`, `{proj}.bias`.
    Attention {
        qkv: String,
        proj: String,
        ch: usize,
        heads: usize,
    },
}

impl VideoOp {
    /// A short name of the op's kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            VideoOp::Save => "save",
            VideoOp::AddSaved { skip: Some(_), .. } => "add_skip",
            VideoOp::AddSaved { skip: None, .. } => "add",
            VideoOp::Denormalize { .. } => "denormalize",
            VideoOp::SoftClamp { .. } => "soft_clamp",
            VideoOp::Relu => "relu",
            VideoOp::RmsNorm { .. } => "rms_norm",
            VideoOp::Conv(c) if c.taps_t == 3 => "conv3d_causal",
            VideoOp::Conv(c) if c.upsample => "conv_up2",
            VideoOp::Conv(c) if c.downsample => "conv_down2",
            VideoOp::Conv(_) => "conv",
            VideoOp::WithPast { .. } => "with_past",
            VideoOp::TemporalUp { .. } => "temporal_up",
            VideoOp::TemporalPool { .. } => "temporal_pool",
            VideoOp::TemporalDown { .. } => "temporal_down",
            VideoOp::Normalize { .. } => "normalize",
            VideoOp::DropFirst { .. } => "drop_first",
            VideoOp::Attention { .. } => "attention",
        }
    }
}

/// Frames of an activation for a chunk of `n` latent frames: `per_latent * n`, less
/// `first_less` when the chunk starts a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    pub per_latent: usize,
    pub first_less: usize,
}

impl Frames {
    pub const LATENT: Frames = Frames {
        per_latent: 1,
        first_less: 0,
    };

    /// Frames for a chunk of `n >= 1` latent frames.
    pub fn count(self, n: usize, first: bool) -> usize {
        let less = if first { self.first_less } else { 0 };
        (self.per_latent * n).saturating_sub(less)
    }
}

/// One op with the shape of its input.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoStep {
    pub op: VideoOp,
    pub frames: Frames,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl VideoStep {
    /// Output `(frames, height, width, channels)`.
    pub fn output(&self) -> (Frames, usize, usize, usize) {
        let (f, h, w, c) = (self.frames, self.height, self.width, self.channels);
        match &self.op {
            VideoOp::Save
            | VideoOp::Denormalize { .. }
            | VideoOp::SoftClamp { .. }
            | VideoOp::Relu
            | VideoOp::RmsNorm { .. }
            | VideoOp::Attention { .. } => (f, h, w, c),
            VideoOp::AddSaved { skip, .. } => (f, h, w, skip.as_ref().map_or(c, |s| s.cout)),
            VideoOp::Conv(conv) if conv.downsample => (f, h.div_ceil(2), w.div_ceil(2), conv.cout),
            VideoOp::Conv(conv) => {
                let s = if conv.upsample { 2 } else { 1 };
                (f, h * s, w * s, conv.cout)
            }
            VideoOp::WithPast { ch, .. } => (f, h, w, 2 * ch),
            VideoOp::TemporalUp {
                stride, keep_first, ..
            } => {
                // With `keep_first`, the first frame gives 1 frame instead of `stride`.
                let extra = if *keep_first { stride - 1 } else { 0 };
                let frames = Frames {
                    per_latent: f.per_latent * stride,
                    first_less: f.first_less * stride + extra,
                };
                (frames, h, w, c)
            }
            VideoOp::TemporalPool { conv, stride } => {
                let frames = Frames {
                    per_latent: f.per_latent / stride,
                    first_less: f.first_less / stride,
                };
                (frames, h, w, conv.cout)
            }
            VideoOp::TemporalDown { .. } => {
                // `1 + (n - 1) / 2` frames from a first chunk of odd `n`, `n / 2` after.
                let frames = Frames {
                    per_latent: f.per_latent / 2,
                    first_less: f.first_less.saturating_sub(1) / 2,
                };
                (frames, h, w, c)
            }
            VideoOp::Normalize { mean, .. } => (f, h, w, mean.len()),
            VideoOp::DropFirst { frames } => {
                let out = Frames {
                    first_less: f.first_less + frames,
                    ..f
                };
                (out, h, w, c)
            }
        }
    }
}

/// A decoder for one latent size: its ops in order with their shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoGraph {
    /// For messages: "TAEHV decoder", "Wan VAE decoder".
    pub family: &'static str,
    pub latent_channels: usize,
    pub latent_height: usize,
    pub latent_width: usize,
    pub steps: Vec<VideoStep>,
    pub caches: Vec<CacheSpec>,
    pub output: RgbRange,
    /// Video frames per latent frame (4) and frames the first chunk gives fewer (3).
    pub out_frames: Frames,
    /// Spatial upsampling (8).
    pub upscale: usize,
}

impl VideoGraph {
    /// Video frame `(width, height)`.
    pub fn frame_size(&self) -> (usize, usize) {
        (
            self.latent_width * self.upscale,
            self.latent_height * self.upscale,
        )
    }

    /// Video frames of a chunk of `n` latent frames.
    pub fn frames_out(&self, n: usize, first: bool) -> usize {
        if n == 0 {
            0
        } else {
            self.out_frames.count(n, first)
        }
    }

    /// Every tensor the decoder reads, in op order, each once.
    pub fn tensors(&self) -> Vec<VideoTensor> {
        let mut out: Vec<VideoTensor> = Vec::new();
        let conv = |out: &mut Vec<VideoTensor>, c: &Conv, last: bool| {
            let fan_in = c.cin * c.taps_t * c.taps_s * c.taps_s;
            out.push(VideoTensor {
                name: format!("{}.weight", c.name),
                shape: c.weight_shape(),
                role: Role::Weight {
                    fan_in,
                    gain: c.gain,
                },
            });
            if c.bias {
                let role = match (last, self.output) {
                    (false, _) => Role::Bias,
                    (true, RgbRange::Unit) => Role::OutBias { mean: 0.5 },
                    (true, RgbRange::Signed) => Role::OutBias { mean: 0.0 },
                };
                out.push(VideoTensor {
                    name: format!("{}.bias", c.name),
                    shape: vec![c.cout],
                    role,
                });
            }
        };
        let last = self
            .steps
            .iter()
            .rposition(|s| matches!(s.op, VideoOp::Conv(_)));
        for (i, step) in self.steps.iter().enumerate() {
            match &step.op {
                VideoOp::Conv(c) => conv(&mut out, c, Some(i) == last),
                VideoOp::TemporalUp { conv: c, .. }
                | VideoOp::TemporalPool { conv: c, .. }
                | VideoOp::TemporalDown { conv: c } => conv(&mut out, c, false),
                VideoOp::AddSaved { skip: Some(c), .. } => conv(&mut out, c, false),
                VideoOp::RmsNorm {
                    name,
                    ch,
                    gamma_rank,
                    ..
                } => {
                    let mut shape = vec![1; *gamma_rank];
                    shape[0] = *ch;
                    out.push(VideoTensor {
                        name: format!("{name}.gamma"),
                        shape,
                        role: Role::Gain,
                    });
                }
                VideoOp::Attention { qkv, proj, ch, .. } => {
                    let ch = *ch;
                    for (name, rows, gain) in [(qkv, 3 * ch, 1.5), (proj, ch, 1.0)] {
                        out.push(VideoTensor {
                            name: format!("{name}.weight"),
                            shape: vec![rows, ch, 1, 1],
                            role: Role::Weight { fan_in: ch, gain },
                        });
                        out.push(VideoTensor {
                            name: format!("{name}.bias"),
                            shape: vec![rows],
                            role: Role::Bias,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Parameters of the decoder.
    pub fn parameters(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Floating-point operations of step `i` for a chunk of `n` latent frames: two per
    /// multiply-add of its convolutions and attention products; elementwise ops and norms
    /// count nothing.
    pub fn step_flops(&self, i: usize, n: usize, first: bool) -> u64 {
        let step = &self.steps[i];
        let frames = step.frames.count(n, first) as u64;
        let pixels = (step.height * step.width) as u64;
        match &step.op {
            VideoOp::Conv(c) => {
                let (_, oh, ow, _) = step.output();
                2 * c.macs_per_pixel() * (oh * ow) as u64 * frames
            }
            VideoOp::TemporalPool { conv, stride } => {
                2 * conv.macs_per_pixel() * pixels * (frames / *stride as u64)
            }
            VideoOp::TemporalUp {
                conv, keep_first, ..
            } => {
                let bypass = u64::from(first && *keep_first);
                2 * conv.macs_per_pixel() * pixels * frames.saturating_sub(bypass)
            }
            VideoOp::TemporalDown { conv } => {
                let out = step.output().0.count(n, first) as u64;
                2 * conv.macs_per_pixel() * pixels * out.saturating_sub(u64::from(first))
            }
            VideoOp::AddSaved { skip: Some(c), .. } => 2 * c.macs_per_pixel() * pixels * frames,
            VideoOp::Attention { ch, .. } => {
                let ch = *ch as u64;
                // qkv and proj, then q k^T and p v over the frame's pixels.
                frames * (2 * pixels * ch * 4 * ch + 4 * pixels * pixels * ch)
            }
            _ => 0,
        }
    }

    /// Floating-point operations of a chunk of `n` latent frames (see [`Self::step_flops`]).
    pub fn flops(&self, n: usize, first: bool) -> u64 {
        (0..self.steps.len())
            .map(|i| self.step_flops(i, n, first))
            .sum()
    }

    /// Elements of the largest activation (an op's input, or the output) for a chunk of `n`
    /// latent frames, with the index of the op that reads it (`steps.len()` for the
    /// output); saturating, so absurd sizes compare as huge.
    pub fn largest_activation(&self, n: usize, first: bool) -> (usize, usize) {
        let elems = |f: Frames, h: usize, w: usize, c: usize| {
            f.count(n, first)
                .saturating_mul(h)
                .saturating_mul(w)
                .saturating_mul(c)
        };
        let out = self.steps.last().map_or(0, |s| {
            let (f, h, w, c) = s.output();
            elems(f, h, w, c)
        });
        let out = (out, self.steps.len());
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (elems(s.frames, s.height, s.width, s.channels), i))
            .fold(out, |a, b| if b.0 > a.0 { b } else { a })
    }

    /// Elements of every per-stream cache together.
    pub fn cache_elems(&self) -> usize {
        self.caches.iter().map(CacheSpec::elems).sum()
    }
}

/// Builds an op list while tracking the activation's shape: the family modules drive it,
/// and tests build single blocks with it.
#[derive(Debug)]
pub struct Builder {
    pub steps: Vec<VideoStep>,
    pub frames: Frames,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub caches: Vec<CacheSpec>,
    saved: Vec<usize>,
}

impl Builder {
    pub fn new(channels: usize, height: usize, width: usize) -> Builder {
        Builder {
            steps: Vec::new(),
            frames: Frames::LATENT,
            height,
            width,
            channels,
            caches: Vec::new(),
            saved: Vec::new(),
        }
    }

    pub fn push(&mut self, op: VideoOp) {
        let step = VideoStep {
            op,
            frames: self.frames,
            height: self.height,
            width: self.width,
            channels: self.channels,
        };
        (self.frames, self.height, self.width, self.channels) = step.output();
        self.steps.push(step);
    }

    /// A new cache of `frames` frames of the current activation with `channels` channels.
    pub fn cache(&mut self, frames: usize, channels: usize) -> usize {
        self.caches.push(CacheSpec {
            frames,
            height: self.height,
            width: self.width,
            channels,
        });
        self.caches.len() - 1
    }

    /// A convolution description from the current channels (its cache allocated when
    /// causal); the caller pushes it as an op or nests it.
    pub fn conv_spec(
        &mut self,
        name: String,
        cout: usize,
        k: [usize; 2],
        flags: ConvFlags,
    ) -> Conv {
        let [taps_t, taps_s] = k;
        let cache = (taps_t == 3).then(|| self.cache(2, self.channels));
        Conv {
            name,
            cin: self.channels,
            cout,
            taps_t,
            taps_s,
            upsample: flags.upsample,
            downsample: false,
            pad_after: false,
            bias: flags.bias,
            conv3d: flags.conv3d,
            cache,
            gain: flags.gain,
        }
    }

    pub fn conv(&mut self, name: String, cout: usize, k: [usize; 2], flags: ConvFlags) {
        let c = self.conv_spec(name, cout, k, flags);
        self.push(VideoOp::Conv(c));
    }

    pub fn save(&mut self) {
        self.saved.push(self.channels);
        self.push(VideoOp::Save);
    }

    /// Adds the saved activation, through a 1x1 `skip` convolution named `skip` (with
    /// `flags`) when the channel counts differ.
    pub fn add_saved(&mut self, skip: &str, flags: ConvFlags) {
        let cin = self.saved.pop().unwrap_or(self.channels);
        let skip = (cin != self.channels).then(|| Conv {
            name: skip.to_string(),
            cin,
            cout: self.channels,
            taps_t: 1,
            taps_s: 1,
            upsample: false,
            downsample: false,
            pad_after: false,
            bias: flags.bias,
            conv3d: flags.conv3d,
            cache: None,
            gain: flags.gain,
        });
        self.push(VideoOp::AddSaved { skip, cin });
    }

    pub fn with_past(&mut self) {
        let ch = self.channels;
        let cache = self.cache(1, ch);
        self.push(VideoOp::WithPast { ch, cache });
    }

    /// The graph built so far, for latents `[T, latent_channels, height, width]` as given
    /// to [`Builder::new`]; an unmatched `Save` is an error.
    pub fn finish(
        self,
        family: &'static str,
        output: RgbRange,
        upscale: usize,
    ) -> Result<VideoGraph> {
        if !self.saved.is_empty() {
            return Err(Error::Invalid(format!(
                "{family}: {} saved activations never added back",
                self.saved.len()
            )));
        }
        let first = self.steps.first();
        Ok(VideoGraph {
            family,
            latent_channels: first.map_or(self.channels, |s| s.channels),
            latent_height: first.map_or(self.height, |s| s.height),
            latent_width: first.map_or(self.width, |s| s.width),
            out_frames: self.frames,
            steps: self.steps,
            caches: self.caches,
            output,
            upscale,
        })
    }
}

/// The flags of a convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvFlags {
    pub upsample: bool,
    pub bias: bool,
    pub conv3d: bool,
    pub gain: f32,
}
