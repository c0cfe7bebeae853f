//! The fused adaLN kernel (`kernels/cuda/adaln.cu`) in the emulator against an f64 reference
//! from the same f32 inputs: both entries (warp per row for D <= 1024, CTA per row above),
//! with and without modulation, ragged row counts (M not a multiple of the 8 rows per CTA),
//! ragged chunk counts (D / 8 not a multiple of 32 lanes or of the CTA's threads), B = 2,
//! F = 1, D from 8 to 16384; every case in forward, reverse and shuffled thread order with a
//! NaN-poisoned output. Inputs have a large common offset (|mean| >> std) so a one-pass
//! E[x^2] - mean^2 variance would fail. Plus the launch-config contract and the SASS gates.
//!
//! Race checker: the first case of each test (both entries, the CTA entry's shared-memory
//! reduction included) runs under `emu::racecheck` in the default tier; with
//! `STREAMDIT_FULL=1` every launch does.

mod common;

use common::Rng;
use half::f16;
use streamdit_kernels::adaln::{self, ModLayout};
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};

/// f16 rounding (round to nearest even): half an ulp, 2^-11 relative, for normal values.
const U_F16: f64 = 1.0 / 2048.0;
/// Allowance for the f32 evaluation, in units of the output's terms `|1 + sc| + |sh|`:
/// mean and centred variance are f32 sums of D <= 16384 values (<= 32 sequential terms per
/// thread, then a shuffle / CTA tree), rsqrtf is within 2 ulp; 1e-5 is ~170 f32 ulps of an
/// O(1) normalised value, far above the expected error and far below f16's 4.9e-4.
const F32_EVAL: f64 = 1e-5;

/// # Safety
/// `params` mirrors the kernel's parameter struct; its pointers cover the kernel's accesses.
unsafe fn run<P: Copy>(name: &str, config: LaunchConfig, params: &P, order: ThreadOrder) {
    let _race = common::race_check_full();
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
        .unwrap_or_else(|e| panic!("{name} {order:?}: {e}"));
}

struct Case {
    label: &'static str,
    batch: usize,
    frames: usize,
    tokens_per_frame: usize,
    d: usize,
    modulated: bool,
    expect: &'static str,
}

/// `LN(x) * (1 + sc) + sh` in f64 per element, and the tolerance of each element.
fn reference(
    x: &[f32],
    m: usize,
    d: usize,
    mods: Option<(&[f32], &ModLayout)>,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0.0; m * d];
    let mut tol = vec![0.0; m * d];
    for r in 0..m {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + 1e-6).sqrt();
        for c in 0..d {
            let ln = (f64::from(row[c]) - mean) * inv;
            let (sh, sc) = match mods {
                Some((mv, l)) => {
                    let f = (r % l.tokens) / l.tokens_per_frame;
                    let base = f * l.mod_k * d;
                    (
                        f64::from(mv[base + l.shift * d + c]),
                        f64::from(mv[base + l.scale * d + c]),
                    )
                }
                None => (0.0, 0.0),
            };
            let y = ln * (1.0 + sc) + sh;
            want[r * d + c] = y;
            tol[r * d + c] = U_F16 * y.abs() + F32_EVAL * ((1.0 + sc).abs() + sh.abs());
        }
    }
    (want, tol)
}

fn check(case: &Case, seed: u64) {
    let Case {
        label,
        batch,
        frames,
        tokens_per_frame,
        d,
        modulated,
        expect,
    } = *case;
    let tokens = frames * tokens_per_frame;
    let m = batch * tokens;
    let mut rng = Rng::new(seed);
    // Each row has its own offset in [-4, 4) and spread: |mean| up to ~8 std.
    let mut x = Vec::with_capacity(m * d);
    for _ in 0..m {
        let offset = rng.nonzero(-4.0, 4.0);
        let spread = rng.uniform(0.5, 2.0);
        x.extend((0..d).map(|_| offset + rng.nonzero(-spread, spread)));
    }
    let layout = ModLayout {
        frames,
        mod_k: 6,
        shift: 3,
        scale: 4,
        tokens,
        tokens_per_frame,
    };
    let mods: Vec<f32> = (0..frames * 6 * d)
        .map(|_| rng.nonzero(-0.5, 0.5))
        .collect();
    let mods_arg = modulated.then_some((mods.as_ptr(), &layout));
    let launch = adaln::config(m, d, modulated.then_some(&layout)).unwrap();
    assert_eq!(launch.kernel, expect, "{label}: entry chosen for D = {d}");
    let (want, tol) = reference(&x, m, d, modulated.then_some((&mods[..], &layout)));
    for order in ThreadOrder::all(seed) {
        let mut out = vec![0x7fffu16; m * d];
        let params = adaln::params(x.as_ptr(), out.as_mut_ptr(), m, d, mods_arg);
        // SAFETY: x (m, d) f32, mods (frames, 6, d) f32 or null, out (m, d) f16: the extents
        // the kernel reads and writes for this shape (validated by adaln::config); Vec
        // buffers of these sizes are 16-byte aligned (malloc).
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let (mut worst, mut max_abs) = (0.0f64, 0.0f64);
        let mut bad = Vec::new();
        for i in 0..m * d {
            let got = f16::from_bits(out[i]).to_f64();
            let err = (got - want[i]).abs();
            // NaN (an element never written: the output starts poisoned) fails here too.
            let within = err <= tol[i];
            if !within && bad.len() < 5 {
                bad.push((i / d, i % d, got, want[i], tol[i]));
            }
            let err = if err.is_nan() { f64::INFINITY } else { err };
            worst = worst.max(err / tol[i]);
            max_abs = max_abs.max(err);
        }
        assert!(
            bad.is_empty(),
            "{label} {order:?}: (row, col, got, want, tol): {bad:?}"
        );
        eprintln!(
            "{label}: M={m} D={d} B={batch} F={frames} mods={modulated} {} {}x{} {order:?}: \
             max abs {max_abs:.2e}, worst err/tol {worst:.3}",
            launch.kernel, launch.config.grid.x, launch.config.block.x
        );
    }
}

#[test]
fn warp_per_row() {
    let cases = [
        // The tiny profile's D = 256, B = 2, 3 frames of 7 tokens: M = 42, ragged vs 8 rows.
        Case {
            label: "tiny-like",
            batch: 2,
            frames: 3,
            tokens_per_frame: 7,
            d: 256,
            modulated: true,
            expect: adaln::KERNEL_WARP,
        },
        // 4 chunks per lane, F = 1, B = 1, M = 5 (< one CTA of 8 rows).
        Case {
            label: "d1024",
            batch: 1,
            frames: 1,
            tokens_per_frame: 5,
            d: 1024,
            modulated: true,
            expect: adaln::KERNEL_WARP,
        },
        // 5 chunks: lanes 5..31 hold nothing; plain LN (null mods).
        Case {
            label: "d40-plain",
            batch: 2,
            frames: 2,
            tokens_per_frame: 3,
            d: 40,
            modulated: false,
            expect: adaln::KERNEL_WARP,
        },
        // The smallest row: one chunk, one lane.
        Case {
            label: "d8",
            batch: 1,
            frames: 3,
            tokens_per_frame: 3,
            d: 8,
            modulated: true,
            expect: adaln::KERNEL_WARP,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let _race = (i == 0).then(|| emu::racecheck(true));
        check(c, 100 + i as u64);
    }
}

#[test]
fn cta_per_row() {
    let cases = [
        // streamdit-4b's D = 3072 (192 threads x 2 chunks), B = 2, F = 3.
        Case {
            label: "4b-width",
            batch: 2,
            frames: 3,
            tokens_per_frame: 1,
            d: 3072,
            modulated: true,
            expect: adaln::KERNEL_CTA,
        },
        // Just above the warp entry: 129 chunks on 96 threads (ragged), plain LN.
        Case {
            label: "d1032-plain",
            batch: 1,
            frames: 1,
            tokens_per_frame: 3,
            d: 1032,
            modulated: false,
            expect: adaln::KERNEL_CTA,
        },
        // 257 chunks on 160 threads: some threads hold 2 chunks, some 1.
        Case {
            label: "d2056",
            batch: 2,
            frames: 2,
            tokens_per_frame: 1,
            d: 2056,
            modulated: true,
            expect: adaln::KERNEL_CTA,
        },
        // D = 8192 (512 threads x 2) and the largest D = 16384 (512 x 4), F = 1.
        Case {
            label: "d8192",
            batch: 1,
            frames: 1,
            tokens_per_frame: 2,
            d: 8192,
            modulated: true,
            expect: adaln::KERNEL_CTA,
        },
        Case {
            label: "d16384",
            batch: 1,
            frames: 1,
            tokens_per_frame: 1,
            d: 16384,
            modulated: true,
            expect: adaln::KERNEL_CTA,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let _race = (i == 0).then(|| emu::racecheck(true));
        check(c, 200 + i as u64);
    }
}

/// One Wan norm call (docs/wan.md sections 2.3, 2.6): `affine` = (weight, bias present),
/// `mods` = (mod_k, shift, scale) of the per-frame `[frames, mod_k, D]` modulation.
struct WanCase {
    label: &'static str,
    frames: usize,
    tokens_per_frame: usize,
    d: usize,
    affine: (bool, bool),
    mods: Option<(usize, usize, usize)>,
}

/// `A(LN(x)) (1 + sc) + sh` with `A(y) = y w + b` in f64, and the tolerance: the f16
/// rounding `u16 |y|` plus the f32 evaluation allowance of [`F32_EVAL`] scaled by the terms
/// `(|w| + |b|) |1 + sc| + |sh|` (the affine and modulation products and sums in f32).
fn check_wan(case: &WanCase, seed: u64) {
    let WanCase {
        label,
        frames,
        tokens_per_frame,
        d,
        affine,
        mods,
    } = *case;
    let m = frames * tokens_per_frame;
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(m * d);
    for _ in 0..m {
        let offset = rng.nonzero(-4.0, 4.0);
        let spread = rng.uniform(0.5, 2.0);
        x.extend((0..d).map(|_| offset + rng.nonzero(-spread, spread)));
    }
    let vec16 = |rng: &mut Rng, lo: f32, hi: f32| -> (Vec<u16>, Vec<f64>) {
        let bits: Vec<u16> = (0..d)
            .map(|_| f16::from_f32(rng.nonzero(lo, hi)).to_bits())
            .collect();
        let vals = bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
        (bits, vals)
    };
    let (w_bits, w) = vec16(&mut rng, 0.5, 1.5);
    let (b_bits, b) = vec16(&mut rng, -0.5, 0.5);
    let (mod_k, shift, scale) = mods.unwrap_or((1, 0, 0));
    let layout = ModLayout {
        frames,
        mod_k,
        shift,
        scale,
        tokens: m,
        tokens_per_frame,
    };
    let mv: Vec<f32> = (0..frames * mod_k * d)
        .map(|_| rng.nonzero(-0.5, 0.5))
        .collect();
    let launch = adaln::config(m, d, mods.map(|_| &layout)).unwrap();
    let mut want = vec![0.0; m * d];
    let mut tol = vec![0.0; m * d];
    for r in 0..m {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + 1e-6).sqrt();
        let f = r / tokens_per_frame;
        for c in 0..d {
            let (wc, bc) = (
                if affine.0 { w[c] } else { 1.0 },
                if affine.1 { b[c] } else { 0.0 },
            );
            let (sh, sc) = match mods {
                Some(_) => (
                    f64::from(mv[(f * mod_k + shift) * d + c]),
                    f64::from(mv[(f * mod_k + scale) * d + c]),
                ),
                None => (0.0, 0.0),
            };
            let y = ((f64::from(row[c]) - mean) * inv * wc + bc) * (1.0 + sc) + sh;
            want[r * d + c] = y;
            tol[r * d + c] =
                U_F16 * y.abs() + F32_EVAL * ((wc.abs() + bc.abs()) * (1.0 + sc).abs() + sh.abs());
        }
    }
    let null = std::ptr::null();
    for order in ThreadOrder::all(seed) {
        let mut out = vec![0x7fffu16; m * d];
        let params = adaln::params(
            x.as_ptr(),
            out.as_mut_ptr(),
            m,
            d,
            mods.map(|_| (mv.as_ptr(), &layout)),
        )
        .with_affine(
            if affine.0 { w_bits.as_ptr() } else { null },
            if affine.1 { b_bits.as_ptr() } else { null },
        );
        // SAFETY: x (m, d) f32, mods (frames, mod_k, d) f32 or null, weight and bias (d) f16
        // or null, out (m, d) f16: the extents of this shape (validated by adaln::config).
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let mut worst = 0.0f64;
        for i in 0..m * d {
            let got = f16::from_bits(out[i]).to_f64();
            let err = (got - want[i]).abs();
            assert!(
                err <= tol[i],
                "{label} {order:?}: row {} col {}: got {got}, want {} (tol {:e})",
                i / d,
                i % d,
                want[i],
                tol[i]
            );
            worst = worst.max(err / tol[i]);
        }
        eprintln!(
            "{label}: M={m} D={d} {} {order:?}: worst err/tol {worst:.3}",
            launch.kernel
        );
    }
}

/// Wan's norms (docs/wan.md sections 2.3, 2.6) with its per-frame layouts: norm1 (shift 0,
/// scale 1 of the 6 vectors per frame), norm2 (3, 4), the affine norm3 (weight and bias, no
/// modulation), the head (2 vectors per frame: shift 0, scale 1); wan-tiny's D = 48 (warp
/// per row, 6 chunks) with 2 frames of 16 tokens, and the 1.3B width D = 1536 (CTA per row);
/// plus an affine weight without a bias.
#[test]
fn wan_norms() {
    let tiny = |label, affine, mods| WanCase {
        label,
        frames: 2,
        tokens_per_frame: 16,
        d: 48,
        affine,
        mods,
    };
    let wide = |label, affine, mods| WanCase {
        label,
        frames: 3,
        tokens_per_frame: 3,
        d: 1536,
        affine,
        mods,
    };
    let cases = [
        tiny("tiny norm1", (false, false), Some((6, 0, 1))),
        tiny("tiny norm2", (false, false), Some((6, 3, 4))),
        tiny("tiny norm3", (true, true), None),
        tiny("tiny head", (false, false), Some((2, 0, 1))),
        wide("1.3b norm3", (true, true), None),
        wide("1.3b norm1", (false, false), Some((6, 0, 1))),
        WanCase {
            label: "weight only, d40",
            frames: 1,
            tokens_per_frame: 11,
            d: 40,
            affine: (true, false),
            mods: None,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        // The first tiny case (warp entry) and the first 1.3B one (CTA entry).
        let _race = (i == 0 || i == 4).then(|| emu::racecheck(true));
        check_wan(c, 300 + i as u64);
    }
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let l = ModLayout {
        frames: 4,
        mod_k: 6,
        shift: 0,
        scale: 1,
        tokens: 16,
        tokens_per_frame: 4,
    };
    let err = |m, d, mods: Option<&ModLayout>| adaln::config(m, d, mods).unwrap_err();
    for (e, needle) in [
        (err(0, 256, None), "M must be at least 1"),
        (err(4, 12, None), "D = 12 must be a positive multiple of 8"),
        (err(4, 0, None), "D = 0"),
        (err(4, 16392, None), "exceeds 16384"),
        (err(24, 256, Some(&l)), "whole number of batch elements"),
        (
            err(
                32,
                256,
                Some(&ModLayout {
                    tokens_per_frame: 5,
                    ..l
                }),
            ),
            "whole number of frames",
        ),
        (
            err(32, 256, Some(&ModLayout { frames: 3, ..l })),
            "modulation tensor has 3",
        ),
        (
            err(32, 256, Some(&ModLayout { scale: 6, ..l })),
            "must index the 6 vectors",
        ),
    ] {
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        assert!(e.starts_with("adaln_"), "{e:?} names the kernel");
    }
    assert!(adaln::config(32, 3072, Some(&l)).is_ok());
    assert!(adaln::config(32, 16384, None).is_ok());
}

#[test]
fn adaln_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    for kernel in [adaln::KERNEL_WARP, adaln::KERNEL_CTA] {
        for arch in ["sm_80", "sm_90"] {
            let r = common::resources("adaln", kernel, arch);
            eprintln!(
                "{kernel} {arch}: {} regs, {} B static smem, stack {}, spills {}/{}, LDG.128 {}",
                r.registers,
                r.shared_bytes,
                r.stack_frame_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                r.ldg128
            );
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
                (0, 0, 0),
                "{kernel} spills on {arch}: {r:?}"
            );
            // __launch_bounds__(512) for the CTA entry (256 for the warp entry): 128 registers.
            assert!(r.registers <= 128, "{kernel} on {arch}: {r:?}");
            // x and the two modulation vectors are read with 16-byte loads: per chunk slot
            // (4 per thread) two of x, and two each of shift and scale.
            assert!(
                r.ldg128 >= 4 * 2 * 3,
                "{kernel} on {arch}: the row and modulation loads must be LDG.128: {r:?}"
            );
        }
    }
}
