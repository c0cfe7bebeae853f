//! Static quality gates on the nvcc build: every kernel compiles for sm_80 and sm_90 with
//! zero spills, each emulated kernel is in the nvcc build and the other way round, and the
//! PTX wrappers turn into the intended SASS. Without nvcc these tests skip with the reason,
//! or fail when CI=true.

mod common;

use std::collections::BTreeSet;

use streamdit_kernels::{
    emu, kernels_built, ptx, BuildStatus, BUILD_STATUS, KERNEL_RESOURCES, MODULES,
};

/// Kernels of the modules marked `// streamdit-arch: <arch>` on their first line: emulated, but
/// not part of the sm_80 build these gates check.
fn other_arch_kernels() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().map_or(true, |e| e != "cu") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.starts_with("// streamdit-arch:") {
            continue;
        }
        for l in text.lines() {
            if let Some(rest) = l.trim().strip_prefix("EMU_REGISTER_KERNEL(") {
                names.insert(rest.split(',').next().unwrap().trim().to_string());
            }
        }
    }
    names
}

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
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if !common::nvcc_built() {
        return;
    }
    assert!(kernels_built().is_ok());
    print_table();
    for module in MODULES {
        let text = ptx(module).unwrap_or_else(|| panic!("no PTX for module {module}"));
        assert!(
            text.contains(".target sm_80"),
            "{module}: PTX not for sm_80"
        );
    }
    let built: BTreeSet<&str> = KERNEL_RESOURCES.iter().map(|r| r.kernel).collect();
    let other_arch = other_arch_kernels();
    let emulated: BTreeSet<&str> = emu::kernels()
        .iter()
        .map(|k| k.name())
        .filter(|k| !other_arch.contains(*k))
        .collect();
    assert_eq!(
        built, emulated,
        "kernels built by nvcc and kernels registered with the emulator differ"
    );
    for kernel in &built {
        for arch in ["sm_80", "sm_90"] {
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
    for arch in ["sm_80", "sm_90"] {
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
        for arch in ["sm_80", "sm_90"] {
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
    for arch in ["sm_80", "sm_90"] {
        let get = |k: &str| common::resources("conv", k, arch);
        for kernel in [
            "conv3x3_f16",
            "conv_t3_f16",
            "conv3x3_f16_n128",
            "conv_t3_f16_n128",
            "conv1x1_f16",
            "conv1x1_f16_n128",
        ] {
            let r = get(kernel);
            eprintln!("{arch} {r:?}");
            // __launch_bounds__(256, 2): two CTAs per SM need <= 128 registers per thread.
            assert!(
                r.registers <= 128 && r.stack_frame_bytes == 0,
                "{kernel} {arch}: {r:?}"
            );
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
