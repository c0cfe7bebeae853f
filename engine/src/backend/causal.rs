//! [`CausalBackend`]: the executor interface of a causal streaming family (Wan, docs/wan.md
//! sections 5 and 6). StreamDiT's [`super::Backend`] owns a moving buffer and its Euler
//! update; a causal sampler instead owns its chunk's latents, noise and x0 arithmetic
//! (`crate::stream::causal`) and asks the backend for model calls over a KV cache that the
//! backend keeps (on a device it lives beside the weights). So this is a second trait, not
//! an extension of the first: the two samplers share no step semantics.
//!
//! The cache holds clean frames only, each with the absolute latent frame it came from; its
//! keys are stored rotated. The first `sink` frames a stream commits are never evicted.

use super::Clock;
use super::TimedStep;
use crate::error::Result;
use crate::model::wan::WanGraph;
use crate::tensor::Tensor;

/// An executor of a causal family's call graph with its KV cache.
pub trait CausalBackend: Send {
    /// Short name for logs (`cpu`).
    fn name(&self) -> &'static str;

    /// The graph of one chunk call (`c` frames).
    fn graph(&self) -> &WanGraph;

    /// Sets the text condition `text [Lt, Dtxt]` and `mask [Lt]` (rows whose mask is 0 are
    /// zeroed, docs/wan.md section 3): computes the context and every block's cross K/V.
    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()>;

    /// The absolute latent frame of every cached frame, oldest (the sink) first.
    fn cached_frames(&self) -> Vec<u64>;

    /// Drops the `n` oldest frames after the sink.
    fn evict(&mut self, n: usize) -> Result<()>;

    /// Empties the cache (a new stream).
    fn clear(&mut self);

    /// One denoising call: the flow `v [c, C, H, W]` of the chunk `x [c, C, H, W]` at
    /// timesteps `t [c]` whose first frame is absolute latent frame `f0`, attending to the
    /// cache and to itself. The cache is unchanged.
    fn denoise(&mut self, x: &[f32], t: &[f32], f0: u64, v: &mut [f32]) -> Result<()>;

    /// A hint that the next call is `denoise(x, t, f0, ..)`: a backend that runs
    /// asynchronously may launch it now, so the device works while the caller decodes the
    /// chunk it just received. The next [`CausalBackend::denoise`] takes it only when its
    /// inputs are these very values (bit for bit) and the cache is the same; anything else
    /// first (a text, an eviction, a commit, a re-cache, a clear, another call) drops it,
    /// and nothing of it reaches the cache. The default does nothing.
    fn prefetch(&mut self, _x: &[f32], _t: &[f32], _f0: u64) -> Result<()> {
        Ok(())
    }

    /// Denoising calls so far that took a call started by [`CausalBackend::prefetch`]
    /// (0 for a backend that never starts one).
    fn prefetched_calls(&self) -> u64 {
        0
    }

    /// The committing pass of a finished chunk: `x0 [c, C, H, W]` at timestep `t` (the
    /// profile's `context_timestep`) for every frame; its keys and values become the
    /// cache's newest frames.
    fn commit(&mut self, x0: &[f32], t: f32, f0: u64) -> Result<()>;

    /// LongLive's re-cache (docs/wan.md section 5.3): the `R` clean frames `frames
    /// [R, C, H, W]` (absolute frames `f0..f0+R`) run once at timestep `t`, unmasked, under
    /// the current text, attending to the first `keep` cached frames (the sink, kept with
    /// its old keys and values) and to the call's frames `[keep, R)`; afterwards the cache
    /// holds those `keep` frames and the call's frames `[keep, R)`.
    fn recache(&mut self, frames: &[f32], t: f32, f0: u64, keep: usize) -> Result<()>;

    /// [`CausalBackend::denoise`] run piece by piece, reporting every piece's time.
    fn denoise_timed(
        &mut self,
        x: &[f32],
        t: &[f32],
        f0: u64,
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock>;

    /// Whether calls replay captured device graphs: `None` for a backend without graphs.
    fn graphs(&self) -> Option<bool> {
        None
    }

    /// Turns graph capture and replay on or off; an error for a backend without graphs.
    fn set_graphs(&mut self, on: bool) -> Result<()> {
        Err(crate::error::Error::Invalid(format!(
            "{} backend: has no device graphs to turn {}",
            self.name(),
            if on { "on" } else { "off" }
        )))
    }

    /// Checks every op's output for NaN and infinity as calls run (see
    /// [`crate::Backend::set_check_ops`]); an error for a backend that cannot.
    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        if !on {
            return Ok(());
        }
        Err(crate::error::Error::Invalid(format!(
            "{} backend: cannot check each op's output for non-finite values",
            self.name()
        )))
    }
}
