//! The Wan 2.1 VAE encoder (docs/wan_vae.md "The encoder") on the CPU, in f32: the op list
//! of [`wan_vae_encoder::graph`] run by the Wan-family decoders' executor
//! ([`VideoDecoder`]), with its causal caches per stream. The first latent frame comes from
//! the stream's first video frame alone and every later one from 4 frames, so a stream's
//! first chunk has `1 + 4k` frames and every later chunk `4k`; any such chunking gives the
//! bits of encoding the whole video at once.

use std::path::Path;

use crate::checkpoint::video::{self as vc, DecoderKind, WAN_VAE_ENCODER_COUNTER};
use crate::checkpoint::{DType, Weights};
use crate::decoder::video_kernels::Act;
use crate::decoder::VideoDecoder;
use crate::error::{Error, Result};
use crate::model::video_ops::{VideoGraph, MAX_ACTIVATION_ELEMS};
use crate::model::wan_vae::WanVaeConfig;
use crate::model::wan_vae_encoder::{self, TIME_FACTOR};

/// The Wan VAE encoder on the CPU with its per-stream state.
#[derive(Debug)]
pub struct WanVaeEncoder {
    exec: VideoDecoder,
    z_dim: usize,
}

/// Whether a tensor of a `torch.save` Wan VAE archive is read for the encoder: its own, and
/// the decoder tensor that tells the file's kind.
fn encoder_tensor(name: &str) -> bool {
    name.starts_with("encoder.") || name.starts_with("conv1.") || name == "decoder.conv1.weight"
}

/// Video frames that make the next `latents` latent frames (`start`: at a stream's start).
fn frames_for(start: bool, latents: usize) -> usize {
    let less = if start { TIME_FACTOR - 1 } else { 0 };
    (TIME_FACTOR * latents).saturating_sub(less)
}

/// Of `frames` waiting, the most that make whole latent frames: `1 + 4k` at a stream's
/// start, `4k` after.
fn frames_ready(start: bool, frames: usize) -> usize {
    if start && frames > 0 {
        1 + (frames - 1) / TIME_FACTOR * TIME_FACTOR
    } else {
        frames / TIME_FACTOR * TIME_FACTOR
    }
}

/// The video frames in `len` input elements of `(w, h)` frames, or the error naming the
/// rule: whole frames, `1 + 4k` of them at a stream's start, `4k` after.
fn check_chunk(start: bool, (w, h): (usize, usize), len: usize) -> Result<usize> {
    let frame = w * h * 3;
    let frames = len / frame;
    if len % frame != 0 || frames_ready(start, frames) != frames {
        let rule = if start {
            "1 + 4k video frames (the stream's first chunk: its first frame is encoded alone)"
        } else {
            "4k video frames"
        };
        return Err(Error::shape(
            "Wan VAE encoder input",
            format!("{rule} of {w}x{h}x3 = {frame} elements each"),
            format!("{len} elements"),
        ));
    }
    Ok(frames)
}

/// RGB8 to Wan's input range: `(v / 255 - 0.5) / 0.5`.
fn rgb_to_signed(rgb: &[u8]) -> Vec<f32> {
    rgb.iter()
        .map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5)
        .collect()
}

// Some methods serve only the integration tests and the `internals` API.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
impl WanVaeEncoder {
    /// The encoder of `cfg` for video frames of `height x width` pixels (multiples of 8) with
    /// `weights` in the original names; a missing or mis-shaped tensor is an error naming it.
    pub fn new(
        cfg: &WanVaeConfig,
        height: usize,
        width: usize,
        weights: &Weights,
    ) -> Result<WanVaeEncoder> {
        Ok(WanVaeEncoder {
            exec: VideoDecoder::new(wan_vae_encoder::graph(cfg, height, width)?, weights)?,
            z_dim: cfg.z_dim,
        })
    }

    /// The encoder tensors (`encoder.*`, `conv1.*`) of a Wan VAE checkpoint, the same file
    /// as the decoder's: `Wan2.1_VAE.pth`, a safetensors file in the original names
    /// (ComfyUI's) or in diffusers' (`vae/diffusion_pytorch_model.safetensors`); returned
    /// under the original names. Another kind of file is an error naming the tensor that
    /// shows its kind.
    pub fn load_weights(path: impl AsRef<Path>, cfg: &WanVaeConfig) -> Result<Weights> {
        let path = path.as_ref();
        let accepted = [DecoderKind::WanVae, DecoderKind::WanVaeDiffusers];
        let (ckpt, kind) = vc::open_kind_keeping(path, "Wan VAE", &accepted, &encoder_tensor)?;
        let specs = wan_vae_encoder::graph(cfg, 8, 8)?.tensors();
        match kind {
            DecoderKind::WanVaeDiffusers => {
                vc::read(&ckpt, &specs, wan_vae_encoder::diffusers_name)
            }
            _ => vc::read(&ckpt, &specs, str::to_string),
        }
    }

    /// Deterministic random weights in the original names, each value rounded to `dtype`,
    /// scaled so activations stay O(1).
    pub fn random_weights(cfg: &WanVaeConfig, seed: u64, dtype: DType) -> Result<Weights> {
        let graph = wan_vae_encoder::graph(cfg, 8, 8)?;
        Ok(vc::random(&graph, seed, WAN_VAE_ENCODER_COUNTER, dtype))
    }

    /// The op list this encoder executes.
    pub fn graph(&self) -> &VideoGraph {
        self.exec.graph()
    }

    /// Input video frame `(width, height)` in pixels.
    pub fn frame_size(&self) -> (usize, usize) {
        let g = self.exec.graph();
        (g.latent_width, g.latent_height)
    }

    /// Video frames per latent frame after the first (4).
    pub fn frames_per_latent(&self) -> usize {
        TIME_FACTOR
    }

    /// Whether the next chunk starts a stream (its first frame makes a latent alone).
    pub fn at_stream_start(&self) -> bool {
        self.exec.at_stream_start()
    }

    /// Video frames that make the next `latents` latent frames: `4 latents - 3` at the
    /// stream start, `4 latents` after.
    pub fn frames_for(&self, latents: usize) -> usize {
        frames_for(self.at_stream_start(), latents)
    }

    /// Of `frames` video frames waiting, how many the encoder takes now: the most that make
    /// whole latent frames (`1 + 4k` at the stream start, `4k` after).
    pub fn frames_ready(&self, frames: usize) -> usize {
        frames_ready(self.at_stream_start(), frames)
    }

    /// Forgets the stream: the next chunk starts a new one (`clear_cache`).
    pub fn reset(&mut self) {
        self.exec.reset()
    }

    /// Test hook (a planted bug): zeroes the causal caches while the stream goes on.
    #[doc(hidden)]
    pub fn forget_context(&mut self) {
        self.exec.forget_context()
    }

    /// Encodes video frames `rgb [T, H, W, 3]` (bytes, continuing the stream) into latents
    /// `[n, 16, H/8, W/8]`: `x = (rgb / 255 - 0.5) / 0.5`, Wan's input range `[-1, 1]`.
    pub fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        self.encode_f32(&rgb_to_signed(rgb))
    }

    /// Encodes `x [T, H, W, 3]` (values in about `[-1, 1]`, channels last, continuing the
    /// stream; `T = 1 + 4k` for the stream's first chunk, `4k` after) into the DiT's
    /// normalised latents `[n, z_dim, H/8, W/8]`.
    pub fn encode_f32(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.encode_observed(x, |_, _| {})
    }

    /// [`encode_f32`](Self::encode_f32), handing `observe` the index of every op of the
    /// graph with its output `[T, H, W, Ch]`.
    pub fn encode_observed(
        &mut self,
        x: &[f32],
        mut observe: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let (w, h) = self.frame_size();
        let frames = check_chunk(self.at_stream_start(), (w, h), x.len())?;
        if x.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "Wan VAE encoder input: element {i} is {}, expected a finite value",
                x[i]
            )));
        }
        let n = frames.div_ceil(TIME_FACTOR);
        let g = self.exec.graph();
        let (largest, at) = g.largest_activation(n, self.at_stream_start());
        if largest > MAX_ACTIVATION_ELEMS {
            return Err(Error::shape(
                format!("Wan VAE encoder chunk of {frames} video frames"),
                format!("at most {MAX_ACTIVATION_ELEMS} elements per activation (encode fewer frames per call)"),
                format!("{largest} elements at op {at}"),
            ));
        }
        let act = Act {
            data: x.to_vec(),
            frames,
            height: h,
            width: w,
            channels: 3,
        };
        let out = self.exec.run(act, n, &mut observe)?;
        let (c, lh, lw) = (self.z_dim, out.height, out.width);
        debug_assert_eq!((out.frames, out.channels), (n, c));
        // [n, h, w, C] -> [n, C, h, w]
        let mut z = vec![0.0; out.data.len()];
        for f in 0..n {
            for p in 0..lh * lw {
                for ch in 0..c {
                    z[(f * c + ch) * lh * lw + p] = out.data[(f * lh * lw + p) * c + ch];
                }
            }
        }
        Ok(z)
    }
}
