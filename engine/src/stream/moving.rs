//! StreamDiT's sampler: a moving buffer of latent frames at staggered noise levels. Every
//! model call advances the whole buffer one micro-step; at the end of a stage the clean
//! oldest chunk is popped and fresh noise enters at the new end (docs/streamdit.md section
//! 5). The buffer itself lives in the [`Backend`].

use std::sync::Arc;

use super::{Sampler, Schedule, Trace};
use crate::backend::{Backend, StepParams};
use crate::error::Result;
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
    /// Latent frame shape `[C, H, W]`, for the trace.
    frame: [usize; 3],
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
        })
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
            self.next_noise_frame += self.chunk_frames as u64;
        }
        Ok(s.pop)
    }

    fn prefetch(&mut self) -> Result<()> {
        // Let the device start the next call while this chunk is decoded; a prompt switch
        // before the next call makes the backend drop it (it is never committed).
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
