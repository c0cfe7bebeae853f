//! Barriers, thread orders, warp shuffles and votes, cp.async groups, and the misuse the
//! emulator must report.

mod common;

use common::{config, launch, mut_ptr, poisoned_f32, poisoned_u32, ptr, Rng};
use streamdit_kernels::emu::{self, EmuErrorKind, LaunchConfig, ThreadOrder};

#[repr(C)]
#[derive(Clone, Copy)]
struct ReduceParams {
    x: *const f32,
    out: *mut f32,
}

/// Orders every emulator test runs in: forward, reverse, and three shuffles.
fn orders() -> Vec<ThreadOrder> {
    let mut v = ThreadOrder::all(1).to_vec();
    v.extend([ThreadOrder::Shuffle(2), ThreadOrder::Shuffle(3)]);
    v
}

/// Runs a 256-thread-per-block reduction and returns the largest relative error.
fn reduce_error(kernel: &str, order: ThreadOrder, seed: u64) -> f64 {
    let blocks = 6;
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..blocks * 256).map(|_| rng.nonzero(0.5, 1.5)).collect();
    let mut out = poisoned_f32(blocks);
    let params = ReduceParams {
        x: ptr(&x),
        out: mut_ptr(&mut out),
    };
    // SAFETY: x has 256 values per block, out one per block.
    unsafe { launch(kernel, config(blocks as u32, 256, 0), &params, order) }
        .unwrap_or_else(|e| panic!("{e}"));
    (0..blocks)
        .map(|b| {
            let want: f64 = x[b * 256..(b + 1) * 256].iter().map(|&v| v as f64).sum();
            let err = ((out[b] as f64 - want) / want).abs();
            if err.is_nan() {
                f64::INFINITY
            } else {
                err
            }
        })
        .fold(0.0, f64::max)
}

#[test]
fn reduction_with_barriers_is_right_in_every_order() {
    for (i, order) in orders().into_iter().enumerate() {
        let _race = common::race_check_case(i == 0);
        let err = reduce_error("selftest_reduce", order, 100 + i as u64);
        assert!(err < 1e-5, "{order:?}: relative error {err:e}");
    }
}

#[test]
fn reduction_missing_a_barrier_is_wrong_in_some_order() {
    let results: Vec<(ThreadOrder, f64)> = orders()
        .into_iter()
        .enumerate()
        .map(|(i, order)| {
            (
                order,
                reduce_error("selftest_reduce_missing_sync", order, 200 + i as u64),
            )
        })
        .collect();
    eprintln!("missing __syncthreads, relative error per order: {results:?}");
    assert!(
        results.iter().any(|&(_, err)| err > 1e-3),
        "a kernel missing a __syncthreads gave the right sum in every order: {results:?}"
    );
}

/// What the orders find only sometimes, the race checker reports in every order, naming the
/// two unordered accesses; the cp.async read of another thread's copy (mode 3) likewise.
#[test]
fn missing_barriers_are_races_in_every_order() {
    let _check = emu::racecheck(true);
    for order in orders() {
        let x = vec![1.0f32; 256];
        let mut out = poisoned_f32(1);
        let params = ReduceParams {
            x: ptr(&x),
            out: mut_ptr(&mut out),
        };
        // SAFETY: x has 256 values, out one.
        let e = unsafe {
            launch(
                "selftest_reduce_missing_sync",
                config(1, 256, 0),
                &params,
                order,
            )
        }
        .unwrap_err();
        assert_eq!(e.kind, EmuErrorKind::Race, "{order:?}: {e}");
        assert!(e.message.contains("a static __shared__ variable"), "{e}");
        assert!(e.message.contains("kernels/cuda/emu_selftest.cu"), "{e}");
        let mut out = poisoned_f32(64 * 11);
        let src = vec![1.0f32; 64 * 16];
        let params = CpAsyncParams {
            src: ptr(&src),
            out: mut_ptr(&mut out),
            mode: 3,
        };
        // SAFETY: src holds 16 floats per thread, out 11, for 64 threads.
        let e = unsafe {
            launch(
                "selftest_cp_async",
                config(1, 64, CP_SHARED_BYTES),
                &params,
                order,
            )
        }
        .unwrap_err();
        assert_eq!(e.kind, EmuErrorKind::Race, "{order:?}: {e}");
        assert!(e.message.contains("read-after-write"), "{e}");
        assert!(e.message.contains("the cp.async copy of thread"), "{e}");
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TicketParams {
    counter: *mut u32,
    ticket: *mut u32,
}

fn tickets(order: ThreadOrder) -> Vec<u32> {
    let mut counter = [0u32];
    let mut ticket = poisoned_u32(3 * 64);
    let params = TicketParams {
        counter: mut_ptr(&mut counter),
        ticket: mut_ptr(&mut ticket),
    };
    // SAFETY: one counter, one ticket per thread of 3 blocks of 64.
    unsafe { launch("selftest_ticket", config(3, 64, 0), &params, order) }
        .unwrap_or_else(|e| panic!("{e}"));
    ticket
}

#[test]
fn thread_orders_are_the_ones_asked_for() {
    let _race = common::race_check_full();
    let forward = tickets(ThreadOrder::Forward);
    assert_eq!(
        forward,
        (0..192).collect::<Vec<u32>>(),
        "forward: blocks and threads in increasing order"
    );
    let reverse = tickets(ThreadOrder::Reverse);
    assert_eq!(
        reverse,
        (0..192).rev().collect::<Vec<u32>>(),
        "reverse: decreasing order"
    );
    let shuffled = tickets(ThreadOrder::Shuffle(1));
    let mut sorted = shuffled.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, forward, "shuffle: every thread ran once");
    assert!(
        shuffled != forward && shuffled != reverse,
        "shuffle: neither forward nor reverse"
    );
    assert_eq!(
        tickets(ThreadOrder::Shuffle(1)),
        shuffled,
        "shuffle: the seed determines the order"
    );
    assert_ne!(
        tickets(ThreadOrder::Shuffle(2)),
        shuffled,
        "shuffle: another seed, another order"
    );
}

#[repr(C)]
#[derive(Clone, Copy)]
struct WarpOpsParams {
    value: *const u32,
    arg: *const i32,
    out: *mut u32,
}

/// CUDA C++ Programming Guide, "Warp Shuffle Functions": lanes form groups of `width`; a
/// source outside the caller's group (later groups for xor) yields the caller's own value.
fn shfl_model(values: &[u32], lane: usize, kind: &str, arg: i32, width: usize) -> u32 {
    let group = lane / width * width;
    let own = values[lane];
    let src = match kind {
        "idx" => group + (arg as usize % width),
        "up" => {
            let d = arg as usize;
            if lane - group < d {
                return own;
            }
            lane - d
        }
        "down" => {
            let d = arg as usize;
            if lane - group + d >= width {
                return own;
            }
            lane + d
        }
        _ => {
            let s = lane ^ arg as usize;
            if s >= group + width {
                return own;
            }
            s
        }
    };
    values[src]
}

#[test]
fn shuffles_and_votes_follow_cuda_semantics() {
    let _race = common::race_check_full();
    for order in orders() {
        let (blocks, threads) = (2usize, 64usize);
        let n = blocks * threads;
        let mut rng = Rng::new(5);
        let value: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
        let arg: Vec<i32> = (0..n).map(|_| rng.int(0, 40)).collect();
        let mut out = poisoned_u32(n * 12);
        let params = WarpOpsParams {
            value: ptr(&value),
            arg: ptr(&arg),
            out: mut_ptr(&mut out),
        };
        // SAFETY: one value and arg per thread, 12 outputs per thread.
        unsafe {
            launch(
                "selftest_warp_ops",
                config(blocks as u32, threads as u32, 0),
                &params,
                order,
            )
        }
        .unwrap_or_else(|e| panic!("{e}"));
        for w in 0..n / 32 {
            let vals = &value[w * 32..(w + 1) * 32];
            let ballot = (0..32)
                .filter(|&l| vals[l] & 1 == 1)
                .fold(0u32, |m, l| m | 1 << l);
            let any = vals.iter().any(|v| v % 61 == 0) as u32;
            let all = vals.iter().all(|v| v % 61 != 0) as u32;
            for lane in 0..32 {
                let t = w * 32 + lane;
                let a = arg[t];
                let want = [
                    shfl_model(vals, lane, "idx", a, 32),
                    shfl_model(vals, lane, "up", a & 31, 32),
                    shfl_model(vals, lane, "down", a & 31, 32),
                    shfl_model(vals, lane, "xor", a & 31, 32),
                    shfl_model(vals, lane, "idx", a, 8),
                    shfl_model(vals, lane, "up", a & 7, 8),
                    shfl_model(vals, lane, "down", a & 7, 8),
                    shfl_model(vals, lane, "xor", a & 15, 8),
                    ballot,
                    any,
                    all,
                    if lane < 16 {
                        shfl_model(vals, lane, "xor", 1, 32)
                    } else {
                        shfl_model(vals, lane, "down", 2, 16)
                    },
                ];
                assert_eq!(
                    &out[t * 12..t * 12 + 12],
                    &want,
                    "{order:?}: thread {t} (lane {lane}, arg {a})"
                );
            }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CpAsyncParams {
    src: *const f32,
    out: *mut f32,
    mode: i32,
}

const CP_SHARED_BYTES: u32 = 64 * 11 * 4;

fn cp_async(mode: i32, order: ThreadOrder) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(9);
    let src: Vec<f32> = (0..64 * 16).map(|_| rng.nonzero(-1.0, 1.0)).collect();
    let mut out = poisoned_f32(64 * 11);
    let params = CpAsyncParams {
        src: ptr(&src),
        out: mut_ptr(&mut out),
        mode,
    };
    // SAFETY: src holds 16 floats per thread, out 11, for 64 threads.
    unsafe {
        launch(
            "selftest_cp_async",
            config(1, 64, CP_SHARED_BYTES),
            &params,
            order,
        )
    }
    .unwrap_or_else(|e| panic!("{e}"));
    (src, out)
}

/// What thread t must read after both groups completed: the 7 copied floats, then the
/// zero-filled copy of 4 * (t % 5) source bytes.
fn cp_expected(src: &[f32], t: usize) -> Vec<f32> {
    let s = &src[t * 16..t * 16 + 16];
    let mut v = s[..7].to_vec();
    v.extend((0..4).map(|i| if i < t % 5 { s[8 + i] } else { 0.0 }));
    v
}

#[test]
fn cp_async_copies_and_zero_fills_after_wait() {
    for (i, order) in orders().into_iter().enumerate() {
        let _race = common::race_check_case(i == 0);
        let (src, out) = cp_async(0, order);
        for t in 0..64 {
            assert_eq!(
                &out[t * 11..t * 11 + 11],
                &cp_expected(&src, t)[..],
                "{order:?}: thread {t}"
            );
        }
    }
}

#[test]
fn cp_async_without_wait_reads_stale_shared_memory() {
    for order in orders() {
        let (_, out) = cp_async(1, order);
        assert!(
            out.iter().all(|v| v.is_nan()),
            "{order:?}: data arrived without cp.async.wait_group"
        );
    }
}

#[test]
fn cp_async_wait_group_1_retires_only_the_older_group() {
    let (src, out) = cp_async(2, ThreadOrder::Forward);
    for t in 0..64 {
        assert_eq!(
            &out[t * 11..t * 11 + 7],
            &src[t * 16..t * 16 + 7],
            "thread {t}: group 0"
        );
        assert!(
            out[t * 11 + 7..t * 11 + 11].iter().all(|v| v.is_nan()),
            "thread {t}: group 1 is still pending"
        );
    }
}

#[test]
fn cp_async_read_of_another_threads_copy_needs_a_barrier() {
    for order in orders() {
        let (src, out) = cp_async(3, order);
        let wrong = (0..64)
            .filter(|&t| out[t * 11..t * 11 + 11] != cp_expected(&src, (t + 1) % 64)[..])
            .count();
        assert!(wrong > 0, "{order:?}: reading another thread's cp.async data without __syncthreads went unnoticed");
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FaultParams {
    out: *mut f32,
    mode: i32,
}

#[test]
fn misuse_is_reported_as_an_error_in_every_order() {
    let cases = [
        (0, EmuErrorKind::Barrier, "exited"),
        (1, EmuErrorKind::Barrier, "divergent __syncthreads"),
        (2, EmuErrorKind::Warp, "deadlock"),
        (3, EmuErrorKind::Warp, "mma"),
        (4, EmuErrorKind::Address, "16-byte aligned"),
        (5, EmuErrorKind::Address, "aligned"),
        (6, EmuErrorKind::Trap, "__trap"),
    ];
    for order in orders() {
        for (mode, kind, text) in cases {
            let mut out = poisoned_f32(64);
            let params = FaultParams {
                out: mut_ptr(&mut out),
                mode,
            };
            // SAFETY: out holds one float per thread; shared memory covers the accesses.
            let err = unsafe { launch("selftest_fault", config(1, 64, 256), &params, order) }
                .expect_err(&format!("mode {mode} must fail"));
            assert_eq!(err.kind, kind, "mode {mode} {order:?}: {err}");
            assert!(err.message.contains(text), "mode {mode} {order:?}: {err}");
            assert!(err.message.starts_with("selftest_fault: "), "{err}");
        }
        // The thread's emulator state is clean again after a failed launch.
        assert!(reduce_error("selftest_reduce", order, 1) < 1e-5);
    }
}

#[test]
fn invalid_launches_are_rejected() {
    let kernel = emu::kernel("selftest_reduce").expect("registered");
    let mut x = vec![1.0f32; 2048];
    let mut out = poisoned_f32(8);
    let params = ReduceParams {
        x: mut_ptr(&mut x),
        out: mut_ptr(&mut out),
    };
    let bad = [
        LaunchConfig {
            grid: 1.into(),
            block: 1025.into(),
            shared_bytes: 0,
        },
        LaunchConfig {
            grid: 1.into(),
            block: (512, 4).into(),
            shared_bytes: 0,
        },
        LaunchConfig {
            grid: 1.into(),
            block: (1, 1, 65).into(),
            shared_bytes: 0,
        },
        LaunchConfig {
            grid: 0.into(),
            block: 256.into(),
            shared_bytes: 0,
        },
        LaunchConfig {
            grid: 1.into(),
            block: 256.into(),
            shared_bytes: emu::MAX_SHARED_BYTES + 1,
        },
    ];
    for cfg in bad {
        // SAFETY: the launch is rejected before any thread runs.
        let err = unsafe { emu::launch_with(kernel, cfg, &params, ThreadOrder::Forward) }
            .expect_err("invalid");
        assert_eq!(err.kind, EmuErrorKind::InvalidLaunch, "{cfg:?}: {err}");
    }
    // SAFETY: rejected before launch: the Rust struct is smaller than ReduceParams.
    let err = unsafe { emu::launch_with(kernel, config(1, 256, 0), &0u32, ThreadOrder::Forward) }
        .expect_err("size");
    assert_eq!(err.kind, EmuErrorKind::ParamsMismatch, "{err}");
    // SAFETY: rejected before launch: no parameter pointer.
    let err = unsafe { emu::launch(kernel, config(1, 256, 0), &[], ThreadOrder::Forward) }
        .expect_err("none");
    assert_eq!(err.kind, EmuErrorKind::ParamsMismatch, "{err}");
    assert_eq!(
        emu::kernel("no_such_kernel").expect_err("unknown").kind,
        EmuErrorKind::UnknownKernel
    );
    assert!(out.iter().all(|v| v.is_nan()), "a rejected launch ran");
}

#[test]
fn launches_on_different_threads_are_independent() {
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            std::thread::spawn(move || {
                reduce_error("selftest_reduce", ThreadOrder::Shuffle(i), 300 + i)
            })
        })
        .collect();
    for h in handles {
        let err = h.join().expect("no panic");
        assert!(err < 1e-5, "{err:e}");
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct NamedBarrierParams {
    src: *const f32,
    out: *mut f32,
    mode: i32,
}
const TURNS: usize = 3;

/// Runs `selftest_named_barrier` in `mode`: its output, or the emulator's error.
fn named_barrier(mode: i32, order: ThreadOrder) -> Result<(Vec<f32>, Vec<f32>), emu::EmuError> {
    let mut rng = Rng::new(40 + mode as u64);
    let src: Vec<f32> = (0..64).map(|_| rng.nonzero(0.5, 1.5)).collect();
    let mut out = poisoned_f32(64 + 2 * TURNS);
    let params = NamedBarrierParams {
        src: ptr(&src),
        out: mut_ptr(&mut out),
        mode,
    };
    // SAFETY: src holds 64 floats, out 64 + 2 TURNS; the kernel uses static shared memory.
    unsafe { launch("selftest_named_barrier", config(1, 128, 0), &params, order) }?;
    Ok((src, out))
}

/// bar.arrive / bar.sync hand data over and alternate two groups of warps (FlashAttention-3's
/// ping-pong) in every thread order, race-free under the checker: the hand-off copies every
/// value and the turns alternate 0, 1, 0, 1, ...
#[test]
fn named_barriers_hand_over_and_alternate_in_every_order() {
    for check in [false, true] {
        let _race = emu::racecheck(check);
        for order in orders() {
            let (src, out) = named_barrier(0, order).unwrap_or_else(|e| panic!("{order:?}: {e}"));
            assert_eq!(&out[..64], &src[..], "{order:?}: the hand-off");
            let turns: Vec<f32> = (0..2 * TURNS).map(|k| (k % 2) as f32).collect();
            assert_eq!(&out[64..], &turns[..], "{order:?}: the turns");
        }
    }
}

/// Without the hand-off barrier the consumers' copy races with the producers' writes: the
/// checker names both sites in every order.
#[test]
fn a_skipped_named_barrier_wait_is_a_race() {
    let _race = emu::racecheck(true);
    for order in orders() {
        let e = named_barrier(1, order).expect_err("a race");
        assert_eq!(e.kind, EmuErrorKind::Race, "{order:?}: {e}");
        // Which access comes first depends on the order: the write, or the read.
        assert!(
            e.message.contains("read-after-write") || e.message.contains("write-after-read"),
            "{e}"
        );
        assert!(e.message.contains("kernels/cuda/emu_selftest.cu"), "{e}");
    }
}

#[test]
fn named_barrier_misuse_is_reported_in_every_order() {
    let cases = [
        (
            2,
            EmuErrorKind::Barrier,
            "exited with 64 of the phase's 128 threads arrived",
        ),
        (3, EmuErrorKind::Deadlock, "waits at bar.sync"),
        (4, EmuErrorKind::Barrier, "named barriers are 1..15"),
        (5, EmuErrorKind::Barrier, "multiple of the warp size"),
        (6, EmuErrorKind::Barrier, "this phase of the barrier counts"),
        (7, EmuErrorKind::Barrier, "counts whole warps"),
    ];
    for order in orders() {
        for (mode, kind, text) in cases {
            let e = named_barrier(mode, order).expect_err("misuse");
            assert_eq!(e.kind, kind, "mode {mode} {order:?}: {e}");
            assert!(e.message.contains(text), "mode {mode} {order:?}: {e}");
        }
    }
}
