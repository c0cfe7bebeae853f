//! Static quality gates on the nvcc build: every module embeds a cubin per target
//! architecture and a fallback PTX a CUDA 13.0 driver can JIT, every kernel compiles for
//! every target with zero spills, each emulated kernel is in the nvcc build and the other
//! way round, the PTX wrappers turn into the intended SASS, and a Hopper-only source
//! (`// streamdit-arch: sm_90a`) builds for sm_90a only. Without nvcc these tests skip with
//! the reason, or fail when CI=true.

mod common;

#[allow(dead_code)]
#[path = "../build/nvcc.rs"]
mod nvcc;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use streamdit_kernels::arch::{self, GENERIC, HOPPER, OLDEST_DRIVER_PTX_ISA};
use streamdit_kernels::{
    emu, kernels_built, module_images, ptx, BuildStatus, BUILD_STATUS, KERNEL_RESOURCES, MODULES,
    MODULE_IMAGES,
};

fn print_table() {
    eprintln!(
        "{:<14} {:<30} {:<6} {:>5} {:>6} {:>6} {:>7} {:>5} {:>5} {:>6} {:>7}",
        "module",
        "kernel",
        "arch",
        "regs",
        "smem",
        "stack",
        "spills",
        "HMMA",
        "LDSM",
        "LDGSTS",
        "LDG.128"
    );
    for r in KERNEL_RESOURCES {
        eprintln!(
            "{:<14} {:<30} {:<6} {:>5} {:>6} {:>6} {:>3}/{:<3} {:>5} {:>5} {:>6} {:>7}",
            r.module,
            r.kernel,
            r.arch,
            r.registers,
            r.shared_bytes,
            r.stack_frame_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.hmma,
            r.ldsm,
            r.ldgsts,
            r.ldg128
        );
    }
}

#[test]
fn every_kernel_compiles_for_every_target_without_spills() {
    if !common::nvcc_built() {
        return;
    }
    assert!(kernels_built().is_ok());
    print_table();
    let built: BTreeSet<&str> = KERNEL_RESOURCES.iter().map(|r| r.kernel).collect();
    let emulated: BTreeSet<&str> = emu::kernels().iter().map(|k| k.name()).collect();
    assert_eq!(
        built, emulated,
        "kernels built by nvcc and kernels registered with the emulator differ"
    );
    for kernel in &built {
        let module = KERNEL_RESOURCES
            .iter()
            .find(|r| r.kernel == *kernel)
            .map(|r| r.module)
            .expect("in the table");
        let targets = module_images(module).expect("a module").targets;
        for &arch in targets.cubins {
            let r = KERNEL_RESOURCES
                .iter()
                .find(|r| r.kernel == *kernel && r.arch == arch)
                .unwrap_or_else(|| panic!("{kernel}: no ptxas report for {arch}"));
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes),
                (0, 0),
                "{kernel} spills on {arch}: {r:?}"
            );
            assert!(
                r.registers > 0 && r.registers <= 255,
                "{kernel} on {arch}: {r:?}"
            );
        }
    }
}

#[test]
fn ptx_wrappers_become_the_intended_sass() {
    if !common::nvcc_built() {
        return;
    }
    for &arch in GENERIC.sass {
        let get = |k: &str| common::resources("emu_selftest", k, arch);
        assert!(
            get("selftest_mma").hmma >= 2,
            "{arch}: mma.sync f16 and bf16 must be HMMA: {:?}",
            get("selftest_mma")
        );
        assert!(
            get("selftest_ldmatrix").ldsm >= 6,
            "{arch}: six ldmatrix forms must be LDSM: {:?}",
            get("selftest_ldmatrix")
        );
        assert!(
            get("selftest_cp_async").ldgsts >= 4,
            "{arch}: four cp.async must be LDGSTS: {:?}",
            get("selftest_cp_async")
        );
    }
}

#[test]
fn adaln_reads_rows_with_16_byte_loads() {
    if !common::nvcc_built() {
        return;
    }
    for kernel in ["adaln_rows_warp", "adaln_row_cta"] {
        for &arch in GENERIC.sass {
            let r = common::resources("adaln", kernel, arch);
            // Four chunk slots per thread, each two float4 of x plus two of shift and scale.
            assert!(
                r.ldg128 >= 24,
                "{arch}: {kernel} must load x and the modulation with LDG.128: {r:?}"
            );
        }
    }
}

#[test]
fn kernels_not_built_is_an_error_not_a_panic() {
    match BUILD_STATUS {
        BuildStatus::Built { .. } => assert!(kernels_built().is_ok()),
        BuildStatus::NotBuilt { reason } => {
            let err = kernels_built().expect_err("not built");
            assert!(
                err.starts_with("kernels not built: ") && err.contains(reason),
                "{err}"
            );
            assert!(MODULES.iter().all(|m| ptx(m).is_none()));
        }
    }
    assert!(ptx("no_such_module").is_none());
}

#[test]
fn decoder_convolutions_are_tensor_core_pipelines() {
    if !common::nvcc_built() {
        return;
    }
    const CONVS: [&str; 12] = [
        "conv3x3_f16",
        "conv_t3_f16",
        "conv3x3_f16_n128",
        "conv_t3_f16_n128",
        "conv1x1_f16",
        "conv1x1_f16_n128",
        "conv3d_f16",
        "conv3d_f16_n128",
        "conv3x3s2_f16",
        "conv3x3s2_f16_n128",
        "conv_tstride_f16",
        "conv_tstride_f16_n128",
    ];
    for &arch in GENERIC.cubins {
        for kernel in CONVS {
            let r = common::resources("conv", kernel, arch);
            // __launch_bounds__(256, 2): two CTAs per SM need <= 128 registers per thread.
            assert!(
                r.registers <= 128 && r.stack_frame_bytes == 0,
                "{kernel} {arch}: {r:?}"
            );
        }
    }
    for &arch in GENERIC.sass {
        let get = |k: &str| common::resources("conv", k, arch);
        for kernel in CONVS {
            let r = get(kernel);
            eprintln!("{arch} {r:?}");
            assert!(r.sass, "{kernel} {arch}: SASS not counted: {r:?}");
            // Per k-tile and warp: 2 k16 steps of 2 x 4 (BN 64) or 4 x 4 (BN 128) mma, 16 or 32
            // HMMA, fed by 4 or 6 ldmatrix.x4 each; every operand copy is a 16-byte cp.async
            // (the gather included).
            assert!(
                r.hmma >= 16 && r.ldsm >= 8 && r.ldgsts > 0 && r.ldg128 == 0,
                "{kernel} {arch}: the main loop must be HMMA fed by LDSM and LDGSTS: {r:?}"
            );
        }
        for kernel in ["groupnorm_stats", "groupnorm_apply"] {
            let r = get(kernel);
            eprintln!("{arch} {r:?}");
            assert!(
                r.ldg128 > 0,
                "{kernel} {arch}: activations must be read as 16-byte vectors: {r:?}"
            );
        }
        eprintln!("{arch} {:?}", get("groupnorm_finalize"));
    }
}

/// The Wan VAE's row kernels (vae.cu): no stack or spills, few registers (nvcc 13.0.88: 39-40 for
/// the RMS norm, 27-32 for the softmax; a thread holds at most 24 floats of data), and the
/// activations and scores are read as 16-byte vectors.
#[test]
fn vae_row_kernels_read_16_byte_vectors() {
    if !common::nvcc_built() {
        return;
    }
    for kernel in ["rms_norm_channels_f16", "softmax_rows_f16"] {
        for &arch in GENERIC.cubins {
            let r = common::resources("vae", kernel, arch);
            assert!(
                r.registers <= 64 && r.stack_frame_bytes == 0 && r.spill_store_bytes == 0,
                "{kernel} {arch}: {r:?}"
            );
        }
        for &arch in GENERIC.sass {
            let r = common::resources("vae", kernel, arch);
            eprintln!("{arch} {r:?}");
            assert!(
                r.sass && r.ldg128 > 0,
                "{kernel} {arch}: rows must be read as 16-byte vectors: {r:?}"
            );
        }
    }
}

/// Every module embeds one cubin per target architecture (an ELF image, with a ptxas report
/// for each of its kernels) and the fallback PTX, whose header is the one a CUDA 13.0
/// driver (R580, PTX ISA 9.0) can JIT: `.version` at most 9.0, `.target` the module's PTX
/// target. nvcc 13.5 writes `.version 9.5` and fails this.
#[test]
fn every_module_embeds_cubins_and_ptx_the_oldest_driver_loads() {
    if !common::nvcc_built() {
        return;
    }
    assert_eq!(
        MODULE_IMAGES.iter().map(|m| m.module).collect::<Vec<_>>(),
        MODULES.to_vec()
    );
    for m in MODULE_IMAGES {
        let archs: Vec<&str> = m.cubins.iter().map(|c| c.arch).collect();
        assert_eq!(archs, m.targets.cubins, "{}: cubins", m.module);
        for c in m.cubins {
            assert!(
                c.image.len() > 64 && c.image.starts_with(b"\x7fELF"),
                "{} {}: not an ELF cubin",
                m.module,
                c.arch
            );
            for r in KERNEL_RESOURCES.iter().filter(|r| r.module == m.module) {
                assert!(
                    KERNEL_RESOURCES
                        .iter()
                        .any(|s| s.kernel == r.kernel && s.arch == c.arch),
                    "{}: no ptxas report of {} for {}",
                    m.module,
                    r.kernel,
                    c.arch
                );
            }
        }
        let p = m.ptx.as_ref().expect("built, so PTX");
        let (isa, target) = arch::ptx_header(p.text).expect("a PTX header");
        eprintln!(
            "{}: cubins {archs:?}, PTX .version {}.{} .target {target}",
            m.module, isa.0, isa.1
        );
        assert_eq!((isa, target.as_str()), (p.isa, p.target), "{}", m.module);
        assert_eq!(target, m.targets.ptx, "{}: PTX target", m.module);
        assert!(
            isa <= OLDEST_DRIVER_PTX_ISA,
            "{}: PTX ISA {}.{} is newer than {}.{}, the newest a CUDA 13.0 driver JITs \
             ({BUILD_STATUS:?}); kernels/scripts/install-nvcc.sh pins nvcc 13.0",
            m.module,
            isa.0,
            isa.1,
            OLDEST_DRIVER_PTX_ISA.0,
            OLDEST_DRIVER_PTX_ISA.1
        );
        assert_eq!(ptx(m.module), Some(p.text));
    }
}

/// The built table answers the loader's question for each compute capability.
#[test]
fn the_built_table_picks_an_image_per_compute_capability() {
    if !common::nvcc_built() {
        return;
    }
    let expected = [
        ((8, 0), "cubin sm_80"),
        ((8, 6), "cubin sm_86"),
        ((8, 7), "cubin sm_86"),
        ((8, 9), "cubin sm_89"),
        ((9, 0), "cubin sm_90"),
        ((10, 0), "PTX compute_80 (ISA 9.0, JIT)"),
        ((12, 0), "PTX compute_80 (ISA 9.0, JIT)"),
    ];
    for module in MODULES {
        // A Hopper-only module (`// streamdit-arch: sm_90a`) loads on 9.0 alone.
        if streamdit_kernels::image_for(module, (8, 0)).is_err() {
            let image = streamdit_kernels::image_for(module, (9, 0)).unwrap();
            assert!(image.describe().contains("sm_90a"), "{module} on 9.0");
            assert!(
                streamdit_kernels::image_for(module, (10, 0)).is_err(),
                "{module}"
            );
            continue;
        }
        for (cc, want) in expected {
            let image = streamdit_kernels::image_for(module, cc).unwrap();
            assert_eq!(image.describe(), want, "{module} on {cc:?}");
        }
        let e = streamdit_kernels::image_for(module, (7, 5)).unwrap_err();
        assert!(e.contains("7.5") && e.contains("sm_80"), "{e}");
    }
    let e = streamdit_kernels::image_for("no_such_module", (9, 0)).unwrap_err();
    assert!(e.contains("no_such_module") && e.contains("gemm"), "{e}");
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "streamdit-nvcc-gates-{what}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Hopper-only convention on a fixture (`tests/fixtures/hopper_only.cu`): its first
/// line selects the Hopper targets; compiled as build.rs compiles a module, it yields only
/// an sm_90a cubin (with a ptxas report of its kernel) and compute_90a PTX; compiled for the
/// generic targets it fails (setmaxnreg is sm_90a only), so the marker is what makes it
/// build; and it compiles for the emulator (the host compiler after `cuda_emu.h`), which
/// build.rs does for every `cuda/*.cu` whatever its marker.
#[test]
fn hopper_only_sources_build_for_sm90a_and_the_emulator() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = manifest.join("tests/fixtures/hopper_only.cu");
    let text = std::fs::read_to_string(&fixture).unwrap();
    assert_eq!(arch::targets_of(&text), Ok(HOPPER));

    let host = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let wrapper = scratch_dir("emu").join("hopper_only_emu.cpp");
    std::fs::write(
        &wrapper,
        format!(
            "#include \"cuda_emu.h\"\n#include \"{}\"\n",
            fixture.display()
        ),
    )
    .unwrap();
    let emu = std::process::Command::new(&host)
        .args(["-std=c++17", "-fsyntax-only", "-I"])
        .arg(manifest.join("emu"))
        .arg("-I")
        .arg(manifest.join("emu/shim"))
        .arg("-I")
        .arg(manifest.join("cuda"))
        .arg(&wrapper)
        .output();
    match emu {
        Ok(out) => assert!(
            out.status.success(),
            "the fixture does not compile for the emulator: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            if !common::require(false, &format!("no host C++ compiler `{host}`: {e}")) {
                return;
            }
        }
    }

    if !common::nvcc_built() {
        return;
    }
    let BuildStatus::Built {
        nvcc: nvcc_path, ..
    } = BUILD_STATUS
    else {
        unreachable!("nvcc_built checked it")
    };
    let tools = nvcc::Tools::beside(Path::new(nvcc_path));
    let include = manifest.join("cuda");
    let out = scratch_dir("hopper");
    let t = HOPPER;
    let built = nvcc::compile_module(
        &tools,
        "hopper_only",
        &fixture,
        &include,
        t.cubins,
        t.ptx,
        t.sass,
        &out,
    )
    .unwrap_or_else(|e| panic!("the fixture must build for sm_90a: {e}"));
    let archs: Vec<&str> = built.cubins.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(archs, ["sm_90a"]);
    let ptx_text = std::fs::read_to_string(&built.ptx).unwrap();
    let (isa, target) = arch::ptx_header(&ptx_text).unwrap();
    assert_eq!(target, "sm_90a");
    assert!(isa <= OLDEST_DRIVER_PTX_ISA, "{isa:?}");
    let r = built
        .resources
        .iter()
        .find(|r| r.kernel == "hopper_fixture" && r.arch == "sm_90a")
        .expect("a ptxas report for the fixture on sm_90a");
    assert!(r.registers > 0 && r.spill_store_bytes == 0, "{r:?}");
    let g = GENERIC;
    let generic = nvcc::compile_module(
        &tools,
        "hopper_only_generic",
        &fixture,
        &include,
        g.cubins,
        g.ptx,
        &[],
        &out,
    );
    let err = generic
        .err()
        .expect("setmaxnreg must not assemble for sm_80");
    assert!(err.contains("ptxas") && err.contains("sm_80"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// ptxas's note that it serialized a function's wgmma (C7518) marks that function in the
/// resource table, whether the note comes before or after the function's own report; the
/// sm_90a kernels' gates (tests/gemm_sm90.rs, attention_sm90.rs, attention.rs) require it
/// unset. The first note is verbatim what ptxas 13.0 printed for a branch around the
/// attention kernels' wgmma; the second's reason is made up (only the function name counts).
#[test]
fn ptxas_wgmma_serialization_notes_are_parsed() {
    let report = "\
ptxas info    : (C7518) Potential Performance Loss: wgmma.mma_async instructions are serialized due to program dependence on compiler-inserted WG.DP in divergent path in the function 'k_before'
ptxas info    : Compiling entry function 'k_before' for 'sm_90a'
ptxas info    : Function properties for k_before
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers, 64 bytes smem
ptxas info    : Compiling entry function 'k_clean' for 'sm_90a'
ptxas info    : Function properties for k_clean
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers, 64 bytes smem
ptxas info    : Compiling entry function 'k_after' for 'sm_90a'
ptxas info    : (C7518) Potential Performance Loss: wgmma.mma_async instructions are serialized due to the presence of Extern calls in the function 'k_after'
ptxas info    : Function properties for k_after
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, 64 bytes smem
";
    let table = nvcc::parse_ptxas(report, "sm_90a");
    let flags: Vec<(&str, bool, u32)> = table
        .iter()
        .map(|r| (r.kernel.as_str(), r.wgmma_serialized, r.registers))
        .collect();
    assert_eq!(
        flags,
        [
            ("k_before", true, 168),
            ("k_clean", false, 168),
            ("k_after", true, 128)
        ]
    );
}
