//! The CUDA kernels of streamdit-engine: their sources (`kernels/cuda/*.cu`), the PTX and
//! ptxas resource report that build.rs produces with nvcc when one is found, and the
//! CUDA-on-CPU emulator ([`emu`]) that runs the same sources on the host.
//!
//! See `kernels/README.md`.

pub mod adaln;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod wan_attention;
pub mod wan_embed;
pub mod wan_qk;

/// What ptxas reported for one kernel on one architecture (`ptxas -v`), and what
/// `cuobjdump -sass` shows of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Module: the `.cu` file stem.
    pub module: &'static str,
    /// Entry function name as in the PTX (kernels are `extern "C"`).
    pub kernel: &'static str,
    /// `sm_80` or `sm_90`.
    pub arch: &'static str,
    pub registers: u32,
    /// Static shared memory in bytes (dynamic shared memory is a launch parameter).
    pub shared_bytes: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// SASS instruction counts: tensor-core mma, ldmatrix, cp.async, 128-bit global loads.
    pub hmma: u32,
    pub ldsm: u32,
    pub ldgsts: u32,
    pub ldg128: u32,
}

/// Whether build.rs compiled the kernels with nvcc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStatus {
    /// PTX for sm_80 is embedded; ptxas checked sm_80 and sm_90.
    Built {
        nvcc: &'static str,
        version: &'static str,
    },
    /// No PTX: nvcc was missing or failed, for the reason given.
    NotBuilt { reason: &'static str },
}

mod generated {
    use super::{BuildStatus, KernelResources};
    include!(concat!(env!("OUT_DIR"), "/kernels_generated.rs"));
    pub(crate) fn ptx(module: &str) -> Option<&'static str> {
        ptx_source(module)
    }
}

pub use generated::{BUILD_STATUS, KERNEL_RESOURCES, MODULES};

/// `Ok` when the kernels were compiled to PTX; otherwise "kernels not built: <reason>", the
/// error a CUDA backend reports.
pub fn kernels_built() -> Result<(), String> {
    match BUILD_STATUS {
        BuildStatus::Built { .. } => Ok(()),
        BuildStatus::NotBuilt { reason } => Err(format!("kernels not built: {reason}")),
    }
}

/// The PTX (sm_80) of a module, by `.cu` file stem; `None` when not built or unknown.
pub fn ptx(module: &str) -> Option<&'static str> {
    generated::ptx(module)
}
