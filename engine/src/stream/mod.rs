//! A stream of video: a model family's sampler ([`Sampler`]) over its backend, a decoder,
//! and the text condition. StreamDiT's sampler is the moving buffer of [`moving`]
//! (docs/streamdit.md section 5); the Wan family's is the causal chunk-by-chunk loop of
//! [`causal`] (docs/wan.md section 6). The stream drives any sampler and any [`Decoder`].

pub mod causal;
mod input;
pub mod motion;
mod moving;
pub mod schedule;
pub mod sink;
pub mod source;
mod trace;

use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::tensor::{check_finite, describe_non_finite, first_non_finite, Tensor};
use std::sync::Arc;

use crate::text::{Conditioner, TextInput};

pub(crate) use causal::CausalSampler;
pub(crate) use input::InputEncoder;
pub use input::InputEnd;
use input::InputVideo;
pub(crate) use moving::MovingSampler;
pub use schedule::{Schedule, ScheduledStep};
pub(crate) use trace::Trace;

/// What a stream drives: one model family's sampler with its backend. A new family adds an
/// implementation in its own file.
pub(crate) trait Sampler: Send {
    /// Checks that a text condition has the shape this sampler's model takes.
    fn check_text(&self, t: &TextInput) -> Result<()>;

    /// The text condition changed; the sampler applies it when its family does (StreamDiT
    /// at the next call, a causal family at the next chunk).
    fn set_text(&mut self, prompt: &TextInput) -> Result<()>;

    /// One model call (with whatever bookkeeping its family attaches to it); when a chunk
    /// is finished, its latents `[c, C, H, W]` are written to `chunk` and it returns true.
    /// Noise it draws goes to `trace` when given.
    fn step(&mut self, chunk: &mut [f32], trace: Option<&mut Trace>) -> Result<bool>;

    /// Video-to-video: appends encoded input latents `[n, C, H, W]` (global latent frames in
    /// order) with each latent frame's motion (the largest [`motion::frame_motion`] of the
    /// video frames it was encoded from). An error for a text-to-video stream or a family
    /// without video-to-video.
    fn push_input(&mut self, _latents: &[f32], _motion: &[f32]) -> Result<()> {
        Err(Error::Invalid(format!(
            "input video: the {} sampler of this model family has no video-to-video",
            self.backend_name()
        )))
    }

    /// Video-to-video: turns on adaptive noise ([`Stream::set_adaptive_noise`]).
    fn set_adaptive_noise(&mut self) -> Result<()> {
        Err(Error::Invalid(format!(
            "adaptive noise: the {} sampler of this model family has none (StreamDiffusionV2's \
             motion-aware noise is for the Wan family's video-to-video)",
            self.backend_name()
        )))
    }

    /// Video-to-video: the noise level the last started chunk began at (`None` before one,
    /// for text-to-video and for a family without a per-chunk level).
    fn chunk_noise_level(&self) -> Option<f64> {
        None
    }

    /// Video-to-video: input latent frames still missing before the next call can run
    /// (0 for text-to-video).
    fn input_latents_needed(&self) -> u64 {
        0
    }

    /// A chunk was just emitted: a device may start the next call now.
    fn prefetch(&mut self) -> Result<()> {
        Ok(())
    }

    /// Model calls that took a call a device started early (0 where none is counted).
    fn prefetched_calls(&self) -> u64 {
        0
    }

    /// Model calls made so far (denoising calls for a causal family).
    fn calls(&self) -> u64;

    /// Model calls before the first chunk is emitted.
    fn calls_to_first_chunk(&self) -> u64;

    fn backend_name(&self) -> &'static str;

    fn synchronize(&mut self) -> Result<()>;

    fn graphs(&self) -> Option<bool>;

    fn set_graphs(&mut self, on: bool) -> Result<()>;

    /// Checks every op's output for NaN and infinity ([`crate::Backend::set_check_ops`]).
    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        if !on {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{} backend of this model family: cannot check each op's output for non-finite values",
            self.backend_name()
        )))
    }
}

/// One stream of video. Use it from one thread at a time.
pub struct Stream {
    sampler: Box<dyn Sampler>,
    decoder: Box<dyn Decoder>,
    encoders: Arc<Conditioner>,
    /// The condition of the prompt (branch 0).
    prompt: Arc<TextInput>,
    /// A prompt set by [`Stream::set_prompt`], encoded at the next model call.
    pending: Option<String>,
    /// The condition changed since the sampler last saw it.
    text_changed: bool,
    seed: u64,
    guidance: f32,
    chunks_emitted: u64,
    chunk_frames: usize,
    /// Latent frame shape `[C, H, W]`.
    frame: [usize; 3],
    /// Video frame rate of the profile.
    fps: f64,
    /// The last emitted chunk `[c, C, H, W]`.
    chunk: Vec<f32>,
    /// What the sampler drew and produced, when recording (`set_trace`).
    trace: Option<Trace>,
    /// Video-to-video's input: the encoder and the frames not yet encoded.
    input: Option<InputVideo>,
    /// Video frames decoded so far (as written, after the input's end is applied).
    frames_emitted: u64,
}

/// Everything a stream is made of, built by the engine: the stream receives ready parts and
/// never calls back into the engine.
pub(crate) struct Parts {
    pub sampler: Box<dyn Sampler>,
    pub decoder: Box<dyn Decoder>,
    pub encoders: Arc<Conditioner>,
    pub prompt: Arc<TextInput>,
    pub seed: u64,
    pub guidance: f32,
    pub chunk_frames: usize,
    /// Latent frame shape `[C, H, W]`.
    pub frame: [usize; 3],
    /// Video frame rate of the profile.
    pub fps: f64,
}

impl Stream {
    /// Starts a stream from its parts.
    pub(crate) fn new(parts: Parts) -> Result<Stream> {
        let Parts {
            sampler,
            decoder,
            encoders,
            prompt,
            seed,
            guidance,
            chunk_frames,
            frame,
            fps,
        } = parts;
        Ok(Stream {
            sampler,
            decoder,
            encoders,
            prompt,
            pending: None,
            text_changed: true,
            seed,
            guidance,
            chunks_emitted: 0,
            chunk_frames,
            frame,
            fps,
            chunk: vec![0.0; chunk_frames * frame.iter().product::<usize>()],
            trace: None,
            input: None,
            frames_emitted: 0,
        })
    }

    /// Makes this (video-to-video) stream encode pushed video frames with `encoder`.
    pub(crate) fn attach_input(&mut self, encoder: InputEncoder) {
        self.input = Some(InputVideo::new(encoder));
    }

    /// Whether this stream edits an input video (started by `Engine::video_stream`).
    pub fn is_video_to_video(&self) -> bool {
        self.input.is_some()
    }

    /// Video-to-video: appends input video frames `rgb [n, H, W, 3]` (RGB8, the profile's
    /// frame size, frame `f` of the stream is an edit of input frame `f`). Every 4 frames
    /// are encoded (TAE encoder, causal caches) and handed to the sampler; up to 3 wait for
    /// the next push. An error for a text-to-video stream, a partial frame, or after
    /// [`Stream::end_input`].
    pub fn push_video_frames(&mut self, rgb: &[u8]) -> Result<()> {
        let (w, h) = self.frame_size();
        let frame = w * h * 3;
        let Some(input) = self.input.as_ref() else {
            return Err(Error::Invalid(
                "push_video_frames: this stream is text-to-video; start it with \
                 Engine::video_stream to edit a video"
                    .into(),
            ));
        };
        if let Some(end) = &input.ended {
            return Err(Error::Invalid(format!(
                "push_video_frames: the input video was ended (end_input) after {} frames; \
                 no more frames can be pushed",
                end.frames
            )));
        }
        if rgb.len() % frame != 0 {
            return Err(Error::shape(
                "input video frames",
                format!("whole {w}x{h} RGB8 frames of {frame} bytes"),
                format!("{} bytes", rgb.len()),
            ));
        }
        self.encode_input(rgb)
    }

    /// Queues whole frames `rgb`, encoding every complete group of 4 (the Wan VAE encoder's
    /// first group is the stream's first frame alone).
    fn encode_input(&mut self, rgb: &[u8]) -> Result<()> {
        let (w, h) = self.frame_size();
        let frame = w * h * 3;
        let Some(input) = self.input.as_mut() else {
            return Ok(());
        };
        if rgb.len() < frame {
            return Ok(());
        }
        for f in rgb.chunks_exact(frame) {
            // The stream's first frame has none before it: no motion.
            input.motion.push(motion::frame_motion(f, &input.last));
            input.last.clear();
            input.last.extend_from_slice(f);
        }
        input.pending.extend_from_slice(rgb);
        input.pushed += (rgb.len() / frame) as u64;
        let whole = input.encoder.frames_ready(input.pending.len() / frame);
        // The Wan VAE encoder at the stream's start makes a latent frame of one video frame.
        let lone_first = input.encoder.frames_for(1) == 1;
        if whole > 0 {
            let latents = input.encoder.encode_rgb(&input.pending[..whole * frame])?;
            input.pending.drain(..whole * frame);
            let motion = motion::latent_motion(&input.motion[..whole], lone_first);
            input.motion.drain(..whole);
            self.sampler.push_input(&latents, &motion)?;
        }
        Ok(())
    }

    /// Video-to-video: the input video ended with the frames pushed so far (`N`, at least
    /// one). From now on the stream repeats the last input frame wherever it still needs
    /// input (the rest of a group of 4 frames, of a chunk, StreamDiT's look-ahead), so
    /// nothing more is pushed, and it writes exactly `N` output frames: the chunk holding
    /// output frame `N - 1` is the last, cut after that frame ([`InputEnd`] says how many
    /// chunks and frames). Then [`Stream::next_frames`] returns 0 frames and
    /// [`Stream::step`] a named error. Calling it again returns the same end.
    pub fn end_input(&mut self) -> Result<InputEnd> {
        let fpc = self.frames_per_chunk();
        let startup = self.decoder.startup_frames();
        let per_chunk = 4 * self.chunk_frames;
        let Some(input) = self.input.as_mut() else {
            return Err(Error::Invalid(
                "end_input: this stream is text-to-video; it has no input video to end".into(),
            ));
        };
        if let Some(end) = &input.ended {
            return Ok(end.clone());
        }
        if input.pushed == 0 {
            return Err(Error::Invalid(
                "end_input: no input video frame was pushed; a video-to-video stream needs at \
                 least one"
                    .into(),
            ));
        }
        let input_startup = input.encoder.input_startup_frames();
        let end = InputEnd::new(input.pushed, fpc, startup, per_chunk, input_startup);
        input.ended = Some(end.clone());
        Ok(end)
    }

    /// Video-to-video: the input's end, once [`Stream::end_input`] was called.
    pub fn input_end(&self) -> Option<&InputEnd> {
        self.input.as_ref().and_then(|i| i.ended.as_ref())
    }

    /// Video-to-video: input frames the stream added by repeating the last one after the
    /// input's end.
    pub fn input_frames_repeated(&self) -> u64 {
        self.input.as_ref().map_or(0, |i| i.repeated)
    }

    /// Whether the input ended and every output frame it implies was emitted.
    pub fn finished(&self) -> bool {
        self.input_end()
            .is_some_and(|e| self.chunks_emitted >= e.chunks)
    }

    /// After the input's end: pushes repeats of the last frame while the sampler needs input.
    fn repeat_last_input(&mut self) -> Result<()> {
        let Some(input) = self.input.as_ref().filter(|i| i.ended.is_some()) else {
            return Ok(());
        };
        let (w, h) = self.frame_size();
        let pending = input.pending.len() / (w * h * 3);
        let latents = self.sampler.input_latents_needed() as usize;
        let need = input.encoder.frames_for(latents).saturating_sub(pending);
        if need == 0 {
            return Ok(());
        }
        let last = input.last.clone();
        let frames: Vec<u8> = (0..need).flat_map(|_| last.iter().copied()).collect();
        self.encode_input(&frames)?;
        if let Some(input) = self.input.as_mut() {
            input.repeated += need as u64;
        }
        Ok(())
    }

    /// Video-to-video: input video frames still to push before the next model call can run
    /// (StreamDiT: the first call needs the first `B * 4` frames, each pop the next chunk's
    /// `c * 4`; Wan: each chunk its `c * 4` before it starts); 0 for text-to-video and after
    /// [`Stream::end_input`].
    pub fn input_frames_needed(&self) -> usize {
        let Some(input) = self.input.as_ref() else {
            return 0;
        };
        if input.ended.is_some() {
            // The stream repeats the last frame itself.
            return 0;
        }
        let (w, h) = self.frame_size();
        let pending = input.pending.len() / (w * h * 3);
        let latents = self.sampler.input_latents_needed() as usize;
        input.encoder.frames_for(latents).saturating_sub(pending)
    }

    /// Video-to-video, Wan family: adaptive noise (docs/wan.md "Adaptive noise",
    /// StreamDiffusionV2's motion-aware noise controller): from the second chunk on, each
    /// chunk starts at its own noise level, lowered below the strength by up to 0.1 as its
    /// input frames move more ([`motion::NoiseController`]). Only before the first model call;
    /// an error for text-to-video, StreamDiT, or a schedule whose timesteps are not
    /// `1000 sigma`.
    pub fn set_adaptive_noise(&mut self) -> Result<()> {
        if self.input.is_none() {
            return Err(Error::Invalid(
                "adaptive noise: this stream is text-to-video; it needs an input video \
                 (Engine::video_stream)"
                    .into(),
            ));
        }
        self.sampler.set_adaptive_noise()
    }

    /// Video-to-video: the noise level (sigma) the last started chunk began at, `None` where
    /// the family has no per-chunk level (StreamDiT) or before the first chunk.
    pub fn chunk_noise_level(&self) -> Option<f64> {
        self.sampler.chunk_noise_level()
    }

    /// Video-to-video: the input's encoder and where it runs ("TAEHV, CPU, f32", "TAEHV on
    /// the device", "Wan VAE encoder, CPU, f32", "Wan VAE encoder on the device"); `None`
    /// for text-to-video.
    pub fn input_encoder_name(&self) -> Option<&'static str> {
        self.input.as_ref().map(|i| i.encoder.name())
    }

    /// Video-to-video: the input video frames the first chunk of input takes fewer than the
    /// others (3 for the Wan VAE encoder, whose first latent frame is the first video frame
    /// alone; else 0, and 0 for text-to-video).
    pub fn input_startup_frames(&self) -> usize {
        self.input
            .as_ref()
            .map_or(0, |i| i.encoder.input_startup_frames())
    }

    /// Video-to-video: input video frames pushed so far.
    pub fn input_frames_pushed(&self) -> u64 {
        self.input.as_ref().map_or(0, |i| i.pushed)
    }

    /// Switches the prompt; it takes effect at the next model call (StreamDiT, the buffer
    /// is kept) or at the next chunk (the Wan family, with a re-cache where the profile says). The
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
        self.sampler.check_text(&text)?;
        self.prompt = Arc::new(text);
        self.pending = None;
        self.text_changed = true;
        Ok(())
    }

    /// Runs model calls until the next chunk is clean and returns its latents `[c, C, H, W]`.
    pub fn next_latents(&mut self) -> Result<&[f32]> {
        while !self.step()? {}
        self.sampler.prefetch()?;
        Ok(&self.chunk)
    }

    /// Runs exactly one model call (one micro-step of StreamDiT's buffer, one denoising
    /// step of a Wan chunk); returns whether it finished a chunk, whose latents
    /// [`Stream::chunk_latents`] then holds and [`Stream::decode_chunk`] decodes.
    pub fn step(&mut self) -> Result<bool> {
        if let Some(end) = self.input_end().filter(|_| self.finished()) {
            return Err(Error::Invalid(format!(
                "stream: the input video ended after {} frames and all {} chunks holding their \
                 edits were emitted; there is nothing more to compute",
                end.frames, end.chunks
            )));
        }
        self.repeat_last_input()?;
        let _range = crate::nvtx::Range::push(format_args!("step {}", self.sampler.calls()));
        if self.text_changed {
            self.encode_pending()?;
            self.sampler.set_text(&self.prompt)?;
            self.text_changed = false;
        }
        let call = self.sampler.calls();
        let popped = self.sampler.step(&mut self.chunk, self.trace.as_mut());
        let popped = popped.map_err(|e| self.at_call(call, e))?;
        if popped {
            self.check_chunk()?;
            if let Some(t) = self.trace.as_mut() {
                let [c, h, w] = self.frame;
                let shape = vec![self.chunk_frames, c, h, w];
                t.push(
                    format!("chunk.{}", self.chunks_emitted),
                    shape,
                    self.chunk.clone(),
                );
            }
            self.chunks_emitted += 1;
        }
        Ok(popped)
    }

    /// A non-finite value found while computing model call `call` (with per-op checks on),
    /// placed in the stream: which call and which chunk it was computing.
    fn at_call(&self, call: u64, e: Error) -> Error {
        match e {
            Error::Backend { backend, op, msg } if msg.contains("not finite") => Error::Backend {
                backend,
                op,
                msg: format!(
                    "{msg} (model call {call} of the stream, computing chunk {})",
                    self.chunks_emitted
                ),
            },
            e => e,
        }
    }

    /// An error naming the chunk when the chunk just finished holds NaN or infinity (a
    /// guidance scale or weights that overflow f32): the stream stops rather than decode it.
    fn check_chunk(&self) -> Result<()> {
        match first_non_finite(&self.chunk) {
            None => Ok(()),
            Some((i, x)) => {
                let [c, h, w] = self.frame;
                let shape = [self.chunk_frames, c, h, w];
                Err(Error::Invalid(format!(
                    "stream: chunk {} (after {} model calls) turned non-finite: latents hold {}; \
                     the stream stops here. Turn on per-op checks (`--check-ops`, \
                     Stream::set_check_ops) to find the first op that produced it",
                    self.chunks_emitted,
                    self.sampler.calls(),
                    describe_non_finite(x, i, &shape)
                )))
            }
        }
    }

    /// Turns on (or off) checking every op's output for NaN and infinity, so that a stream
    /// turning non-finite names the first op that produced such a value (slow; the CPU
    /// backend, both families).
    pub fn set_check_ops(&mut self, on: bool) -> Result<()> {
        self.sampler.set_check_ops(on)
    }

    /// Starts (or stops) recording what the sampler draws and emits from now on: every
    /// noise tensor and every finished chunk (names in `docs/wan.md` section 6 and the
    /// README's `--trace`). Set it before the first step to record the initial noise.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on.then(Trace::default);
    }

    /// The recorded tensors, in order, leaving the record empty (still recording).
    pub fn take_trace(&mut self) -> Vec<(String, Tensor)> {
        self.trace
            .as_mut()
            .map(|t| std::mem::take(&mut t.entries))
            .unwrap_or_default()
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
        let frame = w * h * 3;
        if let Some(end) = self.input_end() {
            // The last chunk is cut after the input's last frame.
            let keep = end.keep(self.chunks_emitted.saturating_sub(1));
            out.truncate(before + keep * frame);
        }
        let n = (out.len() - before) / frame;
        self.frames_emitted += n as u64;
        Ok(n)
    }

    /// Produces the next chunk and appends its decoded RGB8 frames to `out`; returns how many
    /// video frames were appended.
    /// After the input's end ([`Stream::end_input`]) the last chunk gives fewer frames, and
    /// once every output frame was written this returns 0 and computes nothing.
    pub fn next_frames(&mut self, out: &mut Vec<u8>) -> Result<usize> {
        if self.finished() {
            return Ok(0);
        }
        self.next_latents()?;
        self.decode_chunk(out)
    }

    /// Waits until the backend finished the work of earlier steps (a step that pops no chunk
    /// may return while the device is still computing it).
    pub fn synchronize(&mut self) -> Result<()> {
        self.sampler.synchronize()
    }

    /// Whether model calls replay a captured device graph (`None`: the backend has none).
    pub fn graphs(&self) -> Option<bool> {
        self.sampler.graphs()
    }

    /// Turns device graph replay on or off (eager launches); an error on a backend without
    /// graphs, such as the CPU backend.
    pub fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.sampler.set_graphs(on)
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
        self.sampler.calls()
    }

    /// Model calls so far that a device had started ahead, while the chunk before was
    /// decoded ([`Stream::next_frames`]; counted by the Wan family's device backend, 0
    /// elsewhere).
    pub fn prefetched_calls(&self) -> u64 {
        self.sampler.prefetched_calls()
    }

    /// Video frames decoded so far ([`Stream::decode_chunk`], [`Stream::next_frames`]).
    pub fn frames_emitted(&self) -> u64 {
        self.frames_emitted
    }

    /// Chunks emitted so far.
    pub fn chunks_emitted(&self) -> u64 {
        self.chunks_emitted
    }

    /// Model calls before the first chunk is emitted (StreamDiT: prefill plus one stage;
    /// Wan: the steps of one chunk).
    pub fn calls_to_first_chunk(&self) -> u64 {
        self.sampler.calls_to_first_chunk()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn guidance(&self) -> f32 {
        self.guidance
    }

    pub fn backend_name(&self) -> &'static str {
        self.sampler.backend_name()
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
    check_finite("text condition `text`", &t.text.shape, &t.text.data)?;
    check_finite("text condition `text_mask`", &[len], &t.mask)?;
    crate::math::validate_mask(&t.mask, 1, len)
}
