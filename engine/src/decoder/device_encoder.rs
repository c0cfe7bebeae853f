//! The Wan family's video encoders lowered to a device (emulator or GPU): TAEHV's
//! (docs/taehv.md "On the device") and the Wan VAE's (docs/wan_vae.md "The encoder on the
//! device"). One type serves both: the encoder's op list run by [`DeviceVideo`] over its own
//! allocation, the caches kept on the device between chunks, one captured graph per (chunk
//! size, stream start), f16 weights and activations with f32 accumulation. What differs is
//! the op list, the RGB mapping and the first chunk's frame rule, which the op list's input
//! states (`Frames::first_less`: 3 for the Wan VAE, whose first latent frame is the first
//! video frame alone).

use crate::backend::cuda::device::Device;
use crate::checkpoint::Weights;
use crate::decoder::{DeviceVideo, RgbEncoder};
use crate::error::Result;
use crate::model::taehv_encoder::{self, TaehvEncoderConfig};
use crate::model::video_ops::{Frames, VideoGraph};
use crate::model::wan_vae::WanVaeConfig;
use crate::model::wan_vae_encoder;

/// How RGB8 bytes become the encoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RgbInput {
    /// `v / 255` (taehv.py's `[0, 1]`).
    Unit,
    /// `(v / 255 - 0.5) / 0.5` (Wan's `[-1, 1]`).
    Signed,
}

/// A video encoder on device `D`.
pub struct DeviceEncoder<D: Device> {
    video: DeviceVideo<D>,
    frame: (usize, usize),
    input: Frames,
    rgb: RgbInput,
    name: &'static str,
}

#[cfg_attr(not(feature = "internals"), allow(dead_code))]
impl<D: Device> DeviceEncoder<D> {
    fn new(
        graph: VideoGraph,
        weights: &Weights,
        max_latent_frames: usize,
        dev: D,
        rgb: RgbInput,
        name: &'static str,
    ) -> Result<Self> {
        let frame = (graph.latent_width, graph.latent_height);
        let input = graph.steps.first().map_or(Frames::LATENT, |s| s.frames);
        Ok(DeviceEncoder {
            video: DeviceVideo::new(graph, weights, max_latent_frames, dev)?,
            frame,
            input,
            rgb,
            name,
        })
    }

    /// The TAEHV encoder of `cfg` for frames of `height x width` pixels (multiples of 8)
    /// with `weights` (`encoder.{i}.*`), for chunks of up to `max_latent_frames` latent
    /// frames (4 video frames each), on `dev`. A missing or mis-shaped tensor is an error
    /// naming it.
    pub fn taehv(
        cfg: &TaehvEncoderConfig,
        height: usize,
        width: usize,
        weights: &Weights,
        max_latent_frames: usize,
        dev: D,
    ) -> Result<Self> {
        let graph = taehv_encoder::graph(cfg, height, width)?;
        Self::new(graph, weights, max_latent_frames, dev, RgbInput::Unit, "TAEHV on the device")
    }

    /// The Wan VAE encoder of `cfg` for frames of `height x width` pixels (multiples of 8)
    /// with `weights` (the original names, `encoder.*` and `conv1.*`), for chunks of up to
    /// `max_latent_frames` latent frames, on `dev`; the latent normalisation is folded into
    /// `conv1`. A missing or mis-shaped tensor is an error naming it.
    pub fn wan_vae(
        cfg: &WanVaeConfig,
        height: usize,
        width: usize,
        weights: &Weights,
        max_latent_frames: usize,
        dev: D,
    ) -> Result<Self> {
        let graph = wan_vae_encoder::graph(cfg, height, width)?;
        let name = "Wan VAE encoder on the device";
        Self::new(graph, weights, max_latent_frames, dev, RgbInput::Signed, name)
    }

    /// Input video frame `(width, height)` in pixels.
    pub fn frame_size(&self) -> (usize, usize) {
        self.frame
    }

    /// Whether chunks run as captured graphs (default) or launch by launch.
    pub fn set_graphs(&mut self, on: bool) {
        self.video.set_graphs(on)
    }

    /// Whether the next chunk starts a stream.
    pub fn at_stream_start(&self) -> bool {
        self.video.at_stream_start()
    }

    /// Video frames that make the next `latents` latent frames: `4 latents`, less the first
    /// chunk's `first_less` at a stream's start (`4 latents - 3` for the Wan VAE).
    pub fn frames_for(&self, latents: usize) -> usize {
        self.input.count(latents, self.at_stream_start())
    }

    /// Of `frames` video frames waiting, the most that make whole latent frames (`4k`;
    /// `1 + 4k` at the Wan VAE's stream start).
    pub fn frames_ready(&self, frames: usize) -> usize {
        let k = self.input.per_latent.max(1);
        let less = self.input_less();
        if frames + less < k {
            0
        } else {
            (frames + less) / k * k - less
        }
    }

    fn input_less(&self) -> usize {
        if self.at_stream_start() {
            self.input.first_less
        } else {
            0
        }
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.video.reset()
    }

    /// Test hook (a planted bug): zeroes the caches on the device while the stream goes on.
    #[doc(hidden)]
    pub fn forget_context(&mut self) -> Result<()> {
        self.video.forget_context()
    }

    /// Encodes `x [T, H, W, 3]` (continuing the stream; `T` whole latent frames, see
    /// [`frames_ready`](Self::frames_ready)) into latents `[n, C, H/8, W/8]`: TAEHV's raw
    /// latents, or the Wan VAE's normalised ones. Bad frame counts and non-finite values
    /// are named errors.
    pub fn encode_f32(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.video.encode_f32(x)
    }

    /// [`encode_f32`](Self::encode_f32) of RGB8 frames mapped to the encoder's input range:
    /// `v / 255` for TAEHV, `(v / 255 - 0.5) / 0.5` for the Wan VAE.
    pub fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        let x: Vec<f32> = match self.rgb {
            RgbInput::Unit => rgb.iter().map(|&v| f32::from(v) / 255.0).collect(),
            RgbInput::Signed => rgb
                .iter()
                .map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5)
                .collect(),
        };
        self.encode_f32(&x)
    }
}

impl<D: Device + Send> RgbEncoder for DeviceEncoder<D> {
    fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        DeviceEncoder::encode_rgb(self, rgb)
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn frames_ready(&self, frames: usize) -> usize {
        DeviceEncoder::frames_ready(self, frames)
    }

    fn frames_for(&self, latents: usize) -> usize {
        DeviceEncoder::frames_for(self, latents)
    }

    fn input_startup_frames(&self) -> usize {
        self.input.first_less
    }
}
