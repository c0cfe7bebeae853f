//! The device interface the CUDA backend is written against, with the bookkeeping both
//! implementations share: typed buffer handles checked against a table of live
//! allocations, and the capture state machine that decides what may happen while a graph
//! is being recorded.
//!
//! The trait is generic, not object-safe: `launch` takes the kernel's own parameter struct
//! and the copies take typed slices, so nothing is erased to bytes at this layer. The run-time
//! choice between the real and the emulated device is made one level up, where
//! `CudaBackend<D: Device>` becomes a `Box<dyn Backend>`.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use bytemuck::Pod;
use streamdit_kernels::tma::{TensorMap, Tiled};

use crate::error::{Error, Result};

#[cfg_attr(not(feature = "internals"), allow(unused_imports))] // Dim3: for the integration tests
pub use streamdit_kernels::emu::{Dim3, LaunchConfig, ThreadOrder};

/// The two queues (CUDA streams) of a device: kernels, memsets, device copies and graphs
/// run on `Compute`; `Copy` carries the asynchronous host copies that overlap the next
/// step. Named `Queue` so that `Stream` means only the video stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Queue {
    Compute,
    Copy,
}

/// A range of device memory holding `len` values of `T`, at device address [`addr`].
///
/// A handle, not an owner: the device keeps every allocation in a table and checks each
/// handle against it, so a freed, foreign or out-of-range handle is an error, not a wild
/// access. Views made with [`slice`](Self::slice) and [`cast`](Self::cast) stay inside
/// their allocation.
///
/// [`addr`]: Self::addr
pub struct DeviceBuffer<T> {
    device: u32,
    alloc: u64,
    addr: u64,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for DeviceBuffer<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeviceBuffer<T> {}

impl<T> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}] @ {:#x} (allocation {})",
            std::any::type_name::<T>(),
            self.len,
            self.addr,
            self.alloc
        )
    }
}

impl<T> DeviceBuffer<T> {
    /// The device address of the first element: what a kernel's parameter struct holds.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The id of the allocation this buffer lies in.
    pub(crate) fn alloc_id(&self) -> u64 {
        self.alloc
    }

    /// Elements `start..start + len` of this buffer.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(DeviceBuffer {
                addr: self.addr + (start * std::mem::size_of::<T>()) as u64,
                len,
                ..*self
            }),
            _ => Err(Error::Invalid(format!(
                "slice {start}..{start}+{len} of a device buffer of {} elements",
                self.len
            ))),
        }
    }

    /// The same bytes seen as values of `U` (an arena carved into typed buffers). The byte
    /// length must divide into `U`s and the address be aligned for `U`.
    pub fn cast<U>(&self) -> Result<DeviceBuffer<U>> {
        let size = std::mem::size_of::<U>();
        let bytes = self.byte_len();
        if size == 0 || bytes % size != 0 || self.addr % std::mem::align_of::<U>() as u64 != 0 {
            return Err(Error::Invalid(format!(
                "cast of {bytes} bytes at {:#x} to {}",
                self.addr,
                std::any::type_name::<U>()
            )));
        }
        Ok(DeviceBuffer {
            device: self.device,
            alloc: self.alloc,
            addr: self.addr,
            len: bytes / size,
            _type: PhantomData,
        })
    }
}

/// Page-locked host memory owned by the device (plain host memory on the emulator), the
/// source or target of asynchronous copies. Accessed through [`Device::pinned`], which
/// waits for the copies still in flight on it.
pub struct PinnedBuffer<T> {
    device: u32,
    id: u64,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for PinnedBuffer<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PinnedBuffer<T> {}

impl<T> fmt::Debug for PinnedBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PinnedBuffer<{}>[{}] (#{})",
            std::any::type_name::<T>(),
            self.len,
            self.id
        )
    }
}

impl<T> PinnedBuffer<T> {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// A kernel looked up by `(module, name)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub(crate) device: u32,
    pub(crate) index: usize,
}

/// An event for timing and for ordering one stream after another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub(crate) device: u32,
    pub(crate) index: usize,
}

/// A graph recorded by [`Device::begin_capture`] / [`Device::end_capture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId {
    pub(crate) device: u32,
    pub(crate) id: u64,
}

/// The device operations the CUDA backend needs, implemented by the real device
/// ([`super::real::CudaDevice`]) and the emulated one ([`super::emu::EmuDevice`]).
///
/// Ordering: everything on one [`Queue`] runs in call order; [`Device::record`] and
/// [`Device::wait`] order one stream after the other. The synchronous host copies
/// ([`write`](Device::write), [`read`](Device::read)) run after all work already queued on
/// `Compute` and return when done.
///
/// Capture: between [`begin_capture`](Device::begin_capture) and
/// [`end_capture`](Device::end_capture), launches, memsets and device-to-device copies on
/// `Compute` are recorded, not run. The graph touches device memory only: host copies,
/// allocation, freeing, events and synchronisation are errors while capturing (CUDA itself
/// forbids synchronous copies during capture). A graph bakes the launch parameters by
/// value, so per-step values must live in device buffers written before each
/// [`replay`](Device::replay). Freeing any allocation retires every graph captured before
/// it (its baked addresses may dangle): replaying one is an error.
pub trait Device: Send {
    /// The backend name used in errors (`cuda`, `emu`).
    fn backend(&self) -> &'static str;
    /// One line about the device: name, architecture, driver or emulation order.
    fn describe(&self) -> String;
    /// The most shared memory (static plus dynamic) one block may use after opting in:
    /// `MAX_SHARED_MEMORY_PER_BLOCK_OPTIN` on a GPU (see [`limits`](super::limits)).
    fn shared_memory_limit(&self) -> u32;
    /// The compute capability the device's kernels are chosen for: on 9.0 the GEMMs run the
    /// sm_90a warp-specialised kernels (`streamdit_kernels::gemm_sm90`), elsewhere the
    /// mma.sync ones.
    fn compute_capability(&self) -> (u32, u32);
    /// The device's streaming multiprocessors, where known: a persistent kernel
    /// (`gemm_sm90`) launches at most one CTA per SM; without it, one CTA per output tile.
    fn multiprocessors(&self) -> Option<u32> {
        None
    }
    /// Encodes a TMA tensor map over this device's memory for a kernel parameter: the
    /// driver's `cuTensorMapEncodeTiled` on a GPU, the emulator's encoding on the emulator;
    /// both after `Tiled::validate`, whose error names the argument at fault.
    fn encode_tensor_map(&self, map: &Tiled) -> Result<TensorMap>;

    /// Allocates `len` values of `T`; the contents are unspecified (poison on the
    /// emulator). `label` names the buffer in errors.
    fn alloc<T: Pod>(&mut self, label: &str, len: usize) -> Result<DeviceBuffer<T>>;
    /// Frees the allocation `buf` belongs to (`buf` must be the whole allocation), after
    /// the work queued on it has finished.
    fn free<T>(&mut self, buf: DeviceBuffer<T>) -> Result<()>;
    /// Sets every byte of `dst` to `byte` on `Compute` (recorded while capturing).
    fn memset<T>(&mut self, dst: DeviceBuffer<T>, byte: u8) -> Result<()>;
    /// Copies `src` to `dst` (same length, not overlapping) on `Compute` (recorded while
    /// capturing).
    fn copy<T>(&mut self, src: DeviceBuffer<T>, dst: DeviceBuffer<T>) -> Result<()>;
    /// Host to device, `src.len() == dst.len()`; returns when the copy is done.
    fn write<T: Pod>(&mut self, dst: DeviceBuffer<T>, src: &[T]) -> Result<()>;
    /// Device to host, `src.len() == dst.len()`; returns when the copy is done.
    fn read<T: Pod>(&mut self, src: DeviceBuffer<T>, dst: &mut [T]) -> Result<()>;

    /// Allocates `len` values of pinned host memory (unspecified contents).
    fn alloc_pinned<T: Pod>(&mut self, label: &str, len: usize) -> Result<PinnedBuffer<T>>;
    fn free_pinned<T>(&mut self, buf: PinnedBuffer<T>) -> Result<()>;
    /// The host view of a pinned buffer, after the asynchronous copies queued on it finished.
    fn pinned<T: Pod>(&mut self, buf: PinnedBuffer<T>) -> Result<&mut [T]>;
    /// Queues `src -> dst` (same length) on `stream`; returns at once.
    fn write_async<T: Pod>(
        &mut self,
        stream: Queue,
        dst: DeviceBuffer<T>,
        src: PinnedBuffer<T>,
    ) -> Result<()>;
    /// Queues `src -> dst` (same length) on `stream`; returns at once.
    fn read_async<T: Pod>(
        &mut self,
        stream: Queue,
        src: DeviceBuffer<T>,
        dst: PinnedBuffer<T>,
    ) -> Result<()>;

    /// Looks up kernel `name` of module `module` (a `kernels/cuda/<module>.cu` stem); the
    /// module is loaded on first use.
    fn kernel(&mut self, module: &str, name: &str) -> Result<Kernel>;
    /// Launches `kernel` on `Compute` with `params` passed by value as its single argument
    /// (recorded while capturing).
    ///
    /// # Safety
    /// As for `cuLaunchKernel`: `P` must be the `#[repr(C)]` mirror of the kernel's
    /// parameter struct (its size is checked, its layout cannot be), and every address in
    /// it must point into live allocations of this device, large enough for the accesses
    /// the kernel makes with this configuration. On the emulator a wrong address is
    /// undefined behaviour of this process.
    unsafe fn launch<P: Copy + Send + 'static>(
        &mut self,
        kernel: Kernel,
        config: LaunchConfig,
        params: &P,
    ) -> Result<()>;

    fn create_event(&mut self) -> Result<Event>;
    /// Records `event` after the work queued so far on `stream`.
    fn record(&mut self, event: Event, stream: Queue) -> Result<()>;
    /// Makes later work on `stream` wait for `event`.
    fn wait(&mut self, stream: Queue, event: Event) -> Result<()>;
    /// Milliseconds between two recorded events, waiting for `end`.
    fn elapsed_ms(&mut self, start: Event, end: Event) -> Result<f32>;
    /// Waits for all work on both streams.
    fn synchronize(&mut self) -> Result<()>;

    /// Starts recording `Compute` into a graph.
    fn begin_capture(&mut self) -> Result<()>;
    /// Ends the recording and makes the graph executable.
    fn end_capture(&mut self) -> Result<GraphId>;
    /// Prepares the graph's device resources ahead of its first replay.
    fn upload(&mut self, graph: GraphId) -> Result<()>;
    /// Runs the graph on `Compute`.
    fn replay(&mut self, graph: GraphId) -> Result<()>;
    /// Destroys the graph.
    fn drop_graph(&mut self, graph: GraphId) -> Result<()>;
}

/// Formats a byte count as `12 B`, `3.5 KiB`, `8.6 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A fresh id per device instance, so a handle from another device is recognised.
pub(crate) fn next_device_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `Error::Backend` of `backend` for operation `op`.
pub(crate) fn backend_error(backend: &str, op: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: backend.to_string(),
        op: op.into(),
        msg: msg.into(),
    }
}

/// One live allocation: where it is and what it is called.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub base: u64,
    pub bytes: usize,
    pub label: String,
}

/// The table of live device allocations and pinned buffers of one device, the graphs it
/// recorded and its capture state: everything both implementations check the same way.
pub(crate) struct Book {
    pub backend: &'static str,
    pub device: u32,
    next_id: u64,
    allocs: HashMap<u64, Region>,
    pinned: HashMap<u64, Region>,
    /// Bumped by every free: graphs captured at an older generation are retired.
    pub generation: u64,
    pub capturing: bool,
}

impl Book {
    pub fn new(backend: &'static str) -> Self {
        Book {
            backend,
            device: next_device_id(),
            next_id: 1,
            allocs: HashMap::new(),
            pinned: HashMap::new(),
            generation: 0,
            capturing: false,
        }
    }

    pub fn err(&self, op: impl Into<String>, msg: impl Into<String>) -> Error {
        backend_error(self.backend, op, msg)
    }

    /// A fresh id for an allocation, pinned buffer or graph.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The byte size of `len` values of `T`; zero and overflowing sizes are errors.
    pub fn byte_size<T>(&self, op: &str, len: usize) -> Result<usize> {
        match len.checked_mul(std::mem::size_of::<T>()) {
            Some(0) => Err(self.err(op, "zero bytes requested")),
            Some(bytes) if bytes <= isize::MAX as usize => Ok(bytes),
            _ => Err(self.err(
                op,
                format!(
                    "{len} values of {} overflow the address space",
                    std::any::type_name::<T>()
                ),
            )),
        }
    }

    /// Fails with "not allowed while capturing a graph" for `op` during capture.
    pub fn not_capturing(&self, op: &str) -> Result<()> {
        if self.capturing {
            return Err(self.err(
                op,
                "not allowed while capturing a graph: a graph records launches, memsets and \
                 device copies on the compute stream only",
            ));
        }
        Ok(())
    }

    pub fn add_alloc<T>(&mut self, id: u64, base: u64, len: usize, label: &str) -> DeviceBuffer<T> {
        let bytes = len * std::mem::size_of::<T>();
        self.allocs.insert(
            id,
            Region {
                base,
                bytes,
                label: label.to_string(),
            },
        );
        DeviceBuffer {
            device: self.device,
            alloc: id,
            addr: base,
            len,
            _type: PhantomData,
        }
    }

    /// The allocation `buf` lies in, checking that it is live, of this device and in range.
    pub fn check<T>(&self, op: &str, buf: &DeviceBuffer<T>) -> Result<&Region> {
        if buf.device != self.device {
            return Err(self.err(op, format!("{buf:?} belongs to another device")));
        }
        let region = self
            .allocs
            .get(&buf.alloc)
            .ok_or_else(|| self.err(op, format!("{buf:?} was freed")))?;
        let end = region.base + region.bytes as u64;
        if buf.addr < region.base || buf.addr + buf.byte_len() as u64 > end {
            return Err(self.err(
                op,
                format!(
                    "{buf:?} lies outside its allocation `{}` ({:#x}, {} bytes)",
                    region.label, region.base, region.bytes
                ),
            ));
        }
        Ok(region)
    }

    /// Removes the allocation `buf` (the whole allocation) from the table and retires the
    /// graphs captured so far.
    pub fn remove_alloc<T>(&mut self, op: &str, buf: &DeviceBuffer<T>) -> Result<Region> {
        self.not_capturing(op)?;
        let region = self.check(op, buf)?;
        if region.base != buf.addr || region.bytes != buf.byte_len() {
            return Err(self.err(
                op,
                format!(
                    "{buf:?} is a view; free the whole allocation `{}`",
                    region.label
                ),
            ));
        }
        self.generation += 1;
        Ok(self.allocs.remove(&buf.alloc).expect("checked above"))
    }

    pub fn add_pinned<T>(
        &mut self,
        id: u64,
        base: u64,
        len: usize,
        label: &str,
    ) -> PinnedBuffer<T> {
        self.pinned.insert(
            id,
            Region {
                base,
                bytes: len * std::mem::size_of::<T>(),
                label: label.to_string(),
            },
        );
        PinnedBuffer {
            device: self.device,
            id,
            len,
            _type: PhantomData,
        }
    }

    pub fn check_pinned<T>(&self, op: &str, buf: &PinnedBuffer<T>) -> Result<&Region> {
        if buf.device != self.device {
            return Err(self.err(op, format!("{buf:?} belongs to another device")));
        }
        self.pinned
            .get(&buf.id)
            .ok_or_else(|| self.err(op, format!("{buf:?} was freed")))
    }

    pub fn remove_pinned<T>(&mut self, op: &str, buf: &PinnedBuffer<T>) -> Result<Region> {
        self.not_capturing(op)?;
        self.check_pinned(op, buf)?;
        Ok(self.pinned.remove(&buf.id).expect("checked above"))
    }

    /// Every live allocation (for teardown).
    pub fn drain_allocs(&mut self) -> Vec<Region> {
        self.allocs.drain().map(|(_, r)| r).collect()
    }
    pub fn drain_pinned(&mut self) -> Vec<(u64, Region)> {
        self.pinned.drain().collect()
    }

    /// Checks that two equally long buffers are live, in range and do not overlap.
    pub fn check_copy<T>(
        &self,
        op: &str,
        src: &DeviceBuffer<T>,
        dst: &DeviceBuffer<T>,
    ) -> Result<()> {
        self.check(op, src)?;
        self.check(op, dst)?;
        if src.len != dst.len {
            return Err(self.err(
                op,
                format!("source has {} elements, destination {}", src.len, dst.len),
            ));
        }
        let bytes = src.byte_len() as u64;
        if src.addr < dst.addr + bytes && dst.addr < src.addr + bytes {
            return Err(self.err(op, format!("{src:?} and {dst:?} overlap")));
        }
        Ok(())
    }

    /// Checks a host-device copy of `host_len` elements against `buf`.
    pub fn check_host_copy<T>(
        &self,
        op: &str,
        buf: &DeviceBuffer<T>,
        host_len: usize,
    ) -> Result<()> {
        self.check(op, buf)?;
        if buf.len != host_len {
            return Err(self.err(
                op,
                format!(
                    "host side has {host_len} elements, device buffer {}",
                    buf.len
                ),
            ));
        }
        Ok(())
    }

    pub fn check_kernel(&self, op: &str, kernel: &Kernel, count: usize) -> Result<()> {
        if kernel.device != self.device || kernel.index >= count {
            return Err(self.err(op, format!("{kernel:?} is not a kernel of this device")));
        }
        Ok(())
    }

    pub fn check_event(&self, op: &str, event: &Event, count: usize) -> Result<()> {
        if event.device != self.device || event.index >= count {
            return Err(self.err(op, format!("{event:?} is not an event of this device")));
        }
        Ok(())
    }

    pub fn graph_id(&mut self) -> GraphId {
        GraphId {
            device: self.device,
            id: self.next_id(),
        }
    }

    /// Checks that `graph` is of this device and was captured at `captured_at`, i.e. no
    /// allocation was freed since.
    pub fn check_graph(&self, op: &str, graph: &GraphId, captured_at: Option<u64>) -> Result<()> {
        match captured_at {
            _ if graph.device != self.device => {
                Err(self.err(op, format!("{graph:?} belongs to another device")))
            }
            None => Err(self.err(op, format!("no graph {} on this device", graph.id))),
            Some(generation) if generation != self.generation => Err(self.err(
                op,
                format!(
                    "graph {} was captured before an allocation was freed; its addresses may \
                     dangle: capture it again",
                    graph.id
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}
