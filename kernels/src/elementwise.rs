//! The small per-element kernels of a streaming step and of weight upload
//! (`kernels/cuda/elementwise.cu`): parameter structs mirroring the C++ ones, and a launch
//! configuration per entry that checks the shape contract and returns an error naming the
//! kernel, the value and the rule (never panics).
//!
//! Every entry is a 1-D grid-stride loop over items of [`THREADS`]-thread CTAs; the grid is
//! `min(ceil(items / THREADS), MAX_BLOCKS)` and the loop covers the rest, so any size runs
//! with any grid. Pointers are 16-byte aligned (cudaMalloc, or arena offsets that are
//! multiples of 16). f16 and bf16 tensors are `u16` bit patterns.

use crate::emu::{Dim3, LaunchConfig};

/// Threads per CTA of every entry (`EwTraits::kThreads`).
pub const THREADS: u32 = 256;
/// Elements per vector item (`EwTraits::kVec`): one 16-byte access of 16-bit values.
pub const VEC: usize = 8;
/// Most CTAs a launch uses; the grid-stride loop covers larger sizes (8192 CTAs of 256 are
/// about 8 waves of resident threads on a 132-SM H100).
pub const MAX_BLOCKS: u32 = 8192;
/// Frequencies of the timestep features (`EwTraits::kFreqs`): the output has `2 * 128`.
pub const TIMESTEP_FREQS: usize = 128;

pub const KERNEL_PATCHIFY: &str = "patchify";
pub const KERNEL_ADD_POSITIONS: &str = "add_positions";
pub const KERNEL_TIMESTEP_FEATURES: &str = "timestep_features";
pub const KERNEL_SILU: &str = "silu_f16";
pub const KERNEL_GELU_TANH: &str = "gelu_tanh_f16";
pub const KERNEL_MODULATION: &str = "modulation";
pub const KERNEL_UNPATCHIFY: &str = "unpatchify";
pub const KERNEL_EULER_STEP: &str = "euler_step";
pub const KERNEL_NOISE_FILL: &str = "noise_fill";
pub const KERNEL_WEIGHTS_INIT: &str = "weights_init";
pub const KERNEL_CONVERT_F32_F16: &str = "convert_f32_f16";
pub const KERNEL_CONVERT_BF16_F16: &str = "convert_bf16_f16";
pub const KERNEL_CONVERT_F16_F32: &str = "convert_f16_f32";
pub const KERNEL_PHILOX_BLOCKS: &str = "philox_blocks";

/// `patchify`: latents `x [F, C, H, W]` to tokens `out [batch * F*(H/2)*(W/2), C*4]` (f16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PatchifyParams {
    pub x: *const f32,
    pub out: *mut u16,
    pub frames: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub batch: i32,
}

/// `add_positions`: `h [rows, d] += pos_t[f] + pos_h[i] + pos_w[j]` for token
/// `r % tokens = (f*ht + i)*wt + j`; tables f16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AddPositionsParams {
    pub h: *mut f32,
    pub pos_t: *const u16,
    pub pos_h: *const u16,
    pub pos_w: *const u16,
    pub rows: i32,
    pub d: i32,
    pub tokens: i32,
    pub ht: i32,
    pub wt: i32,
}

/// `timestep_features`: `tau [frames]` (f32, device memory) to `out [frames, 256]` (f16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TimestepFeaturesParams {
    pub tau: *const f32,
    pub out: *mut u16,
    pub frames: i32,
}

/// `silu_f16`, `gelu_tanh_f16`: `out[i] = act(x[i])`, f32 in, f16 out, `n` elements.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActivationParams {
    pub x: *const f32,
    pub out: *mut u16,
    pub n: i64,
}

/// `modulation`: `out [frames, k, d] = src[f, vec*d ..] (src_k == k) or src[f, ..]
/// (src_k == 1), plus table [k, d]` (f16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModulationParams {
    pub src: *const f32,
    pub table: *const u16,
    pub out: *mut f32,
    pub frames: i32,
    pub k: i32,
    pub d: i32,
    pub src_k: i32,
}

/// `unpatchify`: tokens `x [batch*T, C*4]` to `out [F, C, H, W]` with `combine`
/// (`v_u + guidance (v_c - v_u)`, branch 0 conditional), else `out [batch, F, C, H, W]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnpatchifyParams {
    pub x: *const f32,
    pub out: *mut f32,
    pub frames: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub batch: i32,
    pub combine: i32,
    pub guidance: f32,
}

/// The per-step control block of `euler_step`, in device memory (written by the host before
/// each graph replay).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EulerControl {
    /// Global latent frame number of the first pushed noise frame.
    pub first_frame: u64,
    /// Frames popped this step: 0, or the chunk size.
    pub shift: i32,
    /// 0.
    pub reserved: i32,
}

/// `euler_step`: `x_next[f] = x[f+s] + dtau[f+s] v[f+s]` (f < F - s), noise for the last
/// `s` frames, `emit[f] = x[f] + dtau[f] v[f]` (f < s), `s = control.shift`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EulerStepParams {
    pub x: *const f32,
    pub v: *const f32,
    pub dtau: *const f32,
    pub control: *const EulerControl,
    pub x_next: *mut f32,
    pub emit: *mut f32,
    pub seed: u64,
    pub frames: i32,
    pub frame_elems: i32,
    pub emit_frames: i32,
}

/// `noise_fill`: `out[f, e] = noise(seed, first_frame + f, e)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoiseFillParams {
    pub out: *mut f32,
    pub seed: u64,
    pub first_frame: u64,
    pub frames: i32,
    pub frame_elems: i32,
}

/// `weights_init`: `out[i - start] = f16(init_value(seed, tensor, i, mean, half_width))`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WeightsInitParams {
    pub out: *mut u16,
    pub seed: u64,
    pub start: u64,
    pub n: i64,
    pub tensor: u32,
    pub mean: f32,
    pub half_width: f32,
}

/// `convert_f32_f16`: `out = f16(in)`, round to nearest even.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvertF32F16Params {
    pub input: *const f32,
    pub out: *mut u16,
    pub n: i64,
}

/// `convert_bf16_f16`: `out = f16(in)` (bf16 bits in), round to nearest even.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvertBf16F16Params {
    pub input: *const u16,
    pub out: *mut u16,
    pub n: i64,
}

/// `convert_f16_f32`: `out = f32(in)`, exact.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvertF16F32Params {
    pub input: *const u16,
    pub out: *mut f32,
    pub n: i64,
}

/// A Philox4x32 counter or output block (`uint4`, 16-byte aligned as in CUDA).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhiloxBlock(pub [u32; 4]);

/// A Philox4x32 key (`uint2`, 8-byte aligned as in CUDA).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhiloxKey(pub [u32; 2]);

/// `philox_blocks`: `out[i] = Philox4x32-10(counter[i], key[i])`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PhiloxBlocksParams {
    pub counter: *const PhiloxBlock,
    pub key: *const PhiloxKey,
    pub out: *mut PhiloxBlock,
    pub n: i32,
}

/// The grid-stride launch for `items` work items.
pub fn grid_for(items: usize) -> LaunchConfig {
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

fn even(kernel: &str, what: &str, v: usize, why: &str) -> Result<(), String> {
    if v % 2 != 0 {
        return Err(format!("{kernel}: {what} = {v} must be even ({why})"));
    }
    Ok(())
}

fn multiple_of_vec(kernel: &str, what: &str, v: usize) -> Result<(), String> {
    if v % VEC != 0 {
        return Err(format!(
            "{kernel}: {what} = {v} must be a multiple of {VEC} (16-byte f16 vectors)"
        ));
    }
    Ok(())
}

/// Product of sizes, as an error when it overflows the kernels' i64 element offsets.
fn elems(kernel: &str, dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| format!("{kernel}: tensor size {dims:?} overflows"))
}

/// The latent shape both patch layouts share: every dimension a positive i32, `H` and `W`
/// even (2x2 patches), the `batch` copies' element count within i64.
fn check_latents(
    k: &str,
    frames: usize,
    c: usize,
    h: usize,
    w: usize,
    batch: usize,
) -> Result<(), String> {
    for (what, v) in [
        ("frames", frames),
        ("C", c),
        ("H", h),
        ("W", w),
        ("batch", batch),
    ] {
        positive_i32(k, what, v)?;
    }
    even(k, "H", h, "2x2 patches")?;
    even(k, "W", w, "2x2 patches")?;
    elems(k, &[batch, frames, c, h, w])?;
    Ok(())
}

/// `patchify` of `x [frames, c, h, w]` into `batch` copies: `c`, `h`, `w` even.
pub fn patchify_config(
    frames: usize,
    c: usize,
    h: usize,
    w: usize,
    batch: usize,
) -> Result<LaunchConfig, String> {
    let k = KERNEL_PATCHIFY;
    check_latents(k, frames, c, h, w, batch)?;
    even(
        k,
        "C",
        c,
        "a thread stores the 8 entries of two channels as one 16-byte vector",
    )?;
    Ok(grid_for(frames * (h / 2) * (w / 2) * (c / 2)))
}

/// `add_positions` on `h [rows, d]` with `tokens = frames * ht * wt` per batch element.
pub fn add_positions_config(
    rows: usize,
    d: usize,
    frames: usize,
    ht: usize,
    wt: usize,
) -> Result<LaunchConfig, String> {
    let k = KERNEL_ADD_POSITIONS;
    for (what, v) in [
        ("rows", rows),
        ("D", d),
        ("frames", frames),
        ("Ht", ht),
        ("Wt", wt),
    ] {
        positive_i32(k, what, v)?;
    }
    multiple_of_vec(k, "D", d)?;
    let tokens = elems(k, &[frames, ht, wt])?;
    positive_i32(k, "tokens", tokens)?;
    if rows % tokens != 0 {
        return Err(format!(
            "{k}: rows = {rows} must be a whole number of batch elements of {tokens} tokens"
        ));
    }
    elems(k, &[rows, d])?;
    Ok(grid_for(rows * (d / VEC)))
}

/// `timestep_features` for `frames` frames.
pub fn timestep_features_config(frames: usize) -> Result<LaunchConfig, String> {
    positive_i32(KERNEL_TIMESTEP_FEATURES, "frames", frames)?;
    Ok(grid_for(frames * TIMESTEP_FREQS))
}

/// `silu_f16` / `gelu_tanh_f16` / the conversions over `n >= 1` elements (any n).
pub fn elementwise_config(kernel: &str, n: usize) -> Result<LaunchConfig, String> {
    if n == 0 || i64::try_from(n).is_err() {
        return Err(format!(
            "{kernel}: n = {n} must be at least 1 and fit in i64"
        ));
    }
    // Vector items, plus the tail threads (fewer than 8, within the first CTA).
    Ok(grid_for((n / VEC).max(1)))
}

/// `modulation` into `out [frames, k, d]` from `src [frames, src_k * d]`, `src_k` in `{1, k}`.
pub fn modulation_config(
    frames: usize,
    k: usize,
    d: usize,
    src_k: usize,
) -> Result<LaunchConfig, String> {
    let kn = KERNEL_MODULATION;
    for (what, v) in [("frames", frames), ("k", k), ("D", d)] {
        positive_i32(kn, what, v)?;
    }
    multiple_of_vec(kn, "D", d)?;
    if src_k != 1 && src_k != k {
        return Err(format!(
            "{kn}: the source holds {src_k} vectors per frame; it must hold 1 (shared by all \
             {k}) or {k}"
        ));
    }
    elems(kn, &[frames, k, d])?;
    Ok(grid_for(frames * k * (d / VEC)))
}

/// `unpatchify` of `batch` branches; `combine` (guidance) needs `batch == 2`.
pub fn unpatchify_config(
    frames: usize,
    c: usize,
    h: usize,
    w: usize,
    batch: usize,
    combine: bool,
) -> Result<LaunchConfig, String> {
    let k = KERNEL_UNPATCHIFY;
    check_latents(k, frames, c, h, w, batch)?;
    if combine && batch != 2 {
        return Err(format!(
            "{k}: guidance combines exactly 2 branches (conditional, unconditional), got \
             batch = {batch}"
        ));
    }
    let out_batches = if combine { 1 } else { batch };
    Ok(grid_for(out_batches * frames * c * h * (w / 2)))
}

/// `euler_step` on `[frames, frame_elems]` with room for `emit_frames` popped frames
/// (`control.shift <= emit_frames < frames`; a larger shift traps on the device).
pub fn euler_step_config(
    frames: usize,
    frame_elems: usize,
    emit_frames: usize,
) -> Result<LaunchConfig, String> {
    let k = KERNEL_EULER_STEP;
    positive_i32(k, "frames", frames)?;
    positive_i32(k, "frame elements", frame_elems)?;
    if frame_elems % 4 != 0 {
        return Err(format!(
            "{k}: frame elements = {frame_elems} must be a multiple of 4 (one Philox block, \
             one float4 per item)"
        ));
    }
    if emit_frames >= frames {
        return Err(format!(
            "{k}: emit_frames = {emit_frames} must be smaller than the buffer's {frames} frames"
        ));
    }
    elems(k, &[frames, frame_elems])?;
    Ok(grid_for(frames * frame_elems / 4))
}

/// `noise_fill` of `[frames, frame_elems]` (any frame size).
pub fn noise_fill_config(frames: usize, frame_elems: usize) -> Result<LaunchConfig, String> {
    let k = KERNEL_NOISE_FILL;
    positive_i32(k, "frames", frames)?;
    positive_i32(k, "frame elements", frame_elems)?;
    elems(k, &[frames, frame_elems])?;
    Ok(grid_for(frames * frame_elems.div_ceil(4)))
}

/// `weights_init` of elements `[start, start + n)`.
pub fn weights_init_config(start: u64, n: usize) -> Result<LaunchConfig, String> {
    let k = KERNEL_WEIGHTS_INIT;
    if n == 0 || i64::try_from(n).is_err() {
        return Err(format!("{k}: n = {n} must be at least 1 and fit in i64"));
    }
    let end = start
        .checked_add(n as u64)
        .filter(|&e| e <= 1 << 62)
        .ok_or_else(|| format!("{k}: elements [{start}, {start} + {n}) overflow"))?;
    let groups = (end - 1) / 8 - start / 8 + 1;
    Ok(grid_for(groups as usize))
}

/// `philox_blocks` over `n` blocks.
pub fn philox_blocks_config(n: usize) -> Result<LaunchConfig, String> {
    positive_i32(KERNEL_PHILOX_BLOCKS, "n", n)?;
    Ok(grid_for(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_and_cap() {
        assert_eq!(grid_for(1).grid.x, 1);
        assert_eq!(grid_for(257).grid.x, 2);
        assert_eq!(grid_for(usize::MAX / 2).grid.x, MAX_BLOCKS);
        let c = euler_step_config(16, 8 * 64 * 64, 2).unwrap();
        assert_eq!(c.grid.x, 16 * 8 * 64 * 64 / 4 / 256);
        assert!(patchify_config(16, 7, 64, 64, 1).is_err());
        assert!(unpatchify_config(16, 8, 64, 64, 1, true).is_err());
        assert!(modulation_config(16, 6, 3072, 2).is_err());
        assert!(weights_init_config(u64::MAX - 3, 8).is_err());
    }
}
