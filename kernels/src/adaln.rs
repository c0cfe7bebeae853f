//! The fused adaLN kernel (`kernels/cuda/adaln.cu`):
//! `out[r, :] = LN(x[r, :]) * (1 + mods[f, scale, :]) + mods[f, shift, :]` in f16, or the
//! plain `LN(x)` without modulation, with `x` and `mods` f32 and one pass over `x`; with an
//! optional f16 affine `LN(x) * weight + bias` before the modulation (Wan's `norm3`).
//!
//! Shape contract: `M >= 1`; `D % 8 == 0` (a thread's unit is 8 elements: two 16-byte f32
//! loads, one 16-byte f16 store) and `8 <= D <= 16384` (the row lives in registers); with a
//! modulation tensor `[frames, mod_k, D]`: `M` a whole number of batch elements of `tokens`
//! rows, `tokens = frames * tokens_per_frame`, and `shift, scale < mod_k`. Pointers are
//! 16-byte aligned (cudaMalloc, or arena offsets that are multiples of 16).
//!
//! [`config`] picks the entry: one warp per row ([`KERNEL_WARP`], 8 rows per CTA) for
//! `D <= 1024`, else one CTA per row ([`KERNEL_CTA`]) with `min(512, roundup32(D / 16))`
//! threads (2 chunks of 8 per thread up to `D = 8192`). f16 tensors are `u16` bit patterns.

use crate::emu::{Dim3, LaunchConfig};

/// Elements per thread unit (mirrors `AdaLnTraits::kChunk`).
pub const CHUNK: usize = 8;
/// Chunks a thread holds in registers at most (`AdaLnTraits::kMaxChunks`).
pub const MAX_CHUNKS: usize = 4;
/// Rows per CTA of the warp-per-row entry (`AdaLnTraits::kWarpRowsPerCta`).
pub const WARP_ROWS_PER_CTA: u32 = 8;
/// Largest D of the warp-per-row entry: 32 lanes x 4 chunks x 8.
pub const WARP_MAX_D: usize = 32 * MAX_CHUNKS * CHUNK;
/// Threads of the CTA-per-row entry at most (`AdaLnTraits::kCtaMaxThreads`).
pub const CTA_MAX_THREADS: u32 = 512;
/// Largest supported D: 512 threads x 4 chunks x 8.
pub const MAX_D: usize = CTA_MAX_THREADS as usize * MAX_CHUNKS * CHUNK;
/// Chunks per thread the CTA entry's block size aims at (more loads in flight per thread).
const CTA_CHUNKS_PER_THREAD: usize = 2;

/// Entry point names in the PTX and in the emulator.
pub const KERNEL_WARP: &str = "adaln_rows_warp";
pub const KERNEL_CTA: &str = "adaln_row_cta";

/// The row-statistics entries (same configurations): `out` receives `(mean, sum((x -
/// mean)^2))` f32 pairs per row, the statistics the sm_90a GEMM's LayerNorm prologue takes.
pub const KERNEL_STATS_WARP: &str = "ln_stats_rows_warp";
pub const KERNEL_STATS_CTA: &str = "ln_stats_row_cta";

/// Largest grid x of the CTA entry (one CTA per row); the emulator's block limit.
const MAX_GRID: usize = 1 << 24;

/// Parameters of both entries (`AdaLnParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdaLnParams {
    /// (M, D) f32
    pub x: *const f32,
    /// (frames, mod_k, D) f32, or null for the plain LN(x)
    pub mods: *const f32,
    /// (D) f16 affine weight applied before the modulation, or null (see
    /// [`AdaLnParams::with_affine`])
    pub weight: *const u16,
    /// (D) f16 affine bias, or null
    pub bias: *const u16,
    /// (M, D) f16
    pub out: *mut u16,
    pub m: i32,
    pub d: i32,
    pub mod_k: i32,
    pub shift: i32,
    pub scale: i32,
    /// Tokens per batch element (`M = batch * tokens`).
    pub tokens: i32,
    pub tokens_per_frame: i32,
}

/// The per-frame modulation of a row: vectors `shift` and `scale` of `mods [frames, mod_k, D]`
/// at the frame `(r % tokens) / tokens_per_frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModLayout {
    pub frames: usize,
    pub mod_k: usize,
    pub shift: usize,
    pub scale: usize,
    pub tokens: usize,
    pub tokens_per_frame: usize,
}

/// A launch: the entry to use and its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaLnLaunch {
    pub kernel: &'static str,
    pub config: LaunchConfig,
}

fn to_i32(what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("adaln: {what} = {v} exceeds i32"))
}

/// Checks the shape contract for `x [m, d]` (and the modulation layout, if any) and picks the
/// entry: warp per row for `d <= 1024`, CTA per row above.
pub fn config(m: usize, d: usize, mods: Option<&ModLayout>) -> Result<AdaLnLaunch, String> {
    let kernel = if d <= WARP_MAX_D {
        KERNEL_WARP
    } else {
        KERNEL_CTA
    };
    if m == 0 {
        return Err(format!("{kernel}: M must be at least 1 (got M = 0)"));
    }
    if d < CHUNK || d % CHUNK != 0 {
        return Err(format!(
            "{kernel}: D = {d} must be a positive multiple of {CHUNK} (two 16-byte f32 loads and \
             one 16-byte f16 store per thread unit)"
        ));
    }
    if d > MAX_D {
        return Err(format!(
            "{kernel}: D = {d} exceeds {MAX_D} ({CTA_MAX_THREADS} threads x {MAX_CHUNKS} chunks \
             of {CHUNK} held in registers)"
        ));
    }
    to_i32("M", m)?;
    to_i32("M x D", m.saturating_mul(d))?;
    if let Some(l) = mods {
        if l.tokens == 0 || m % l.tokens != 0 {
            return Err(format!(
                "{kernel}: M = {m} must be a whole number of batch elements of {} tokens",
                l.tokens
            ));
        }
        if l.tokens_per_frame == 0 || l.tokens % l.tokens_per_frame != 0 {
            return Err(format!(
                "{kernel}: tokens = {} must be a whole number of frames of {} tokens",
                l.tokens, l.tokens_per_frame
            ));
        }
        if l.tokens / l.tokens_per_frame != l.frames {
            return Err(format!(
                "{kernel}: {} tokens of {} per frame are {} frames, but the modulation tensor \
                 has {}",
                l.tokens,
                l.tokens_per_frame,
                l.tokens / l.tokens_per_frame,
                l.frames
            ));
        }
        if l.shift >= l.mod_k || l.scale >= l.mod_k {
            return Err(format!(
                "{kernel}: shift {} and scale {} must index the {} vectors per frame",
                l.shift, l.scale, l.mod_k
            ));
        }
        let elems = l
            .frames
            .checked_mul(l.mod_k)
            .and_then(|v| v.checked_mul(d))
            .ok_or_else(|| format!("{kernel}: modulation tensor size overflows"))?;
        to_i32("modulation elements", elems)?;
    }
    let config = if kernel == KERNEL_WARP {
        LaunchConfig {
            grid: Dim3::from(m.div_ceil(WARP_ROWS_PER_CTA as usize) as u32),
            block: Dim3::from(WARP_ROWS_PER_CTA * 32),
            shared_bytes: 0,
        }
    } else {
        if m > MAX_GRID {
            return Err(format!(
                "{kernel}: M = {m} rows (one CTA each) exceed the grid limit {MAX_GRID}"
            ));
        }
        LaunchConfig {
            grid: Dim3::from(m as u32),
            block: Dim3::from(cta_threads(d)),
            shared_bytes: 0,
        }
    };
    Ok(AdaLnLaunch { kernel, config })
}

/// [`config`] for the row-statistics entries of `x [m, d]` (no modulation): they write `m`
/// pairs of f32 (8 bytes a row) where the f16 output would be.
pub fn stats_config(m: usize, d: usize) -> Result<AdaLnLaunch, String> {
    let rename = |k: &str| {
        if k == KERNEL_WARP {
            KERNEL_STATS_WARP
        } else {
            KERNEL_STATS_CTA
        }
    };
    let launch = config(m, d, None).map_err(|e| {
        let k = if d <= WARP_MAX_D {
            KERNEL_WARP
        } else {
            KERNEL_CTA
        };
        e.replacen(k, rename(k), 1)
    })?;
    Ok(AdaLnLaunch {
        kernel: rename(launch.kernel),
        config: launch.config,
    })
}

/// Threads of the CTA entry for row width `d`: `roundup32(ceil(chunks / 2))`, at most 512.
pub fn cta_threads(d: usize) -> u32 {
    let chunks = d.div_ceil(CHUNK);
    let t = chunks.div_ceil(CTA_CHUNKS_PER_THREAD).div_ceil(32) * 32;
    t.clamp(32, CTA_MAX_THREADS as usize) as u32
}

/// The parameter struct for a launch (`mods = None`: null modulation, plain LN).
///
/// The pointers are only stored; the launch that uses them carries the safety contract.
pub fn params(
    x: *const f32,
    out: *mut u16,
    m: usize,
    d: usize,
    mods: Option<(*const f32, &ModLayout)>,
) -> AdaLnParams {
    let (mods_ptr, l) = match mods {
        Some((p, l)) => (p, *l),
        None => (
            std::ptr::null(),
            ModLayout {
                frames: 1,
                mod_k: 1,
                shift: 0,
                scale: 0,
                tokens: m,
                tokens_per_frame: m,
            },
        ),
    };
    AdaLnParams {
        x,
        mods: mods_ptr,
        weight: std::ptr::null(),
        bias: std::ptr::null(),
        out,
        m: m as i32,
        d: d as i32,
        mod_k: l.mod_k as i32,
        shift: l.shift as i32,
        scale: l.scale as i32,
        tokens: l.tokens as i32,
        tokens_per_frame: l.tokens_per_frame as i32,
    }
}

impl AdaLnParams {
    /// The affine LayerNorm `A(LN(x)) = LN(x) * weight + bias` (f16 `[D]` vectors, 16-byte
    /// aligned; either may be null), applied before any modulation: Wan's `norm3`
    /// (docs/wan.md section 2.3) is [`params`] with no modulation, then this.
    pub fn with_affine(self, weight: *const u16, bias: *const u16) -> Self {
        AdaLnParams {
            weight,
            bias,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_by_width() {
        let c = config(16384, 3072, None).unwrap();
        assert_eq!(c.kernel, KERNEL_CTA);
        assert_eq!((c.config.grid.x, c.config.block.x), (16384, 192));
        assert_eq!(cta_threads(8192), 512);
        assert_eq!(cta_threads(16384), 512);
        let c = config(1037, 256, None).unwrap();
        assert_eq!(c.kernel, KERNEL_WARP);
        assert_eq!((c.config.grid.x, c.config.block.x), (130, 256));
        assert_eq!(config(3, 1024, None).unwrap().kernel, KERNEL_WARP);
        assert_eq!(config(3, 1032, None).unwrap().kernel, KERNEL_CTA);
    }
}
