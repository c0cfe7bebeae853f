//! Backends execute the model graph. The stream drives every backend through [`Backend`]
//! (StreamDiT's moving buffer) or [`CausalBackend`] (a causal family's calls over a KV
//! cache), so a new backend (CUDA, emulated CUDA) plugs in without touching the sampler.

pub mod causal;
pub mod cpu;
pub mod cuda;

pub use causal::CausalBackend;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::graph::Graph;
use crate::tensor::{check_finite, Tensor};

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

/// How [`Backend::forward_timed`] measured its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Host wall clock around each op (the CPU backend).
    HostWall,
    /// Device events recorded around each launch on the GPU.
    DeviceEvents,
    /// Events on the kernel emulator: host wall time of the emulation, not GPU time.
    Emulator,
}

impl Clock {
    pub fn name(self) -> &'static str {
        match self {
            Clock::HostWall => "host wall clock",
            Clock::DeviceEvents => "device events",
            Clock::Emulator => "emulator wall clock (not GPU time)",
        }
    }
}

/// One timed piece of a model call: an op on the CPU backend, a launch or copy on the CUDA
/// backend.
#[derive(Debug, Clone)]
pub struct TimedStep<'a> {
    /// What it computes (the graph op, or the launch's fused ops).
    pub label: &'a str,
    /// The call ops (indices into [`Graph::call_ops`]) it completes. Several steps that
    /// together compute the same ops (a repeat's copies) share the range: this step is part
    /// `part` of `parts`.
    pub ops: Range<usize>,
    pub part: usize,
    pub parts: usize,
    pub seconds: f64,
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

    /// A hint that the next [`Backend::step`] will have these parameters: a backend that
    /// runs asynchronously may start it now, so the device works while the caller decodes
    /// the chunk it just received, and must drop it if anything else (a new text, a reset,
    /// a different step) comes first. The default does nothing.
    fn prefetch(&mut self, _next: &StepParams) -> Result<()> {
        Ok(())
    }

    /// Copies the latent buffer `[F, C, H, W]` out.
    fn read_buffer(&mut self, out: &mut [f32]) -> Result<()>;

    /// Overwrites buffer frames `first..first + n` with `frames [n, C, H, W]`, after the
    /// work of earlier steps (video-to-video writes its input mixes so). Drops a step
    /// started by [`Backend::prefetch`].
    fn write_frames(&mut self, first: usize, frames: &[f32]) -> Result<()>;

    /// [`Backend::forward`] run eagerly piece by piece, reporting every piece's time to
    /// `on_step` in order; returns the clock the times come from.
    fn forward_timed(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock>;

    /// Waits until the work queued by earlier calls has finished (a step that pops nothing
    /// may return before the device is done). A no-op on a synchronous backend.
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    /// Whether steps replay a captured device graph; `None` for a backend without graphs.
    fn graphs(&self) -> Option<bool> {
        None
    }

    /// Turns on (or off) checking every op's output for NaN and infinity as a call runs,
    /// so that the first op producing one is named in the error (slow: one more pass over
    /// every activation). An error for a backend that cannot check its ops.
    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        if !on {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{} backend: cannot check each op's output for non-finite values (the cpu backend can)",
            self.name()
        )))
    }

    /// Turns graph replay of steps on or off; an error for a backend without graphs.
    fn set_graphs(&mut self, on: bool) -> Result<()> {
        Err(Error::Invalid(format!(
            "{} backend: has no device graphs to turn {}",
            self.name(),
            if on { "on" } else { "off" }
        )))
    }
}

/// The boundary check of a model call's inputs: NaN or infinity in `x` or `tau` is an
/// error naming the input (the lengths are checked separately).
pub(crate) fn check_call_inputs(graph: &Graph, x: &[f32], tau: &[f32]) -> Result<()> {
    let m = &graph.config;
    let x_shape = [
        m.latent_frames,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    ];
    check_finite("model call input `x`", &x_shape, x)?;
    check_finite("model call input `tau`", &[tau.len()], tau)
}

/// The boundary check of [`Backend::set_text`]'s arguments: their shapes, finite values
/// (NaN or infinity is an error naming the input) and a mask of zeros and ones with a real
/// token in every branch.
pub(crate) fn check_text_inputs(graph: &Graph, text: &Tensor, mask: &[f32]) -> Result<()> {
    let (b, lt) = (graph.batch, graph.config.text_len);
    text.expect_shape("text", &graph.tensors[graph.inputs.text].shape)?;
    check_len("text_mask", mask.len(), b * lt)?;
    check_finite("text condition `text`", &text.shape, &text.data)?;
    check_finite("text condition `text_mask`", &[mask.len()], mask)?;
    crate::math::validate_mask(mask, b, lt)
}

/// An error unless a slice argument holds exactly `want` values.
/// The check of [`Backend::write_frames`]' arguments: whole frames inside a buffer of
/// `buffer_frames` frames of `frame_elems` values.
pub(crate) fn check_frames_write(
    first: usize,
    frames: &[f32],
    frame_elems: usize,
    buffer_frames: usize,
) -> Result<()> {
    let n = frames.len() / frame_elems.max(1);
    if frames.len() % frame_elems.max(1) != 0 || first + n > buffer_frames {
        return Err(Error::shape(
            "buffer frames written",
            format!("whole frames of {frame_elems} values inside the buffer's {buffer_frames} frames"),
            format!("{} values from frame {first}", frames.len()),
        ));
    }
    check_finite("buffer frames written", &[n, frame_elems], frames)
}

pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(
            what,
            format!("{want} values"),
            format!("{got} values"),
        ));
    }
    Ok(())
}
