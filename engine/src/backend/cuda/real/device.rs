//! [`Device`] for [`CudaDevice`]: allocations, copies, launches, events and graphs through
//! the CUDA driver API.

use std::ffi::{c_void, CString};

use bytemuck::Pod;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;

use crate::backend::cuda::device::{
    fmt_bytes, Device, DeviceBuffer, Event, GraphId, Kernel, LaunchConfig, PinnedBuffer, Queue,
};
use crate::backend::cuda::limits::{self, Candidate};
use crate::error::Result;
use streamdit_kernels::tma::{
    DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled,
};

use super::*;

impl CudaDevice {
    /// Loads `module` from the image for this device's compute capability (its cubin, else
    /// the fallback PTX), with the JIT logs in the error when the driver refuses it.
    fn load_module(&mut self, module: &str) -> Result<sys::CUmodule> {
        let op = format!("load module {module}");
        let cc = (self.capability.0 as u32, self.capability.1 as u32);
        let image = streamdit_kernels::image_for(module, cc).map_err(|e| err(&op, e))?;
        let bytes = load::ImageBytes::new(image)
            .map_err(|e| err(&op, format!("{}: {e}", image.describe())))?;
        self.bind(&op)?;
        // SAFETY: the context is current (bound above); `bytes` is an image embedded by
        // streamdit-kernels, in the form the driver reads.
        match unsafe { load::load(&bytes) } {
            Ok(loaded) => {
                if !loaded.info_log.is_empty() {
                    self.jit_notes
                        .push(format!("{module} ({}): {}", image.describe(), loaded.info_log));
                }
                Ok(loaded.module)
            }
            Err(e) => Err(err(
                &op,
                load::failure_message(
                    module,
                    &image,
                    &driver_message(DriverError(e.code)),
                    e.code == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
                    &version_string(self.driver_version),
                    &e.error_log,
                    &e.info_log,
                ),
            )),
        }
    }
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

    fn shared_memory_limit(&self) -> u32 {
        self.shared_optin
    }

    fn compute_capability(&self) -> (u32, u32) {
        (self.capability.0 as u32, self.capability.1 as u32)
    }

    fn multiprocessors(&self) -> Option<u32> {
        self.multiprocessors
    }

    fn encode_tensor_map(&self, map: &Tiled) -> Result<TensorMap> {
        let op = "cuTensorMapEncodeTiled";
        map.validate().map_err(|e| err(op, e.to_string()))?;
        use sys::CUtensorMapDataType as D;
        let data_type = match map.data_type {
            DataType::U8 => D::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            DataType::U16 => D::CU_TENSOR_MAP_DATA_TYPE_UINT16,
            DataType::U32 => D::CU_TENSOR_MAP_DATA_TYPE_UINT32,
            DataType::I32 => D::CU_TENSOR_MAP_DATA_TYPE_INT32,
            DataType::U64 => D::CU_TENSOR_MAP_DATA_TYPE_UINT64,
            DataType::I64 => D::CU_TENSOR_MAP_DATA_TYPE_INT64,
            DataType::F16 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            DataType::F32 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            DataType::F64 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
            DataType::Bf16 => D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            DataType::F32Ftz => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ,
            DataType::Tf32 => D::CU_TENSOR_MAP_DATA_TYPE_TFLOAT32,
            DataType::Tf32Ftz => D::CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ,
        };
        use sys::CUtensorMapInterleave as I;
        let interleave = match map.interleave {
            Interleave::None => I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Interleave::B16 => I::CU_TENSOR_MAP_INTERLEAVE_16B,
            Interleave::B32 => I::CU_TENSOR_MAP_INTERLEAVE_32B,
        };
        use sys::CUtensorMapSwizzle as S;
        let swizzle = match map.swizzle {
            Swizzle::None => S::CU_TENSOR_MAP_SWIZZLE_NONE,
            Swizzle::B32 => S::CU_TENSOR_MAP_SWIZZLE_32B,
            Swizzle::B64 => S::CU_TENSOR_MAP_SWIZZLE_64B,
            Swizzle::B128 => S::CU_TENSOR_MAP_SWIZZLE_128B,
        };
        use sys::CUtensorMapL2promotion as L;
        let l2 = match map.l2_promotion {
            L2Promotion::None => L::CU_TENSOR_MAP_L2_PROMOTION_NONE,
            L2Promotion::B64 => L::CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
            L2Promotion::B128 => L::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            L2Promotion::B256 => L::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        };
        use sys::CUtensorMapFloatOOBfill as F;
        let oob = match map.oob_fill {
            OobFill::Zero => F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            OobFill::NanRequestZeroFma => F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA,
        };
        let mut encoded = sys::CUtensorMap { opaque: [0; 16] };
        // SAFETY: the arrays have `rank` entries (rank - 1 strides), as validate() checked;
        // `encoded` is a writable CUtensorMap; the driver only reads the arguments.
        let r = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut encoded,
                data_type,
                map.rank() as u32,
                map.global_address as *mut c_void,
                map.global_dim.as_ptr(),
                map.global_strides.as_ptr(),
                map.box_dim.as_ptr(),
                map.element_strides.as_ptr(),
                interleave,
                swizzle,
                l2,
                oob,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(err(op, driver_message(DriverError(r))));
        }
        let mut bytes = [0u8; 128];
        for (i, w) in encoded.opaque.iter().enumerate() {
            bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(TensorMap { bytes })
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
                let m = self.load_module(module)?;
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
        // SAFETY: `func` is a live function handle.
        let static_shared = unsafe {
            result::function::get_function_attribute(
                func,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
            )
        }
        .map_err(|e| err(&op, format!("static shared memory: {}", driver_message(e))))?;
        self.kernels.push(KernelRecord {
            module: module.to_string(),
            name: name.to_string(),
            func,
            params_size,
            max_dynamic_shared: DEFAULT_MAX_DYNAMIC_SHARED,
            static_shared: static_shared.max(0) as u32,
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
        // Lowered lists are fitted when resolved; this catches a direct launch that is not.
        let c = Candidate {
            kernel: &record.name,
            dynamic: config.shared_bytes,
            static_bytes: record.static_shared,
        };
        if let Err(msg) = limits::pick("the launch", &[c], self.shared_optin) {
            return Err(err(&op, msg));
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
