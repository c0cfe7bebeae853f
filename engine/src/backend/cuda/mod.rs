//! The CUDA backend: the model's static graph lowered to kernel launches over one memory
//! arena, replayed as one CUDA graph per streaming step, on a real GPU or on the emulator.
//!
//! How the pieces fit:
//!
//! - [`device`]: the [`Device`](device::Device) trait (generic, for static dispatch; the
//!   run-time choice of device is made at `Box<dyn Backend>`), the one interface to a GPU: typed
//!   allocations with device addresses, host copies (synchronous, and asynchronous through
//!   pinned buffers on a second stream), kernels looked up by `(module, name)` and launched
//!   with their `#[repr(C)]` parameter struct by value, events, and graph capture / upload /
//!   replay. Shared bookkeeping (the allocation table, the capture rules) lives there too, so
//!   both implementations refuse the same misuse with the same errors.
//! - [`emu`]: [`EmuDevice`](emu::EmuDevice), host memory (poisoned, 256-byte aligned) and
//!   the kernel emulator of `streamdit-kernels`, with a selectable thread order; capture
//!   records the operation list and replay runs it. Everything above the device layer is
//!   tested on it.
//! - [`real`]: [`CudaDevice`](real::CudaDevice), the CUDA driver through cudarc with libcuda
//!   loaded at run time; a machine without a driver or GPU gets an error naming the missing
//!   piece, never a panic. Modules load lazily from the image embedded by
//!   `streamdit-kernels` for the device's compute capability (cubin, else PTX), with the JIT
//!   logs in a load error (`real::load`).
//!
//! - [`limits`]: shared memory per block; each lowered launch is fitted to the device's
//!   opt-in limit (a narrower variant, or a refusal naming kernel, bytes and limit).
//! - [`lower`]: the model graph's op lists lowered to launches over one liveness-planned
//!   arena (fusing where a kernel does two ops in one pass), run eagerly or captured.
//! - [`backend`]: `CudaBackend<D: Device>` implementing [`Backend`](super::Backend) on
//!   either device: weights upload, the step graph (per-step tau/dtau/flags in one block
//!   copied from pinned memory on the compute stream before each replay, [`step_block`]),
//!   prefetch of the next step, timed eager calls.
//! - [`text`]: the text encoders' linear layers on a device.
//! - [`causal`]: `CudaCausal<D: Device>`, the Wan family's
//!   [`CausalBackend`](crate::backend::CausalBackend) (KV cache of frame slots on the
//!   device) over the launch lists of `lower::wan`.
//!
//! The TAE decoder's lowering to its kernels lives with the decoder, in
//! `crate::decoder::tae::device`, built on this module's device layer and launch steps.

pub mod attention_bench;
pub mod backend;
pub mod causal;
pub mod device;
pub mod emu;
pub mod kernel_bench;
pub mod prologue_bench;
pub mod limits;
pub mod lower;
pub mod real;
pub mod step_block;
pub mod text;

pub use backend::{CudaBackend, DeviceWeights};
pub use causal::CudaCausal;
