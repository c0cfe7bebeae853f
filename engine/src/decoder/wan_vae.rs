//! The Wan 2.1 VAE decoder (`docs/wan_vae.md`) on the CPU: a [`VideoDecoder`] over
//! [`wan_vae::graph`], with its constructors from a safetensors checkpoint (original or
//! diffusers names) and from deterministic random weights.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use crate::decoder::{Decoder, VideoDecoder};
use crate::error::Result;
use crate::checkpoint::{DType, Weights};
use crate::checkpoint::video::{self as vc, DecoderKind, WAN_VAE_COUNTER};
use crate::model::wan_vae::{self, WanVaeConfig};

/// The Wan VAE decoder on the CPU; derefs to the [`VideoDecoder`] it runs. It takes the
/// DiT's normalised latents and de-normalises them itself.
#[derive(Debug)]
pub struct WanVaeDecoder(VideoDecoder);

impl WanVaeDecoder {
    /// The decoder of `cfg` for latents `[n, z_dim, height, width]` with `weights` in the
    /// original names; a missing or mis-shaped tensor is an error naming it.
    pub fn new(
        cfg: &WanVaeConfig,
        height: usize,
        width: usize,
        weights: &Weights,
    ) -> Result<WanVaeDecoder> {
        Ok(WanVaeDecoder(VideoDecoder::new(
            wan_vae::graph(cfg, height, width)?,
            weights,
        )?))
    }

    /// The decoder tensors of a Wan VAE safetensors checkpoint in the original names
    /// (ComfyUI's `wan_2.1_vae.safetensors`) or diffusers' (`vae/diffusion_pytorch_model.
    /// safetensors`), returned under the original names; encoder tensors are ignored. A
    /// checkpoint of another kind is an error naming the tensor that shows its kind.
    pub fn load_weights(path: impl AsRef<Path>, cfg: &WanVaeConfig) -> Result<Weights> {
        let path = path.as_ref();
        let accepted = [DecoderKind::WanVae, DecoderKind::WanVaeDiffusers];
        let (ckpt, kind) = vc::open_kind(path, "Wan VAE decoder", &accepted)?;
        let specs = wan_vae::graph(cfg, 1, 1)?.tensors();
        match kind {
            DecoderKind::WanVaeDiffusers => {
                vc::read(&ckpt, &specs, |n| wan_vae::diffusers_name(cfg, n))
            }
            _ => vc::read(&ckpt, &specs, str::to_string),
        }
    }

    /// [`new`](Self::new) with the weights of the checkpoint at `path`.
    pub fn load(
        path: impl AsRef<Path>,
        cfg: &WanVaeConfig,
        height: usize,
        width: usize,
    ) -> Result<WanVaeDecoder> {
        Self::new(cfg, height, width, &Self::load_weights(path, cfg)?)
    }

    /// Deterministic random weights in the original names, each value rounded to `dtype`,
    /// scaled so activations stay O(1) and the colours spread over the byte range.
    pub fn random_weights(cfg: &WanVaeConfig, seed: u64, dtype: DType) -> Result<Weights> {
        let graph = wan_vae::graph(cfg, 1, 1)?;
        Ok(vc::random(&graph, seed, WAN_VAE_COUNTER, dtype))
    }

    /// Writes [`random_weights`](Self::random_weights) as a safetensors checkpoint, in the
    /// original names or, with `diffusers`, in diffusers' names.
    pub fn write_random(
        path: &Path,
        cfg: &WanVaeConfig,
        seed: u64,
        dtype: DType,
        diffusers: bool,
    ) -> Result<()> {
        let graph = wan_vae::graph(cfg, 1, 1)?;
        let weights = vc::random(&graph, seed, WAN_VAE_COUNTER, dtype);
        if diffusers {
            vc::write(path, &graph, &weights, dtype, |n| {
                wan_vae::diffusers_name(cfg, n)
            })
        } else {
            vc::write(path, &graph, &weights, dtype, str::to_string)
        }
    }
}

impl Deref for WanVaeDecoder {
    type Target = VideoDecoder;
    fn deref(&self) -> &VideoDecoder {
        &self.0
    }
}

impl DerefMut for WanVaeDecoder {
    fn deref_mut(&mut self) -> &mut VideoDecoder {
        &mut self.0
    }
}

impl Decoder for WanVaeDecoder {
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
