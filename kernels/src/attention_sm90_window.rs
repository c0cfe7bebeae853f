//! StreamDiT's shifted window self-attention on Hopper
//! (`kernels/cuda/attention_sm90_window.cu`): FlashAttention-3 style, one producer warpgroup
//! (TMA loads of 8-row runs into a 2-stage mbarrier ring, and the k norms) and two consumer
//! warpgroups (`wgmma` for `Q K^T` and `P V`, online softmax), over the packed list of
//! (window, query tile) pairs with 128-row query tiles. The product is that of
//! [`crate::attention`]'s window kernel (which stays the sm_80 / sm_89 path): per head and
//! window `softmax(qn kn^T / sqrt(dh)) v` with the per-head RMSNorm of q and k fused.
//!
//! This module gives the launch configuration (the shape contract; errors, never panics),
//! the tensor map of the fused QKV output and the parameter struct mirroring the C++ one.

use crate::attention::{self, WindowShape};
use crate::emu::{Dim3, LaunchConfig};
use crate::tma::{DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled};

pub const KERNEL_D64: &str = "attn_sm90_window_d64";
pub const KERNEL_D128: &str = "attn_sm90_window_d128";
/// Queries per CTA and keys per tile (`Fa3Traits::kBM`, `kBN`).
pub const BLOCK_Q: u32 = 128;
pub const BLOCK_KV: u32 = 128;
/// Rows per TMA box: 8 consecutive tokens along W (`kRun`).
pub const RUN: usize = 8;
pub const THREADS: u32 = 384;
/// Columns per TMA box: one 128-byte swizzle row of f16.
pub const BOX_COLS: u32 = 64;

/// Dynamic shared memory for head dim `dh` (as attention_sm90's: the Q tile, two stages of
/// K and V, 1 KiB of alignment; the k norms and barriers are static).
pub fn shared_bytes(dh: u32) -> u32 {
    crate::attention_sm90::shared_bytes(dh)
}

/// `AttnSm90WindowParams` of attention_sm90_window.cu, field for field (192 bytes, 64-byte
/// aligned: the tensor map is a `CUtensorMap` passed by value as `__grid_constant__`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct AttnSm90WindowParams {
    /// qkv `[B T, 3D]` f16: boxes of {64 columns, 8 rows} ([`qkv_map`]).
    pub map_qkv: TensorMap,
    /// (dh) f16 RMSNorm gains of q and k (both required).
    pub gq: *const u16,
    pub gk: *const u16,
    /// (B T, D) f16.
    pub out: *mut u16,
    pub ft: i32,
    pub ht: i32,
    pub wt: i32,
    pub fw: i32,
    pub hw: i32,
    pub ww: i32,
    pub sf: i32,
    pub sh: i32,
    pub sw: i32,
    pub heads: i32,
}

const _: () = assert!(std::mem::size_of::<AttnSm90WindowParams>() == 192);

/// The device pointers of one launch (f16 as `u16` bit patterns).
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    pub qkv: *const u16,
    pub gq: *const u16,
    pub gk: *const u16,
    pub out: *mut u16,
}

/// Whether `s` is inside this kernel's contract (see [`config`]): the lowering keeps the
/// mma.sync kernel for any other shape.
pub fn supports(s: &WindowShape) -> bool {
    config(s).is_ok()
}

/// The entry point for `s`, and its launch configuration. Rules: the window contract of
/// [`attention::window_config`], dh in {64, 128}, every window extent along W a multiple of
/// 8 (`Ww`, the W shift and so `Wt`: a TMA box is 8 consecutive rows of one window),
/// `B T` within i32.
pub fn config(s: &WindowShape) -> Result<(&'static str, LaunchConfig), String> {
    let kernel = match s.head_dim {
        64 => KERNEL_D64,
        128 => KERNEL_D128,
        dh => {
            return Err(format!(
                "attn_sm90_window: head dim dh = {dh} is not supported (entry points exist \
                 for dh = 64 and dh = 128)"
            ))
        }
    };
    attention::window_config(s).map_err(|e| format!("{kernel}: {e}"))?;
    if s.window[2] % RUN != 0 || s.shift[2] % RUN != 0 {
        return Err(format!(
            "{kernel}: the W window {} and shift {} must be multiples of {RUN} (a TMA box is \
             {RUN} consecutive tokens of one window)",
            s.window[2], s.shift[2]
        ));
    }
    let rows = s.batch * s.tokens();
    if i32::try_from(rows).is_err() {
        return Err(format!("{kernel}: B T = {rows} rows exceed i32"));
    }
    let tiles = s.packed_tiles_of(BLOCK_Q as usize);
    Ok((
        kernel,
        LaunchConfig {
            grid: Dim3 {
                x: tiles as u32,
                y: s.heads as u32,
                z: s.batch as u32,
            },
            block: THREADS.into(),
            shared_bytes: shared_bytes(s.head_dim as u32),
        },
    ))
}

/// The tensor map of qkv `[rows, 3D]`: boxes of 8 rows x 64 columns (one 1024-byte atom of
/// the 128-byte swizzle).
pub fn qkv_map(address: u64, rows: usize, d: usize) -> Tiled {
    Tiled {
        data_type: DataType::F16,
        global_address: address,
        global_dim: vec![3 * d as u64, rows as u64],
        global_strides: vec![2 * 3 * d as u64],
        box_dim: vec![BOX_COLS, RUN as u32],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::B256,
        oob_fill: OobFill::Zero,
    }
}

/// The parameters of one launch: checks the shape (as [`config`]) and the buffers, builds
/// the tensor map and encodes it with `encode` (`Tiled::encode_emulated` for the emulator,
/// the driver's `cuTensorMapEncodeTiled` on a GPU).
pub fn params(
    s: &WindowShape,
    b: &Buffers,
    encode: impl Fn(&Tiled) -> Result<TensorMap, String>,
) -> Result<AttnSm90WindowParams, String> {
    let (kernel, _) = config(s)?;
    if b.qkv.is_null() || b.gq.is_null() || b.gk.is_null() || b.out.is_null() {
        return Err(format!(
            "{kernel}: qkv, gq, gk and out must not be null (the kernel always fuses the \
             RMSNorm)"
        ));
    }
    let d = s.heads * s.head_dim;
    let map = encode(&qkv_map(b.qkv as u64, s.batch * s.tokens(), d))
        .map_err(|e| format!("{kernel}: tensor map of qkv: {e}"))?;
    let [ft, ht, wt] = s.grid.map(|v| v as i32);
    let [fw, hw, ww] = s.window.map(|v| v as i32);
    let [sf, sh, sw] = s.shift.map(|v| v as i32);
    Ok(AttnSm90WindowParams {
        map_qkv: map,
        gq: b.gq,
        gk: b.gk,
        out: b.out,
        ft,
        ht,
        wt,
        fw,
        hw,
        ww,
        sf,
        sh,
        sw,
        heads: s.heads as i32,
    })
}

/// [`params`] with the map encoded for the emulator.
pub fn params_emulated(s: &WindowShape, b: &Buffers) -> Result<AttnSm90WindowParams, String> {
    params(s, b, |t| t.encode_emulated().map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamdit_4b_config_and_map() {
        let s = WindowShape {
            batch: 1,
            grid: [16, 32, 32],
            window: [4, 16, 16],
            shift: [2, 8, 8],
            heads: 24,
            head_dim: 128,
        };
        let (k, c) = config(&s).unwrap();
        assert_eq!(k, KERNEL_D128);
        // 16 384 tokens in windows of 128 to 1 024 tokens: 128 tiles of 128 per head.
        assert_eq!((c.grid.x, c.grid.y, c.block.x), (128, 24, 384));
        assert_eq!(c.shared_bytes, 164_864);
        qkv_map(0x1000, 16384, 3072).validate().unwrap();
        let tiny = WindowShape {
            grid: [8, 8, 8],
            window: [4, 8, 8],
            shift: [2, 4, 4],
            heads: 4,
            head_dim: 64,
            ..s
        };
        assert!(config(&tiny).unwrap_err().contains("multiples of 8"));
        assert!(!supports(&WindowShape { head_dim: 16, ..s }));
    }
}
