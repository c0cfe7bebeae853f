//! StreamDiT's sampler: a moving buffer of latent frames at staggered noise levels. Every
//! model call advances the whole buffer one micro-step; at the end of a stage the clean
//! oldest chunk is popped and fresh noise enters at the new end (docs/streamdit.md section
//! 5). The buffer itself lives in the [`Backend`].
//!
//! Video-to-video (same section) changes two things only: the schedule's boundaries are
//! remapped by the strength ([`Schedule::with_strength`]), and every frame the text-to-video
//! sampler fills with fresh noise `n` (all `B` frames before the first call, the pushed
//! chunk after each pop) is overwritten with `t0 * z_in + (1 - t0) * n`, `z_in` the encoded
//! input latent of the same global frame. The mix is computed here on the host from the
//! same numbered noise the backend drew, and written with [`Backend::write_frames`], so
//! every backend runs it.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Sampler, Schedule, Trace};
use crate::backend::{Backend, StepParams};
use crate::error::{Error, Result};
use crate::rng;
use crate::text::{self, TextInput};

pub(crate) struct MovingSampler {
    backend: Box<dyn Backend>,
    schedule: Schedule,
    /// The condition of the negative branch when guidance is on.
    negative: Option<Arc<TextInput>>,
    seed: u64,
    /// Model calls made so far.
    calls: u64,
    /// Global latent frame number of the next noise frame to enter the buffer.
    next_noise_frame: u64,
    chunk_frames: usize,
    /// Latent frame shape `[C, H, W]`.
    frame: [usize; 3],
    /// Video-to-video's input, when the stream edits a video.
    input: Option<VideoInput>,
}

/// The encoded input video of a video-to-video stream.
struct VideoInput {
    /// `t0 = 1 - strength` (f32: the mix is computed in f32).
    t0: f32,
    /// Buffer frames still holding plain noise that must get their input mix before the
    /// next call: `(buffer slot, first global frame, frames)`. All `B` at the start; the
    /// chunk a pop pushed afterwards. Deferred to the next call, so a chunk is emitted
    /// without waiting for the input of the chunk that replaces it.
    pending: Option<(usize, u64, usize)>,
    /// Input latents `[n, C, H, W]` of global latent frames `first..first + n`.
    latents: VecDeque<f32>,
    /// Global latent frame number of `latents`' first frame.
    first: u64,
}

impl MovingSampler {
    /// The sampler of `backend`, its buffer filled with the noise of `seed`.
    pub(crate) fn new(
        mut backend: Box<dyn Backend>,
        schedule: Schedule,
        negative: Option<Arc<TextInput>>,
        seed: u64,
        chunk_frames: usize,
        frame: [usize; 3],
    ) -> Result<MovingSampler> {
        backend.reset(seed, 0)?;
        Ok(MovingSampler {
            next_noise_frame: schedule.buffer_frames() as u64,
            backend,
            schedule,
            negative,
            seed,
            calls: 0,
            chunk_frames,
            frame,
            input: None,
        })
    }

    /// Turns the sampler into video-to-video with `strength` in `(0, 1]`: remaps the
    /// schedule and expects input latents ([`Sampler::push_input`]) before the calls that
    /// need them. Only before the first call.
    pub(crate) fn set_strength(&mut self, strength: f64) -> Result<()> {
        if self.calls > 0 {
            return Err(Error::Invalid(
                "video-to-video: the strength is set before the first model call".into(),
            ));
        }
        self.schedule = self.schedule.clone().with_strength(strength)?;
        self.input = Some(VideoInput {
            t0: (1.0 - strength) as f32,
            pending: Some((0, 0, self.schedule.buffer_frames())),
            latents: VecDeque::new(),
            first: 0,
        });
        Ok(())
    }

    fn frame_elems(&self) -> usize {
        self.frame.iter().product()
    }

    /// Overwrites buffer frames from `slot` with `t0 * z_in + (1 - t0) * n` for global
    /// frames `first..first + n`, and drops the input latents before `first + n`.
    fn mix_input(&mut self, slot: usize, first: u64, n: usize) -> Result<()> {
        let fe = self.frame_elems();
        let Some(input) = self.input.as_mut() else {
            return Ok(());
        };
        let have_end = input.first + (input.latents.len() / fe) as u64;
        if first < input.first || first + n as u64 > have_end {
            return Err(Error::Invalid(format!(
                "video-to-video: model call {} needs input latent frames {first}..{} (video \
                 frames {}..{}), but only latent frames {}..{have_end} are pushed: push the \
                 input video before stepping (Stream::input_frames_needed says how much)",
                self.calls,
                first + n as u64,
                first * 4,
                (first + n as u64) * 4,
                input.first,
            )));
        }
        let t0 = input.t0;
        let keep = 1.0 - t0;
        let skip = ((first - input.first) as usize) * fe;
        let mut mixed = vec![0.0f32; n * fe];
        for (k, out) in mixed.chunks_exact_mut(fe).enumerate() {
            rng::noise_frame(self.seed, first + k as u64, out);
            let z = input.latents.range(skip + k * fe..skip + (k + 1) * fe);
            for (o, &z) in out.iter_mut().zip(z) {
                *o = t0 * z + keep * *o;
            }
        }
        let drop = skip + n * fe;
        input.latents.drain(..drop);
        input.first = first + n as u64;
        self.backend.write_frames(slot, &mixed)
    }

    /// Writes the pending input mix (video-to-video) before a call; an error naming the
    /// missing input frames, before anything moves, when they were not pushed.
    fn apply_pending_mix(&mut self) -> Result<()> {
        let Some((slot, first, n)) = self.input.as_ref().and_then(|i| i.pending) else {
            return Ok(());
        };
        let need = self.input_latents_needed();
        if need > 0 {
            let end = first + n as u64;
            return Err(Error::Invalid(format!(
                "video-to-video: model call {} needs input latent frames {first}..{end} (video \
                 frames {}..{}); {need} latent frames are missing: push the input video first \
                 (Stream::input_frames_needed says how many frames)",
                self.calls,
                first * 4,
                end * 4
            )));
        }
        self.mix_input(slot, first, n)?;
        if let Some(input) = self.input.as_mut() {
            input.pending = None;
        }
        Ok(())
    }

    fn record_noise(&self, trace: &mut Trace, first: u64, frames: usize) {
        let [c, h, w] = self.frame;
        for f in first..first + frames as u64 {
            let mut z = vec![0.0; c * h * w];
            rng::noise_frame(self.seed, f, &mut z);
            trace.push(format!("noise.{f}"), vec![c, h, w], z);
        }
    }
}

impl Sampler for MovingSampler {
    fn check_text(&self, t: &TextInput) -> Result<()> {
        let g = self.backend.graph();
        super::check_text(t, g.config.text_len, g.config.text_dim)
    }

    fn set_text(&mut self, prompt: &TextInput) -> Result<()> {
        let branches: Vec<&TextInput> = std::iter::once(prompt)
            .chain(self.negative.as_deref())
            .collect();
        let (text, mask) = text::stack(&branches);
        self.backend.set_text(&text, &mask)
    }

    fn step(&mut self, chunk: &mut [f32], trace: Option<&mut Trace>) -> Result<bool> {
        let s = self.schedule.step(self.calls);
        self.apply_pending_mix()?;
        let params = StepParams {
            tau: s.tau,
            dtau: s.dtau,
            pop: s.pop.then_some(self.next_noise_frame),
        };
        if let Some(trace) = trace {
            if self.calls == 0 {
                self.record_noise(trace, 0, self.schedule.buffer_frames());
            }
            if s.pop {
                self.record_noise(trace, self.next_noise_frame, self.chunk_frames);
            }
        }
        self.backend.step(&params, chunk)?;
        self.calls += 1;
        if s.pop {
            let slot = self.schedule.buffer_frames() - self.chunk_frames;
            let (first, n) = (self.next_noise_frame, self.chunk_frames);
            if let Some(input) = self.input.as_mut() {
                input.pending = Some((slot, first, n));
            }
            self.next_noise_frame += self.chunk_frames as u64;
        }
        Ok(s.pop)
    }

    fn push_input(&mut self, latents: &[f32], _motion: &[f32]) -> Result<()> {
        let fe = self.frame_elems();
        let Some(input) = self.input.as_mut() else {
            return Err(Error::Invalid(
                "input video: this stream is text-to-video; start it with a strength \
                 (Engine::video_stream) to push input"
                    .into(),
            ));
        };
        if latents.len() % fe != 0 {
            return Err(Error::shape(
                "input latents",
                format!("whole latent frames of C*H*W = {fe} values"),
                format!("{} values", latents.len()),
            ));
        }
        input.latents.extend(latents.iter().copied());
        Ok(())
    }

    fn input_latents_needed(&self) -> u64 {
        let Some(input) = self.input.as_ref() else {
            return 0;
        };
        let Some((_, first, n)) = input.pending else {
            return 0;
        };
        let have_end = input.first + (input.latents.len() / self.frame_elems()) as u64;
        (first + n as u64).saturating_sub(have_end)
    }

    fn prefetch(&mut self) -> Result<()> {
        // Let the device start the next call while this chunk is decoded; a prompt switch
        // before the next call makes the backend drop it (it is never committed).
        // Video-to-video: the next call starts from the pushed chunk's input mix; without
        // its input there is nothing to start yet.
        if self.input_latents_needed() > 0 {
            return Ok(());
        }
        self.apply_pending_mix()?;
        let next = self.schedule.step(self.calls);
        self.backend.prefetch(&StepParams {
            tau: next.tau,
            dtau: next.dtau,
            pop: next.pop.then_some(self.next_noise_frame),
        })
    }

    fn calls(&self) -> u64 {
        self.calls
    }

    fn calls_to_first_chunk(&self) -> u64 {
        self.schedule.prefill_calls() + self.schedule.calls_per_chunk()
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn synchronize(&mut self) -> Result<()> {
        self.backend.synchronize()
    }

    fn graphs(&self) -> Option<bool> {
        self.backend.graphs()
    }

    fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.backend.set_graphs(on)
    }

    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        self.backend.set_check_ops(on)
    }
}
