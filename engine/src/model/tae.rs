//! The temporal-autoencoder decoder of `docs/tae.md` as data: a flat list of ops over one
//! activation `[T, H, W, Ch]` (channels last), built from a profile's decoder widths and
//! groups. The encoder of video-to-video (`../shared/TAE_SPEC.md`, "Encoder"; docs/tae.md)
//! is the same kind of list ([`TaeGraph::encoder`]) with two more ops, the strided
//! [`TaeOp::DownS`] and [`TaeOp::DownT`]. Every backend executes this list (the CPU decoder in `decoder::tae`; a device
//! lowers it to kernels), the checkpoint schema takes its tensors from it, and the plan
//! counts it. Nothing here executes anything.
//!
//! The list is a tiny stack machine: [`TaeOp::Save`] pushes the current activation (a
//! residual's input), [`TaeOp::AddSaved`] pops it and adds it (through a 1x1 convolution
//! when the widths differ) to the current activation. Every other op maps the current
//! activation to a new one.

use crate::error::{Error, Result};

use super::profile::DecoderConfig;

/// Temporal upsampling of the decoder: video frames per latent frame.
pub const TEMPORAL_UPSAMPLE: usize = 4;
/// Spatial upsampling of the decoder: pixels per latent pixel along each axis.
pub const SPATIAL_UPSAMPLE: usize = 8;
/// GroupNorm epsilon.
pub const GN_EPS: f32 = 1e-6;
/// Gain of `conv_out`'s random weights (see [`TaeGraph::tensors`]).
const OUT_GAIN: f32 = 0.6;
/// Largest attention head size.
pub const MAX_HEAD_DIM: usize = 128;

/// Which network a [`TaeGraph`] is: its tensors' prefix and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaeKind {
    /// Latents to video frames (`decoder.*`).
    Decoder,
    /// Video frames to latents (`encoder.*`), for video-to-video.
    Encoder,
}

impl TaeKind {
    /// The tensor prefix without its dot: `decoder` or `encoder`.
    pub fn prefix(self) -> &'static str {
        match self {
            TaeKind::Decoder => "decoder",
            TaeKind::Encoder => "encoder",
        }
    }
}

/// One op of the decoder or the encoder. `name` is the tensor prefix without `decoder.` or
/// `encoder.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaeOp {
    /// Pushes the current activation for a later [`TaeOp::AddSaved`].
    Save,
    /// GroupNorm per frame over `(H, W, ch / groups)` with affine `{name}.weight`,
    /// `{name}.bias` `[ch]`, then SiLU when `silu`.
    GroupNorm { name: String, ch: usize, silu: bool },
    /// 3x3 convolution, stride 1, zero padding 1, per frame: `{name}.weight [cout, cin, 3,
    /// 3]`, `{name}.bias [cout]`. With `upsample`, the input is first repeated 2x2 (nearest)
    /// in H and W (docs/tae.md's `UpS`, the upsampling fused into the convolution).
    Conv2d {
        name: String,
        cin: usize,
        cout: usize,
        upsample: bool,
    },
    /// Causal temporal convolution `y[t] = W0 x[t-2] + W1 x[t-1] + W2 x[t] + b` at every
    /// pixel: `{name}.weight [ch, ch, 3]`, `{name}.bias [ch]`. `cache` numbers its per-stream
    /// cache of the last two input frames (`0..TaeGraph::caches`).
    ConvT {
        name: String,
        ch: usize,
        cache: usize,
    },
    /// Every frame twice in time (frame `t` becomes `2t, 2t + 1`): docs/tae.md's `UpT` before
    /// its `ConvT`.
    RepeatFrames,
    /// Per-frame multi-head self-attention over the pixels of an already normalised input,
    /// with its output projection: `{name}.{q,k,v,out}.weight [ch, ch]` and `.bias [ch]`.
    Attention {
        name: String,
        ch: usize,
        heads: usize,
        head_dim: usize,
    },
    /// The encoder's `DownS`: one zero column on the right and one zero row at the bottom,
    /// then a 3x3 convolution of stride 2 without further padding (`{name}.weight [ch, ch,
    /// 3, 3]`, `{name}.bias [ch]`): `H x W` becomes `H/2 x W/2` (even sizes).
    DownS { name: String, ch: usize },
    /// The encoder's `DownT`: causal temporal convolution of stride 2,
    /// `y[t] = W0 x[2t-1] + W1 x[2t] + W2 x[2t+1] + b` (`{name}.weight [ch, ch, 3]`); `x[-1]`
    /// is `x[0]` at the stream start and the previous chunk's last frame afterwards, kept in
    /// cache `cache` (one frame). The input holds an even number of frames.
    DownT {
        name: String,
        ch: usize,
        cache: usize,
    },
    /// Pops the saved activation `s [.., cin]` and adds `skip(s)` to the current activation
    /// `[.., cout]`; `skip` is the 1x1 convolution `{name}.weight [cout, cin, 1, 1]`,
    /// `{name}.bias [cout]` when given, the identity otherwise (`cin == cout`).
    AddSaved {
        skip: Option<String>,
        cin: usize,
        cout: usize,
    },
}

/// What a tensor of the decoder is, for initialising it in a random checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorRole {
    /// A GroupNorm gain (around 1).
    NormWeight,
    /// A GroupNorm shift.
    NormBias,
    /// A weight whose output is `sum over fan_in inputs`, scaled by `gain` (1 keeps the
    /// input's scale).
    Weight { fan_in: usize, gain: f32 },
    /// A bias of a convolution or projection.
    Bias,
    /// The bias of the last convolution (sets the mean colour).
    OutBias,
}

/// One tensor an op reads: full name (with `decoder.`), shape and role.
#[derive(Debug, Clone, PartialEq)]
pub struct TaeTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// One op with the shape of its input, per latent frame of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaeStep {
    pub op: TaeOp,
    /// Frames of the input per latent frame (1, 2 or 4; video frames are 4).
    pub frames: usize,
    /// Input height and width.
    pub height: usize,
    pub width: usize,
    /// Input channels.
    pub channels: usize,
}

impl TaeStep {
    /// Output `(frames per latent frame, height, width, channels)`.
    pub fn output(&self) -> (usize, usize, usize, usize) {
        let (f, h, w, c) = (self.frames, self.height, self.width, self.channels);
        match &self.op {
            TaeOp::Save | TaeOp::GroupNorm { .. } | TaeOp::ConvT { .. } => (f, h, w, c),
            TaeOp::Attention { .. } => (f, h, w, c),
            TaeOp::Conv2d { cout, upsample, .. } => {
                let s = if *upsample { 2 } else { 1 };
                (f, h * s, w * s, *cout)
            }
            TaeOp::RepeatFrames => (2 * f, h, w, c),
            TaeOp::DownS { ch, .. } => (f, h / 2, w / 2, *ch),
            TaeOp::DownT { .. } => (f / 2, h, w, c),
            TaeOp::AddSaved { cout, .. } => (f, h, w, *cout),
        }
    }
}

/// The decoder (or the encoder) for one latent size: its ops in order with their shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct TaeGraph {
    /// Decoder or encoder.
    pub kind: TaeKind,
    /// `(c0, c1, c2, c3)`.
    pub widths: [usize; 4],
    pub groups: usize,
    pub latent_channels: usize,
    pub latent_height: usize,
    pub latent_width: usize,
    pub steps: Vec<TaeStep>,
    /// Number of [`TaeOp::ConvT`] and [`TaeOp::DownT`] ops, each with its own cache.
    pub caches: usize,
}

/// Builds the op list while tracking the activation's shape.
struct Builder {
    steps: Vec<TaeStep>,
    frames: usize,
    height: usize,
    width: usize,
    channels: usize,
    caches: usize,
    groups: usize,
    saved: Vec<usize>,
}

impl Builder {
    fn push(&mut self, op: TaeOp) {
        let step = TaeStep {
            op,
            frames: self.frames,
            height: self.height,
            width: self.width,
            channels: self.channels,
        };
        (self.frames, self.height, self.width, self.channels) = step.output();
        self.steps.push(step);
    }

    fn norm(&mut self, name: String, silu: bool) {
        let ch = self.channels;
        self.push(TaeOp::GroupNorm { name, ch, silu });
    }

    fn conv(&mut self, name: String, cout: usize, upsample: bool) {
        let cin = self.channels;
        self.push(TaeOp::Conv2d {
            name,
            cin,
            cout,
            upsample,
        });
    }

    fn conv_t(&mut self, name: String) {
        let (ch, cache) = (self.channels, self.caches);
        self.caches += 1;
        self.push(TaeOp::ConvT { name, ch, cache });
    }

    fn save(&mut self) {
        self.saved.push(self.channels);
        self.push(TaeOp::Save);
    }

    fn add_saved(&mut self, skip: Option<String>) {
        let cin = self.saved.pop().unwrap_or(self.channels);
        let cout = self.channels;
        self.push(TaeOp::AddSaved { skip, cin, cout });
    }

    /// `Res(cin, cout)` of docs/tae.md at prefix `p`.
    fn res(&mut self, p: &str, cout: usize) {
        let cin = self.channels;
        self.save();
        self.norm(format!("{p}.norm1"), true);
        self.conv(format!("{p}.conv1"), cout, false);
        self.conv_t(format!("{p}.conv1_t"));
        self.norm(format!("{p}.norm2"), true);
        self.conv(format!("{p}.conv2"), cout, false);
        self.conv_t(format!("{p}.conv2_t"));
        self.add_saved((cin != cout).then(|| format!("{p}.skip")));
    }

    fn down_t(&mut self, name: String) {
        let (ch, cache) = (self.channels, self.caches);
        self.caches += 1;
        self.push(TaeOp::DownT { name, ch, cache });
    }

    /// `Attn(ch)` of docs/tae.md at prefix `p`.
    fn attn(&mut self, p: &str, head_dim: usize) {
        let ch = self.channels;
        self.save();
        self.norm(format!("{p}.norm"), false);
        self.push(TaeOp::Attention {
            name: p.to_string(),
            ch,
            heads: ch / head_dim,
            head_dim,
        });
        self.add_saved(None);
    }
}

/// The checked widths and attention head size of `dec` for latents of `latent_channels`
/// channels and `height x width` pixels.
fn check_config(
    dec: &DecoderConfig,
    latent_channels: usize,
    height: usize,
    width: usize,
) -> Result<([usize; 4], usize)> {
        let widths: [usize; 4] = dec.widths.as_slice().try_into().map_err(|_| {
            Error::Invalid(format!(
                "decoder.widths: the TAE decoder needs 4 widths (c0, c1, c2, c3), found {:?}",
                dec.widths
            ))
        })?;
        if dec.groups == 0 || widths.iter().any(|&w| w == 0 || w % dec.groups != 0) {
            return Err(Error::Invalid(format!(
                "decoder.groups: must be positive and divide every width {widths:?}, found {}",
                dec.groups
            )));
        }
        if latent_channels == 0 || height == 0 || width == 0 {
            return Err(Error::Invalid(format!(
                "TAE decoder: latent channels, height and width must be positive, found {latent_channels}, {height}, {width}"
            )));
        }
        let c0 = widths[0];
        let head_dim = c0.min(MAX_HEAD_DIM);
        if c0 % head_dim != 0 {
            return Err(Error::Invalid(format!(
                "decoder.widths: c0 = {c0} must be a multiple of the attention head size {head_dim}"
            )));
        }
    Ok((widths, head_dim))
}

impl TaeGraph {
    /// The decoder of `dec` for latents `[T, latent_channels, height, width]`.
    pub fn new(
        dec: &DecoderConfig,
        latent_channels: usize,
        height: usize,
        width: usize,
    ) -> Result<TaeGraph> {
        let (widths, head_dim) = check_config(dec, latent_channels, height, width)?;
        let [c0, c1, c2, c3] = widths;
        let mut b = Builder {
            steps: Vec::new(),
            frames: 1,
            height,
            width,
            channels: latent_channels,
            caches: 0,
            groups: dec.groups,
            saved: Vec::new(),
        };
        b.conv("conv_in".into(), c0, false);
        b.conv_t("conv_in_t".into());
        b.res("mid.res.0", c0);
        b.attn("mid.attn", head_dim);
        b.res("mid.res.1", c0);
        // (stage, widths of its Res blocks, spatial up, temporal up)
        let stages: [(usize, [usize; 3], bool, bool); 4] = [
            (0, [c1, c1, c1], true, true),
            (1, [c1, c1, c1], true, true),
            (2, [c2, c2, c2], true, false),
            (3, [c3, c3, c3], false, false),
        ];
        for (i, outs, ups, upt) in stages {
            for (j, cout) in outs.into_iter().enumerate() {
                b.res(&format!("up.{i}.res.{j}"), cout);
            }
            if ups {
                b.conv(format!("up.{i}.ups"), b.channels, true);
            }
            if upt {
                b.push(TaeOp::RepeatFrames);
                b.conv_t(format!("up.{i}.upt"));
            }
        }
        b.norm("norm_out".into(), true);
        b.conv("conv_out".into(), 3, false);
        debug_assert_eq!(b.groups, dec.groups);
        debug_assert!(b.saved.is_empty());
        Ok(TaeGraph {
            widths,
            groups: dec.groups,
            latent_channels,
            latent_height: height,
            latent_width: width,
            steps: b.steps,
            caches: b.caches,
            kind: TaeKind::Decoder,
        })
    }

    /// The encoder of `dec` (`../shared/TAE_SPEC.md`, "Encoder") whose output is latents
    /// `[T, latent_channels, height, width]`: its input is video frames `[4T, 8 height,
    /// 8 width, 3]` already mapped to `rgb / 127.5 - 1`. The caches carry context across
    /// chunks of any multiple of 4 video frames.
    pub fn encoder(
        dec: &DecoderConfig,
        latent_channels: usize,
        height: usize,
        width: usize,
    ) -> Result<TaeGraph> {
        let (widths, head_dim) = check_config(dec, latent_channels, height, width)?;
        let [c0, c1, c2, c3] = widths;
        let mut b = Builder {
            steps: Vec::new(),
            frames: TEMPORAL_UPSAMPLE,
            height: height * SPATIAL_UPSAMPLE,
            width: width * SPATIAL_UPSAMPLE,
            channels: 3,
            caches: 0,
            groups: dec.groups,
            saved: Vec::new(),
        };
        b.conv("conv_in".into(), c3, false);
        // (stage, widths of its two Res blocks, spatial down, temporal down)
        let stages: [(usize, [usize; 2], bool, bool); 4] = [
            (0, [c3, c3], true, false),
            (1, [c2, c2], true, true),
            (2, [c1, c1], true, true),
            (3, [c0, c0], false, false),
        ];
        for (i, outs, downs, downt) in stages {
            for (j, cout) in outs.into_iter().enumerate() {
                b.res(&format!("down.{i}.res.{j}"), cout);
            }
            if downs {
                let ch = b.channels;
                b.push(TaeOp::DownS {
                    name: format!("down.{i}.downs"),
                    ch,
                });
            }
            if downt {
                b.down_t(format!("down.{i}.downt"));
            }
        }
        b.res("mid.res.0", c0);
        b.attn("mid.attn", head_dim);
        b.res("mid.res.1", c0);
        b.norm("norm_out".into(), true);
        b.conv("conv_out".into(), latent_channels, false);
        b.conv_t("conv_out_t".into());
        debug_assert!(b.saved.is_empty());
        debug_assert_eq!((b.frames, b.height, b.width), (1, height, width));
        Ok(TaeGraph {
            widths,
            groups: dec.groups,
            latent_channels,
            latent_height: height,
            latent_width: width,
            steps: b.steps,
            caches: b.caches,
            kind: TaeKind::Encoder,
        })
    }

    /// Output frame `(width, height)` in pixels.
    pub fn frame_size(&self) -> (usize, usize) {
        (
            self.latent_width * SPATIAL_UPSAMPLE,
            self.latent_height * SPATIAL_UPSAMPLE,
        )
    }

    /// Every tensor the decoder (or encoder) reads, in op order (the checkpoint schema's
    /// order), with the `decoder.` or `encoder.` prefix.
    pub fn tensors(&self) -> Vec<TaeTensor> {
        let mut out = Vec::new();
        let prefix = self.kind.prefix();
        let mut add = |name: String, shape: Vec<usize>, role: TensorRole| {
            out.push(TaeTensor {
                name: format!("{prefix}.{name}"),
                shape,
                role,
            })
        };
        // The decoder's last op is `conv_out` (RGB); the encoder ends in a temporal
        // convolution and keeps every gain at 1 (latents of unit scale).
        let last = match self.kind {
            TaeKind::Decoder => self.steps.len().saturating_sub(1),
            TaeKind::Encoder => usize::MAX,
        };
        for (i, step) in self.steps.iter().enumerate() {
            match &step.op {
                TaeOp::Save | TaeOp::RepeatFrames => {}
                TaeOp::GroupNorm { name, ch, .. } => {
                    add(format!("{name}.weight"), vec![*ch], TensorRole::NormWeight);
                    add(format!("{name}.bias"), vec![*ch], TensorRole::NormBias);
                }
                TaeOp::Conv2d {
                    name, cin, cout, ..
                } => {
                    let fan_in = cin * 9;
                    // The output convolution's smaller gain keeps the random colours off
                    // the clamp (SiLU's positive mean gives each channel an offset too).
                    let gain = if i == last { OUT_GAIN } else { 1.0 };
                    add(
                        format!("{name}.weight"),
                        vec![*cout, *cin, 3, 3],
                        TensorRole::Weight { fan_in, gain },
                    );
                    let role = if i == last {
                        TensorRole::OutBias
                    } else {
                        TensorRole::Bias
                    };
                    add(format!("{name}.bias"), vec![*cout], role);
                }
                TaeOp::DownS { name, ch } => {
                    add(
                        format!("{name}.weight"),
                        vec![*ch, *ch, 3, 3],
                        TensorRole::Weight {
                            fan_in: 9 * ch,
                            gain: 1.0,
                        },
                    );
                    add(format!("{name}.bias"), vec![*ch], TensorRole::Bias);
                }
                TaeOp::ConvT { name, ch, .. } | TaeOp::DownT { name, ch, .. } => {
                    add(
                        format!("{name}.weight"),
                        vec![*ch, *ch, 3],
                        TensorRole::Weight {
                            fan_in: 3 * ch,
                            gain: 1.0,
                        },
                    );
                    add(format!("{name}.bias"), vec![*ch], TensorRole::Bias);
                }
                TaeOp::Attention { name, ch, .. } => {
                    // Larger query and key weights give peaked attention maps, so the
                    // block does more than average the frame.
                    for (p, gain) in [("q", 1.5), ("k", 1.5), ("v", 1.0), ("out", 1.0)] {
                        add(
                            format!("{name}.{p}.weight"),
                            vec![*ch, *ch],
                            TensorRole::Weight { fan_in: *ch, gain },
                        );
                        add(format!("{name}.{p}.bias"), vec![*ch], TensorRole::Bias);
                    }
                }
                TaeOp::AddSaved {
                    skip: Some(name),
                    cin,
                    cout,
                } => {
                    add(
                        format!("{name}.weight"),
                        vec![*cout, *cin, 1, 1],
                        TensorRole::Weight {
                            fan_in: *cin,
                            gain: 1.0,
                        },
                    );
                    add(format!("{name}.bias"), vec![*cout], TensorRole::Bias);
                }
                TaeOp::AddSaved { skip: None, .. } => {}
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TaeGraph {
        let dec = DecoderConfig {
            widths: vec![64, 64, 32, 16],
            groups: 8,
        };
        TaeGraph::new(&dec, 8, 16, 16).unwrap()
    }

    #[test]
    fn shapes_follow_the_spec() {
        let g = tiny();
        let last = g.steps.last().unwrap();
        assert_eq!(last.output(), (4, 128, 128, 3));
        assert_eq!(g.frame_size(), (128, 128));
        // conv_in_t, 2 per Res (2 mid + 12 up), 2 UpT.
        assert_eq!(g.caches, 1 + 2 * 14 + 2);
        let names: Vec<String> = g.tensors().into_iter().map(|t| t.name).collect();
        for n in [
            "decoder.conv_in.weight",
            "decoder.conv_in_t.bias",
            "decoder.mid.res.1.conv2_t.weight",
            "decoder.mid.attn.out.bias",
            "decoder.up.0.ups.weight",
            "decoder.up.1.upt.weight",
            "decoder.up.2.res.0.skip.weight",
            "decoder.up.3.res.2.norm2.bias",
            "decoder.norm_out.weight",
            "decoder.conv_out.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing");
        }
        assert!(!names.iter().any(|x| x == "decoder.up.2.upt.weight"));
        assert!(!names.iter().any(|x| x == "decoder.up.0.res.0.skip.weight"));
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "names are unique");
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = |widths: Vec<usize>, groups| {
            TaeGraph::new(&DecoderConfig { widths, groups }, 8, 4, 4)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![64, 64, 32], 8).contains("4 widths"));
        assert!(bad(vec![64, 64, 32, 12], 8).contains("decoder.groups"));
        assert!(bad(vec![192, 64, 32, 16], 8).contains("head size"));
    }

    #[test]
    fn encoder_mirrors_the_decoder() {
        let dec = DecoderConfig {
            widths: vec![64, 64, 32, 16],
            groups: 8,
        };
        let g = TaeGraph::encoder(&dec, 8, 2, 3).unwrap();
        let first = &g.steps[0];
        assert_eq!(
            (first.frames, first.height, first.width, first.channels),
            (4, 16, 24, 3)
        );
        assert_eq!(g.steps.last().unwrap().output(), (1, 2, 3, 8));
        // 2 per Res (8 down + 2 mid), 2 DownT, conv_out_t.
        assert_eq!(g.caches, 2 * 10 + 2 + 1);
        let names: Vec<String> = g.tensors().into_iter().map(|t| t.name).collect();
        for n in [
            "encoder.conv_in.weight",
            "encoder.down.0.downs.weight",
            "encoder.down.1.res.0.skip.weight",
            "encoder.down.2.downt.bias",
            "encoder.down.3.res.1.conv2_t.weight",
            "encoder.mid.attn.q.weight",
            "encoder.norm_out.bias",
            "encoder.conv_out.weight",
            "encoder.conv_out_t.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing");
        }
        assert!(!names.iter().any(|x| x == "encoder.down.0.downt.weight"));
        assert!(!names.iter().any(|x| x == "encoder.down.3.downs.weight"));
        assert!(!names.iter().any(|x| x.starts_with("decoder.")));
        let shape = |n: &str| g.tensors().into_iter().find(|t| t.name == n).unwrap().shape;
        assert_eq!(shape("encoder.conv_out.weight"), vec![8, 64, 3, 3]);
        assert_eq!(shape("encoder.conv_out_t.weight"), vec![8, 8, 3]);
        assert_eq!(shape("encoder.down.1.downt.weight"), vec![32, 32, 3]);
    }
}
