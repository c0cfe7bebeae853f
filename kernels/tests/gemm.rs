//! The FP16 tensor-core GEMM (`kernels/cuda/gemm.cu`) in the emulator against an f64
//! reference computed from the same f16 inputs, for every fused epilogue, at the `tiny`
//! profile's exact shapes (M = 512 tokens, and 1024 for the CFG batch of 2), at a ragged
//! M = 1037, N = 768, K = 512, and at a shape with ragged N and a K tail; each in forward,
//! reverse and shuffled thread order, with poisoned outputs. Plus the shape contract of the
//! launch configs and the nvcc resource / SASS gates of the four entry points.
//!
//! Default tier (about a third of the emulator time of all cases): per entry point one
//! small ragged shape (ragged N, a K tail), plus the tiny profile's out projection (bias and
//! gated residual, M = 512, N = K = 256) and final layer. `STREAMDIT_FULL=1` adds the other
//! tiny shapes (QKV, W13, W2; M = 1024 for the CFG batch of 2) and the 1037 x 768 x 512
//! shapes.
//!
//! Race checker: the smallest case of each entry point (a ragged N and a K tail, so the
//! cp.async ring wraps) runs under `emu::racecheck` in the default tier; with
//! `STREAMDIT_FULL=1` every launch does.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};
use streamdit_kernels::gemm::{self, GateLayout};

/// Acceptance bound of the issue: relative L2 error against the f64 reference.
const REL_L2_MAX: f64 = 1e-3;
/// Unit roundoff of f32 (the accumulator) and of f16 (the stored outputs).
const U_F32: f64 = 1.0 / (1u64 << 24) as f64;
const U_F16: f64 = 1.0 / 2048.0;

/// f16 values (as bits) uniform in [-range, range), never zero, and the same values in f64.
fn random_f16(rng: &mut Rng, n: usize, range: f32) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect();
    (bits, vals)
}

fn f16_to_f64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect()
}

/// `(A W^T)[r, n]` in f64 and `sum_k |a w|` (the scale of the f32 accumulation error).
struct Product {
    value: Vec<f64>,
    abs: Vec<f64>,
}

fn product(a: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> Product {
    let mut value = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for r in 0..m {
        let ar = &a[r * k..(r + 1) * k];
        for c in 0..n {
            let wc = &w[c * k..(c + 1) * k];
            let (mut s, mut t) = (0.0, 0.0);
            for (x, y) in ar.iter().zip(wc) {
                s += x * y;
                t += (x * y).abs();
            }
            value[r * n + c] = s;
            abs[r * n + c] = t;
        }
    }
    Product { value, abs }
}

/// Errors of `got` against `want`, checked elementwise against `tol[i]`.
struct Report {
    rel_l2: f64,
    max_abs: f64,
    /// Largest |err| / tol (<= 1 passes).
    worst_share: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rel L2 {:.2e}, max abs {:.2e}, worst err/tol {:.3}",
            self.rel_l2, self.max_abs, self.worst_share
        )
    }
}

fn compare(what: &str, got: &[f64], want: &[f64], tol: &[f64]) -> Report {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den, mut max_abs, mut worst_share) = (0.0, 0.0, 0.0f64, 0.0f64);
    let mut first_bad = Vec::new();
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        // NaN (an element never written: outputs start poisoned) fails here.
        let within = err <= tol[i];
        if !within && first_bad.len() < 5 {
            first_bad.push((i, got[i], want[i], tol[i]));
        }
        let err = if err.is_nan() { f64::INFINITY } else { err };
        num += err * err;
        den += want[i] * want[i];
        max_abs = max_abs.max(err);
        worst_share = worst_share.max(err / tol[i]);
    }
    let report = Report {
        rel_l2: (num / den).sqrt(),
        max_abs,
        worst_share,
    };
    assert!(
        first_bad.is_empty(),
        "{what}: elements outside tolerance (index, got, want, tol): {first_bad:?}; {report}"
    );
    assert!(
        report.rel_l2 <= REL_L2_MAX,
        "{what}: relative L2 error {:e} > {REL_L2_MAX:e}",
        report.rel_l2
    );
    report
}

/// Tolerance of one element: `atol + rtol * |ref|`.
/// - atol: the f32 accumulation of K exact f16 products (mma products are exact; the sums
///   are f32 in some order) errs by at most gamma_K * sum_k |a w| with gamma_K ~ K * u_f32
///   (Higham, sequential summation; any summation tree is within this bound), scaled by the
///   epilogue's sensitivity to the accumulator (the gate for the residual, the SwiGLU
///   derivative bound).
/// - rtol: 2 * u_f16 for an f16 store (round to nearest: u_f16 relative, doubled for the
///   f32 epilogue arithmetic such as __expf before it), 8 * u_f32 for f32 outputs (bias add
///   and gate multiply in f32).
fn tolerance(k: usize, abs_sum: f64, sensitivity: f64, rtol: f64, want: f64) -> f64 {
    (k as f64 + 2.0) * U_F32 * abs_sum * sensitivity + rtol * want.abs() + 1e-30
}

/// # Safety
/// `params` mirrors the kernel's parameter struct; its pointers cover the kernel's accesses.
unsafe fn run<P: Copy>(name: &str, config: LaunchConfig, params: &P, order: ThreadOrder) {
    let _race = common::race_check_full();
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
        .unwrap_or_else(|e| panic!("{name} {order:?}: {e}"));
}

struct Inputs {
    a_bits: Vec<u16>,
    w_bits: Vec<u16>,
    bias_bits: Option<Vec<u16>>,
    prod: Product,
    bias: Vec<f64>,
}

fn inputs(seed: u64, m: usize, n: usize, k: usize, with_bias: bool) -> Inputs {
    let mut rng = Rng::new(seed);
    let (a_bits, a) = random_f16(&mut rng, m * k, 1.0);
    // Weights ~ 1/sqrt(K) so the products stay O(1), as in a trained layer.
    let (w_bits, w) = random_f16(&mut rng, n * k, 1.7 / (k as f32).sqrt());
    let (bias_bits, bias) = if with_bias {
        let (b, v) = random_f16(&mut rng, n, 0.5);
        (Some(b), v)
    } else {
        (None, vec![0.0; n])
    };
    let prod = product(&a, &w, m, n, k);
    Inputs {
        a_bits,
        w_bits,
        bias_bits,
        prod,
        bias,
    }
}

fn bias_ptr(b: &Option<Vec<u16>>) -> *const u16 {
    b.as_ref().map_or(std::ptr::null(), |v| v.as_ptr())
}

fn check_bias_f16(label: &str, seed: u64, m: usize, n: usize, k: usize, with_bias: bool) {
    let inp = inputs(seed, m, n, k, with_bias);
    let config = gemm::bias_f16_config(m, n, k).unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|i| inp.prod.value[i] + inp.bias[i % n])
        .collect();
    let tol: Vec<f64> = (0..m * n)
        .map(|i| tolerance(k, inp.prod.abs[i], 1.0, 2.0 * U_F16, want[i]))
        .collect();
    for order in ThreadOrder::all(seed) {
        let r = {
            let mut out = vec![0xffffu16; m * n];
            let params = gemm::GemmBiasF16Params {
                a: inp.a_bits.as_ptr(),
                w: inp.w_bits.as_ptr(),
                bias: bias_ptr(&inp.bias_bits),
                out: out.as_mut_ptr(),
                m: m as i32,
                n: n as i32,
                k: k as i32,
            };
            // SAFETY: a (m, k), w (n, k), bias (n) or null, out (m, n): the extents the kernel
            // reads and writes for this shape (validated by bias_f16_config).
            unsafe { run(gemm::KERNEL_BIAS_F16, config, &params, order) };
            compare(label, &f16_to_f64(&out), &want, &tol)
        };
        eprintln!("{label} M={m} N={n} K={k} bias={with_bias} {order:?}: {r}");
    }
}

/// `GELU_tanh(A W^T + bias)` stored f16 (Wan's FFN up projection). Tolerance: the
/// accumulation bound times `max |GELU'| = 1.13`, the f16 store (2 u16 |ref|), and the f32
/// evaluation of GELU itself, `8 u32 |z|` (the argument polynomial, sqrt(2/pi) rounded to
/// f32 and tanhf's ulps enter as absolute errors of `0.5 z tanh(.)`, largest where
/// `1 + tanh` cancels for negative z).
fn check_bias_gelu_f16(label: &str, seed: u64, m: usize, n: usize, k: usize, with_bias: bool) {
    let inp = inputs(seed, m, n, k, with_bias);
    let config = gemm::bias_gelu_f16_config(m, n, k).unwrap();
    let gelu = |z: f64| {
        0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
    };
    let z: Vec<f64> = (0..m * n)
        .map(|i| inp.prod.value[i] + inp.bias[i % n])
        .collect();
    let want: Vec<f64> = z.iter().map(|&z| gelu(z)).collect();
    let tol: Vec<f64> = (0..m * n)
        .map(|i| {
            tolerance(k, inp.prod.abs[i], 1.13, 2.0 * U_F16, want[i]) + 8.0 * U_F32 * z[i].abs()
        })
        .collect();
    for order in ThreadOrder::all(seed) {
        let r = {
            let mut out = vec![0xffffu16; m * n];
            let params = gemm::GemmBiasF16Params {
                a: inp.a_bits.as_ptr(),
                w: inp.w_bits.as_ptr(),
                bias: bias_ptr(&inp.bias_bits),
                out: out.as_mut_ptr(),
                m: m as i32,
                n: n as i32,
                k: k as i32,
            };
            // SAFETY: a (m, k), w (n, k), bias (n) or null, out (m, n): the extents of this
            // shape (validated by bias_gelu_f16_config).
            unsafe { run(gemm::KERNEL_BIAS_GELU_F16, config, &params, order) };
            compare(label, &f16_to_f64(&out), &want, &tol)
        };
        eprintln!("{label} M={m} N={n} K={k} bias={with_bias} {order:?}: {r}");
    }
}

fn check_bias_f32(label: &str, seed: u64, m: usize, n: usize, k: usize, with_bias: bool) {
    let inp = inputs(seed, m, n, k, with_bias);
    let config = gemm::bias_f32_config(m, n, k).unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|i| inp.prod.value[i] + inp.bias[i % n])
        .collect();
    let tol: Vec<f64> = (0..m * n)
        .map(|i| tolerance(k, inp.prod.abs[i], 1.0, 8.0 * U_F32, want[i]))
        .collect();
    for order in ThreadOrder::all(seed) {
        let r = {
            let mut out = common::poisoned_f32(m * n);
            let params = gemm::GemmBiasF32Params {
                a: inp.a_bits.as_ptr(),
                w: inp.w_bits.as_ptr(),
                bias: bias_ptr(&inp.bias_bits),
                out: out.as_mut_ptr(),
                m: m as i32,
                n: n as i32,
                k: k as i32,
            };
            // SAFETY: a (m, k), w (n, k), bias (n) or null, out (m, n) f32.
            unsafe { run(gemm::KERNEL_BIAS_F32, config, &params, order) };
            let got: Vec<f64> = out.iter().map(|&v| v as f64).collect();
            compare(label, &got, &want, &tol)
        };
        eprintln!("{label} M={m} N={n} K={k} bias={with_bias} {order:?}: {r}");
    }
}

fn check_swiglu(label: &str, seed: u64, m: usize, dff: usize, k: usize) {
    let inp = inputs(seed, m, 2 * dff, k, false);
    let config = gemm::swiglu_config(m, dff, k).unwrap();
    let n2 = 2 * dff;
    let silu = |z: f64| z / (1.0 + (-z).exp());
    let mut want = vec![0.0; m * dff];
    let mut tol = vec![0.0; m * dff];
    for r in 0..m {
        for c in 0..dff {
            let (u, g) = (inp.prod.value[r * n2 + c], inp.prod.value[r * n2 + dff + c]);
            let (eu, eg) = (inp.prod.abs[r * n2 + c], inp.prod.abs[r * n2 + dff + c]);
            want[r * dff + c] = silu(u) * g;
            // |SiLU'| <= 1.1: an accumulator error e_u moves the output by <= 1.1 |g| e_u,
            // and e_g by <= |SiLU(u)| e_g; tolerance() scales abs_sum by the sensitivity,
            // so pass the combined bound as abs_sum with sensitivity 1.
            let abs = 1.1 * g.abs() * eu + silu(u).abs() * eg;
            tol[r * dff + c] = tolerance(k, abs, 1.0, 2.0 * U_F16, want[r * dff + c]);
        }
    }
    for order in ThreadOrder::all(seed) {
        let r = {
            let mut out = vec![0xffffu16; m * dff];
            let params = gemm::GemmSwigluParams {
                a: inp.a_bits.as_ptr(),
                w13: inp.w_bits.as_ptr(),
                out: out.as_mut_ptr(),
                m: m as i32,
                dff: dff as i32,
                k: k as i32,
            };
            // SAFETY: a (m, k), w13 (2 dff, k), out (m, dff).
            unsafe { run(gemm::KERNEL_SWIGLU, config, &params, order) };
            compare(label, &f16_to_f64(&out), &want, &tol)
        };
        eprintln!("{label} M={m} Dff={dff} (W13 {n2}x{k}) K={k} {order:?}: {r}");
    }
}

/// `gate`: `Some((tokens, tokens_per_frame, gate index))` for a per-frame gate from a
/// random `[frames, 6, N]` modulation tensor, `None` for the ungated residual (null mods).
fn check_gated_residual(
    label: &str,
    seed: u64,
    (m, n, k): (usize, usize, usize),
    with_bias: bool,
    gate: Option<(usize, usize, usize)>,
) {
    let inp = inputs(seed, m, n, k, with_bias);
    let mod_k = 6;
    let layout = gate.map(|(tokens, tokens_per_frame, gate)| GateLayout {
        frames: tokens / tokens_per_frame,
        mod_k,
        gate,
        tokens,
        tokens_per_frame,
    });
    let config = gemm::gated_residual_config(m, n, k, layout.as_ref()).unwrap();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mods: Vec<f32> = match &layout {
        Some(l) => (0..l.frames * mod_k * n)
            .map(|_| rng.nonzero(-1.5, 1.5))
            .collect(),
        None => Vec::new(),
    };
    let gate_of = |r: usize, c: usize| match &layout {
        Some(l) => {
            let frame = (r % l.tokens) / l.tokens_per_frame;
            mods[(frame * mod_k + l.gate) * n + c] as f64
        }
        None => 1.0,
    };
    let h0: Vec<f32> = (0..m * n).map(|_| rng.nonzero(-4.0, 4.0)).collect();
    // Compare the update h - h0 (not h itself, whose size would hide accumulation errors).
    let mut want = vec![0.0; m * n];
    let mut tol = vec![0.0; m * n];
    for r in 0..m {
        for c in 0..n {
            let g = gate_of(r, c);
            let i = r * n + c;
            want[i] = g * (inp.prod.value[i] + inp.bias[c]);
            // The update is formed in f32 and added to h (|h0| <= 4): besides the
            // accumulation, the rounding of the final f32 add, up to u_f32 * |h|, shows
            // in h - h0.
            tol[i] = tolerance(k, inp.prod.abs[i], g.abs(), 8.0 * U_F32, want[i])
                + 2.0 * U_F32 * (h0[i].abs() as f64 + want[i].abs());
        }
    }
    for order in ThreadOrder::all(seed) {
        let r = {
            let mut h = h0.clone();
            let (tokens, tokens_per_frame, gate) = gate.unwrap_or((0, 0, 0));
            let params = gemm::GemmGatedResidualParams {
                a: inp.a_bits.as_ptr(),
                w: inp.w_bits.as_ptr(),
                bias: bias_ptr(&inp.bias_bits),
                h: h.as_mut_ptr(),
                mods: if layout.is_some() {
                    mods.as_ptr()
                } else {
                    std::ptr::null()
                },
                m: m as i32,
                n: n as i32,
                k: k as i32,
                mod_k: mod_k as i32,
                gate: gate as i32,
                tokens: tokens as i32,
                tokens_per_frame: tokens_per_frame as i32,
            };
            // SAFETY: a (m, k), w (n, k), bias (n) or null, h (m, n) f32, mods null or
            // (frames, mod_k, n) f32 with frames = tokens / tokens_per_frame (checked by
            // gated_residual_config).
            unsafe { run(gemm::KERNEL_GATED_RESIDUAL, config, &params, order) };
            let got: Vec<f64> = h
                .iter()
                .zip(&h0)
                .map(|(&x, &x0)| x as f64 - x0 as f64)
                .collect();
            compare(label, &got, &want, &tol)
        };
        eprintln!("{label} M={m} N={n} K={k} bias={with_bias} gate={gate:?} {order:?}: {r}");
    }
}

// tiny profile: D = 256, Dff = 768, 8 frames of 8 x 8 tokens = 512 tokens (1024 with CFG).
const TINY_D: usize = 256;
const TINY_DFF: usize = 768;
const TINY_TOKENS: usize = 512;
const TINY_TOKENS_PER_FRAME: usize = 64;

/// The tiny profile's rows: M = 512 (one batch element), and with `STREAMDIT_FULL=1` also
/// the CFG batch of 2 (M = 1024), which adds nothing the first does not cover but time.
fn tiny_rows() -> Vec<usize> {
    if common::full() {
        vec![TINY_TOKENS, 2 * TINY_TOKENS]
    } else {
        vec![TINY_TOKENS]
    }
}

#[test]
fn bias_f16_tiny_shapes() {
    for (i, &m) in tiny_rows().iter().enumerate() {
        let s = 10 + 4 * i as u64;
        if common::full() {
            check_bias_f16("qkv", s, m, 3 * TINY_D, TINY_D, true);
        }
        check_bias_f16("out/cross", s + 1, m, TINY_D, TINY_D, true);
    }
}

#[test]
fn bias_f16_ragged() {
    // The large ragged shape (several row and column tiles, ragged M) only with
    // STREAMDIT_FULL=1: it costs most of this file's time in the emulator.
    if common::full() {
        check_bias_f16("ragged", 20, 1037, 768, 512, true);
    }
    // Ragged column tile (200 = 128 + 72) and a K tail (200 = 6 * 32 + 8); no bias.
    race_checked(|| check_bias_f16("ragged N, K tail", 21, 77, 200, 200, false));
}

#[test]
fn swiglu_tiny_shapes() {
    if !common::full() {
        eprintln!("skipped: set STREAMDIT_FULL=1 (swiglu_ragged's small case runs by default)");
        return;
    }
    for (i, &m) in tiny_rows().iter().enumerate() {
        check_swiglu("w13", 30 + i as u64, m, TINY_DFF, TINY_D);
    }
}

#[test]
fn swiglu_ragged() {
    if common::full() {
        check_swiglu("ragged", 40, 1037, 768, 512);
    }
    // Dff = 200: a ragged 64-column tile (u and g guards), K tail.
    race_checked(|| check_swiglu("ragged Dff, K tail", 41, 77, 200, 200));
}

#[test]
fn gated_residual_tiny_shapes() {
    let gate = |g| Some((TINY_TOKENS, TINY_TOKENS_PER_FRAME, g));
    for (i, &m) in tiny_rows().iter().enumerate() {
        let s = 50 + 4 * i as u64;
        // attention out projection: h += g1 * (W_o o + b_o).
        check_gated_residual("attn out", s + 1, (m, TINY_D, TINY_D), true, gate(2));
        if common::full() {
            // w2: h += g2 * (W2 (SiLU(u) * g)), no bias.
            check_gated_residual("w2", s, (m, TINY_D, TINY_DFF), false, gate(5));
            // cross-attention out projection: h += W_co o + b_co, no gate.
            check_gated_residual("cross out", s + 2, (m, TINY_D, TINY_D), true, None);
        }
    }
}

#[test]
fn gated_residual_ragged() {
    // 1037 = 17 frames of 61 tokens.
    if common::full() {
        check_gated_residual("ragged", 60, (1037, 768, 512), true, Some((1037, 61, 2)));
    }
    // Two batch elements of 3 frames of 13 tokens, ragged N and a K tail.
    race_checked(|| {
        check_gated_residual(
            "ragged N, K tail",
            61,
            (78, 200, 200),
            false,
            Some((39, 13, 5)),
        )
    });
}

/// wan-tiny's FFN up (32 tokens, D = 48 -> Dff = 96: a ragged column tile and a K tail of
/// 16) and its text-embedding MLP (8 text rows, 32 -> 48); a ragged 130 x 264 x 200 without
/// bias; `STREAMDIT_FULL=1`: a 1.3B-shaped slice (K = D = 1536, 1024 of the 8960 columns).
#[test]
fn bias_gelu_f16_wan_shapes() {
    check_bias_gelu_f16("wan-tiny ffn.0", 80, 32, 96, 48, true);
    race_checked(|| check_bias_gelu_f16("wan-tiny text_embedding.0", 81, 8, 48, 32, true));
    check_bias_gelu_f16("ragged, no bias", 82, 130, 264, 200, false);
    if common::full() {
        check_bias_gelu_f16("1.3b ffn.0 slice", 83, 128, 1024, 1536, true);
    }
}

#[test]
fn bias_f32_shapes() {
    // tiny final layer: C * 4 = 32 outputs from D = 256.
    check_bias_f32("final", 70, TINY_TOKENS, 32, TINY_D, true);
    if common::full() {
        check_bias_f32("final cfg", 71, 2 * TINY_TOKENS, 32, TINY_D, true);
        check_bias_f32("ragged", 72, 1037, 768, 512, true);
    }
    race_checked(|| check_bias_f32("ragged N, K tail", 73, 77, 200, 200, false));
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let expect_err = |r: Result<LaunchConfig, String>, needle: &str| {
        let e = r.expect_err("shape must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    };
    expect_err(gemm::bias_f16_config(0, 256, 256), "M must be at least 1");
    expect_err(gemm::bias_f16_config(512, 100, 256), "N = 100");
    expect_err(gemm::bias_f32_config(512, 256, 12), "K = 12");
    expect_err(gemm::bias_f32_config(512, 256, 0), "K = 0");
    expect_err(gemm::swiglu_config(512, 100, 256), "N = 100");
    expect_err(
        gemm::bias_gelu_f16_config(512, 100, 256),
        "gemm_bias_gelu_f16: N = 100",
    );
    expect_err(
        gemm::bias_f16_config(65536 * 128, 256, 256),
        "grid's y limit",
    );
    expect_err(gemm::bias_f16_config(512, 256, 1 << 31), "exceeds i32");
    let layout = GateLayout {
        frames: 8,
        mod_k: 6,
        gate: 5,
        tokens: 512,
        tokens_per_frame: 64,
    };
    assert!(gemm::gated_residual_config(1024, 256, 768, Some(&layout)).is_ok());
    expect_err(
        gemm::gated_residual_config(1000, 256, 768, Some(&layout)),
        "batch elements",
    );
    let bad_gate = GateLayout { gate: 6, ..layout };
    expect_err(
        gemm::gated_residual_config(512, 256, 768, Some(&bad_gate)),
        "gate index 6",
    );
    let bad_frames = GateLayout {
        frames: 4,
        ..layout
    };
    expect_err(
        gemm::gated_residual_config(512, 256, 768, Some(&bad_frames)),
        "has 4",
    );
    let bad_tpf = GateLayout {
        tokens_per_frame: 60,
        ..layout
    };
    expect_err(
        gemm::gated_residual_config(512, 256, 768, Some(&bad_tpf)),
        "whole number of frames",
    );
    expect_err(
        gemm::gated_residual_config(512, 250, 768, Some(&layout)),
        "N = 250",
    );
}

/// The shared-memory swizzle of gemm.cu (`swizzle(row, chunk)`: 64-byte rows of four 16-byte
/// chunks, chunk c of row r stored at c ^ ((r >> 1) & 3)), mirrored here: every ldmatrix
/// phase (8 lanes reading one logical chunk of 8 consecutive rows starting at a multiple of
/// 8, which is how the kernel's A and W fragment addresses fall) touches all 32 banks once,
/// and the layout is a bijection within each row. The emulator tests above prove the loads
/// and the ldmatrix reads use the same mapping.
#[test]
fn swizzle_is_bank_conflict_free() {
    let byte = |row: usize, chunk: usize| row * 64 + ((chunk ^ ((row >> 1) & 3)) * 16);
    for r0 in (0..gemm::BLOCK_M as usize).step_by(8) {
        for c in 0..4 {
            let mut banks = [0u32; 32];
            for r in r0..r0 + 8 {
                for word in 0..4 {
                    banks[(byte(r, c) / 4 + word) % 32] += 1;
                }
            }
            assert!(
                banks.iter().all(|&b| b == 1),
                "rows {r0}.., chunk {c}: {banks:?}"
            );
        }
        for r in r0..r0 + 8 {
            let mut slots: Vec<usize> = (0..4).map(|c| byte(r, c) - r * 64).collect();
            slots.sort();
            assert_eq!(slots, vec![0, 16, 32, 48]);
        }
    }
    // Without the XOR, rows r and r + 2 collide: the check above would fail.
    let plain = |row: usize, chunk: usize| (row * 64 + chunk * 16) / 4 % 32;
    assert_eq!(plain(0, 0), plain(2, 0));
}

#[test]
fn gemm_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    let kernels = [
        gemm::KERNEL_BIAS_F16,
        gemm::KERNEL_GATED_RESIDUAL,
        gemm::KERNEL_SWIGLU,
        gemm::KERNEL_BIAS_F32,
        gemm::KERNEL_BIAS_GELU_F16,
    ];
    for kernel in kernels {
        for arch in ["sm_80", "sm_90"] {
            let r = common::resources("gemm", kernel, arch);
            eprintln!(
                "{kernel} {arch}: {} regs, {} B static smem + {} B dynamic, stack {}, spills \
                 {}/{}, HMMA {}, LDSM {}, LDGSTS {}, LDG.128 {}",
                r.registers,
                r.shared_bytes,
                gemm::SHARED_BYTES,
                r.stack_frame_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                r.hmma,
                r.ldsm,
                r.ldgsts,
                r.ldg128
            );
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
                (0, 0, 0),
                "{kernel} spills on {arch}: {r:?}"
            );
            // __launch_bounds__(256, 2): two CTAs per SM need <= 128 registers per thread.
            assert!(r.registers <= 128, "{kernel} on {arch}: {r:?}");
            assert!(
                r.hmma > 0 && r.ldsm > 0 && r.ldgsts > 0,
                "{kernel} on {arch}: the main loop must be HMMA, LDSM and LDGSTS: {r:?}"
            );
        }
    }
}
