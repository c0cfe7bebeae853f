//! The Wan family's causal few-step sampler (docs/wan.md sections 5 and 6). Chunk `k`
//! (absolute latent frames `f0 = k c .. f0 + c - 1`) starts from fresh noise and is
//! denoised in `m` steps, each a model call over the KV cache and the chunk itself:
//!
//! ```text
//! x = eps_0
//! for s in 0..m:   v = model(x, t_s); x0 = x - sigma_s v (f64, stored f32)
//!                  if s < m-1: x = (1 - sigma_{s+1}) x0 + sigma_{s+1} eps_{s+1} (f32)
//! emit x0; model(x0, context_timestep) writes the chunk into the cache
//! ```
//!
//! Before a chunk's first step, frames after the sink are evicted until the chunk fits the
//! window (an endless stream: positions keep growing, keys keep their rotation). A prompt
//! switch takes effect at the next chunk; with `recache` (LongLive) the last
//! `R = min(window, f0)` clean frames are first re-run under the new prompt, keeping the old
//! sink when `f0 > window`. Noise is Philox with the counter layout of docs/wan.md section 6.
//!
//! After a chunk is emitted, `prefetch` does the next chunk's eviction and draws its first
//! noise early and hands its first call to the backend, which may start it while the chunk
//! is decoded (docs/wan.md section 13). Unless a prompt switch is already waiting: then
//! the call's text and cache are not known yet. A switch arriving later makes the backend
//! drop the call; the early eviction changes nothing, as a re-cache keeps only the sink.
//! A video-to-video stream starts nothing early (its chunks start from their encoded input).
//!
//! Video-to-video (SDEdit, docs/wan.md "Video-to-video"): with a strength `s < 1` the
//! sampler starts every chunk at step `k`, the first step of the list with `sigma_k <= s`,
//! from `x = (1 - sigma_k) z + sigma_k eps_k` (`z` the chunk's encoded input latents) and
//! runs steps `k .. m-1`; the KV cache is written as in text-to-video. `k = 0` (strength 1,
//! `sigma_0 = 1`) starts from `eps_0` exactly as text-to-video does. With adaptive noise
//! (docs/wan.md "Adaptive noise") chunk `j` has a level `l_j` of its own
//! ([`super::motion::NoiseController`]): it starts at `k = start_step(l_j)` from
//! `x = (1 - l_j) z + l_j eps_k`, its first call runs at sigma `l_j` (timestep `1000 l_j`) in
//! place of step `k`'s, and steps `k+1 .. m-1` follow as above.

use std::collections::VecDeque;
use std::sync::Arc;

use super::motion::NoiseController;
use super::{Sampler, Trace};
use crate::backend::CausalBackend;
use crate::error::{Error, Result};
use crate::model::wan::WanConfig;
use crate::rng;
use crate::text::TextInput;

pub(crate) struct CausalSampler {
    backend: Box<dyn CausalBackend>,
    chunk_frames: usize,
    window: usize,
    sink: usize,
    recache: bool,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    context_timestep: f64,
    seed: u64,
    /// Latent frame shape `[C, H, W]` and its element count.
    frame: [usize; 3],
    frame_elems: usize,
    /// The chunk in progress and its next denoising step (0: not started).
    chunk: u64,
    step: usize,
    x: Vec<f32>,
    x0: Vec<f32>,
    v: Vec<f32>,
    /// A text condition waiting for the next chunk, and whether one was ever applied.
    pending: Option<Arc<TextInput>>,
    has_text: bool,
    /// The last `window` clean frames, for a re-cache.
    history: VecDeque<Vec<f32>>,
    calls: u64,
    /// The next chunk's first noise, drawn by `prefetch`.
    next_noise: Option<Vec<f32>>,
    /// Video-to-video: the input, when the stream edits a video.
    input: Option<CausalInput>,
    /// Adaptive noise: the level of the started chunk's first call, until it runs.
    first_level: Option<f64>,
}

/// A video-to-video stream's input side.
struct CausalInput {
    /// The strength and the step every chunk starts at (without adaptive noise).
    strength: f64,
    start: usize,
    /// Encoded input latent frames not yet used, their motions, and how many were pushed.
    latents: VecDeque<Vec<f32>>,
    motion: VecDeque<f32>,
    pushed: u64,
    /// Adaptive noise: the controller of each chunk's level.
    adaptive: Option<NoiseController>,
    /// The level the last started chunk began at.
    level: Option<f64>,
}

/// The step a chunk of an SDEdit stream with `strength` starts at: the first of `sigmas`
/// (decreasing) at or below `strength`, the last step when every sigma is above it.
pub fn start_step(sigmas: &[f64], strength: f64) -> usize {
    sigmas
        .iter()
        .position(|&s| s <= strength)
        .unwrap_or(sigmas.len().saturating_sub(1))
}

impl CausalSampler {
    /// The sampler of `w` over `backend`, its cache emptied.
    pub(crate) fn new(
        mut backend: Box<dyn CausalBackend>,
        w: &WanConfig,
        seed: u64,
    ) -> CausalSampler {
        backend.clear();
        let (timesteps, sigmas) = w.schedule();
        let frame = [w.latent_channels, w.latent_height, w.latent_width];
        let n = w.chunk_frames * w.frame_elems();
        CausalSampler {
            backend,
            chunk_frames: w.chunk_frames,
            window: w.window,
            sink: w.sink,
            recache: w.recache,
            timesteps,
            sigmas,
            context_timestep: w.context_timestep,
            seed,
            frame,
            frame_elems: w.frame_elems(),
            chunk: 0,
            step: 0,
            x: vec![0.0; n],
            x0: vec![0.0; n],
            v: vec![0.0; n],
            pending: None,
            has_text: false,
            history: VecDeque::new(),
            calls: 0,
            next_noise: None,
            input: None,
            first_level: None,
        }
    }

    /// Turns the sampler into video-to-video with `strength` in `(0, 1]`: every chunk
    /// starts at [`start_step`] from its input latents ([`Sampler::push_input`]), noised.
    /// Only before the first call.
    pub(crate) fn set_strength(&mut self, strength: f64) -> Result<()> {
        let strength = super::schedule::check_strength(strength)?;
        if self.calls > 0 {
            return Err(Error::Invalid(
                "video-to-video: the strength is set before the first model call".into(),
            ));
        }
        self.input = Some(CausalInput {
            strength,
            start: start_step(&self.sigmas, strength),
            latents: VecDeque::new(),
            motion: VecDeque::new(),
            pushed: 0,
            adaptive: None,
            level: None,
        });
        Ok(())
    }

    /// Whether every timestep is `1000 sigma` (a warped schedule), which lets a chunk start
    /// at a level between the list's steps.
    fn timesteps_are_sigmas(&self) -> bool {
        self.timesteps
            .iter()
            .zip(&self.sigmas)
            .all(|(&t, &s)| (t - 1000.0 * s).abs() <= 1e-9 * t.abs().max(1.0))
    }

    fn f0(&self) -> u64 {
        self.chunk * self.chunk_frames as u64
    }

    /// The noise of the chunk's frames at `step` (step 0 as `prefetch` drew it, if it did),
    /// recorded as `noise.{chunk}.{step}`.
    fn noise(&mut self, step: usize, trace: Option<&mut Trace>) -> Vec<f32> {
        let drawn = if step == 0 { self.next_noise.take() } else { None };
        let z = drawn.unwrap_or_else(|| {
            let mut z = vec![0.0; self.chunk_frames * self.frame_elems];
            for (i, frame) in z.chunks_mut(self.frame_elems).enumerate() {
                rng::wan_noise_frame(self.seed, self.f0() + i as u64, step as u32, frame);
            }
            z
        });
        if let Some(t) = trace {
            let [c, h, w] = self.frame;
            let shape = vec![self.chunk_frames, c, h, w];
            t.push(format!("noise.{}.{step}", self.chunk), shape, z.clone());
        }
        z
    }

    /// What happens before a chunk's first step: a pending prompt (with its re-cache),
    /// eviction, the initial noise.
    fn start_chunk(&mut self, trace: Option<&mut Trace>) -> Result<()> {
        let f0 = self.f0();
        if let Some(text) = self.pending.take() {
            self.backend.set_text(&text.text, &text.mask)?;
            let switch = self.has_text;
            self.has_text = true;
            if switch && self.recache && f0 > 0 {
                self.recache_window(f0)?;
            }
        }
        self.make_room()?;
        let Some(input) = self.input.as_mut() else {
            self.x = self.noise(0, trace);
            return Ok(());
        };
        let (c, k) = (self.chunk_frames, input.start);
        if input.latents.len() < c {
            return Err(Error::Invalid(format!(
                "video-to-video: chunk {} needs input latent frames {f0}..{} (video frames \
                 {}..{}), but only {} were pushed; push more input video frames first",
                self.chunk,
                f0 + c as u64,
                4 * f0,
                4 * (f0 + c as u64),
                input.pushed
            )));
        }
        let z: Vec<f32> = input.latents.drain(..c).flatten().collect();
        let motion = input.motion.drain(..c).fold(0.0, f32::max);
        let (sigma, k) = match input.adaptive.as_mut() {
            None => (self.sigmas[k], k),
            Some(a) => {
                // The chunk's own level; its first call runs there in place of step k's.
                let level = a.next_level(motion);
                self.first_level = Some(level);
                (level, start_step(&self.sigmas, level))
            }
        };
        input.level = Some(sigma);
        self.x = self.noise(k, trace);
        if sigma < 1.0 {
            let s = sigma as f32;
            for (x, &z) in self.x.iter_mut().zip(&z) {
                *x = (1.0 - s) * z + s * *x;
            }
        }
        self.step = k;
        Ok(())
    }

    /// Evicts frames after the sink until the chunk fits the window.
    fn make_room(&mut self) -> Result<()> {
        let held = self.backend.cached_frames().len();
        if held + self.chunk_frames > self.window {
            self.backend.evict(held + self.chunk_frames - self.window)?;
        }
        Ok(())
    }

    /// LongLive's re-cache of the last `min(window, f0)` clean frames under the new prompt.
    fn recache_window(&mut self, f0: u64) -> Result<()> {
        let r = (self.window as u64).min(f0) as usize;
        let frames: Vec<f32> = self
            .history
            .iter()
            .skip(self.history.len() - r)
            .flatten()
            .copied()
            .collect();
        let keep = if f0 > self.window as u64 { self.sink } else { 0 };
        self.backend
            .recache(&frames, self.context_timestep as f32, f0 - r as u64, keep)
    }
}

impl Sampler for CausalSampler {
    fn check_text(&self, t: &TextInput) -> Result<()> {
        let m = &self.backend.graph().graph.config;
        super::check_text(t, m.text_len, m.text_dim)
    }

    fn set_text(&mut self, prompt: &TextInput) -> Result<()> {
        self.check_text(prompt)?;
        self.pending = Some(Arc::new(prompt.clone()));
        Ok(())
    }

    fn step(&mut self, chunk: &mut [f32], mut trace: Option<&mut Trace>) -> Result<bool> {
        if self.step == 0 {
            // Not started (a started chunk's step is at least 1, or `k > 0` for SDEdit).
            self.start_chunk(trace.as_deref_mut())?;
        }
        let (s, m) = (self.step, self.timesteps.len());
        // Adaptive noise: a chunk's first call at its own level (timestep `1000 sigma`).
        let (timestep, sigma) = match self.first_level.take() {
            Some(level) => (1000.0 * level, level),
            None => (self.timesteps[s], self.sigmas[s]),
        };
        let t = vec![timestep as f32; self.chunk_frames];
        let f0 = self.f0();
        self.backend.denoise(&self.x, &t, f0, &mut self.v)?;
        self.calls += 1;
        for ((o, &x), &v) in self.x0.iter_mut().zip(&self.x).zip(&self.v) {
            *o = (f64::from(x) - sigma * f64::from(v)) as f32;
        }
        if s + 1 < m {
            let eps = self.noise(s + 1, trace);
            let sn = self.sigmas[s + 1] as f32;
            for ((x, &x0), &e) in self.x.iter_mut().zip(&self.x0).zip(&eps) {
                *x = (1.0 - sn) * x0 + sn * e;
            }
            self.step += 1;
            return Ok(false);
        }
        self.backend
            .commit(&self.x0, self.context_timestep as f32, f0)?;
        if self.recache {
            for frame in self.x0.chunks(self.frame_elems) {
                self.history.push_back(frame.to_vec());
            }
            while self.history.len() > self.window {
                self.history.pop_front();
            }
        }
        super::super::backend::check_len("chunk", chunk.len(), self.x0.len())?;
        chunk.copy_from_slice(&self.x0);
        self.chunk += 1;
        self.step = 0;
        Ok(true)
    }

    fn prefetch(&mut self) -> Result<()> {
        // A video-to-video chunk starts from its encoded input at a later step; it is not
        // started early.
        if self.step != 0 || !self.has_text || self.pending.is_some() || self.input.is_some() {
            return Ok(());
        }
        self.make_room()?;
        let x = self.noise(0, None);
        let t = vec![self.timesteps[0] as f32; self.chunk_frames];
        self.backend.prefetch(&x, &t, self.f0())?;
        self.next_noise = Some(x);
        Ok(())
    }

    fn prefetched_calls(&self) -> u64 {
        self.backend.prefetched_calls()
    }

    fn calls(&self) -> u64 {
        self.calls
    }

    fn calls_to_first_chunk(&self) -> u64 {
        let k = self.input.as_ref().map_or(0, |i| i.start);
        (self.timesteps.len() - k) as u64
    }

    fn set_adaptive_noise(&mut self) -> Result<()> {
        if self.calls > 0 {
            return Err(Error::Invalid(
                "adaptive noise: it is turned on before the first model call".into(),
            ));
        }
        if !self.timesteps_are_sigmas() {
            return Err(Error::Invalid(format!(
                "adaptive noise: a chunk starts at a level between the schedule's steps with \
                 timestep 1000 sigma, which needs a warped schedule (timesteps {:?}, sigmas {:?})",
                self.timesteps, self.sigmas
            )));
        }
        let Some(input) = self.input.as_mut() else {
            return Err(Error::Invalid(
                "adaptive noise: this stream is text-to-video; it needs an input video".into(),
            ));
        };
        input.adaptive = Some(NoiseController::new(input.strength));
        Ok(())
    }

    fn chunk_noise_level(&self) -> Option<f64> {
        self.input.as_ref().and_then(|i| i.level)
    }

    fn push_input(&mut self, latents: &[f32], motion: &[f32]) -> Result<()> {
        let fe = self.frame_elems;
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
        let n = latents.len() / fe;
        if motion.len() != n {
            return Err(Error::shape(
                "input latents' motion",
                format!("one value per latent frame ({n})"),
                format!("{} values", motion.len()),
            ));
        }
        for frame in latents.chunks(fe) {
            input.latents.push_back(frame.to_vec());
        }
        input.motion.extend(motion);
        input.pushed += (latents.len() / fe) as u64;
        Ok(())
    }

    fn input_latents_needed(&self) -> u64 {
        match &self.input {
            // Before a chunk starts it needs its `c` frames; inside a chunk nothing more.
            Some(i) if self.step == 0 => {
                (self.chunk_frames as u64).saturating_sub(i.latents.len() as u64)
            }
            _ => 0,
        }
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    fn graphs(&self) -> Option<bool> {
        self.backend.graphs()
    }

    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        self.backend.set_check_ops(on)
    }

    fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.backend.set_graphs(on)
    }
}
