//! Device memory planning for every graph the engine lowers: one greedy best-fit arena
//! planner ([`arena`]) over buffers with sizes and lifetimes, used by the DiT's
//! [`MemoryPlan`] (regions for weights, per-prompt K/V, inputs and outputs, and the
//! activation arena) and by the decoders' device lowering.

pub mod arena;
mod dit;
pub mod host;

pub use dit::{
    lifetimes, lifetimes_fused, ArenaStats, Fusion, Lifetime, MemoryPlan, OpList, Placement, Region,
};

/// Alignment of every buffer and every region, in bytes (cudaMalloc gives 256).
pub const ALIGNMENT: u64 = 256;

pub(crate) fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGNMENT) * ALIGNMENT
}
