//! The TAEHV encoder (`taew2_1`, docs/taehv.md "The encoder") on the CPU, in f32: the op list
//! of [`taehv_encoder::graph`] run by the Wan-family decoders' executor ([`VideoDecoder`]), so
//! it shares their kernels and per-stream MemBlock memories. A stream encoded chunk by chunk
//! (any multiple of 4 video frames per chunk) gives the same bits as encoded at once.

use crate::checkpoint::video::{self as vc, DecoderKind, TAEHV_ENCODER_COUNTER};
use crate::checkpoint::{DType, Weights};
use crate::decoder::video_kernels::Act;
use crate::decoder::VideoDecoder;
use crate::error::{Error, Result};
use crate::model::taehv_encoder::{self, TaehvEncoderConfig};
use std::path::Path;

/// The TAEHV encoder on the CPU with its per-stream state.
#[derive(Debug)]
pub struct TaehvEncoder {
    exec: VideoDecoder,
    time_factor: usize,
    latent_channels: usize,
}

// Some methods serve only the integration tests and the `internals` API.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
impl TaehvEncoder {
    /// The encoder of `cfg` for video frames of `height x width` pixels (multiples of 8) with
    /// `weights` (names `encoder.{i}.*`); a missing or mis-shaped tensor is an error naming it.
    pub fn new(
        cfg: &TaehvEncoderConfig,
        height: usize,
        width: usize,
        weights: &Weights,
    ) -> Result<TaehvEncoder> {
        Ok(TaehvEncoder {
            exec: VideoDecoder::new(taehv_encoder::graph(cfg, height, width)?, weights)?,
            time_factor: cfg.time_factor(),
            latent_channels: cfg.latent_channels,
        })
    }

    /// The encoder tensors of a TAEHV safetensors checkpoint (`taew2_1.safetensors`).
    pub fn load_weights(path: impl AsRef<Path>, cfg: &TaehvEncoderConfig) -> Result<Weights> {
        let (ckpt, _) = vc::open_kind(path.as_ref(), "TAEHV encoder", &[DecoderKind::Taehv])?;
        vc::read(&ckpt, &taehv_encoder::graph(cfg, 8, 8)?.tensors(), str::to_string)
    }

    /// Deterministic random weights in the released names (`encoder.{i}.*`), each value
    /// rounded to `dtype`, scaled so activations stay O(1).
    pub fn random_weights(cfg: &TaehvEncoderConfig, seed: u64, dtype: DType) -> Result<Weights> {
        let graph = taehv_encoder::graph(cfg, 8, 8)?;
        Ok(vc::random(&graph, seed, TAEHV_ENCODER_COUNTER, dtype))
    }

    /// The op list this encoder executes.
    pub fn graph(&self) -> &crate::model::video_ops::VideoGraph {
        self.exec.graph()
    }

    /// Input video frame `(width, height)` in pixels.
    pub fn frame_size(&self) -> (usize, usize) {
        let g = self.exec.graph();
        (g.latent_width, g.latent_height)
    }

    /// Video frames per latent frame (4).
    pub fn frames_per_latent(&self) -> usize {
        self.time_factor
    }

    /// Forgets the stream: the next chunk starts a new one (zero MemBlock memories).
    pub fn reset(&mut self) {
        self.exec.reset()
    }

    /// Test hook (a planted bug): zeroes the MemBlock memories while the stream goes on.
    #[doc(hidden)]
    pub fn forget_context(&mut self) {
        self.exec.forget_context()
    }

    /// Encodes video frames `rgb [4n, H, W, 3]` (bytes, continuing the stream) into latents
    /// `[n, 16, H/8, W/8]`; `x = rgb / 255`, taehv.py's input range `[0, 1]`.
    pub fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        let x: Vec<f32> = rgb.iter().map(|&v| f32::from(v) / 255.0).collect();
        self.encode_f32(&x)
    }

    /// Encodes `x [4n, H, W, 3]` (values in about `[0, 1]`, channels last, continuing the
    /// stream) into raw latents `[n, C, H/8, W/8]`.
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
        let frame = w * h * 3;
        let chunk = frame * self.time_factor;
        if x.len() % chunk != 0 {
            return Err(Error::shape(
                "TAEHV encoder input",
                format!(
                    "a multiple of {} video frames of {w}x{h}x3 = {chunk} elements",
                    self.time_factor
                ),
                format!("{} elements", x.len()),
            ));
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "TAEHV encoder input: element {i} is {}, expected a finite value",
                x[i]
            )));
        }
        let frames = x.len() / frame;
        let n = frames / self.time_factor;
        let act = Act {
            data: x.to_vec(),
            frames,
            height: h,
            width: w,
            channels: 3,
        };
        let out = self.exec.run(act, n, &mut observe)?;
        let (c, lh, lw) = (self.latent_channels, out.height, out.width);
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
