//! CPU numerics shared by every room: the f32 reference of every graph op (docs/streamdit.md
//! sections 1-4), used by the CPU backend, the text encoders and the CPU decoders, and the
//! reference every GPU kernel is checked against.
//!
//! All tensors are row-major slices. Shapes are validated by the caller (the graph fixes
//! them), so shape mismatches are only `debug_assert!`ed. Row-wise ops run in parallel over
//! chunks of rows with `rayon`; matrix products go through `gemm`; attention runs in
//! parallel over (branch, window, head) or (branch, query chunk).
//!
//! This room knows no model: it takes slices and sizes, never graphs or profiles.

mod attention;
mod elementwise;
mod gemm;
mod kv_attention;
mod layout;
mod mask;
mod norm;
mod rope;
pub(crate) mod vector;

pub(crate) use attention::attend;
pub use attention::{cross_attention, window_attention};
pub use elementwise::{
    gated_residual, gelu_tanh, guidance, mask_rows, modulation, residual, silu, sinusoid, swiglu,
    timestep_embedding,
};
pub use gemm::{linear, linear_rate};
pub(crate) use gemm::{matmul, View};
pub use kv_attention::segment_attention;
pub use layout::{add_positions, patchify, unpatchify, unpatchify_packed};
pub use mask::validate_mask;
pub use norm::{ada_ln, head_rms_norm, layer_norm, layer_norm_affine};
pub use rope::rope_3d;
pub(crate) use vector::wide;

/// Epsilon of LayerNorm and RMSNorm.
pub(crate) const EPS: f32 = 1e-6;

/// Elements a parallel task should at least get before splitting further.
pub(crate) const MIN_TASK_ELEMS: usize = 16 * 1024;

/// Rows of width `width` per parallel task: enough to amortise the task overhead.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (MIN_TASK_ELEMS / width.max(1)).max(1)
}

/// The frame of token row `t` when rows repeat the pattern of `frames * tokens_per_frame`
/// tokens (one repetition per branch).
pub(crate) fn frame_of(t: usize, frames: usize, tokens_per_frame: usize) -> usize {
    (t % (frames * tokens_per_frame)) / tokens_per_frame
}

/// Modulation vector `i` of frame `f` in `mods [frames, k, d]`.
pub(crate) fn mod_vec(mods: &[f32], k: usize, d: usize, f: usize, i: usize) -> &[f32] {
    &mods[(f * k + i) * d..(f * k + i + 1) * d]
}
