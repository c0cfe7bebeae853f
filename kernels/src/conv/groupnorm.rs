//! The GroupNorm (+ SiLU) of the decoder as three kernels (`groupnorm_stats`,
//! `groupnorm_finalize`, `groupnorm_apply`): their parameter structs, the launch plan and
//! the CPU reference.

use super::{check_len, to_i32, GN_APPLY_CHUNKS, GN_EPS, GN_TARGET_SPLITS, GN_THREADS, MAX_GRID_Y};
use crate::emu::{Dim3, LaunchConfig};

/// `groupnorm_stats` (`GroupNormStatsParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GroupNormStatsParams {
    /// (frames, hw, c) f16
    pub x: *const u16,
    /// (frames, splits, groups) pairs of f32 (slice mean, slice centred sum of squares)
    pub part: *mut f32,
    pub frames: i32,
    pub hw: i32,
    pub c: i32,
    pub groups: i32,
    pub pixels_per_split: i32,
}

/// `groupnorm_finalize` (`GroupNormFinalizeParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GroupNormFinalizeParams {
    /// (frames, splits, groups) f32 pairs from `groupnorm_stats`
    pub part: *const f32,
    /// (frames, groups) f32 pairs (mean, 1 / sqrt(var + eps))
    pub stats: *mut f32,
    pub frames: i32,
    pub splits: i32,
    pub groups: i32,
    pub hw: i32,
    /// channels per group
    pub cg: i32,
    pub pixels_per_split: i32,
}

/// `groupnorm_apply` (`GroupNormApplyParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GroupNormApplyParams {
    /// (frames, hw, c) f16
    pub x: *const u16,
    /// (frames, groups) f32 pairs (mean, rstd)
    pub stats: *const f32,
    /// (c) f16
    pub gamma: *const u16,
    /// (c) f16
    pub beta: *const u16,
    /// (frames, hw, c) f16
    pub out: *mut u16,
    pub hw: i32,
    pub c: i32,
    pub groups: i32,
    /// 1: SiLU after the affine
    pub silu: i32,
}

/// A GroupNorm's input `[frames, hw, c]` in `groups` groups of `c / groups` channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormShape {
    pub frames: usize,
    pub hw: usize,
    pub c: usize,
    pub groups: usize,
}

/// The three launches of a GroupNorm and the scratch they need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormPlan {
    pub splits: usize,
    pub pixels_per_split: usize,
    /// f32 elements of `part` (`frames * splits * groups * 2`).
    pub part_len: usize,
    /// f32 elements of `stats` (`frames * groups * 2`).
    pub stats_len: usize,
    pub stats: LaunchConfig,
    pub finalize: LaunchConfig,
    pub apply: LaunchConfig,
}

/// Plans a GroupNorm of `frames` frames of `hw` pixels of `c` channels in `groups` groups:
/// about [`GN_TARGET_SPLITS`] statistics CTAs per frame (no empty split).
pub fn groupnorm_plan(shape: &GroupNormShape) -> Result<GroupNormPlan, String> {
    let GroupNormShape {
        frames,
        hw,
        c,
        groups,
    } = *shape;
    let kernel = "groupnorm";
    if frames == 0 || hw == 0 {
        return Err(format!(
            "{kernel}: empty input ({frames} frames of {hw} pixels)"
        ));
    }
    if c < 8 || c % 8 != 0 || 2048 % c != 0 {
        return Err(format!(
            "{kernel}: C = {c} must be a multiple of 8 dividing 2048 (a thread's 16-byte chunks \
             must keep the same 8 channels)"
        ));
    }
    if groups == 0 || c % groups != 0 {
        return Err(format!("{kernel}: {groups} groups must divide C = {c}"));
    }
    to_i32(
        kernel,
        "elements",
        frames.saturating_mul(hw).saturating_mul(c),
    )?;
    if frames > MAX_GRID_Y {
        return Err(format!(
            "{kernel}: {frames} frames exceed the grid's y limit"
        ));
    }
    let pixels_per_split = hw.div_ceil(GN_TARGET_SPLITS);
    let splits = hw.div_ceil(pixels_per_split);
    let apply_elems = GN_THREADS as usize * GN_APPLY_CHUNKS * 8;
    let block: Dim3 = GN_THREADS.into();
    Ok(GroupNormPlan {
        splits,
        pixels_per_split,
        part_len: frames * splits * groups * 2,
        stats_len: frames * groups * 2,
        stats: LaunchConfig {
            grid: (splits as u32, frames as u32).into(),
            block,
            shared_bytes: 0,
        },
        finalize: LaunchConfig {
            grid: ((frames * groups).div_ceil(GN_THREADS as usize) as u32).into(),
            block,
            shared_bytes: 0,
        },
        apply: LaunchConfig {
            grid: ((hw * c).div_ceil(apply_elems) as u32, frames as u32).into(),
            block,
            shared_bytes: 0,
        },
    })
}

/// CPU reference of the GroupNorm (+ SiLU) on `x [frames, hw, c]`: per frame and group the
/// mean and biased variance in f64, `y = gamma (x - mean) / sqrt(var + 1e-6) + beta`, then
/// `SiLU(y) = y / (1 + e^-y)` when `silu`. Returns the output and, per element, the
/// normalised value `(x - mean) / sqrt(var + eps)` (for the tolerance).
pub fn groupnorm_reference(
    shape: &GroupNormShape,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    silu: bool,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let GroupNormShape {
        frames,
        hw,
        c,
        groups,
    } = *shape;
    check_len("groupnorm_reference x", x.len(), frames * hw * c)?;
    check_len("groupnorm_reference gamma", gamma.len(), c)?;
    check_len("groupnorm_reference beta", beta.len(), c)?;
    if groups == 0 || c % groups != 0 {
        return Err(format!(
            "groupnorm_reference: {groups} groups must divide C = {c}"
        ));
    }
    let cg = c / groups;
    let mut out = vec![0.0; x.len()];
    let mut normed = vec![0.0; x.len()];
    for f in 0..frames {
        let xf = &x[f * hw * c..][..hw * c];
        for g in 0..groups {
            let vals = || {
                (0..hw).flat_map(move |p| (g * cg..(g + 1) * cg).map(move |ch| (p * c + ch, ch)))
            };
            let n = (hw * cg) as f64;
            let mean = vals().map(|(i, _)| xf[i]).sum::<f64>() / n;
            let var = vals().map(|(i, _)| (xf[i] - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + GN_EPS).sqrt();
            for (i, ch) in vals() {
                let z = (xf[i] - mean) * rstd;
                let y = gamma[ch] * z + beta[ch];
                normed[f * hw * c + i] = z;
                out[f * hw * c + i] = if silu { y / (1.0 + (-y).exp()) } else { y };
            }
        }
    }
    Ok((out, normed))
}
