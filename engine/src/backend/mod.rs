//! Backends execute the model graph. The stream drives every backend through [`Backend`],
//! so a new backend (CUDA, emulated CUDA) plugs in without touching the sampler.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::model::graph::Graph;
use crate::tensor::Tensor;

/// One streaming step: a model call on the whole buffer, the Euler update
/// `x[f] += dtau[f] * v[f]`, and optionally popping the oldest chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct StepParams {
    /// Noise level of every buffer frame `[F]`.
    pub tau: Vec<f32>,
    /// Euler step of every buffer frame `[F]` (zero for frames that stay).
    pub dtau: Vec<f32>,
    /// After the update: copy chunk 0 out, move chunk `j+1` to `j`, and fill the last chunk
    /// with the noise of the global latent frames starting at this number.
    pub pop: Option<u64>,
}

/// An executor of the model graph that owns a latent buffer.
pub trait Backend: Send {
    /// Short name for logs (`cpu`, `cuda`, `emu`).
    fn name(&self) -> &'static str;

    /// The graph this backend executes.
    fn graph(&self) -> &Graph;

    /// Sets the text condition of every branch: `text [B*Lt, Dtxt]` and `mask [B*Lt]`,
    /// branch 0 the prompt and branch 1 (with guidance) the negative prompt. Computes the
    /// context and every layer's cross-attention K/V; later calls reuse them.
    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()>;

    /// One model call: `v [F, C, H, W]` for latents `x [F, C, H, W]` at `tau [F]`, with
    /// guidance applied when the graph has two branches.
    fn forward(&mut self, x: &[f32], tau: &[f32], v: &mut [f32]) -> Result<()>;

    /// Fills the whole buffer with the noise of global frames `first_frame..first_frame+F`
    /// from `seed`; later pops draw their noise from the same seed.
    fn reset(&mut self, seed: u64, first_frame: u64) -> Result<()>;

    /// Runs one streaming step. When `step.pop` is set, the oldest `c` frames are popped into
    /// `popped`, whose length (`c * C*H*W`) gives the chunk size.
    fn step(&mut self, step: &StepParams, popped: &mut [f32]) -> Result<()>;

    /// Copies the latent buffer `[F, C, H, W]` out.
    fn read_buffer(&mut self, out: &mut [f32]) -> Result<()>;
}
