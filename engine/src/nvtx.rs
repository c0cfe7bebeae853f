//! NVTX ranges, so that Nsight Systems shows the engine's work by name: a range around every
//! streaming step (`step N`) and chunk decode (`decode`), around every op of an eager CPU
//! call, and around every launch of an eager CUDA call (`streamdit profile`, graphs off),
//! which Nsight projects onto the kernels the launch started.
//!
//! The ranges go through NVTX3 (the `nvtx` crate's vendored headers). Without a tool that
//! injects a handler (Nsight Systems sets `NVTX_INJECTION64_PATH`), each call returns
//! after one indirect call: NVTX checks for an injection library once, at the first call.

use std::fmt::Display;

/// The environment variable through which a tool's NVTX handler library is injected.
pub const INJECTION_VAR: &str = "NVTX_INJECTION64_PATH";

/// An open NVTX push/pop range on this thread; dropping it pops the range.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range(());

impl Range {
    /// Pushes a range named `label` on the calling thread.
    pub fn push(label: impl Display) -> Range {
        let mut name = label.to_string();
        // A NUL would end the C string early (and the binding would refuse it).
        if name.contains('\0') {
            name = name.replace('\0', " ");
        }
        nvtx::range_push!("{name}");
        Range(())
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        nvtx::range_pop!();
    }
}

/// The handler library a tool injected through [`INJECTION_VAR`], if any: when `None`, the
/// ranges are not recorded by anything.
pub fn injection() -> Option<String> {
    std::env::var(INJECTION_VAR).ok().filter(|p| !p.is_empty())
}
