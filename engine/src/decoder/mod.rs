//! Decoders turn clean latent chunks into RGB video frames. The preview decoder is the cheap
//! stand-in; the temporal-autoencoder decoder (docs/tae.md) implements the same trait, and so
//! do the Wan-family decoders (TAEHV, the Wan VAE: `video` executes their op lists on the CPU,
//! `video_device` lowers them to a device; docs/taehv.md, docs/wan_vae.md).

pub mod device_encoder;
pub mod preview;
pub mod tae;
pub mod taehv;
pub mod taehv_encoder;
pub mod video;
pub mod video_device;
mod video_kernels;
pub mod wan_vae;
pub mod wan_vae_encoder;

use crate::error::Result;
use crate::tensor::check_finite;

pub use preview::Preview;
pub use tae::{DeviceTae, TaeDecoder, TaeEncoder};
pub use taehv::TaehvDecoder;
pub use device_encoder::DeviceEncoder;
pub use taehv_encoder::TaehvEncoder;
pub use video::VideoDecoder;
pub use video_device::DeviceVideo;
pub use wan_vae::WanVaeDecoder;
pub use wan_vae_encoder::WanVaeEncoder;

/// A video-to-video stream's input encoder on a device: RGB8 frames `[4n, H, W, 3]`
/// (continuing the stream; `4n - 3` for the Wan VAE's first chunk, see
/// [`input_startup_frames`](Self::input_startup_frames)) to latents `[n, C, h, w]`.
pub trait RgbEncoder: Send {
    fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>>;

    /// What encodes and where, for reports ("TAEHV on the device").
    fn name(&self) -> &'static str;

    /// Of `frames` video frames waiting, how many the encoder takes now: the most that make
    /// whole latent frames (groups of 4 unless the encoder says otherwise).
    fn frames_ready(&self, frames: usize) -> usize {
        frames / 4 * 4
    }

    /// Video frames that make the next `latents` latent frames.
    fn frames_for(&self, latents: usize) -> usize {
        4 * latents
    }

    /// Video frames a stream's first chunk takes fewer than `4n`: 3 for the Wan VAE
    /// encoder, whose first latent frame is the first video frame alone.
    fn input_startup_frames(&self) -> usize {
        0
    }
}

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

/// `round(clamp((v + 1) / 2, 0, 1) * 255)`, docs/tae.md's RGB mapping (NaN maps to 0).
pub fn to_byte(v: f32) -> u8 {
    (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Appends the bytes of RGB values `rgb` to `out` ([`to_byte`] each).
pub fn to_bytes(rgb: &[f32], out: &mut Vec<u8>) {
    out.reserve(rgb.len());
    out.extend(rgb.iter().map(|&v| to_byte(v)));
}

/// The boundary check of a decoder's input: NaN or infinity in `latents [n, C, H, W]`
/// (`frame` is `[C, H, W]`, the length already checked) is an error naming `what` and the
/// first bad value; it would otherwise decode to black pixels without a word.
pub(crate) fn check_latents(what: &str, latents: &[f32], frame: [usize; 3]) -> Result<()> {
    let [c, h, w] = frame;
    let n = latents.len() / (c * h * w).max(1);
    check_finite(what, &[n, c, h, w], latents)
}
