//! Putting the DiT's weights on the device for [`CudaBackend`]: generated there by
//! `weights_init`, uploaded from host tensors, or streamed tensor by tensor from a
//! checkpoint, all stored as f16.

use half::f16;

use streamdit_kernels::elementwise as ew;

use super::CudaBackend;
use crate::backend::cuda::device::{backend_error, Device};
use crate::backend::cuda::lower::DeviceParams;
use crate::checkpoint::{Checkpoint, DType, Weights};
use crate::error::fmt_shape;
use crate::error::{Error, Result};
use crate::model::graph::Kind;
use crate::model::streamdit::schema::{checkpoint_tensors, Init};

pub(super) fn f16_bits(data: &[f32]) -> Vec<u16> {
    data.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
}

impl<D: Device> CudaBackend<D> {
    /// Generates every weight of the graph on the device (`weights_init`, one launch per
    /// tensor, or per row for the adaLN tables' per-row ranges).
    pub(super) fn init_weights(&mut self, seed: u64) -> Result<()> {
        let specs = checkpoint_tensors(&self.graph.config);
        let kernel = self.dev.kernel("elementwise", ew::KERNEL_WEIGHTS_INIT)?;
        for id in 0..self.graph.tensors.len() {
            let t = &self.graph.tensors[id];
            if t.kind != Kind::Weight {
                continue;
            }
            let label = format!("weights_init `{}`", t.name);
            let (index, spec) = specs
                .iter()
                .enumerate()
                .find(|(_, s)| s.name == t.name)
                .ok_or_else(|| Error::Invalid(format!("{label}: not in the checkpoint schema")))?;
            if spec.shape != t.shape {
                return Err(Error::shape(
                    &label,
                    fmt_shape(&spec.shape),
                    fmt_shape(&t.shape),
                ));
            }
            let n = spec.numel();
            let ranges: Vec<(usize, usize, f32, f32)> = match &spec.init {
                Init::Uniform { mean, half_width } => vec![(0, n, *mean, *half_width)],
                Init::Rows(rows) => {
                    let cols = n / rows.len().max(1);
                    rows.iter()
                        .enumerate()
                        .map(|(r, &(mean, hw))| (r * cols, cols, mean, hw))
                        .collect()
                }
            };
            let base = self.tensor_bytes(id)?.cast::<u16>()?;
            for (start, len, mean, half_width) in ranges {
                let out = base.slice(start, len)?;
                let config = ew::weights_init_config(start as u64, len)
                    .map_err(|e| Error::Invalid(format!("{label}: {e}")))?;
                let params = ew::WeightsInitParams {
                    out: out.addr() as *mut u16,
                    seed,
                    start: start as u64,
                    n: len as i64,
                    tensor: index as u32,
                    mean,
                    half_width,
                };
                // SAFETY: `out` holds exactly `len` f16 of this device's model allocation,
                // the elements [start, start + len) the launch writes.
                unsafe { self.dev.launch(kernel, config, &DeviceParams(params)) }
                    .map_err(|e| backend_error(self.dev.backend(), label.clone(), e.to_string()))?;
            }
        }
        self.dev.synchronize()
    }

    pub(super) fn upload_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        for id in 0..self.graph.tensors.len() {
            let t = &self.graph.tensors[id];
            if t.kind != Kind::Weight {
                continue;
            }
            let info = ckpt.check(&t.name, &t.shape)?;
            let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor `{}`: dtype {} is not f16, bf16 or f32",
                    t.name, info.dtype
                ))
            })?;
            let (_, raw) = ckpt.raw(&t.name)?;
            let bits: Vec<u16> = match dtype {
                DType::F16 => raw
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
                DType::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| {
                        let v = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                        f16::from_f32(v.to_f32()).to_bits()
                    })
                    .collect(),
                DType::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_bits())
                    .collect(),
            };
            let dst = self.tensor_bytes(id)?.cast::<u16>()?;
            self.dev.write(dst, &bits)?;
        }
        Ok(())
    }

    pub(super) fn upload_weights(&mut self, weights: &Weights) -> Result<()> {
        for id in 0..self.graph.tensors.len() {
            let t = &self.graph.tensors[id];
            if t.kind != Kind::Weight {
                continue;
            }
            let host = weights.get(&t.name)?;
            host.expect_shape(&t.name, &t.shape)?;
            let dst = self.tensor_bytes(id)?.cast::<u16>()?;
            self.dev.write(dst, &f16_bits(&host.data))?;
        }
        Ok(())
    }
}
