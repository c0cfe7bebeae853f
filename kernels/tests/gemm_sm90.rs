//! The sm_90a warp-specialised GEMM (`kernels/cuda/gemm_sm90.cu`: TMA -> 4-stage mbarrier
//! ring -> wgmma m64n128k16, one producer and two consumer warpgroups) in the emulator,
//! against an f64 reference computed from the same f16 inputs, for every fused epilogue, at
//! shapes with ragged M and N tiles (TMA zero fill, predicated stores), a K tail and a K long
//! enough that the ring wraps; each in forward, reverse and shuffled thread order with
//! poisoned outputs. Under the race checker: one case per entry point clean, and two planted
//! races reported with both sites (a stage released before its wgmma retired; a wgmma that
//! does not wait for the stage's TMA data). Plus the shape contract and the ptxas / SASS
//! gates of the sm_90a cubin (no spills, the register cap, HGMMA and UTMALDG present).
//!
//! `STREAMDIT_FULL=1` adds the tiny profile's shapes and runs every launch under the race
//! checker.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};
use streamdit_kernels::gemm::GateLayout;
use streamdit_kernels::gemm_sm90::{self, Buffers, Epilogue};

/// Relative L2 error bound of the mma.sync GEMM's tests (tests/gemm.rs).
const REL_L2_MAX: f64 = 1e-3;
const U_F32: f64 = 1.0 / (1u64 << 24) as f64;
const U_F16: f64 = 1.0 / 2048.0;

/// One GEMM call: the epilogue, M, N (output columns; Dff for SwiGLU), K, whether there is
/// a bias, and for the gated residual `Some((tokens, tokens_per_frame, gate index))` of a
/// random `[frames, 6, N]` modulation tensor (None: ungated, null mods).
#[derive(Clone, Copy, Debug)]
struct Case {
    epi: Epilogue,
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    gate: Option<(usize, usize, usize)>,
}

const fn case(epi: Epilogue, m: usize, n: usize, k: usize, bias: bool) -> Case {
    Case {
        epi,
        m,
        n,
        k,
        bias,
        gate: None,
    }
}

const MOD_K: usize = 6;

/// Random inputs of a case and the reference with its per-element tolerance.
struct Inputs {
    case: Case,
    a: Vec<u16>,
    w: Vec<u16>,
    bias: Option<Vec<u16>>,
    mods: Vec<f32>,
    h0: Vec<f32>,
    layout: Option<GateLayout>,
    want: Vec<f64>,
    tol: Vec<f64>,
}

fn random_f16(rng: &mut Rng, n: usize, range: f32) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
    (bits, vals)
}

/// Tolerance `atol + rtol |ref|` (as tests/gemm.rs): the f32 accumulation of K exact f16
/// products errs by at most about `K u_f32 sum |a w|` in any summation order (wgmma's
/// order on a GPU is not the emulator's sequential one), times the epilogue's sensitivity;
/// rtol covers the output rounding (f16 store, or the f32 epilogue arithmetic).
fn tolerance(k: usize, abs_sum: f64, sensitivity: f64, rtol: f64, want: f64) -> f64 {
    (k as f64 + 2.0) * U_F32 * abs_sum * sensitivity + rtol * want.abs() + 1e-30
}

fn inputs(seed: u64, c: Case) -> Inputs {
    let mut rng = Rng::new(seed);
    let (m, n, k) = (c.m, c.n, c.k);
    let rows = c.epi.w_rows(n);
    let (a, av) = random_f16(&mut rng, m * k, 1.0);
    // Weights ~ 1/sqrt(K) so the products stay O(1), as in a trained layer.
    let (w, wv) = random_f16(&mut rng, rows * k, 1.7 / (k as f32).sqrt());
    let (bias, bv) = if c.bias {
        let (b, v) = random_f16(&mut rng, n, 0.5);
        (Some(b), v)
    } else {
        (None, vec![0.0; n])
    };
    // (A W^T)[r, j] and sum_k |a w| over all W rows j.
    let mut prod = vec![0.0; m * rows];
    let mut abs = vec![0.0; m * rows];
    for r in 0..m {
        for j in 0..rows {
            let (mut s, mut t) = (0.0, 0.0);
            for kk in 0..k {
                let p = av[r * k + kk] * wv[j * k + kk];
                s += p;
                t += p.abs();
            }
            prod[r * rows + j] = s;
            abs[r * rows + j] = t;
        }
    }
    let layout = c.gate.map(|(tokens, tokens_per_frame, gate)| GateLayout {
        frames: tokens / tokens_per_frame,
        mod_k: MOD_K,
        gate,
        tokens,
        tokens_per_frame,
    });
    let mods: Vec<f32> = match &layout {
        Some(l) => (0..l.frames * MOD_K * n)
            .map(|_| rng.nonzero(-1.5, 1.5))
            .collect(),
        None => Vec::new(),
    };
    let h0: Vec<f32> = if c.epi == Epilogue::GatedResidual {
        (0..m * n).map(|_| rng.nonzero(-4.0, 4.0)).collect()
    } else {
        Vec::new()
    };
    let gelu = |z: f64| {
        0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
    };
    let silu = |z: f64| z / (1.0 + (-z).exp());
    let mut want = vec![0.0; m * n];
    let mut tol = vec![0.0; m * n];
    for r in 0..m {
        for j in 0..n {
            let i = r * n + j;
            let (p, e) = (prod[r * rows + j], abs[r * rows + j]);
            let z = p + bv[j];
            (want[i], tol[i]) = match c.epi {
                Epilogue::BiasF16 => (z, tolerance(k, e, 1.0, 2.0 * U_F16, z)),
                Epilogue::BiasF32 => (z, tolerance(k, e, 1.0, 8.0 * U_F32, z)),
                Epilogue::BiasGeluF16 => {
                    // max |GELU'| = 1.13, plus GELU's own f32 evaluation (tests/gemm.rs).
                    let g = gelu(z);
                    (
                        g,
                        tolerance(k, e, 1.13, 2.0 * U_F16, g) + 8.0 * U_F32 * z.abs(),
                    )
                }
                Epilogue::GatedResidual => {
                    let g = match &layout {
                        Some(l) => {
                            let frame = (r % l.tokens) / l.tokens_per_frame;
                            f64::from(mods[(frame * MOD_K + l.gate) * n + j])
                        }
                        None => 1.0,
                    };
                    // The update h - h0 is compared; the final f32 add rounds at |h|.
                    let u = g * z;
                    (
                        u,
                        tolerance(k, e, g.abs(), 8.0 * U_F32, u)
                            + 2.0 * U_F32 * (f64::from(h0[i].abs()) + u.abs()),
                    )
                }
                Epilogue::Swiglu => {
                    let (gv, ge) = (prod[r * rows + n + j], abs[r * rows + n + j]);
                    let out = silu(p) * gv;
                    // |SiLU'| <= 1.1: errors e_u, e_g move the output by 1.1 |g| e_u and
                    // |SiLU(u)| e_g.
                    let sens = 1.1 * gv.abs() * e + silu(p).abs() * ge;
                    (out, tolerance(k, sens, 1.0, 2.0 * U_F16, out))
                }
            };
        }
    }
    Inputs {
        case: c,
        a,
        w,
        bias,
        mods,
        h0,
        layout,
        want,
        tol,
    }
}

/// Runs the case with `kernel` (the entry point or a variant of it): the output as f64 (for
/// the gated residual the update h - h0), every output element starting as NaN.
fn launch(inp: &Inputs, kernel: emu::Kernel, order: ThreadOrder) -> Result<Vec<f64>, EmuError> {
    launch_ctas(inp, kernel, order, None)
}

/// [`launch`] with at most `ctas` persistent CTAs (none: one CTA per output tile).
fn launch_ctas(
    inp: &Inputs,
    kernel: emu::Kernel,
    order: ThreadOrder,
    ctas: Option<u32>,
) -> Result<Vec<f64>, EmuError> {
    let c = inp.case;
    let (m, n) = (c.m, c.n);
    let mut out16 = vec![0xffffu16; m * n];
    let mut out32 = common::poisoned_f32(m * n);
    let mut h = inp.h0.clone();
    let out: *mut std::ffi::c_void = match c.epi {
        Epilogue::BiasF32 => out32.as_mut_ptr().cast(),
        Epilogue::GatedResidual => std::ptr::null_mut(),
        _ => out16.as_mut_ptr().cast(),
    };
    let buffers = Buffers {
        a: inp.a.as_ptr(),
        w: inp.w.as_ptr(),
        bias: inp.bias.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
        out,
        h: if c.epi == Epilogue::GatedResidual {
            h.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        },
        mods: if inp.layout.is_some() {
            inp.mods.as_ptr()
        } else {
            std::ptr::null()
        },
    };
    let config = match ctas {
        Some(ctas) => {
            gemm_sm90::config_persistent(c.epi, m, n, c.k, inp.layout.as_ref(), ctas).unwrap()
        }
        None => gemm_sm90::config(c.epi, m, n, c.k, inp.layout.as_ref()).unwrap(),
    };
    let params = gemm_sm90::params_emulated(c.epi, m, n, c.k, inp.layout.as_ref(), &buffers)
        .unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: the tensor maps describe a [m, k] and w [w_rows, k] (their vectors); bias is
    // (n) or null, out16/out32 (m, n), h (m, n) for the residual, mods (frames, 6, n) or
    // null: the extents config and params checked for this shape; all live until the
    // launch returns.
    unsafe { emu::launch_with(kernel, config, &params, order) }?;
    Ok(match c.epi {
        Epilogue::BiasF32 => out32.iter().map(|&v| f64::from(v)).collect(),
        Epilogue::GatedResidual => h
            .iter()
            .zip(&inp.h0)
            .map(|(&x, &x0)| f64::from(x) - f64::from(x0))
            .collect(),
        _ => out16.iter().map(|&b| f16::from_bits(b).to_f64()).collect(),
    })
}

/// Elementwise check against the tolerance (a NaN, i.e. an element never written, fails),
/// and the relative L2 error; returns (rel L2, worst err/tol).
fn compare(label: &str, got: &[f64], inp: &Inputs) -> (f64, f64) {
    let (mut num, mut den, mut worst) = (0.0, 0.0, 0.0f64);
    let mut bad = Vec::new();
    for (i, ((&g, &want), &tol)) in got.iter().zip(&inp.want).zip(&inp.tol).enumerate() {
        // NaN (an element never written) is outside every tolerance.
        let err = (g - want).abs();
        let within = err <= tol;
        if !within && bad.len() < 5 {
            bad.push((i, g, want, tol));
        }
        let err = if err.is_nan() { f64::INFINITY } else { err };
        num += err * err;
        den += want * want;
        worst = worst.max(err / tol);
    }
    let rel = (num / den).sqrt();
    assert!(
        bad.is_empty(),
        "{label}: elements outside tolerance (index, got, want, tol): {bad:?}; rel L2 {rel:e}"
    );
    assert!(rel <= REL_L2_MAX, "{label}: relative L2 error {rel:e}");
    (rel, worst)
}

/// The case in every thread order; the first order under the race checker when `checked`
/// (and every launch with `STREAMDIT_FULL=1`).
fn check(label: &str, seed: u64, c: Case, checked: bool) {
    let _race = common::race_check_full();
    let inp = inputs(seed, c);
    let kernel = emu::kernel(c.epi.kernel()).unwrap_or_else(|e| panic!("{e}"));
    for (i, order) in ThreadOrder::all(seed).into_iter().enumerate() {
        let _check = common::race_check_case(checked && i == 0);
        let t = std::time::Instant::now();
        let got =
            launch(&inp, kernel, order).unwrap_or_else(|e| panic!("{label} {c:?} {order:?}: {e}"));
        let (rel, worst) = compare(&format!("{label} {order:?}"), &got, &inp);
        eprintln!(
            "{label} {:?} M={} N={} K={} bias={} gate={:?} {order:?}{}: rel L2 {rel:.2e}, \
             worst err/tol {worst:.3}, {:.2} s",
            c.epi,
            c.m,
            c.n,
            c.k,
            c.bias,
            c.gate,
            if emu::racecheck_enabled() {
                " (race-checked)"
            } else {
                ""
            },
            t.elapsed().as_secs_f64()
        );
    }
}

// Shapes: M = 200 is a full and a partial 128-row tile (the second consumer of the partial
// tile has 8 real rows); N = 136 a full and an 8-column tile; K = 200 three full k-tiles
// and a tail of 8; K = 328 six k-tiles, so the 4-slot ring wraps and slots are refilled.

#[test]
fn bias_f16_ragged_tiles_and_k_tail() {
    check(
        "ragged",
        1,
        case(Epilogue::BiasF16, 200, 136, 200, true),
        false,
    );
    // One CTA, the ring wrapping, no bias: the race-checked case.
    check(
        "ring wraps",
        2,
        case(Epilogue::BiasF16, 77, 64, 328, false),
        true,
    );
}

/// Persistent CTAs: each CTA walks every `ctas`-th output tile in the grouped order, its
/// mbarrier ring running on across tiles (the next tile's loads start during this tile's
/// epilogue). 10 row tiles (a full group of 8 and a partial group of 2, the last tile
/// ragged) by 3 column tiles (the last 8 columns wide), 3 k-tiles each: with 1, 4 and 7
/// CTAs (rings that wrap inside and across tiles) the output is within tolerance and
/// bit-identical to one CTA per tile, in several thread orders; 4 CTAs once under the race
/// checker (slot reuse across a tile boundary).
#[test]
fn persistent_ctas_walk_tiles_like_one_cta_per_tile() {
    let c = case(Epilogue::BiasF16, 9 * 128 + 5, 264, 136, true);
    let inp = inputs(31, c);
    let kernel = emu::kernel(c.epi.kernel()).unwrap();
    let want = launch(&inp, kernel, ThreadOrder::Forward).unwrap();
    let (rel, _) = compare("one CTA per tile", &want, &inp);
    eprintln!("persistent case, one CTA per tile: rel L2 {rel:.2e}");
    for ctas in [1, 4, 7] {
        for order in [
            ThreadOrder::Forward,
            ThreadOrder::Reverse,
            ThreadOrder::Shuffle(3),
        ] {
            let got = launch_ctas(&inp, kernel, order, Some(ctas))
                .unwrap_or_else(|e| panic!("{ctas} CTAs {order:?}: {e}"));
            compare(&format!("{ctas} CTAs {order:?}"), &got, &inp);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ctas} CTAs {order:?}: differs from one CTA per tile");
        }
    }
    let _race = emu::racecheck(true);
    let got = launch_ctas(&inp, kernel, ThreadOrder::Shuffle(5), Some(4))
        .unwrap_or_else(|e| panic!("4 CTAs under the race checker: {e}"));
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn bias_gelu_f16() {
    check(
        "gelu",
        3,
        case(Epilogue::BiasGeluF16, 77, 264, 136, true),
        true,
    );
}

#[test]
fn bias_f32_final_layer_width() {
    // The final layer's 32 outputs (C * 4) fill a quarter of a column tile.
    check(
        "final",
        4,
        case(Epilogue::BiasF32, 130, 32, 328, true),
        true,
    );
}

#[test]
fn gated_residual_per_frame_gate_and_ungated() {
    // Two batch elements of 3 frames of 32 tokens; gate g1 (index 2).
    let gated = Case {
        gate: Some((96, 32, 2)),
        ..case(Epilogue::GatedResidual, 192, 144, 200, true)
    };
    check("gated", 5, gated, true);
    // The cross-attention output: no gate (null mods), no bias.
    check(
        "ungated",
        6,
        case(Epilogue::GatedResidual, 70, 72, 88, false),
        false,
    );
}

#[test]
fn swiglu_pairs_u_and_g_columns() {
    // Dff = 72: a full 64-column tile and an 8-column one whose u box runs into g rows and
    // whose g box runs past W13's end (zero fill); both masked by the epilogue.
    check(
        "swiglu",
        7,
        case(Epilogue::Swiglu, 150, 72, 136, false),
        true,
    );
}

/// The tiny profile's shapes (D = 256, Dff = 768, 512 tokens): QKV, out projection, FFN
/// up (SwiGLU), FFN down (gated residual), final layer.
#[test]
fn tiny_profile_shapes() {
    if !common::full() {
        eprintln!("skipped: set STREAMDIT_FULL=1 (the ragged cases above run by default)");
        return;
    }
    let gate = |g| Some((512, 64, g));
    check(
        "qkv",
        10,
        case(Epilogue::BiasF16, 512, 768, 256, true),
        false,
    );
    check(
        "w13",
        11,
        case(Epilogue::Swiglu, 512, 768, 256, false),
        false,
    );
    let w2 = Case {
        gate: gate(5),
        ..case(Epilogue::GatedResidual, 512, 256, 768, false)
    };
    check("w2", 12, w2, false);
    check(
        "final",
        13,
        case(Epilogue::BiasF32, 512, 32, 256, true),
        false,
    );
    check(
        "ragged large",
        14,
        case(Epilogue::BiasGeluF16, 1037, 776, 520, true),
        false,
    );
}

/// `kernels/cuda/gemm_sm90.cu:<line>` of the one line containing `needle`.
fn site(needle: &str) -> String {
    common::site_in("cuda/gemm_sm90.cu", needle)
}

fn assert_race(label: &str, r: Result<Vec<f64>, EmuError>, needles: &[String]) {
    let e = match r {
        Ok(_) => panic!("{label}: the planted race was not reported"),
        Err(e) => e,
    };
    assert_eq!(e.kind, EmuErrorKind::Race, "{label}: {e}");
    for n in needles {
        assert!(e.message.contains(n.as_str()), "{label}: no {n:?} in: {e}");
    }
    eprintln!("{label}: {e}");
}

/// The two barrier protocols of the ring, each broken in a test-only variant, are named by
/// the race checker with both sites; the unmodified kernel is clean on the same inputs
/// (one CTA, six k-tiles: every slot is refilled).
#[test]
fn planted_pipeline_races_are_reported() {
    let inp = inputs(9, case(Epilogue::BiasF16, 100, 64, 384, true));
    race_checked(|| {
        let clean = emu::kernel("gemm_sm90_bias_f16").unwrap();
        let got = launch(&inp, clean, ThreadOrder::Shuffle(9))
            .unwrap_or_else(|e| panic!("clean kernel under the checker: {e}"));
        compare("clean kernel under the checker", &got, &inp);

        let wgmma = format!(
            "wgmma.mma_async.f32.f16 at {}",
            site("ptx::wgmma_f16_ss<T::kBN>(acc, kmajor_sw128_desc(a, j)")
        );
        let tma_a = format!(
            "cp.async.bulk.tensor at {}",
            site("ptx::tma_load_2d(a, &p.map_a")
        );
        let early = emu::variant("gemm_sm90_bias_f16", "early_release").unwrap();
        assert_race(
            "stage released before its wgmma retired",
            launch(&inp, early, ThreadOrder::Reverse),
            &[
                "write-after-read".to_string(),
                format!("first:  {wgmma}"),
                "second: cp.async.bulk.tensor at kernels/cuda/gemm_sm90.cu:".to_string(),
                "the wgmma of warpgroup".to_string(),
                "the TMA load issued by thread".to_string(),
            ],
        );
        let no_wait = emu::variant("gemm_sm90_bias_f16", "no_full_wait").unwrap();
        assert_race(
            "wgmma without the full-barrier wait",
            launch(&inp, no_wait, ThreadOrder::Forward),
            &[
                "read-after-write".to_string(),
                format!("first:  {tma_a}"),
                format!("second: {wgmma}"),
                "the TMA load issued by thread".to_string(),
                "the wgmma of warpgroup".to_string(),
            ],
        );
    });
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    fn expect_err<T: std::fmt::Debug>(r: Result<T, String>, needle: &str) {
        let e = r.expect_err("must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    }
    use Epilogue::*;
    expect_err(
        gemm_sm90::config(BiasF16, 0, 256, 256, None),
        "gemm_sm90_bias_f16: M must be at least 1",
    );
    expect_err(gemm_sm90::config(BiasF32, 512, 100, 256, None), "N = 100");
    expect_err(
        gemm_sm90::config(Swiglu, 512, 100, 256, None),
        "gemm_sm90_swiglu: N = 100",
    );
    expect_err(gemm_sm90::config(BiasGeluF16, 512, 256, 12, None), "K = 12");
    expect_err(
        gemm_sm90::config_persistent(BiasF16, 512, 256, 256, None, 0),
        "at least one CTA",
    );
    expect_err(
        gemm_sm90::config(BiasF16, 512, 256, 1 << 31, None),
        "exceeds i32",
    );
    let layout = GateLayout {
        frames: 8,
        mod_k: 6,
        gate: 5,
        tokens: 512,
        tokens_per_frame: 64,
    };
    assert!(gemm_sm90::config(GatedResidual, 1024, 256, 768, Some(&layout)).is_ok());
    expect_err(
        gemm_sm90::config(GatedResidual, 1000, 256, 768, Some(&layout)),
        "gemm_sm90_gated_residual: M = 1000 must be a whole number of batch elements",
    );
    expect_err(
        gemm_sm90::config(BiasF16, 1024, 256, 768, Some(&layout)),
        "only gemm_sm90_gated_residual takes one",
    );
    let none = Buffers {
        a: std::ptr::null(),
        w: std::ptr::null(),
        bias: std::ptr::null(),
        out: std::ptr::null_mut(),
        h: std::ptr::null_mut(),
        mods: std::ptr::null(),
    };
    expect_err(
        gemm_sm90::params_emulated(BiasF16, 64, 64, 64, None, &none),
        "A must not be null",
    );
    let a = vec![0u16; 64 * 64];
    let odd = Buffers {
        a: a.as_ptr().wrapping_add(1),
        w: a.as_ptr(),
        out: a.as_ptr() as *mut _,
        ..none
    };
    // A misaligned operand is refused by the tensor-map rules (cuTensorMapEncodeTiled).
    expect_err(
        gemm_sm90::params_emulated(BiasF16, 64, 64, 64, None, &odd),
        "tensor map of A: cuTensorMapEncodeTiled: globalAddress",
    );
}

/// The sm_90a cubin: no spills or stack; at most the 168 registers per thread that 384
/// threads on one SM allow at launch (the consumers then raise theirs to 232 with
/// setmaxnreg); the main loop is wgmma (HGMMA, 4 k16 steps per k-tile) fed by TMA
/// (UTMALDG, 3 boxes per stage), with no mma.sync, ldmatrix or cp.async left.
#[test]
fn gemm_sm90_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    // Every entry, and the LayerNorm-prologue entries (tests/gemm_sm90_ln.rs: 4 UTMALDG, two
    // X boxes and two W boxes).
    let ln =
        [Epilogue::BiasF16, Epilogue::BiasF32, Epilogue::Swiglu].map(|e| e.kernel_ln().unwrap());
    for kernel in Epilogue::ALL.map(Epilogue::kernel).into_iter().chain(ln) {
        let r = common::resources("gemm_sm90", kernel, "sm_90a");
        eprintln!(
            "{kernel} sm_90a: {} regs, {} B static smem + {} B dynamic, stack {}, spills {}/{}, \
             HGMMA {}, UTMALDG {}, HMMA {}, LDSM {}, LDGSTS {}",
            r.registers,
            r.shared_bytes,
            if kernel.contains("_ln_") {
                gemm_sm90::LN_SHARED_BYTES
            } else {
                gemm_sm90::SHARED_BYTES
            },
            r.stack_frame_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.hgmma,
            r.utmaldg,
            r.hmma,
            r.ldsm,
            r.ldgsts
        );
        assert!(r.sass, "{kernel}: SASS not counted: {r:?}");
        assert_eq!(
            (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
            (0, 0, 0),
            "{kernel} spills: {r:?}"
        );
        assert!(r.registers <= 168, "{kernel}: {r:?}");
        assert!(
            r.hgmma >= 4 && r.utmaldg >= 3,
            "{kernel}: the main loop must be HGMMA fed by UTMALDG: {r:?}"
        );
        assert!(
            !r.wgmma_serialized,
            "{kernel}: ptxas serialized its wgmma (C7518): {r:?}"
        );
        assert_eq!(
            (r.hmma, r.ldsm, r.ldgsts),
            (0, 0, 0),
            "{kernel}: no mma.sync path: {r:?}"
        );
    }
}
