//! The layout and pointwise kernels of the Wan-family decoders' device lowering
//! (`kernels/cuda/video.cu`): parameter structs mirroring the C++ ones, launch
//! configurations that check the shape contract and return errors (never panic), and CPU
//! references. f16 tensors are `u16` bit patterns, activations `[frames, pixels, channels]`.
//!
//! Every entry is a 1-D grid-stride loop over 8-element items of [`THREADS`]-thread CTAs;
//! the grid is `min(ceil(items / THREADS), MAX_BLOCKS)` and the loop covers the rest.

use crate::emu::{Dim3, LaunchConfig};

/// Threads per CTA (`VideoTraits::kThreads`).
pub const THREADS: u32 = 256;
/// f16 elements per item: one 16-byte access.
pub const VEC: usize = 8;
/// Most CTAs a launch uses; the grid-stride loop covers larger sizes.
pub const MAX_BLOCKS: u32 = 8192;

pub const KERNEL_WITH_PAST: &str = "video_with_past_f16";
pub const KERNEL_SHUFFLE: &str = "video_shuffle_f16";
pub const KERNEL_MAP: &str = "video_map_f16";

/// `video_map_f16`'s `op`: ReLU.
pub const OP_RELU: i32 = 0;
/// `video_map_f16`'s `op`: `limit * tanh(x / limit)`.
pub const OP_SOFT_CLAMP: i32 = 1;

/// `video_with_past_f16`: `out [frames, pixels, 2c] = [x[t], x[t-1]]`, `x[-1] = past
/// [pixels, c]` or zeros when `past` is null.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VideoWithPastParams {
    pub x: *const u16,
    pub past: *const u16,
    pub out: *mut u16,
    pub frames: i32,
    pub pixels: i32,
    pub c: i32,
}

/// `video_shuffle_f16`: `out [frames * stride, pixels, c]` from `y [frames, pixels, stride
/// * c]`, output frame `stride * t + s` taking channels `[s c, (s + 1) c)` of frame `t`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VideoShuffleParams {
    pub y: *const u16,
    pub out: *mut u16,
    pub frames: i32,
    pub pixels: i32,
    pub c: i32,
    pub stride: i32,
}

/// `video_map_f16`: `out[i] = op(x[i])` over `n` elements (`out` may be `x`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VideoMapParams {
    pub x: *const u16,
    pub out: *mut u16,
    pub n: i64,
    pub op: i32,
    pub limit: f32,
}

fn grid_for(items: usize) -> LaunchConfig {
    let blocks = items
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS as usize);
    LaunchConfig {
        grid: Dim3::from(blocks as u32),
        block: Dim3::from(THREADS),
        shared_bytes: 0,
    }
}

fn positive_i32(kernel: &str, what: &str, v: usize) -> Result<(), String> {
    if v == 0 || i32::try_from(v).is_err() {
        return Err(format!(
            "{kernel}: {what} = {v} must be at least 1 and fit in i32"
        ));
    }
    Ok(())
}

fn channels_of_8(kernel: &str, c: usize) -> Result<(), String> {
    if c % VEC != 0 {
        return Err(format!(
            "{kernel}: channels = {c} must be a multiple of {VEC} (16-byte items)"
        ));
    }
    Ok(())
}

/// Launch of `video_with_past_f16` over `x [frames, pixels, c]`.
pub fn with_past_config(frames: usize, pixels: usize, c: usize) -> Result<LaunchConfig, String> {
    let k = KERNEL_WITH_PAST;
    positive_i32(k, "frames", frames)?;
    positive_i32(k, "pixels", pixels)?;
    positive_i32(k, "channels", c)?;
    channels_of_8(k, c)?;
    let elems = frames
        .checked_mul(pixels)
        .and_then(|r| r.checked_mul(2 * c))
        .filter(|&e| i64::try_from(e).is_ok())
        .ok_or_else(|| format!("{k}: {frames} x {pixels} x {} elements overflow", 2 * c))?;
    Ok(grid_for(elems / VEC))
}

/// Launch of `video_shuffle_f16` over `y [frames, pixels, stride * c]`.
pub fn shuffle_config(
    frames: usize,
    pixels: usize,
    c: usize,
    stride: usize,
) -> Result<LaunchConfig, String> {
    let k = KERNEL_SHUFFLE;
    positive_i32(k, "frames", frames)?;
    positive_i32(k, "pixels", pixels)?;
    positive_i32(k, "channels", c)?;
    positive_i32(k, "stride", stride)?;
    channels_of_8(k, c)?;
    let elems = frames
        .checked_mul(pixels)
        .and_then(|r| r.checked_mul(stride))
        .and_then(|r| r.checked_mul(c))
        .filter(|&e| i64::try_from(e).is_ok())
        .ok_or_else(|| format!("{k}: {frames} x {pixels} x {stride} x {c} elements overflow"))?;
    Ok(grid_for(elems / VEC))
}

/// Launch of `video_map_f16` over `n >= 1` elements (any n) with `op`.
pub fn map_config(n: usize, op: i32, limit: f32) -> Result<LaunchConfig, String> {
    let k = KERNEL_MAP;
    if n == 0 || i64::try_from(n).is_err() {
        return Err(format!("{k}: n = {n} must be at least 1 and fit in i64"));
    }
    match op {
        OP_RELU => {}
        OP_SOFT_CLAMP if limit.is_finite() && limit > 0.0 => {}
        OP_SOFT_CLAMP => {
            return Err(format!(
                "{k}: soft clamp limit {limit} must be positive and finite"
            ))
        }
        _ => return Err(format!("{k}: unknown op {op}")),
    }
    // Vector items, plus the tail threads (fewer than 8, within the first CTA).
    Ok(grid_for((n / VEC).max(1)))
}

/// CPU reference of `video_with_past_f16` (bit patterns are copied).
pub fn with_past_reference(
    x: &[u16],
    past: Option<&[u16]>,
    frames: usize,
    pixels: usize,
    c: usize,
) -> Vec<u16> {
    let mut out = vec![0u16; frames * pixels * 2 * c];
    for t in 0..frames {
        for p in 0..pixels {
            let dst = &mut out[(t * pixels + p) * 2 * c..][..2 * c];
            dst[..c].copy_from_slice(&x[(t * pixels + p) * c..][..c]);
            if t > 0 {
                dst[c..].copy_from_slice(&x[((t - 1) * pixels + p) * c..][..c]);
            } else if let Some(past) = past {
                dst[c..].copy_from_slice(&past[p * c..][..c]);
            }
        }
    }
    out
}

/// CPU reference of `video_shuffle_f16`.
pub fn shuffle_reference(
    y: &[u16],
    frames: usize,
    pixels: usize,
    c: usize,
    stride: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(y.len());
    for t in 0..frames {
        for s in 0..stride {
            for p in 0..pixels {
                out.extend_from_slice(&y[(t * pixels + p) * stride * c + s * c..][..c]);
            }
        }
    }
    out
}

/// CPU reference of `video_map_f16` in f64 on the f16 inputs `x` widened to f32 (the kernel
/// computes in f32 and rounds to f16).
pub fn map_reference(x: &[f32], op: i32, limit: f32) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            let v = f64::from(v);
            if op == OP_RELU {
                v.max(0.0)
            } else {
                let l = f64::from(limit);
                (v / l).tanh() * l
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_check_the_contract() {
        assert!(with_past_config(1, 4, 12)
            .unwrap_err()
            .contains("multiple of 8"));
        assert!(shuffle_config(0, 4, 8, 2).unwrap_err().contains("frames"));
        assert!(map_config(0, OP_RELU, 0.0).is_err());
        assert!(map_config(5, 7, 0.0).unwrap_err().contains("unknown op"));
        assert!(map_config(5, OP_SOFT_CLAMP, 0.0).is_err());
        let c = with_past_config(2, 1000, 64).unwrap();
        assert_eq!(c.grid.x as usize, (2 * 1000 * 128 / 8usize).div_ceil(256));
    }
}
