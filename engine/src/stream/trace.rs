//! The golden-test hook: what a stream's sampler drew and produced, by name, for
//! `streamdit generate --trace F.safetensors`.

use crate::tensor::Tensor;

/// Named tensors in the order they were recorded: StreamDiT's noise frames
/// `noise.{global frame}` `[C, H, W]`; the Wan sampler's `noise.{chunk}.{step}`
/// `[c, C, H, W]` (step 0 the initial noise, step `k` the re-noise before step `k`); every
/// emitted chunk's clean latents `chunk.{k}` `[c, C, H, W]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    pub(crate) entries: Vec<(String, Tensor)>,
}

impl Trace {
    pub(crate) fn push(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        self.entries.push((name, Tensor { shape, data }));
    }
}
