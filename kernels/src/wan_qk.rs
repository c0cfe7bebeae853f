//! Wan2.1's q/k preparation (`kernels/cuda/wan_qk.cu`): the full-width RMSNorm of q and k
//! times their gains, Wan's 3D RoPE and the write of the chunk's keys and values into their
//! KV-cache slots ([`KERNEL_QKV_ROPE`]), and the in-place full-width RMSNorm of the
//! cross-attention's q and text keys ([`KERNEL_RMS_ROWS`]). Parameter structs mirroring the
//! C++ ones, launch configurations that check the shape contract and return an error naming
//! the kernel, the value and the rule, and the RoPE angle tables the caller uploads.
//!
//! RoPE (docs/wan.md section 4): a head of `dh` channels is `dh / 2` pairs `(2m, 2m + 1)`,
//! split into [`RopeSplit`] `frame` pairs, then `row`, then `col` pairs; pair `k` of an axis
//! with `n` pairs turns by `pos * 10000^(-k / n)`. The kernel reads `(cos, sin)` as f32 from
//! three tables made by [`rope_axis_table`] in f64: the frame table for this call's frames
//! (their absolute latent positions, rewritten per chunk), the row and column tables once
//! per profile.
//!
//! f16 tensors are `u16` bit patterns; every pointer 16-byte aligned (the tables 8-byte).

use crate::emu::{Dim3, LaunchConfig};

pub const KERNEL_QKV_ROPE: &str = "wan_qkv_rope";
pub const KERNEL_RMS_ROWS: &str = "wan_rms_rows";
/// Rows (tokens) per CTA: one warp each (`QkTraits::kRowsPerCta`).
pub const ROWS_PER_CTA: u32 = 8;
pub const THREADS: u32 = ROWS_PER_CTA * 32;
/// Largest normalized width: 32 lanes x 8 chunks of 8 held in registers (`QkTraits::kMaxD`).
pub const MAX_D: usize = 2048;
/// Largest grid x.
const MAX_GRID_X: usize = i32::MAX as usize;

/// The pairs of a head of `dh` channels turned by the frame, row and column positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeSplit {
    pub frame: usize,
    pub row: usize,
    pub col: usize,
}

/// docs/wan.md section 4: `nh = nw = (dh / 2) div 3`, `nf = dh / 2 - 2 nh` (128: 22, 21, 21;
/// 16: 4, 2, 2).
pub fn rope_split(head_dim: usize) -> RopeSplit {
    let half = head_dim / 2;
    let nh = half / 3;
    RopeSplit {
        frame: half - 2 * nh,
        row: nh,
        col: nh,
    }
}

/// `[positions.len(), pairs, 2]` f32: `(cos, sin)` of `pos * 10000^(-k / pairs)` computed in
/// f64 and rounded to f32 (docs/wan.md section 4, Engine: no table limit on the position).
pub fn rope_axis_table(positions: impl IntoIterator<Item = i64>, pairs: usize) -> Vec<f32> {
    let mut t = Vec::new();
    for pos in positions {
        for k in 0..pairs {
            let omega = 10000f64.powf(-(k as f64) / pairs as f64);
            let a = pos as f64 * omega;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}

/// `wan_qkv_rope`: `q_out = RoPE(RMS(q) g_q)`; `cache[slot(f) P + t] = [RoPE(RMS(k) g_k), v]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WanQkvRopeParams {
    /// (tokens, 3D) f16: q `[0, D)`, k `[D, 2D)`, v `[2D, 3D)` (the QKV GEMM output, biases
    /// added); tokens = frames * hp * wp in `[frames, hp, wp]` order
    pub qkv: *const u16,
    /// (D) f16 `self_attn.norm_q.weight`
    pub gq: *const u16,
    /// (D) f16 `self_attn.norm_k.weight`
    pub gk: *const u16,
    /// (frames, nf, 2) f32 [`rope_axis_table`] of this call's absolute frame positions
    pub rope_f: *const f32,
    /// (hp, nh, 2) f32 [`rope_axis_table`] of rows `0..hp`
    pub rope_h: *const f32,
    /// (wp, nw, 2) f32 [`rope_axis_table`] of columns `0..wp`
    pub rope_w: *const f32,
    /// (frames) i32: the cache slot of each frame of the call; negative: its K/V are not
    /// stored (LongLive's query-only re-cache frames)
    pub frame_slots: *const i32,
    /// (tokens, D) f16: the normalized, rotated queries
    pub q_out: *mut u16,
    /// (slots * hp * wp, 2D) f16: the block's cache, k `[0, D)`, v `[D, 2D)` per token row
    pub cache: *mut u16,
    pub frames: i32,
    pub hp: i32,
    pub wp: i32,
    pub heads: i32,
    pub head_dim: i32,
}

/// `wan_rms_rows`: `x[r, 0..d] = RMS(x[r, 0..d]) * gain` in place, rows `ld` apart.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WanRmsRowsParams {
    /// (rows, ld) f16, updated in place (channels `[0, d)` of each row)
    pub x: *mut u16,
    /// (d) f16 gain (`cross_attn.norm_q.weight` or `norm_k.weight`)
    pub gain: *const u16,
    pub rows: i32,
    pub d: i32,
    /// Elements between rows: `D` for q `[M, D]`, `2D` for the k half of kv `[Lt, 2D]`.
    pub ld: i32,
}

/// The shape of one `wan_qkv_rope` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvRopeShape {
    /// Latent frames of the call (the chunk's `c`, or a re-cache call's `R`).
    pub frames: usize,
    /// Token grid of a frame, `P = hp * wp`.
    pub hp: usize,
    pub wp: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Frames the cache buffer holds (`window`): every stored slot must be below it.
    pub cache_slots: usize,
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// The width rules shared by both kernels.
fn check_width(kernel: &str, d: usize) -> Result<(), String> {
    if d < 8 || d % 8 != 0 || d > MAX_D {
        return Err(format!(
            "{kernel}: D = {d} must be a multiple of 8 in 8..={MAX_D} (16-byte chunks, 8 per \
             lane of the row's warp held in registers)"
        ));
    }
    Ok(())
}

fn rows_config(kernel: &str, rows: usize) -> Result<LaunchConfig, String> {
    let blocks = rows.div_ceil(ROWS_PER_CTA as usize);
    if blocks > MAX_GRID_X {
        return Err(format!("{kernel}: {rows} rows exceed the grid's x limit"));
    }
    Ok(LaunchConfig {
        grid: Dim3::from(blocks as u32),
        block: Dim3::from(THREADS),
        shared_bytes: 0,
    })
}

/// Launch configuration of `wan_qkv_rope`. Rules: frames, hp, wp, heads >= 1; `dh % 8 == 0`
/// and `dh >= 8` (a 16-byte chunk lies in one head; at least one pair per axis);
/// `D = heads * dh` a multiple of 8 up to [`MAX_D`]; `cache_slots >= 1`; the cache's
/// `cache_slots * P * 2D` elements within i32 rows arithmetic (offsets are size_t).
pub fn qkv_rope_config(s: &QkvRopeShape) -> Result<LaunchConfig, String> {
    let kernel = KERNEL_QKV_ROPE;
    if s.frames == 0 || s.hp == 0 || s.wp == 0 || s.heads == 0 || s.cache_slots == 0 {
        return Err(format!(
            "{kernel}: frames ({}), hp ({}), wp ({}), heads ({}) and cache_slots ({}) must all \
             be at least 1",
            s.frames, s.hp, s.wp, s.heads, s.cache_slots
        ));
    }
    if s.head_dim < 8 || s.head_dim % 8 != 0 {
        return Err(format!(
            "{kernel}: head dim dh = {} must be a positive multiple of 8 (a 16-byte chunk lies \
             in one head)",
            s.head_dim
        ));
    }
    let d = s
        .heads
        .checked_mul(s.head_dim)
        .ok_or_else(|| format!("{kernel}: heads * dh overflows"))?;
    check_width(kernel, d)?;
    let p =
        s.hp.checked_mul(s.wp)
            .ok_or_else(|| format!("{kernel}: hp * wp overflows"))?;
    let tokens = s
        .frames
        .checked_mul(p)
        .ok_or_else(|| format!("{kernel}: frames * P overflows"))?;
    to_i32(kernel, "tokens", tokens)?;
    to_i32(kernel, "3D", 3 * d)?;
    for (what, v) in [("hp", s.hp), ("wp", s.wp), ("frames", s.frames)] {
        to_i32(kernel, what, v)?;
    }
    let cache_rows = s
        .cache_slots
        .checked_mul(p)
        .ok_or_else(|| format!("{kernel}: cache_slots * P overflows"))?;
    to_i32(kernel, "cache rows (cache_slots * P)", cache_rows)?;
    rows_config(kernel, tokens)
}

/// Checks the host copy of a `frame_slots` table before it is uploaded: one entry per frame
/// of the call, each below `cache_slots` or negative (not stored), no slot twice.
pub fn check_frame_slots(slots: &[i32], frames: usize, cache_slots: usize) -> Result<(), String> {
    let kernel = KERNEL_QKV_ROPE;
    if slots.len() != frames {
        return Err(format!(
            "{kernel}: frame_slots has {} entries for {frames} frames",
            slots.len()
        ));
    }
    for (f, &s) in slots.iter().enumerate() {
        if s >= 0 && s as usize >= cache_slots {
            return Err(format!(
                "{kernel}: frame {f} goes to slot {s}, outside the cache's {cache_slots} slots"
            ));
        }
        if s >= 0 && slots[..f].contains(&s) {
            return Err(format!("{kernel}: slot {s} is written by two frames"));
        }
    }
    Ok(())
}

/// Launch configuration of `wan_rms_rows`. Rules: rows >= 1; `d` a multiple of 8 up to
/// [`MAX_D`]; `ld >= d` and `ld % 8 == 0` (16-byte aligned rows).
pub fn rms_rows_config(rows: usize, d: usize, ld: usize) -> Result<LaunchConfig, String> {
    let kernel = KERNEL_RMS_ROWS;
    if rows == 0 {
        return Err(format!("{kernel}: rows must be at least 1 (got 0)"));
    }
    check_width(kernel, d)?;
    if ld < d || ld % 8 != 0 {
        return Err(format!(
            "{kernel}: row stride ld = {ld} must be a multiple of 8 and at least d = {d}"
        ));
    }
    rows.checked_mul(ld)
        .ok_or_else(|| format!("{kernel}: rows * ld overflows"))?;
    to_i32(kernel, "rows", rows)?;
    to_i32(kernel, "ld", ld)?;
    rows_config(kernel, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_of_the_profiles() {
        assert_eq!(
            rope_split(128),
            RopeSplit {
                frame: 22,
                row: 21,
                col: 21
            }
        );
        assert_eq!(
            rope_split(16),
            RopeSplit {
                frame: 4,
                row: 2,
                col: 2
            }
        );
        let t = rope_axis_table([0, 3], 2);
        assert_eq!(t.len(), 8);
        assert_eq!(&t[..4], &[1.0, 0.0, 1.0, 0.0]);
        assert!((t[4] - 3f32.cos()).abs() < 1e-7 && (t[7] - (0.03f64).sin() as f32).abs() < 1e-7);
    }
}
