//! The text encoders' linear layers on a device (`--text-device backend`): the FP16
//! tensor-core GEMM (`gemm_bias_f32`: f16 inputs and weights, f32 accumulation and output)
//! behind the text room's [`LinearExec`].

use std::collections::HashMap;

use half::f16;
use streamdit_kernels::gemm;

use super::device::{Device, DeviceBuffer, Kernel};
use super::lower::DeviceParams;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::text::exec::LinearExec;
use crate::text::nn;

/// A device running the FP16 GEMM kernel. Weights are uploaded (as f16) on first use and
/// kept, keyed by the host tensor's address: use one per set of encoders that outlive it
/// (the [`Conditioner`](crate::text::Conditioner) owns both).
pub struct DeviceLinear<D: Device> {
    dev: D,
    kernel: Option<Kernel>,
    weights: HashMap<(usize, usize), DeviceBuffer<u16>>,
}

impl<D: Device> DeviceLinear<D> {
    pub fn new(dev: D) -> Self {
        DeviceLinear {
            dev,
            kernel: None,
            weights: HashMap::new(),
        }
    }

    fn to_f16(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&a| f16::from_f32(a).to_bits()).collect()
    }

    fn upload(&mut self, t: &Tensor) -> Result<DeviceBuffer<u16>> {
        let key = (t.data.as_ptr() as usize, t.data.len());
        if let Some(b) = self.weights.get(&key) {
            return Ok(*b);
        }
        let buf = self.dev.alloc::<u16>("text encoder weight", t.data.len())?;
        self.dev.write(buf, &Self::to_f16(&t.data))?;
        self.weights.insert(key, buf);
        Ok(buf)
    }
}

impl<D: Device> LinearExec for DeviceLinear<D> {
    fn linear(&mut self, x: &[f32], w: &Tensor, b: Option<&Tensor>, t: usize) -> Result<Vec<f32>> {
        let (n, k) = (w.shape[0], w.shape[1]);
        let Ok(config) = gemm::bias_f32_config(t, n, k) else {
            return Ok(nn::linear(x, w, b, t));
        };
        let kernel = match self.kernel {
            Some(kernel) => kernel,
            None => {
                let kernel = self.dev.kernel("gemm", gemm::KERNEL_BIAS_F32)?;
                self.kernel = Some(kernel);
                kernel
            }
        };
        let wb = self.upload(w)?;
        let bb = b.map(|b| self.upload(b)).transpose()?;
        let xb = self.dev.alloc::<u16>("text encoder activations", t * k)?;
        let ob = self.dev.alloc::<f32>("text encoder output", t * n)?;
        self.dev.write(xb, &Self::to_f16(x))?;
        let params = gemm::GemmBiasF32Params {
            a: xb.addr() as *const u16,
            w: wb.addr() as *const u16,
            bias: bb.map_or(std::ptr::null(), |b| b.addr() as *const u16),
            out: ob.addr() as *mut f32,
            m: t as i32,
            n: n as i32,
            k: k as i32,
        };
        // SAFETY: `gemm_bias_f32` reads `a [t, k]`, `w [n, k]`, `bias [n]` (f16) and writes
        // `out [t, n]` (f32): `xb` holds t*k f16 and `ob` t*n f32 allocated just above, `wb`
        // was uploaded from `w` (n*k elements) and `bb` from `b` (n elements, checked against
        // the layer's width when the encoder was built). `bias_f32_config` accepted the shape.
        let launched = unsafe { self.dev.launch(kernel, config, &DeviceParams(params)) };
        let mut out = vec![0.0f32; t * n];
        let done = launched
            .and_then(|_| self.dev.synchronize())
            .and_then(|_| self.dev.read(ob, &mut out));
        self.dev.free(xb)?;
        self.dev.free(ob)?;
        done?;
        Ok(out)
    }

    fn name(&self) -> &'static str {
        self.dev.backend()
    }
}
