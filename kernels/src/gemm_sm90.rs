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
//! The LayerNorm / adaLN prologue ([`ln_config`], [`ln_params`]): the `gemm_sm90_ln_*`
//! entries take A as `adaLN(X)` of an f32 `X [M, K]` and the rows' statistics
//! ([`LnPrologue`]), form the f16 A fragment in registers and never write A; their ring slot
//! stages X as f32 ([`LN_SHARED_BYTES`], 193 KiB). The gated residual can leave those
//! statistics behind for the next norm (`stats_out`, [`residual_stats_parts`]).
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

/// The prologue entries' ring: `STAGES * (BLOCK_M * BLOCK_K * 4 + BLOCK_N * BLOCK_K * 2)`
/// plus the 1 KiB alignment: 197 632 bytes.
pub const LN_SHARED_BYTES: u32 = STAGES * (BLOCK_M * BLOCK_K * 4 + BLOCK_N * BLOCK_K * 2) + 1024;
/// f32 columns of X per TMA box (128 bytes: one swizzle row); two boxes per k-tile.
pub const LN_BOX_K: u32 = 32;

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

    /// The entry with the LayerNorm prologue: BiasF16, BiasF32 and Swiglu have one (the
    /// linear layers that read a norm's output); the others are an error.
    pub fn kernel_ln(self) -> Result<&'static str, String> {
        match self {
            Epilogue::BiasF16 => Ok("gemm_sm90_ln_bias_f16"),
            Epilogue::BiasF32 => Ok("gemm_sm90_ln_bias_f32"),
            Epilogue::Swiglu => Ok("gemm_sm90_ln_swiglu"),
            other => Err(format!(
                "{}: no LayerNorm-prologue variant (only bias f16, bias f32 and SwiGLU have one)",
                other.kernel()
            )),
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
    /// (M, ln_parts) pairs (mean, sum of squared deviations) of X's rows (prologue), or null.
    pub ln_stats: *const f32,
    /// (frames, ln_mod_k, K) f32 shift and scale vectors (adaLN prologue), or null.
    pub ln_mods: *const f32,
    pub ln_parts: i32,
    pub ln_part_cols: i32,
    pub ln_mod_k: i32,
    pub ln_shift: i32,
    pub ln_scale: i32,
    /// The gated residual's row statistics of the updated h ([`residual_stats_parts`] pairs
    /// per row), or null.
    pub stats_out: *mut f32,
}

const _: () = assert!(std::mem::size_of::<GemmSm90Params>() == 384);

/// The LayerNorm / adaLN prologue of a launch: `A = LN(X) * (1 + mods[f, scale]) +
/// mods[f, shift]` (or the plain `LN(X)` without `mods`) with `X [M, K]` f32 and the rows'
/// statistics in `stats`: `parts` pairs per row, pair `i` the mean and the sum of squared
/// deviations of columns `[i * part_cols, min(K, (i + 1) * part_cols))` (one pair per row
/// from `adaln`'s `ln_stats_*` entries).
#[derive(Clone, Copy, Debug)]
pub struct LnPrologue {
    pub x: *const f32,
    pub stats: *const f32,
    pub parts: usize,
    pub part_cols: usize,
    pub mods: Option<(*const f32, crate::adaln::ModLayout)>,
}

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

/// Pairs per row that `gemm_sm90_gated_residual` writes to `stats_out` when it is set: one
/// `(mean, sum of squared deviations)` of the updated `h` per 128-column output tile, the
/// last tile's over its `N - 128 (parts - 1)` columns. They are an [`LnPrologue`]'s
/// statistics with `parts` pairs of [`BLOCK_N`] columns.
pub fn residual_stats_parts(n: usize) -> usize {
    n.div_ceil(BLOCK_N as usize)
}

/// [`config`] (or [`config_persistent`] with `ctas`) for the prologue entry of `epi`: the
/// same grid and block, the f32 staging's [`LN_SHARED_BYTES`]; checks the prologue's layout.
pub fn ln_config(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    ln: &LnPrologue,
    ctas: Option<u32>,
) -> Result<LaunchConfig, String> {
    let kernel = epi.kernel_ln()?;
    let mut c = match ctas {
        Some(ctas) => config_persistent(epi, m, n, k, None, ctas),
        None => config(epi, m, n, k, None),
    }
    .map_err(|e| e.replacen(epi.kernel(), kernel, 1))?;
    check_ln(kernel, m, k, ln)?;
    c.shared_bytes = LN_SHARED_BYTES;
    Ok(c)
}

fn check_ln(kernel: &str, m: usize, k: usize, ln: &LnPrologue) -> Result<(), String> {
    if ln.x.is_null() || ln.stats.is_null() {
        return Err(format!(
            "{kernel}: the prologue's X and row statistics must not be null"
        ));
    }
    if ln.parts == 0 || ln.part_cols == 0 || ln.parts != k.div_ceil(ln.part_cols) {
        return Err(format!(
            "{kernel}: {} statistics pairs of {} columns per row do not cover K = {k} \
             (expected ceil(K / columns) pairs, at least one)",
            ln.parts, ln.part_cols
        ));
    }
    to_i32(kernel, "statistics pairs", m.saturating_mul(ln.parts))?;
    if let Some((mods, l)) = &ln.mods {
        if mods.is_null() {
            return Err(format!("{kernel}: the modulation pointer must not be null"));
        }
        for (what, index) in [("shift", l.shift), ("scale", l.scale)] {
            let g = GateLayout {
                frames: l.frames,
                mod_k: l.mod_k,
                gate: index,
                tokens: l.tokens,
                tokens_per_frame: l.tokens_per_frame,
            };
            crate::gemm::check_gate(kernel, m, k, &g)
                .map_err(|e| format!("{e} (the prologue's {what} vector)"))?;
        }
    }
    Ok(())
}

/// The tensor map of the prologue's X `[M, K]` f32: boxes of 128 rows x 32 k (128 bytes,
/// one swizzle row), two per k-tile, zeros outside.
pub fn x_map(address: u64, m: usize, k: usize) -> Tiled {
    row_major_map(address, DataType::F32, m, k, LN_BOX_K, BLOCK_M)
}

/// [`params`] for the prologue entry of `epi`: `buffers.a` is unused (A is formed from
/// `ln.x`); the other buffers as [`params`] takes them.
#[allow(clippy::too_many_arguments)]
pub fn ln_params(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    ln: &LnPrologue,
    buffers: &Buffers,
    encode: impl Fn(&Tiled) -> Result<TensorMap, String>,
) -> Result<GemmSm90Params, String> {
    let kernel = epi.kernel_ln()?;
    ln_config(epi, m, n, k, ln, None)?;
    // `params` checks W and the output; its map of A is replaced by X's below.
    let stand_in = Buffers {
        a: ln.x.cast(),
        ..*buffers
    };
    let mut p = params(epi, m, n, k, None, &stand_in, &encode)
        .map_err(|e| e.replacen(epi.kernel(), kernel, 1))?;
    p.map_a =
        encode(&x_map(ln.x as u64, m, k)).map_err(|e| format!("{kernel}: tensor map of X: {e}"))?;
    p.ln_stats = ln.stats;
    p.ln_parts = to_i32(kernel, "statistics pairs", ln.parts)?;
    p.ln_part_cols = to_i32(kernel, "statistics columns", ln.part_cols)?;
    if let Some((mods, l)) = ln.mods {
        p.ln_mods = mods;
        p.ln_mod_k = to_i32(kernel, "mod_k", l.mod_k)?;
        p.ln_shift = to_i32(kernel, "shift", l.shift)?;
        p.ln_scale = to_i32(kernel, "scale", l.scale)?;
        p.tokens = to_i32(kernel, "tokens", l.tokens)?;
        p.tokens_per_frame = to_i32(kernel, "tokens_per_frame", l.tokens_per_frame)?;
    }
    Ok(p)
}

/// [`ln_params`] with the maps encoded for the emulator.
pub fn ln_params_emulated(
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    ln: &LnPrologue,
    buffers: &Buffers,
) -> Result<GemmSm90Params, String> {
    ln_params(epi, m, n, k, ln, buffers, |t| {
        t.encode_emulated().map_err(|e| e.to_string())
    })
}

/// A row-major f16 `[rows, k]` matrix at `address`, loaded in boxes of `box_rows` x 64 k,
/// 128-byte swizzled, zeros outside (the ragged tiles and the K tail).
fn operand_map(address: u64, rows: usize, k: usize, box_rows: u32) -> Tiled {
    row_major_map(address, DataType::F16, rows, k, BLOCK_K, box_rows)
}

/// A row-major `[rows, k]` matrix of `data_type` at `address`, in boxes of `box_rows` x
/// `box_k`, 128-byte swizzled, zeros outside.
fn row_major_map(
    address: u64,
    data_type: DataType,
    rows: usize,
    k: usize,
    box_k: u32,
    box_rows: u32,
) -> Tiled {
    Tiled {
        data_type,
        global_address: address,
        global_dim: vec![k as u64, rows as u64],
        global_strides: vec![data_type.size() * k as u64],
        box_dim: vec![box_k, box_rows],
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
        ln_stats: std::ptr::null(),
        ln_mods: std::ptr::null(),
        ln_parts: 0,
        ln_part_cols: 0,
        ln_mod_k: 0,
        ln_shift: 0,
        ln_scale: 0,
        stats_out: std::ptr::null_mut(),
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
        x_map(0x1000, 77, 200).validate().unwrap();
        assert_eq!(x_map(0, 1, 8).box_bytes(), 16 * 1024);
        assert_eq!(LN_SHARED_BYTES, 4 * 48 * 1024 + 1024);
    }
}
