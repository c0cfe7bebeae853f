//! The Wan VAE decoder's non-convolution kernels (`kernels/cuda/vae.cu`, the math of
//! `docs/wan_vae.md`): `rms_norm_channels_f16` (the VAE's `RMS_norm`, optional SiLU) and
//! `softmax_rows_f16` (the mid block's attention softmax between two gemm.cu GEMMs):
//! parameter structs mirroring the C++ ones, launch configurations that check the shape
//! contract and return errors naming the kernel and the rule (never panic), and CPU
//! references in f64.
//!
//! Layouts (f16 tensors are `u16` bit patterns, activations channels last):
//! - RMS norm: `x`, `out` `[pixels, C]` (any number of frames: a pixel is independent),
//!   `gamma [C]`; `out` may be `x` (in place).
//! - softmax: scores `s [rows, ld]` f32 (as `gemm_bias_f32` writes `Q K^T`), probabilities
//!   `p [rows, ld]` f16 (the A operand of `gemm_bias_f16` for `P V`); columns `cols..ld` are
//!   padding keys and get probability 0.

use crate::emu::LaunchConfig;

/// Threads per CTA of both entries.
pub const THREADS: u32 = 256;
/// Pixels per CTA of the RMS norm (a warp each).
pub const RMS_PIXELS_PER_CTA: usize = 8;
/// Largest channel count of the RMS norm: 32 lanes x 2 chunks x 8 channels.
pub const RMS_MAX_CHANNELS: usize = 512;
/// `F.normalize`'s floor on the norm.
pub const RMS_FLOOR: f64 = 1e-12;

pub const KERNEL_RMS_NORM: &str = "rms_norm_channels_f16";
pub const KERNEL_SOFTMAX_ROWS: &str = "softmax_rows_f16";

/// `rms_norm_channels_f16` (`RmsNormChannelsParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RmsNormChannelsParams {
    /// (pixels, c) f16
    pub x: *const u16,
    /// (c) f16
    pub gamma: *const u16,
    /// (pixels, c) f16; may equal `x`
    pub out: *mut u16,
    pub pixels: i32,
    pub c: i32,
    /// 1: SiLU after the norm
    pub silu: i32,
}

/// `softmax_rows_f16` (`SoftmaxRowsParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxRowsParams {
    /// (rows, ld) f32 scores
    pub s: *const f32,
    /// (rows, ld) f16 probabilities
    pub p: *mut u16,
    pub rows: i32,
    /// valid keys (`1..=ld`)
    pub cols: i32,
    /// row length, a multiple of 8
    pub ld: i32,
    /// factor on the scores (`1 / sqrt(head dim)`)
    pub scale: f32,
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// Launch of `rms_norm_channels_f16` over `pixels` pixels of `c` channels (all frames of an
/// activation at once). Contract: `c % 8 == 0`, `8 <= c <= 512`, `pixels >= 1`,
/// `pixels * c` within i32 indexing of pixels.
pub fn rms_norm_launch(pixels: usize, c: usize) -> Result<LaunchConfig, String> {
    let kernel = KERNEL_RMS_NORM;
    if pixels == 0 {
        return Err(format!("{kernel}: no pixels"));
    }
    if c < 8 || c % 8 != 0 || c > RMS_MAX_CHANNELS {
        return Err(format!(
            "{kernel}: C = {c} must be a multiple of 8 in 8..={RMS_MAX_CHANNELS} (a warp holds a \
             pixel as two 16-byte chunks a lane)"
        ));
    }
    to_i32(kernel, "pixels", pixels)?;
    let ctas = pixels.div_ceil(RMS_PIXELS_PER_CTA);
    Ok(LaunchConfig {
        grid: (ctas as u32).into(),
        block: THREADS.into(),
        shared_bytes: 0,
    })
}

/// Launch of `softmax_rows_f16`: `rows` rows of `ld` scores of which the first `cols` are
/// keys. Contract: `ld % 8 == 0` (16-byte rows), `1 <= cols <= ld`, `rows >= 1`,
/// `rows <= 2^31 - 1` (one CTA a row).
pub fn softmax_rows_launch(rows: usize, cols: usize, ld: usize) -> Result<LaunchConfig, String> {
    let kernel = KERNEL_SOFTMAX_ROWS;
    if rows == 0 {
        return Err(format!("{kernel}: no rows"));
    }
    if ld == 0 || ld % 8 != 0 {
        return Err(format!(
            "{kernel}: ld = {ld} must be a positive multiple of 8 (16-byte rows)"
        ));
    }
    if cols == 0 || cols > ld {
        return Err(format!("{kernel}: cols = {cols} must be in 1..={ld} (ld)"));
    }
    let rows32 = to_i32(kernel, "rows", rows)?;
    to_i32(kernel, "ld", ld)?;
    Ok(LaunchConfig {
        grid: (rows32 as u32).into(),
        block: THREADS.into(),
        shared_bytes: 0,
    })
}

/// CPU reference of the RMS norm in f64 on `x [pixels, c]`: `y = x / max(|x|_2, 1e-12)
/// sqrt(c) gamma`, then `SiLU(y)` when `silu`. Returns the output and, per element, the
/// pre-activation `y` (for the tolerance).
pub fn rms_norm_reference(
    c: usize,
    x: &[f64],
    gamma: &[f64],
    silu: bool,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    if c == 0 || x.len() % c != 0 {
        return Err(format!(
            "rms_norm_reference: {} elements are not pixels of {c} channels",
            x.len()
        ));
    }
    if gamma.len() != c {
        return Err(format!(
            "rms_norm_reference: gamma has {} elements, expected {c}",
            gamma.len()
        ));
    }
    let root = (c as f64).sqrt();
    let mut out = Vec::with_capacity(x.len());
    let mut pre = Vec::with_capacity(x.len());
    for px in x.chunks_exact(c) {
        let norm = px.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = root / norm.max(RMS_FLOOR);
        for (v, g) in px.iter().zip(gamma) {
            let y = v * scale * g;
            pre.push(y);
            out.push(if silu { y / (1.0 + (-y).exp()) } else { y });
        }
    }
    Ok((out, pre))
}

/// CPU reference of the row softmax in f64: `s [rows, ld]`, probabilities over the first
/// `cols` columns of each row of `scale * s`, zeros after.
pub fn softmax_rows_reference(
    s: &[f64],
    cols: usize,
    ld: usize,
    scale: f64,
) -> Result<Vec<f64>, String> {
    if ld == 0 || s.len() % ld != 0 || cols == 0 || cols > ld {
        return Err(format!(
            "softmax_rows_reference: {} scores are not rows of ld = {ld} with 1..=ld valid \
             columns (cols = {cols})",
            s.len()
        ));
    }
    let mut out = vec![0.0; s.len()];
    for (row, o) in s.chunks_exact(ld).zip(out.chunks_exact_mut(ld)) {
        let m = row[..cols]
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row[..cols].iter().map(|v| ((v - m) * scale).exp()).sum();
        for (o, v) in o[..cols].iter_mut().zip(&row[..cols]) {
            *o = ((v - m) * scale).exp() / sum;
        }
    }
    Ok(out)
}

/// The projection bias of the attention with the value bias folded in, `bp + Wp bv`, for
/// `wp [c, c]` (the `proj` weight as stored), `bp [c]`, `bv [c]` (rows `2c..3c` of
/// `to_qkv.bias`). The device path computes `V^T = Wv N^T` without bias (it is a GEMM whose
/// rows are channels); since every softmax row sums to 1, `P (V + 1 bv^T) = P V + 1 bv^T`,
/// and `proj` turns the constant `bv` into `Wp bv`. Done once at load time (the lowering
/// rounds the result to f16).
pub fn fold_value_bias(wp: &[f64], bp: &[f64], bv: &[f64]) -> Result<Vec<f64>, String> {
    let c = bp.len();
    if wp.len() != c * c || bv.len() != c {
        return Err(format!(
            "fold_value_bias: wp {} elements, bp {c}, bv {}: expected [c, c], [c], [c]",
            wp.len(),
            bv.len()
        ));
    }
    Ok((0..c)
        .map(|r| {
            bp[r]
                + wp[r * c..][..c]
                    .iter()
                    .zip(bv)
                    .map(|(w, b)| w * b)
                    .sum::<f64>()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_check_the_contract() {
        let l = rms_norm_launch(4 * 480 * 832, 96).unwrap();
        assert_eq!((l.grid.x, l.block.x), (199_680, 256));
        assert!(rms_norm_launch(17, 384).is_ok());
        for (p, c, needle) in [
            (0, 96, "no pixels"),
            (4, 100, "C = 100"),
            (4, 520, "C = 520"),
        ] {
            let e = rms_norm_launch(p, c).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
        let l = softmax_rows_launch(6240, 6240, 6240).unwrap();
        assert_eq!(l.grid.x, 6240);
        for (r, c, ld, needle) in [
            (0, 8, 8, "no rows"),
            (4, 8, 12, "ld = 12"),
            (4, 0, 8, "cols = 0"),
            (4, 9, 8, "cols = 9"),
        ] {
            let e = softmax_rows_launch(r, c, ld).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn references_normalise() {
        // One pixel (3, 4) of 2 channels: |x| = 5, y = x / 5 * sqrt(2) * gamma.
        let (y, _) = rms_norm_reference(2, &[3.0, 4.0], &[1.0, 2.0], false).unwrap();
        let r = 2f64.sqrt();
        assert!((y[0] - 0.6 * r).abs() < 1e-15 && (y[1] - 1.6 * r).abs() < 1e-15);
        // A zero pixel stays zero (the floor, no NaN).
        let (y, _) = rms_norm_reference(2, &[0.0, 0.0], &[1.0, 1.0], true).unwrap();
        assert_eq!(y, vec![0.0, 0.0]);
        let p = softmax_rows_reference(&[0.0, 2f64.ln(), 7.0, 9.0], 2, 4, 1.0).unwrap();
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-15 && (p[1] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(&p[2..], &[0.0, 0.0]);
    }
}
