//! The FP16 tensor-core GEMM `C[M, N] = A[M, K] * W[N, K]^T` with fused epilogues
//! (`kernels/cuda/gemm.cu`): parameter structs mirroring the C++ ones, and the launch
//! configuration of each entry point, which checks the shape contract and returns an error
//! (never panics) for a shape the kernels do not support.
//!
//! Shape contract: `M >= 1` (any value: ragged row tiles are zero-filled and their stores
//! guarded), `N % 8 == 0` and `K % 8 == 0` (rows 16-byte aligned for `cp.async`; ragged
//! column tiles and the K tail are zero-filled), `N, K >= 8`. Grid: x over column tiles,
//! y over row tiles (at most 65535, so `M <= 65535 * 128`).
//!
//! f16 tensors are passed as `u16` bit patterns. The dynamic shared memory of every entry is
//! [`SHARED_BYTES`] (64 KiB): a CUDA launch must first raise
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` to it (above the 48 KiB default).

use crate::emu::{Dim3, LaunchConfig};

/// Block tile rows (M), columns (N), depth (K) and pipeline stages; mirrors `GemmTraits`.
pub const BLOCK_M: u32 = 128;
pub const BLOCK_N: u32 = 128;
pub const BLOCK_K: u32 = 32;
pub const STAGES: u32 = 4;
/// 8 warps, 2 (M) x 4 (N), each a 64 x 32 tile.
pub const THREADS: u32 = 256;
/// `STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K * 2` bytes = 64 KiB.
pub const SHARED_BYTES: u32 = STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K * 2;
/// Output columns per CTA of the SwiGLU entry (its 128-row W tile holds 64 u and 64 g rows).
pub const SWIGLU_BLOCK_N: u32 = BLOCK_N / 2;

/// Entry point names in the PTX and in the emulator.
pub const KERNEL_BIAS_F16: &str = "gemm_bias_f16";
pub const KERNEL_GATED_RESIDUAL: &str = "gemm_gated_residual";
pub const KERNEL_SWIGLU: &str = "gemm_swiglu";
pub const KERNEL_BIAS_F32: &str = "gemm_bias_f32";
/// `out = GELU_tanh(A W^T + bias)` in f16, with [`GemmBiasF16Params`].
pub const KERNEL_BIAS_GELU_F16: &str = "gemm_bias_gelu_f16";

/// Largest grid y (row tiles).
const MAX_GRID_Y: u32 = 65535;

/// `gemm_bias_f16`: `out = A W^T + bias` in f16; also `gemm_bias_gelu_f16`'s parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmBiasF16Params {
    /// (M, K) f16
    pub a: *const u16,
    /// (N, K) f16
    pub w: *const u16,
    /// (N) f16, or null for no bias
    pub bias: *const u16,
    /// (M, N) f16
    pub out: *mut u16,
    pub m: i32,
    pub n: i32,
    pub k: i32,
}

/// `gemm_gated_residual`: `h[r, n] += mods[frame(r), gate, n] * ((A W^T)[r, n] + bias[n])`
/// with `frame(r) = (r % tokens) / tokens_per_frame`; h and mods f32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmGatedResidualParams {
    /// (M, K) f16
    pub a: *const u16,
    /// (N, K) f16
    pub w: *const u16,
    /// (N) f16, or null for no bias
    pub bias: *const u16,
    /// (M, N) f32, updated in place
    pub h: *mut f32,
    /// (frames, mod_k, N) f32, or null for no gate (`h += A W^T + bias`); the gate fields
    /// below are then unused
    pub mods: *const f32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub mod_k: i32,
    pub gate: i32,
    pub tokens: i32,
    pub tokens_per_frame: i32,
}

/// `gemm_swiglu`: `out[r, c] = SiLU(u) * g`, `u = (A W13^T)[r, c]`, `g = (A W13^T)[r, dff + c]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmSwigluParams {
    /// (M, K) f16
    pub a: *const u16,
    /// (2 * dff, K) f16: rows [0, dff) u, [dff, 2 dff) g
    pub w13: *const u16,
    /// (M, dff) f16
    pub out: *mut u16,
    pub m: i32,
    pub dff: i32,
    pub k: i32,
}

/// `gemm_bias_f32`: `out = A W^T + bias` in f32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmBiasF32Params {
    /// (M, K) f16
    pub a: *const u16,
    /// (N, K) f16
    pub w: *const u16,
    /// (N) f16, or null for no bias
    pub bias: *const u16,
    /// (M, N) f32
    pub out: *mut f32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
}

/// The per-frame gate of the gated-residual epilogue: `mods` is `[frames, mod_k, N]` and the
/// gate is vector `gate` of the token's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLayout {
    pub frames: usize,
    pub mod_k: usize,
    pub gate: usize,
    /// Tokens per batch element: `M = batch * tokens`.
    pub tokens: usize,
    pub tokens_per_frame: usize,
}

fn to_i32(what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("gemm: {what} = {v} exceeds i32"))
}

/// Checks `M, N, K` (N = output columns as stored in W rows) and returns the grid.
fn check(kernel: &str, m: usize, n: usize, k: usize, block_n: u32) -> Result<Dim3, String> {
    if m == 0 {
        return Err(format!("{kernel}: M must be at least 1 (got M = 0)"));
    }
    if n < 8 || n % 8 != 0 {
        return Err(format!(
            "{kernel}: N = {n} must be a positive multiple of 8 (16-byte aligned rows; ragged \
             column tiles are handled)"
        ));
    }
    if k < 8 || k % 8 != 0 {
        return Err(format!(
            "{kernel}: K = {k} must be a positive multiple of 8 (16-byte aligned rows for \
             cp.async; the K tail of a {BLOCK_K}-deep tile is zero-filled)"
        ));
    }
    // Element offsets are computed in size_t, but the dimensions travel as i32; an element
    // count beyond 2^31 per operand is also far beyond any profile.
    to_i32("M", m)?;
    to_i32("N", n)?;
    to_i32("K", k)?;
    let row_tiles = m.div_ceil(BLOCK_M as usize);
    if row_tiles > MAX_GRID_Y as usize {
        return Err(format!(
            "{kernel}: M = {m} needs {row_tiles} row tiles of {BLOCK_M}, more than the grid's \
             y limit {MAX_GRID_Y}"
        ));
    }
    let col_tiles = n.div_ceil(block_n as usize);
    Ok(Dim3 {
        x: col_tiles as u32,
        y: row_tiles as u32,
        z: 1,
    })
}

fn launch_config(grid: Dim3) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: THREADS.into(),
        shared_bytes: SHARED_BYTES,
    }
}

/// Launch configuration of `gemm_bias_f16`, `out[M, N] = A[M, K] W[N, K]^T + bias`.
pub fn bias_f16_config(m: usize, n: usize, k: usize) -> Result<LaunchConfig, String> {
    check(KERNEL_BIAS_F16, m, n, k, BLOCK_N).map(launch_config)
}

/// Launch configuration of `gemm_bias_gelu_f16`, `out = GELU_tanh(A W^T + bias)` in f16
/// (Wan's FFN up projection and text-embedding MLP); parameters [`GemmBiasF16Params`].
pub fn bias_gelu_f16_config(m: usize, n: usize, k: usize) -> Result<LaunchConfig, String> {
    check(KERNEL_BIAS_GELU_F16, m, n, k, BLOCK_N).map(launch_config)
}

/// Launch configuration of `gemm_bias_f32`, the same product stored in f32.
pub fn bias_f32_config(m: usize, n: usize, k: usize) -> Result<LaunchConfig, String> {
    check(KERNEL_BIAS_F32, m, n, k, BLOCK_N).map(launch_config)
}

/// Launch configuration of `gemm_swiglu`: `A[M, K]`, `W13[2 dff, K]`, `out[M, dff]`.
pub fn swiglu_config(m: usize, dff: usize, k: usize) -> Result<LaunchConfig, String> {
    check(KERNEL_SWIGLU, m, dff, k, SWIGLU_BLOCK_N).map(launch_config)
}

/// Launch configuration of `gemm_gated_residual`: `h[M, N] += gate * (A W^T + bias)`, or
/// with `gate = None` (null `mods`) `h += A W^T + bias`. With a gate, besides the GEMM
/// shape: `M` a multiple of `tokens`, `tokens` a multiple of `tokens_per_frame` with
/// `tokens / tokens_per_frame == frames`, and `gate < mod_k`.
pub fn gated_residual_config(
    m: usize,
    n: usize,
    k: usize,
    gate: Option<&GateLayout>,
) -> Result<LaunchConfig, String> {
    let kernel = KERNEL_GATED_RESIDUAL;
    let grid = check(kernel, m, n, k, BLOCK_N)?;
    if let Some(gate) = gate {
        check_gate(kernel, m, n, gate)?;
    }
    Ok(launch_config(grid))
}

/// The gate layout rules of the gated-residual epilogue (shared with the sm_90a GEMM):
/// `M` a multiple of `tokens`, `tokens` a multiple of `tokens_per_frame` with
/// `tokens / tokens_per_frame == frames`, `gate < mod_k`, the modulation tensor within i32.
pub(crate) fn check_gate(
    kernel: &str,
    m: usize,
    n: usize,
    gate: &GateLayout,
) -> Result<(), String> {
    let GateLayout {
        frames,
        mod_k,
        gate,
        tokens,
        tokens_per_frame,
    } = *gate;
    if tokens == 0 || m % tokens != 0 {
        return Err(format!(
            "{kernel}: M = {m} must be a whole number of batch elements of {tokens} tokens"
        ));
    }
    if tokens_per_frame == 0 || tokens % tokens_per_frame != 0 {
        return Err(format!(
            "{kernel}: tokens = {tokens} must be a whole number of frames of \
             {tokens_per_frame} tokens"
        ));
    }
    if tokens / tokens_per_frame != frames {
        return Err(format!(
            "{kernel}: {tokens} tokens of {tokens_per_frame} per frame are {} frames, but the \
             modulation tensor has {frames}",
            tokens / tokens_per_frame
        ));
    }
    if gate >= mod_k {
        return Err(format!(
            "{kernel}: gate index {gate} is outside the {mod_k} vectors per frame"
        ));
    }
    let elems = frames
        .checked_mul(mod_k)
        .and_then(|v| v.checked_mul(n))
        .ok_or_else(|| format!("{kernel}: modulation tensor size overflows"))?;
    to_i32("modulation elements", elems)?;
    to_i32("mod_k", mod_k)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_cover_the_output() {
        let c = bias_f16_config(1037, 768, 512).unwrap();
        assert_eq!((c.grid.x, c.grid.y, c.block.x), (6, 9, 256));
        assert_eq!(c.shared_bytes, 64 * 1024);
        let c = swiglu_config(16384, 8192, 3072).unwrap();
        assert_eq!((c.grid.x, c.grid.y), (128, 128));
    }
}
