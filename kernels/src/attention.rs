//! Window self-attention and masked cross-attention, FlashAttention-2 style
//! (`kernels/cuda/attention.cu`): parameter structs mirroring the C++ ones, entry names, and
//! launch configurations that check the shape contract and return an error naming the
//! kernel, the value and the rule (never panic).
//!
//! Both kernels fuse the per-head RMSNorm of q and k (`u / sqrt(mean(u^2) + 1e-6) * gain`,
//! computed in f32, stored f16) into their loads; null gains (both) skip it, for attention
//! without it (the TAE decoder's mid-block: window = one whole frame, no norm). One CTA of [`THREADS`] threads computes
//! [`BLOCK_Q`] query rows of one head of one batch element, streaming keys in tiles of
//! [`BLOCK_KV`] through a [`STAGES`]-deep `cp.async` ring.
//!
//! f16 tensors are passed as `u16` bit patterns. Shared memory exceeds the 48 KiB default:
//! a CUDA launch must first raise `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` to
//! [`shared_bytes`] of the head dim.

use crate::emu::{Dim3, LaunchConfig};

/// Query rows per CTA (4 warps x one m16 tile); mirrors `AttnTraits::kBM`.
pub const BLOCK_Q: u32 = 64;
/// Keys per K/V tile; mirrors `AttnTraits::kBN`.
pub const BLOCK_KV: u32 = 64;
/// K/V pipeline depth; mirrors `AttnTraits::kStages`.
pub const STAGES: u32 = 3;
pub const THREADS: u32 = 128;
/// Supported head dims (one entry point each; cross-attention also has dh = 16).
pub const HEAD_DIMS: [usize; 2] = [64, 128];

pub const KERNEL_WINDOW_D64: &str = "attn_window_d64";
pub const KERNEL_WINDOW_D128: &str = "attn_window_d128";
pub const KERNEL_CROSS_D16: &str = "attn_cross_d16";
pub const KERNEL_CROSS_D64: &str = "attn_cross_d64";
pub const KERNEL_CROSS_D128: &str = "attn_cross_d128";

/// Largest grid y and z (heads, batch).
const MAX_GRID_YZ: usize = 65535;
/// Largest grid x.
const MAX_GRID_X: usize = i32::MAX as usize;

/// Dynamic shared memory of either kernel for head dim `dh`: the Q tile, `STAGES` K and V
/// tiles, `STAGES` f16 key biases and the two gains (`AttnTraits::kSmemBytes`).
pub const fn shared_bytes(dh: u32) -> u32 {
    BLOCK_Q * dh * 2 + STAGES * 2 * BLOCK_KV * dh * 2 + STAGES * BLOCK_KV * 2 + 2 * dh * 2
}

/// `attn_window_d{64,128}`: window self-attention on the fused QKV output.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnWindowParams {
    /// (B * T, 3D) f16: q `[0, D)`, k `[D, 2D)`, v `[2D, 3D)`; head e = dims `[e dh, (e+1) dh)`
    pub qkv: *const u16,
    /// (dh) f16 RMSNorm gain of q; null (with `gk`) for no RMSNorm
    pub gq: *const u16,
    /// (dh) f16 RMSNorm gain of k; null (with `gq`) for no RMSNorm
    pub gk: *const u16,
    /// (B * T, D) f16
    pub out: *mut u16,
    /// Token grid, T = ft * ht * wt, tokens in `[F, Ht, Wt]` order.
    pub ft: i32,
    pub ht: i32,
    pub wt: i32,
    /// Window.
    pub fw: i32,
    pub hw: i32,
    pub ww: i32,
    /// Shift (0 <= s < window).
    pub sf: i32,
    pub sh: i32,
    pub sw: i32,
    pub heads: i32,
}

/// `attn_cross_d{64,128}`: cross-attention of the tokens to the (masked) text.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnCrossParams {
    /// (B * T, D) f16
    pub q: *const u16,
    /// (B * Lt, 2D) f16: k `[0, D)`, v `[D, 2D)`
    pub kv: *const u16,
    /// (B * Lt) f32: 0 = masked (padding), anything else (1) = attend
    pub mask: *const f32,
    /// (dh) f16 RMSNorm gain of q; null (with `gk`) for no RMSNorm
    pub gq: *const u16,
    /// (dh) f16 RMSNorm gain of k; null (with `gq`) for no RMSNorm
    pub gk: *const u16,
    /// (B * T, D) f16
    pub out: *mut u16,
    pub tokens: i32,
    pub text_len: i32,
    pub heads: i32,
}

/// A checked launch: the entry point for the head dim and its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLaunch {
    pub kernel: &'static str,
    pub config: LaunchConfig,
}

/// The shape of one window self-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowShape {
    pub batch: usize,
    /// Token grid `[Ft, Ht, Wt]`.
    pub grid: [usize; 3],
    /// Window `[Fw, Hw, Ww]`.
    pub window: [usize; 3],
    /// Shift `[sf, sh, sw]`: 0 or half the window in the model; any `s < window` works.
    pub shift: [usize; 3],
    pub heads: usize,
    pub head_dim: usize,
}

impl WindowShape {
    /// Tokens per batch element.
    pub fn tokens(&self) -> usize {
        self.grid.iter().product()
    }
    /// Windows per axis: keys `floor((x + s) / W)` for `x < G`, i.e. `(G - 1 + s) / W + 1`.
    pub fn windows_per_axis(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| (self.grid[a] - 1 + self.shift[a]) / self.window[a] + 1)
    }
    /// Query tiles of a full window.
    pub fn query_tiles(&self) -> usize {
        self.window
            .iter()
            .product::<usize>()
            .div_ceil(BLOCK_Q as usize)
    }
    /// CTAs per (head, batch element) of a grid over every window key with a full window's
    /// query tiles each (the launch before the packed list; most of a shifted layer's CTAs
    /// find no rows there).
    pub fn unpacked_tiles(&self) -> usize {
        self.windows_per_axis().iter().product::<usize>() * self.query_tiles()
    }
    /// CTAs per (head, batch element) of the packed tile list (`attention.cu`, "The packed
    /// tile list"): the query tiles of every window, `ceil(n / BLOCK_Q)` for a window of `n`
    /// tokens, counted class by class as the kernel decodes them. Assumes the contract
    /// [`window_config`] checks (each grid extent a multiple of the window, shift < window).
    pub fn packed_tiles(&self) -> usize {
        self.packed_tiles_of(BLOCK_Q as usize)
    }
    /// [`Self::packed_tiles`] for query tiles of `block_q` rows (the sm_90a kernel's 128).
    pub fn packed_tiles_of(&self, block_q: usize) -> usize {
        let classes = |a: usize| axis_classes(self.grid[a], self.window[a], self.shift[a]);
        let (cf, ch, cw) = (classes(0), classes(1), classes(2));
        let mut total = 0;
        for &(nf, ef) in &cf {
            for &(nh, eh) in &ch {
                for &(nw, ew) in &cw {
                    total += nf * nh * nw * (ef * eh * ew).div_ceil(block_q);
                }
            }
        }
        total
    }
}

/// The window classes of one axis as (windows, extent), in the kernel's order: one class
/// for no shift, else the first window (extent `w - s`), the interior and the last (`s`).
fn axis_classes(g: usize, w: usize, s: usize) -> Vec<(usize, usize)> {
    let full = g / w.max(1);
    if s == 0 {
        vec![(full, w)]
    } else {
        vec![(1, w - s), (full.saturating_sub(1), w), (1, s)]
    }
}

/// The shape of one cross-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossShape {
    pub batch: usize,
    /// Query tokens per batch element.
    pub tokens: usize,
    /// Text tokens per batch element (`Lt`), any value >= 1.
    pub text_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// The entry point of `family` for head dim `dh`.
fn entry(
    family: &str,
    dh: usize,
    d64: &'static str,
    d128: &'static str,
) -> Result<&'static str, String> {
    match dh {
        64 => Ok(d64),
        128 => Ok(d128),
        _ => Err(format!(
            "{family}: head dim dh = {dh} is not supported (entry points exist for dh = 64 \
             and dh = 128)"
        )),
    }
}

/// Heads and batch checks shared by both kernels; returns `D`.
fn check_heads(
    kernel: &str,
    batch: usize,
    heads: usize,
    head_dim: usize,
    rows: usize,
    row_width: usize,
) -> Result<usize, String> {
    if heads == 0 || heads > MAX_GRID_YZ {
        return Err(format!(
            "{kernel}: heads = {heads} must be in 1..={MAX_GRID_YZ} (grid y)"
        ));
    }
    if batch == 0 || batch > MAX_GRID_YZ {
        return Err(format!(
            "{kernel}: batch = {batch} must be in 1..={MAX_GRID_YZ} (grid z)"
        ));
    }
    let d = heads * head_dim;
    // Element offsets are size_t in the kernel; the dimensions travel as i32, and so must
    // every row index.
    to_i32(kernel, "D = heads * dh", d)?;
    to_i32(kernel, "rows", rows)?;
    rows.checked_mul(row_width)
        .ok_or_else(|| format!("{kernel}: {rows} rows of {row_width} elements overflow"))?;
    Ok(d)
}

fn launch(kernel: &'static str, grid: Dim3, head_dim: usize) -> AttnLaunch {
    AttnLaunch {
        kernel,
        config: LaunchConfig {
            grid,
            block: THREADS.into(),
            shared_bytes: shared_bytes(head_dim as u32),
        },
    }
}

/// Entry point and launch configuration of window self-attention. Rules: dh in {64, 128}
/// (D = heads * dh), batch and heads >= 1, every grid and window extent >= 1, the grid a
/// multiple of the window on every axis (docs/streamdit.md section 3), shift < window.
pub fn window_config(s: &WindowShape) -> Result<AttnLaunch, String> {
    let kernel = entry(
        "attn_window",
        s.head_dim,
        KERNEL_WINDOW_D64,
        KERNEL_WINDOW_D128,
    )?;
    const AXES: [&str; 3] = ["F", "H", "W"];
    for (a, axis) in AXES.iter().enumerate() {
        let (g, w, sh) = (s.grid[a], s.window[a], s.shift[a]);
        if g == 0 || w == 0 {
            return Err(format!(
                "{kernel}: grid {:?} and window {:?} must be non-empty on every axis",
                s.grid, s.window
            ));
        }
        if g % w != 0 {
            return Err(format!(
                "{kernel}: the {axis} grid extent {g} is not a multiple of the window {w} \
                 (grid {:?}, window {:?})",
                s.grid, s.window
            ));
        }
        if sh >= w {
            return Err(format!(
                "{kernel}: the {axis} shift {sh} must be smaller than the window {w}"
            ));
        }
        to_i32(kernel, "grid extent", g)?;
    }
    let tokens = s
        .grid
        .iter()
        .try_fold(1usize, |acc, &g| acc.checked_mul(g))
        .ok_or_else(|| format!("{kernel}: token grid {:?} overflows", s.grid))?;
    let rows = tokens
        .checked_mul(s.batch)
        .ok_or_else(|| format!("{kernel}: batch * tokens overflows"))?;
    let d = check_heads(
        kernel,
        s.batch,
        s.heads,
        s.head_dim,
        rows,
        3 * s.heads * s.head_dim,
    )?;
    to_i32(kernel, "3D", 3 * d)?;
    // The packed list never exceeds the unpacked grid, whose count bounds the kernel's
    // int arithmetic.
    let windows: usize = s.windows_per_axis().iter().product();
    if windows * s.query_tiles() > MAX_GRID_X {
        return Err(format!(
            "{kernel}: {windows} windows x {} query tiles exceed the grid's x limit",
            s.query_tiles()
        ));
    }
    let blocks = s.packed_tiles();
    Ok(launch(
        kernel,
        Dim3 {
            x: blocks as u32,
            y: s.heads as u32,
            z: s.batch as u32,
        },
        s.head_dim,
    ))
}

/// Entry point and launch configuration of cross-attention. Rules: dh in {16, 64, 128}
/// (D = heads * dh), batch, heads, tokens and text_len >= 1 (a ragged last key tile is
/// masked, so Lt need not be a multiple of [`BLOCK_KV`]).
pub fn cross_config(s: &CrossShape) -> Result<AttnLaunch, String> {
    // dh = 16: wan-tiny's heads (Wan's cross-attention, null gains and a mask of ones).
    let kernel = match s.head_dim {
        16 => KERNEL_CROSS_D16,
        dh => entry("attn_cross", dh, KERNEL_CROSS_D64, KERNEL_CROSS_D128)?,
    };
    if s.tokens == 0 {
        return Err(format!("{kernel}: tokens must be at least 1 (got 0)"));
    }
    if s.text_len == 0 {
        return Err(format!(
            "{kernel}: text_len must be at least 1 (got 0; a prompt has at least its end token)"
        ));
    }
    let rows = s
        .tokens
        .checked_mul(s.batch)
        .ok_or_else(|| format!("{kernel}: batch * tokens overflows"))?;
    let d = check_heads(
        kernel,
        s.batch,
        s.heads,
        s.head_dim,
        rows,
        s.heads * s.head_dim,
    )?;
    let kv_rows = s
        .text_len
        .checked_mul(s.batch)
        .ok_or_else(|| format!("{kernel}: batch * text_len overflows"))?;
    to_i32(kernel, "text rows", kv_rows)?;
    to_i32(kernel, "2D", 2 * d)?;
    let blocks = s.tokens.div_ceil(BLOCK_Q as usize);
    Ok(launch(
        kernel,
        Dim3 {
            x: blocks as u32,
            y: s.heads as u32,
            z: s.batch as u32,
        },
        s.head_dim,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamdit_4b_shapes() {
        let w = WindowShape {
            batch: 1,
            grid: [16, 32, 32],
            window: [4, 16, 16],
            shift: [2, 8, 8],
            heads: 24,
            head_dim: 128,
        };
        assert_eq!(w.windows_per_axis(), [5, 3, 3]);
        let l = window_config(&w).unwrap();
        assert_eq!(l.kernel, KERNEL_WINDOW_D128);
        // Issue 18: 45 windows x 16 tiles = 720 CTAs per head before the packed list (17 280
        // over 24 heads), of which 16 384 tokens / 64 = 256 have rows (6 144).
        assert_eq!(w.unpacked_tiles(), 720);
        assert_eq!((l.config.grid.x, l.config.grid.y), (256, 24));
        let unshifted = WindowShape {
            shift: [0, 0, 0],
            ..w
        };
        assert_eq!(unshifted.packed_tiles(), unshifted.unpacked_tiles());
        assert_eq!(unshifted.packed_tiles(), 256);
        assert_eq!(l.config.shared_bytes, 115_584);
        assert_eq!(shared_bytes(64), 57_984);
        let c = cross_config(&CrossShape {
            batch: 1,
            tokens: 16384,
            text_len: 256,
            heads: 24,
            head_dim: 128,
        })
        .unwrap();
        assert_eq!((c.kernel, c.config.grid.x), (KERNEL_CROSS_D128, 256));
    }
}
