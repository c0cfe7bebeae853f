//! The streaming sampler: a moving buffer of latent frames at staggered noise levels. Every
//! model call advances the whole buffer one micro-step; at the end of a stage the clean
//! oldest chunk is popped, decoded, and fresh noise enters at the new end (docs/streamdit.md
//! section 5). The stream drives any [`Backend`] and any [`Decoder`].

pub mod schedule;
pub mod sink;

use crate::backend::{Backend, StepParams};
use crate::decoder::Decoder;
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::text::{self, Conditioner, TextInput};

pub use schedule::{Schedule, ScheduledStep};

/// One stream of video. Use it from one thread at a time.
pub struct Stream {
    backend: Box<dyn Backend>,
    decoder: Box<dyn Decoder>,
    schedule: Schedule,
    encoders: Arc<Conditioner>,
    /// The condition of branch 0, and of branch 1 when guidance is on.
    prompt: Arc<TextInput>,
    negative: Option<Arc<TextInput>>,
    /// A prompt set by [`Stream::set_prompt`], encoded at the next model call.
    pending: Option<String>,
    /// The condition changed since the backend last saw it.
    text_changed: bool,
    seed: u64,
    guidance: f32,
    /// Model calls made so far.
    calls: u64,
    /// Global latent frame number of the next noise frame to enter the buffer.
    next_noise_frame: u64,
    chunks_emitted: u64,
    chunk_frames: usize,
    /// Video frame rate of the profile.
    fps: f64,
    /// The last popped chunk `[c, C, H, W]`.
    chunk: Vec<f32>,
}

/// Everything a stream is made of, built by the engine: the stream receives ready parts and
/// never calls back into the engine.
pub(crate) struct Parts {
    pub backend: Box<dyn Backend>,
    pub decoder: Box<dyn Decoder>,
    pub schedule: Schedule,
    pub encoders: Arc<Conditioner>,
    pub prompt: Arc<TextInput>,
    pub negative: Option<Arc<TextInput>>,
    pub seed: u64,
    pub guidance: f32,
    /// Latent frames in the buffer (the first noise frame to enter it after the initial fill).
    pub buffer_frames: usize,
    pub chunk_frames: usize,
    /// Elements of one latent frame `C*H*W`.
    pub frame_elems: usize,
    /// Video frame rate of the profile.
    pub fps: f64,
}

impl Stream {
    /// Starts a stream from its parts: fills the buffer with the noise of `seed`.
    pub(crate) fn new(parts: Parts) -> Result<Stream> {
        let Parts {
            mut backend,
            decoder,
            schedule,
            encoders,
            prompt,
            negative,
            seed,
            guidance,
            buffer_frames,
            chunk_frames,
            frame_elems,
            fps,
        } = parts;
        backend.reset(seed, 0)?;
        Ok(Stream {
            backend,
            decoder,
            schedule,
            encoders,
            prompt,
            negative,
            pending: None,
            text_changed: true,
            seed,
            guidance,
            calls: 0,
            next_noise_frame: buffer_frames as u64,
            chunks_emitted: 0,
            chunk_frames,
            fps,
            chunk: vec![0.0; chunk_frames * frame_elems],
        })
    }

    /// Switches the prompt; it takes effect at the next model call, the buffer is kept. The
    /// prompt is encoded then (once: the engine caches recent prompts), so an encoder error
    /// is returned by that call.
    pub fn set_prompt(&mut self, prompt: &str) {
        self.pending = Some(prompt.to_string());
        self.text_changed = true;
    }

    /// Encodes a prompt set by [`Stream::set_prompt`] now instead of at the next model call
    /// (to time it, or to see an encoder error early).
    pub fn encode_pending(&mut self) -> Result<()> {
        if let Some(p) = &self.pending {
            // Kept pending on failure: the next call tries again and fails the same way,
            // rather than silently keeping the old prompt.
            self.prompt = self.encoders.encode(p)?;
            self.pending = None;
        }
        Ok(())
    }

    /// Switches to a precomputed text condition, like [`Stream::set_prompt`].
    pub fn set_text(&mut self, text: TextInput) -> Result<()> {
        let g = self.backend.graph();
        check_text(&text, g.config.text_len, g.config.text_dim)?;
        self.prompt = Arc::new(text);
        self.pending = None;
        self.text_changed = true;
        Ok(())
    }

    /// Runs model calls until the next chunk is clean and returns its latents `[c, C, H, W]`.
    pub fn next_latents(&mut self) -> Result<&[f32]> {
        while !self.step()? {}
        // Let the device start the next call while this chunk is decoded; a prompt switch
        // before the next call makes the backend drop it (it is never committed).
        let next = self.schedule.step(self.calls);
        self.backend.prefetch(&StepParams {
            tau: next.tau,
            dtau: next.dtau,
            pop: next.pop.then_some(self.next_noise_frame),
        })?;
        Ok(&self.chunk)
    }

    /// Runs exactly one model call (one micro-step of the whole buffer); returns whether it
    /// popped a clean chunk, whose latents [`Stream::chunk_latents`] then holds and
    /// [`Stream::decode_chunk`] decodes.
    pub fn step(&mut self) -> Result<bool> {
        let _range = crate::nvtx::Range::push(format_args!("step {}", self.calls));
        if self.text_changed {
            self.encode_pending()?;
            let branches: Vec<&TextInput> = std::iter::once(&*self.prompt)
                .chain(self.negative.as_deref())
                .collect();
            let (text, mask) = text::stack(&branches);
            self.backend.set_text(&text, &mask)?;
            self.text_changed = false;
        }
        let s = self.schedule.step(self.calls);
        let params = StepParams {
            tau: s.tau,
            dtau: s.dtau,
            pop: s.pop.then_some(self.next_noise_frame),
        };
        self.backend.step(&params, &mut self.chunk)?;
        self.calls += 1;
        if s.pop {
            self.next_noise_frame += self.chunk_frames as u64;
            self.chunks_emitted += 1;
        }
        Ok(s.pop)
    }

    /// The latents `[c, C, H, W]` of the last popped chunk (zeros before the first).
    pub fn chunk_latents(&self) -> &[f32] {
        &self.chunk
    }

    /// Decodes the last popped chunk, appending its RGB8 video frames to `out`; returns how
    /// many frames were appended.
    pub fn decode_chunk(&mut self, out: &mut Vec<u8>) -> Result<usize> {
        let _range = crate::nvtx::Range::push("decode");
        let before = out.len();
        self.decoder.decode(&self.chunk, out)?;
        let (w, h) = self.decoder.frame_size();
        Ok((out.len() - before) / (w * h * 3))
    }

    /// Produces the next chunk and appends its decoded RGB8 frames to `out`; returns how many
    /// video frames were appended.
    pub fn next_frames(&mut self, out: &mut Vec<u8>) -> Result<usize> {
        self.next_latents()?;
        self.decode_chunk(out)
    }

    /// Waits until the backend finished the work of earlier steps (a step that pops no chunk
    /// may return while the device is still computing it).
    pub fn synchronize(&mut self) -> Result<()> {
        self.backend.synchronize()
    }

    /// Whether model calls replay a captured device graph (`None`: the backend has none).
    pub fn graphs(&self) -> Option<bool> {
        self.backend.graphs()
    }

    /// Turns device graph replay on or off (eager launches); an error on a backend without
    /// graphs, such as the CPU backend.
    pub fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.backend.set_graphs(on)
    }

    /// Video frame `(width, height)`.
    pub fn frame_size(&self) -> (usize, usize) {
        self.decoder.frame_size()
    }

    /// Video frames per second of the profile.
    pub fn video_fps(&self) -> f64 {
        self.fps
    }

    /// Video frames per emitted chunk.
    pub fn frames_per_chunk(&self) -> usize {
        self.chunk_frames * self.decoder.frames_per_latent()
    }

    /// Model calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Chunks emitted so far.
    pub fn chunks_emitted(&self) -> u64 {
        self.chunks_emitted
    }

    /// Model calls before the first chunk is emitted (prefill plus one stage).
    pub fn calls_to_first_chunk(&self) -> u64 {
        self.schedule.prefill_calls() + self.schedule.calls_per_chunk()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn guidance(&self) -> f32 {
        self.guidance
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

pub(crate) fn check_text(t: &TextInput, len: usize, dim: usize) -> Result<()> {
    t.text.expect_shape("text", &[len, dim])?;
    if t.mask.len() != len {
        return Err(Error::shape(
            "text_mask",
            format!("[{len}]"),
            format!("[{}]", t.mask.len()),
        ));
    }
    crate::math::validate_mask(&t.mask, 1, len)
}
