//! Which images each module is compiled to, and which one a device loads.
//!
//! One rule for the build and for the loader: `build.rs` includes this file (`#[path]`) to
//! decide what nvcc produces per module, and the CUDA backend calls [`choose`] with the
//! device's compute capability to pick what it loads. Pure and std-only for that reason.
//!
//! - A module (`kernels/cuda/<name>.cu`) is compiled to cubins for [`GENERIC`]`.cubins`
//!   (sm_80, sm_86, sm_89, sm_90) and keeps PTX for `compute_80` as the fallback, which
//!   the driver JIT-compiles for any later architecture (sm_100, sm_120, ...).
//! - A module whose first line is `// streamdit-arch: sm_90a` ([`ARCH_MARKER`]) uses
//!   Hopper-only instructions (wgmma, setmaxnreg): nvcc compiles it for [`HOPPER`] only
//!   (an sm_90a cubin and `compute_90a` PTX). It is still compiled into the CPU emulator
//!   like every module.
//!
//! Compatibility (NVIDIA's CUDA C++ Programming Guide, "Binary Compatibility" and "PTX
//! Compatibility"; the PTX ISA guide on the `a` suffix): a cubin for `sm_XY` runs on devices
//! of compute capability `X.Z` with `Z >= Y` (same major, same or later minor); a cubin or
//! PTX for an arch-specific target (`sm_90a`) runs on compute capability 9.0 only; PTX for
//! `compute_XY` is JIT-compiled by the driver for any compute capability `>= X.Y`, provided
//! the driver knows the PTX ISA version in its `.version` header.

/// The first line that makes a module Hopper-only: `// streamdit-arch: sm_90a`.
pub const ARCH_MARKER: &str = "// streamdit-arch:";

/// The oldest driver the embedded images are built for: CUDA 13.0 (driver branch R580).
/// Cubins from any 13.x toolkit load on it (minor-version compatibility); PTX loads only if
/// its ISA version is one the driver's JIT knows: at most [`OLDEST_DRIVER_PTX_ISA`].
pub const OLDEST_DRIVER_CUDA: (u32, u32) = (13, 0);
/// PTX ISA 9.0 is the version of CUDA 13.0 (PTX ISA guide, "Release notes"); nvcc 13.0.x
/// writes `.version 9.0`, nvcc 13.5 writes `.version 9.5`.
pub const OLDEST_DRIVER_PTX_ISA: (u32, u32) = (9, 0);

/// What nvcc produces for one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    /// Real architectures with an embedded cubin (`ptxas -arch=...`).
    pub cubins: &'static [&'static str],
    /// The `.target` of the embedded fallback PTX (`nvcc --ptx -arch=...`).
    pub ptx: &'static str,
    /// Architectures whose SASS the build disassembles for the quality gates (a subset of
    /// `cubins`; `cuobjdump -sass` is the slowest step of the build, so not all of them).
    pub sass: &'static [&'static str],
}

/// Every module without the marker.
pub const GENERIC: Targets = Targets {
    cubins: &["sm_80", "sm_86", "sm_89", "sm_90"],
    ptx: "sm_80",
    sass: &["sm_80", "sm_90"],
};

/// Modules marked `// streamdit-arch: sm_90a`.
pub const HOPPER: Targets = Targets {
    cubins: &["sm_90a"],
    ptx: "sm_90a",
    sass: &["sm_90a"],
};

/// The targets of a module from its source text: [`HOPPER`] when the first line is the
/// marker with `sm_90a`, [`GENERIC`] without a marker, an error for any other marker (a
/// typo must not silently build the generic targets).
pub fn targets_of(source: &str) -> Result<Targets, String> {
    let first = source.lines().next().unwrap_or_default().trim();
    match first.strip_prefix(ARCH_MARKER) {
        None => {
            if let Some(line) = source.lines().skip(1).position(|l| l.contains(ARCH_MARKER)) {
                return Err(format!(
                    "line {}: `{ARCH_MARKER}` must be the first line of the file",
                    line + 2
                ));
            }
            Ok(GENERIC)
        }
        Some(rest) => match rest.trim() {
            "sm_90a" => Ok(HOPPER),
            other => Err(format!(
                "`{first}`: the only architecture-specific target is sm_90a (got `{other}`)"
            )),
        },
    }
}

/// A real architecture such as `sm_86` or `sm_90a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
    /// The `a` suffix: architecture-specific features, this exact compute capability only.
    pub specific: bool,
}

/// `sm_86` -> 8.6, `sm_90a` -> 9.0 specific, `sm_100` -> 10.0, `sm_120` -> 12.0; `None`
/// for anything else.
pub fn parse_arch(name: &str) -> Option<Arch> {
    let rest = name
        .strip_prefix("sm_")
        .or_else(|| name.strip_prefix("compute_"))?;
    let (digits, specific) = match rest.strip_suffix('a') {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(Arch {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        specific,
    })
}

impl Arch {
    /// Whether a cubin for this architecture runs on compute capability `cc`.
    pub fn cubin_runs_on(self, cc: (u32, u32)) -> bool {
        if self.specific {
            return (self.major, self.minor) == cc;
        }
        self.major == cc.0 && self.minor <= cc.1
    }

    /// Whether PTX for this target JIT-compiles for compute capability `cc`.
    pub fn ptx_runs_on(self, cc: (u32, u32)) -> bool {
        if self.specific {
            return (self.major, self.minor) == cc;
        }
        (self.major, self.minor) <= cc
    }
}

/// The image a device loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The cubin at this index of the module's cubin list.
    Cubin(usize),
    /// The fallback PTX, JIT-compiled by the driver.
    Ptx,
}

/// The image for compute capability `cc`, from a module's cubin architectures and its
/// PTX target: among the cubins that run there, an arch-specific one first (sm_90a on 9.0),
/// then the highest minor version (sm_86 on 8.7); without one, the PTX if it JIT-compiles
/// there; `None` when nothing runs.
pub fn choose(cubins: &[&str], ptx: Option<&str>, cc: (u32, u32)) -> Option<Choice> {
    let best = cubins
        .iter()
        .enumerate()
        .filter_map(|(i, name)| parse_arch(name).map(|a| (i, a)))
        .filter(|(_, a)| a.cubin_runs_on(cc))
        .max_by_key(|(_, a)| (a.specific, a.minor));
    if let Some((i, _)) = best {
        return Some(Choice::Cubin(i));
    }
    match ptx.and_then(parse_arch) {
        Some(a) if a.ptx_runs_on(cc) => Some(Choice::Ptx),
        _ => None,
    }
}

/// The `.version` (ISA major, minor) and `.target` of a PTX text's header.
pub fn ptx_header(ptx: &str) -> Option<((u32, u32), String)> {
    let mut version = None;
    let mut target = None;
    for line in ptx.lines().map(str::trim).take(64) {
        if let Some(v) = line.strip_prefix(".version") {
            let (major, minor) = v.trim().split_once('.')?;
            version = Some((major.parse().ok()?, minor.parse().ok()?));
        } else if let Some(t) = line.strip_prefix(".target") {
            // `.target sm_80` or `.target sm_80, texmode_independent`.
            target = t.split(',').next().map(|s| s.trim().to_string());
        }
        if version.is_some() && target.is_some() {
            break;
        }
    }
    Some((version?, target?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_parse() {
        let a = |major, minor, specific| Arch {
            major,
            minor,
            specific,
        };
        assert_eq!(parse_arch("sm_80"), Some(a(8, 0, false)));
        assert_eq!(parse_arch("sm_86"), Some(a(8, 6, false)));
        assert_eq!(parse_arch("sm_90a"), Some(a(9, 0, true)));
        assert_eq!(parse_arch("compute_90a"), Some(a(9, 0, true)));
        assert_eq!(parse_arch("sm_100"), Some(a(10, 0, false)));
        assert_eq!(parse_arch("sm_120"), Some(a(12, 0, false)));
        for bad in ["sm_8", "sm_", "gfx90a", "sm_8x", "sm_90b", ""] {
            assert_eq!(parse_arch(bad), None, "{bad}");
        }
    }

    #[test]
    fn markers_pick_the_targets() {
        assert_eq!(targets_of("// A kernel\n#include <x>\n"), Ok(GENERIC));
        assert_eq!(targets_of(""), Ok(GENERIC));
        assert_eq!(
            targets_of("// streamdit-arch: sm_90a\n// wgmma\n"),
            Ok(HOPPER)
        );
        assert_eq!(targets_of("  // streamdit-arch:   sm_90a  \n"), Ok(HOPPER));
        let e = targets_of("// streamdit-arch: sm_100a\n").unwrap_err();
        assert!(e.contains("sm_90a") && e.contains("sm_100a"), "{e}");
        let e = targets_of("// comment\n// streamdit-arch: sm_90a\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("first line"), "{e}");
        assert!(GENERIC.sass.iter().all(|s| GENERIC.cubins.contains(s)));
        assert!(HOPPER.sass.iter().all(|s| HOPPER.cubins.contains(s)));
    }

    /// The selection rule on the generic module's images and on a Hopper-only one, for the
    /// compute capabilities of A100 (8.0), RTX 30 / A10 (8.6), Orin (8.7), L40S / RTX 40
    /// (8.9), H100 / H200 (9.0), B200 (10.0), RTX 50 (12.0) and Turing (7.5).
    #[test]
    fn each_compute_capability_loads_the_right_image() {
        let generic = GENERIC.cubins;
        let g = |cc| choose(generic, Some(GENERIC.ptx), cc);
        let name = |c: Option<Choice>| match c {
            Some(Choice::Cubin(i)) => generic[i].to_string(),
            Some(Choice::Ptx) => "ptx".to_string(),
            None => "none".to_string(),
        };
        assert_eq!(name(g((8, 0))), "sm_80");
        assert_eq!(name(g((8, 6))), "sm_86");
        assert_eq!(name(g((8, 7))), "sm_86", "same major, highest minor below");
        assert_eq!(name(g((8, 9))), "sm_89");
        assert_eq!(name(g((9, 0))), "sm_90");
        assert_eq!(name(g((10, 0))), "ptx", "no cubin of major 10: JIT");
        assert_eq!(name(g((12, 0))), "ptx");
        assert_eq!(
            name(g((7, 5))),
            "none",
            "compute_80 PTX does not run on 7.5"
        );

        let h = |cc| choose(HOPPER.cubins, Some(HOPPER.ptx), cc);
        assert_eq!(h((9, 0)), Some(Choice::Cubin(0)));
        for cc in [(8, 0), (8, 9), (10, 0), (12, 0)] {
            assert_eq!(h(cc), None, "sm_90a runs on 9.0 only, not {cc:?}");
        }
        // With both an sm_90 and an sm_90a cubin, 9.0 takes the arch-specific one.
        let both = ["sm_80", "sm_90", "sm_90a"];
        assert_eq!(choose(&both, None, (9, 0)), Some(Choice::Cubin(2)));
        assert_eq!(choose(&both, None, (8, 9)), Some(Choice::Cubin(0)));
        // Nothing built: nothing to load.
        assert_eq!(choose(&[], None, (9, 0)), None);
    }

    #[test]
    fn ptx_headers_parse() {
        let text = "//\n// Generated by NVIDIA NVVM Compiler\n.version 9.0\n.target sm_80\n\
                    .address_size 64\n";
        assert_eq!(ptx_header(text), Some(((9, 0), "sm_80".to_string())));
        let t = ".version 8.7\n.target sm_90a, texmode_independent\n";
        assert_eq!(ptx_header(t), Some(((8, 7), "sm_90a".to_string())));
        assert_eq!(ptx_header(".target sm_80\n"), None);
    }
}
