//! The CUDA-on-CPU emulator: launches the host-compiled `kernels/cuda/*.cu` kernels with
//! cuLaunchKernel's shape (kernel, grid, block, dynamic shared bytes, `void**` params).
//!
//! Blocks run one after another on the calling thread, the threads of a block as fibers
//! resumed in a selectable [`ThreadOrder`]; see `kernels/README.md` for what is emulated.
//! Launches from different threads are independent.
//!
//! **Race checking.** With `STREAMDIT_EMU_RACECHECK=1` in the environment, or while a
//! [`RaceCheck`] guard from [`racecheck`] lives on the calling thread, launches run the
//! instrumented copy of the kernel and fail with [`EmuErrorKind::Race`] when two accesses to
//! shared memory are not ordered by any synchronisation, naming both.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt;

mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct EmuDim3 {
        pub x: c_uint,
        pub y: c_uint,
        pub z: c_uint,
    }

    /// Mirrors `EmuKernel` in emu/emu_runtime.h.
    #[repr(C)]
    pub struct EmuKernel {
        pub name: *const c_char,
        pub entry: *const c_void,
        pub entry_racecheck: *const c_void,
        pub params_size: usize,
        pub params_align: usize,
    }

    extern "C" {
        pub fn emu_launch(
            kernel: *const EmuKernel,
            grid: EmuDim3,
            block: EmuDim3,
            shared_bytes: c_uint,
            params: *mut *mut c_void,
            order: c_int,
            seed: u64,
            flags: c_uint,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn emu_kernel_count() -> usize;
        pub fn emu_kernel_at(index: usize) -> *const EmuKernel;
        pub fn emu_variant_count() -> usize;
        pub fn emu_variant_at(index: usize) -> *const EmuKernel;
        pub fn emu_wgmma_operand_address(
            desc: u64,
            mn: c_int,
            k: c_int,
            major: c_int,
            addr: *mut u32,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

/// Largest dynamic shared memory per block the emulator accepts (227 KiB, as sm_90).
pub const MAX_SHARED_BYTES: u32 = 227 * 1024;

/// Grid or block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Dim3 { x, y: 1, z: 1 }
    }
}
impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Dim3 { x, y, z: 1 }
    }
}
impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3 { x, y, z }
    }
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    pub shared_bytes: u32,
}

/// The order in which the scheduler resumes runnable threads in each pass (and runs the
/// blocks). A kernel with a missing barrier computes a wrong result in at least one order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Increasing linear thread index.
    Forward,
    /// Decreasing linear thread index.
    Reverse,
    /// A new permutation in every pass, drawn from this seed.
    Shuffle(u64),
}

impl ThreadOrder {
    /// Forward, reverse and a shuffle: the orders every kernel test runs in.
    pub fn all(seed: u64) -> [ThreadOrder; 3] {
        [
            ThreadOrder::Forward,
            ThreadOrder::Reverse,
            ThreadOrder::Shuffle(seed),
        ]
    }
}

/// Why a launch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmuErrorKind {
    /// No kernel of that name is compiled into the emulator.
    UnknownKernel,
    /// The parameters do not match the kernel's parameter struct.
    ParamsMismatch,
    /// Grid, block or shared memory outside the limits.
    InvalidLaunch,
    /// `__syncthreads` deadlock, divergence, or a thread exited while others wait.
    Barrier,
    /// Warp collective misuse or deadlock.
    Warp,
    /// Misaligned or malformed `ldmatrix`/`cp.async` operand.
    Address,
    /// `__trap()` or another error raised by the kernel.
    Trap,
    /// The race checker found shared-memory accesses that no synchronisation orders.
    Race,
    /// An mbarrier or warpgroup wait that can never complete.
    Deadlock,
    /// A status code this wrapper does not know.
    Other(i32),
}

/// A launch error with the emulator's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuError {
    pub kind: EmuErrorKind,
    pub message: String,
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "emulator: {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for EmuError {}

fn error(kind: EmuErrorKind, message: impl Into<String>) -> EmuError {
    EmuError {
        kind,
        message: message.into(),
    }
}

/// A kernel compiled into the emulator.
#[derive(Clone, Copy)]
pub struct Kernel {
    raw: &'static ffi::EmuKernel,
    name: &'static str,
}

// SAFETY: `raw` points to an immutable `const EmuKernel` with static storage in the
// emulator library (a name literal, a function pointer and two sizes); nothing mutates it.
unsafe impl Send for Kernel {}
// SAFETY: as for Send: shared access to immutable static data.
unsafe impl Sync for Kernel {}

impl Kernel {
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// `size_of` the kernel's parameter struct.
    pub fn params_size(&self) -> usize {
        self.raw.params_size
    }
    /// `align_of` the kernel's parameter struct.
    pub fn params_align(&self) -> usize {
        self.raw.params_align
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("params_size", &self.raw.params_size)
            .finish()
    }
}

/// Every kernel registered with `EMU_REGISTER_KERNEL` in `kernels/cuda/*.cu`.
pub fn kernels() -> Vec<Kernel> {
    // SAFETY: emu_kernel_count reads a constant from the generated registry.
    let n = unsafe { ffi::emu_kernel_count() };
    table(n, ffi::emu_kernel_at)
}

/// The test-only variants (`// streamdit-emu-variant: NAME` in a .cu file), named
/// `"<kernel>/<NAME>"`.
pub fn variants() -> Vec<Kernel> {
    // SAFETY: emu_variant_count reads a constant from the generated registry.
    let n = unsafe { ffi::emu_variant_count() };
    table(n, ffi::emu_variant_at)
}

/// Looks up variant `variant` of `kernel` (e.g. a planted race).
pub fn variant(kernel: &str, variant: &str) -> Result<Kernel, EmuError> {
    let name = format!("{kernel}/{variant}");
    variants()
        .into_iter()
        .find(|k| k.name == name)
        .ok_or_else(|| {
            error(
                EmuErrorKind::UnknownKernel,
                format!("no emulated variant named {name:?}"),
            )
        })
}

fn table(n: usize, at: unsafe extern "C" fn(usize) -> *const ffi::EmuKernel) -> Vec<Kernel> {
    (0..n)
        .filter_map(|i| {
            // SAFETY: i < count, so `at` returns a pointer into the static table (null only
            // out of range).
            let p = unsafe { at(i) };
            // SAFETY: non-null pointers in the table point to `const EmuKernel` objects with
            // static storage duration, never written.
            let raw: &'static ffi::EmuKernel = unsafe { p.as_ref() }?;
            // SAFETY: `name` is the kernel's name as a string literal (#name in the
            // registration macro): NUL-terminated and static.
            let name = unsafe { CStr::from_ptr(raw.name) }.to_str().ok()?;
            Some(Kernel { raw, name })
        })
        .collect()
}

/// Looks a kernel up by name.
pub fn kernel(name: &str) -> Result<Kernel, EmuError> {
    kernels()
        .into_iter()
        .find(|k| k.name == name)
        .ok_or_else(|| {
            error(
                EmuErrorKind::UnknownKernel,
                format!("no emulated kernel named {name:?}"),
            )
        })
}

thread_local! {
    static RACECHECK: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Race checking switched on (or off) for the launches of the calling thread while it lives;
/// see [`racecheck`].
#[must_use = "race checking lasts while the guard lives"]
pub struct RaceCheck {
    previous: Option<bool>,
}

impl Drop for RaceCheck {
    fn drop(&mut self) {
        RACECHECK.with(|c| c.set(self.previous));
    }
}

/// Switches race checking on (`true`) or off for the launches made on this thread until the
/// returned guard is dropped, whatever `STREAMDIT_EMU_RACECHECK` says.
pub fn racecheck(on: bool) -> RaceCheck {
    RaceCheck {
        previous: RACECHECK.with(|c| c.replace(Some(on))),
    }
}

/// Whether a launch on this thread now runs under the race checker: the innermost
/// [`racecheck`] guard, else `STREAMDIT_EMU_RACECHECK=1` (or `true`).
pub fn racecheck_enabled() -> bool {
    RACECHECK.with(|c| c.get()).unwrap_or_else(|| {
        std::env::var("STREAMDIT_EMU_RACECHECK").is_ok_and(|v| v == "1" || v == "true")
    })
}

/// Test hook: the shared-memory address from which a wgmma reads element `(mn, k)` of an
/// operand described by the 64-bit matrix descriptor `desc` (K-major, or MN-major when
/// `mn_major`), as the emulator decodes it; an error for what it refuses (a non-zero base
/// offset).
pub fn wgmma_operand_address(desc: u64, mn: u32, k: u32, mn_major: bool) -> Result<u32, String> {
    let mut addr = 0u32;
    let mut err = [0 as c_char; 512];
    // SAFETY: plain arithmetic on the arguments; `addr` and `err` are writable for their
    // sizes and the callee NUL-terminates `err`.
    let status = unsafe {
        ffi::emu_wgmma_operand_address(
            desc,
            mn as c_int,
            k as c_int,
            c_int::from(mn_major),
            &mut addr,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if status == 0 {
        return Ok(addr);
    }
    // SAFETY: NUL-terminated by the callee within its length.
    Err(unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Launches `kernel` in the emulator and returns when every block has finished.
///
/// Checked here or by the runtime, reported as errors: the configuration (block of at most
/// 1024 threads, dimensions, shared memory up to [`MAX_SHARED_BYTES`]), the presence of a
/// parameter pointer, barrier and warp-collective misuse, operand alignment.
///
/// # Safety
/// As for `cuLaunchKernel`: `params[0]` must point to a value of the kernel's parameter
/// struct (`#[repr(C)]` mirror of the C++ one), and every pointer the kernel dereferences
/// through it must be valid for the accesses the kernel makes with this configuration.
/// The emulator cannot check memory accesses; a wrong pointer is undefined behaviour.
pub unsafe fn launch(
    kernel: Kernel,
    config: LaunchConfig,
    params: &[*mut c_void],
    order: ThreadOrder,
) -> Result<(), EmuError> {
    if kernel.raw.params_size > 0 && params.first().map_or(true, |p| p.is_null()) {
        return Err(error(
            EmuErrorKind::ParamsMismatch,
            format!(
                "{}: expects a pointer to its {}-byte parameter struct",
                kernel.name, kernel.raw.params_size
            ),
        ));
    }
    let (order_code, seed) = match order {
        ThreadOrder::Forward => (0, 0),
        ThreadOrder::Reverse => (1, 0),
        ThreadOrder::Shuffle(seed) => (2, seed),
    };
    let dim = |d: Dim3| ffi::EmuDim3 {
        x: d.x,
        y: d.y,
        z: d.z,
    };
    let flags = if racecheck_enabled() { 1 } else { 0 };
    let mut err = vec![0 as c_char; 16384];
    // SAFETY: kernel.raw is a registered EmuKernel; the runtime only reads `params` (the
    // cast to *mut follows the C signature) and, per this function's contract, the caller
    // guarantees the parameter struct and its pointers. `err` is writable for its length.
    let status = unsafe {
        ffi::emu_launch(
            kernel.raw,
            dim(config.grid),
            dim(config.block),
            config.shared_bytes,
            params.as_ptr() as *mut *mut c_void,
            order_code,
            seed,
            flags,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if status == 0 {
        return Ok(());
    }
    // SAFETY: emu_launch always NUL-terminates `err` within its length.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let kind = match status {
        1 => EmuErrorKind::InvalidLaunch,
        2 => EmuErrorKind::Barrier,
        3 => EmuErrorKind::Warp,
        4 => EmuErrorKind::Address,
        5 => EmuErrorKind::Trap,
        6 => EmuErrorKind::Race,
        7 => EmuErrorKind::Deadlock,
        other => EmuErrorKind::Other(other),
    };
    Err(error(kind, message))
}

/// [`launch`] with the project's convention of one parameter struct passed by value:
/// checks that `P` has the size and alignment of the kernel's C++ parameter struct.
///
/// # Safety
/// As for [`launch`]: `P` must be the `#[repr(C)]` mirror of the kernel's parameter struct
/// and its pointers valid for the kernel's accesses.
pub unsafe fn launch_with<P: Copy>(
    kernel: Kernel,
    config: LaunchConfig,
    params: &P,
    order: ThreadOrder,
) -> Result<(), EmuError> {
    if std::mem::size_of::<P>() != kernel.raw.params_size
        || std::mem::align_of::<P>() != kernel.raw.params_align
    {
        return Err(error(
            EmuErrorKind::ParamsMismatch,
            format!(
                "{}: parameter struct is {} bytes aligned to {}, the Rust mirror {} aligned to {}",
                kernel.name,
                kernel.raw.params_size,
                kernel.raw.params_align,
                std::mem::size_of::<P>(),
                std::mem::align_of::<P>()
            ),
        ));
    }
    let p = params as *const P as *mut c_void;
    // SAFETY: `p` points to a live `P` of the kernel's parameter size and alignment for the
    // whole call; the rest is the caller's contract.
    unsafe { launch(kernel, config, &[p], order) }
}

// Compile-time check that the FFI types keep their C sizes.
const _: () = assert!(std::mem::size_of::<ffi::EmuDim3>() == 12);
const _: () = assert!(std::mem::size_of::<c_int>() == 4);
