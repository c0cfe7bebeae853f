//! The CUDA backend's device layer: the emulated device runs real kernels eagerly and
//! through graph capture + replay (bit-identical, reading per-step inputs rewritten between
//! replays), refuses out-of-bounds, freed and foreign handles and capture misuse with
//! errors; the real device reports a missing driver as an error, never a panic.

mod common;

use common::Rng;
use streamdit::backend::cuda::device::{
    Device, DeviceBuffer, Dim3, GraphId, LaunchConfig, Queue, ThreadOrder,
};
use streamdit::backend::cuda::emu::{EmuDevice, POISON};
use streamdit::backend::cuda::real::{self, CudaDevice};
use streamdit::Error;

/// Mirrors `AxpbProbeParams` in kernels/cuda/device_probe.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AxpbParams {
    alpha: u64, // (1)
    x: u64,     // (n)
    b: u64,     // (n)
    y: u64,     // (n)
    n: i32,
}

/// Mirrors `TicketParams` in kernels/cuda/emu_selftest.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct TicketParams {
    counter: u64, // (1)
    ticket: u64,  // (blocks * threads)
}

/// Not a multiple of the block size, so the kernel's bounds guard matters.
const N: usize = 1000;
const BLOCK: u32 = 128;
/// Elements after the `N` outputs that the kernel must leave untouched.
const TAIL: usize = 24;

fn config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (n as u32).div_ceil(BLOCK).into(),
        block: BLOCK.into(),
        shared_bytes: 0,
    }
}

fn reference(alpha: f32, x: &[f32], b: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(b)
        .map(|(&x, &b)| alpha.mul_add(x, b))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn poison_f32() -> f32 {
    f32::from_bits(u32::from_ne_bytes([POISON; 4]))
}

fn backend_msg(e: Error) -> (String, String) {
    match e {
        Error::Backend { op, msg, .. } => (op, msg),
        other => panic!("expected a backend error, got {other}"),
    }
}

/// The buffers of the probe: `y` has `TAIL` extra elements that must stay poisoned.
struct Probe {
    alpha: DeviceBuffer<f32>,
    x: DeviceBuffer<f32>,
    b: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
    params: AxpbParams,
}

fn probe<D: Device>(dev: &mut D, rng: &mut Rng) -> Probe {
    let alpha = dev.alloc::<f32>("alpha", 1).unwrap();
    let x = dev.alloc::<f32>("x", N).unwrap();
    let b = dev.alloc::<f32>("b", N).unwrap();
    let y = dev.alloc::<f32>("y", N + TAIL).unwrap();
    dev.write(b, &rng.f32s(N, -2.0, 2.0)).unwrap();
    let params = AxpbParams {
        alpha: alpha.addr(),
        x: x.addr(),
        b: b.addr(),
        y: y.addr(),
        n: N as i32,
    };
    Probe {
        alpha,
        x,
        b,
        y,
        params,
    }
}

/// Reads `y`, checks that its tail is still poison, returns the `N` outputs.
fn read_y<D: Device>(dev: &mut D, p: &Probe) -> Vec<f32> {
    let mut y = vec![0.0f32; N + TAIL];
    dev.read(p.y, &mut y).unwrap();
    assert!(
        y[N..].iter().all(|v| v.to_bits() == poison_f32().to_bits()),
        "the kernel wrote past n"
    );
    y.truncate(N);
    y
}

/// Eager launches and replays of one captured graph, with alpha and x rewritten before
/// every replay: each replay equals the eager launch bit for bit and the CPU reference.
fn replay_matches_eager<D: Device>(dev: &mut D) {
    let mut rng = Rng::new(7);
    let p = probe(dev, &mut rng);
    let mut b = vec![0.0f32; N];
    dev.read(p.b, &mut b).unwrap();
    let k = dev.kernel("device_probe", "device_probe_axpb").unwrap();

    dev.begin_capture().unwrap();
    dev.memset(p.y.slice(0, N).unwrap(), POISON).unwrap();
    // SAFETY: every address in the params is a live allocation of `dev` with n (or 1)
    // elements; the kernel touches y[0..n] only.
    unsafe { dev.launch(k, config(N), &p.params) }.unwrap();
    let graph = dev.end_capture().unwrap();
    dev.upload(graph).unwrap();

    let mut previous: Option<Vec<f32>> = None;
    for step in 0..4 {
        let alpha = rng.uniform(-3.0, 3.0) as f32;
        let x = rng.f32s(N, -1.0, 1.0);
        dev.write(p.alpha, &[alpha]).unwrap();
        dev.write(p.x, &x).unwrap();
        let want = reference(alpha, &x, &b);

        dev.memset(p.y, POISON).unwrap();
        // SAFETY: as above.
        unsafe { dev.launch(k, config(N), &p.params) }.unwrap();
        let eager = read_y(dev, &p);

        dev.memset(p.y, POISON).unwrap();
        dev.replay(graph).unwrap();
        dev.synchronize().unwrap();
        let replayed = read_y(dev, &p);

        assert_eq!(
            bits(&eager),
            bits(&want),
            "step {step}: eager != CPU reference"
        );
        assert_eq!(
            bits(&replayed),
            bits(&eager),
            "step {step}: replay != eager"
        );
        if let Some(prev) = &previous {
            assert_ne!(
                bits(prev),
                bits(&replayed),
                "step {step}: replay returned the previous step's values"
            );
        }
        previous = Some(replayed);
    }
    dev.drop_graph(graph).unwrap();
}

#[test]
fn emulated_replay_matches_eager_and_reads_the_new_inputs() {
    for order in ThreadOrder::all(11) {
        let mut dev = EmuDevice::new();
        dev.set_thread_order(order);
        replay_matches_eager(&mut dev);
    }
}

#[test]
fn emulated_memory_starts_poisoned_and_aligned() {
    let mut dev = EmuDevice::new();
    for len in [1usize, 3, 1000] {
        let buf = dev.alloc::<f32>("fresh", len).unwrap();
        assert_eq!(buf.addr() % 256, 0, "allocation not 256-byte aligned");
        let mut host = vec![0.0f32; len];
        dev.read(buf, &mut host).unwrap();
        assert!(host.iter().all(|v| v.is_nan()), "fresh memory is not NaN");
    }
    let pinned = dev.alloc_pinned::<u32>("fresh pinned", 5).unwrap();
    assert!(dev.pinned(pinned).unwrap().iter().all(|&v| v == u32::MAX));
}

/// The device's thread order reaches the emulator, for eager launches and replays alike:
/// the ticket kernel records the order in which threads ran.
#[test]
fn thread_order_set_on_the_device_applies_to_launches_and_replays() {
    let mut dev = EmuDevice::new();
    let n = 3 * 64;
    let counter = dev.alloc::<u32>("counter", 1).unwrap();
    let ticket = dev.alloc::<u32>("ticket", n).unwrap();
    let k = dev.kernel("emu_selftest", "selftest_ticket").unwrap();
    let params = TicketParams {
        counter: counter.addr(),
        ticket: ticket.addr(),
    };
    let cfg = LaunchConfig {
        grid: 3.into(),
        block: 64.into(),
        shared_bytes: 0,
    };
    let forward: Vec<u32> = (0..n as u32).collect();
    let reverse: Vec<u32> = (0..n as u32).rev().collect();
    let mut out = vec![0u32; n];

    dev.begin_capture().unwrap();
    dev.memset(counter, 0).unwrap();
    dev.memset(ticket, POISON).unwrap();
    // SAFETY: one counter and one ticket per thread of 3 blocks of 64.
    unsafe { dev.launch(k, cfg, &params) }.unwrap();
    let graph = dev.end_capture().unwrap();

    for (order, want) in [
        (ThreadOrder::Forward, &forward),
        (ThreadOrder::Reverse, &reverse),
    ] {
        dev.set_thread_order(order);
        dev.write(counter, &[0]).unwrap();
        dev.memset(ticket, POISON).unwrap();
        // SAFETY: as above.
        unsafe { dev.launch(k, cfg, &params) }.unwrap();
        dev.read(ticket, &mut out).unwrap();
        assert_eq!(&out, want, "eager launch in {order:?}");

        dev.memset(ticket, POISON).unwrap();
        dev.replay(graph).unwrap();
        dev.read(ticket, &mut out).unwrap();
        assert_eq!(&out, want, "replay in {order:?}");
    }
}

#[test]
fn pinned_buffers_and_the_copy_stream_round_trip() {
    let mut dev = EmuDevice::new();
    let mut rng = Rng::new(3);
    let p = probe(&mut dev, &mut rng);
    let mut b = vec![0.0f32; N];
    dev.read(p.b, &mut b).unwrap();
    let k = dev.kernel("device_probe", "device_probe_axpb").unwrap();

    let staged_x = dev.alloc_pinned::<f32>("x staging", N).unwrap();
    let chunk = dev.alloc_pinned::<f32>("clean chunk", N).unwrap();
    let x = rng.f32s(N, -1.0, 1.0);
    dev.pinned(staged_x).unwrap().copy_from_slice(&x);
    dev.write(p.alpha, &[0.5]).unwrap();

    let (uploaded, computed, start) = (
        dev.create_event().unwrap(),
        dev.create_event().unwrap(),
        dev.create_event().unwrap(),
    );
    dev.record(start, Queue::Compute).unwrap();
    dev.write_async(Queue::Copy, p.x, staged_x).unwrap();
    dev.record(uploaded, Queue::Copy).unwrap();
    dev.wait(Queue::Compute, uploaded).unwrap();
    dev.memset(p.y, POISON).unwrap();
    // SAFETY: live buffers of n elements (y has n + TAIL).
    unsafe { dev.launch(k, config(N), &p.params) }.unwrap();
    dev.record(computed, Queue::Compute).unwrap();
    dev.wait(Queue::Copy, computed).unwrap();
    dev.read_async(Queue::Copy, p.y.slice(0, N).unwrap(), chunk)
        .unwrap();
    let got = dev.pinned(chunk).unwrap().to_vec();
    assert_eq!(bits(&got), bits(&reference(0.5, &x, &b)));
    let ms = dev.elapsed_ms(start, computed).unwrap();
    assert!(ms >= 0.0 && ms.is_finite(), "elapsed {ms} ms");

    dev.free_pinned(chunk).unwrap();
    let (op, msg) = backend_msg(dev.pinned(chunk).unwrap_err());
    assert!(
        op.contains("pinned") && msg.contains("was freed"),
        "{op}: {msg}"
    );
}

#[test]
fn out_of_bounds_freed_and_foreign_handles_are_errors() {
    let mut dev = EmuDevice::new();
    let buf = dev.alloc::<f32>("activations", 16).unwrap();

    let (op, msg) = backend_msg(dev.write(buf, &[1.0; 17]).unwrap_err());
    assert!(
        op.contains("write") && msg.contains("17") && msg.contains("16"),
        "{op}: {msg}"
    );
    let mut short = [0.0f32; 15];
    let (op, msg) = backend_msg(dev.read(buf, &mut short).unwrap_err());
    assert!(op.contains("read") && msg.contains("15"), "{op}: {msg}");

    assert!(buf.slice(10, 7).is_err(), "a view past the end");
    assert!(buf.slice(usize::MAX, 2).is_err(), "an overflowing view");
    let tail = buf.slice(12, 4).unwrap();
    dev.write(tail, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut all = [0.0f32; 16];
    dev.read(buf, &mut all).unwrap();
    assert_eq!(&all[12..], &[1.0, 2.0, 3.0, 4.0]);
    assert!(all[..12].iter().all(|v| v.is_nan()));

    assert!(
        buf.slice(1, 4).unwrap().cast::<u64>().is_err(),
        "misaligned cast"
    );
    assert!(
        buf.slice(0, 3).unwrap().cast::<u64>().is_err(),
        "12 bytes as u64"
    );
    assert_eq!(buf.cast::<u8>().unwrap().len(), 64);

    let (op, msg) = backend_msg(
        dev.copy(buf.slice(0, 8).unwrap(), buf.slice(4, 8).unwrap())
            .unwrap_err(),
    );
    assert!(
        op.contains("copy") && msg.contains("overlap"),
        "{op}: {msg}"
    );
    let (_, msg) = backend_msg(
        dev.copy(buf.slice(0, 4).unwrap(), buf.slice(8, 8).unwrap())
            .unwrap_err(),
    );
    assert!(msg.contains("4") && msg.contains("8"), "{msg}");

    let (op, msg) = backend_msg(dev.free(tail).unwrap_err());
    assert!(op == "free" && msg.contains("view"), "{op}: {msg}");

    let mut other = EmuDevice::new();
    let foreign = other.alloc::<f32>("foreign", 16).unwrap();
    let (_, msg) = backend_msg(dev.write(foreign, &[0.0; 16]).unwrap_err());
    assert!(msg.contains("another device"), "{msg}");

    dev.free(buf).unwrap();
    let (_, msg) = backend_msg(dev.write(buf, &[0.0; 16]).unwrap_err());
    assert!(msg.contains("was freed"), "{msg}");
    let (_, msg) = backend_msg(dev.memset(tail, 0).unwrap_err());
    assert!(msg.contains("was freed"), "use of a view after free: {msg}");
    let (_, msg) = backend_msg(dev.free(buf).unwrap_err());
    assert!(msg.contains("was freed"), "double free: {msg}");

    assert!(dev.alloc::<f32>("nothing", 0).is_err(), "zero bytes");
    assert!(
        dev.alloc::<f32>("huge", usize::MAX / 2).is_err(),
        "overflow"
    );
}

#[test]
fn out_of_memory_names_the_allocation() {
    let mut dev = EmuDevice::new().with_memory_limit(1 << 20);
    let a = dev.alloc::<u8>("arena", 768 << 10).unwrap();
    let (op, msg) = backend_msg(dev.alloc::<f32>("weights", 128 << 10).unwrap_err());
    assert_eq!(op, "alloc weights (512.0 KiB)");
    assert!(
        msg.contains("out of memory") && msg.contains("256.0 KiB free of 1.0 MiB"),
        "{msg}"
    );
    dev.free(a).unwrap();
    assert_eq!(dev.memory_used(), 0);
    dev.alloc::<f32>("weights", 128 << 10).unwrap();
}

#[test]
fn kernel_lookup_and_parameter_mismatch_are_errors() {
    let mut dev = EmuDevice::new();
    let (op, msg) = backend_msg(dev.kernel("no_such_module", "k").unwrap_err());
    assert!(
        op.contains("no_such_module") && msg.contains("no module"),
        "{op}: {msg}"
    );
    let (op, _) = backend_msg(dev.kernel("device_probe", "no_such_kernel").unwrap_err());
    assert!(op.contains("no_such_kernel"), "{op}");

    dev.kernel("emu_selftest", "selftest_ticket").unwrap();
    if streamdit_kernels::kernels_built().is_ok() {
        // With PTX, the emulator accepts only the (module, kernel) pairs the GPU will find.
        let (op, msg) = backend_msg(dev.kernel("device_probe", "selftest_ticket").unwrap_err());
        assert!(op.contains("device_probe::selftest_ticket"), "{op}: {msg}");
    }

    let k = dev.kernel("device_probe", "device_probe_axpb").unwrap();
    let y = dev.alloc::<f32>("y", 4).unwrap();
    let wrong = TicketParams {
        counter: y.addr(),
        ticket: y.addr(),
    };
    // SAFETY: refused before any launch: the struct has the wrong size.
    let (op, msg) = backend_msg(unsafe { dev.launch(k, config(4), &wrong) }.unwrap_err());
    assert_eq!(op, "launch device_probe_axpb");
    assert!(msg.contains("16 bytes") && msg.contains("40"), "{msg}");

    let too_big = LaunchConfig {
        grid: 1.into(),
        block: 2048.into(),
        shared_bytes: 0,
    };
    let params = AxpbParams {
        alpha: y.addr(),
        x: y.addr(),
        b: y.addr(),
        y: y.addr(),
        n: 0,
    };
    // SAFETY: refused before any launch: 2048 threads per block.
    let (op, msg) = backend_msg(unsafe { dev.launch(k, too_big, &params) }.unwrap_err());
    assert_eq!(op, "launch device_probe_axpb");
    assert!(msg.contains("1024"), "{msg}");
}

#[test]
fn capture_misuse_is_an_error() {
    let mut dev = EmuDevice::new();
    let mut rng = Rng::new(5);
    let p = probe(&mut dev, &mut rng);
    let k = dev.kernel("device_probe", "device_probe_axpb").unwrap();
    dev.write(p.alpha, &[2.0]).unwrap();
    dev.write(p.x, &vec![1.0; N]).unwrap();

    let (op, msg) = backend_msg(dev.end_capture().unwrap_err());
    assert!(
        op == "end capture" && msg.contains("not capturing"),
        "{op}: {msg}"
    );

    dev.begin_capture().unwrap();
    assert!(dev.begin_capture().is_err(), "nested capture");
    dev.memset(p.y, POISON).unwrap();
    for (what, result) in [
        ("write", dev.write(p.alpha, &[3.0])),
        ("read", dev.read(p.alpha, &mut [0.0])),
        ("alloc", dev.alloc::<f32>("late", 4).map(|_| ())),
        ("free", dev.free(p.b)),
        ("synchronize", dev.synchronize()),
        ("event", dev.create_event().map(|_| ())),
    ] {
        let (op, msg) = backend_msg(result.unwrap_err());
        assert!(msg.contains("while capturing"), "{what}: {op}: {msg}");
    }
    // SAFETY: live buffers of n elements (y has n + TAIL).
    unsafe { dev.launch(k, config(N), &p.params) }.unwrap();
    let (_, msg) = backend_msg(dev.replay(foreign_graph()).unwrap_err());
    assert!(msg.contains("while capturing"), "{msg}");
    let graph = dev.end_capture().unwrap();

    // The refused write did not happen: alpha is still 2, and the capture still works.
    dev.replay(graph).unwrap();
    let y = read_y(&mut dev, &p);
    let mut b = vec![0.0f32; N];
    dev.read(p.b, &mut b).unwrap();
    assert_eq!(bits(&y), bits(&reference(2.0, &vec![1.0; N], &b)));

    // Graphs of another device, dropped graphs, and graphs older than a free.
    let (op, msg) = backend_msg(dev.replay(foreign_graph()).unwrap_err());
    assert!(
        op.starts_with("replay graph") && msg.contains("another device"),
        "{op}: {msg}"
    );
    dev.begin_capture().unwrap();
    let empty = dev.end_capture().unwrap();
    dev.drop_graph(empty).unwrap();
    let (_, msg) = backend_msg(dev.replay(empty).unwrap_err());
    assert!(msg.contains("no graph"), "{msg}");
    assert!(dev.drop_graph(empty).is_err(), "double drop");

    let scratch = dev.alloc::<f32>("scratch", 4).unwrap();
    dev.free(scratch).unwrap();
    let (_, msg) = backend_msg(dev.replay(graph).unwrap_err());
    assert!(msg.contains("capture it again"), "{msg}");
    assert!(dev.upload(graph).is_err(), "upload of a retired graph");
}

/// A graph of another device (an empty capture).
fn foreign_graph() -> GraphId {
    let mut other = EmuDevice::new();
    other.begin_capture().unwrap();
    other.end_capture().unwrap()
}

/// Mirrors `FaultParams` in kernels/cuda/emu_selftest.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct FaultParams {
    out: u64, // (64)
    mode: i32,
}

#[test]
fn invalid_launches_fail_at_capture_and_kernel_faults_at_replay() {
    let mut dev = EmuDevice::new();
    let k = dev.kernel("emu_selftest", "selftest_fault").unwrap();
    let out = dev.alloc::<f32>("out", 64).unwrap();
    // Mode 0: a thread exits while the others wait at __syncthreads.
    let params = FaultParams {
        out: out.addr(),
        mode: 0,
    };
    let block_of = |block: Dim3| LaunchConfig {
        grid: 1.into(),
        block,
        shared_bytes: 0,
    };
    dev.begin_capture().unwrap();
    // SAFETY: refused before recording: block z = 65 is over the limit of 64.
    let refused = unsafe { dev.launch(k, block_of((1, 1, 65).into()), &params) };
    let (op, msg) = backend_msg(refused.unwrap_err());
    assert!(
        op == "launch selftest_fault" && msg.contains("z <= 64"),
        "{op}: {msg}"
    );
    // SAFETY: 64 threads, `out` has 64 elements.
    unsafe { dev.launch(k, block_of(64.into()), &params) }.unwrap();
    let graph = dev.end_capture().unwrap();

    let (op, msg) = backend_msg(dev.replay(graph).unwrap_err());
    assert!(op.starts_with("replay graph"), "{op}");
    assert!(
        msg.starts_with("launch selftest_fault: emulator: Barrier"),
        "{msg}"
    );
    // SAFETY: as above.
    let eager = unsafe { dev.launch(k, block_of(64.into()), &params) };
    let (op, msg) = backend_msg(eager.unwrap_err());
    assert!(
        op == "launch selftest_fault" && msg.starts_with("emulator: Barrier"),
        "{op}: {msg}"
    );
}

/// On a machine without the NVIDIA driver, opening the real device is an error that says
/// so; with a driver and a GPU, the real device passes the same replay check as the
/// emulator.
#[test]
fn real_device_without_a_driver_is_an_error_not_a_panic() {
    match CudaDevice::new(0) {
        Ok(mut dev) => {
            eprintln!("real device: {}", dev.describe());
            replay_matches_eager(&mut dev);
        }
        Err(e) => {
            let text = e.to_string();
            eprintln!("real device unavailable: {text}");
            let (op, msg) = backend_msg(e);
            assert!(text.starts_with("cuda backend: "), "{text}");
            if !real::driver_library_present() {
                assert_eq!(op, "load the CUDA driver");
                assert!(
                    msg.contains("libcuda") && msg.contains("no NVIDIA driver"),
                    "{msg}"
                );
            }
        }
    }
    // A second attempt fails the same way (nothing half-initialised is left behind).
    if let (Err(a), Err(b)) = (CudaDevice::new(0), CudaDevice::new(0)) {
        assert_eq!(a.to_string(), b.to_string());
    }
}

#[test]
fn missing_kernels_propagate_as_kernels_not_built() {
    match streamdit_kernels::BUILD_STATUS {
        streamdit_kernels::BuildStatus::Built { .. } => {
            let image = real::module_image("device_probe").unwrap();
            let text = image.to_str().unwrap();
            assert!(text.contains(".target sm_80") && text.contains("device_probe_axpb"));
        }
        streamdit_kernels::BuildStatus::NotBuilt { reason } => {
            let (op, msg) = backend_msg(real::module_image("device_probe").unwrap_err());
            assert_eq!(op, "load module device_probe");
            assert!(
                msg.starts_with("kernels not built: ") && msg.contains(reason),
                "{msg}"
            );
        }
    }
    if streamdit_kernels::kernels_built().is_ok() {
        let (op, msg) = backend_msg(real::module_image("no_such_module").unwrap_err());
        assert!(
            op.contains("no_such_module") && msg.contains("device_probe"),
            "{msg}"
        );
    }
}
