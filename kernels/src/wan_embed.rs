//! Wan2.1's sinusoidal timestep features (`kernels/cuda/wan_embed.cu`) for any `freq_dim`
//! (docs/wan.md section 2.2): `out[f] = [cos(t_f w_k), sin(t_f w_k)]`, `w_k =
//! 10000^(-k / half)`, `half = freq_dim / 2`, computed in f64, stored f16; `t` is read from
//! device memory (rewritten before each graph replay) on Wan's 0..1000 scale.

use crate::emu::{Dim3, LaunchConfig};

pub const KERNEL_TIMESTEP_FEATURES: &str = "wan_timestep_features";
pub const THREADS: u32 = 256;
/// Grid-stride loop: at most this many CTAs.
const MAX_BLOCKS: usize = 1024;

/// `wan_timestep_features`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WanTimestepParams {
    /// (frames) f32 timesteps on the 0..1000 scale
    pub t: *const f32,
    /// (frames, 2 * half) f16: cos then sin
    pub out: *mut u16,
    pub frames: i32,
    /// `freq_dim / 2`
    pub half: i32,
}

/// Launch configuration for `frames` frames of `freq_dim` features. Rules: frames >= 1,
/// freq_dim even and >= 2, `frames * freq_dim` within i32.
pub fn timestep_features_config(frames: usize, freq_dim: usize) -> Result<LaunchConfig, String> {
    let k = KERNEL_TIMESTEP_FEATURES;
    if frames == 0 || freq_dim < 2 || freq_dim % 2 != 0 {
        return Err(format!(
            "{k}: frames = {frames} must be at least 1 and freq_dim = {freq_dim} even and at \
             least 2"
        ));
    }
    let n = frames
        .checked_mul(freq_dim)
        .filter(|&n| i32::try_from(n).is_ok())
        .ok_or_else(|| format!("{k}: frames * freq_dim exceeds i32"))?;
    let items = n / 2;
    Ok(LaunchConfig {
        grid: Dim3::from(items.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32),
        block: Dim3::from(THREADS),
        shared_bytes: 0,
    })
}
