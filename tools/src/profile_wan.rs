//! `streamdit profile` for the Wan family: one chunk's denoising call over a KV cache
//! filled with committed frames (by default the steady state: a full window).

use streamdit::inspect::{wan_noise_frame, Graph};
use streamdit::{CausalBackend, Clock, Engine, Error, Result, TimedStep};

use crate::profile::Profiled;

struct WanCall {
    backend: Box<dyn CausalBackend>,
    x: Vec<f32>,
    t: Vec<f32>,
    f0: u64,
    v: Vec<f32>,
}

/// The call of chunk `f0 = cache frames` at the first timestep, after committing that many
/// frames of noise (the cache's contents do not change the call's cost).
pub(crate) fn call(
    engine: &Engine,
    prompt: &str,
    cache_frames: Option<usize>,
) -> Result<Box<dyn Profiled>> {
    let w = engine.profile().wan()?.clone();
    let c = w.chunk_frames;
    let cached = cache_frames.unwrap_or(w.window - c);
    if cached + c > w.window || cached % c != 0 {
        return Err(Error::Invalid(format!(
            "--cache-frames {cached}: expected a multiple of the chunk ({c}) of at most \
             window - chunk = {}",
            w.window - c
        )));
    }
    if cached + c < w.window {
        eprintln!(
            "streamdit: note: this call attends to {} latent frames; the FLOP and byte columns \
             count a full window of {} (plan's steady state), so attention rates read high",
            cached + c,
            w.window
        );
    }
    let mut backend = engine.create_causal_backend()?;
    let cond = engine.encode_prompt(prompt)?;
    backend.set_text(&cond.text, &cond.mask)?;
    let fe = w.frame_elems();
    let seed = engine.profile().run.seed;
    let noise = |f0: usize, step: u32| {
        let mut x = vec![0.0; c * fe];
        for (i, frame) in x.chunks_mut(fe).enumerate() {
            wan_noise_frame(seed, (f0 + i) as u64, step, frame);
        }
        x
    };
    for f0 in (0..cached).step_by(c) {
        backend.commit(&noise(f0, 0), w.context_timestep as f32, f0 as u64)?;
    }
    let t0 = w.schedule().0[0] as f32;
    Ok(Box::new(WanCall {
        x: noise(cached, 0),
        t: vec![t0; c],
        f0: cached as u64,
        v: vec![0.0; c * fe],
        backend,
    }))
}

impl Profiled for WanCall {
    fn name(&self) -> &'static str {
        self.backend.name()
    }
    fn graph(&self) -> Graph {
        self.backend.graph().graph.clone()
    }
    fn call(&mut self) -> Result<()> {
        self.backend.denoise(&self.x, &self.t, self.f0, &mut self.v)
    }
    fn timed(&mut self, on_step: &mut dyn FnMut(&TimedStep)) -> Result<Clock> {
        self.backend
            .denoise_timed(&self.x, &self.t, self.f0, &mut self.v, on_step)
    }
}
