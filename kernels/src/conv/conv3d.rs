//! The causal 3x3x3 convolution `conv3d_f16` / `conv3d_f16_n128` of `kernels/cuda/conv.cu`
//! (the Wan VAE's `CausalConv3d` with padding 1, `docs/wan_vae.md`): its parameter struct,
//! launch configuration, weight packing and CPU reference.
//!
//! Layouts (f16 bit patterns, channels last): input buffer `[2 + T, H, W, Cin]`, the two
//! context frames (the layer's cache: the previous chunk's last two input frames, zeros at the
//! stream start) then the chunk's `T` frames; weight `[Cout, 27, Cin]` with tap
//! `(dt * 3 + dy) * 3 + dx`, from the checkpoint's `[Cout, Cin, 3, 3, 3]` by
//! [`pack_conv3d_weight`]; bias `[Cout]`; residual and output `[T, H, W, Cout]`.
//! Output frame `s` reads buffer frames `s, s + 1, s + 2` (sequence frames `s - 2 .. s`), each
//! through the 3x3 window with zero padding 1.

use super::{check_len, finish, gemm_launch, to_i32, ConvLaunch, Reference};

/// Entry point names in the PTX and in the emulator.
pub const KERNEL_CONV3D: &str = "conv3d_f16";
pub const KERNEL_CONV3D_N128: &str = "conv3d_f16_n128";

/// `conv3d_f16` (`Conv3dParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conv3dParams {
    /// (2 + t, height, width, cin) f16: two context frames, then the chunk
    pub x: *const u16,
    /// (cout, 27, cin) f16, [`pack_conv3d_weight`]
    pub w: *const u16,
    /// (cout) f16, or null
    pub bias: *const u16,
    /// (t, height, width, cout) f16, or null
    pub residual: *const u16,
    /// (t, height, width, cout) f16
    pub out: *mut u16,
    pub t: i32,
    pub height: i32,
    pub width: i32,
    pub cin: i32,
    pub cout: i32,
}

/// A causal 3x3x3 convolution of a chunk of `t` frames of `height x width` pixels,
/// `cin -> cout` (the input buffer has `2 + t` frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dShape {
    pub t: usize,
    pub height: usize,
    pub width: usize,
    pub cin: usize,
    pub cout: usize,
}

impl Conv3dShape {
    /// GEMM rows: output pixels `t * height * width`.
    pub fn m(&self) -> usize {
        self.t * self.height * self.width
    }
    /// GEMM depth: `27 * cin`.
    pub fn k(&self) -> usize {
        27 * self.cin
    }
    /// Elements of the input buffer `[2 + t, height, width, cin]`.
    pub fn input_len(&self) -> usize {
        (2 + self.t) * self.height * self.width * self.cin
    }
}

/// Launch of `conv3d_f16` / `conv3d_f16_n128` (same parameters): the wide entry when
/// `Cout % 128 == 0`. Contract: `Cin % 8 == 0`, `Cout >= 1`, a non-empty chunk, the input
/// buffer's pixel count and `27 Cin` within i32.
pub fn conv3d_launch(s: &Conv3dShape) -> Result<ConvLaunch, String> {
    let kernel = KERNEL_CONV3D;
    if s.t == 0 || s.height == 0 || s.width == 0 {
        return Err(format!("{kernel}: empty input {s:?}"));
    }
    // Input pixel indices (context frames included) travel as i32, as does K.
    to_i32(
        kernel,
        "input pixels",
        (s.t.saturating_add(2))
            .saturating_mul(s.height)
            .saturating_mul(s.width),
    )?;
    to_i32(kernel, "K = 27 Cin", s.cin.saturating_mul(27))?;
    gemm_launch([KERNEL_CONV3D, KERNEL_CONV3D_N128], s.m(), s.cin, s.cout)
}

/// `[Cout, Cin, 3, 3, 3]` (PyTorch Conv3d, index order `dt, dy, dx`) -> `[Cout, 27, Cin]`,
/// the kernel's `[Cout, 27 Cin]`, K index `((dt * 3 + dy) * 3 + dx) * Cin + ci`.
pub fn pack_conv3d_weight<T: Copy>(w: &[T], cout: usize, cin: usize) -> Result<Vec<T>, String> {
    let want = cout.saturating_mul(cin).saturating_mul(27);
    if w.len() != want {
        return Err(format!(
            "pack_conv3d_weight: {} elements, expected [{cout}, {cin}, 3, 3, 3] = {want}",
            w.len()
        ));
    }
    let mut out = Vec::with_capacity(w.len());
    for co in 0..cout {
        for tap in 0..27 {
            for ci in 0..cin {
                out.push(w[(co * cin + ci) * 27 + tap]);
            }
        }
    }
    Ok(out)
}

/// CPU reference of `conv3d_f16` in f64 on the (f16-exact) inputs given as f64:
/// `x [2 + t, height, width, cin]` (context first), packed `w [cout, 27, cin]`, `bias [cout]`,
/// `residual [t, height, width, cout]`. The output is not rounded to f16.
pub fn conv3d_reference(
    s: &Conv3dShape,
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> Result<Reference, String> {
    let (h, wd, cin, cout) = (s.height, s.width, s.cin, s.cout);
    check_len("conv3d_reference x", x.len(), s.input_len())?;
    check_len("conv3d_reference w", w.len(), cout * 27 * cin)?;
    let m = s.m();
    let mut value = vec![0.0; m * cout];
    let mut abs = vec![0.0; m * cout];
    for t in 0..s.t {
        for oy in 0..h {
            for ox in 0..wd {
                let row = (t * h + oy) * wd + ox;
                for co in 0..cout {
                    let (mut acc, mut a) = (0.0, 0.0);
                    for dt in 0..3 {
                        // Sequence frame t - 2 + dt is buffer frame t + dt.
                        let b = t + dt;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (iy, ix) = ((oy + dy) as isize - 1, (ox + dx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let pix = (b * h + iy as usize) * wd + ix as usize;
                                let xp = &x[pix * cin..][..cin];
                                let tap = (dt * 3 + dy) * 3 + dx;
                                let wp = &w[(co * 27 + tap) * cin..][..cin];
                                for (xv, wv) in xp.iter().zip(wp) {
                                    acc += xv * wv;
                                    a += (xv * wv).abs();
                                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_moves_the_27_taps_before_channels() {
        // w[co][ci][dt][dy][dx] = 1000 co + 100 ci + tap, tap = (dt * 3 + dy) * 3 + dx.
        let (cout, cin) = (2, 3);
        let w: Vec<u32> = (0..cout * cin * 27)
            .map(|i| {
                let (co, ci, tap) = (i / (cin * 27), i / 27 % cin, i % 27);
                (1000 * co + 100 * ci + tap) as u32
            })
            .collect();
        let p = pack_conv3d_weight(&w, cout, cin).unwrap();
        for co in 0..cout {
            for dt in 0..3 {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let tap = (dt * 3 + dy) * 3 + dx;
                        for ci in 0..cin {
                            // Packed index ((co * 27 + tap) * cin + ci) holds the checkpoint's
                            // w[co, ci, dt, dy, dx].
                            let want = (1000 * co + 100 * ci + tap) as u32;
                            assert_eq!(p[(co * 27 + tap) * cin + ci], want);
                        }
                    }
                }
            }
        }
        assert!(pack_conv3d_weight(&w[1..], cout, cin)
            .unwrap_err()
            .contains("[2, 3, 3, 3, 3]"));
    }

    #[test]
    fn launch_checks_the_contract_and_picks_the_column_tile() {
        let s = |t, height, width, cin, cout| Conv3dShape {
            t,
            height,
            width,
            cin,
            cout,
        };
        let l = conv3d_launch(&s(1, 60, 104, 16, 384)).unwrap();
        assert_eq!(l.kernel, KERNEL_CONV3D_N128);
        assert_eq!((l.config.grid.x, l.config.grid.y), (3, 49));
        let l = conv3d_launch(&s(4, 480, 832, 96, 3)).unwrap();
        assert_eq!(l.kernel, KERNEL_CONV3D);
        assert_eq!((l.config.grid.x, l.config.grid.y), (1, 12480));
        assert_eq!(l.config.shared_bytes, 48 * 1024);
        for (bad, needle) in [
            (s(0, 4, 4, 16, 16), "empty"),
            (s(1, 4, 4, 12, 16), "Cin = 12"),
            (s(1, 4, 4, 16, 0), "Cout"),
            (s(1, 1 << 16, 1 << 15, 16, 16), "exceeds i32"),
        ] {
            let e = conv3d_launch(&bad).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}
