//! Helpers shared by the emulator tests: a seeded generator, poisoned buffers, launches.
#![allow(dead_code)]

use std::ffi::c_void;
use std::path::PathBuf;

use streamdit_kernels::emu::{self, EmuError, LaunchConfig, ThreadOrder};
use streamdit_kernels::{BuildStatus, KernelResources, BUILD_STATUS, KERNEL_RESOURCES};

/// `CI=true` (or 1): missing prerequisites fail the tests instead of skipping them.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `STREAMDIT_FULL=1`: the slow tier (every case, larger shapes).
pub fn full() -> bool {
    std::env::var("STREAMDIT_FULL").is_ok_and(|v| v == "1")
}

/// The race-checker policy of the kernel tests ("every kernel test runs under the race
/// checker"): with `STREAMDIT_FULL=1` every emulator launch made while the returned guard
/// lives runs under it; in the default tier nothing changes (each test file runs its fast
/// case under [`race_checked`] instead). Call it at the top of each test, or in the file's
/// launch helper.
pub fn race_check_full() -> Option<emu::RaceCheck> {
    full().then(|| emu::racecheck(true))
}

/// A guard for one case of a loop over cases: the race checker for the `first` (fast,
/// default-tier) case, and for every case with `STREAMDIT_FULL=1`.
pub fn race_check_case(first: bool) -> Option<emu::RaceCheck> {
    (first || full()).then(|| emu::racecheck(true))
}

/// Runs `f` with every emulator launch on this thread under the race checker: a race fails
/// the launch with `EmuErrorKind::Race`, which the tests' launch helpers turn into a panic
/// naming both accesses. Used for each test file's fast default case.
pub fn race_checked<R>(f: impl FnOnce() -> R) -> R {
    let _check = emu::racecheck(true);
    f()
}

/// Skips (returns false) with a printed reason, or fails under CI.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(!ci(), "CI=true and {what}");
    eprintln!("skipped: {what}");
    false
}

/// Whether nvcc built the kernels (their ptxas reports exist); otherwise skips with the
/// reason, or fails under CI.
pub fn nvcc_built() -> bool {
    let reason = match BUILD_STATUS {
        BuildStatus::Built { .. } => String::new(),
        BuildStatus::NotBuilt { reason } => reason.to_string(),
    };
    require(
        reason.is_empty(),
        &format!("kernels were not built with nvcc: {reason}"),
    )
}

/// `kernels/<file>:<line>` of the one line of `file` (relative to `kernels/`) containing
/// `needle`: the site the race checker names for it.
pub fn site_in(file: &str, needle: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} on lines {lines:?}");
    format!("kernels/{file}:{}", lines[0])
}

/// The ptxas report of `kernel` of `module` on `arch`.
pub fn resources(module: &str, kernel: &str, arch: &str) -> &'static KernelResources {
    KERNEL_RESOURCES
        .iter()
        .find(|r| r.module == module && r.kernel == kernel && r.arch == arch)
        .unwrap_or_else(|| panic!("{module}.cu: no ptxas report for {kernel} on {arch}"))
}

/// splitmix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i32
    }
    /// Uniform in [lo, hi) but never within 1e-3 of zero: inputs are never zeros.
    pub fn nonzero(&mut self, lo: f32, hi: f32) -> f32 {
        loop {
            let v = self.uniform(lo, hi);
            if v.abs() > 1e-3 {
                return v;
            }
        }
    }
}

/// An output buffer filled with NaN, so elements the kernel does not write fail.
pub fn poisoned_f32(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// A 32-bit output buffer filled with all ones (NaN as f32, never a valid 16-bit pair here).
pub fn poisoned_u32(n: usize) -> Vec<u32> {
    vec![u32::MAX; n]
}

pub fn ptr<T>(v: &[T]) -> *const T {
    v.as_ptr()
}

pub fn mut_ptr<T>(v: &mut [T]) -> *mut T {
    v.as_mut_ptr()
}

/// Launches a self-test kernel with its `#[repr(C)]` parameter struct.
///
/// # Safety
/// `params` must mirror the kernel's parameter struct and its pointers must cover every
/// access the kernel makes with `config`.
pub unsafe fn launch<P: Copy>(
    name: &str,
    config: LaunchConfig,
    params: &P,
    order: ThreadOrder,
) -> Result<(), EmuError> {
    let kernel = emu::kernel(name)?;
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
}

pub fn config(grid: u32, block: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: grid.into(),
        block: block.into(),
        shared_bytes,
    }
}

/// `<repo>/../shared/ptx/fragments.json`, the PTX ISA fragment tables.
pub fn fragments_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/ptx/fragments.json")
}

/// The fragment tables, or None (skip) when the file is missing outside CI.
pub fn fragments() -> Option<serde_json::Value> {
    let path = fragments_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            require(
                false,
                &format!(
                    "the PTX fragment tables are missing ({}: {e})",
                    path.display()
                ),
            );
            return None;
        }
    };
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Field `key` of a table row as an index.
pub fn field(row: &serde_json::Value, key: &str) -> usize {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("fragment row {row} lacks {key}")) as usize
}

pub fn rows<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a Vec<serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_array()
        .unwrap_or_else(|| panic!("fragments.json has no table {path:?}"))
}

pub type VoidPtr = *mut c_void;

/// `<repo>/../shared/ptx/wgmma.json`, the Hopper wgmma and TMA tables.
pub fn wgmma_tables_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/ptx/wgmma.json")
}

/// The wgmma/TMA tables, or None (skip) when the file is missing outside CI.
pub fn wgmma_tables() -> Option<serde_json::Value> {
    let path = wgmma_tables_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            require(
                false,
                &format!("the wgmma tables are missing ({}: {e})", path.display()),
            );
            return None;
        }
    };
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A JSON number as usize.
pub fn num(v: &serde_json::Value) -> usize {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not a non-negative integer")) as usize
}

/// A JSON string "0x..." as u64.
pub fn hex(v: &serde_json::Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Where the emulator puts dynamic shared memory in the shared window (kernels/README.md).
pub const SHARED_BASE: usize = 0x400;

/// `WgmmaProbeParams` of `kernels/cuda/emu_selftest_sm90.cu`, field for field: the launch
/// parameters of the wgmma probe kernel (emu_wgmma, emu_tma and race_check tests).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WgmmaProbeParams {
    pub image: *const u8,
    pub a_regs: *const u32,
    pub c: *const f32,
    pub out: *mut f32,
    pub early: *mut f32,
    pub desc_a: u64,
    pub desc_b: u64,
    pub image_bytes: i32,
    pub n: i32,
    pub bf16: i32,
    pub scale_d: i32,
    pub mode: i32,
}
