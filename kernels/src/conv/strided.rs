//! The encoders' downsampling convolutions of `kernels/cuda/conv.cu` (docs/taehv.md "The
//! encoder", docs/tae.md "Encoder"): their parameter structs, launch configurations and CPU
//! references.
//!
//! - [`KERNEL_CONV3X3_S2`]: a 3x3 convolution with stride 2. Tap `(ky, kx)` of output pixel
//!   `(y, x)` reads input pixel `(2y + ky - pad, 2x + kx - pad)`, zeros outside the frame;
//!   `h_out = (h_in + pad) / 2`. `pad = 1` is TAEHV's `conv(stride=2)` (padding 1 on every
//!   side), `pad = 0` the TAE's `DownS` (one zero row and column after the frame only).
//!   Weight `[Cout, 3, 3, Cin]` ([`super::pack_conv3x3_weight`]).
//! - [`KERNEL_CONV_TSTRIDE`]: a temporal convolution with a frame stride, per pixel: output
//!   frame `s` is `sum_{j < taps} W_j buf[stride s + j]` over a buffer of
//!   `stride (t_out - 1) + taps` frames. TAEHV's `TPool(C, s)` (`s` frames side by side in
//!   channels, then a 1x1 convolution `s C -> C`) is `taps = stride = s` with its weight
//!   `[C, s C, 1, 1]` as stored (`[Cout, taps, Cin]` already); the TAE's `DownT` is `taps = 3`,
//!   `stride = 2` over `[cached frame, chunk]`, weight from `[Cout, Cin, 3]` by
//!   [`super::pack_conv_t3_weight`]. One launch with `K = taps Cin`, instead of a concatenated
//!   copy (an extra activation) or accumulated 1x1 passes (each rounding its partial sum to
//!   f16 through the residual).

use super::{check_len, finish, gemm_launch, to_i32, ConvLaunch, Reference};

/// Entry point names in the PTX and in the emulator.
pub const KERNEL_CONV3X3_S2: &str = "conv3x3s2_f16";
pub const KERNEL_CONV3X3_S2_N128: &str = "conv3x3s2_f16_n128";
pub const KERNEL_CONV_TSTRIDE: &str = "conv_tstride_f16";
pub const KERNEL_CONV_TSTRIDE_N128: &str = "conv_tstride_f16_n128";

/// `conv3x3s2_f16` (`Conv3x3S2Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conv3x3S2Params {
    /// (t, h_in, w_in, cin) f16
    pub x: *const u16,
    /// (cout, 3, 3, cin) f16
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
    /// Zero rows and columns before the frame: 1 or 0.
    pub pad: i32,
}

/// `conv_tstride_f16` (`ConvTStrideParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvTStrideParams {
    /// (stride (t_out - 1) + taps, hw, cin) f16
    pub x: *const u16,
    /// (cout, taps, cin) f16
    pub w: *const u16,
    /// (cout) f16, or null
    pub bias: *const u16,
    /// (t_out, hw, cout) f16, or null
    pub residual: *const u16,
    /// (t_out, hw, cout) f16
    pub out: *mut u16,
    pub t_out: i32,
    pub hw: i32,
    pub cin: i32,
    pub cout: i32,
    pub taps: i32,
    pub stride: i32,
}

/// A stride-2 3x3 convolution of `t` frames of `h_in x w_in`, `cin -> cout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3x3S2Shape {
    pub t: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub cin: usize,
    pub cout: usize,
    /// 1 (padding on every side) or 0 (only after the frame).
    pub pad: usize,
}

impl Conv3x3S2Shape {
    /// Output height and width: `(h_in + pad) / 2`, `(w_in + pad) / 2`.
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h_in + self.pad) / 2, (self.w_in + self.pad) / 2)
    }
    pub fn m(&self) -> usize {
        let (h, w) = self.out_hw();
        self.t * h * w
    }
    pub fn k(&self) -> usize {
        9 * self.cin
    }
}

/// A strided temporal convolution: `t_out` output frames of `hw` pixels, `taps` frames each,
/// `stride` frames apart, `cin -> cout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTStrideShape {
    pub t_out: usize,
    pub hw: usize,
    pub cin: usize,
    pub cout: usize,
    pub taps: usize,
    pub stride: usize,
}

impl ConvTStrideShape {
    /// Frames of the input buffer: `stride (t_out - 1) + taps`.
    pub fn frames_in(&self) -> usize {
        self.stride * self.t_out.saturating_sub(1) + self.taps
    }
    pub fn m(&self) -> usize {
        self.t_out * self.hw
    }
    pub fn k(&self) -> usize {
        self.taps * self.cin
    }
}

/// Launch of `conv3x3s2_f16` / `conv3x3s2_f16_n128` (same parameters).
pub fn conv3x3s2_launch(s: &Conv3x3S2Shape) -> Result<ConvLaunch, String> {
    let kernel = KERNEL_CONV3X3_S2;
    if s.pad > 1 {
        return Err(format!("{kernel}: pad = {} must be 0 or 1", s.pad));
    }
    if s.t == 0 || s.m() == 0 {
        return Err(format!("{kernel}: empty output {s:?}"));
    }
    to_i32(
        kernel,
        "input pixels",
        s.t.saturating_mul(s.h_in).saturating_mul(s.w_in),
    )?;
    gemm_launch(
        [KERNEL_CONV3X3_S2, KERNEL_CONV3X3_S2_N128],
        s.m(),
        s.cin,
        s.cout,
    )
}

/// Launch of `conv_tstride_f16` / `conv_tstride_f16_n128` (same parameters).
pub fn conv_tstride_launch(s: &ConvTStrideShape) -> Result<ConvLaunch, String> {
    let kernel = KERNEL_CONV_TSTRIDE;
    if s.t_out == 0 || s.hw == 0 {
        return Err(format!("{kernel}: empty output {s:?}"));
    }
    if s.taps == 0 || s.stride == 0 || s.taps > 9 {
        return Err(format!(
            "{kernel}: taps = {} must be in 1..=9 and stride = {} positive",
            s.taps, s.stride
        ));
    }
    to_i32(kernel, "input pixels", s.frames_in().saturating_mul(s.hw))?;
    // gemm_launch checks 9 Cin against i32, which covers taps Cin.
    gemm_launch(
        [KERNEL_CONV_TSTRIDE, KERNEL_CONV_TSTRIDE_N128],
        s.m(),
        s.cin,
        s.cout,
    )
}

/// CPU reference of `conv3x3s2_f16` in f64: `x [t, h_in, w_in, cin]`, packed
/// `w [cout, 3, 3, cin]`, output `[t, h_out, w_out, cout]` (not rounded to f16).
pub fn conv3x3s2_reference(
    s: &Conv3x3S2Shape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    let (ho, wo) = s.out_hw();
    let (cin, cout) = (s.cin, s.cout);
    check_len(
        "conv3x3s2_reference x",
        x.len(),
        s.t * s.h_in * s.w_in * cin,
    )?;
    check_len("conv3x3s2_reference w", w.len(), cout * 9 * cin)?;
    let m = s.m();
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    for t in 0..s.t {
        for oy in 0..ho {
            for ox in 0..wo {
                let row = (t * ho + oy) * wo + ox;
                for co in 0..cout {
                    let (mut acc, mut a) = (0.0, 0.0);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (2 * oy + ky) as isize - s.pad as isize;
                            let ix = (2 * ox + kx) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h_in as isize || ix >= s.w_in as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            let xp = &x[((t * s.h_in + iy) * s.w_in + ix) * cin..][..cin];
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

/// CPU reference of `conv_tstride_f16` in f64: `x [frames_in, hw, cin]`, packed
/// `w [cout, taps, cin]`, output `[t_out, hw, cout]`.
pub fn conv_tstride_reference(
    s: &ConvTStrideShape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    let (cin, cout, hw) = (s.cin, s.cout, s.hw);
    check_len(
        "conv_tstride_reference x",
        x.len(),
        s.frames_in() * hw * cin,
    )?;
    check_len("conv_tstride_reference w", w.len(), cout * s.taps * cin)?;
    let m = s.m();
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    for t in 0..s.t_out {
        for p in 0..hw {
            let row = t * hw + p;
            for co in 0..cout {
                let (mut acc, mut a) = (0.0, 0.0);
                for j in 0..s.taps {
                    let b = s.stride * t + j;
                    let xp = &x[(b * hw + p) * cin..][..cin];
                    let wp = &w[(co * s.taps + j) * cin..][..cin];
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
