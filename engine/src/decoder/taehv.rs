//! The TAEHV decoder (`taew2_1`, `docs/taehv.md`) on the CPU: a [`VideoDecoder`] over
//! [`taehv::graph`], with its constructors from a safetensors checkpoint in the released
//! names and from deterministic random weights.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use crate::decoder::{Decoder, VideoDecoder};
use crate::error::Result;
use crate::checkpoint::{DType, Weights};
use crate::model::taehv::{self, TaehvConfig};
use crate::checkpoint::video::{self as vc, DecoderKind, TAEHV_COUNTER};

/// TAEHV on the CPU; derefs to the [`VideoDecoder`] it runs (`decode_f32`, `graph`, ...).
#[derive(Debug)]
pub struct TaehvDecoder(VideoDecoder);

impl TaehvDecoder {
    /// The decoder of `cfg` for latents `[n, C, height, width]` with `weights` (names
    /// `decoder.{i}.*`); a missing or mis-shaped tensor is an error naming it.
    pub fn new(
        cfg: &TaehvConfig,
        height: usize,
        width: usize,
        weights: &Weights,
    ) -> Result<TaehvDecoder> {
        Ok(TaehvDecoder(VideoDecoder::new(
            taehv::graph(cfg, height, width)?,
            weights,
        )?))
    }

    /// The decoder tensors of a TAEHV safetensors checkpoint (`taew2_1.safetensors`; its
    /// `encoder.*` tensors are ignored). A checkpoint of another kind is an error naming
    /// the tensor that shows its kind.
    pub fn load_weights(path: impl AsRef<Path>, cfg: &TaehvConfig) -> Result<Weights> {
        let path = path.as_ref();
        let (ckpt, _) = vc::open_kind(path, "TAEHV decoder", &[DecoderKind::Taehv])?;
        vc::read(&ckpt, &taehv::graph(cfg, 1, 1)?.tensors(), str::to_string)
    }

    /// [`new`](Self::new) with the weights of the checkpoint at `path`.
    pub fn load(
        path: impl AsRef<Path>,
        cfg: &TaehvConfig,
        height: usize,
        width: usize,
    ) -> Result<TaehvDecoder> {
        Self::new(cfg, height, width, &Self::load_weights(path, cfg)?)
    }

    /// Deterministic random weights in the released names, each value rounded to `dtype`,
    /// scaled so activations stay O(1) and the colours spread over the byte range.
    pub fn random_weights(cfg: &TaehvConfig, seed: u64, dtype: DType) -> Result<Weights> {
        let graph = taehv::graph(cfg, 1, 1)?;
        Ok(vc::random(&graph, seed, TAEHV_COUNTER, dtype))
    }

    /// Writes [`random_weights`](Self::random_weights) as a safetensors checkpoint.
    pub fn write_random(path: &Path, cfg: &TaehvConfig, seed: u64, dtype: DType) -> Result<()> {
        let graph = taehv::graph(cfg, 1, 1)?;
        let weights = vc::random(&graph, seed, TAEHV_COUNTER, dtype);
        vc::write(path, &graph, &weights, dtype, str::to_string)
    }
}

impl Deref for TaehvDecoder {
    type Target = VideoDecoder;
    fn deref(&self) -> &VideoDecoder {
        &self.0
    }
}

impl DerefMut for TaehvDecoder {
    fn deref_mut(&mut self) -> &mut VideoDecoder {
        &mut self.0
    }
}

impl Decoder for TaehvDecoder {
    fn frame_size(&self) -> (usize, usize) {
        self.0.frame_size()
    }
    fn frames_per_latent(&self) -> usize {
        self.0.frames_per_latent()
    }
    fn startup_frames(&self) -> usize {
        self.0.startup_frames()
    }
    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        self.0.decode(latents, out)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
}
