//! Wan2.1 self-attention over the KV cache on Hopper (`kernels/cuda/attention_sm90.cu`):
//! FlashAttention-3 style, TMA loads into a 2-stage mbarrier ring, one producer and two
//! consumer warpgroups, `wgmma` for `Q K^T` (both operands in shared memory) and for `P V`
//! (P from registers). The product is that of [`crate::wan_attention`]'s `attn_kvcache`
//! (which stays the sm_80 / sm_89 path): per head `o = softmax(q k^T / sqrt(dh)) v` over
//! every token of the attended cache frames, no mask, with the same cache layout
//! (`[slots * P, 2D]`, k in `[0, D)`, v in `[D, 2D)`) and frame table.
//!
//! This module gives the launch configuration (the shape contract, errors never panics),
//! the two tensor maps (q as a 2-D `[tokens, D]` map, the cache as a 3-D `[slots][P][2D]`
//! map so that a key tile never leaves its slot and the rows past `P` are zero-filled) and
//! the parameter struct mirroring the C++ one.

use crate::emu::{Dim3, LaunchConfig};
use crate::tma::{DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled};
use crate::wan_attention::KvCacheShape;

pub const KERNEL_D64: &str = "attn_sm90_kvcache_d64";
pub const KERNEL_D128: &str = "attn_sm90_kvcache_d128";
/// Head dims with an entry point.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Queries per CTA (two consumer warpgroups of 64 rows); mirrors `Fa3Traits::kBM`.
pub const BLOCK_Q: u32 = 128;
/// Keys per tile (`Fa3Traits::kBN`).
pub const BLOCK_KV: u32 = 128;
/// Ring stages (`Fa3Traits::kStages`).
pub const STAGES: u32 = 2;
/// One producer and two consumer warpgroups.
pub const THREADS: u32 = 384;
/// Columns per TMA box: one 128-byte swizzle row of f16.
pub const BOX_COLS: u32 = 64;

/// Largest grid y (heads).
const MAX_GRID_Y: usize = 65535;

/// Dynamic shared memory of the entry for head dim `dh`: the Q tile, the ring of K and V
/// tiles and 1 KiB to align them to the 128-byte swizzle's 1024-byte repeat
/// (dh = 64: 82 944 B; dh = 128: 164 864 B).
pub fn shared_bytes(dh: u32) -> u32 {
    BLOCK_Q * dh * 2 + STAGES * 2 * BLOCK_KV * dh * 2 + 1024
}

/// `AttnSm90Params` of attention_sm90.cu, field for field (320 bytes, 64-byte aligned: the
/// tensor maps are `CUtensorMap`s passed by value as `__grid_constant__`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct AttnSm90Params {
    /// q `[tokens, D]` f16: box {64 columns, 128 rows} ([`q_map`]).
    pub map_q: TensorMap,
    /// The cache `[slots][P][2D]` f16: box {64 columns, 128 tokens, 1 slot} ([`kv_map`]).
    pub map_kv: TensorMap,
    /// (frames) i32, device memory: the slot of each attended frame, in attention order.
    pub frame_slots: *const i32,
    /// (tokens, D) f16.
    pub out: *mut u16,
    pub tokens: i32,
    pub frame_tokens: i32,
    pub frames: i32,
    pub heads: i32,
}

const _: () = assert!(std::mem::size_of::<AttnSm90Params>() == 320);

/// The device pointers of one launch (f16 as `u16` bit patterns).
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    pub q: *const u16,
    pub cache: *const u16,
    pub frame_slots: *const i32,
    pub out: *mut u16,
}

/// The entry point for `shape`, and its launch configuration. Rules: dh in {64, 128};
/// tokens, frame_tokens, frames, heads, cache_slots >= 1; `frames <= cache_slots`; the
/// cache rows and `2D` within i32; heads within the grid's y.
pub fn config(s: &KvCacheShape) -> Result<(&'static str, LaunchConfig), String> {
    let kernel = match s.head_dim {
        64 => KERNEL_D64,
        128 => KERNEL_D128,
        dh => {
            return Err(format!(
                "attn_sm90_kvcache: head dim dh = {dh} is not supported (entry points exist \
                 for dh = 64 and dh = 128)"
            ))
        }
    };
    if s.tokens == 0 || s.frame_tokens == 0 || s.frames == 0 || s.cache_slots == 0 {
        return Err(format!(
            "{kernel}: tokens ({}), frame_tokens ({}), frames ({}) and cache_slots ({}) must \
             all be at least 1",
            s.tokens, s.frame_tokens, s.frames, s.cache_slots
        ));
    }
    if s.heads == 0 || s.heads > MAX_GRID_Y {
        return Err(format!(
            "{kernel}: heads = {} must be in 1..={MAX_GRID_Y} (grid y)",
            s.heads
        ));
    }
    if s.frames > s.cache_slots {
        return Err(format!(
            "{kernel}: {} attended frames exceed the cache's {} slots",
            s.frames, s.cache_slots
        ));
    }
    let fits = |what: &str, v: Option<usize>| match v.and_then(|v| i32::try_from(v).ok()) {
        Some(_) => Ok(()),
        None => Err(format!("{kernel}: {what} exceeds i32")),
    };
    fits("2D", (2 * s.head_dim).checked_mul(s.heads))?;
    fits("tokens", Some(s.tokens))?;
    fits(
        "cache rows (cache_slots * P)",
        s.cache_slots.checked_mul(s.frame_tokens),
    )?;
    let tiles = s.tokens.div_ceil(BLOCK_Q as usize);
    if tiles > u32::MAX as usize / 2 {
        return Err(format!("{kernel}: {tiles} query tiles exceed the grid"));
    }
    Ok((
        kernel,
        LaunchConfig {
            grid: Dim3 {
                x: tiles as u32,
                y: s.heads as u32,
                z: 1,
            },
            block: THREADS.into(),
            shared_bytes: shared_bytes(s.head_dim as u32),
        },
    ))
}

/// The tensor map of q `[tokens, D]`: boxes of 128 rows x 64 columns, 128-byte swizzled,
/// zeros past the last token.
pub fn q_map(address: u64, tokens: usize, d: usize) -> Tiled {
    Tiled {
        data_type: DataType::F16,
        global_address: address,
        global_dim: vec![d as u64, tokens as u64],
        global_strides: vec![2 * d as u64],
        box_dim: vec![BOX_COLS, BLOCK_Q],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::B256,
        oob_fill: OobFill::Zero,
    }
}

/// The tensor map of the cache viewed as `[slots][P][2D]`: boxes of one slot's 128 tokens x
/// 64 columns, zeros past the slot's last token (so a tile never reads the next slot).
pub fn kv_map(address: u64, slots: usize, frame_tokens: usize, d: usize) -> Tiled {
    let row = 2 * 2 * d as u64;
    Tiled {
        data_type: DataType::F16,
        global_address: address,
        global_dim: vec![2 * d as u64, frame_tokens as u64, slots as u64],
        global_strides: vec![row, row * frame_tokens as u64],
        box_dim: vec![BOX_COLS, BLOCK_KV, 1],
        element_strides: vec![1, 1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::B256,
        oob_fill: OobFill::Zero,
    }
}

/// The parameters of one launch: checks the shape (as [`config`]) and the buffers, builds
/// the two tensor maps and encodes them with `encode` (`Tiled::encode_emulated` for the
/// emulator, the driver's `cuTensorMapEncodeTiled` on a GPU).
pub fn params(
    s: &KvCacheShape,
    b: &Buffers,
    encode: impl Fn(&Tiled) -> Result<TensorMap, String>,
) -> Result<AttnSm90Params, String> {
    let (kernel, _) = config(s)?;
    if b.q.is_null() || b.cache.is_null() || b.frame_slots.is_null() || b.out.is_null() {
        return Err(format!(
            "{kernel}: q, cache, frame_slots and out must not be null"
        ));
    }
    let d = s.heads * s.head_dim;
    let map = |t: Tiled, what: &str| encode(&t).map_err(|e| format!("{kernel}: {what}: {e}"));
    Ok(AttnSm90Params {
        map_q: map(q_map(b.q as u64, s.tokens, d), "tensor map of q")?,
        map_kv: map(
            kv_map(b.cache as u64, s.cache_slots, s.frame_tokens, d),
            "tensor map of the cache",
        )?,
        frame_slots: b.frame_slots,
        out: b.out,
        tokens: s.tokens as i32,
        frame_tokens: s.frame_tokens as i32,
        frames: s.frames as i32,
        heads: s.heads as i32,
    })
}

/// [`params`] with the maps encoded for the emulator.
pub fn params_emulated(s: &KvCacheShape, b: &Buffers) -> Result<AttnSm90Params, String> {
    params(s, b, |t| t.encode_emulated().map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(head_dim: usize) -> KvCacheShape {
        KvCacheShape {
            tokens: 4680,
            frame_tokens: 1560,
            frames: 21,
            heads: 12,
            head_dim,
            cache_slots: 21,
        }
    }

    #[test]
    fn configs_and_maps() {
        let (k, c) = config(&shape(128)).unwrap();
        assert_eq!(k, KERNEL_D128);
        assert_eq!((c.grid.x, c.grid.y, c.block.x), (37, 12, 384));
        assert_eq!(c.shared_bytes, 164_864);
        assert_eq!(shared_bytes(64), 82_944);
        q_map(0x1000, 4680, 1536).validate().unwrap();
        kv_map(0x1000, 21, 1560, 1536).validate().unwrap();
        assert_eq!(kv_map(0, 1, 7, 64).box_bytes(), 16 * 1024);
        assert!(config(&shape(16)).unwrap_err().contains("dh = 16"));
    }
}
