//! The elementwise kernels (`kernels/cuda/elementwise.cu`) in the emulator against CPU
//! references written here (the crate does not depend on the engine): the layout kernels
//! and the f32 updates bit for bit, the activations and the timestep features against f64
//! within f16 rounding, Philox against Random123's known answers, the noise against a port
//! of `engine/src/rng.rs` within 1e-6 abs + 1e-6 rel (and counted bit-exact matches), the
//! weight init and the conversions bit for bit against the `half` crate's round to nearest
//! even. Every case runs in forward, reverse and shuffled thread order with poisoned
//! outputs, at ragged sizes (n not a multiple of 8, frames not a multiple of 4 elements,
//! start offsets), B = 1 and 2, F = 1, and once with a grid smaller than the work (the
//! grid-stride loop). Plus the shape contract and the resource / SASS gates.
//!
//! Race checker: these kernels use no shared memory, so it has nothing to order; the small
//! Euler step cases still run under `emu::racecheck` in the default tier (the instrumented
//! build gives the same results), and with `STREAMDIT_FULL=1` every launch does.

mod common;

use common::Rng;
use half::{bf16, f16};
use streamdit_kernels::elementwise::{self as ew, EulerControl, PhiloxBlock, PhiloxKey};
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, LaunchConfig, ThreadOrder};
use streamdit_kernels::KERNEL_RESOURCES;

const POISON_F16: u16 = 0x7fff;

/// # Safety
/// `params` mirrors the kernel's parameter struct; its pointers cover the kernel's accesses.
unsafe fn try_run<P: Copy>(
    name: &str,
    config: LaunchConfig,
    params: &P,
    order: ThreadOrder,
) -> Result<(), EmuError> {
    let _race = common::race_check_full();
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
}

/// # Safety
/// As [`try_run`].
unsafe fn run<P: Copy>(name: &str, config: LaunchConfig, params: &P, order: ThreadOrder) {
    // SAFETY: forwarded contract of this function.
    unsafe { try_run(name, config, params, order) }
        .unwrap_or_else(|e| panic!("{name} {order:?}: {e}"));
}

/// A one-CTA grid: fewer threads than items, so the grid-stride loop must cover the rest.
fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid: 1.into(),
        block: ew::THREADS.into(),
        shared_bytes: 0,
    }
}

fn f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| f16::from_f32(x).to_bits()).collect()
}

fn f16_val(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Asserts `got == want` bit for bit (f32 or u16 patterns), reporting the first mismatches.
fn assert_bits<T: PartialEq + std::fmt::Debug + Copy>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<(usize, T, T)> = (0..got.len())
        .filter(|&i| got[i] != want[i])
        .take(5)
        .map(|i| (i, got[i], want[i]))
        .collect();
    assert!(bad.is_empty(), "{what}: (index, got, want): {bad:?}");
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---- a port of engine/src/rng.rs (same operations, same order) ----

fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(0x9E37_79B9);
            k1 = k1.wrapping_add(0xBB67_AE85);
        }
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c0);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c2);
        (c0, c1, c2, c3) = (
            (p1 >> 32) as u32 ^ c1 ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ c3 ^ k1,
            p0 as u32,
        );
    }
    [c0, c1, c2, c3]
}

fn split64(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn unit_open(r: u32) -> f32 {
    ((r >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

fn box_muller(ra: u32, rb: u32) -> (f32, f32) {
    let radius = (-2.0 * unit_open(ra).ln()).sqrt();
    let theta = 2.0 * std::f32::consts::PI * unit_open(rb);
    (radius * theta.cos(), radius * theta.sin())
}

fn noise_frame(seed: u64, frame: u64, out: &mut [f32]) {
    let key = split64(seed);
    let [g0, g1] = split64(frame);
    for (q, block) in out.chunks_mut(4).enumerate() {
        let [q0, q1] = split64(q as u64);
        let r = philox([q0, q1, g0, g1], key);
        let (z0, z1) = box_muller(r[0], r[1]);
        let (z2, z3) = box_muller(r[2], r[3]);
        block.copy_from_slice(&[z0, z1, z2, z3][..block.len()]);
    }
}

const WEIGHT_INIT_DOMAIN: u32 = 0x5749_4E49;

fn init_value(seed: u64, tensor: u32, i: u64, mean: f32, half_width: f32) -> f32 {
    let [q0, q1] = split64(i / 4);
    let r = philox([q0, q1, tensor, WEIGHT_INIT_DOMAIN], split64(seed));
    let u = unit_open(r[(i % 4) as usize]);
    let centred = 2.0 * u - 1.0;
    mean + half_width * centred
}

/// Noise within 1e-6 abs + 1e-6 rel (a GPU's logf/cosf/sinf may differ in the last bits);
/// returns how many elements matched bit for bit.
fn assert_noise(what: &str, got: &[f32], want: &[f32]) -> usize {
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 + 1e-6 * w.abs();
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w}"
        );
        exact += usize::from(g.to_bits() == w.to_bits());
    }
    exact
}

// ---- Philox and noise ----

#[test]
fn philox_known_answers_and_random_counters() {
    // Random123 kat_vectors for philox4x32 with 10 rounds (quoted in engine/src/rng.rs).
    #[rustfmt::skip]
    let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0; 4], [0; 2], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];
    let mut rng = Rng::new(7);
    let mut counters: Vec<PhiloxBlock> = kat.iter().map(|k| PhiloxBlock(k.0)).collect();
    let mut keys: Vec<PhiloxKey> = kat.iter().map(|k| PhiloxKey(k.1)).collect();
    for _ in 0..297 {
        counters.push(PhiloxBlock([0; 4].map(|_: u32| rng.next_u32())));
        keys.push(PhiloxKey([0; 2].map(|_: u32| rng.next_u32())));
    }
    let n = counters.len();
    for (order, config) in ThreadOrder::all(7)
        .into_iter()
        .map(|o| (o, ew::philox_blocks_config(n).unwrap()))
        .chain([(ThreadOrder::Forward, one_block())])
    {
        let mut out = vec![PhiloxBlock([u32::MAX; 4]); n];
        let params = ew::PhiloxBlocksParams {
            counter: counters.as_ptr(),
            key: keys.as_ptr(),
            out: out.as_mut_ptr(),
            n: n as i32,
        };
        // SAFETY: counter, key and out hold n 16-/8-byte aligned blocks.
        unsafe { run(ew::KERNEL_PHILOX_BLOCKS, config, &params, order) };
        for (i, k) in kat.iter().enumerate() {
            assert_eq!(out[i].0, k.2, "known answer {i} ({order:?})");
        }
        for i in 0..n {
            assert_eq!(out[i].0, philox(counters[i].0, keys[i].0), "block {i}");
        }
    }
    eprintln!("philox_blocks: 3 Random123 known answers and {n} random blocks exact");
}

#[test]
fn noise_fill_matches_rng() {
    // Frames of 100 (float4 stores) and 10 elements (partial last block, scalar stores);
    // seed and first frame with high words set; F = 1.
    for (frames, elems, seed, first) in [
        (3usize, 100usize, 0x0123_4567_89ab_cdefu64, (1u64 << 32) + 5),
        (4, 10, 42, 7),
        (1, 8 * 4 * 4, 9, 0),
    ] {
        let mut want = vec![0.0f32; frames * elems];
        for (f, frame) in want.chunks_mut(elems).enumerate() {
            noise_frame(seed, first + f as u64, frame);
        }
        let config = ew::noise_fill_config(frames, elems).unwrap();
        for order in ThreadOrder::all(seed) {
            let mut out = common::poisoned_f32(frames * elems);
            let params = ew::NoiseFillParams {
                out: out.as_mut_ptr(),
                seed,
                first_frame: first,
                frames: frames as i32,
                frame_elems: elems as i32,
            };
            // SAFETY: out holds frames * elems f32.
            unsafe { run(ew::KERNEL_NOISE_FILL, config, &params, order) };
            let exact = assert_noise("noise_fill", &out, &want);
            eprintln!(
                "noise_fill F={frames} E={elems} first={first} {order:?}: {exact}/{} bit-exact",
                out.len()
            );
        }
    }
}

// ---- Euler step with chunk pop/push ----

struct EulerCase {
    frames: usize,
    elems: usize,
    shift: i32,
    emit_frames: usize,
}

fn check_euler(case: &EulerCase, seed: u64, narrow_grid: bool) {
    let EulerCase {
        frames,
        elems,
        shift,
        emit_frames,
    } = *case;
    let s = shift as usize;
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..frames * elems)
        .map(|_| rng.nonzero(-3.0, 3.0))
        .collect();
    let v: Vec<f32> = (0..frames * elems)
        .map(|_| rng.nonzero(-2.0, 2.0))
        .collect();
    // Frame 1 is inactive (dtau = 0, as prefill's waiting chunks): it just moves.
    let dtau: Vec<f32> = (0..frames)
        .map(|f| if f == 1 { 0.0 } else { rng.uniform(0.01, 0.2) })
        .collect();
    let control = EulerControl {
        first_frame: (1 << 32) + 77,
        shift,
        reserved: 0,
    };
    let noise_seed = 0xfeed_0000_0000_0001u64;
    // The CPU backend's step: x += dtau v, pop `s` frames, push noise frames.
    let mut stepped = x.clone();
    for (f, xf) in stepped.chunks_mut(elems).enumerate() {
        for (e, a) in xf.iter_mut().enumerate() {
            *a += dtau[f] * v[f * elems + e];
        }
    }
    let emit_want = stepped[..s * elems].to_vec();
    let mut next_want = stepped[s * elems..].to_vec();
    let mut noise = vec![0.0f32; s * elems];
    for (k, frame) in noise.chunks_mut(elems).enumerate() {
        noise_frame(noise_seed, control.first_frame + k as u64, frame);
    }
    next_want.extend_from_slice(&noise);
    let config = if narrow_grid {
        one_block()
    } else {
        ew::euler_step_config(frames, elems, emit_frames).unwrap()
    };
    for order in ThreadOrder::all(seed) {
        let mut x_next = common::poisoned_f32(frames * elems);
        let mut emit = common::poisoned_f32(emit_frames * elems);
        let params = ew::EulerStepParams {
            x: x.as_ptr(),
            v: v.as_ptr(),
            dtau: dtau.as_ptr(),
            control: &control,
            x_next: x_next.as_mut_ptr(),
            emit: emit.as_mut_ptr(),
            seed: noise_seed,
            frames: frames as i32,
            frame_elems: elems as i32,
            emit_frames: emit_frames as i32,
        };
        // SAFETY: x, v, x_next (frames, elems), dtau (frames), emit (emit_frames, elems), and
        // the control block live for the launch; shift <= emit_frames.
        unsafe { run(ew::KERNEL_EULER_STEP, config, &params, order) };
        let kept = (frames - s) * elems;
        assert_bits(
            "euler_step x_next (moved + updated)",
            &f32_bits(&x_next[..kept]),
            &f32_bits(&next_want[..kept]),
        );
        let exact = assert_noise(
            "euler_step pushed noise",
            &x_next[kept..],
            &next_want[kept..],
        );
        assert_bits(
            "euler_step emit",
            &f32_bits(&emit[..s * elems]),
            &f32_bits(&emit_want),
        );
        assert!(
            emit[s * elems..].iter().all(|a| a.is_nan()),
            "euler_step wrote emit frames beyond the shift"
        );
        eprintln!(
            "euler_step F={frames} E={elems} shift={shift} grid={} {order:?}: update and emit \
             bit-exact, noise {exact}/{} bit-exact",
            config.grid.x,
            s * elems
        );
    }
}

#[test]
fn euler_step_pops_and_pushes() {
    // The tiny profile's buffer (8 frames of 8*16*16), chunk 2, a pop and a plain step.
    check_euler(
        &EulerCase {
            frames: 8,
            elems: 8 * 16 * 16,
            shift: 2,
            emit_frames: 2,
        },
        31,
        false,
    );
    let _race = emu::racecheck(true);
    check_euler(
        &EulerCase {
            frames: 5,
            elems: 12,
            shift: 0,
            emit_frames: 2,
        },
        32,
        false,
    );
    // Pop 3 of 5 with a one-CTA grid over 5 * 64 items.
    check_euler(
        &EulerCase {
            frames: 5,
            elems: 256,
            shift: 3,
            emit_frames: 4,
        },
        33,
        true,
    );
}

#[test]
fn euler_step_rejects_a_bad_shift() {
    let (frames, elems) = (4usize, 8usize);
    let x = vec![1.0f32; frames * elems];
    let dtau = vec![0.1f32; frames];
    let mut x_next = common::poisoned_f32(frames * elems);
    let mut emit = common::poisoned_f32(2 * elems);
    for shift in [3, -1] {
        let control = EulerControl {
            first_frame: 0,
            shift,
            reserved: 0,
        };
        let params = ew::EulerStepParams {
            x: x.as_ptr(),
            v: x.as_ptr(),
            dtau: dtau.as_ptr(),
            control: &control,
            x_next: x_next.as_mut_ptr(),
            emit: emit.as_mut_ptr(),
            seed: 1,
            frames: frames as i32,
            frame_elems: elems as i32,
            emit_frames: 2,
        };
        let config = ew::euler_step_config(frames, elems, 2).unwrap();
        // SAFETY: buffers as sized above; the kernel traps before any access for this shift.
        let err = unsafe { try_run(ew::KERNEL_EULER_STEP, config, &params, ThreadOrder::Forward) }
            .expect_err("shift outside [0, emit_frames] must trap");
        assert_eq!(err.kind, EmuErrorKind::Trap, "{err}");
    }
    assert!(x_next.iter().all(|a| a.is_nan()) && emit.iter().all(|a| a.is_nan()));
}

// ---- weight init and conversions ----

#[test]
fn weights_init_is_bit_exact() {
    let mut rng = Rng::new(5);
    let mut cases = 0;
    for (start, n) in [
        (0u64, 1usize),
        (0, 8),
        (0, 1003),
        (3, 7),
        (8, 29),
        (13, 100),
        ((1 << 32) + 5, 40),
    ] {
        let seed = rng.next_u64();
        let tensor = rng.next_u32() % 400;
        let mean = rng.uniform(-0.5, 0.5);
        let half = rng.uniform(0.01, 1.0);
        let want: Vec<u16> = (0..n as u64)
            .map(|i| f16::from_f32(init_value(seed, tensor, start + i, mean, half)).to_bits())
            .collect();
        let config = ew::weights_init_config(start, n).unwrap();
        for order in ThreadOrder::all(seed) {
            let mut out = vec![POISON_F16; n];
            let params = ew::WeightsInitParams {
                out: out.as_mut_ptr(),
                seed,
                start,
                n: n as i64,
                tensor,
                mean,
                half_width: half,
            };
            // SAFETY: out holds n f16; the kernel writes out[i - start] for i in [start, start+n).
            unsafe { run(ew::KERNEL_WEIGHTS_INIT, config, &params, order) };
            assert_bits(&format!("weights_init start={start} n={n}"), &out, &want);
            cases += 1;
        }
    }
    // The grid-stride loop: 1003 elements = 126 groups of 8 on 1 CTA is one pass; 5000 is not.
    let n = 5000;
    let mut out = vec![POISON_F16; n];
    let params = ew::WeightsInitParams {
        out: out.as_mut_ptr(),
        seed: 3,
        start: 0,
        n: n as i64,
        tensor: 17,
        mean: 0.2,
        half_width: 0.1,
    };
    // SAFETY: out holds n f16.
    unsafe {
        run(
            ew::KERNEL_WEIGHTS_INIT,
            one_block(),
            &params,
            ThreadOrder::Forward,
        )
    };
    let want: Vec<u16> = (0..n as u64)
        .map(|i| f16::from_f32(init_value(3, 17, i, 0.2, 0.1)).to_bits())
        .collect();
    assert_bits("weights_init on one CTA", &out, &want);
    eprintln!("weights_init: {cases} launches and a one-CTA grid, all bit-exact");
}

/// f32 inputs that exercise f16 rounding: ties, subnormals, overflow, both signs.
fn conversion_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    // f16 ties at 1 (ulp 2^-10): 1 + 2^-11 rounds down to even, 1 + 3 * 2^-11 up.
    let special = [
        65504.0f32,
        65520.0,
        1e6,
        -1e6,
        6.0e-8,
        2.9e-8,
        3.0e-8,
        -6.1e-5,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        0.333_333_34,
    ];
    (0..n)
        .map(|i| {
            if i % 7 == 3 {
                special[(i / 7) % special.len()]
            } else {
                rng.nonzero(-4.0, 4.0) * 10f32.powi(rng.int(-6, 4))
            }
        })
        .collect()
}

#[test]
fn conversions_round_to_nearest_even() {
    let mut rng = Rng::new(11);
    for n in [1usize, 7, 8, 1003] {
        let input = conversion_inputs(&mut rng, n);
        let config = ew::elementwise_config(ew::KERNEL_CONVERT_F32_F16, n).unwrap();
        // f32 -> f16
        let want = f16_bits(&input);
        for order in ThreadOrder::all(n as u64) {
            let mut out = vec![POISON_F16; n];
            let params = ew::ConvertF32F16Params {
                input: input.as_ptr(),
                out: out.as_mut_ptr(),
                n: n as i64,
            };
            // SAFETY: input and out hold n elements.
            unsafe { run(ew::KERNEL_CONVERT_F32_F16, config, &params, order) };
            assert_bits(&format!("convert_f32_f16 n={n}"), &out, &want);
        }
        // bf16 -> f16 (from the same values rounded to bf16)
        let bf: Vec<u16> = input.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        let want: Vec<u16> = bf
            .iter()
            .map(|&b| f16::from_f32(bf16::from_bits(b).to_f32()).to_bits())
            .collect();
        for order in ThreadOrder::all(n as u64) {
            let mut out = vec![POISON_F16; n];
            let params = ew::ConvertBf16F16Params {
                input: bf.as_ptr(),
                out: out.as_mut_ptr(),
                n: n as i64,
            };
            // SAFETY: input and out hold n elements.
            unsafe { run(ew::KERNEL_CONVERT_BF16_F16, config, &params, order) };
            assert_bits(&format!("convert_bf16_f16 n={n}"), &out, &want);
        }
    }
    // f16 -> f32 over every non-NaN pattern (65536 - 2046), exact.
    let patterns: Vec<u16> = (0..=u16::MAX)
        .filter(|&b| !f16::from_bits(b).is_nan())
        .collect();
    let n = patterns.len();
    let want: Vec<u32> = patterns
        .iter()
        .map(|&b| f16::from_bits(b).to_f32().to_bits())
        .collect();
    let config = ew::elementwise_config(ew::KERNEL_CONVERT_F16_F32, n).unwrap();
    for order in ThreadOrder::all(3) {
        let mut out = common::poisoned_f32(n);
        let params = ew::ConvertF16F32Params {
            input: patterns.as_ptr(),
            out: out.as_mut_ptr(),
            n: n as i64,
        };
        // SAFETY: input and out hold n elements.
        unsafe { run(ew::KERNEL_CONVERT_F16_F32, config, &params, order) };
        assert_bits("convert_f16_f32", &f32_bits(&out), &want);
    }
    eprintln!("conversions: n in {{1, 7, 8, 1003}} and all {n} non-NaN f16 patterns bit-exact");
}

// ---- activations and timestep features ----

fn check_activation(kernel: &str, f: fn(f64) -> f64) {
    let mut rng = Rng::new(21);
    for n in [5usize, 16, 1003] {
        let x: Vec<f32> = (0..n).map(|_| rng.nonzero(-8.0, 8.0)).collect();
        let config = ew::elementwise_config(kernel, n).unwrap();
        for order in ThreadOrder::all(n as u64) {
            let mut out = vec![POISON_F16; n];
            let params = ew::ActivationParams {
                x: x.as_ptr(),
                out: out.as_mut_ptr(),
                n: n as i64,
            };
            // SAFETY: x and out hold n elements.
            unsafe { run(kernel, config, &params, order) };
            let mut worst = 0.0f64;
            for i in 0..n {
                let z = f64::from(x[i]);
                let want = f(z);
                let got = f64::from(f16_val(out[i]));
                // f16 rounding (2^-11 relative, 2^-25 absolute below f16's normal range) and
                // the f32 evaluation: a few ulps relative, and ~|z| ulp(1) where 1 + tanh or
                // 1 + exp cancels.
                let tol = (2f64.powi(-11) + 2f64.powi(-20)) * want.abs()
                    + 2f64.powi(-22) * (1.0 + z.abs())
                    + 2f64.powi(-25);
                let err = (got - want).abs();
                assert!(
                    err <= tol,
                    "{kernel} n={n} {order:?} element {i}: z {z}, got {got}, want {want}"
                );
                worst = worst.max(err / tol);
            }
            eprintln!("{kernel} n={n} {order:?}: worst err/tol {worst:.3}");
        }
    }
}

#[test]
fn silu_and_gelu_tanh() {
    check_activation(ew::KERNEL_SILU, |z| z / (1.0 + (-z).exp()));
    check_activation(ew::KERNEL_GELU_TANH, |z| {
        0.5 * z * (1.0 + (0.797_884_560_8 * (z + 0.044715 * z * z * z)).tanh())
    });
}

#[test]
fn timestep_features_match_the_f64_reference() {
    // tau at both ends of [0, 1] and inside; s w_k reaches 1000 rad. F = 1 and F = 5.
    for tau in [vec![0.61f32], vec![0.0, 1.0, 0.125, 0.937_5, 0.333_333_34]] {
        let frames = tau.len();
        let config = ew::timestep_features_config(frames).unwrap();
        for order in ThreadOrder::all(frames as u64) {
            let mut out = vec![POISON_F16; frames * 256];
            let params = ew::TimestepFeaturesParams {
                tau: tau.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
            };
            // SAFETY: tau holds frames f32, out frames * 256 f16.
            unsafe { run(ew::KERNEL_TIMESTEP_FEATURES, config, &params, order) };
            let mut worst = 0.0f64;
            for (f, &t) in tau.iter().enumerate() {
                let s = 1000.0 * f64::from(t);
                for k in 0..128 {
                    let w = (-(10000f64.ln()) * k as f64 / 128.0).exp();
                    for (col, want) in [(k, (s * w).cos()), (128 + k, (s * w).sin())] {
                        let got = f64::from(f16_val(out[f * 256 + col]));
                        // f32 then f16 rounding of the f64 value.
                        let tol = (2f64.powi(-11) + 2f64.powi(-24)) * want.abs() + 2f64.powi(-25);
                        let err = (got - want).abs();
                        assert!(
                            err <= tol,
                            "tau {t} column {col}: got {got}, want {want} ({order:?})"
                        );
                        worst = worst.max(err / tol);
                    }
                }
            }
            eprintln!("timestep_features F={frames} {order:?}: worst err/tol {worst:.3}");
        }
    }
}

/// Wan's features (docs/wan.md section 2.2; kernels/cuda/wan_embed.cu): t itself on the
/// 0..1000 scale, any freq_dim: wan-tiny's 16 and Wan-1.3B's 256, at the warped steps of
/// docs/wan.md section 6, the timestep-0 pass and an odd value; a ragged 5 x 3 item count
/// (freq_dim 6); every order, poisoned output; the f64 reference written from the docs.
#[test]
fn wan_timestep_features_match_the_f64_reference() {
    use streamdit_kernels::wan_embed;
    let t = [1000.0f32, 937.5, 833.333_3, 625.0, 0.0, 3.7];
    for (freq_dim, frames) in [(16, 6), (256, 4), (6, 5)] {
        let config = wan_embed::timestep_features_config(frames, freq_dim).unwrap();
        let half = freq_dim / 2;
        for order in ThreadOrder::all(freq_dim as u64) {
            let mut out = vec![POISON_F16; frames * freq_dim];
            let params = wan_embed::WanTimestepParams {
                t: t.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                half: half as i32,
            };
            // SAFETY: t holds >= frames f32, out frames * freq_dim f16.
            unsafe { run(wan_embed::KERNEL_TIMESTEP_FEATURES, config, &params, order) };
            let mut worst = 0.0f64;
            for (f, &tf) in t[..frames].iter().enumerate() {
                for k in 0..half {
                    let a = f64::from(tf) * 10000f64.powf(-(k as f64) / half as f64);
                    for (col, want) in [(k, a.cos()), (half + k, a.sin())] {
                        let got = f64::from(f16_val(out[f * freq_dim + col]));
                        let tol = (2f64.powi(-11) + 2f64.powi(-24)) * want.abs() + 2f64.powi(-25);
                        let err = (got - want).abs();
                        assert!(
                            err <= tol,
                            "freq_dim {freq_dim} t {tf} column {col}: got {got}, want {want} \
                             ({order:?})"
                        );
                        worst = worst.max(err / tol);
                    }
                }
            }
            eprintln!("wan_timestep_features freq_dim {freq_dim} F={frames} {order:?}: worst err/tol {worst:.3}");
        }
    }
    for (frames, freq_dim, rule) in [
        (0, 16, "frames = 0"),
        (2, 7, "freq_dim = 7"),
        (2, 0, "freq_dim = 0"),
    ] {
        let err = wan_embed::timestep_features_config(frames, freq_dim).unwrap_err();
        assert!(
            err.starts_with("wan_timestep_features") && err.contains(rule),
            "{err}"
        );
    }
}

// ---- layout kernels: patchify, positions, modulation, unpatchify ----

#[test]
fn patchify_writes_every_batch_copy() {
    // The tiny profile's latents (8 x 8 x 16 x 16) once, and a ragged one twice (B = 2).
    for (frames, c, h, w, batch, narrow) in [
        (8usize, 8usize, 16usize, 16usize, 1usize, false),
        (3, 4, 6, 10, 2, false),
        (1, 2, 2, 4, 2, false),
        (3, 4, 6, 10, 2, true),
    ] {
        let mut rng = Rng::new(41);
        let x: Vec<f32> = (0..frames * c * h * w)
            .map(|_| rng.nonzero(-3.0, 3.0))
            .collect();
        let (ht, wt, p) = (h / 2, w / 2, c * 4);
        let tokens = frames * ht * wt;
        let mut want = vec![0u16; batch * tokens * p];
        for b in 0..batch {
            for f in 0..frames {
                for i in 0..ht {
                    for j in 0..wt {
                        let t = b * tokens + (f * ht + i) * wt + j;
                        for cc in 0..c {
                            for a in 0..2 {
                                for bb in 0..2 {
                                    let v = x[((f * c + cc) * h + 2 * i + a) * w + 2 * j + bb];
                                    want[t * p + (cc * 2 + a) * 2 + bb] =
                                        f16::from_f32(v).to_bits();
                                }
                            }
                        }
                    }
                }
            }
        }
        let config = if narrow {
            one_block()
        } else {
            ew::patchify_config(frames, c, h, w, batch).unwrap()
        };
        for order in ThreadOrder::all(3) {
            let mut out = vec![POISON_F16; batch * tokens * p];
            let params = ew::PatchifyParams {
                x: x.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                c: c as i32,
                h: h as i32,
                w: w as i32,
                batch: batch as i32,
            };
            // SAFETY: x (frames, c, h, w) f32, out (batch * tokens, c * 4) f16.
            unsafe { run(ew::KERNEL_PATCHIFY, config, &params, order) };
            assert_bits(
                &format!("patchify F={frames} C={c} H={h} W={w} B={batch}"),
                &out,
                &want,
            );
        }
        eprintln!("patchify F={frames} C={c} H={h} W={w} B={batch} narrow={narrow}: exact");
    }
}

#[test]
fn add_positions_per_token() {
    for (batch, frames, ht, wt, d) in [(2usize, 3usize, 2usize, 5usize, 24usize), (1, 1, 4, 4, 256)]
    {
        let mut rng = Rng::new(51);
        let rows = batch * frames * ht * wt;
        let h: Vec<f32> = (0..rows * d).map(|_| rng.nonzero(-2.0, 2.0)).collect();
        // Tables with more rows than the grid uses (Ft_max etc. may exceed the buffer).
        let table = |rng: &mut Rng, r: usize| -> Vec<u16> {
            (0..(r + 1) * d)
                .map(|_| f16::from_f32(rng.nonzero(-1.0, 1.0)).to_bits())
                .collect()
        };
        let (pt, ph, pw) = (
            table(&mut rng, frames),
            table(&mut rng, ht),
            table(&mut rng, wt),
        );
        let mut want = h.clone();
        for r in 0..rows {
            let n = r % (frames * ht * wt);
            let (f, i, j) = (n / (ht * wt), (n / wt) % ht, n % wt);
            for c in 0..d {
                want[r * d + c] +=
                    f16_val(pt[f * d + c]) + f16_val(ph[i * d + c]) + f16_val(pw[j * d + c]);
            }
        }
        let config = ew::add_positions_config(rows, d, frames, ht, wt).unwrap();
        for order in ThreadOrder::all(5) {
            let mut out = h.clone();
            let params = ew::AddPositionsParams {
                h: out.as_mut_ptr(),
                pos_t: pt.as_ptr(),
                pos_h: ph.as_ptr(),
                pos_w: pw.as_ptr(),
                rows: rows as i32,
                d: d as i32,
                tokens: (frames * ht * wt) as i32,
                ht: ht as i32,
                wt: wt as i32,
            };
            // SAFETY: h (rows, d) f32; tables (frames+1, d), (ht+1, d), (wt+1, d) f16.
            unsafe { run(ew::KERNEL_ADD_POSITIONS, config, &params, order) };
            assert_bits("add_positions", &f32_bits(&out), &f32_bits(&want));
        }
        eprintln!("add_positions B={batch} F={frames} Ht={ht} Wt={wt} D={d}: bit-exact");
    }
}

#[test]
fn modulation_both_source_forms() {
    // A block's [6, D] table from t_mod [F, 6D]; the final layer's [2, D] from t_emb [F, D].
    for (frames, k, d, src_k) in [
        (3usize, 6usize, 40usize, 6usize),
        (1, 2, 24, 1),
        (4, 2, 256, 1),
    ] {
        let mut rng = Rng::new(61);
        let src: Vec<f32> = (0..frames * src_k * d)
            .map(|_| rng.nonzero(-2.0, 2.0))
            .collect();
        let table: Vec<u16> = (0..k * d)
            .map(|_| f16::from_f32(rng.nonzero(-1.0, 1.0)).to_bits())
            .collect();
        let mut want = vec![0.0f32; frames * k * d];
        for f in 0..frames {
            for v in 0..k {
                let sv = if src_k == 1 { 0 } else { v };
                for c in 0..d {
                    want[(f * k + v) * d + c] =
                        src[(f * src_k + sv) * d + c] + f16_val(table[v * d + c]);
                }
            }
        }
        let config = ew::modulation_config(frames, k, d, src_k).unwrap();
        for order in ThreadOrder::all(6) {
            let mut out = common::poisoned_f32(frames * k * d);
            let params = ew::ModulationParams {
                src: src.as_ptr(),
                table: table.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                k: k as i32,
                d: d as i32,
                src_k: src_k as i32,
            };
            // SAFETY: src (frames, src_k * d) f32, table (k, d) f16, out (frames, k, d) f32.
            unsafe { run(ew::KERNEL_MODULATION, config, &params, order) };
            assert_bits("modulation", &f32_bits(&out), &f32_bits(&want));
        }
        eprintln!("modulation F={frames} K={k} D={d} src_k={src_k}: bit-exact");
    }
}

#[test]
fn unpatchify_with_and_without_guidance() {
    let (frames, c, h, w) = (2usize, 3usize, 4usize, 6usize);
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    let tokens = frames * ht * wt;
    let plane = frames * c * h * w;
    for (batch, combine) in [(1usize, false), (2, false), (2, true)] {
        let g = 4.5f32;
        let mut rng = Rng::new(71);
        let x: Vec<f32> = (0..batch * tokens * p)
            .map(|_| rng.nonzero(-2.0, 2.0))
            .collect();
        // The CPU reference: unpatchify each branch, then guidance u + g (c - u).
        let mut branches = vec![0.0f32; batch * plane];
        for b in 0..batch {
            for f in 0..frames {
                for cc in 0..c {
                    for y in 0..h {
                        for xx in 0..w {
                            let token = b * tokens + (f * ht + y / 2) * wt + xx / 2;
                            branches[b * plane + ((f * c + cc) * h + y) * w + xx] =
                                x[token * p + (cc * 2 + y % 2) * 2 + xx % 2];
                        }
                    }
                }
            }
        }
        let want: Vec<f32> = if combine {
            (0..plane)
                .map(|i| {
                    let (cond, unc) = (branches[i], branches[plane + i]);
                    unc + g * (cond - unc)
                })
                .collect()
        } else {
            branches
        };
        let config = ew::unpatchify_config(frames, c, h, w, batch, combine).unwrap();
        for order in ThreadOrder::all(7) {
            let mut out = common::poisoned_f32(want.len());
            let params = ew::UnpatchifyParams {
                x: x.as_ptr(),
                out: out.as_mut_ptr(),
                frames: frames as i32,
                c: c as i32,
                h: h as i32,
                w: w as i32,
                batch: batch as i32,
                combine: i32::from(combine),
                guidance: g,
            };
            // SAFETY: x (batch * tokens, c * 4) f32; out as `want`.
            unsafe { run(ew::KERNEL_UNPATCHIFY, config, &params, order) };
            assert_bits("unpatchify", &f32_bits(&out), &f32_bits(&want));
        }
        eprintln!("unpatchify B={batch} combine={combine}: bit-exact");
    }
}

// ---- contract and gates ----

#[test]
fn shapes_outside_the_contract_are_errors() {
    for (e, needle) in [
        (ew::patchify_config(2, 3, 4, 4, 1), "C = 3 must be even"),
        (ew::patchify_config(2, 4, 5, 4, 1), "H = 5 must be even"),
        (ew::patchify_config(2, 4, 4, 4, 0), "batch = 0"),
        (
            ew::add_positions_config(40, 12, 2, 2, 5),
            "D = 12 must be a multiple of 8",
        ),
        (
            ew::add_positions_config(30, 16, 2, 2, 5),
            "whole number of batch elements",
        ),
        (ew::modulation_config(2, 6, 16, 3), "must hold 1"),
        (
            ew::unpatchify_config(2, 4, 4, 6, 1, true),
            "exactly 2 branches",
        ),
        (ew::euler_step_config(4, 10, 2), "multiple of 4"),
        (ew::euler_step_config(4, 8, 4), "smaller than the buffer"),
        (ew::noise_fill_config(0, 8), "frames = 0"),
        (ew::weights_init_config(0, 0), "n = 0"),
        (ew::elementwise_config(ew::KERNEL_SILU, 0), "n = 0"),
        (ew::timestep_features_config(0), "frames = 0"),
    ] {
        let e = e.unwrap_err();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }
}

#[test]
fn elementwise_resources_and_sass() {
    if !common::nvcc_built() {
        return;
    }
    // Kernels whose inputs are read with 16-byte loads.
    let vector_loads = [
        ew::KERNEL_ADD_POSITIONS,
        ew::KERNEL_SILU,
        ew::KERNEL_GELU_TANH,
        ew::KERNEL_MODULATION,
        ew::KERNEL_EULER_STEP,
        ew::KERNEL_CONVERT_F32_F16,
        ew::KERNEL_CONVERT_BF16_F16,
        ew::KERNEL_CONVERT_F16_F32,
    ];
    // Accurate sinf/cosf (and f64 sin/cos) keep a small local array for the Payne-Hanek
    // reduction of huge arguments: a stack frame, not a spill.
    let trig = [
        ew::KERNEL_EULER_STEP,
        ew::KERNEL_NOISE_FILL,
        ew::KERNEL_TIMESTEP_FEATURES,
    ];
    let mut seen = 0;
    // The architectures whose SASS the build counts (sm_80, sm_90); the other cubins carry
    // ptxas figures only (the spill gate in nvcc_gates.rs covers them).
    for r in KERNEL_RESOURCES
        .iter()
        .filter(|r| r.module == "elementwise" && r.sass)
    {
        eprintln!(
            "{} {}: {} regs, {} B smem, stack {}, spills {}/{}, LDG.128 {}",
            r.kernel,
            r.arch,
            r.registers,
            r.shared_bytes,
            r.stack_frame_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.ldg128
        );
        assert_eq!(
            (r.spill_store_bytes, r.spill_load_bytes),
            (0, 0),
            "{} spills: {r:?}",
            r.kernel
        );
        assert!(
            r.stack_frame_bytes == 0 || trig.contains(&r.kernel),
            "{}: unexpected stack frame {r:?}",
            r.kernel
        );
        assert!(r.registers <= 64, "{}: {r:?}", r.kernel);
        if vector_loads.contains(&r.kernel) {
            assert!(r.ldg128 > 0, "{}: expected 16-byte loads: {r:?}", r.kernel);
        }
        seen += 1;
    }
    assert_eq!(seen, 14 * 2, "14 elementwise kernels on 2 architectures");
}
