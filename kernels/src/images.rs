//! The images embedded per module (cubins and the fallback PTX) and the choice of the one a
//! device of a given compute capability loads (the rule of [`crate::arch`]).

use crate::arch::{self, Choice, Targets};

/// A cubin: machine code (SASS in an ELF container) for one real architecture.
#[derive(Debug)]
pub struct Cubin {
    /// `sm_80`, `sm_86`, `sm_89`, `sm_90`, `sm_90a`.
    pub arch: &'static str,
    pub image: &'static [u8],
}

/// The fallback PTX, JIT-compiled by the driver where no cubin runs.
#[derive(Debug)]
pub struct Ptx {
    /// Its `.target`: `sm_80` (compute_80) or `sm_90a`.
    pub target: &'static str,
    /// Its `.version`: the PTX ISA the driver must know.
    pub isa: (u32, u32),
    pub text: &'static str,
}

/// Everything embedded for one module (`kernels/cuda/<module>.cu`).
#[derive(Debug)]
pub struct ModuleImages {
    pub module: &'static str,
    /// What the build compiles it to (from the source's first line).
    pub targets: Targets,
    /// Empty when nvcc did not run.
    pub cubins: &'static [Cubin],
    /// `None` when nvcc did not run.
    pub ptx: Option<Ptx>,
}

/// The image a device loads.
#[derive(Clone, Copy, Debug)]
pub enum Image {
    Cubin(&'static Cubin),
    Ptx(&'static Ptx),
}

impl Image {
    /// `cubin sm_86` or `PTX compute_80 (ISA 9.0, JIT)`: what a load error names.
    pub fn describe(&self) -> String {
        match self {
            Image::Cubin(c) => format!("cubin {}", c.arch),
            Image::Ptx(p) => format!(
                "PTX {} (ISA {}.{}, JIT)",
                p.target.replace("sm_", "compute_"),
                p.isa.0,
                p.isa.1
            ),
        }
    }
}

impl ModuleImages {
    /// The image for compute capability `cc` (`arch::choose`), `None` when none runs there.
    pub fn choose(&'static self, cc: (u32, u32)) -> Option<Image> {
        let archs: Vec<&str> = self.cubins.iter().map(|c| c.arch).collect();
        match arch::choose(&archs, self.ptx.as_ref().map(|p| p.target), cc)? {
            Choice::Cubin(i) => Some(Image::Cubin(&self.cubins[i])),
            Choice::Ptx => self.ptx.as_ref().map(Image::Ptx),
        }
    }
}

/// The embedded images of `module`, `None` for an unknown module.
pub fn module_images(module: &str) -> Option<&'static ModuleImages> {
    crate::MODULE_IMAGES.iter().find(|m| m.module == module)
}

/// The image of `module` for compute capability `cc`, or why there is none: kernels not
/// built, an unknown module, or no image that runs on `cc` (naming what was built).
pub fn image_for(module: &str, cc: (u32, u32)) -> Result<Image, String> {
    crate::kernels_built()?;
    let m = module_images(module)
        .ok_or_else(|| format!("no module {module:?}; the modules are {:?}", crate::MODULES))?;
    m.choose(cc).ok_or_else(|| {
        let cubins: Vec<&str> = m.cubins.iter().map(|c| c.arch).collect();
        format!(
            "module {module} has no image for compute capability {}.{}: cubins for {}, PTX \
             for {} (which JIT-compiles only for {})",
            cc.0,
            cc.1,
            cubins.join(", "),
            m.targets.ptx.replace("sm_", "compute_"),
            if m.targets == arch::HOPPER {
                "9.0"
            } else {
                "8.0 and later"
            }
        )
    })
}
