//! The real device: the CUDA driver API through cudarc's checked `result` layer (and `sys`
//! where `result` has no wrapper), with libcuda loaded at run time.
//!
//! Opening a device checks, in order, each step that can be missing on a machine, and
//! returns an error naming it: the driver library (probed before any driver call, because
//! cudarc panics on first use when libcuda cannot be loaded), `cuInit` (no device, or a stub
//! library), the driver version (at least [`MIN_DRIVER_VERSION`], so that every driver
//! symbol cudarc may resolve exists: cudarc panics on a missing symbol too), the ordinal, the
//! architecture (sm_80 or newer), then the primary context and two non-blocking streams. It
//! also reads the device's UUID (to find it in NVML, [`uuid`]) and its opt-in shared memory
//! per block (what lowered launches are fitted to, `super::limits`).
//!
//! Modules load on the first lookup of one of their kernels, from the image for the
//! device's compute capability: the cubin built for it, else the fallback PTX ([`load`]).
//! [`CudaDevice::probe`] opens a device and loads one module: what `--backend auto` asks
//! before it chooses the GPU.
//!
//! Every driver call runs with the device's context made current on the calling thread,
//! so the device may move between threads.

use std::collections::HashMap;
use std::ffi::{c_void, CString};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;

use super::device::{backend_error, Book, Device, Queue};
use crate::error::{Error, Result};

/// The oldest driver accepted: CUDA 13.0 (`streamdit_kernels::arch::OLDEST_DRIVER_CUDA`).
/// cudarc is built with its `cuda-13000` bindings, which resolve symbols such as
/// `cuEventElapsedTime_v2` that older drivers lack (cudarc panics on a missing symbol, so
/// the version is checked first). The embedded cubins (from a 13.0 toolkit) load on any
/// 13.x driver; the fallback PTX is ISA 9.0, which a 13.0 driver JIT-compiles.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// The module [`CudaDevice::probe`] loads, and one of its kernels.
pub const PROBE_MODULE: (&str, &str) = ("device_probe", "device_probe_axpb");

/// Dynamic shared memory a kernel may use without opting in (48 KiB).
const DEFAULT_MAX_DYNAMIC_SHARED: u32 = 48 * 1024;

fn err(op: impl Into<String>, msg: impl Into<String>) -> Error {
    backend_error("cuda", op, msg)
}

/// `CUDA_ERROR_OUT_OF_MEMORY: out of memory` for a driver error.
pub fn driver_message(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(text) => format!("{name}: {}", text.to_string_lossy()),
        Err(_) => name,
    }
}

/// Whether the CUDA driver library (`libcuda.so` and its versioned names) can be loaded.
/// No driver call is made.
pub fn driver_library_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on each candidate name and closes what
    // it opened; loading libcuda runs no code with preconditions of ours.
    unsafe { sys::is_culib_present() }
}

/// The fallback PTX of `module` as NUL-terminated text, or why there is none: "kernels not
/// built: <reason>" when nvcc did not run, or an unknown module. (A device loads the image
/// for its compute capability, [`streamdit_kernels::image_for`]; this is the PTX alone.)
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub fn module_image(module: &str) -> Result<CString> {
    let op = format!("load module {module}");
    streamdit_kernels::kernels_built().map_err(|reason| err(&op, reason))?;
    let ptx = streamdit_kernels::ptx(module).ok_or_else(|| {
        err(
            &op,
            format!(
                "no module {module:?}; the modules are {:?}",
                streamdit_kernels::MODULES
            ),
        )
    })?;
    CString::new(ptx).map_err(|_| err(&op, "the PTX contains a NUL byte"))
}

struct KernelRecord {
    module: String,
    name: String,
    func: sys::CUfunction,
    /// Size of the kernel's single parameter, from `cuFuncGetParamInfo`.
    params_size: usize,
    /// The dynamic shared memory this kernel has been opted in to.
    max_dynamic_shared: u32,
    /// Its static shared memory (`CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES`).
    static_shared: u32,
}

struct PinnedRecord {
    ptr: *mut c_void,
    /// Recorded after the last asynchronous copy queued on the buffer.
    event: sys::CUevent,
    pending: bool,
}

struct GraphRecord {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    generation: u64,
}

/// A CUDA device: a primary context, a compute and a copy stream, the allocations, pinned
/// buffers, modules, events and graphs made on it.
pub struct CudaDevice {
    book: Book,
    ordinal: usize,
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    compute: sys::CUstream,
    copy: sys::CUstream,
    name: String,
    capability: (i32, i32),
    /// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT` (none if the driver reports no positive
    /// count): the persistent kernels launch at most one CTA per SM.
    multiprocessors: Option<u32>,
    driver_version: i32,
    /// `GPU-xxxxxxxx-...`, as NVML and nvidia-smi name it.
    uuid: String,
    /// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
    shared_optin: u32,
    /// The JIT info logs of modules loaded from PTX, for `describe`-style reports.
    jit_notes: Vec<String>,
    modules: HashMap<String, sys::CUmodule>,
    kernels: Vec<KernelRecord>,
    events: Vec<sys::CUevent>,
    pinned: HashMap<u64, PinnedRecord>,
    graphs: HashMap<u64, GraphRecord>,
}

// SAFETY: the driver handles held here (context, streams, module and function handles,
// events, graphs, device and pinned pointers) may be used from any thread once the context
// is current there, which every method ensures first (`bind`). All access goes through
// `&mut self` (or `&self` methods that make no driver call), so there is no concurrent use.
unsafe impl Send for CudaDevice {}

impl CudaDevice {
    /// Opens device `ordinal`, or says why there is none (no driver library, no device, an
    /// old driver, an unsupported GPU). Never panics for a missing driver.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_library_present() {
            let names = cudarc::get_lib_name_candidates("cuda");
            return Err(err(
                "load the CUDA driver",
                format!(
                    "libcuda was not found ({} names tried, such as libcuda.so and \
                     libcuda.so.1): no NVIDIA driver is installed, or it is not on the library \
                     search path",
                    names.len()
                ),
            ));
        }
        result::init().map_err(|e| err("cuInit", driver_message(e)))?;
        let mut driver_version = 0;
        // SAFETY: writes one int; cuInit succeeded.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| err("cuDriverGetVersion", driver_message(e)))?;
        if driver_version < MIN_DRIVER_VERSION {
            return Err(err(
                "check the driver version",
                format!(
                    "the driver supports CUDA {}, this build needs {} or newer",
                    version_string(driver_version),
                    version_string(MIN_DRIVER_VERSION)
                ),
            ));
        }
        let op = format!("open device {ordinal}");
        let count = result::device::get_count().map_err(|e| err(&op, driver_message(e)))?;
        if ordinal >= count.max(0) as usize {
            return Err(err(&op, format!("the driver sees {count} CUDA device(s)")));
        }
        let device =
            result::device::get(ordinal as i32).map_err(|e| err(&op, driver_message(e)))?;
        let name = result::device::get_name(device).map_err(|e| err(&op, driver_message(e)))?;
        let attribute = |a| {
            // SAFETY: `device` came from cuDeviceGet.
            unsafe { result::device::get_attribute(device, a) }
                .map_err(|e| err(&op, driver_message(e)))
        };
        let capability = (
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let multiprocessors =
            attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let multiprocessors = u32::try_from(multiprocessors).ok().filter(|&n| n > 0);
        let shared_optin = attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?;
        let shared_optin = u32::try_from(shared_optin).map_err(|_| {
            err(
                &op,
                format!("the driver reports {shared_optin} B of opt-in shared memory per block"),
            )
        })?;
        let mut raw = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: writes the 16 bytes of `raw`; `device` came from cuDeviceGet.
        unsafe { sys::cuDeviceGetUuid_v2(&mut raw, device) }
            .result()
            .map_err(|e| err(&op, format!("cuDeviceGetUuid: {}", driver_message(e))))?;
        let uuid = uuid::format(&raw.bytes.map(|b| b as u8));
        if capability.0 < 8 {
            return Err(err(
                &op,
                format!(
                    "{name} is sm_{}{}; the kernels need sm_80 or newer",
                    capability.0, capability.1
                ),
            ));
        }
        // SAFETY: `device` came from cuDeviceGet; released once in Drop.
        let ctx = unsafe { result::primary_ctx::retain(device) }
            .map_err(|e| err(&op, driver_message(e)))?;
        // From here on Drop releases what was made, including on the error paths below.
        let mut dev = CudaDevice {
            book: Book::new("cuda"),
            ordinal,
            device,
            ctx,
            compute: std::ptr::null_mut(),
            copy: std::ptr::null_mut(),
            name,
            capability,
            multiprocessors,
            driver_version,
            uuid,
            shared_optin,
            jit_notes: Vec::new(),
            modules: HashMap::new(),
            kernels: Vec::new(),
            events: Vec::new(),
            pinned: HashMap::new(),
            graphs: HashMap::new(),
        };
        dev.bind(&op)?;
        let stream = |op: &str| {
            result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| err(op, driver_message(e)))
        };
        dev.compute = stream("create the compute stream")?;
        dev.copy = stream("create the copy stream")?;
        Ok(dev)
    }

    /// Opens device `ordinal` and loads one module ([`PROBE_MODULE`]) with the image for its
    /// compute capability, so that a device whose driver cannot load the kernels (a PTX ISA
    /// it does not know, no image for its architecture) is an error here, with the reason.
    pub fn probe(ordinal: usize) -> Result<Self> {
        let mut dev = Self::new(ordinal)?;
        Device::kernel(&mut dev, PROBE_MODULE.0, PROBE_MODULE.1)?;
        Ok(dev)
    }

    /// The UUID, `GPU-` and 32 hex digits in groups of 8-4-4-4-12, as NVML reports it.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The JIT info log of each module loaded from PTX (none when every module had a cubin).
    pub fn jit_notes(&self) -> &[String] {
        &self.jit_notes
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Compute capability `(major, minor)`.
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// The driver's CUDA version, as `cuDriverGetVersion` (13000 for 13.0).
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// Makes the context current on this thread.
    fn bind(&self, op: &str) -> Result<()> {
        // SAFETY: `ctx` is the retained primary context, alive until Drop.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| err(op, driver_message(e)))
    }

    fn stream(&self, stream: Queue) -> sys::CUstream {
        match stream {
            Queue::Compute => self.compute,
            Queue::Copy => self.copy,
        }
    }

    fn sync_stream(&self, op: &str, stream: sys::CUstream) -> Result<()> {
        // SAFETY: `stream` is one of the two streams created in `new`.
        unsafe { result::stream::synchronize(stream) }.map_err(|e| err(op, driver_message(e)))
    }

    /// Orders `stream` after the asynchronous copies pending on pinned buffer `id`, and
    /// returns its host pointer.
    fn pinned_for_async(
        &mut self,
        op: &str,
        id: u64,
        stream: sys::CUstream,
    ) -> Result<*mut c_void> {
        let record = &self.pinned[&id];
        if record.pending {
            // SAFETY: stream and event are live handles of this context.
            unsafe {
                result::stream::wait_event(
                    stream,
                    record.event,
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            }
            .map_err(|e| err(op, driver_message(e)))?;
        }
        Ok(record.ptr)
    }

    /// Records that an asynchronous copy on `stream` uses pinned buffer `id`.
    fn pinned_queued(&mut self, op: &str, id: u64, stream: sys::CUstream) -> Result<()> {
        let record = self.pinned.get_mut(&id).expect("checked by the caller");
        // SAFETY: event and stream are live handles of this context.
        unsafe { result::event::record(record.event, stream) }
            .map_err(|e| err(op, driver_message(e)))?;
        record.pending = true;
        Ok(())
    }
}

fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

mod cublas;
pub use cublas::Cublas;
mod device;
pub mod load;
pub mod uuid;


impl Drop for CudaDevice {
    /// Releases everything in reverse order of creation. Errors cannot be returned from
    /// here and are ignored: the context is going away with everything in it.
    fn drop(&mut self) {
        if self.bind("drop").is_err() {
            return;
        }
        // SAFETY: every handle below was created by this device and is released once; the
        // streams are synchronised first, so no queued work uses what is freed.
        unsafe {
            if self.book.capturing {
                if let Ok(graph) = result::stream::end_capture(self.compute) {
                    if !graph.is_null() {
                        let _ = result::graph::destroy(graph);
                    }
                }
            }
            for stream in [self.compute, self.copy] {
                if !stream.is_null() {
                    let _ = result::stream::synchronize(stream);
                }
            }
            for (_, g) in self.graphs.drain() {
                let _ = result::graph::exec_destroy(g.exec);
                let _ = result::graph::destroy(g.graph);
            }
            for event in self.events.drain(..) {
                let _ = result::event::destroy(event);
            }
            for (_, p) in self.pinned.drain() {
                let _ = result::event::destroy(p.event);
                let _ = result::free_host(p.ptr);
            }
            self.book.drain_pinned();
            for region in self.book.drain_allocs() {
                let _ = result::free_sync(region.base);
            }
            for (_, m) in self.modules.drain() {
                let _ = result::module::unload(m);
            }
            for stream in [self.compute, self.copy] {
                if !stream.is_null() {
                    let _ = result::stream::destroy(stream);
                }
            }
            let _ = result::primary_ctx::release(self.device);
        }
    }
}
