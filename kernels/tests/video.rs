//! The Wan-family decoders' layout and pointwise kernels (`kernels/cuda/video.cu`) in the
//! emulator against the CPU references of `kernels/src/video.rs`: the two layout kernels bit
//! for bit (they copy bit patterns), the map within f16 rounding of an f64 reference.
//! Random f16 inputs (never zeros), outputs poisoned so an unwritten element fails, every
//! case in forward, reverse and shuffled thread order, ragged sizes, a one-CTA grid smaller
//! than the work (the grid-stride loop), the stream start (no past frame) and the in-place
//! map. The first case of each kernel runs under the race checker (every case with
//! `STREAMDIT_FULL=1`). Plus the shape contract and, where nvcc built them, the resource
//! gates.

mod common;

use common::Rng;
use half::f16;
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};
use streamdit_kernels::video::{
    self as v, VideoMapParams, VideoShuffleParams, VideoWithPastParams,
};
use streamdit_kernels::KERNEL_RESOURCES;

const POISON_F16: u16 = 0x7fff;

/// # Safety
/// `params` mirrors the kernel's parameter struct; its pointers cover the kernel's accesses.
unsafe fn run<P: Copy>(name: &str, config: LaunchConfig, params: &P, order: ThreadOrder) {
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
        .unwrap_or_else(|e| panic!("{name} {order:?}: {e}"));
}

fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid: 1.into(),
        block: v::THREADS.into(),
        shared_bytes: 0,
    }
}

/// `n` random f16 values in [-3, 3), none near zero.
fn random_f16(rng: &mut Rng, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-3.0, 3.0)).to_bits())
        .collect()
}

fn assert_bits(what: &str, got: &[u16], want: &[u16]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<(usize, u16, u16)> = (0..got.len())
        .filter(|&i| got[i] != want[i])
        .take(5)
        .map(|i| (i, got[i], want[i]))
        .collect();
    assert!(bad.is_empty(), "{what}: (index, got, want): {bad:?}");
}

#[test]
fn with_past_matches_the_reference() {
    // (frames, pixels, c, with a past frame, one CTA)
    let cases = [
        (2, 5, 8, true, false),
        (1, 7, 16, false, false),
        (3, 33, 24, true, true),
        (4, 64, 64, false, true),
    ];
    let mut rng = Rng::new(17);
    for (i, &(frames, pixels, c, with_past, small)) in cases.iter().enumerate() {
        let _race = common::race_check_case(i == 0);
        let x = random_f16(&mut rng, frames * pixels * c);
        let past = random_f16(&mut rng, pixels * c);
        let past = with_past.then_some(past);
        let want = v::with_past_reference(&x, past.as_deref(), frames, pixels, c);
        let config = if small {
            one_block()
        } else {
            v::with_past_config(frames, pixels, c).unwrap()
        };
        for order in ThreadOrder::all(i as u64) {
            let mut out = vec![POISON_F16; want.len()];
            let params = VideoWithPastParams {
                x: x.as_ptr(),
                past: past.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                pixels: pixels as i32,
                c: c as i32,
            };
            // SAFETY: x, past and out hold the sizes the params name.
            unsafe { run(v::KERNEL_WITH_PAST, config, &params, order) };
            assert_bits(&format!("with_past case {i} {order:?}"), &out, &want);
        }
    }
}

#[test]
fn shuffle_matches_the_reference() {
    // (frames, pixels, c, stride, one CTA)
    let cases = [
        (2, 5, 8, 2, false),
        (1, 9, 16, 1, false),
        (3, 31, 8, 2, true),
        (2, 40, 32, 4, true),
    ];
    let mut rng = Rng::new(23);
    for (i, &(frames, pixels, c, stride, small)) in cases.iter().enumerate() {
        let _race = common::race_check_case(i == 0);
        let y = random_f16(&mut rng, frames * pixels * stride * c);
        let want = v::shuffle_reference(&y, frames, pixels, c, stride);
        let config = if small {
            one_block()
        } else {
            v::shuffle_config(frames, pixels, c, stride).unwrap()
        };
        for order in ThreadOrder::all(i as u64 + 5) {
            let mut out = vec![POISON_F16; want.len()];
            let params = VideoShuffleParams {
                y: y.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                pixels: pixels as i32,
                c: c as i32,
                stride: stride as i32,
            };
            // SAFETY: y and out hold frames * pixels * stride * c elements.
            unsafe { run(v::KERNEL_SHUFFLE, config, &params, order) };
            assert_bits(&format!("shuffle case {i} {order:?}"), &out, &want);
        }
    }
}

#[test]
fn map_matches_the_reference_within_f16_rounding() {
    // (n, op, limit, in place, one CTA)
    let cases = [
        (61, v::OP_RELU, 0.0, false, false),
        (1000, v::OP_SOFT_CLAMP, 3.0, false, false),
        (4099, v::OP_SOFT_CLAMP, 1.5, true, true),
        (2053, v::OP_RELU, 0.0, true, true),
    ];
    let mut rng = Rng::new(29);
    for (i, &(n, op, limit, in_place, small)) in cases.iter().enumerate() {
        let _race = common::race_check_case(i == 0);
        let x = random_f16(&mut rng, n);
        let widened: Vec<f32> = x.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
        let want = v::map_reference(&widened, op, limit);
        let config = if small {
            one_block()
        } else {
            v::map_config(n, op, limit).unwrap()
        };
        for order in ThreadOrder::all(i as u64 + 9) {
            let mut buf = x.clone();
            let mut out = vec![POISON_F16; n];
            let (src, dst) = if in_place {
                (buf.as_ptr(), buf.as_mut_ptr())
            } else {
                (x.as_ptr(), out.as_mut_ptr())
            };
            let params = VideoMapParams {
                x: src,
                out: dst,
                n: n as i64,
                op,
                limit,
            };
            // SAFETY: src and dst hold n elements (the same buffer when in place).
            unsafe { run(v::KERNEL_MAP, config, &params, order) };
            let got = if in_place { &buf } else { &out };
            for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let g = f64::from(f16::from_bits(g).to_f32());
                // f16 rounding of the result (half an ulp, 2^-11 relative) plus f32 tanh.
                let tol = 1e-6 + 1.0e-3 * w.abs();
                assert!(
                    (g - w).abs() <= tol,
                    "map case {i} {order:?} element {e}: got {g}, want {w}"
                );
            }
        }
    }
}

#[test]
fn configs_name_the_broken_rule() {
    let e = v::with_past_config(2, 3, 12).unwrap_err();
    assert!(
        e.contains(v::KERNEL_WITH_PAST) && e.contains("multiple of 8"),
        "{e}"
    );
    let e = v::shuffle_config(2, 0, 8, 2).unwrap_err();
    assert!(e.contains("pixels"), "{e}");
    let e = v::map_config(10, v::OP_SOFT_CLAMP, f32::NAN).unwrap_err();
    assert!(e.contains("limit"), "{e}");
}

/// Where nvcc built the module: no spills, no stack, few registers (copies and a tanh).
#[test]
fn video_kernels_pass_the_resource_gates() {
    if !common::nvcc_built() {
        return;
    }
    let mut seen = 0;
    for r in KERNEL_RESOURCES.iter().filter(|r| r.module == "video") {
        assert_eq!((r.spill_store_bytes, r.spill_load_bytes), (0, 0), "{r:?}");
        assert!(r.registers <= 64, "{r:?}");
        seen += 1;
    }
    assert!(seen >= 3, "ptxas reports of the three video kernels");
}
