//! A Wan-family decoder's op list ([`VideoGraph`]: TAEHV, docs/taehv.md "On the device") on
//! a device: lowered to launches of the convolution kernels (`kernels/cuda/conv.cu`) and the
//! small layout kernels of `kernels/cuda/video.cu` over one allocation, replayed as one
//! captured graph per (chunk size, stream start), with the per-stream caches kept on the
//! device between chunks.
//!
//! | op | launches |
//! |---|---|
//! | `SoftClamp`, `Relu` | `video_map_f16` (in place unless a `Save` holds the input) |
//! | `Conv` 3x3 (nearest 2x fused) | `conv3x3_f16` (`_n128` when `Cout % 128 == 0`) |
//! | `Conv` 1x1 (2D or 1x1x1) | `conv1x1_f16` |
//! | causal `Conv` 3x3x3 | copies of its 2 cached frames (zeros at a stream's start) and the chunk into a context buffer, `conv3d_f16`, a copy of the buffer's last 2 frames to the cache |
//! | `Conv` + `AddSaved` | the convolution with the saved activation (through `conv1x1_f16` when the add has a skip) as its fused residual |
//! | `WithPast` | `video_with_past_f16` (past: the cache, or null = zeros at a stream's start), then a copy of the last input frame to the cache |
//! | `TemporalUp`, 1x1 | `conv1x1_f16` to `stride * C` channels, then `video_shuffle_f16` (none for stride 1) |
//! | `TemporalUp`, causal 3x1x1 | the context buffer as above, `conv_t3_f16`, `video_shuffle_f16`; with `keep_first` at a stream's start the first frame is copied to the output and bypasses both |
//! | `RmsNorm` (+ SiLU) | `rms_norm_channels_f16` (in place unless a `Save` holds the input) |
//! | `Denormalize` (first op) | on the host, in f32, as the latents are staged |
//! | `Attention` + `AddSaved` (one head) | per frame: `conv1x1_f16` (q, k), `gemm_bias_f16` (`V^T = Wv x^T`), `gemm_bias_f32` (`S = q k^T`), `softmax_rows_f16`, `gemm_bias_f16` (`P V`), `conv1x1_f16` (proj with the value bias folded in, the block input as residual) |
//! | `Conv` 3x3 stride 2 (the encoders) | `conv3x3s2_f16`: padding 1 (TAEHV), or 0 for a zero row and column after the frame only (the Wan VAE's `pad_after`) |
//! | `TemporalPool` (TAEHV's TPool) | `conv_tstride_f16` with `taps = stride`: a group's frames read side by side as one GEMM row |
//! | `TemporalDown` (the Wan VAE encoder) | at a stream's start a copy of frame 0 to the output; `conv_tstride_f16` (3 taps, stride 2) over the chunk, after the start over a context buffer of the cached frame and the chunk; a copy of the chunk's last frame to the cache |
//! | `Conv` + `Normalize` (the Wan VAE encoder's `conv1`) | the convolution alone: the normalisation is folded into its packed weight and bias (`W / std`, `(b - mean) / std`, the mean's channels only) |
//! | `DropFirst` | an offset into the activation at a stream's start: no launch |
//! | `Save` | nothing: the activation's buffer is held until its `AddSaved` |
//!
//! An op sequence without a lowering (an `AddSaved` that follows no convolution, attention
//! with more heads) is an error naming the op.
//!
//! Latents come in as the host's `[n, C, H, W]` f32, are converted on the host to
//! channels-last f16 with the channels zero-padded to a multiple of 8 (the convolution
//! kernels read 16-byte pixel rows; weights, and the outputs of every convolution but the
//! last, are padded to match)
//! into pinned memory and copied in; the RGB result comes back in f16 through pinned memory.
//! The allocation and queues are the decoder's own, so on a GPU the decode can run beside
//! the DiT's calls.

mod encoder;
mod layout;
mod lower;
mod vae;

use std::collections::HashMap;

use half::f16;

use self::layout::{input_frames, pack_weights, pad8, plan_layout, Layout};
use self::lower::lower_list;
use crate::backend::cuda::device::{Device, DeviceBuffer, GraphId, PinnedBuffer, Queue};
use crate::backend::cuda::lower as launches;
use crate::backend::cuda::lower::Step;
use crate::checkpoint::Weights;
use crate::decoder::Decoder;
use crate::error::{fmt_shape, Error, Result};
use crate::model::video_ops::{Frames, VideoGraph, VideoOp};
use crate::tensor::Tensor;

fn lowering_error(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("video decoder lowering: {what}"))
}

/// A lowered list with its graph, once captured, and the pinned host buffers of its input
/// latents and output RGB.
struct List {
    steps: Vec<Step>,
    graph: Option<GraphId>,
    output: usize,
    out_len: usize,
    pinned_in: PinnedBuffer<u16>,
    pinned_out: PinnedBuffer<u16>,
}

/// A Wan-family decoder on device `D`, implementing [`Decoder`] for chunks of any size
/// (longer inputs are decoded in pieces of the size it was made for).
pub struct DeviceVideo<D: Device> {
    dev: D,
    graph: VideoGraph,
    mem: DeviceBuffer<u8>,
    layout: Layout,
    max_frames: usize,
    /// By (latent frames, stream start).
    lists: HashMap<(usize, bool), List>,
    started: bool,
    use_graphs: bool,
}

impl<D: Device> DeviceVideo<D> {
    /// The decoder of `graph` with its convolution tensors from `weights` (converted to
    /// f16), for chunks of up to `max_frames` latent frames, on `dev`. An op without a
    /// device lowering, or a missing or mis-shaped tensor, is an error naming it.
    pub fn new(graph: VideoGraph, weights: &Weights, max_frames: usize, mut dev: D) -> Result<Self> {
        let layout = plan_layout(&graph, max_frames)?;
        let packed = pack_weights(&graph, weights)?;
        let what = format!("{} (weights, activations, caches)", graph.family);
        let mem = dev.alloc::<u8>(&what, layout.total)?;
        let mut bytes = vec![0u8; layout.weight_bytes];
        for (name, v) in &packed {
            let off = layout.weights[name];
            bytes[off..off + v.len() * 2].copy_from_slice(bytemuck::cast_slice(v));
        }
        if !bytes.is_empty() {
            dev.write(mem.slice(0, bytes.len())?, &bytes)?;
        }
        if layout.zero_bytes > 0 {
            dev.memset(mem.slice(layout.zeros, layout.zero_bytes)?, 0)?;
        }
        let mut me = DeviceVideo {
            dev,
            graph,
            mem,
            layout,
            max_frames,
            lists: HashMap::new(),
            started: false,
            use_graphs: true,
        };
        me.forget_context()?;
        Ok(me)
    }

    /// Whether chunks run as captured graphs (default) or launch by launch.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.started = false;
    }

    /// Whether the next chunk starts a stream.
    pub fn at_stream_start(&self) -> bool {
        !self.started
    }

    /// Zeroes the caches on the device while the stream goes on (the first-chunk rules do
    /// not apply again): what a decoder that lost its caches between chunks would compute.
    /// Tests use it to show that the chunked comparison can fail.
    pub fn forget_context(&mut self) -> Result<()> {
        let l = &self.layout;
        if l.cache_bytes > 0 {
            let caches = l.caches.first().copied().unwrap_or(0);
            self.dev.memset(self.mem.slice(caches, l.cache_bytes)?, 0)?;
        }
        Ok(())
    }

    /// Decodes `latents [n, C, H, W]`, checking its shape.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn decode_tensor(&mut self, latents: &Tensor) -> Result<Vec<f32>> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        match latents.shape[..] {
            [_, cc, hh, ww] if (cc, hh, ww) == (c, h, w) => self.decode_f32(&latents.data),
            _ => Err(Error::shape(
                format!("{} latents", g.family),
                format!("[n, {c}, {h}, {w}]"),
                fmt_shape(&latents.shape),
            )),
        }
    }

    /// Decodes `latents [n, C, H, W]` (continuing the stream) into the decoder's output
    /// before the byte mapping, `[frames, 8H, 8W, 3]` channels last (f16 on the device,
    /// widened), carrying the caches.
    pub fn decode_f32(&mut self, latents: &[f32]) -> Result<Vec<f32>> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let fe = c * h * w;
        let what = format!("{} latents", g.family);
        if latents.len() % fe != 0 {
            return Err(Error::shape(
                what,
                format!("a multiple of C*H*W = {fe} elements"),
                format!("{} elements", latents.len()),
            ));
        }
        crate::decoder::check_latents(&what, latents, [c, h, w])?;
        let mut out = Vec::new();
        for piece in latents.chunks(self.max_frames * fe) {
            self.decode_piece(piece, piece.len() / fe, &mut out)?;
        }
        Ok(out)
    }

    fn decode_piece(&mut self, latents: &[f32], n: usize, out: &mut Vec<f32>) -> Result<()> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let cp = pad8(c);
        // [n, C, H, W] f32 to [n, H, W, pad8(C)] f16, straight into pinned memory; a
        // leading de-normalisation (the Wan VAE's) is applied here, in f32.
        let denorm = match g.steps.first().map(|s| &s.op) {
            Some(VideoOp::Denormalize { mean, std }) => Some((mean.clone(), std.clone())),
            _ => None,
        };
        self.run_piece(n, out, |staged| {
            for f in 0..n {
                for p in 0..h * w {
                    for ch in 0..c {
                        let mut v = latents[(f * c + ch) * h * w + p];
                        if let Some((mean, std)) = &denorm {
                            v = v * std[ch] + mean[ch];
                        }
                        staged[(f * h * w + p) * cp + ch] = f16::from_f32(v).to_bits();
                    }
                }
            }
        })
    }

    /// Encoder graphs (TAEHV's, the Wan VAE's): encodes `x [T, H, W, C]` (channels last,
    /// continuing the stream) into latents `[n, C', H', W']`, in pieces of the chunk size
    /// the encoder was made for. `T` must make whole latent frames: `k n` input frames for
    /// `n` latent frames (`k` per latent frame), less the input op's `first_less` when the
    /// chunk starts a stream (the Wan VAE's first latent frame is one video frame), and
    /// every value finite (named errors otherwise).
    pub fn encode_f32(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let f0 = g.steps.first().map_or(Frames::LATENT, |s| s.frames);
        let k = f0.per_latent;
        let (_, lh, lw, lc) = g.steps.last().map_or((g.out_frames, 0, 0, 0), |s| s.output());
        let frame = h * w * c;
        let what = format!("{} input", g.family);
        let less = |first: bool| if first { f0.first_less } else { 0 };
        let total = x.len() / frame.max(1);
        let whole = |t: usize, first: bool| t == 0 || (t + less(first)) % k == 0;
        if x.len() % frame.max(1) != 0 || !whole(total, !self.started) {
            let rule = if less(!self.started) > 0 {
                let lone = k - less(true);
                format!(
                    "{lone} + {k}k video frames (the stream's first chunk: its first latent \
                     frame is {lone} frame)"
                )
            } else {
                format!("{k}k video frames (a multiple of {k} frames)")
            };
            return Err(Error::shape(
                what,
                format!("{rule} of {w}x{h}x{c} = {frame} elements"),
                format!("{} elements", x.len()),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "{what}: element {i} is {}, expected a finite value",
                x[i]
            )));
        }
        let cp = pad8(c);
        let mut raw = Vec::new();
        let mut rest = x;
        while !rest.is_empty() {
            let first = !self.started;
            // The most frames one list of `max_frames` latent frames takes; every piece
            // but the last is that long, so each stays whole.
            let take = f0.count(self.max_frames, first).min(rest.len() / frame);
            let (piece, after) = rest.split_at(take * frame);
            rest = after;
            let n = (take + less(first)) / k;
            // [T, H, W, C] f32 to [T, H, W, pad8(C)] f16 in pinned memory.
            self.run_piece(n, &mut raw, |staged| {
                for (p, px) in piece.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        staged[p * cp + ch] = f16::from_f32(v).to_bits();
                    }
                }
            })?;
        }
        // [n, h, w, C'] channels last to [n, C', h, w].
        let plane = lh * lw;
        let mut z = vec![0.0; raw.len()];
        if plane * lc > 0 {
            for (f, frame) in raw.chunks_exact(plane * lc).enumerate() {
                for p in 0..plane {
                    for ch in 0..lc {
                        z[(f * lc + ch) * plane + p] = frame[p * lc + ch];
                    }
                }
            }
        }
        Ok(z)
    }

    /// Runs the list of a chunk of `n` latent frames (lowered and captured at its first
    /// use) on the input `stage` writes into the pinned staging buffer (zeroed first:
    /// `[input frames, H, W, pad8(C)]` f16 bits), appending the last op's output (widened
    /// to f32) to `out`.
    fn run_piece(
        &mut self,
        n: usize,
        out: &mut Vec<f32>,
        stage: impl FnOnce(&mut [u16]),
    ) -> Result<()> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let cp = pad8(c);
        let first = !self.started;
        let key = (n, first);
        let fin = input_frames(g, n);
        if !self.lists.contains_key(&key) {
            let (steps, output, _) = lower_list(g, &self.layout, self.mem.addr(), n, first)?;
            let steps = launches::resolve(&mut self.dev, steps)?;
            // The last op's output: `[frames, 8H, 8W, 3]` for a whole decoder.
            let out_len = g.steps.last().map_or(0, |s| {
                let (f, ho, wo, co) = s.output();
                f.count(n, first) * ho * wo * co
            });
            let pinned_in = self.dev.alloc_pinned("video decoder input", fin * h * w * cp)?;
            let pinned_out = self.dev.alloc_pinned("video decoder output", out_len.max(1))?;
            let list = List {
                steps,
                graph: None,
                output,
                out_len,
                pinned_in,
                pinned_out,
            };
            self.lists.insert(key, list);
        }
        let list = self.lists.get_mut(&key).expect("inserted above");
        let staged = self.dev.pinned(list.pinned_in)?;
        staged.fill(0);
        stage(staged);
        let input = self
            .mem
            .slice(self.layout.input, fin * h * w * cp * 2)?
            .cast::<u16>()?;
        self.dev.write_async(Queue::Compute, input, list.pinned_in)?;
        let (steps, graph) = (&list.steps, &mut list.graph);
        launches::run_captured(&mut self.dev, self.mem, steps, graph, self.use_graphs)?;
        if list.out_len > 0 {
            let output = self
                .mem
                .slice(list.output, list.out_len * 2)?
                .cast::<u16>()?;
            self.dev
                .read_async(Queue::Compute, output, list.pinned_out)?;
            let rgb = self.dev.pinned(list.pinned_out)?;
            out.extend(rgb.iter().map(|&b| f16::from_bits(b).to_f32()));
        }
        self.started = true;
        Ok(())
    }
}

impl<D: Device + Send> Decoder for DeviceVideo<D> {
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
        DeviceVideo::reset(self)
    }
}
