//! Where the encoders' linear layers run: the [`LinearExec`] trait, with the CPU in f32
//! ([`CpuLinear`], the `gemm` crate) here and a device through the engine's own FP16
//! tensor-core GEMM in `backend::cuda::text` (`DeviceLinear`, on the real GPU or the
//! kernel emulator).
//!
//! Only the linear layers (nearly all of an encoder's FLOPs) go to a device. Attention
//! stays on the CPU: the engine's attention kernels take neither an additive per-head bias
//! (T5's relative positions) nor a causal mask (CLIP), so they do not compute these
//! encoders' attention. A linear whose shape breaks the GEMM's contract (N, K multiples of
//! 8) also runs on the CPU.

use super::nn;
use crate::error::Result;
use crate::tensor::Tensor;

/// Executes `out [t, n] = x [t, k] W^T + b` for the encoders.
pub trait LinearExec: Send {
    fn linear(&mut self, x: &[f32], w: &Tensor, b: Option<&Tensor>, t: usize) -> Result<Vec<f32>>;
    /// `cpu`, `emu` or `cuda`.
    fn name(&self) -> &'static str;
}

/// The CPU in f32.
pub struct CpuLinear;

impl LinearExec for CpuLinear {
    fn linear(&mut self, x: &[f32], w: &Tensor, b: Option<&Tensor>, t: usize) -> Result<Vec<f32>> {
        Ok(nn::linear(x, w, b, t))
    }

    fn name(&self) -> &'static str {
        "cpu"
    }
}
