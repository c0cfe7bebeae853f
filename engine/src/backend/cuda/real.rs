//! The real device: the CUDA driver API through cudarc's checked `result` layer (and `sys`
//! where `result` has no wrapper), with libcuda loaded at run time.
//!
//! Opening a device checks, in order, each step that can be missing on a machine, and
//! returns an error naming it: the driver library (probed before any driver call, because
//! cudarc panics on first use when libcuda cannot be loaded), `cuInit` (no device, or a stub
//! library), the driver version (at least [`MIN_DRIVER_VERSION`], so that every driver
//! symbol cudarc may resolve exists: cudarc panics on a missing symbol too), the ordinal, the
//! architecture (sm_80 or newer, the PTX target), then the primary context and two
//! non-blocking streams. Modules are loaded from the embedded PTX on the first lookup of
//! one of their kernels.
//!
//! Every driver call runs with the device's context made current on the calling thread,
//! so the device may move between threads.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};

use bytemuck::Pod;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;

use super::device::{
    backend_error, fmt_bytes, Book, Device, DeviceBuffer, Event, GraphId, Kernel, LaunchConfig,
    PinnedBuffer, Queue,
};
use crate::error::{Error, Result};

/// The oldest driver accepted: CUDA 13.0. cudarc is built with its `cuda-13000` bindings,
/// which resolve symbols such as `cuEventElapsedTime_v2` that older drivers lack (cudarc
/// panics on a missing symbol, so the version is checked first). The embedded PTX may need
/// a newer driver still: PTX from nvcc 13.5 is ISA 9.5, and a driver that cannot JIT it
/// fails at module load with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`, reported with both
/// versions.
pub const MIN_DRIVER_VERSION: i32 = 13000;

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

/// The PTX of `module` as the NUL-terminated image `cuModuleLoadData` takes, or why there
/// is none: "kernels not built: <reason>" when nvcc did not run, or an unknown module.
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

/// The `.version` of a PTX text (the PTX ISA version the driver must support).
fn ptx_isa_version(ptx: &CStr) -> Option<String> {
    let text = ptx.to_str().ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(".version"))?;
    line.split_whitespace().nth(1).map(str::to_string)
}

struct KernelRecord {
    module: String,
    name: String,
    func: sys::CUfunction,
    /// Size of the kernel's single parameter, from `cuFuncGetParamInfo`.
    params_size: usize,
    /// The dynamic shared memory this kernel has been opted in to.
    max_dynamic_shared: u32,
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
    driver_version: i32,
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
            driver_version,
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

impl Device for CudaDevice {
    fn backend(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!(
            "{} (device {}, sm_{}{}), driver CUDA {}",
            self.name,
            self.ordinal,
            self.capability.0,
            self.capability.1,
            version_string(self.driver_version)
        )
    }

    fn alloc<T: Pod>(&mut self, label: &str, len: usize) -> Result<DeviceBuffer<T>> {
        let requested = len.saturating_mul(std::mem::size_of::<T>()) as u64;
        let op = format!("alloc {label} ({})", fmt_bytes(requested));
        self.book.not_capturing(&op)?;
        let bytes = self.book.byte_size::<T>(&op, len)?;
        self.bind(&op)?;
        // SAFETY: a plain allocation; its contents are never read as `T` before written
        // (any bit pattern is a valid Pod anyway).
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            let mut msg = driver_message(e);
            if let Ok((free, total)) = result::mem_get_info() {
                msg += &format!(
                    " ({} free of {})",
                    fmt_bytes(free as u64),
                    fmt_bytes(total as u64)
                );
            }
            err(&op, msg)
        })?;
        let id = self.book.next_id();
        Ok(self.book.add_alloc(id, ptr, len, label))
    }

    fn free<T>(&mut self, buf: DeviceBuffer<T>) -> Result<()> {
        let op = "free";
        self.book.not_capturing(op)?;
        self.bind(op)?;
        // Finish the work that may still use the memory before releasing it.
        self.sync_stream(op, self.compute)?;
        self.sync_stream(op, self.copy)?;
        let region = self.book.remove_alloc(op, &buf)?;
        // SAFETY: `region.base` came from cuMemAlloc and is freed once (removed from the
        // table above); no queued work uses it (both streams synchronised).
        unsafe { result::free_sync(region.base) }
            .map_err(|e| err(format!("free {}", region.label), driver_message(e)))
    }

    fn memset<T>(&mut self, dst: DeviceBuffer<T>, byte: u8) -> Result<()> {
        let op = format!("memset {dst:?}");
        self.book.check(&op, &dst)?;
        self.bind(&op)?;
        // SAFETY: `dst` lies in a live allocation (checked); stream-ordered on `compute`.
        unsafe { result::memset_d8_async(dst.addr(), byte, dst.byte_len(), self.compute) }
            .map_err(|e| err(&op, driver_message(e)))
    }

    fn copy<T>(&mut self, src: DeviceBuffer<T>, dst: DeviceBuffer<T>) -> Result<()> {
        let op = "copy device to device";
        self.book.check_copy(op, &src, &dst)?;
        self.bind(op)?;
        // SAFETY: both ranges live, equally long and disjoint (checked).
        unsafe { result::memcpy_dtod_async(dst.addr(), src.addr(), src.byte_len(), self.compute) }
            .map_err(|e| err(op, driver_message(e)))
    }

    fn write<T: Pod>(&mut self, dst: DeviceBuffer<T>, src: &[T]) -> Result<()> {
        let op = "write host to device";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &dst, src.len())?;
        self.bind(op)?;
        // SAFETY: `dst` is live and exactly `src.len()` elements; `src` stays borrowed until
        // the stream is synchronised below.
        unsafe { result::memcpy_htod_async(dst.addr(), src, self.compute) }
            .map_err(|e| err(op, driver_message(e)))?;
        self.sync_stream(op, self.compute)
    }

    fn read<T: Pod>(&mut self, src: DeviceBuffer<T>, dst: &mut [T]) -> Result<()> {
        let op = "read device to host";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &src, dst.len())?;
        self.bind(op)?;
        // SAFETY: as in `write`; the bytes written into `dst` are valid for `T: Pod`.
        unsafe { result::memcpy_dtoh_async(dst, src.addr(), self.compute) }
            .map_err(|e| err(op, driver_message(e)))?;
        self.sync_stream(op, self.compute)
    }

    fn alloc_pinned<T: Pod>(&mut self, label: &str, len: usize) -> Result<PinnedBuffer<T>> {
        let op = format!("alloc pinned {label}");
        self.book.not_capturing(&op)?;
        let bytes = self.book.byte_size::<T>(&op, len)?;
        self.bind(&op)?;
        // SAFETY: page-locked host allocation of `bytes`; freed once in free_pinned or Drop.
        let ptr =
            unsafe { result::malloc_host(bytes, 0) }.map_err(|e| err(&op, driver_message(e)))?;
        let event = match result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(event) => event,
            Err(e) => {
                // SAFETY: `ptr` came from cuMemHostAlloc just above and is not kept.
                let _ = unsafe { result::free_host(ptr) };
                return Err(err(&op, driver_message(e)));
            }
        };
        let id = self.book.next_id();
        self.pinned.insert(
            id,
            PinnedRecord {
                ptr,
                event,
                pending: false,
            },
        );
        Ok(self.book.add_pinned(id, ptr as u64, len, label))
    }

    fn free_pinned<T>(&mut self, buf: PinnedBuffer<T>) -> Result<()> {
        let op = "free pinned";
        self.book.remove_pinned(op, &buf)?;
        self.bind(op)?;
        let record = self.pinned.remove(&buf.id()).expect("in the book, so here");
        // SAFETY: the event and the pointer belong to this record and are released once;
        // the event is synchronised first so no copy still uses the memory.
        unsafe {
            if record.pending {
                result::event::synchronize(record.event).map_err(|e| err(op, driver_message(e)))?;
            }
            result::event::destroy(record.event).map_err(|e| err(op, driver_message(e)))?;
            result::free_host(record.ptr).map_err(|e| err(op, driver_message(e)))
        }
    }

    fn pinned<T: Pod>(&mut self, buf: PinnedBuffer<T>) -> Result<&mut [T]> {
        let op = "access pinned";
        self.book.check_pinned(op, &buf)?;
        self.bind(op)?;
        let record = self
            .pinned
            .get_mut(&buf.id())
            .expect("in the book, so here");
        if record.pending {
            // SAFETY: live event of this context.
            unsafe { result::event::synchronize(record.event) }
                .map_err(|e| err(op, driver_message(e)))?;
            record.pending = false;
        }
        // SAFETY: a live page-locked allocation of `buf.len()` values of `T` (page-aligned,
        // any bit pattern valid for Pod); no copy is in flight on it (synchronised above) and
        // none can be queued while the slice borrows `self` mutably.
        Ok(unsafe { std::slice::from_raw_parts_mut(record.ptr as *mut T, buf.len()) })
    }

    fn write_async<T: Pod>(
        &mut self,
        stream: Queue,
        dst: DeviceBuffer<T>,
        src: PinnedBuffer<T>,
    ) -> Result<()> {
        let op = "write pinned to device";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &dst, src.len())?;
        self.book.check_pinned(op, &src)?;
        self.bind(op)?;
        let s = self.stream(stream);
        let ptr = self.pinned_for_async(op, src.id(), s)?;
        // SAFETY: `dst` live and as long as `src` (checked); the pinned memory stays
        // allocated until its event, recorded below, has completed (free_pinned and
        // `pinned` synchronise it).
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst.addr(), ptr, dst.byte_len(), s) }
            .result()
            .map_err(|e| err(op, driver_message(e)))?;
        self.pinned_queued(op, src.id(), s)
    }

    fn read_async<T: Pod>(
        &mut self,
        stream: Queue,
        src: DeviceBuffer<T>,
        dst: PinnedBuffer<T>,
    ) -> Result<()> {
        let op = "read device to pinned";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &src, dst.len())?;
        self.book.check_pinned(op, &dst)?;
        self.bind(op)?;
        let s = self.stream(stream);
        let ptr = self.pinned_for_async(op, dst.id(), s)?;
        // SAFETY: as in `write_async`; the host sees the bytes only through `pinned`, after
        // the event recorded below.
        unsafe { sys::cuMemcpyDtoHAsync_v2(ptr, src.addr(), src.byte_len(), s) }
            .result()
            .map_err(|e| err(op, driver_message(e)))?;
        self.pinned_queued(op, dst.id(), s)
    }

    fn kernel(&mut self, module: &str, name: &str) -> Result<Kernel> {
        if let Some(index) = self
            .kernels
            .iter()
            .position(|k| k.module == module && k.name == name)
        {
            return Ok(Kernel {
                device: self.book.device,
                index,
            });
        }
        let op = format!("load kernel {module}::{name}");
        self.bind(&op)?;
        let cu_module = match self.modules.get(module) {
            Some(&m) => m,
            None => {
                let image = module_image(module)?;
                // SAFETY: `image` is NUL-terminated PTX text, read during the call only.
                let m = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                    .map_err(|e| {
                        let mut msg = driver_message(e);
                        if e.0 == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                            msg += &format!(
                                " (the PTX is ISA {}, the driver supports CUDA {}: update the \
                                 driver)",
                                ptx_isa_version(&image).unwrap_or_else(|| "?".into()),
                                version_string(self.driver_version)
                            );
                        }
                        err(format!("load module {module}"), msg)
                    })?;
                self.modules.insert(module.to_string(), m);
                m
            }
        };
        let cname = CString::new(name).map_err(|_| err(&op, "the name contains a NUL byte"))?;
        // SAFETY: `cu_module` is loaded and not unloaded before Drop.
        let func = unsafe { result::module::get_function(cu_module, cname) }
            .map_err(|e| err(&op, driver_message(e)))?;
        let (mut offset, mut params_size) = (0usize, 0usize);
        // SAFETY: `func` is a live function handle; the driver writes two usizes.
        unsafe { sys::cuFuncGetParamInfo(func, 0, &mut offset, &mut params_size) }
            .result()
            .map_err(|e| err(&op, format!("parameter 0: {}", driver_message(e))))?;
        // The convention: exactly one parameter, the struct. Asking for a second one must
        // fail with CUDA_ERROR_INVALID_VALUE.
        let (mut offset1, mut size1) = (0usize, 0usize);
        // SAFETY: as above.
        if unsafe { sys::cuFuncGetParamInfo(func, 1, &mut offset1, &mut size1) }
            .result()
            .is_ok()
        {
            return Err(err(
                &op,
                "the kernel takes more than one parameter; kernels take one parameter struct",
            ));
        }
        self.kernels.push(KernelRecord {
            module: module.to_string(),
            name: name.to_string(),
            func,
            params_size,
            max_dynamic_shared: DEFAULT_MAX_DYNAMIC_SHARED,
        });
        Ok(Kernel {
            device: self.book.device,
            index: self.kernels.len() - 1,
        })
    }

    unsafe fn launch<P: Copy + Send + 'static>(
        &mut self,
        kernel: Kernel,
        config: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        self.book
            .check_kernel("launch", &kernel, self.kernels.len())?;
        let op = format!("launch {}", self.kernels[kernel.index].name);
        let record = &self.kernels[kernel.index];
        if std::mem::size_of::<P>() != record.params_size {
            return Err(err(
                &op,
                format!(
                    "parameter struct is {} bytes, the kernel's {}",
                    std::mem::size_of::<P>(),
                    record.params_size
                ),
            ));
        }
        self.bind(&op)?;
        let func = record.func;
        if config.shared_bytes > record.max_dynamic_shared {
            // SAFETY: live function handle. Not a stream operation, so allowed during capture.
            unsafe {
                result::function::set_function_attribute(
                    func,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    config.shared_bytes as i32,
                )
            }
            .map_err(|e| {
                err(
                    &op,
                    format!(
                        "{} bytes of dynamic shared memory: {}",
                        config.shared_bytes,
                        driver_message(e)
                    ),
                )
            })?;
            self.kernels[kernel.index].max_dynamic_shared = config.shared_bytes;
        }
        let mut p = *params;
        let mut args = [&mut p as *mut P as *mut c_void];
        let (g, b) = (config.grid, config.block);
        // SAFETY: `func` is live; `args[0]` points to a `P` of the kernel's parameter size,
        // which cuLaunchKernel copies before returning (so `p` may then go out of scope);
        // the addresses inside are the caller's contract (see `Device::launch`).
        unsafe {
            result::launch_kernel(
                func,
                (g.x, g.y, g.z),
                (b.x, b.y, b.z),
                config.shared_bytes,
                self.compute,
                &mut args,
            )
        }
        .map_err(|e| err(&op, driver_message(e)))
    }

    fn create_event(&mut self) -> Result<Event> {
        let op = "create event";
        self.book.not_capturing(op)?;
        self.bind(op)?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|e| err(op, driver_message(e)))?;
        self.events.push(event);
        Ok(Event {
            device: self.book.device,
            index: self.events.len() - 1,
        })
    }

    fn record(&mut self, event: Event, stream: Queue) -> Result<()> {
        let op = "record event";
        self.book.not_capturing(op)?;
        self.book.check_event(op, &event, self.events.len())?;
        self.bind(op)?;
        // SAFETY: live event and stream of this context.
        unsafe { result::event::record(self.events[event.index], self.stream(stream)) }
            .map_err(|e| err(op, driver_message(e)))
    }

    fn wait(&mut self, stream: Queue, event: Event) -> Result<()> {
        let op = "wait for event";
        self.book.not_capturing(op)?;
        self.book.check_event(op, &event, self.events.len())?;
        self.bind(op)?;
        // SAFETY: live event and stream of this context.
        unsafe {
            result::stream::wait_event(
                self.stream(stream),
                self.events[event.index],
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| err(op, driver_message(e)))
    }

    fn elapsed_ms(&mut self, start: Event, end: Event) -> Result<f32> {
        let op = "elapsed time";
        self.book.not_capturing(op)?;
        self.book.check_event(op, &start, self.events.len())?;
        self.book.check_event(op, &end, self.events.len())?;
        self.bind(op)?;
        let (a, b) = (self.events[start.index], self.events[end.index]);
        // SAFETY: live timing events of this context.
        unsafe { result::event::synchronize(b).and_then(|()| result::event::elapsed(a, b)) }
            .map_err(|e| err(op, driver_message(e)))
    }

    fn synchronize(&mut self) -> Result<()> {
        let op = "synchronize";
        self.book.not_capturing(op)?;
        self.bind(op)?;
        self.sync_stream(op, self.compute)?;
        self.sync_stream(op, self.copy)
    }

    fn begin_capture(&mut self) -> Result<()> {
        let op = "begin capture";
        if self.book.capturing {
            return Err(err(op, "already capturing"));
        }
        self.bind(op)?;
        // Thread-local mode: calls unsafe during capture are refused on this thread only, so
        // other engines in the process keep working.
        // SAFETY: live stream of this context.
        unsafe {
            result::stream::begin_capture(
                self.compute,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(|e| err(op, driver_message(e)))?;
        self.book.capturing = true;
        Ok(())
    }

    fn end_capture(&mut self) -> Result<GraphId> {
        let op = "end capture";
        if !self.book.capturing {
            return Err(err(op, "not capturing"));
        }
        self.bind(op)?;
        self.book.capturing = false;
        // SAFETY: the compute stream is capturing (begun above, not ended since).
        let graph = unsafe { result::stream::end_capture(self.compute) }
            .map_err(|e| err(op, driver_message(e)))?;
        // SAFETY: `graph` is the graph just captured; destroyed if instantiation fails.
        let exec =
            match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
                Ok(exec) => exec,
                Err(e) => {
                    // SAFETY: `graph` is live and not used after this.
                    let _ = unsafe { result::graph::destroy(graph) };
                    return Err(err("instantiate graph", driver_message(e)));
                }
            };
        let id = self.book.graph_id();
        self.graphs.insert(
            id.id,
            GraphRecord {
                graph,
                exec,
                generation: self.book.generation,
            },
        );
        Ok(id)
    }

    fn upload(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("upload graph {}", graph.id);
        self.book.not_capturing(&op)?;
        let record = self.graphs.get(&graph.id);
        self.book
            .check_graph(&op, &graph, record.map(|r| r.generation))?;
        let exec = record.expect("checked").exec;
        self.bind(&op)?;
        // SAFETY: live executable graph and stream of this context.
        unsafe { result::graph::upload(exec, self.compute) }
            .map_err(|e| err(&op, driver_message(e)))
    }

    fn replay(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("replay graph {}", graph.id);
        self.book.not_capturing(&op)?;
        let record = self.graphs.get(&graph.id);
        self.book
            .check_graph(&op, &graph, record.map(|r| r.generation))?;
        let exec = record.expect("checked").exec;
        self.bind(&op)?;
        // SAFETY: live executable graph; no allocation was freed since its capture
        // (check_graph), so its baked addresses are live.
        unsafe { result::graph::launch(exec, self.compute) }
            .map_err(|e| err(&op, driver_message(e)))
    }

    fn drop_graph(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("drop graph {}", graph.id);
        self.book.not_capturing(&op)?;
        if graph.device != self.book.device {
            return Err(err(&op, "the graph belongs to another device"));
        }
        let record = self
            .graphs
            .remove(&graph.id)
            .ok_or_else(|| err(&op, format!("no graph {} on this device", graph.id)))?;
        self.bind(&op)?;
        self.sync_stream(&op, self.compute)?;
        // SAFETY: the graph and its executable are removed from the table, so destroyed
        // once; the compute stream, the only one that launches graphs, is idle.
        unsafe {
            result::graph::exec_destroy(record.exec).map_err(|e| err(&op, driver_message(e)))?;
            result::graph::destroy(record.graph).map_err(|e| err(&op, driver_message(e)))
        }
    }
}

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
