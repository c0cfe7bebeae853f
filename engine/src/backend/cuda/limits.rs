//! Shared memory per block: what a device allows, and which kernel variant of a lowered
//! launch fits in it.
//!
//! A kernel may use more than 48 KiB of dynamic shared memory only after opting in, up to
//! the device's `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN` (read when a
//! [`CudaDevice`](super::real::CudaDevice) opens; the emulator has a settable one). That limit
//! differs by architecture: 163 KiB on sm_80, 99 KiB on sm_86 and sm_89, 227 KiB on sm_90
//! (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability").
//! Head-dim-128 attention needs 115 584 B, so it cannot run on an sm_86/sm_89 device; the
//! decoder's wide convolutions (64 KiB) have a narrow variant (48 KiB) with the same
//! parameters, used where the wide one does not fit.
//!
//! [`fit_step`] runs on every lowered launch before its kernel is looked up, so a device
//! that cannot run a list refuses it when the backend or decoder is built, with a message
//! naming the kernel, the bytes and the limit, not at the first launch.

use streamdit_kernels::conv;

use super::lower::Step;

/// The opt-in limit of sm_80 (A100): 163 KiB.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub const OPTIN_SM80: u32 = 163 * 1024;
/// The opt-in limit of sm_86 and sm_89 (RTX 30/40, A10, L4, L40S): 99 KiB.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub const OPTIN_SM86: u32 = 99 * 1024;
/// The opt-in limit of sm_90 (H100, H200): 227 KiB.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub const OPTIN_SM90: u32 = 227 * 1024;

/// One way to run a launch: an entry point and the shared memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub kernel: &'a str,
    /// Dynamic shared memory, the launch parameter.
    pub dynamic: u32,
    /// Static shared memory of the entry (ptxas `smem`; zero for every kernel today).
    pub static_bytes: u32,
}

impl Candidate<'_> {
    fn total(&self) -> u64 {
        self.dynamic as u64 + self.static_bytes as u64
    }
}

/// The first of `candidates` (in order of preference) whose static plus dynamic shared
/// memory is at most `limit` bytes, or an error naming the preferred kernel, its bytes, the
/// limit and every variant tried. `what` names the launch (the graph op's label).
pub fn pick(what: &str, candidates: &[Candidate], limit: u32) -> std::result::Result<usize, String> {
    if let Some(i) = candidates.iter().position(|c| c.total() <= limit as u64) {
        return Ok(i);
    }
    let Some(first) = candidates.first() else {
        return Err(format!("{what}: no kernel to launch"));
    };
    let statics = if first.static_bytes > 0 {
        format!(" (+ {} B static)", first.static_bytes)
    } else {
        String::new()
    };
    let others: Vec<String> = candidates[1..]
        .iter()
        .map(|c| format!("{} ({} B)", c.kernel, c.total()))
        .collect();
    let tried = if others.is_empty() {
        "; it has no variant with less".to_string()
    } else {
        format!("; no variant fits either: {}", others.join(", "))
    };
    Err(format!(
        "{what}: kernel {} needs {} B of dynamic shared memory{statics}, more than the {limit} B \
         per block this device allows (MAX_SHARED_MEMORY_PER_BLOCK_OPTIN){tried}",
        first.kernel, first.dynamic
    ))
}

/// The variants of an entry point, best first, with the launch each implies: for the wide
/// convolutions, the narrow entry (same parameters, twice the CTAs along the channels).
fn variants(kernel: &str) -> &'static [(&'static str, u32)] {
    const CONV3: &[(&str, u32)] = &[
        (conv::KERNEL_CONV3X3_N128, conv::BLOCK_N_WIDE),
        (conv::KERNEL_CONV3X3, conv::BLOCK_N_NARROW),
    ];
    const CONVT: &[(&str, u32)] = &[
        (conv::KERNEL_CONV_T3_N128, conv::BLOCK_N_WIDE),
        (conv::KERNEL_CONV_T3, conv::BLOCK_N_NARROW),
    ];
    if kernel == conv::KERNEL_CONV3X3_N128 {
        CONV3
    } else if kernel == conv::KERNEL_CONV_T3_N128 {
        CONVT
    } else {
        &[]
    }
}

/// Makes a launch fit `limit` bytes of shared memory per block: keeps it when it fits,
/// switches to a variant that does (rewriting the entry name, grid and shared memory), or
/// returns an error naming the kernel, the bytes and the limit.
pub fn fit_step(step: &mut Step, limit: u32) -> std::result::Result<(), String> {
    let Step::Launch {
        label,
        kernel_name,
        config,
        ..
    } = step
    else {
        return Ok(());
    };
    if config.shared_bytes <= limit {
        return Ok(());
    }
    let table = variants(kernel_name);
    if table.is_empty() {
        let only = [Candidate {
            kernel: kernel_name,
            dynamic: config.shared_bytes,
            static_bytes: 0,
        }];
        return pick(label, &only, limit).map(|_| ());
    }
    let candidates: Vec<Candidate> = table
        .iter()
        .map(|&(kernel, block_n)| Candidate {
            kernel,
            dynamic: conv::shared_bytes(block_n),
            static_bytes: 0,
        })
        .collect();
    let i = pick(label, &candidates, limit)?;
    let (wide, block_n) = (table[0].1, table[i].1);
    // The channel tiles: grid.x CTAs of `wide` channels become grid.x * wide / block_n.
    config.grid.x *= wide / block_n;
    config.shared_bytes = candidates[i].dynamic;
    *kernel_name = table[i].0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamdit_kernels::attention;
    use streamdit_kernels::emu::{Dim3, LaunchConfig};

    fn one(kernel: &str, dynamic: u32) -> Vec<Candidate<'_>> {
        vec![Candidate {
            kernel,
            dynamic,
            static_bytes: 0,
        }]
    }

    #[test]
    fn attention_d128_fits_sm80_and_sm90_but_not_sm86_or_sm89() {
        let bytes = attention::shared_bytes(128);
        assert_eq!(bytes, 115_584);
        let c = one(attention::KERNEL_WINDOW_D128, bytes);
        assert_eq!(pick("block 0 attention", &c, OPTIN_SM90), Ok(0));
        assert_eq!(pick("block 0 attention", &c, OPTIN_SM80), Ok(0));
        let e = pick("block 0 attention", &c, OPTIN_SM86).unwrap_err();
        for part in [
            "block 0 attention",
            "attn_window_d128",
            "115584 B",
            "101376 B",
            "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
            "no variant",
        ] {
            assert!(e.contains(part), "{part:?} in {e}");
        }
        // Head dim 64 fits everywhere that opts in.
        let c = one(attention::KERNEL_WINDOW_D64, attention::shared_bytes(64));
        assert_eq!(pick("a", &c, OPTIN_SM86), Ok(0));
        // Static shared memory counts too: exactly at the limit fits, one byte over does not.
        let mut c = one("k", OPTIN_SM86 - 16);
        c[0].static_bytes = 16;
        assert_eq!(pick("a", &c, OPTIN_SM86), Ok(0));
        c[0].static_bytes = 17;
        let e = pick("a", &c, OPTIN_SM86).unwrap_err();
        assert!(e.contains("+ 17 B static"), "{e}");
    }

    #[test]
    fn the_first_variant_that_fits_is_picked() {
        let c = [
            Candidate {
                kernel: "wide",
                dynamic: 65_536,
                static_bytes: 0,
            },
            Candidate {
                kernel: "narrow",
                dynamic: 49_152,
                static_bytes: 0,
            },
        ];
        assert_eq!(pick("x", &c, OPTIN_SM86), Ok(0));
        assert_eq!(pick("x", &c, 60_000), Ok(1));
        let e = pick("x", &c, 40_000).unwrap_err();
        assert!(
            e.contains("wide needs 65536 B") && e.contains("narrow (49152 B)"),
            "{e}"
        );
        assert!(pick("x", &[], 1).unwrap_err().contains("no kernel"));
    }

    fn conv_step(kernel: &'static str, cout: u32, shared: u32) -> Step {
        Step::Launch {
            label: "decoder conv".into(),
            module: "conv",
            kernel_name: kernel,
            kernel: None,
            config: LaunchConfig {
                grid: Dim3 {
                    x: cout / 128,
                    y: 7,
                    z: 1,
                },
                block: conv::THREADS.into(),
                shared_bytes: shared,
            },
            params: crate::backend::cuda::lower::Params::Conv3x3(conv::Conv3x3Params {
                x: std::ptr::null(),
                w: std::ptr::null(),
                bias: std::ptr::null(),
                residual: std::ptr::null(),
                out: std::ptr::null_mut(),
                t: 1,
                h_in: 1,
                w_in: 1,
                cin: 8,
                cout: cout as i32,
                upsample: 0,
            }),
            trace: Default::default(),
        }
    }

    #[test]
    fn a_wide_convolution_falls_back_to_the_narrow_entry() {
        let wide = conv::shared_bytes(conv::BLOCK_N_WIDE);
        let mut s = conv_step(conv::KERNEL_CONV3X3_N128, 256, wide);
        fit_step(&mut s, OPTIN_SM86).unwrap();
        let Step::Launch {
            kernel_name,
            config,
            ..
        } = &s
        else {
            unreachable!()
        };
        assert_eq!((*kernel_name, config.grid.x), (conv::KERNEL_CONV3X3_N128, 2));

        // Under 64 KiB: the narrow entry, 4 CTAs of 64 channels, 48 KiB.
        fit_step(&mut s, 60 * 1024).unwrap();
        let Step::Launch {
            kernel_name,
            config,
            ..
        } = &s
        else {
            unreachable!()
        };
        assert_eq!(*kernel_name, conv::KERNEL_CONV3X3);
        assert_eq!((config.grid.x, config.grid.y), (4, 7));
        assert_eq!(config.shared_bytes, conv::shared_bytes(conv::BLOCK_N_NARROW));

        // Under 48 KiB nothing fits; the error names the preferred entry and the narrow one.
        let mut s = conv_step(conv::KERNEL_CONV_T3_N128, 128, wide);
        let e = fit_step(&mut s, 40_000).unwrap_err();
        assert!(
            e.contains("conv_t3_f16_n128") && e.contains("conv_t3_f16 (49152 B)"),
            "{e}"
        );
    }
}
