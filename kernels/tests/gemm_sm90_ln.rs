//! The sm_90a GEMM with the LayerNorm / adaLN prologue (`gemm_sm90_ln_*` in
//! `kernels/cuda/gemm_sm90.cu`): A = adaLN(X) formed from f32 X in the consumers' registers,
//! against an f64 reference computed from the same f32 X, modulation and f16 W. Row
//! statistics come either from `adaln.cu`'s `ln_stats_*` entries (one pair per row, itself
//! checked here) or as several partial pairs per row with a ragged last group (the form an
//! epilogue would leave), combined by the kernel. Shapes with ragged M and N tiles, a K tail,
//! a ring that wraps, frames whose boundaries fall inside a 16-row fragment, and rows whose
//! mean is far larger than their spread; each in forward, reverse and shuffled thread order
//! with poisoned outputs. Under the race checker: the fast case clean, and a planted race
//! (the staging read without the full-barrier wait) reported with both sites. Plus the
//! prologue's contract; the ptxas / SASS gates of its entries are `tests/gemm_sm90.rs`'s.
//!
//! `STREAMDIT_FULL=1` runs every launch under the race checker.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::adaln::{self, ModLayout};
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};
use streamdit_kernels::gemm::GateLayout;
use streamdit_kernels::gemm_sm90::{self, Buffers, Epilogue, LnPrologue};

const U_F32: f64 = 1.0 / (1u64 << 24) as f64;
const U_F16: f64 = 1.0 / 2048.0;
const EPS: f64 = 1e-6;
const MOD_K: usize = 6;
const SHIFT: usize = 3;
const SCALE: usize = 4;

/// How the row statistics reach the GEMM.
#[derive(Clone, Copy, Debug)]
enum Stats {
    /// One pair per row from the `ln_stats_*` kernel on the emulator.
    Kernel,
    /// Pairs over groups of this many columns (the last one ragged), computed here.
    Parts(usize),
}

#[derive(Clone, Copy, Debug)]
struct Case {
    epi: Epilogue,
    m: usize,
    /// Output columns (Dff for SwiGLU).
    n: usize,
    k: usize,
    bias: bool,
    /// `Some((tokens, tokens_per_frame))` of a `[frames, 6, K]` modulation (adaLN); None:
    /// the plain LayerNorm.
    mods: Option<(usize, usize)>,
    stats: Stats,
    /// Added to every element of X: rows whose mean dwarfs their spread.
    offset: f32,
}

struct Inputs {
    case: Case,
    x: Vec<f32>,
    w: Vec<u16>,
    bias: Option<Vec<u16>>,
    mods: Vec<f32>,
    layout: Option<ModLayout>,
    /// `(M, parts)` pairs for `Stats::Parts` (the kernel's are made at launch).
    parts: Vec<f32>,
    want: Vec<f64>,
    tol: Vec<f64>,
}

fn inputs(seed: u64, c: Case) -> Inputs {
    inputs_for(seed, c, None)
}

/// [`inputs`] with X given (`[M, K]`), or random when None.
fn inputs_for(seed: u64, c: Case, given: Option<Vec<f32>>) -> Inputs {
    let mut rng = Rng::new(seed);
    let (m, n, k) = (c.m, c.n, c.k);
    let rows = c.epi.w_rows(n);
    // Each row its own spread, so the statistics differ row by row.
    let random: Vec<f32> = (0..m)
        .flat_map(|_| {
            let spread = rng.uniform(0.3, 3.0);
            let shift = rng.uniform(-1.0, 1.0) + c.offset;
            (0..k)
                .map(|_| shift + spread * rng.nonzero(-1.0, 1.0))
                .collect::<Vec<_>>()
        })
        .collect();
    let x = given.unwrap_or(random);
    assert_eq!(x.len(), m * k, "X is [M, K]");
    let wbits: Vec<u16> = (0..rows * k)
        .map(|_| f16::from_f32(rng.nonzero(-1.7, 1.7) / (k as f32).sqrt()).to_bits())
        .collect();
    let wv: Vec<f64> = wbits.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
    let (bias, bv) = if c.bias {
        let b: Vec<u16> = (0..n)
            .map(|_| f16::from_f32(rng.nonzero(-0.5, 0.5)).to_bits())
            .collect();
        let v = b.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
        (Some(b), v)
    } else {
        (None, vec![0.0; n])
    };
    let layout = c.mods.map(|(tokens, tokens_per_frame)| ModLayout {
        frames: tokens / tokens_per_frame,
        mod_k: MOD_K,
        shift: SHIFT,
        scale: SCALE,
        tokens,
        tokens_per_frame,
    });
    let mods: Vec<f32> = match &layout {
        Some(l) => (0..l.frames * MOD_K * k)
            .map(|_| rng.nonzero(-1.5, 1.5))
            .collect(),
        None => Vec::new(),
    };
    let parts = match c.stats {
        Stats::Kernel => Vec::new(),
        Stats::Parts(cols) => {
            let mut p = Vec::new();
            for r in 0..m {
                for g in 0..k.div_ceil(cols) {
                    let v = &x[r * k + g * cols..r * k + ((g + 1) * cols).min(k)];
                    let mean = v.iter().map(|&e| f64::from(e)).sum::<f64>() / v.len() as f64;
                    let m2: f64 = v.iter().map(|&e| (f64::from(e) - mean).powi(2)).sum();
                    p.extend([mean as f32, m2 as f32]);
                }
            }
            p
        }
    };
    // A in f64 from the f32 X, and the bound of its f32 evaluation and f16 rounding per
    // element: the f16 store (u_f16 |A|) and the f32 arithmetic on (x - mean), whose error
    // scales with |x| + |mean|, not with |x - mean| (a few u_f32 each, the statistics'
    // own f32 error included).
    let mut a = vec![0.0; m * k];
    let mut a_err = vec![0.0; m * k];
    for r in 0..m {
        let v = &x[r * k..(r + 1) * k];
        let mean = v.iter().map(|&e| f64::from(e)).sum::<f64>() / k as f64;
        let var = v
            .iter()
            .map(|&e| (f64::from(e) - mean).powi(2))
            .sum::<f64>()
            / k as f64;
        let rstd = 1.0 / (var + EPS).sqrt();
        let frame = layout.map(|l| (r % l.tokens) / l.tokens_per_frame);
        for kk in 0..k {
            let (mul, add) = match (frame, &layout) {
                (Some(f), Some(_)) => (
                    1.0 + f64::from(mods[(f * MOD_K + SCALE) * k + kk]),
                    f64::from(mods[(f * MOD_K + SHIFT) * k + kk]),
                ),
                _ => (1.0, 0.0),
            };
            let xe = f64::from(v[kk]);
            let y = (xe - mean) * rstd * mul + add;
            a[r * k + kk] = y;
            a_err[r * k + kk] = U_F16 * y.abs()
                + 64.0 * U_F32 * ((xe.abs() + mean.abs()) * rstd * mul.abs() + add.abs());
        }
    }
    let silu = |z: f64| z / (1.0 + (-z).exp());
    // (A W^T), the A-error propagated through W, and sum |A W| (the f32 accumulation).
    let mut prod = vec![0.0; m * rows];
    let mut bound = vec![0.0; m * rows];
    for r in 0..m {
        for j in 0..rows {
            let (mut s, mut e, mut t) = (0.0, 0.0, 0.0);
            for kk in 0..k {
                let wj = wv[j * k + kk];
                s += a[r * k + kk] * wj;
                e += a_err[r * k + kk] * wj.abs();
                t += (a[r * k + kk] * wj).abs();
            }
            prod[r * rows + j] = s;
            bound[r * rows + j] = e + (k as f64 + 2.0) * U_F32 * t;
        }
    }
    let mut want = vec![0.0; m * n];
    let mut tol = vec![0.0; m * n];
    for r in 0..m {
        for j in 0..n {
            let i = r * n + j;
            let (p, e) = (prod[r * rows + j], bound[r * rows + j]);
            let z = p + bv[j];
            (want[i], tol[i]) = match c.epi {
                Epilogue::BiasF16 => (z, e + 2.0 * U_F16 * z.abs()),
                Epilogue::BiasF32 => (z, e + 8.0 * U_F32 * z.abs()),
                Epilogue::Swiglu => {
                    let (g, ge) = (prod[r * rows + n + j], bound[r * rows + n + j]);
                    let out = silu(p) * g;
                    (
                        out,
                        1.1 * g.abs() * e + silu(p).abs() * ge + 2.0 * U_F16 * out.abs(),
                    )
                }
                other => panic!("no prologue entry for {other:?}"),
            };
            tol[i] += 1e-30;
        }
    }
    Inputs {
        case: c,
        x,
        w: wbits,
        bias,
        mods,
        layout,
        parts,
        want,
        tol,
    }
}

/// The `ln_stats_*` kernel's pairs for X (poisoned first), checked against f64.
fn kernel_stats(inp: &Inputs) -> Vec<f32> {
    let (m, k) = (inp.case.m, inp.case.k);
    let launch = adaln::stats_config(m, k).unwrap();
    let mut out = common::poisoned_f32(2 * m);
    let p = adaln::params(inp.x.as_ptr(), out.as_mut_ptr().cast(), m, k, None);
    let kernel = emu::kernel(launch.kernel).unwrap();
    // SAFETY: x is (m, k) f32 and out holds m f32 pairs; mods, weight and bias are null;
    // both live until the launch returns.
    unsafe { emu::launch_with(kernel, launch.config, &p, ThreadOrder::Reverse) }
        .unwrap_or_else(|e| panic!("{}: {e}", launch.kernel));
    for r in 0..m {
        let v = &inp.x[r * k..(r + 1) * k];
        let mean = v.iter().map(|&e| f64::from(e)).sum::<f64>() / k as f64;
        let m2: f64 = v.iter().map(|&e| (f64::from(e) - mean).powi(2)).sum();
        let (gm, g2) = (f64::from(out[2 * r]), f64::from(out[2 * r + 1]));
        let scale = v.iter().map(|&e| f64::from(e).abs()).sum::<f64>() / k as f64;
        assert!(
            (gm - mean).abs() <= 4.0 * k as f64 * U_F32 * scale,
            "{} row {r}: mean {gm} against {mean}",
            launch.kernel
        );
        assert!(
            (g2 - m2).abs() <= 1e-5 * m2 + 4.0 * k as f64 * U_F32 * scale * scale,
            "{} row {r}: M2 {g2} against {m2}",
            launch.kernel
        );
    }
    out
}

/// Runs the case with `kernel` (the entry point or a variant of it): the output as f64,
/// every output element starting as NaN.
fn launch(
    inp: &Inputs,
    stats: &[f32],
    kernel: emu::Kernel,
    order: ThreadOrder,
    ctas: Option<u32>,
) -> Result<Vec<f64>, EmuError> {
    let c = inp.case;
    let (m, n) = (c.m, c.n);
    let mut out16 = vec![0xffffu16; m * n];
    let mut out32 = common::poisoned_f32(m * n);
    let out: *mut std::ffi::c_void = match c.epi {
        Epilogue::BiasF32 => out32.as_mut_ptr().cast(),
        _ => out16.as_mut_ptr().cast(),
    };
    let part_cols = match c.stats {
        Stats::Kernel => c.k,
        Stats::Parts(cols) => cols,
    };
    let ln = LnPrologue {
        x: inp.x.as_ptr(),
        stats: stats.as_ptr(),
        parts: c.k.div_ceil(part_cols),
        part_cols,
        mods: inp.layout.map(|l| (inp.mods.as_ptr(), l)),
    };
    let buffers = Buffers {
        a: std::ptr::null(),
        w: inp.w.as_ptr(),
        bias: inp.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
        out,
        h: std::ptr::null_mut(),
        mods: std::ptr::null(),
    };
    let config = gemm_sm90::ln_config(c.epi, m, n, c.k, &ln, ctas).unwrap();
    let params = gemm_sm90::ln_params_emulated(c.epi, m, n, c.k, &ln, &buffers)
        .unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: the tensor maps describe x [m, k] f32 and w [w_rows, k] f16 (their vectors);
    // stats holds m * parts pairs, mods (frames, 6, k) or null, bias (n) or null,
    // out16/out32 (m, n): the extents ln_config and ln_params checked; all live until the
    // launch returns.
    unsafe { emu::launch_with(kernel, config, &params, order) }?;
    Ok(match c.epi {
        Epilogue::BiasF32 => out32.iter().map(|&v| f64::from(v)).collect(),
        _ => out16.iter().map(|&b| f16::from_bits(b).to_f64()).collect(),
    })
}

/// Elementwise check against the tolerance (a NaN, an element never written, fails);
/// returns the worst err / tol.
fn compare(label: &str, got: &[f64], inp: &Inputs) -> f64 {
    let mut worst = 0.0f64;
    let mut bad = Vec::new();
    for (i, ((&g, &want), &tol)) in got.iter().zip(&inp.want).zip(&inp.tol).enumerate() {
        let err = (g - want).abs();
        // NaN (never written) is not within any tolerance.
        let within = err <= tol;
        if !within && bad.len() < 5 {
            bad.push((i, g, want, tol));
        }
        worst = worst.max(if err.is_nan() {
            f64::INFINITY
        } else {
            err / tol
        });
    }
    assert!(
        bad.is_empty(),
        "{label}: elements outside tolerance (index, got, want, tol): {bad:?}"
    );
    worst
}

fn stats_of(inp: &Inputs) -> Vec<f32> {
    match inp.case.stats {
        Stats::Kernel => kernel_stats(inp),
        Stats::Parts(_) => inp.parts.clone(),
    }
}

/// The case in every thread order; the first under the race checker when `checked` (every
/// launch with `STREAMDIT_FULL=1`).
fn check(label: &str, seed: u64, c: Case, checked: bool) {
    let _race = common::race_check_full();
    let inp = inputs(seed, c);
    let stats = stats_of(&inp);
    let kernel = emu::kernel(c.epi.kernel_ln().unwrap()).unwrap();
    for (i, order) in ThreadOrder::all(seed).into_iter().enumerate() {
        let _check = common::race_check_case(checked && i == 0);
        let got = launch(&inp, &stats, kernel, order, None)
            .unwrap_or_else(|e| panic!("{label} {c:?} {order:?}: {e}"));
        let worst = compare(&format!("{label} {order:?}"), &got, &inp);
        eprintln!("{label} {c:?} {order:?}: worst err/tol {worst:.3}");
    }
}

// M = 200: a full and a partial 128-row tile; N = 136: a full and an 8-column tile; K = 200:
// three k-tiles and a tail of 8 (X's zero fill there meets W's); K = 328: six k-tiles, the
// 4-slot ring wraps. Frames of 20 tokens put frame boundaries inside 16-row fragments, so a
// thread's two rows can belong to different frames.

#[test]
fn adaln_bias_f16_ragged_with_kernel_stats() {
    let c = Case {
        epi: Epilogue::BiasF16,
        m: 200,
        n: 136,
        k: 200,
        bias: true,
        mods: Some((100, 20)),
        stats: Stats::Kernel,
        offset: 0.0,
    };
    check("adaln f16", 1, c, false);
}

#[test]
fn adaln_bias_f32_ring_wraps_race_checked_with_partial_stats() {
    // Partial pairs over 48 columns: 7 groups, the last 40 wide.
    let c = Case {
        epi: Epilogue::BiasF32,
        m: 77,
        n: 32,
        k: 328,
        bias: true,
        mods: Some((77, 11)),
        stats: Stats::Parts(48),
        offset: 0.0,
    };
    check("adaln f32 parts", 2, c, true);
}

#[test]
fn plain_ln_swiglu_with_a_large_mean() {
    // Rows centred near 40 with spreads of 0.3 to 3: (x - mean) loses the leading bits in
    // f32, as the tolerance allows; the f16 A tensor would lose far more. Dff = 72: a full
    // and an 8-column tile.
    let c = Case {
        epi: Epilogue::Swiglu,
        m: 150,
        n: 72,
        k: 136,
        bias: false,
        mods: None,
        stats: Stats::Parts(64),
        offset: 40.0,
    };
    check("ln swiglu", 3, c, true);
}

/// Persistent CTAs: 3 row tiles x 2 column tiles, walked by 2 CTAs (each ring running across
/// tiles), bit-identical to one CTA per tile.
#[test]
fn persistent_prologue_matches_one_cta_per_tile() {
    let c = Case {
        epi: Epilogue::BiasF16,
        m: 300,
        n: 200,
        k: 136,
        bias: true,
        mods: Some((300, 30)),
        stats: Stats::Kernel,
        offset: 5.0,
    };
    let inp = inputs(4, c);
    let stats = stats_of(&inp);
    let kernel = emu::kernel(c.epi.kernel_ln().unwrap()).unwrap();
    let want = launch(&inp, &stats, kernel, ThreadOrder::Forward, None).unwrap();
    compare("one CTA per tile", &want, &inp);
    for order in [ThreadOrder::Reverse, ThreadOrder::Shuffle(4)] {
        let got = launch(&inp, &stats, kernel, order, Some(2)).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "2 CTAs {order:?}: differs from one CTA per tile"
        );
    }
}

/// The gated residual's epilogue leaves each row's (mean, sum of squared deviations) of the
/// updated h over each 128-column tile (`stats_out`): checked against f64 over the kernel's
/// own h (264 columns: two full tiles and one of 8, 200 rows: a ragged row tile), then used
/// as the partial statistics of the next norm's prologue GEMM over that h, which must match
/// the reference. Race-checked.
#[test]
fn gated_residual_statistics_feed_the_prologue() {
    let (m, d, k) = (200, 264, 136);
    let (tokens, tokens_per_frame) = (100, 20);
    let mut rng = Rng::new(21);
    let mut f16s = |n: usize, range: f32| -> Vec<u16> {
        (0..n)
            .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
            .collect()
    };
    let a = f16s(m * k, 1.0);
    let w = f16s(d * k, 1.7 / (k as f32).sqrt());
    let mut rng = Rng::new(22);
    // A residual stream with an offset, so the tiles' means matter.
    let h0: Vec<f32> = (0..m * d).map(|_| 3.0 + rng.nonzero(-4.0, 4.0)).collect();
    let layout = GateLayout {
        frames: tokens / tokens_per_frame,
        mod_k: MOD_K,
        gate: 2,
        tokens,
        tokens_per_frame,
    };
    let mods: Vec<f32> = (0..layout.frames * MOD_K * d)
        .map(|_| rng.nonzero(-1.5, 1.5))
        .collect();
    let mut h = h0.clone();
    let parts = gemm_sm90::residual_stats_parts(d);
    assert_eq!(parts, 3);
    let mut stats = common::poisoned_f32(2 * m * parts);
    let buffers = Buffers {
        a: a.as_ptr(),
        w: w.as_ptr(),
        bias: std::ptr::null(),
        out: std::ptr::null_mut(),
        h: h.as_mut_ptr(),
        mods: mods.as_ptr(),
    };
    let epi = Epilogue::GatedResidual;
    let config = gemm_sm90::config(epi, m, d, k, Some(&layout)).unwrap();
    let mut p = gemm_sm90::params_emulated(epi, m, d, k, Some(&layout), &buffers).unwrap();
    p.stats_out = stats.as_mut_ptr();
    let kernel = emu::kernel(epi.kernel()).unwrap();
    // SAFETY: the maps describe a [m, k] and w [d, k]; h is (m, d), mods (frames, 6, d),
    // stats (m, parts) pairs; all live until the launch returns.
    race_checked(|| unsafe { emu::launch_with(kernel, config, &p, ThreadOrder::Shuffle(21)) })
        .unwrap_or_else(|e| panic!("gated residual with statistics: {e}"));
    let mut worst = 0.0f64;
    for r in 0..m {
        for g in 0..parts {
            let v = &h[r * d + g * 128..r * d + ((g + 1) * 128).min(d)];
            let n = v.len() as f64;
            let mean = v.iter().map(|&e| f64::from(e)).sum::<f64>() / n;
            let m2: f64 = v.iter().map(|&e| (f64::from(e) - mean).powi(2)).sum();
            let scale = v.iter().map(|&e| f64::from(e).abs()).sum::<f64>() / n;
            let (gm, g2) = (
                f64::from(stats[2 * (r * parts + g)]),
                f64::from(stats[2 * (r * parts + g) + 1]),
            );
            let (tm, t2) = (
                4.0 * n * U_F32 * scale,
                1e-5 * m2 + 4.0 * n * U_F32 * scale * scale,
            );
            assert!(
                (gm - mean).abs() <= tm,
                "row {r} tile {g}: mean {gm} against {mean}"
            );
            assert!(
                (g2 - m2).abs() <= t2,
                "row {r} tile {g}: M2 {g2} against {m2}"
            );
            worst = worst.max((gm - mean).abs() / tm).max((g2 - m2).abs() / t2);
        }
    }
    eprintln!("epilogue statistics: worst err/tol {worst:.3}");
    let c = Case {
        epi: Epilogue::BiasF16,
        m,
        n: 72,
        k: d,
        bias: true,
        mods: Some((tokens, tokens_per_frame)),
        stats: Stats::Parts(128),
        offset: 0.0,
    };
    let inp = inputs_for(23, c, Some(h));
    let kernel = emu::kernel(c.epi.kernel_ln().unwrap()).unwrap();
    let got = launch(&inp, &stats, kernel, ThreadOrder::Reverse, None)
        .unwrap_or_else(|e| panic!("prologue on the epilogue's statistics: {e}"));
    let worst = compare("prologue on the epilogue's statistics", &got, &inp);
    eprintln!("prologue on the epilogue's statistics: worst err/tol {worst:.3}");
}

/// `kernels/cuda/gemm_sm90.cu:<line>` of the one line containing `needle`.
fn site(needle: &str) -> String {
    common::site_in("cuda/gemm_sm90.cu", needle)
}

/// The consumers' loads of the f32 staging without the wait on the slot's full barrier:
/// the race checker names the TMA load of X and the consumer's read; the unmodified entry
/// is clean on the same inputs.
#[test]
fn planted_prologue_race_is_reported() {
    let c = Case {
        epi: Epilogue::BiasF16,
        m: 64,
        n: 64,
        k: 328,
        bias: false,
        mods: Some((64, 16)),
        stats: Stats::Parts(128),
        offset: 0.0,
    };
    let inp = inputs(9, c);
    let stats = stats_of(&inp);
    race_checked(|| {
        let clean = emu::kernel("gemm_sm90_ln_bias_f16").unwrap();
        let got = launch(&inp, &stats, clean, ThreadOrder::Shuffle(9), None)
            .unwrap_or_else(|e| panic!("clean kernel under the checker: {e}"));
        compare("clean kernel under the checker", &got, &inp);
        let variant = emu::variant("gemm_sm90_ln_bias_f16", "ln_no_full_wait").unwrap();
        let e = match launch(&inp, &stats, variant, ThreadOrder::Forward, None) {
            Ok(_) => panic!("the planted race was not reported"),
            Err(e) => e,
        };
        assert_eq!(e.kind, EmuErrorKind::Race, "{e}");
        // Either of the two X boxes of the k-tile, and the consumer's read of the staging.
        let tma = [
            site("ptx::tma_load_2d(a, &p.map_a"),
            site("ptx::tma_load_2d(a + T::kLnBox"),
        ];
        let read = site("// the staged X pair");
        for needle in [
            "read-after-write",
            "the TMA load issued by thread",
            read.as_str(),
        ] {
            assert!(e.message.contains(needle), "no {needle:?} in: {e}");
        }
        assert!(
            tma.iter()
                .any(|t| e.message.contains(&format!("cp.async.bulk.tensor at {t}"))),
            "neither X load ({tma:?}) is named: {e}"
        );
        eprintln!("planted prologue race: {e}");
    });
}

#[test]
fn prologue_contract_errors() {
    let x = vec![0f32; 64 * 64];
    let stats = vec![0f32; 2 * 64];
    let ln = LnPrologue {
        x: x.as_ptr(),
        stats: stats.as_ptr(),
        parts: 1,
        part_cols: 64,
        mods: None,
    };
    fn expect<T: std::fmt::Debug>(r: Result<T, String>, needle: &str) {
        let e = r.expect_err("must be rejected");
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    }
    assert!(gemm_sm90::ln_config(Epilogue::BiasF16, 64, 64, 64, &ln, None).is_ok());
    expect(
        gemm_sm90::ln_config(Epilogue::GatedResidual, 64, 64, 64, &ln, None),
        "gemm_sm90_gated_residual: no LayerNorm-prologue variant",
    );
    expect(
        gemm_sm90::ln_config(Epilogue::BiasF16, 64, 64, 72, &ln, None),
        "gemm_sm90_ln_bias_f16: 1 statistics pairs of 64 columns per row do not cover K = 72",
    );
    expect(
        gemm_sm90::ln_config(Epilogue::BiasF16, 64, 60, 64, &ln, None),
        "gemm_sm90_ln_bias_f16: N = 60",
    );
    let bad_mods = LnPrologue {
        mods: Some((
            x.as_ptr(),
            ModLayout {
                frames: 4,
                mod_k: 6,
                shift: 0,
                scale: 6,
                tokens: 64,
                tokens_per_frame: 16,
            },
        )),
        ..ln
    };
    expect(
        gemm_sm90::ln_config(Epilogue::BiasF16, 64, 64, 64, &bad_mods, None),
        "(the prologue's scale vector)",
    );
    let null = LnPrologue {
        stats: std::ptr::null(),
        ..ln
    };
    expect(
        gemm_sm90::ln_config(Epilogue::Swiglu, 64, 64, 64, &null, None),
        "must not be null",
    );
    expect(adaln::stats_config(0, 64), "ln_stats_rows_warp: M");
    expect(adaln::stats_config(4, 2048 * 9), "ln_stats_row_cta: D");
}
