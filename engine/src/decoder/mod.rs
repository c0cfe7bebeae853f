//! Decoders turn clean latent chunks into RGB video frames. The preview decoder is the cheap
//! stand-in; the temporal-autoencoder decoder (TAE_SPEC) implements the same trait, and so do
//! the Wan-family decoders (TAEHV, the Wan VAE: `video` executes their op lists).

pub mod preview;
pub mod tae;
pub mod taehv;
pub mod video;
mod video_kernels;
pub mod wan_vae;

use crate::error::Result;

pub use preview::Preview;
pub use tae::TaeDecoder;
pub use taehv::TaehvDecoder;
pub use video::VideoDecoder;
pub use wan_vae::WanVaeDecoder;

/// Latents `[n, C, H, W]` to RGB8 video frames.
pub trait Decoder: Send {
    /// Video frame `(width, height)` in pixels.
    fn frame_size(&self) -> (usize, usize);

    /// Video frames produced per latent frame.
    fn frames_per_latent(&self) -> usize;

    /// Frames the first chunk of a stream gives fewer than `n * frames_per_latent()`: 3 for
    /// the Wan-family decoders, whose first latent frame becomes 1 video frame.
    fn startup_frames(&self) -> usize {
        0
    }

    /// Decodes `latents [n, C, H, W]` (`n = latents.len() / (C*H*W)`), appending
    /// `n * frames_per_latent()` frames (less [`startup_frames`](Self::startup_frames) when
    /// the chunk starts a stream) of `width * height * 3` bytes (RGB, row-major) to `out`.
    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()>;

    /// Forgets what earlier chunks left behind (a decoder with temporal context keeps
    /// some), so the next chunk starts a new stream. Stateless decoders keep the default.
    fn reset(&mut self) {}
}
