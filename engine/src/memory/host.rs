//! Host memory: what a run may use, so that a profile too large for this machine is refused
//! with a message before the engine allocates, instead of the process dying in an
//! allocation.
//!
//! The limit is `STREAMDIT_MEMORY_LIMIT` when set (bytes, or with a `K`, `M`, `G` or `T`
//! suffix, powers of 1024), otherwise `MemAvailable` of `/proc/meminfo` on Linux; elsewhere
//! there is no limit beyond the profile's own bounds (`crate::model::limits`).
//!
//! Video-to-video adds the TAE encoder to a stream ([`encoder_memory`]): it runs on the
//! host in f32 on every backend, so its weights, causal caches and activations count
//! against the host limit whichever backend runs the DiT. The Wan family's TAEHV encoder
//! counts the same way ([`video_encoder_memory`]).

use crate::error::{Error, Result};
use crate::model::profile::Profile;
use crate::model::tae::{TaeGraph, TaeOp, TEMPORAL_UPSAMPLE};
use crate::model::video_ops::VideoGraph;

/// The environment variable that states the host memory limit.
pub const MEMORY_LIMIT_ENV: &str = "STREAMDIT_MEMORY_LIMIT";

/// Parses a byte count such as `1048576`, `512M` or `8G`.
pub fn parse_bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let (digits, scale) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let power = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                _ => return None,
            };
            (&text[..i], 1u128 << (10 * power))
        }
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok().map(|n| u128::from(n) * scale)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u128> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u128 = words.next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The host memory a run may use, and where that number comes from; `None` when unknown.
pub fn host_limit() -> Result<Option<(u128, String)>> {
    if let Ok(text) = std::env::var(MEMORY_LIMIT_ENV) {
        return match parse_bytes(&text) {
            Some(n) => Ok(Some((n, format!("{MEMORY_LIMIT_ENV}={text}")))),
            None => Err(Error::Invalid(format!(
                "{MEMORY_LIMIT_ENV}: expected a byte count such as 1073741824, 512M or 8G, \
                 found `{text}`"
            ))),
        };
    }
    Ok(std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t))
        .map(|n| (n, "MemAvailable in /proc/meminfo".to_string())))
}

/// Refuses `bytes` of host memory for `what` when they exceed the limit.
pub fn check_host_memory(what: &str, bytes: u128) -> Result<()> {
    if let Some((limit, source)) = host_limit()? {
        if bytes > limit {
            return Err(Error::Invalid(format!(
                "{what}: needs at least {:.2} GB of host memory, but {:.2} GB are available \
                 ({source}); choose a smaller profile or raise {MEMORY_LIMIT_ENV}",
                bytes as f64 / 1e9,
                limit as f64 / 1e9
            )));
        }
    }
    Ok(())
}

/// The host memory video-to-video's TAE encoder adds to a stream, in bytes (f32 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderMemory {
    /// The encoder's weights.
    pub weight_bytes: u128,
    /// Its causal caches, kept between pushes: the last two input frames of every temporal
    /// convolution (`ConvT`) and the last input frame of every temporal downsampling
    /// (`DownT`).
    pub cache_bytes: u128,
    /// Encoding one push of `frames` video frames: the input mapped to f32 and its working
    /// copy, and at the widest op its input, its output and every residual saved around it.
    pub activation_bytes: u128,
    /// The encoded input latents the sampler queues (one buffer's worth) and the RGB8 frames
    /// waiting for a whole group of 4.
    pub queue_bytes: u128,
}

impl EncoderMemory {
    pub fn total(&self) -> u128 {
        self.weight_bytes + self.cache_bytes + self.activation_bytes + self.queue_bytes
    }
}

/// The host memory of the encoder `graph` (from [`TaeGraph::encoder`]) encoding pushes of
/// `frames` video frames (a multiple of 4) with `queued` latent frames waiting in the
/// sampler.
pub fn encoder_memory(graph: &TaeGraph, frames: usize, queued: usize) -> EncoderMemory {
    const F32: u128 = 4;
    let latent = (frames / TEMPORAL_UPSAMPLE) as u128;
    let mut cache = 0u128;
    let mut saved: Vec<u128> = Vec::new();
    let mut widest = 0u128;
    for step in &graph.steps {
        let elems = |f: usize, h: usize, w: usize, c: usize| latent * (f * h * w * c) as u128;
        let input = elems(step.frames, step.height, step.width, step.channels);
        let (of, oh, ow, oc) = step.output();
        let output = elems(of, oh, ow, oc);
        match &step.op {
            TaeOp::Save => saved.push(input),
            TaeOp::AddSaved { .. } => {
                let s = saved.pop().unwrap_or(0);
                widest = widest.max(input + output + s + saved.iter().sum::<u128>());
                continue;
            }
            TaeOp::ConvT { ch, .. } => cache += (2 * step.height * step.width * ch) as u128,
            TaeOp::DownT { ch, .. } => cache += (step.height * step.width * ch) as u128,
            _ => {}
        }
        widest = widest.max(input + output + saved.iter().sum::<u128>());
    }
    let (w, h) = graph.frame_size();
    let frame = (w * h * 3) as u128;
    let latent_frame =
        (graph.latent_channels * graph.latent_height * graph.latent_width) as u128;
    EncoderMemory {
        weight_bytes: u128::from(graph.parameters()) * F32,
        cache_bytes: cache * F32,
        activation_bytes: (2 * frames as u128 * frame + widest) * F32,
        queue_bytes: queued as u128 * latent_frame * F32 + (TEMPORAL_UPSAMPLE as u128 - 1) * frame,
    }
}

/// The host memory a video-to-video stream of the StreamDiT `profile` adds for its encoder:
/// pushes of one buffer's input (`latent_frames * 4` video frames, what the first model
/// call asks for) with one buffer of latents queued.
pub fn video_to_video_memory(profile: &Profile) -> Result<EncoderMemory> {
    let m = &profile.model;
    let graph = TaeGraph::encoder(
        &profile.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )?;
    Ok(encoder_memory(
        &graph,
        m.latent_frames * TEMPORAL_UPSAMPLE,
        m.latent_frames,
    ))
}

/// The host memory of a Wan video-to-video stream's encoder `graph` (TAEHV's,
/// `model::taehv_encoder::graph`, or the Wan VAE's, `model::wan_vae_encoder::graph`)
/// encoding pushes of one chunk of `chunk` latent frames with one chunk queued in the
/// sampler: f32 weights, its caches (TAEHV's nine MemBlock memories, the VAE's causal
/// convolutions' frames), the pushed frames in f32 plus three times the largest activation
/// (input, output and a saved one live at once), the queued latents and up to 3 RGB8
/// frames waiting for a group of 4.
pub fn video_encoder_memory(graph: &VideoGraph, chunk: usize) -> EncoderMemory {
    const F32: u128 = 4;
    let largest = (graph.largest_activation(chunk, true).0)
        .max(graph.largest_activation(chunk, false).0);
    let first = graph.steps.first();
    let per_latent = first.map_or(0, |s| s.frames.per_latent);
    let frame = (graph.latent_height * graph.latent_width * graph.latent_channels) as u128;
    let latent_frame = graph.steps.last().map_or(0, |s| {
        let (_, h, w, c) = s.output();
        (h * w * c) as u128
    });
    EncoderMemory {
        weight_bytes: u128::from(graph.parameters()) * F32,
        cache_bytes: graph.cache_elems() as u128 * F32,
        activation_bytes: ((chunk * per_latent) as u128 * frame + 3 * largest as u128) * F32,
        queue_bytes: chunk as u128 * latent_frame * F32 + (per_latent as u128 - 1) * frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("8g"), Some(8 << 30));
        assert_eq!(parse_bytes(" 2 T "), Some(2 << 40));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("8X"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    #[test]
    fn taehv_encoder_memory_at_832x480() {
        use crate::model::taehv_encoder::{graph, TaehvEncoderConfig};
        let g = graph(&TaehvEncoderConfig::taew2_1(), 480, 832).unwrap();
        let m = video_encoder_memory(&g, 3);
        // Three MemBlocks of 64 channels at each of 240x416, 120x208 and 60x104.
        let cache = 3 * 64 * (240 * 416 + 120 * 208 + 60 * 104) as u128 * 4;
        assert_eq!(m.cache_bytes, cache);
        assert_eq!(m.weight_bytes, u128::from(g.parameters()) * 4);
        // The largest activation: the first conv's 64 channels over 12 full frames.
        assert_eq!(
            m.activation_bytes,
            (12 * 480 * 832 * 3 + 3 * 12 * 480 * 832 * 64) * 4
        );
        assert_eq!(m.queue_bytes, 3 * 16 * 60 * 104 * 4 + 3 * 480 * 832 * 3);
    }

    #[test]
    fn wan_vae_encoder_memory_at_832x480() {
        use crate::model::wan_vae::WanVaeConfig;
        use crate::model::wan_vae_encoder::graph;
        let g = graph(&WanVaeConfig::wan2_1(), 480, 832).unwrap();
        let m = video_encoder_memory(&g, 3);
        // Two frames of each causal conv's input: conv1 (3 channels) and the first stage's
        // four (96) at full size, the second stage's (96, 192 x3) at 1/2, the third's
        // (192, 384 x3) at 1/4, the last stage's and the middle's 8 and the head at 1/8
        // (384); one frame of each time_conv (192 at 1/4, 384 at 1/8).
        let px = 480 * 832;
        let two = 2 * (px * (3 + 4 * 96) + px / 4 * (96 + 3 * 192) + px / 16 * (192 + 3 * 384)
            + px / 64 * 9 * 384);
        let one = px / 16 * 192 + px / 64 * 384;
        assert_eq!(m.cache_bytes, (two + one) as u128 * 4);
        // The largest activation: the first stage's 96 channels over a later chunk's 12 frames.
        assert_eq!(
            m.activation_bytes,
            (12 * px * 3 + 3 * 12 * px * 96) as u128 * 4
        );
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16000000 kB\nMemFree:   100 kB\nMemAvailable:    2000 kB\n";
        assert_eq!(mem_available(text), Some(2000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
