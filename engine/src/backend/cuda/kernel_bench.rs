//! `streamdit bench --kernels`: each GEMM shape of a model call, timed on every path this
//! device has, side by side on the same inputs — the mma.sync kernel (`gemm.cu`, every
//! device), the sm_90a warp-specialised kernel (`gemm_sm90.cu`, compute capability 9.0) and
//! cuBLAS (when the caller hands one in: a GPU with libcublas) — with each path's result
//! compared with the mma.sync one, so a fast wrong kernel shows as wrong.
//!
//! The product is the linear layer without its fused epilogue (`out = A W^T` in f16, f32
//! accumulation, no bias): the one epilogue cuBLAS computes the same way. Inputs are uniform
//! in [-1, 1), rounded to f16; the outputs are poisoned (all bits set: f16 NaN) before each
//! path runs, so an unwritten element fails the comparison. Times come from device events
//! around `reps` back-to-back launches after one warm-up launch; on the emulator they are the
//! emulator's own wall time and say nothing about a GPU.

use half::f16;
use streamdit_kernels::gemm;

use super::attention_bench::{bench_attention, AttentionShape, AttentionTiming};
use super::prologue_bench::{bench_prologues, PrologueShape, PrologueTiming};
use super::device::{Device, DeviceBuffer, Queue};
use super::limits;
use super::lower::{run, select_gemm, Params, Step};
use crate::error::{Error, Result};

/// One product shape of a model call: `out [m, n] = x [m, k] w [n, k]^T`, `count` times per
/// call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub count: usize,
}

impl GemmShape {
    /// FLOPs of one product.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// One path's figures for one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct PathTiming {
    /// `mma.sync`, `sm90a` or `cublas`.
    pub path: &'static str,
    /// Milliseconds per product (mean over the timed launches).
    pub ms: f64,
    /// `shape.flops() / ms`, in TFLOP/s.
    pub tflops: f64,
    /// `max |out - out_mma| / max |out_mma|` over the output (0 for the mma.sync path
    /// itself); NaN when an output element was not written or is not finite.
    pub rel_diff: f64,
}

/// The paths of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmTiming {
    pub shape: GemmShape,
    pub paths: Vec<PathTiming>,
}

/// A cuBLAS-like product the caller can hand in: `out [m, n] = a [m, k] w [n, k]^T` queued
/// on the device's compute queue.
pub type ExternalGemm<'a, D> = dyn FnMut(
        &mut D,
        (usize, usize, usize),
        DeviceBuffer<u16>,
        DeviceBuffer<u16>,
        DeviceBuffer<u16>,
    ) -> Result<()>
    + 'a;

/// Uniform f16 values in [-1, 1) from a 64-bit xorshift seeded by `seed`.
pub(super) fn random_f16(len: usize, seed: u64) -> Vec<u16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            f16::from_f32(2.0 * u - 1.0).to_bits()
        })
        .collect()
}

/// The mma.sync launch of `out = a w^T` (no bias), resolved on `dev`; with `sm90` the same
/// launch swapped for the sm_90a kernel (`select_gemm`), or `None` off compute capability 9.0.
pub(super) fn gemm_step<D: Device>(
    dev: &mut D,
    s: GemmShape,
    a: &DeviceBuffer<u16>,
    w: &DeviceBuffer<u16>,
    out: &DeviceBuffer<u16>,
    sm90: bool,
) -> Result<Option<Step>> {
    let label = format!("gemm {}x{}x{}", s.m, s.n, s.k);
    let config = gemm::bias_f16_config(s.m, s.n, s.k)
        .map_err(|e| Error::Invalid(format!("{label}: {e}")))?;
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| Error::Invalid(format!("{label}: {v} exceeds an int")))
    };
    let params = Params::GemmBiasF16(gemm::GemmBiasF16Params {
        a: a.addr() as *const u16,
        w: w.addr() as *const u16,
        bias: std::ptr::null(),
        out: out.addr() as *mut u16,
        m: int(s.m)?,
        n: int(s.n)?,
        k: int(s.k)?,
    });
    let mut step = Step::Launch {
        label: label.clone(),
        module: "gemm",
        kernel_name: gemm::KERNEL_BIAS_F16,
        kernel: None,
        config,
        params,
        trace: Default::default(),
    };
    if sm90 {
        if dev.compute_capability() != (9, 0) {
            return Ok(None);
        }
        select_gemm(dev, &mut step)?;
    }
    resolved(dev, step).map(Some)
}

/// The step fitted to the device's shared memory, its kernel looked up on `dev`.
pub(super) fn resolved<D: Device>(dev: &mut D, mut step: Step) -> Result<Step> {
    let label = step.label().to_string();
    limits::fit_step(&mut step, dev.shared_memory_limit())
        .map_err(|e| Error::Invalid(format!("{label}: {e}")))?;
    if let Step::Launch {
        module,
        kernel_name,
        kernel,
        ..
    } = &mut step
    {
        *kernel = Some(dev.kernel(module, kernel_name)?);
    }
    Ok(step)
}

/// Times `launch` (one product queued on the compute queue) over `reps` launches after a
/// warm-up, in milliseconds per launch.
pub(super) fn time<D: Device>(
    dev: &mut D,
    reps: usize,
    mut launch: impl FnMut(&mut D) -> Result<()>,
) -> Result<f64> {
    launch(dev)?;
    let (start, end) = (dev.create_event()?, dev.create_event()?);
    dev.record(start, Queue::Compute)?;
    for _ in 0..reps {
        launch(dev)?;
    }
    dev.record(end, Queue::Compute)?;
    let ms = dev.elapsed_ms(start, end)? as f64;
    dev.synchronize()?;
    Ok(ms / reps as f64)
}

/// `max |x - r| / max |r|`, NaN when any element of `x` is not finite.
pub(super) fn rel_diff(x: &[u16], r: &[u16]) -> f64 {
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(r) {
        let (a, b) = (f16::from_bits(a).to_f64(), f16::from_bits(b).to_f64());
        if !a.is_finite() {
            return f64::NAN;
        }
        diff = diff.max((a - b).abs());
        scale = scale.max(b.abs());
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

/// At least one launch per shape, and no zero dimension in the `what` `s`.
pub(super) fn check_request(what: &str, s: GemmShape, reps: usize) -> Result<()> {
    if reps == 0 {
        return Err(Error::Invalid(
            "kernel bench: the launches per shape must be at least 1".into(),
        ));
    }
    if s.m == 0 || s.n == 0 || s.k == 0 {
        return Err(Error::Invalid(format!(
            "kernel bench: {what} {}x{}x{} has a zero dimension",
            s.m, s.n, s.k
        )));
    }
    Ok(())
}

/// Times every path of `dev` (and `external`, as `cublas`, when given) on each of `shapes`,
/// `reps` launches each. The buffers of one shape live only while it runs.
pub fn bench_gemms<D: Device>(
    dev: &mut D,
    shapes: &[GemmShape],
    reps: usize,
    mut external: Option<&mut ExternalGemm<'_, D>>,
) -> Result<Vec<GemmTiming>> {
    let mut rows = Vec::with_capacity(shapes.len());
    for (i, &s) in shapes.iter().enumerate() {
        check_request("shape", s, reps)?;
        let a = dev.alloc::<u16>("bench A", s.m * s.k)?;
        let w = dev.alloc::<u16>("bench W", s.n * s.k)?;
        let out_ref = dev.alloc::<u16>("bench out (mma.sync)", s.m * s.n)?;
        let out = dev.alloc::<u16>("bench out", s.m * s.n)?;
        let result = bench_shape(dev, s, i as u64, reps, [a, w, out_ref, out], &mut external);
        for b in [a, w, out_ref, out] {
            dev.free(b)?;
        }
        rows.push(GemmTiming {
            shape: s,
            paths: result?,
        });
    }
    Ok(rows)
}

fn bench_shape<D: Device>(
    dev: &mut D,
    s: GemmShape,
    seed: u64,
    reps: usize,
    [a, w, out_ref, out]: [DeviceBuffer<u16>; 4],
    external: &mut Option<&mut ExternalGemm<'_, D>>,
) -> Result<Vec<PathTiming>> {
    dev.write(a, &random_f16(s.m * s.k, 2 * seed + 1))?;
    dev.write(w, &random_f16(s.n * s.k, 2 * seed + 2))?;
    let mem = a.cast::<u8>()?;
    let mut reference = vec![0u16; s.m * s.n];
    let mut got = vec![0u16; s.m * s.n];
    let mut paths = Vec::new();
    let figures = |path, ms: f64, rel_diff| PathTiming {
        path,
        ms,
        tflops: s.flops() / (ms * 1e-3) / 1e12,
        rel_diff,
    };

    dev.memset(out_ref, 0xFF)?;
    let step = gemm_step(dev, s, &a, &w, &out_ref, false)?
        .ok_or_else(|| Error::Invalid("the mma.sync GEMM did not lower".into()))?;
    let ms = time(dev, reps, |d| run(d, mem, std::slice::from_ref(&step)))?;
    dev.read(out_ref, &mut reference)?;
    let own = rel_diff(&reference, &reference);
    paths.push(figures("mma.sync", ms, own));

    if let Some(step) = gemm_step(dev, s, &a, &w, &out, true)? {
        dev.memset(out, 0xFF)?;
        let ms = time(dev, reps, |d| run(d, mem, std::slice::from_ref(&step)))?;
        dev.read(out, &mut got)?;
        paths.push(figures("sm90a", ms, rel_diff(&got, &reference)));
    }
    if let Some(ext) = external.as_mut() {
        dev.memset(out, 0xFF)?;
        let dims = (s.m, s.n, s.k);
        let ms = time(dev, reps, |d| ext(d, dims, a, w, out))?;
        dev.read(out, &mut got)?;
        paths.push(figures("cublas", ms, rel_diff(&got, &reference)));
    }
    Ok(paths)
}

/// Where [`kernel_bench`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDevice {
    /// The GPU of this ordinal, with cuBLAS beside our kernels when libcublas loads.
    Gpu(usize),
    /// The emulator, modelling compute capability 9.0 so that both of our paths run (times
    /// are the emulator's, not a GPU's).
    Emulator,
}

/// What [`kernel_bench`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelBench {
    /// The device, in words.
    pub device: String,
    /// cuBLAS's version, or why it is not in the comparison.
    pub cublas: std::result::Result<String, String>,
    pub rows: Vec<GemmTiming>,
    /// The attention shapes asked for, on each attention path (`attention_bench`).
    pub attention: Vec<AttentionTiming>,
    /// The norm + GEMM shapes asked for, unfused and with the LayerNorm prologue
    /// (`prologue_bench`; compute capability 9.0 only, else empty).
    pub prologues: Vec<PrologueTiming>,
}

/// Times each of `shapes` on every GEMM path of `on` ([`bench_gemms`]), each of `attention`
/// on every attention path ([`bench_attention`]; on the emulator each result is also checked
/// against the CPU) and each of `prologues` unfused and folded ([`bench_prologues`]), `reps`
/// launches each.
pub fn kernel_bench(
    on: KernelDevice,
    shapes: &[GemmShape],
    attention: &[AttentionShape],
    prologues: &[PrologueShape],
    reps: usize,
) -> Result<KernelBench> {
    match on {
        KernelDevice::Emulator => {
            let mut dev = super::emu::EmuDevice::new().with_compute_capability((9, 0));
            Ok(KernelBench {
                device: format!("{} (modelling compute capability 9.0)", dev.describe()),
                cublas: Err("cuBLAS runs only on a GPU".into()),
                rows: bench_gemms(&mut dev, shapes, reps, None)?,
                attention: bench_attention(&mut dev, attention, reps, true)?,
                prologues: bench_prologues(&mut dev, prologues, reps)?,
            })
        }
        KernelDevice::Gpu(ordinal) => {
            let mut dev = super::real::CudaDevice::new(ordinal)?;
            let device = dev.describe();
            let mut blas = super::real::Cublas::new(&mut dev);
            let cublas = blas.as_ref().map(|b| b.version()).map_err(|e| e.to_string());
            let rows = match blas.as_mut() {
                Ok(b) => {
                    let mut ext = |d: &mut super::real::CudaDevice, s, a, w, o| {
                        b.gemm_f16(d, s, a, w, o)
                    };
                    bench_gemms(&mut dev, shapes, reps, Some(&mut ext))?
                }
                Err(_) => bench_gemms(&mut dev, shapes, reps, None)?,
            };
            let attention = bench_attention(&mut dev, attention, reps, false)?;
            let prologues = bench_prologues(&mut dev, prologues, reps)?;
            Ok(KernelBench {
                device,
                cublas,
                rows,
                attention,
                prologues,
            })
        }
    }
}
