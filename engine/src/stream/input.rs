//! The input side of a video-to-video stream: the encoder of pushed RGB8 frames (StreamDiT's
//! TAE encoder, the Wan family's TAEHV encoder; 4 video frames per latent frame), the
//! frames waiting for a group of 4, and the rule for the input's end.
//!
//! **The end of the input** (docs/wan.md "Video-to-video", docs/streamdit.md section 5):
//! after [`super::Stream::end_input`] with `N` frames pushed, the stream repeats the last
//! input frame wherever its encoder or sampler needs input (the rest of a group of 4, the
//! rest of a chunk, StreamDiT's look-ahead), emits the chunks that hold output frames
//! `0 .. N-1` and writes exactly `N` output frames: the last chunk's frames after `N - 1`
//! edit repeated input and are dropped. With `F` video frames per chunk and `S` start-up
//! frames (3 for the Wan-family decoders, whose first chunk gives `F - 3`; 0 for StreamDiT
//! and the preview), chunks `0 .. k` give `k F - S` frames, so the stream emits
//! `K = ceil((N + S) / F)` chunks in all.

use std::fmt;

use crate::decoder::{RgbEncoder, TaeEncoder, TaehvEncoder, WanVaeEncoder};
use crate::error::Result;

/// The encoder of a video-to-video stream's input: 4 RGB8 frames per latent frame (the
/// Wan VAE's first latent frame from the stream's first frame alone).
pub(crate) enum InputEncoder {
    /// StreamDiT's TAE encoder.
    Tae(TaeEncoder),
    /// The Wan family's TAEHV encoder (`taew2_1`).
    Taehv(Box<TaehvEncoder>),
    /// An encoder lowered to the stream's device (`--backend emu|cuda`).
    Device(Box<dyn RgbEncoder>),
    /// The Wan family's VAE encoder (docs/wan_vae.md "The encoder").
    WanVae(Box<WanVaeEncoder>),
}

impl InputEncoder {
    pub(super) fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        match self {
            InputEncoder::Tae(e) => e.encode_rgb(rgb),
            InputEncoder::Taehv(e) => e.encode_rgb(rgb),
            InputEncoder::Device(e) => e.encode_rgb(rgb),
            InputEncoder::WanVae(e) => e.encode_rgb(rgb),
        }
    }

    /// What encodes and where, for reports.
    pub(super) fn name(&self) -> &'static str {
        match self {
            InputEncoder::Tae(_) => "TAE, CPU, f32",
            InputEncoder::Taehv(_) => "TAEHV, CPU, f32",
            InputEncoder::Device(e) => e.name(),
            InputEncoder::WanVae(_) => "Wan VAE encoder, CPU, f32",
        }
    }

    /// Of `frames` waiting, how many make whole latent frames now.
    pub(super) fn frames_ready(&self, frames: usize) -> usize {
        match self {
            InputEncoder::WanVae(e) => e.frames_ready(frames),
            InputEncoder::Device(e) => e.frames_ready(frames),
            _ => frames / 4 * 4,
        }
    }

    /// Input video frames the first chunk of input takes fewer than the others: 3 for the
    /// Wan VAE encoder (its first latent frame is the stream's first frame alone), else 0.
    pub(super) fn input_startup_frames(&self) -> usize {
        match self {
            InputEncoder::WanVae(_) => 3,
            InputEncoder::Device(e) => e.input_startup_frames(),
            _ => 0,
        }
    }

    /// Video frames that make the next `latents` latent frames.
    pub(super) fn frames_for(&self, latents: usize) -> usize {
        match self {
            InputEncoder::WanVae(e) => e.frames_for(latents),
            InputEncoder::Device(e) => e.frames_for(latents),
            _ => 4 * latents,
        }
    }
}

/// The input video of a video-to-video stream.
pub(super) struct InputVideo {
    pub encoder: InputEncoder,
    /// RGB8 frames pushed but not yet encoded (fewer than 4).
    pub pending: Vec<u8>,
    /// Video frames pushed so far, repeats after the end included.
    pub pushed: u64,
    /// The motion of each pending frame ([`super::motion::frame_motion`] against the one
    /// before).
    pub motion: Vec<f32>,
    /// The last frame pushed, repeated once the input ended.
    pub last: Vec<u8>,
    /// Set by `end_input`: the input's end and what follows from it.
    pub ended: Option<InputEnd>,
    /// Frames pushed after the end that repeat the last one.
    pub repeated: u64,
}

impl InputVideo {
    pub(super) fn new(encoder: InputEncoder) -> InputVideo {
        InputVideo {
            encoder,
            pending: Vec::new(),
            pushed: 0,
            motion: Vec::new(),
            last: Vec::new(),
            ended: None,
            repeated: 0,
        }
    }
}

/// What the end of a video-to-video stream's input implies ([`super::Stream::end_input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputEnd {
    /// Input video frames pushed before the end: the stream writes exactly this many output
    /// frames (output frame `f` edits input frame `f`).
    pub frames: u64,
    /// Video frames per chunk of output.
    pub frames_per_chunk: usize,
    /// Frames the first chunk gives fewer than `frames_per_chunk` (the Wan decoders' 3).
    pub startup_frames: usize,
    /// Input video frames per chunk (the sampler's chunk of latent frames times 4).
    pub input_frames_per_chunk: usize,
    /// Input video frames the first chunk takes fewer than `input_frames_per_chunk` (the Wan
    /// VAE encoder's 3: its first latent frame is one video frame).
    pub input_startup_frames: usize,
    /// Chunks the stream emits in all, the last one included.
    pub chunks: u64,
    /// Output frames of the last chunk that are written (the rest are dropped).
    pub last_chunk_frames: usize,
    /// Output frames the last chunk gives before the cut.
    pub last_chunk_size: usize,
}

impl InputEnd {
    /// The end after `frames >= 1` input frames with `fpc` output frames per chunk, `startup`
    /// frames fewer in the first, `input_per_chunk` input frames per chunk and `input_startup`
    /// fewer in the first chunk of input.
    pub(super) fn new(
        frames: u64,
        fpc: usize,
        startup: usize,
        input_per_chunk: usize,
        input_startup: usize,
    ) -> InputEnd {
        let f = fpc as u64;
        let chunks = (frames + startup as u64).div_ceil(f).max(1);
        let before = frames_after(chunks - 1, fpc, startup);
        let size = frames_after(chunks, fpc, startup) - before;
        InputEnd {
            frames,
            frames_per_chunk: fpc,
            startup_frames: startup,
            input_frames_per_chunk: input_per_chunk,
            input_startup_frames: input_startup,
            chunks,
            last_chunk_frames: (frames - before) as usize,
            last_chunk_size: size as usize,
        }
    }

    /// Whether the input stops inside a chunk of input frames.
    pub fn mid_chunk(&self) -> bool {
        self.in_last_input_chunk().0 != 0
    }

    /// Input frames in the chunk of input the end falls in, and that chunk's size (`(0, _)`
    /// when the end is a chunk boundary). Chunks of input end after `k n - s` frames (`n`
    /// input frames per chunk, `s` fewer in the first).
    fn in_last_input_chunk(&self) -> (u64, u64) {
        let (n, s) = (
            self.input_frames_per_chunk as u64,
            self.input_startup_frames as u64,
        );
        if self.frames < n - s {
            (self.frames, n - s)
        } else {
            ((self.frames + s) % n, n)
        }
    }

    /// Output frames chunk `k` (0-based) may write: `0` after the last chunk.
    pub(super) fn keep(&self, k: u64) -> usize {
        let before = frames_after(k, self.frames_per_chunk, self.startup_frames);
        let after = frames_after(k + 1, self.frames_per_chunk, self.startup_frames);
        (after.min(self.frames).saturating_sub(before)) as usize
    }
}

/// Output frames chunks `0 .. k` give: `k F - S` (0 for `k = 0`).
fn frames_after(k: u64, fpc: usize, startup: usize) -> u64 {
    (k * fpc as u64).saturating_sub(if k > 0 { startup as u64 } else { 0 })
}

impl fmt::Display for InputEnd {
    /// The note `generate` prints and the C ABI logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the input video ended after {} frames", self.frames)?;
        let (within, size) = self.in_last_input_chunk();
        if within != 0 {
            write!(
                f,
                " (mid-chunk: {within} of a {size}-frame chunk of input)"
            )?;
        }
        write!(
            f,
            "; the stream repeats the last input frame wherever it still needs input, emits {} \
             chunks and writes exactly {} output frames, so the output stops after frame {}",
            self.chunks,
            self.frames,
            self.frames - 1
        )?;
        if self.last_chunk_frames < self.last_chunk_size {
            write!(
                f,
                " (the last chunk's first {} of its {} frames; the rest edit the repeated frame \
                 and are not written)",
                self.last_chunk_frames, self.last_chunk_size
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_frames_of_the_end() {
        // Wan tiny with TAEHV: 8 frames per chunk, the first gives 5.
        let e = InputEnd::new(5, 8, 3, 8, 0);
        assert_eq!((e.chunks, e.last_chunk_frames, e.last_chunk_size), (1, 5, 5));
        let e = InputEnd::new(8, 8, 3, 8, 0);
        assert_eq!((e.chunks, e.last_chunk_frames, e.last_chunk_size), (2, 3, 8));
        assert!(!e.mid_chunk());
        let e = InputEnd::new(1, 8, 3, 8, 0);
        assert_eq!((e.chunks, e.last_chunk_frames), (1, 1));
        assert!(e.mid_chunk());
        assert_eq!((e.keep(0), e.keep(1)), (1, 0));
        let e = InputEnd::new(14, 8, 3, 8, 0);
        assert_eq!((e.chunks, e.keep(0), e.keep(1), e.keep(2)), (3, 5, 8, 1));
        // StreamDiT: no start-up frames.
        let e = InputEnd::new(12, 8, 0, 8, 0);
        assert_eq!((e.chunks, e.keep(0), e.keep(1), e.keep(2)), (2, 8, 4, 0));
        let text = e.to_string();
        assert!(text.contains("ended after 12 frames") && text.contains("mid-chunk: 4 of a 8-frame"));
    }

    #[test]
    fn the_wan_vae_encoders_chunks_of_input_start_3_frames_short() {
        // Its chunks of 2 latent frames take 5 video frames, then 8: they end after 5, 13, 21.
        for (frames, mid, text) in [
            (5, false, ""),
            (13, false, ""),
            (21, false, ""),
            (3, true, "mid-chunk: 3 of a 5-frame chunk"),
            (8, true, "mid-chunk: 3 of a 8-frame chunk"),
            (12, true, "mid-chunk: 7 of a 8-frame chunk"),
            (14, true, "mid-chunk: 1 of a 8-frame chunk"),
        ] {
            let e = InputEnd::new(frames, 8, 3, 8, 3);
            assert_eq!(e.mid_chunk(), mid, "{frames}");
            assert_eq!(e.to_string().contains("mid-chunk"), mid, "{frames}");
            assert!(e.to_string().contains(text), "{frames}: {e}");
        }
    }
}
