//! The Wan 2.1 VAE decoder (`docs/wan_vae.md`) on the CPU: a [`VideoDecoder`] over
//! [`wan_vae::graph`], with its constructors from a safetensors checkpoint (original or
//! diffusers names) and from deterministic random weights.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use crate::decoder::{Decoder, VideoDecoder, WanVaeEncoder};
use crate::error::Result;
use crate::checkpoint::{DType, Weights};
use crate::checkpoint::video::{self as vc, DecoderKind, WAN_VAE_COUNTER};
use crate::model::wan_vae::{self, WanVaeConfig};
use crate::model::wan_vae_encoder;
use crate::tensor::Tensor;

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
    /// original names or, with `diffusers`, in diffusers' names; like `Wan2.1_VAE.pth` the
    /// file also holds the encoder ([`WanVaeEncoder::random_weights`] of the same seed), so
    /// a video-to-video stream reads both halves from it.
    pub fn write_random(
        path: &Path,
        cfg: &WanVaeConfig,
        seed: u64,
        dtype: DType,
        diffusers: bool,
    ) -> Result<()> {
        let graph = wan_vae::graph(cfg, 1, 1)?;
        let weights = vc::random(&graph, seed, WAN_VAE_COUNTER, dtype);
        let enc_graph = wan_vae_encoder::graph(cfg, 8, 8)?;
        let enc = WanVaeEncoder::random_weights(cfg, seed, dtype)?;
        let mut named = Vec::new();
        for s in graph.tensors() {
            let name = match diffusers {
                true => wan_vae::diffusers_name(cfg, &s.name),
                false => s.name.clone(),
            };
            named.push((name, weights.get(&s.name)?));
        }
        for s in enc_graph.tensors() {
            let name = match diffusers {
                true => wan_vae_encoder::diffusers_name(&s.name),
                false => s.name.clone(),
            };
            named.push((name, enc.get(&s.name)?));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        crate::checkpoint::write_tensors(path, &refs, dtype)
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
