//! The TAE decoder (docs/tae.md) on a device: the op list of [`crate::model::tae`] lowered to
//! the decoder kernels (`kernels/cuda/conv.cu`, and the window attention kernel for the
//! mid-block) over one allocation, and replayed as one captured graph per chunk size.
//!
//! | op list | launches |
//! |---|---|
//! | `GroupNorm` (+ SiLU) | `groupnorm_stats`, `groupnorm_finalize`, `groupnorm_apply` |
//! | `Conv2d` (nearest 2x fused) | `conv3x3_f16` (writing straight into the context buffer when a `ConvT` follows) |
//! | [`RepeatFrames`] + `ConvT` | `conv_t3_f16` with `upsample_t` |
//! | `ConvT` + `AddSaved` | the 1x1 `skip` (`conv1x1_f16`) if any, then `conv_t3_f16` with it as the fused residual |
//! | `Attention` + `AddSaved` | `conv1x1_f16` (QKV), `attn_window` over whole frames without q/k norm, `conv1x1_f16` (out, residual fused) |
//!
//! Every `ConvT` reads `[2 + T, H*W, ch]` from one shared context buffer: its producer
//! writes the chunk's frames after two context frames, which copies fill first from the
//! layer's cache (the previous chunk's last two input frames) or, at a stream's start, from
//! the first frame (docs/tae.md's replicate padding). After the launch the layer's last two
//! input frames are copied to its cache. Any op sequence without a lowering is an error.
//!
//! Latents come in as the host's `[n, C, H, W]` f32 (a popped chunk), are converted to
//! channels-last f16 on the host into pinned memory and copied in; the RGB result
//! `[4n, 8H, 8W, 3]` comes back in f16 through pinned memory and is mapped to bytes on the
//! host. The allocation is separate from the DiT's, on the
//! device's own streams, so on a GPU the decode of chunk `k` runs beside the DiT call the
//! stream prefetched.
//!
//! The encoder's op list ([`TaeGraph::encoder`], docs/tae.md "Encoder") lowers the same way,
//! with `DownS` on `conv3x3s2_f16` (`pad = 0`: one zero row and column after the frame) and
//! `DownT` on `conv_tstride_f16` (3 taps, stride 2) over a `[1 + T, H*W, ch]` context of the
//! cached frame (the first frame at a stream's start) and the chunk, its last input frame
//! copied to the cache after; its RGB input is padded to 8 channels (zero `conv_in`
//! weights), and its latents come back `[n, h, w, C]` and are transposed on the host.
//!
//! [`RepeatFrames`]: TaeOp::RepeatFrames

mod plan_launches;
mod layout;
mod lower;

use std::collections::HashMap;

use half::f16;

use self::layout::{pack_weights, pad8, plan_layout, Layout};
use self::lower::lower_list;
use crate::backend::cuda::device::{Device, DeviceBuffer, GraphId, PinnedBuffer, Queue};
use crate::backend::cuda::lower as launches;
use crate::backend::cuda::lower::Step;
use crate::checkpoint::Weights;
use crate::decoder::{to_bytes, Decoder};
use crate::error::{Error, Result};
use crate::model::tae::{TaeGraph, TaeKind, TEMPORAL_UPSAMPLE};

pub use self::plan_launches::launch_costs;
pub use self::layout::{device_memory, TaeMemory};

fn lowering_error(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("TAE decoder lowering: {what}"))
}

/// A lowered list with its graph, once captured, and the pinned host buffers of its input
/// latents and output RGB.
struct List {
    steps: Vec<Step>,
    graph: Option<GraphId>,
    output: usize,
    pinned_in: PinnedBuffer<u16>,
    pinned_out: PinnedBuffer<u16>,
}

/// The TAE decoder on device `D`, implementing [`Decoder`] for chunks of any size (longer
/// inputs are decoded in pieces of the size it was made for).
pub struct DeviceTae<D: Device> {
    dev: D,
    graph: TaeGraph,
    mem: DeviceBuffer<u8>,
    layout: Layout,
    max_frames: usize,
    /// By (latent frames, stream start).
    lists: HashMap<(usize, bool), List>,
    started: bool,
    use_graphs: bool,
}

impl<D: Device> DeviceTae<D> {
    /// The decoder of `graph` with the `decoder.*` tensors of `weights` (converted to f16),
    /// for chunks of up to `max_frames` latent frames, on `dev`. A missing or mis-shaped
    /// tensor is an error naming it.
    pub fn new(graph: TaeGraph, weights: &Weights, max_frames: usize, mut dev: D) -> Result<Self> {
        let packed = pack_weights(&graph, weights)?;
        let l = plan_layout(&graph, max_frames)?;
        let mem = dev.alloc::<u8>("TAE decoder (weights, activations, caches)", l.total)?;
        let mut bytes = vec![0u8; l.weight_bytes];
        for (name, v) in &packed {
            let off = l.weights[name];
            bytes[off..off + v.len() * 2].copy_from_slice(bytemuck::cast_slice(v));
        }
        if !bytes.is_empty() {
            dev.write(mem.slice(0, bytes.len())?, &bytes)?;
        }
        Ok(DeviceTae {
            dev,
            graph,
            mem,
            layout: l,
            max_frames,
            lists: HashMap::new(),
            started: false,
            use_graphs: true,
        })
    }

    /// Bytes of device memory the decoder holds ([`device_memory`]'s total).
    pub fn device_bytes(&self) -> usize {
        self.layout.total
    }

    /// Whether chunks run as captured graphs (default) or launch by launch.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Decodes `latents [n, C, H, W]` to the RGB values `[4n, 8H, 8W, 3]` before the
    /// mapping to bytes (f16 on the device, widened), carrying the temporal caches.
    pub fn decode_f32(&mut self, latents: &[f32]) -> Result<Vec<f32>> {
        let g = &self.graph;
        if g.kind != TaeKind::Decoder {
            return Err(Error::Invalid(
                "DeviceTae::decode_f32: this is the TAE encoder; use encode_f32".into(),
            ));
        }
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let fe = c * h * w;
        if latents.len() % fe != 0 {
            return Err(Error::shape(
                "TAE decoder latents",
                format!("a multiple of C*H*W = {fe} values"),
                latents.len(),
            ));
        }
        crate::decoder::check_latents("TAE decoder latents", latents, [c, h, w])?;
        let mut out = Vec::new();
        for piece in latents.chunks(self.max_frames * fe) {
            self.decode_piece(piece, piece.len() / fe, &mut out)?;
        }
        Ok(out)
    }

    /// The encoder (a [`TaeGraph::encoder`] op list): encodes video frames `x [4n, 8h, 8w, 3]`
    /// (channels last, `rgb / 127.5 - 1` as docs/tae.md maps bytes, continuing the stream)
    /// into latents `[n, C, h, w]`, carrying the causal caches; in pieces of the chunk size
    /// it was made for. A frame count that is not a multiple of 4 and a non-finite value are
    /// named errors.
    pub fn encode_f32(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let g = &self.graph;
        if g.kind != TaeKind::Encoder {
            return Err(Error::Invalid(
                "DeviceTae::encode_f32: this is the TAE decoder; use decode_f32".into(),
            ));
        }
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let (fw, fh) = g.frame_size();
        let group = TEMPORAL_UPSAMPLE * fw * fh * 3;
        if x.len() % group != 0 {
            return Err(Error::shape(
                "TAE encoder input",
                format!(
                    "a multiple of {TEMPORAL_UPSAMPLE} frames of {fw}x{fh}x3 = {group} values"
                ),
                format!("{} values", x.len()),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "TAE encoder input: element {i} is {}, expected a finite value",
                x[i]
            )));
        }
        let mut raw = Vec::new();
        for piece in x.chunks(self.max_frames * group) {
            let n = piece.len() / group;
            // [4n, H, W, 3] f32 to [4n, H, W, 8] f16 (zero channels 3..8).
            self.run_piece(n, n * h * w * c, &mut raw, |staged| {
                staged.fill(0);
                for (p, px) in piece.chunks_exact(3).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        staged[p * 8 + ch] = f16::from_f32(v).to_bits();
                    }
                }
            })?;
        }
        // [n, h, w, C] to [n, C, h, w].
        let plane = h * w;
        let mut z = vec![0.0; raw.len()];
        for (f, frame) in raw.chunks_exact(plane * c).enumerate() {
            for p in 0..plane {
                for ch in 0..c {
                    z[(f * c + ch) * plane + p] = frame[p * c + ch];
                }
            }
        }
        Ok(z)
    }

    /// [`encode_f32`](Self::encode_f32) of RGB8 frames (`x = rgb / 127.5 - 1`).
    pub fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        let x: Vec<f32> = rgb.iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
        self.encode_f32(&x)
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.started = false;
    }

    fn decode_piece(&mut self, latents: &[f32], n: usize, out: &mut Vec<f32>) -> Result<()> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let (fw, fh) = g.frame_size();
        let out_len = n * TEMPORAL_UPSAMPLE * fw * fh * 3;
        // [n, C, H, W] f32 to [n, H, W, C] f16, straight into pinned memory.
        self.run_piece(n, out_len, out, |staged| {
            for f in 0..n {
                for p in 0..h * w {
                    for ch in 0..c {
                        let v = latents[(f * c + ch) * h * w + p];
                        staged[(f * h * w + p) * c + ch] = f16::from_f32(v).to_bits();
                    }
                }
            }
        })
    }

    /// Runs the list of a chunk of `n` latent frames (lowered and captured at its first
    /// use) on the input `stage` writes into the pinned staging buffer (the first op's
    /// input, f16 bits), appending its `out_len` output values (widened) to `out`.
    fn run_piece(
        &mut self,
        n: usize,
        out_len: usize,
        out: &mut Vec<f32>,
        stage: impl FnOnce(&mut [u16]),
    ) -> Result<()> {
        let in_len = self.graph.steps.first().map_or(0, |s| {
            s.frames * n * s.height * s.width * pad8(s.channels)
        });
        let first = !self.started;
        let key = (n, first);
        if !self.lists.contains_key(&key) {
            let (steps, output, _) =
                lower_list(&self.graph, &self.layout, self.mem.addr(), n, first)?;
            let steps = launches::resolve(&mut self.dev, steps)?;
            let pinned_in = self.dev.alloc_pinned("TAE input", in_len)?;
            let pinned_out = self.dev.alloc_pinned("TAE output", out_len)?;
            self.lists.insert(
                key,
                List {
                    steps,
                    graph: None,
                    output,
                    pinned_in,
                    pinned_out,
                },
            );
        }
        let list = self.lists.get_mut(&key).expect("inserted above");
        stage(self.dev.pinned(list.pinned_in)?);
        let input = self
            .mem
            .slice(self.layout.input, in_len * 2)?
            .cast::<u16>()?;
        self.dev
            .write_async(Queue::Compute, input, list.pinned_in)?;
        let (steps, graph) = (&list.steps, &mut list.graph);
        launches::run_captured(&mut self.dev, self.mem, steps, graph, self.use_graphs)?;
        let output = self.mem.slice(list.output, out_len * 2)?.cast::<u16>()?;
        self.dev
            .read_async(Queue::Compute, output, list.pinned_out)?;
        let values = self.dev.pinned(list.pinned_out)?;
        out.extend(values.iter().map(|&b| f16::from_bits(b).to_f32()));
        self.started = true;
        Ok(())
    }
}

impl<D: Device + Send> Decoder for DeviceTae<D> {
    fn frame_size(&self) -> (usize, usize) {
        self.graph.frame_size()
    }

    fn frames_per_latent(&self) -> usize {
        TEMPORAL_UPSAMPLE
    }

    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        to_bytes(&self.decode_f32(latents)?, out);
        Ok(())
    }

    fn reset(&mut self) {
        DeviceTae::reset(self)
    }
}

impl<D: Device + Send> crate::decoder::RgbEncoder for DeviceTae<D> {
    fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        DeviceTae::encode_rgb(self, rgb)
    }

    fn name(&self) -> &'static str {
        "TAE on the device"
    }
}
