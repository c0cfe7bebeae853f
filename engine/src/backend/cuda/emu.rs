//! The emulated device: host memory for device memory, the kernel emulator
//! (`streamdit_kernels::emu`) for launches, and a recorded operation list for graphs.
//!
//! Device addresses are host addresses, so the pointers in a kernel's parameter struct work
//! unchanged in the emulator. Allocations are 256-byte aligned (as `cuMemAlloc`) and
//! filled with 0xff bytes (NaN as f32 and f16, -1 as integers), so a value read before it
//! was written shows. Every operation runs to completion when called: a valid serialisation
//! of the two streams, in which events record host time. Capture records launches (with
//! their parameter struct by value), memsets and copies; replay runs the list again in the
//! device's current thread order.

use std::alloc::{self, Layout};
use std::time::Instant;

use bytemuck::Pod;
use streamdit_kernels::emu::{self, EmuError};
use streamdit_kernels::tma::{TensorMap, Tiled};

use super::device::{
    fmt_bytes, Book, Device, DeviceBuffer, Event, GraphId, Kernel, LaunchConfig, PinnedBuffer,
    Queue, ThreadOrder,
};
use crate::error::Result;

/// The byte every fresh allocation is filled with.
pub const POISON: u8 = 0xff;

/// Alignment of every allocation, as `cuMemAlloc` guarantees.
pub const ALIGN: usize = 256;

/// A host allocation standing in for device or pinned memory.
struct HostMemory {
    ptr: *mut u8,
    layout: Layout,
}

impl HostMemory {
    fn new(bytes: usize) -> Option<Self> {
        let layout = Layout::from_size_align(bytes, ALIGN).ok()?;
        // SAFETY: `bytes` is non-zero (Book::byte_size rejects zero) and the layout valid.
        let ptr = unsafe { alloc::alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` is a fresh allocation of `bytes` bytes.
        unsafe { ptr.write_bytes(POISON, bytes) };
        Some(HostMemory { ptr, layout })
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A kernel launch with its parameter struct captured by value.
type Call = Box<dyn Fn(ThreadOrder) -> Result<(), EmuError> + Send>;

/// One recorded graph operation.
enum Op {
    Launch { kernel: usize, call: Call },
    Memset { addr: u64, bytes: usize, byte: u8 },
    Copy { src: u64, dst: u64, bytes: usize },
}

struct KernelRecord {
    module: String,
    name: String,
    kernel: emu::Kernel,
}

struct Graph {
    ops: Vec<Op>,
    generation: u64,
}

/// The emulated device.
pub struct EmuDevice {
    book: Book,
    order: ThreadOrder,
    memory_limit: usize,
    memory_used: usize,
    /// Shared memory per block, as a GPU's opt-in limit ([`emu::MAX_SHARED_BYTES`] unless
    /// set lower to model a smaller device).
    shared_limit: u32,
    /// The compute capability the lowered lists choose kernels for (8.0 unless set).
    capability: (u32, u32),
    /// The SM count it reports (`with_multiprocessors`; none by default: one CTA per tile).
    multiprocessors: Option<u32>,
    /// Synchronous host-to-device copies (`write`): each is a host round trip on a GPU.
    sync_writes: u64,
    /// Host memory of each allocation and pinned buffer, by id.
    memory: std::collections::HashMap<u64, HostMemory>,
    kernels: Vec<KernelRecord>,
    events: Vec<Option<Instant>>,
    capture: Vec<Op>,
    graphs: std::collections::HashMap<u64, Graph>,
}

// SAFETY: the raw pointers in `memory` are exclusively owned host allocations, touched only
// through `&mut self` (or `&self` reads with no concurrent writer, as `&mut self` methods
// are the only writers); the emulator's own state is thread-local and created fresh by each
// launch on whatever thread calls it.
unsafe impl Send for EmuDevice {}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuDevice {
    /// An emulated device running threads in `Forward` order, with no memory limit.
    pub fn new() -> Self {
        EmuDevice {
            book: Book::new("emu"),
            order: ThreadOrder::Forward,
            memory_limit: usize::MAX,
            memory_used: 0,
            shared_limit: emu::MAX_SHARED_BYTES,
            capability: (8, 0),
            multiprocessors: None,
            sync_writes: 0,
            memory: Default::default(),
            kernels: Vec::new(),
            events: Vec::new(),
            capture: Vec::new(),
            graphs: Default::default(),
        }
    }

    /// Limits device memory (pinned memory is not counted), so out-of-memory paths can be
    /// tested.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Models a device allowing `bytes` of shared memory per block (an sm_86 GPU allows
    /// 99 KiB), at most the emulator's own [`emu::MAX_SHARED_BYTES`]: launches above it fail
    /// and lowered lists pick the variants that fit.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn with_shared_memory_limit(mut self, bytes: u32) -> Self {
        self.shared_limit = bytes.min(emu::MAX_SHARED_BYTES);
        self
    }

    /// Models a device of compute capability `cc` for the choice of kernels: `(9, 0)` makes
    /// the lowered lists run the sm_90a GEMM (TMA, mbarrier, wgmma) in the emulator. The
    /// default is 8.0 (the mma.sync kernels).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn with_compute_capability(mut self, cc: (u32, u32)) -> Self {
        self.capability = cc;
        self
    }

    /// Reports `n` streaming multiprocessors, so persistent kernels launch at most `n` CTAs
    /// (the emulator runs CTAs one after another; a small `n` makes each CTA walk several
    /// output tiles, as on a GPU with more tiles than SMs).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn with_multiprocessors(mut self, n: u32) -> Self {
        self.multiprocessors = Some(n);
        self
    }

    /// How many synchronous host-to-device copies (`write`) were made: a GPU waits for the
    /// compute stream at each, so the streaming step must make none.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn synchronous_writes(&self) -> u64 {
        self.sync_writes
    }

    /// The order in which later launches and replays resume threads and run blocks.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn set_thread_order(&mut self, order: ThreadOrder) {
        self.order = order;
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn thread_order(&self) -> ThreadOrder {
        self.order
    }

    /// Bytes of device memory allocated now.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }

    fn host_alloc(&mut self, op: &str, bytes: usize) -> Result<(u64, u64)> {
        let memory = HostMemory::new(bytes).ok_or_else(|| {
            self.book.err(
                op,
                format!("host allocation of {} failed", fmt_bytes(bytes as u64)),
            )
        })?;
        let id = self.book.next_id();
        let base = memory.ptr as u64;
        self.memory.insert(id, memory);
        Ok((id, base))
    }

    /// What `op` is, for errors during replay.
    fn op_name(&self, op: &Op) -> String {
        match op {
            Op::Launch { kernel, .. } => format!("launch {}", self.kernels[*kernel].name),
            Op::Memset { addr, bytes, .. } => format!("memset {bytes} bytes at {addr:#x}"),
            Op::Copy { bytes, .. } => format!("copy {bytes} bytes device to device"),
        }
    }

    fn run(&self, op: &Op) -> Result<(), String> {
        match op {
            Op::Launch { call, .. } => call(self.order).map_err(|e| e.to_string()),
            Op::Memset { addr, bytes, byte } => {
                // SAFETY: `addr..addr+bytes` was checked against a live allocation when the
                // memset was issued or recorded, and graphs recorded before a free are
                // retired (Book::check_graph), so the range is still allocated.
                unsafe { (*addr as *mut u8).write_bytes(*byte, *bytes) };
                Ok(())
            }
            Op::Copy { src, dst, bytes } => {
                // SAFETY: both ranges were checked live, in range and disjoint when the copy
                // was issued or recorded; retired graphs never replay (as for Memset).
                unsafe {
                    std::ptr::copy_nonoverlapping(*src as *const u8, *dst as *mut u8, *bytes)
                };
                Ok(())
            }
        }
    }

    /// Runs `op` now, or records it while capturing.
    fn issue(&mut self, label: &str, op: Op) -> Result<()> {
        if self.book.capturing {
            self.capture.push(op);
            return Ok(());
        }
        self.run(&op).map_err(|msg| self.book.err(label, msg))
    }

    fn pinned_ptr<T>(&self, op: &str, buf: &PinnedBuffer<T>) -> Result<*mut u8> {
        let region = self.book.check_pinned(op, buf)?;
        Ok(region.base as *mut u8)
    }
}

impl Device for EmuDevice {
    fn backend(&self) -> &'static str {
        "emu"
    }

    fn describe(&self) -> String {
        format!("CUDA emulator on the host, {:?} thread order", self.order)
    }

    fn shared_memory_limit(&self) -> u32 {
        self.shared_limit
    }

    fn compute_capability(&self) -> (u32, u32) {
        self.capability
    }

    fn multiprocessors(&self) -> Option<u32> {
        self.multiprocessors
    }

    fn encode_tensor_map(&self, map: &Tiled) -> Result<TensorMap> {
        map.encode_emulated()
            .map_err(|e| self.book.err("encode tensor map", e.to_string()))
    }

    fn alloc<T: Pod>(&mut self, label: &str, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes_probe = len.saturating_mul(std::mem::size_of::<T>()) as u64;
        let op = format!("alloc {label} ({})", fmt_bytes(bytes_probe));
        self.book.not_capturing(&op)?;
        let bytes = self.book.byte_size::<T>(&op, len)?;
        if bytes > self.memory_limit - self.memory_used {
            return Err(self.book.err(
                &op,
                format!(
                    "out of memory ({} free of {})",
                    fmt_bytes((self.memory_limit - self.memory_used) as u64),
                    fmt_bytes(self.memory_limit as u64)
                ),
            ));
        }
        let (id, base) = self.host_alloc(&op, bytes)?;
        self.memory_used += bytes;
        Ok(self.book.add_alloc(id, base, len, label))
    }

    fn free<T>(&mut self, buf: DeviceBuffer<T>) -> Result<()> {
        let region = self.book.remove_alloc("free", &buf)?;
        self.memory_used -= region.bytes;
        // Dropping the host memory frees it.
        self.memory.remove(&buf.alloc_id());
        Ok(())
    }

    fn memset<T>(&mut self, dst: DeviceBuffer<T>, byte: u8) -> Result<()> {
        let op = format!("memset {dst:?}");
        self.book.check(&op, &dst)?;
        self.issue(
            &op,
            Op::Memset {
                addr: dst.addr(),
                bytes: dst.byte_len(),
                byte,
            },
        )
    }

    fn copy<T>(&mut self, src: DeviceBuffer<T>, dst: DeviceBuffer<T>) -> Result<()> {
        let op = "copy device to device";
        self.book.check_copy(op, &src, &dst)?;
        self.issue(
            op,
            Op::Copy {
                src: src.addr(),
                dst: dst.addr(),
                bytes: src.byte_len(),
            },
        )
    }

    fn write<T: Pod>(&mut self, dst: DeviceBuffer<T>, src: &[T]) -> Result<()> {
        let op = "write host to device";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &dst, src.len())?;
        self.sync_writes += 1;
        // SAFETY: `dst` is checked live and exactly `src.len()` elements long; host memory
        // of a device allocation never aliases a Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr() as *const u8,
                dst.addr() as *mut u8,
                dst.byte_len(),
            )
        };
        Ok(())
    }

    fn read<T: Pod>(&mut self, src: DeviceBuffer<T>, dst: &mut [T]) -> Result<()> {
        let op = "read device to host";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &src, dst.len())?;
        // SAFETY: as in `write`; any bit pattern is a valid `T: Pod`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.addr() as *const u8,
                dst.as_mut_ptr() as *mut u8,
                src.byte_len(),
            )
        };
        Ok(())
    }

    fn alloc_pinned<T: Pod>(&mut self, label: &str, len: usize) -> Result<PinnedBuffer<T>> {
        let op = format!("alloc pinned {label}");
        self.book.not_capturing(&op)?;
        let bytes = self.book.byte_size::<T>(&op, len)?;
        let (id, base) = self.host_alloc(&op, bytes)?;
        Ok(self.book.add_pinned(id, base, len, label))
    }

    fn free_pinned<T>(&mut self, buf: PinnedBuffer<T>) -> Result<()> {
        self.book.remove_pinned("free pinned", &buf)?;
        self.memory.remove(&buf.id());
        Ok(())
    }

    fn pinned<T: Pod>(&mut self, buf: PinnedBuffer<T>) -> Result<&mut [T]> {
        let ptr = self.pinned_ptr("access pinned", &buf)?;
        // SAFETY: the pinned buffer is a live, ALIGN-aligned host allocation of
        // `buf.len()` values of `T` (any bit pattern valid for Pod), owned by this device and
        // borrowed mutably through `&mut self` for the slice's lifetime.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut T, buf.len()) })
    }

    fn write_async<T: Pod>(
        &mut self,
        _stream: Queue,
        dst: DeviceBuffer<T>,
        src: PinnedBuffer<T>,
    ) -> Result<()> {
        let op = "write pinned to device";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &dst, src.len())?;
        let ptr = self.pinned_ptr(op, &src)?;
        // SAFETY: both live and `dst.byte_len()` bytes long; distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(ptr, dst.addr() as *mut u8, dst.byte_len()) };
        Ok(())
    }

    fn read_async<T: Pod>(
        &mut self,
        _stream: Queue,
        src: DeviceBuffer<T>,
        dst: PinnedBuffer<T>,
    ) -> Result<()> {
        let op = "read device to pinned";
        self.book.not_capturing(op)?;
        self.book.check_host_copy(op, &src, dst.len())?;
        let ptr = self.pinned_ptr(op, &dst)?;
        // SAFETY: as in `write_async`.
        unsafe { std::ptr::copy_nonoverlapping(src.addr() as *const u8, ptr, src.byte_len()) };
        Ok(())
    }

    fn kernel(&mut self, module: &str, name: &str) -> Result<Kernel> {
        let op = format!("load kernel {module}::{name}");
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
        if !streamdit_kernels::MODULES.contains(&module) {
            return Err(self
                .book
                .err(&op, format!("no module {module:?} in kernels/cuda")));
        }
        // When nvcc ran, the kernel must be in that module's PTX too, so the names the
        // emulator accepts are the names the real device will find.
        if streamdit_kernels::kernels_built().is_ok()
            && !streamdit_kernels::KERNEL_RESOURCES
                .iter()
                .any(|r| r.module == module && r.kernel == name)
        {
            return Err(self
                .book
                .err(&op, format!("module {module} has no kernel {name}")));
        }
        let kernel = emu::kernel(name).map_err(|e| self.book.err(&op, e.to_string()))?;
        self.kernels.push(KernelRecord {
            module: module.to_string(),
            name: name.to_string(),
            kernel,
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
        let record = &self.kernels[kernel.index];
        let op = format!("launch {}", record.name);
        let k = record.kernel;
        if std::mem::size_of::<P>() != k.params_size()
            || std::mem::align_of::<P>() != k.params_align()
        {
            return Err(self.book.err(
                &op,
                format!(
                    "parameter struct is {} bytes aligned to {}, the kernel's {} aligned to {}",
                    std::mem::size_of::<P>(),
                    std::mem::align_of::<P>(),
                    k.params_size(),
                    k.params_align()
                ),
            ));
        }
        check_config(&config, self.shared_limit).map_err(|msg| self.book.err(&op, msg))?;
        let p = *params;
        let call: Call = Box::new(move |order| {
            // SAFETY: the caller of `Device::launch` guaranteed that `P` mirrors the
            // kernel's parameter struct and that its addresses are valid for the kernel's
            // accesses; replays happen only while no allocation was freed since capture.
            unsafe { emu::launch_with(k, config, &p, order) }
        });
        self.issue(
            &op,
            Op::Launch {
                kernel: kernel.index,
                call,
            },
        )
    }

    fn create_event(&mut self) -> Result<Event> {
        self.book.not_capturing("create event")?;
        self.events.push(None);
        Ok(Event {
            device: self.book.device,
            index: self.events.len() - 1,
        })
    }

    fn record(&mut self, event: Event, _stream: Queue) -> Result<()> {
        self.book.not_capturing("record event")?;
        self.book
            .check_event("record event", &event, self.events.len())?;
        self.events[event.index] = Some(Instant::now());
        Ok(())
    }

    fn wait(&mut self, _stream: Queue, event: Event) -> Result<()> {
        self.book.not_capturing("wait for event")?;
        self.book
            .check_event("wait for event", &event, self.events.len())
    }

    fn elapsed_ms(&mut self, start: Event, end: Event) -> Result<f32> {
        let op = "elapsed time";
        self.book.not_capturing(op)?;
        self.book.check_event(op, &start, self.events.len())?;
        self.book.check_event(op, &end, self.events.len())?;
        match (self.events[start.index], self.events[end.index]) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(a).as_secs_f32() * 1e3),
            _ => Err(self.book.err(op, "an event was never recorded")),
        }
    }

    fn synchronize(&mut self) -> Result<()> {
        self.book.not_capturing("synchronize")
    }

    fn begin_capture(&mut self) -> Result<()> {
        if self.book.capturing {
            return Err(self.book.err("begin capture", "already capturing"));
        }
        self.book.capturing = true;
        self.capture.clear();
        Ok(())
    }

    fn end_capture(&mut self) -> Result<GraphId> {
        if !self.book.capturing {
            return Err(self.book.err("end capture", "not capturing"));
        }
        self.book.capturing = false;
        let graph = self.book.graph_id();
        self.graphs.insert(
            graph.id,
            Graph {
                ops: std::mem::take(&mut self.capture),
                generation: self.book.generation,
            },
        );
        Ok(graph)
    }

    fn upload(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("upload graph {}", graph.id);
        self.book.not_capturing(&op)?;
        let generation = self.graphs.get(&graph.id).map(|g| g.generation);
        self.book.check_graph(&op, &graph, generation)
    }

    fn replay(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("replay graph {}", graph.id);
        self.book.not_capturing(&op)?;
        let generation = self.graphs.get(&graph.id).map(|g| g.generation);
        self.book.check_graph(&op, &graph, generation)?;
        let ops = &self.graphs[&graph.id].ops;
        for o in ops {
            self.run(o)
                .map_err(|msg| self.book.err(&op, format!("{}: {msg}", self.op_name(o))))?;
        }
        Ok(())
    }

    fn drop_graph(&mut self, graph: GraphId) -> Result<()> {
        let op = format!("drop graph {}", graph.id);
        if graph.device != self.book.device || self.graphs.remove(&graph.id).is_none() {
            return Err(self
                .book
                .err(&op, format!("no graph {} on this device", graph.id)));
        }
        Ok(())
    }
}

/// The launch limits the emulator enforces, checked when a launch is issued so that a
/// recorded launch fails at capture, as on a GPU, not at replay.
fn check_config(config: &LaunchConfig, shared_limit: u32) -> Result<(), String> {
    let LaunchConfig {
        grid,
        block,
        shared_bytes,
    } = *config;
    let threads = block.x as u64 * block.y as u64 * block.z as u64;
    let blocks = grid.x as u64 * grid.y as u64 * grid.z as u64;
    if threads == 0 || threads > 1024 || block.z > 64 {
        return Err(format!("block {block:?}: 1..=1024 threads, z <= 64"));
    }
    if blocks == 0 {
        return Err(format!("empty grid {grid:?}"));
    }
    if shared_bytes > shared_limit {
        return Err(format!(
            "{shared_bytes} bytes of dynamic shared memory, at most {shared_limit}"
        ));
    }
    Ok(())
}
