//! `streamdit bench --kernels`, the norm + GEMM rows: each linear layer of a call that reads a
//! LayerNorm / adaLN output, timed as the two ways compute capability 9.0 can run it, on the
//! same inputs:
//! - `adaln+sm90a`: the `adaln_*` launch writing the f16 A tensor, then the sm_90a GEMM;
//! - `stats+ln`: the `ln_stats_*` pass, then the prologue GEMM (`gemm_sm90_ln_bias_f16`),
//!   what StreamDiT's first adaLN runs;
//! - `ln`: the prologue GEMM alone, its statistics already in memory as 128-column partial
//!   pairs, what every other norm runs (their gated-residual GEMM's epilogue leaves them;
//!   that epilogue's extra stores are not in this time).
//!
//! The product is `out = adaLN(x) W^T` in f16 without bias, `x` f32 uniform in [-2, 2) with a
//! per-row offset in [-4, 4), one frame's shift and scale below 0.4 in magnitude; each path's output is
//! poisoned first and compared with the first path's. Only on compute capability 9.0 (the
//! emulator modelling it, or a Hopper GPU): elsewhere there are no rows.

use streamdit_kernels::adaln::{self, ModLayout};
use streamdit_kernels::gemm_sm90::{self, Buffers, Epilogue, LnPrologue, BLOCK_N};

use super::device::{Device, DeviceBuffer};
use super::kernel_bench::{
    check_request, gemm_step, rel_diff, resolved, time, GemmShape, PathTiming,
};
use super::lower::{run, Params, Step};
use crate::error::{Error, Result};

/// One norm + GEMM shape of a call: `x [m, k]` normalised, times `w [n, k]^T`, `count` times
/// per call.
pub type PrologueShape = GemmShape;

/// The paths of one norm + GEMM shape.
#[derive(Clone, Debug, PartialEq)]
pub struct PrologueTiming {
    pub shape: PrologueShape,
    pub paths: Vec<PathTiming>,
}

/// f32 values uniform in [-2, 2) plus a per-row offset in [-4, 4), from a xorshift.
fn random_rows(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::with_capacity(m * k);
    for _ in 0..m {
        let offset = 8.0 * next() - 4.0;
        out.extend((0..k).map(|_| offset + 4.0 * next() - 2.0));
    }
    out
}

/// `(mean, sum of squared deviations)` of each row over consecutive groups of `cols`
/// columns, in f64, stored as f32 pairs: what the gated-residual epilogue leaves.
fn partial_stats(x: &[f32], m: usize, k: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * m * k.div_ceil(cols));
    for r in 0..m {
        for g in (0..k).step_by(cols) {
            let v = &x[r * k + g..r * k + (g + cols).min(k)];
            let mean = v.iter().map(|&e| f64::from(e)).sum::<f64>() / v.len() as f64;
            let m2: f64 = v.iter().map(|&e| (f64::from(e) - mean).powi(2)).sum();
            out.extend([mean as f32, m2 as f32]);
        }
    }
    out
}

fn launch(label: &str, module: &'static str, kernel: &'static str, config: super::device::LaunchConfig, params: Params) -> Step {
    Step::Launch {
        label: label.to_string(),
        module,
        kernel_name: kernel,
        kernel: None,
        config,
        params,
        trace: Default::default(),
    }
}

/// Times the three paths of each shape, `reps` launches each; no rows off compute
/// capability 9.0. The buffers of one shape live only while it runs.
pub fn bench_prologues<D: Device>(
    dev: &mut D,
    shapes: &[PrologueShape],
    reps: usize,
) -> Result<Vec<PrologueTiming>> {
    if dev.compute_capability() != (9, 0) {
        return Ok(Vec::new());
    }
    let mut rows = Vec::with_capacity(shapes.len());
    for (i, &s) in shapes.iter().enumerate() {
        check_request("norm + GEMM shape", s, reps)?;
        let parts = s.k.div_ceil(BLOCK_N as usize);
        let x = dev.alloc::<f32>("bench X (f32)", s.m * s.k)?;
        let a = dev.alloc::<u16>("bench A (adaLN output)", s.m * s.k)?;
        let w = dev.alloc::<u16>("bench W", s.n * s.k)?;
        let mods = dev.alloc::<f32>("bench shift and scale", 2 * s.k)?;
        let stats = dev.alloc::<f32>("bench row statistics", 2 * s.m * parts.max(1))?;
        let out_ref = dev.alloc::<u16>("bench out (adaLN + GEMM)", s.m * s.n)?;
        let out = dev.alloc::<u16>("bench out", s.m * s.n)?;
        let result = bench_shape(dev, s, i as u64, reps, (x, a, w, mods, stats, out_ref, out));
        dev.free(x)?;
        dev.free(mods)?;
        dev.free(stats)?;
        for b in [a, w, out_ref, out] {
            dev.free(b)?;
        }
        rows.push(PrologueTiming {
            shape: s,
            paths: result?,
        });
    }
    Ok(rows)
}

type Buffers7 = (
    DeviceBuffer<f32>,
    DeviceBuffer<u16>,
    DeviceBuffer<u16>,
    DeviceBuffer<f32>,
    DeviceBuffer<f32>,
    DeviceBuffer<u16>,
    DeviceBuffer<u16>,
);

fn bench_shape<D: Device>(
    dev: &mut D,
    s: PrologueShape,
    seed: u64,
    reps: usize,
    (x, a, w, mods, stats, out_ref, out): Buffers7,
) -> Result<Vec<PathTiming>> {
    let label = format!("norm + gemm {}x{}x{}", s.m, s.n, s.k);
    let fail = |e: String| Error::Invalid(format!("{label}: {e}"));
    let xs = random_rows(s.m, s.k, 3 * seed + 1);
    dev.write(x, &xs)?;
    dev.write(w, &super::kernel_bench::random_f16(s.n * s.k, 3 * seed + 2))?;
    let shift_scale: Vec<f32> = random_rows(2, s.k, 3 * seed + 3)
        .iter()
        .map(|v| v / 16.0)
        .collect();
    dev.write(mods, &shift_scale)?;
    let layout = ModLayout {
        frames: 1,
        mod_k: 2,
        shift: 0,
        scale: 1,
        tokens: s.m,
        tokens_per_frame: s.m,
    };
    let mods_ptr = mods.addr() as *const f32;
    let mem = a.cast::<u8>()?;
    let figures = |path, ms: f64, rel_diff| PathTiming {
        path,
        ms,
        tflops: s.flops() / (ms * 1e-3) / 1e12,
        rel_diff,
    };
    let mut reference = vec![0u16; s.m * s.n];
    let mut got = vec![0u16; s.m * s.n];
    let mut paths = Vec::new();

    // adaLN, then the sm_90a GEMM over its output.
    let norm = adaln::config(s.m, s.k, Some(&layout)).map_err(fail)?;
    let norm = resolved(
        dev,
        launch(
            &label,
            "adaln",
            norm.kernel,
            norm.config,
            Params::AdaLn(adaln::params(
                x.addr() as *const f32,
                a.addr() as *mut u16,
                s.m,
                s.k,
                Some((mods_ptr, &layout)),
            )),
        ),
    )?;
    let gemm = gemm_step(dev, s, &a, &w, &out_ref, true)?
        .ok_or_else(|| fail("the sm_90a GEMM did not lower".into()))?;
    let pair = [norm, gemm];
    dev.memset(out_ref, 0xFF)?;
    let ms = time(dev, reps, |d| run(d, mem, &pair))?;
    dev.read(out_ref, &mut reference)?;
    paths.push(figures("adaln+sm90a", ms, rel_diff(&reference, &reference)));

    // The prologue GEMM over X, with statistics of `parts` pairs per row at `stats`.
    let prologue = |dev: &mut D, parts: usize, part_cols: usize| -> Result<Step> {
        let ln = LnPrologue {
            x: x.addr() as *const f32,
            stats: stats.addr() as *const f32,
            parts,
            part_cols,
            mods: Some((mods_ptr, layout)),
        };
        let buffers = Buffers {
            a: std::ptr::null(),
            w: w.addr() as *const u16,
            bias: std::ptr::null(),
            out: out.addr() as *mut std::ffi::c_void,
            h: std::ptr::null_mut(),
            mods: std::ptr::null(),
        };
        let epi = Epilogue::BiasF16;
        let encode = |t: &streamdit_kernels::tma::Tiled| {
            dev.encode_tensor_map(t).map_err(|e| e.to_string())
        };
        let p = gemm_sm90::ln_params(epi, s.m, s.n, s.k, &ln, &buffers, encode).map_err(fail)?;
        let config =
            gemm_sm90::ln_config(epi, s.m, s.n, s.k, &ln, dev.multiprocessors()).map_err(fail)?;
        let kernel = epi.kernel_ln().map_err(fail)?;
        resolved(dev, launch(&label, "gemm_sm90", kernel, config, Params::GemmSm90(p)))
    };

    // The statistics pass, then the prologue GEMM.
    let pass = adaln::stats_config(s.m, s.k).map_err(fail)?;
    let pass = resolved(
        dev,
        launch(
            &label,
            "adaln",
            pass.kernel,
            pass.config,
            Params::AdaLn(adaln::params(
                x.addr() as *const f32,
                stats.addr() as *mut u16,
                s.m,
                s.k,
                None,
            )),
        ),
    )?;
    let pair = [pass, prologue(dev, 1, s.k)?];
    dev.memset(out, 0xFF)?;
    let ms = time(dev, reps, |d| run(d, mem, &pair))?;
    dev.read(out, &mut got)?;
    paths.push(figures("stats+ln", ms, rel_diff(&got, &reference)));

    // The prologue GEMM alone over the epilogue's form of the statistics.
    let cols = BLOCK_N as usize;
    dev.write(stats, &partial_stats(&xs, s.m, s.k, cols))?;
    let alone = [prologue(dev, s.k.div_ceil(cols), cols)?];
    dev.memset(out, 0xFF)?;
    let ms = time(dev, reps, |d| run(d, mem, &alone))?;
    dev.read(out, &mut got)?;
    paths.push(figures("ln", ms, rel_diff(&got, &reference)));
    Ok(paths)
}
