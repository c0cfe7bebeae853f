//! The CUDA kernels of streamdit-engine: their sources (`kernels/cuda/*.cu`), the images
//! build.rs produces with nvcc when one is found (a cubin per architecture and the fallback
//! PTX, [`images`]; which one a device loads: [`arch`]) with the ptxas resource report, and
//! the CUDA-on-CPU emulator ([`emu`]) that runs the same sources on the host.
//!
//! See `kernels/README.md`.

pub mod adaln;
pub mod arch;
pub mod attention;
pub mod attention_sm90;
pub mod attention_sm90_window;
pub mod conv;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod gemm_sm90;
pub mod images;
pub mod tma;
pub mod vae;
pub mod video;
pub mod wan_attention;
pub mod wan_embed;
pub mod wan_qk;

pub use images::{image_for, module_images, Cubin, Image, ModuleImages, Ptx};

/// What ptxas reported for one kernel on one architecture (`ptxas -v`), and what
/// `cuobjdump -sass` shows of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Module: the `.cu` file stem.
    pub module: &'static str,
    /// Entry function name as in the PTX (kernels are `extern "C"`).
    pub kernel: &'static str,
    /// The cubin's architecture: `sm_80`, `sm_86`, `sm_89`, `sm_90` (or `sm_90a`).
    pub arch: &'static str,
    pub registers: u32,
    /// Static shared memory in bytes (dynamic shared memory is a launch parameter).
    pub shared_bytes: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Whether the SASS was disassembled for this arch (`arch::Targets::sass`); the counts
    /// below are zero otherwise.
    pub sass: bool,
    /// SASS instruction counts: tensor-core mma, ldmatrix, cp.async, 128-bit global loads.
    pub hmma: u32,
    pub ldsm: u32,
    pub ldgsts: u32,
    pub ldg128: u32,
    /// Hopper SASS counts: warpgroup mma (`HGMMA`, from wgmma.mma_async) and TMA tensor
    /// loads (`UTMALDG`, from cp.async.bulk.tensor).
    pub hgmma: u32,
    pub utmaldg: u32,
    /// Named-barrier arrivals (`BAR.ARV`, from bar.arrive id, count): the sm_90a attention
    /// kernels' ping-pong hand-overs.
    pub bar_arv: u32,
    /// ptxas serialized the kernel's wgmma (note C7518): each waits for the previous one,
    /// the asynchrony lost. The sm_90a kernels' gates require false.
    pub wgmma_serialized: bool,
}

/// Whether build.rs compiled the kernels with nvcc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStatus {
    /// The cubins and fallback PTX of every module are embedded (`MODULE_IMAGES`).
    Built {
        nvcc: &'static str,
        version: &'static str,
    },
    /// No images: nvcc was missing or failed, for the reason given.
    NotBuilt { reason: &'static str },
}

mod generated {
    // Without nvcc the generated tables hold no images, so `Cubin` and `Ptx` go unused: a
    // user building without a CUDA toolkit should see the build script's warning, not this.
    #[allow(unused_imports)]
    use super::{BuildStatus, Cubin, KernelResources, ModuleImages, Ptx};
    include!(concat!(env!("OUT_DIR"), "/kernels_generated.rs"));
}

pub use generated::{BUILD_STATUS, KERNEL_RESOURCES, MODULES, MODULE_IMAGES};

/// `Ok` when nvcc compiled the kernels; otherwise "kernels not built: <reason>", the
/// error a CUDA backend reports.
pub fn kernels_built() -> Result<(), String> {
    match BUILD_STATUS {
        BuildStatus::Built { .. } => Ok(()),
        BuildStatus::NotBuilt { reason } => Err(format!("kernels not built: {reason}")),
    }
}

/// The fallback PTX of a module (`compute_80`, or `compute_90a` for a Hopper-only one), by
/// `.cu` file stem; `None` when not built or unknown.
pub fn ptx(module: &str) -> Option<&'static str> {
    module_images(module)?.ptx.as_ref().map(|p| p.text)
}
