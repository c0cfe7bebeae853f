//! The Hopper (sm_90a) GEMM `C[M, N] = A[M, K] * W[N, K]^T` with fused epilogues
//! (`kernels/cuda/gemm_sm90.cu`): TMA loads into a 4-stage mbarrier ring, one producer and
//! two consumer warpgroups on `wgmma.m64n128k16`. The products and epilogues are those of
//! the mma.sync GEMM ([`crate::gemm`]); this module gives the launch configuration (which
//! checks the shape contract and returns an error, never panics), the two TMA tensor maps
//! each launch needs, and the parameter struct mirroring the C++ one.
//!
//! Shape contract: `M >= 1` (ragged row tiles come from TMA's zero fill and the predicated
//! epilogue), `N % 8 == 0` and `K % 8 == 0` with `N, K >= 8` (TMA global strides are
//! multiples of 16 bytes; ragged column tiles and the K tail are zero-filled by TMA). Grid:
//! x over column tiles (128 columns, 64 for SwiGLU), y over row tiles of 128 (at most
//! 65535). Every entry needs [`SHARED_BYTES`] of dynamic shared memory (129 KiB: a CUDA
//! launch raises `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` first) and runs on
//! compute capability 9.0 only (an sm_90a cubin).
//!
//! Tensor maps: [`a_map`] and [`w_map`] describe the operands as `cuTensorMapEncodeTiled`
//! takes them; [`params`] encodes them with the encoder it is given
//! ([`Tiled::encode_emulated`] for the emulator, the driver's `cuTensorMapEncodeTiled` on a
//! GPU), after [`Tiled::validate`] has checked the driver's rules.

use std::ffi::c_void;

use crate::emu::{Dim3, LaunchConfig};
use crate::gemm::GateLayout;
use crate::tma::{DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled};

/// Block tile rows (M), columns (N), depth (K) and ring stages; mirrors `Sm90Traits`.
pub const BLOCK_M: u32 = 128;
pub const BLOCK_N: u32 = 128;
pub const BLOCK_K: u32 = 64;
pub const STAGES: u32 = 4;
/// Output columns per CTA of the SwiGLU entry (64 u and the 64 matching g rows of W13).
pub const SWIGLU_BLOCK_N: u32 = 64;
/// W rows per TMA box (two boxes per stage).
pub const W_BOX_ROWS: u32 = 64;
/// One producer and two consumer warpgroups.
pub const THREADS: u32 = 384;
/// `STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K * 2` bytes of ring plus 1 KiB to align it to
/// the 1024-byte repeat of the 128-byte swizzle: 132 096 bytes.
pub const SHARED_BYTES: u32 = STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K * 2 + 1024;

/// Most output tiles of one launch: the kernel numbers them with an `int`.
const MAX_TILES: u32 = i32::MAX as u32;

/// The fused epilogue, i.e. the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `out_f16 = acc + bias` (bias optional).
    BiasF16,
    /// `out_f16 = GELU_tanh(acc + bias)` (bias optional).
    BiasGeluF16,
    /// `out_f32 = acc + bias` (bias optional).
    BiasF32,
    /// `h_f32 += mods[frame(r), gate, n] * (acc + bias)`, or `h += acc + bias` (null mods).
    GatedResidual,
    /// `out_f16[r, c] = SiLU(u) * g` with `[u; g] = A W13^T`, `W13 [2 Dff, K]`, N = Dff.
    Swiglu,
}

impl Epilogue {
    pub const ALL: [Epilogue; 5] = [
        Epilogue::BiasF16,
        Epilogue::BiasGeluF16,
        Epilogue::BiasF32,
        Epilogue::GatedResidual,
        Epilogue::Swiglu,
    ];

    /// The entry point's name in the cubin and in the emulator.
    pub fn kernel(self) -> &'static str {
        match self {
            Epilogue::BiasF16 => "gemm_sm90_bias_f16",
            Epilogue::BiasGeluF16 => "gemm_sm90_bias_gelu_f16",
            Epilogue::BiasF32 => "gemm_sm90_bias_f32",
            Epilogue::GatedResidual => "gemm_sm90_gated_residual",
            Epilogue::Swiglu => "gemm_sm90_swiglu",
        }
    }

    /// Output columns per CTA.
    pub fn block_n(self) -> u32 {
        if self == Epilogue::Swiglu {
            SWIGLU_BLOCK_N
        } else {
            BLOCK_N
        }
    }

    /// Rows of W for `n` output columns (`2 n` for SwiGLU's W13).
    pub fn w_rows(self, n: usize) -> usize {
        if self == Epilogue::Swiglu {
            2 * n
        } else {
            n
        }
    }
}

/// `GemmSm90Params` of gemm_sm90.cu, field for field (320 bytes, 64-byte aligned: the tensor
/// maps are `CUtensorMap`s passed by value as `__grid_constant__`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct GemmSm90Params {
    /// A `[M, K]` f16: box {64 k, 128 rows}, SWIZZLE_128B ([`a_map`]).
    pub map_a: TensorMap,
    /// W `[N, K]` (SwiGLU: W13 `[2 Dff, K]`) f16: box {64 k, 64 rows} ([`w_map`]).
    pub map_w: TensorMap,
    /// (N) f16, or null for no bias (unused by SwiGLU).
    pub bias: *const u16,
    /// (M, N) f16 (BiasF16, BiasGeluF16, Swiglu with N = Dff) or f32 (BiasF32); null for the
    /// gated residual.
    pub out: *mut c_void,
    /// (M, N) f32 residual stream updated in place (GatedResidual), else null.
    pub h: *mut f32,
    /// (frames, mod_k, N) f32 (GatedResidual with a gate), else null.
    pub mods: *const f32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub mod_k: i32,
    pub gate: i32,
    pub tokens: i32,
    pub tokens_per_frame: i32,
}

const _: () = assert!(std::mem::size_of::<GemmSm90Params>() == 320);

/// The device pointers of one launch (f16 as `u16` bit patterns). Null where the epilogue
/// does not use the buffer.
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    pub a: *const u16,
    pub w: *const u16,
    pub bias: *const u16,
    pub out: *mut c_void,
    pub h: *mut f32,
    pub mods: *const f32,
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// Checks `M, N, K` (N = output columns; Dff for SwiGLU) and, for the gated residual with a
/// gate, its layout; returns the launch configuration.
pub fn config(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    gate: Option<&GateLayout>,
) -> Result<LaunchConfig, String> {
    let kernel = epi.kernel();
    if m == 0 {
        return Err(format!("{kernel}: M must be at least 1 (got M = 0)"));
    }
    if n < 8 || n % 8 != 0 {
        return Err(format!(
            "{kernel}: N = {n} must be a positive multiple of 8 (W's rows and the output's \
             are 16-byte aligned; ragged column tiles are handled)"
        ));
    }
    if k < 8 || k % 8 != 0 {
        return Err(format!(
            "{kernel}: K = {k} must be a positive multiple of 8 (TMA global strides are \
             multiples of 16 bytes; the K tail of a {BLOCK_K}-deep tile is zero-filled)"
        ));
    }
    to_i32(kernel, "M", m)?;
    to_i32(kernel, "W rows", epi.w_rows(n))?;
    to_i32(kernel, "K", k)?;
    let row_tiles = m.div_ceil(BLOCK_M as usize);
    if let Some(g) = gate {
        if epi != Epilogue::GatedResidual {
            return Err(format!(
                "{kernel}: a gate layout was given, but only gemm_sm90_gated_residual takes one"
            ));
        }
        crate::gemm::check_gate(kernel, m, n, g)?;
    }
    let col_tiles = n.div_ceil(epi.block_n() as usize);
    let tiles = row_tiles.saturating_mul(col_tiles);
    if tiles > MAX_TILES as usize {
        return Err(format!(
            "{kernel}: M = {m}, N = {n} make {tiles} output tiles of {BLOCK_M} x {}, more than \
             the kernel's tile index holds ({MAX_TILES})",
            epi.block_n()
        ));
    }
    Ok(LaunchConfig {
        grid: Dim3 {
            x: tiles as u32,
            y: 1,
            z: 1,
        },
        block: THREADS.into(),
        shared_bytes: SHARED_BYTES,
    })
}

/// [`config`] with at most `ctas` CTAs (the device's SM count: one resident CTA per SM), each
/// working through every `ctas`-th output tile: the persistent launch. `ctas` 0 is refused.
pub fn config_persistent(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    gate: Option<&GateLayout>,
    ctas: u32,
) -> Result<LaunchConfig, String> {
    if ctas == 0 {
        return Err(format!(
            "{}: a persistent launch needs at least one CTA",
            epi.kernel()
        ));
    }
    let mut c = config(epi, m, n, k, gate)?;
    c.grid.x = c.grid.x.min(ctas);
    Ok(c)
}

/// A row-major f16 `[rows, k]` matrix at `address`, loaded in boxes of `box_rows` x 64 k,
/// 128-byte swizzled, zeros outside (the ragged tiles and the K tail).
fn operand_map(address: u64, rows: usize, k: usize, box_rows: u32) -> Tiled {
    Tiled {
        data_type: DataType::F16,
        global_address: address,
        global_dim: vec![k as u64, rows as u64],
        global_strides: vec![2 * k as u64],
        box_dim: vec![BLOCK_K, box_rows],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::B256,
        oob_fill: OobFill::Zero,
    }
}

/// The tensor map of A `[M, K]`: boxes of 128 rows x 64 k.
pub fn a_map(address: u64, m: usize, k: usize) -> Tiled {
    operand_map(address, m, k, BLOCK_M)
}

/// The tensor map of W `[rows, K]` (rows = N, or 2 Dff for SwiGLU): boxes of 64 rows x 64 k.
pub fn w_map(address: u64, rows: usize, k: usize) -> Tiled {
    operand_map(address, rows, k, W_BOX_ROWS)
}

/// The parameters of one launch: checks the shape (as [`config`]) and the buffers the
/// epilogue needs, builds the two tensor maps and encodes them with `encode`
/// (`Tiled::encode_emulated` for the emulator).
#[allow(clippy::too_many_arguments)]
pub fn params(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    gate: Option<&GateLayout>,
    buffers: &Buffers,
    encode: impl Fn(&Tiled) -> Result<TensorMap, String>,
) -> Result<GemmSm90Params, String> {
    let kernel = epi.kernel();
    config(epi, m, n, k, gate)?;
    let need = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{kernel}: {what}"))
        }
    };
    need(!buffers.a.is_null(), "A must not be null")?;
    need(!buffers.w.is_null(), "W must not be null")?;
    match epi {
        Epilogue::GatedResidual => {
            need(
                !buffers.h.is_null(),
                "the residual stream h must not be null",
            )?;
            need(
                gate.is_some() != buffers.mods.is_null(),
                "mods must be given exactly when a gate layout is",
            )?;
        }
        _ => need(!buffers.out.is_null(), "the output must not be null")?,
    }
    let map = |t: Tiled, what: &str| encode(&t).map_err(|e| format!("{kernel}: {what}: {e}"));
    let map_a = map(a_map(buffers.a as u64, m, k), "tensor map of A")?;
    let map_w = map(w_map(buffers.w as u64, epi.w_rows(n), k), "tensor map of W")?;
    let g = gate.copied().unwrap_or(GateLayout {
        frames: 0,
        mod_k: 0,
        gate: 0,
        tokens: 0,
        tokens_per_frame: 0,
    });
    Ok(GemmSm90Params {
        map_a,
        map_w,
        bias: buffers.bias,
        out: buffers.out,
        h: buffers.h,
        mods: buffers.mods,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        mod_k: to_i32(kernel, "mod_k", g.mod_k)?,
        gate: to_i32(kernel, "gate", g.gate)?,
        tokens: to_i32(kernel, "tokens", g.tokens)?,
        tokens_per_frame: to_i32(kernel, "tokens_per_frame", g.tokens_per_frame)?,
    })
}

/// [`params`] with the maps encoded for the emulator.
pub fn params_emulated(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    gate: Option<&GateLayout>,
    buffers: &Buffers,
) -> Result<GemmSm90Params, String> {
    params(epi, m, n, k, gate, buffers, |t| {
        t.encode_emulated().map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_cover_the_output() {
        // One CTA per output tile: 9 row tiles x 7 column tiles.
        let c = config(Epilogue::BiasF16, 1037, 776, 512, None).unwrap();
        assert_eq!((c.grid.x, c.grid.y, c.block.x), (63, 1, 384));
        assert_eq!(c.shared_bytes, 4 * 32 * 1024 + 1024);
        let c = config(Epilogue::Swiglu, 16384, 8192, 3072, None).unwrap();
        assert_eq!((c.grid.x, c.grid.y), (128 * 128, 1));
        assert_eq!(Epilogue::Swiglu.w_rows(8192), 16384);
        // Persistent: at most one CTA per SM, never more than the tiles.
        let c = config_persistent(Epilogue::BiasF16, 1037, 776, 512, None, 132).unwrap();
        assert_eq!(c.grid.x, 63);
        let c = config_persistent(Epilogue::Swiglu, 16384, 8192, 3072, None, 132).unwrap();
        assert_eq!(c.grid.x, 132);
        assert!(config_persistent(Epilogue::BiasF16, 8, 8, 8, None, 0).is_err());
    }

    #[test]
    fn operand_maps_are_valid_tensor_maps() {
        a_map(0x1000, 77, 200).validate().unwrap();
        w_map(0x1000, 2 * 72, 136).validate().unwrap();
        assert_eq!(a_map(0, 1, 8).box_bytes(), 16 * 1024);
        assert_eq!(w_map(0, 1, 8).box_bytes(), 8 * 1024);
    }
}
