//! The temporal-autoencoder decoder's kernels (`kernels/cuda/conv.cu`, the math of
//! `docs/tae.md`): parameter structs mirroring the C++ ones, launch
//! configurations that check the shape contract and return errors (never panic), the
//! weight packing the engine applies once at load time, and CPU references.
//!
//! Layouts (f16 tensors are `u16` bit patterns, activations channels last):
//! - activations `[T, H, W, C]`;
//! - [`KERNEL_CONV3X3`] weight `[Cout, 3, 3, Cin]` (= the `[Cout, 9 Cin]` GEMM B operand,
//!   K index `(ky * 3 + kx) * Cin + ci`), from the checkpoint's `[Cout, Cin, 3, 3]` by
//!   [`pack_conv3x3_weight`];
//! - [`KERNEL_CONV_T3`] input `[2 + T, H, W, Cin]`: the two context frames (the previous
//!   chunk's last two input frames of this layer, or two copies of the first frame at stream
//!   start), then the chunk; weight `[Cout, 3, Cin]` (tap j multiplies frame `s - 2 + j`),
//!   from the checkpoint's `[Cout, Cin, 3]` by [`pack_conv_t3_weight`]. With `upsample_t`
//!   (UpT) the chunk frames are read twice each (`u[q] = x[q / 2]`) and the output has `2T`
//!   frames; the context frames are then the last two frames of the *repeated* sequence (both
//!   copies of the previous chunk's last frame, or of the first frame at stream start).
//! - [`KERNEL_CONV3D`] (the Wan VAE's causal 3x3x3 conv, `conv3d.rs`) input
//!   `[2 + T, H, W, Cin]` with the same two context frames in front (zeros at the stream start
//!   for the VAE), weight `[Cout, 27, Cin]` from `[Cout, Cin, 3, 3, 3]` by
//!   [`pack_conv3d_weight`], output `[T, H, W, Cout]`.
//! - [`KERNEL_CONV1X1`] input `[M, Cin]`, weight `[Cout, Cin]` as stored (a `[cout, cin, 1, 1]`
//!   skip or a Linear), output `[M, Cout]`.
//! - bias `[Cout]`, residual and output `[T_out, H_out, W_out, Cout]`, f16.
//!
//! Each convolution has a narrow entry (64 output channels per CTA, 48 KiB of dynamic shared
//! memory, any Cout) and a wide one (`*_n128`, 128 per CTA, 64 KiB: a CUDA launch must raise
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`); [`conv3x3_launch`], [`conv_t3_launch`],
//! [`conv3d_launch`] and [`conv1x1_launch`] pick the wide one when `Cout % 128 == 0` and
//! return the name.
//! - GroupNorm: `x`, `out` `[frames, H*W, C]` f16, `gamma`, `beta` `[C]` f16, scratch
//!   `part` `[frames, splits, groups]` and `stats` `[frames, groups]` of f32 pairs.
//!
//! Contract: `Cin % 8 == 0` (16-byte pixel rows for `cp.async`), `Cout >= 1` (odd `Cout`
//! uses scalar stores), `M` = output pixels `>= 1` and below 2^31; GroupNorm `C % 8 == 0`,
//! `2048 % C == 0`, `groups` divides `C`.

mod conv3d;
mod groupnorm;
mod strided;

pub use conv3d::{
    conv3d_launch, conv3d_reference, pack_conv3d_weight, Conv3dParams, Conv3dShape, KERNEL_CONV3D,
    KERNEL_CONV3D_N128,
};
pub use groupnorm::{
    groupnorm_plan, groupnorm_reference, GroupNormApplyParams, GroupNormFinalizeParams,
    GroupNormPlan, GroupNormShape, GroupNormStatsParams,
};
pub use strided::{
    conv3x3s2_launch, conv3x3s2_reference, conv_tstride_launch, conv_tstride_reference,
    Conv3x3S2Params, Conv3x3S2Shape, ConvTStrideParams, ConvTStrideShape, KERNEL_CONV3X3_S2,
    KERNEL_CONV3X3_S2_N128, KERNEL_CONV_TSTRIDE, KERNEL_CONV_TSTRIDE_N128,
};

use crate::emu::{Dim3, LaunchConfig};

/// Implicit-GEMM block tile: pixels (M) and depth (K); mirrors `ConvGeom`.
pub const BLOCK_M: u32 = 128;
pub const BLOCK_K: u32 = 32;
pub const STAGES: u32 = 4;
/// 8 warps.
pub const THREADS: u32 = 256;
/// Output channels (N) per CTA of the narrow entries (`conv3x3_f16`, `conv_t3_f16`): any Cout.
pub const BLOCK_N_NARROW: u32 = 64;
/// Output channels per CTA of the wide entries (`*_n128`), used when `Cout % 128 == 0`.
pub const BLOCK_N_WIDE: u32 = 128;

/// Dynamic shared memory of an entry with `block_n` output channels per CTA:
/// `STAGES * (BLOCK_M + block_n) * BLOCK_K * 2` bytes: 48 KiB (narrow, the default limit) or
/// 64 KiB (wide: a CUDA launch must raise `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
pub const fn shared_bytes(block_n: u32) -> u32 {
    STAGES * (BLOCK_M + block_n) * BLOCK_K * 2
}

/// GroupNorm: threads per CTA, and chunks of 8 channels per thread in the apply kernel.
pub const GN_THREADS: u32 = 256;
pub const GN_APPLY_CHUNKS: usize = 8;
/// Splits per frame the statistics aim at (each a CTA).
pub const GN_TARGET_SPLITS: usize = 256;
/// `GroupNorm` eps of docs/tae.md.
pub const GN_EPS: f64 = 1e-6;

/// Entry point names in the PTX and in the emulator.
pub const KERNEL_CONV3X3: &str = "conv3x3_f16";
pub const KERNEL_CONV3X3_N128: &str = "conv3x3_f16_n128";
pub const KERNEL_CONV_T3: &str = "conv_t3_f16";
pub const KERNEL_CONV_T3_N128: &str = "conv_t3_f16_n128";
pub const KERNEL_CONV1X1: &str = "conv1x1_f16";
pub const KERNEL_CONV1X1_N128: &str = "conv1x1_f16_n128";
pub const KERNEL_GN_STATS: &str = "groupnorm_stats";
pub const KERNEL_GN_FINALIZE: &str = "groupnorm_finalize";
pub const KERNEL_GN_APPLY: &str = "groupnorm_apply";

const MAX_GRID_Y: usize = 65535;

/// `conv3x3_f16` (`Conv3x3Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conv3x3Params {
    /// (t, h_in, w_in, cin) f16; the half-resolution input when `upsample`
    pub x: *const u16,
    /// (cout, 3, 3, cin) f16, [`pack_conv3x3_weight`]
    pub w: *const u16,
    /// (cout) f16, or null
    pub bias: *const u16,
    /// (t, h_out, w_out, cout) f16, or null
    pub residual: *const u16,
    /// (t, h_out, w_out, cout) f16
    pub out: *mut u16,
    pub t: i32,
    pub h_in: i32,
    pub w_in: i32,
    pub cin: i32,
    pub cout: i32,
    /// 1: nearest 2x upsample of the input fused (h_out = 2 h_in, w_out = 2 w_in)
    pub upsample: i32,
}

/// `conv_t3_f16` (`ConvT3Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvT3Params {
    /// (2 + t_in, hw, cin) f16: two context frames, then the chunk
    pub x: *const u16,
    /// (cout, 3, cin) f16, [`pack_conv_t3_weight`]
    pub w: *const u16,
    /// (cout) f16, or null
    pub bias: *const u16,
    /// (t_out, hw, cout) f16, or null
    pub residual: *const u16,
    /// (t_out, hw, cout) f16
    pub out: *mut u16,
    pub t_in: i32,
    pub hw: i32,
    pub cin: i32,
    pub cout: i32,
    /// 1: each chunk frame repeated twice in time (UpT), t_out = 2 t_in
    pub upsample_t: i32,
}

/// `conv1x1_f16` (`Conv1x1Params`): `out = x W^T + bias (+ residual)`, all f16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conv1x1Params {
    /// (m, cin) f16
    pub x: *const u16,
    /// (cout, cin) f16: a `[cout, cin, 1, 1]` checkpoint tensor as is, or a Linear weight
    pub w: *const u16,
    /// (cout) f16, or null
    pub bias: *const u16,
    /// (m, cout) f16, or null
    pub residual: *const u16,
    /// (m, cout) f16
    pub out: *mut u16,
    pub m: i32,
    pub cin: i32,
    pub cout: i32,
}

/// A 3x3 convolution: `t` frames of `h_in x w_in` (the input resolution), `cin -> cout`,
/// optionally reading the input through the nearest 2x map (output `2 h_in x 2 w_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3x3Shape {
    pub t: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub cin: usize,
    pub cout: usize,
    pub upsample: bool,
}

impl Conv3x3Shape {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let f = if self.upsample { 2 } else { 1 };
        (self.h_in * f, self.w_in * f)
    }
    /// GEMM rows: output pixels.
    pub fn m(&self) -> usize {
        let (h, w) = self.out_hw();
        self.t * h * w
    }
    pub fn k(&self) -> usize {
        9 * self.cin
    }
}

/// A causal temporal convolution: `t_in` chunk frames of `hw` pixels (the input buffer has
/// `2 + t_in` frames), `cin -> cout`, optionally with the 2x frame repeat (UpT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvT3Shape {
    pub t_in: usize,
    pub hw: usize,
    pub cin: usize,
    pub cout: usize,
    pub upsample_t: bool,
}

impl ConvT3Shape {
    pub fn t_out(&self) -> usize {
        if self.upsample_t {
            2 * self.t_in
        } else {
            self.t_in
        }
    }
    pub fn m(&self) -> usize {
        self.t_out() * self.hw
    }
    pub fn k(&self) -> usize {
        3 * self.cin
    }
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// A convolution launch: the entry point (by output-channel tile) and its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub kernel: &'static str,
    pub config: LaunchConfig,
}

/// Checks the GEMM view and picks the column tile: the wide entry when `Cout % 128 == 0`
/// (every column tile full), else the narrow one.
fn gemm_launch(
    names: [&'static str; 2],
    m: usize,
    cin: usize,
    cout: usize,
) -> Result<ConvLaunch, String> {
    let kernel = names[0];
    if m == 0 {
        return Err(format!("{kernel}: no output pixels (M = 0)"));
    }
    if cin < 8 || cin % 8 != 0 {
        return Err(format!(
            "{kernel}: Cin = {cin} must be a positive multiple of 8 (16-byte pixel rows for \
             cp.async)"
        ));
    }
    if cout == 0 {
        return Err(format!("{kernel}: Cout must be at least 1"));
    }
    to_i32(kernel, "M (output pixels)", m)?;
    to_i32(kernel, "Cout", cout)?;
    to_i32(kernel, "K", 9 * cin)?;
    let row_tiles = m.div_ceil(BLOCK_M as usize);
    if row_tiles > MAX_GRID_Y {
        return Err(format!(
            "{kernel}: M = {m} needs {row_tiles} pixel tiles of {BLOCK_M}, more than the grid's \
             y limit {MAX_GRID_Y}"
        ));
    }
    let (kernel, block_n) = if cout % BLOCK_N_WIDE as usize == 0 {
        (names[1], BLOCK_N_WIDE)
    } else {
        (names[0], BLOCK_N_NARROW)
    };
    Ok(ConvLaunch {
        kernel,
        config: LaunchConfig {
            grid: Dim3 {
                x: cout.div_ceil(block_n as usize) as u32,
                y: row_tiles as u32,
                z: 1,
            },
            block: THREADS.into(),
            shared_bytes: shared_bytes(block_n),
        },
    })
}

/// Launch of `conv3x3_f16` / `conv3x3_f16_n128` (same parameters).
pub fn conv3x3_launch(s: &Conv3x3Shape) -> Result<ConvLaunch, String> {
    let kernel = KERNEL_CONV3X3;
    if s.t == 0 || s.h_in == 0 || s.w_in == 0 {
        return Err(format!("{kernel}: empty input {s:?}"));
    }
    // Input pixel indices travel as i32.
    to_i32(kernel, "input pixels", s.t * s.h_in * s.w_in)?;
    gemm_launch([KERNEL_CONV3X3, KERNEL_CONV3X3_N128], s.m(), s.cin, s.cout)
}

/// Launch of `conv_t3_f16` / `conv_t3_f16_n128` (same parameters).
pub fn conv_t3_launch(s: &ConvT3Shape) -> Result<ConvLaunch, String> {
    let kernel = KERNEL_CONV_T3;
    if s.t_in == 0 || s.hw == 0 {
        return Err(format!("{kernel}: empty input {s:?}"));
    }
    to_i32(kernel, "input pixels", (s.t_in + 2) * s.hw)?;
    gemm_launch([KERNEL_CONV_T3, KERNEL_CONV_T3_N128], s.m(), s.cin, s.cout)
}

/// Launch of `conv1x1_f16` / `conv1x1_f16_n128`: `m` rows (pixels or tokens), `cin -> cout`.
pub fn conv1x1_launch(m: usize, cin: usize, cout: usize) -> Result<ConvLaunch, String> {
    gemm_launch([KERNEL_CONV1X1, KERNEL_CONV1X1_N128], m, cin, cout)
}

/// CPU reference of `conv1x1_f16`: `x [m, cin]`, `w [cout, cin]`, output `[m, cout]`.
pub fn conv1x1_reference(
    m: usize,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    if m == 0 || x.len() % m != 0 {
        return Err(format!(
            "conv1x1_reference: {} elements are not {m} rows",
            x.len()
        ));
    }
    let cin = x.len() / m;
    if cin == 0 || w.len() % cin != 0 {
        return Err(format!(
            "conv1x1_reference: w has {} elements, not rows of {cin}",
            w.len()
        ));
    }
    let cout = w.len() / cin;
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    for r in 0..m {
        let xr = &x[r * cin..][..cin];
        for co in 0..cout {
            let wr = &w[co * cin..][..cin];
            let (mut acc, mut a) = (0.0, 0.0);
            for (xv, wv) in xr.iter().zip(wr) {
                acc += xv * wv;
                a += (xv * wv).abs();
            }
            value[r * cout + co] = acc;
            abs[r * cout + co] = a;
        }
    }
    finish(&mut value, bias, residual, cout)?;
    Ok(Reference { value, abs })
}

/// `[Cout, Cin, 3, 3]` (PyTorch Conv2d) -> `[Cout, 3, 3, Cin]`, the kernel's `[Cout, 9 Cin]`.
pub fn pack_conv3x3_weight<T: Copy>(w: &[T], cout: usize, cin: usize) -> Result<Vec<T>, String> {
    if w.len() != cout * cin * 9 {
        return Err(format!(
            "pack_conv3x3_weight: {} elements, expected [{cout}, {cin}, 3, 3] = {}",
            w.len(),
            cout * cin * 9
        ));
    }
    let mut out = Vec::with_capacity(w.len());
    for co in 0..cout {
        for tap in 0..9 {
            for ci in 0..cin {
                out.push(w[(co * cin + ci) * 9 + tap]);
            }
        }
    }
    Ok(out)
}

/// `[Cout, Cin, 3]` (the ConvT weight, index 2 = current frame) -> `[Cout, 3, Cin]`.
pub fn pack_conv_t3_weight<T: Copy>(w: &[T], cout: usize, cin: usize) -> Result<Vec<T>, String> {
    if w.len() != cout * cin * 3 {
        return Err(format!(
            "pack_conv_t3_weight: {} elements, expected [{cout}, {cin}, 3] = {}",
            w.len(),
            cout * cin * 3
        ));
    }
    let mut out = Vec::with_capacity(w.len());
    for co in 0..cout {
        for tap in 0..3 {
            for ci in 0..cin {
                out.push(w[(co * cin + ci) * 3 + tap]);
            }
        }
    }
    Ok(out)
}

/// A reference result: the value in f64 and, per element, `sum |x w|` of its products (the
/// scale of the f32 accumulation error).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub value: Vec<f64>,
    pub abs: Vec<f64>,
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what}: {got} elements, expected {want}"));
    }
    Ok(())
}

/// CPU reference of `conv3x3_f16` in f64 on the (f16-exact) inputs given as f64:
/// `x [t, h_in, w_in, cin]`, packed `w [cout, 3, 3, cin]`, `bias [cout]`,
/// `residual [t, h_out, w_out, cout]`. The output is not rounded to f16.
pub fn conv3x3_reference(
    s: &Conv3x3Shape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    let (ho, wo) = s.out_hw();
    let (cin, cout) = (s.cin, s.cout);
    check_len("conv3x3_reference x", x.len(), s.t * s.h_in * s.w_in * cin)?;
    check_len("conv3x3_reference w", w.len(), cout * 9 * cin)?;
    let m = s.m();
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    let sh = usize::from(s.upsample);
    for t in 0..s.t {
        for oy in 0..ho {
            for ox in 0..wo {
                let row = (t * ho + oy) * wo + ox;
                for co in 0..cout {
                    let (mut acc, mut a) = (0.0, 0.0);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                            if iy < 0 || ix < 0 || iy >= ho as isize || ix >= wo as isize {
                                continue;
                            }
                            let (sy, sx) = ((iy as usize) >> sh, (ix as usize) >> sh);
                            let xp = &x[((t * s.h_in + sy) * s.w_in + sx) * cin..][..cin];
                            let wp = &w[(co * 9 + ky * 3 + kx) * cin..][..cin];
                            for (xv, wv) in xp.iter().zip(wp) {
                                acc += xv * wv;
                                a += (xv * wv).abs();
                            }
                        }
                    }
                    value[row * cout + co] = acc;
                    abs[row * cout + co] = a;
                }
            }
        }
    }
    finish(&mut value, bias, residual, cout)?;
    Ok(Reference { value, abs })
}

/// CPU reference of `conv_t3_f16`: `x [2 + t_in, hw, cin]` (context frames first), packed
/// `w [cout, 3, cin]`, output `[t_out, hw, cout]`.
pub fn conv_t3_reference(
    s: &ConvT3Shape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    let (cin, cout, hw) = (s.cin, s.cout, s.hw);
    check_len("conv_t3_reference x", x.len(), (2 + s.t_in) * hw * cin)?;
    check_len("conv_t3_reference w", w.len(), cout * 3 * cin)?;
    let m = s.m();
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    // Buffer frame of sequence frame q in [-2, t_out): context, or (repeated) chunk frame.
    let buffer_frame = |q: isize| -> usize {
        if q < 0 {
            (q + 2) as usize
        } else if s.upsample_t {
            2 + q as usize / 2
        } else {
            2 + q as usize
        }
    };
    for t in 0..s.t_out() {
        for p in 0..hw {
            let row = t * hw + p;
            for co in 0..cout {
                let (mut acc, mut a) = (0.0, 0.0);
                for j in 0..3 {
                    let b = buffer_frame(t as isize - 2 + j as isize);
                    let xp = &x[(b * hw + p) * cin..][..cin];
                    let wp = &w[(co * 3 + j) * cin..][..cin];
                    for (xv, wv) in xp.iter().zip(wp) {
                        acc += xv * wv;
                        a += (xv * wv).abs();
                    }
                }
                value[row * cout + co] = acc;
                abs[row * cout + co] = a;
            }
        }
    }
    finish(&mut value, bias, residual, cout)?;
    Ok(Reference { value, abs })
}

fn finish(
    value: &mut [f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
    cout: usize,
) -> Result<(), String> {
    if let Some(b) = bias {
        check_len("reference bias", b.len(), cout)?;
        for (i, v) in value.iter_mut().enumerate() {
            *v += b[i % cout];
        }
    }
    if let Some(r) = residual {
        check_len("reference residual", r.len(), value.len())?;
        for (v, r) in value.iter_mut().zip(r) {
            *v += r;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_moves_taps_before_channels() {
        // w[co][ci][tap] = 100 co + 10 ci + tap
        let (cout, cin) = (2, 3);
        let w: Vec<u32> = (0..cout * cin * 9)
            .map(|i| (100 * (i / (cin * 9)) + 10 * (i / 9 % cin) + i % 9) as u32)
            .collect();
        let p = pack_conv3x3_weight(&w, cout, cin).unwrap();
        for co in 0..cout {
            for tap in 0..9 {
                for ci in 0..cin {
                    assert_eq!(
                        p[(co * 9 + tap) * cin + ci],
                        (100 * co + 10 * ci + tap) as u32
                    );
                }
            }
        }
        let wt: Vec<u32> = (0..cout * cin * 3)
            .map(|i| (100 * (i / (cin * 3)) + 10 * (i / 3 % cin) + i % 3) as u32)
            .collect();
        let p = pack_conv_t3_weight(&wt, cout, cin).unwrap();
        assert_eq!(p[(3 + 2) * cin + 1], 100 + 10 + 2);
        assert!(pack_conv3x3_weight(&w[1..], cout, cin).is_err());
        assert!(pack_conv_t3_weight(&w, cout, cin).is_err());
    }

    #[test]
    fn groupnorm_plan_has_no_empty_split() {
        for hw in [1, 7, 63, 64, 65, 35, 4096, 262_144] {
            let p = groupnorm_plan(&GroupNormShape {
                frames: 3,
                hw,
                c: 128,
                groups: 32,
            })
            .unwrap();
            assert!(p.splits <= GN_TARGET_SPLITS);
            assert!((p.splits - 1) * p.pixels_per_split < hw, "hw {hw}: {p:?}");
            assert!(p.splits * p.pixels_per_split >= hw);
        }
    }
}
