//! The Wan VAE decoder's non-convolution kernels (`kernels/cuda/vae.cu`) in the emulator
//! against the f64 references of `streamdit_kernels::vae`: the channel RMS norm (+ SiLU) at
//! the VAE's widths 96 / 192 / 384 (in place and out of place, a zero pixel), the row
//! softmax (padding columns, large score offsets, a 6240-key row), and the mid block's
//! per-frame attention as the device runs it: `conv1x1` (q, k), `gemm_bias_f16` (V^T),
//! `gemm_bias_f32` (S = Q K^T), `softmax_rows_f16`, `gemm_bias_f16` (O = P V) and `conv1x1`
//! (proj + residual, value bias folded), against the module's f64 definition. Every case
//! runs in forward, reverse and shuffled thread order with poisoned outputs and fresh random
//! non-zero inputs; one small case of each kernel runs under the race checker in the
//! default tier, every launch with `STREAMDIT_FULL=1`, which also runs the larger cases.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};
use streamdit_kernels::{conv, gemm, vae};

const U_F32: f64 = 1.0 / (1u64 << 24) as f64;
const U_F16: f64 = 1.0 / 2048.0;
/// Half the spacing of f16 subnormals.
const F16_SUBNORMAL_HALF_ULP: f64 = 1.0 / (1u64 << 25) as f64;
const POISON_F16: u16 = 0x7fff;

fn random_f16(rng: &mut Rng, n: usize, range: f32) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
        .collect();
    let vals = f16_to_f64(&bits);
    (bits, vals)
}

fn f16_to_f64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect()
}

/// Every element within its tolerance (NaN, an unwritten element, fails); returns the
/// largest err / tol.
fn compare(what: &str, got: &[f64], want: &[f64], tol: &[f64]) -> f64 {
    compare_l2(what, got, want, tol).0
}

/// [`compare`], also returning the relative L2 error `|got - want| / |want|`.
fn compare_l2(what: &str, got: &[f64], want: &[f64], tol: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    let (mut num, mut den) = (0.0, 0.0);
    let mut bad = Vec::new();
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        num += err * err;
        den += want[i] * want[i];
        if err.is_nan() || err > tol[i] {
            bad.push((i, got[i], want[i], tol[i]));
        } else if tol[i] > 0.0 {
            worst = worst.max(err / tol[i]);
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements outside tolerance (index, got, want, tol): {:?}",
        bad.len(),
        got.len(),
        &bad[..bad.len().min(5)]
    );
    (worst, (num / den).sqrt())
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

// ---------------------------------------------------------------------------------------
// RMS norm over channels.
// ---------------------------------------------------------------------------------------

/// Tolerance: the f16 store (`u_f16 |ref|` + half a subnormal spacing) and the f32 math:
/// the sum of squares of C terms and the butterfly (`(C + 8) u_f32` relative, halved by the
/// square root), the root, division and two products (a few u_f32), on the pre-activation,
/// times SiLU's slope (<= 1.1), plus `__expf`'s few u_f32 of the SiLU.
fn check_rms(label: &str, seed: u64, pixels: usize, c: usize, silu: bool, in_place: bool) {
    let mut rng = Rng::new(seed);
    let (mut x, _) = random_f16(&mut rng, pixels * c, 2.0);
    // Pixel 1 (when there is one) is all zeros: the 1e-12 floor keeps it 0, never NaN.
    if pixels > 1 {
        x[c..2 * c].fill(0);
    }
    let xv = f16_to_f64(&x);
    let (gamma, gv) = random_f16(&mut rng, c, 1.5);
    let (want, pre) = vae::rms_norm_reference(c, &xv, &gv, silu).unwrap();
    let tol: Vec<f64> = (0..want.len())
        .map(|i| {
            U_F16 * want[i].abs()
                + F16_SUBNORMAL_HALF_ULP
                + 1.1 * (c as f64 / 2.0 + 16.0) * U_F32 * pre[i].abs()
                + 8.0 * U_F32 * want[i].abs()
        })
        .collect();
    let config = vae::rms_norm_launch(pixels, c).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut buf = if in_place {
            x.clone()
        } else {
            vec![POISON_F16; pixels * c]
        };
        let params = vae::RmsNormChannelsParams {
            x: if in_place { buf.as_ptr() } else { x.as_ptr() },
            gamma: gamma.as_ptr(),
            out: buf.as_mut_ptr(),
            pixels: pixels as i32,
            c: c as i32,
            silu: i32::from(silu),
        };
        // SAFETY: x and out (pixels, c) (the same buffer in place: each warp reads its
        // pixel before writing it), gamma (c), as rms_norm_launch validated.
        unsafe { run(vae::KERNEL_RMS_NORM, config, &params, order) };
        let got = f16_to_f64(&buf);
        let worst = compare(label, &got, &want, &tol);
        if pixels > 1 {
            assert!(
                got[c..2 * c].iter().all(|&v| v == 0.0),
                "{label}: zero pixel"
            );
        }
        eprintln!("{label} pixels={pixels} c={c} silu={silu} in_place={in_place} {order:?}: worst err/tol {worst:.3}");
    }
}

#[test]
fn rms_norm_vae_widths() {
    // The head's RMS_norm(96) + SiLU over 37 pixels (5 CTAs, the last with 5 pixels).
    race_checked(|| check_rms("rms c96 silu", 1, 37, 96, true, false));
    // The attention's RMS_norm(384) (lanes 0..15 hold a second chunk), no SiLU, in place.
    check_rms("rms c384 in place", 2, 20, 384, false, true);
    // Stage 2's 192 + SiLU.
    check_rms("rms c192 silu", 3, 9, 192, true, false);
}

#[test]
fn rms_norm_other_widths_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the larger RMS norm cases");
        return;
    }
    check_rms("rms c512", 4, 300, 512, true, false);
    check_rms("rms c8", 5, 1001, 8, true, true);
    check_rms("rms c384 many", 6, 1203, 384, true, false);
}

// ---------------------------------------------------------------------------------------
// Row softmax.
// ---------------------------------------------------------------------------------------

/// Tolerance: the f16 store of p in [0, 1] (`u_f16 p` + half a subnormal spacing) and the
/// f32 math, relative to p: each exponent `(s - m) scale` (|.| up to the row's spread `d`)
/// is off by `2 u_f32 d`, which exp turns into a relative error, in p's own term and in the
/// sum's (`4 u_f32 d`); `expf` (2 ulp), the row sum of `cols` terms and the product.
fn softmax_tolerance(p: f64, d: f64, cols: usize) -> f64 {
    U_F16 * p + F16_SUBNORMAL_HALF_ULP + p * U_F32 * (4.0 * d + cols as f64 + 8.0)
}

fn check_softmax(label: &str, seed: u64, rows: usize, cols: usize, ld: usize, offset: f32) {
    let mut rng = Rng::new(seed);
    let scale = 1.0 / 384f64.sqrt();
    // Scores ~ q.k magnitudes of the VAE (tens) plus a per-row offset: without the max
    // subtraction exp(scale s) overflows f32 for offset 1e4.
    let s: Vec<f32> = (0..rows * ld)
        .map(|i| {
            let row_off = offset * ((i / ld) % 3) as f32;
            row_off + rng.nonzero(-60.0, 60.0)
        })
        .collect();
    let sv: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
    let want = vae::softmax_rows_reference(&sv, cols, ld, scale).unwrap();
    // Per row: the largest scaled distance from the max, which bounds every exponent.
    let spread: Vec<f64> = sv
        .chunks_exact(ld)
        .map(|row| {
            let row = &row[..cols];
            let hi = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lo = row.iter().copied().fold(f64::INFINITY, f64::min);
            (hi - lo) * scale
        })
        .collect();
    let tol: Vec<f64> = (0..want.len())
        .map(|i| softmax_tolerance(want[i], spread[i / ld], cols))
        .collect();
    let config = vae::softmax_rows_launch(rows, cols, ld).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut p = vec![POISON_F16; rows * ld];
        let params = vae::SoftmaxRowsParams {
            s: s.as_ptr(),
            p: p.as_mut_ptr(),
            rows: rows as i32,
            cols: cols as i32,
            ld: ld as i32,
            scale: scale as f32,
        };
        // SAFETY: s and p (rows, ld), as softmax_rows_launch validated.
        unsafe { run(vae::KERNEL_SOFTMAX_ROWS, config, &params, order) };
        let got = f16_to_f64(&p);
        let worst = compare(label, &got, &want, &tol);
        for r in 0..rows {
            let sum: f64 = got[r * ld..][..cols].iter().sum();
            assert!((sum - 1.0).abs() < 2e-3, "{label}: row {r} sums to {sum}");
        }
        eprintln!("{label} rows={rows} cols={cols} ld={ld} offset={offset} {order:?}: worst err/tol {worst:.3}");
    }
}

#[test]
fn softmax_rows_cases() {
    // 613 keys in rows of 616 (3 padding columns), 7 rows with offsets 0 / 1e4 / 2e4.
    race_checked(|| check_softmax("softmax padded", 10, 7, 613, 616, 1e4));
    // One 832x480 frame's row length: 6240 keys, 24.4 groups of 4 a thread.
    check_softmax("softmax 6240", 11, 3, 6240, 6240, 0.0);
    // Fewer keys than threads: one valid column.
    check_softmax("softmax 1 key", 12, 2, 1, 8, 0.0);
}

#[test]
fn softmax_rows_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the larger softmax cases");
        return;
    }
    check_softmax("softmax 64 rows", 13, 64, 1021, 1024, 3e3);
    check_softmax("softmax 2 x 24960", 14, 2, 24960, 24960, 0.0);
}

// ---------------------------------------------------------------------------------------
// The mid block's per-frame attention through the GEMMs and the softmax.
// ---------------------------------------------------------------------------------------

/// `[rows, k] x [cols, k]^T` in f64 with per-element `sum |a b|`, plus `bias[col]`.
fn matmul_nt(a: &[f64], b: &[f64], k: usize, bias: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (a.len() / k, b.len() / k);
    let mut v = vec![0.0; rows * cols];
    let mut abs = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            let (mut acc, mut s) = (bias.map_or(0.0, |b| b[j]), 0.0);
            for (x, y) in a[i * k..][..k].iter().zip(&b[j * k..][..k]) {
                acc += x * y;
                s += (x * y).abs();
            }
            v[i * cols + j] = acc;
            abs[i * cols + j] = s;
        }
    }
    (v, abs)
}

/// The rounding bound of an f16 GEMM output from f16 operands with f32 accumulation over k.
fn gemm_f16_err(k: usize, abs: f64, value: f64) -> f64 {
    (k as f64 + 2.0) * U_F32 * abs + U_F16 * value.abs() + F16_SUBNORMAL_HALF_ULP
}

/// One frame of `npix` pixels of the attention block of width `c`:
/// `y = x + proj(softmax(q k^T / sqrt(c)) v)`, `[q k v] = to_qkv(n)` with `n` the normalised
/// input; the device path as docs/wan_vae.md's table lowers it (keys padded to a multiple of
/// 8 with zero rows of `n`, the value bias folded into proj's). Compares the attention output
/// `o` (without the value bias) and `y` against f64, tolerances propagated from each f16
/// store through the products (see the comments).
fn check_attention(label: &str, seed: u64, npix: usize, c: usize) {
    let np = npix.next_multiple_of(8);
    let mut rng = Rng::new(seed);
    let (mut n, _) = random_f16(&mut rng, np * c, 1.5);
    n[npix * c..].fill(0); // the padding rows the lowering zeroes
    let nv = f16_to_f64(&n);
    let (x, xv) = random_f16(&mut rng, npix * c, 2.0);
    // q and k weights a little larger than 1 / sqrt(c), so the attention is not flat.
    let (wqk, wqkv_qk) = random_f16(&mut rng, 2 * c * c, 4.0 / (c as f32).sqrt());
    let (wv, wv_v) = random_f16(&mut rng, c * c, 1.7 / (c as f32).sqrt());
    let wqkv = [wqk, wv].concat();
    let wqkv_v = [wqkv_qk, wv_v].concat();
    let (bqkv, bqkv_v) = random_f16(&mut rng, 3 * c, 0.5);
    let (wp, wp_v) = random_f16(&mut rng, c * c, 1.7 / (c as f32).sqrt());
    let (_, bp_v) = random_f16(&mut rng, c, 0.5);
    let folded = vae::fold_value_bias(&wp_v, &bp_v, &bqkv_v[2 * c..]).unwrap();
    let bp_fold: Vec<u16> = folded.iter().map(|&v| f16::from_f64(v).to_bits()).collect();
    let scale = 1.0 / (c as f64).sqrt();

    // f64 reference of the module (original biases), on the unpadded pixels.
    let nr = &nv[..npix * c];
    let (wq_v, wk_v, wvv) = (
        &wqkv_v[..c * c],
        &wqkv_v[c * c..2 * c * c],
        &wqkv_v[2 * c * c..],
    );
    let (q, qa) = matmul_nt(nr, wq_v, c, Some(&bqkv_v[..c]));
    let (k, ka) = matmul_nt(nr, wk_v, c, Some(&bqkv_v[c..2 * c]));
    let (v0, va) = matmul_nt(nr, wvv, c, None); // bias-free values, as the device has them
    let dq: Vec<f64> = (0..q.len()).map(|i| gemm_f16_err(c, qa[i], q[i])).collect();
    let dk: Vec<f64> = (0..k.len()).map(|i| gemm_f16_err(c, ka[i], k[i])).collect();
    let dv: Vec<f64> = (0..v0.len())
        .map(|i| gemm_f16_err(c, va[i], v0[i]))
        .collect();
    let (mut p, mut dp) = (vec![0.0; npix * npix], vec![0.0; npix * npix]);
    for i in 0..npix {
        // Scores and their bound: the f16 q and k (first order and the product of errors)
        // and the f32 accumulation and store.
        let (mut s, mut ds) = (vec![0.0; npix], vec![0.0; npix]);
        for j in 0..npix {
            for d in 0..c {
                let (qi, kj) = (q[i * c + d], k[j * c + d]);
                let (eq, ek) = (dq[i * c + d], dk[j * c + d]);
                s[j] += qi * kj;
                ds[j] += eq * kj.abs()
                    + qi.abs() * ek
                    + eq * ek
                    + (c as f64 + 3.0) * U_F32 * (qi.abs() + eq) * (kj.abs() + ek);
            }
        }
        let hi = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
        let e = scale * ds.iter().copied().fold(0.0, f64::max);
        let sum: f64 = s.iter().map(|v| ((v - hi) * scale).exp()).sum();
        for j in 0..npix {
            let pij = ((s[j] - hi) * scale).exp() / sum;
            p[i * npix + j] = pij;
            // A shift of every score by up to e moves p by a factor within exp(+-2e).
            dp[i * npix + j] =
                pij * ((2.0 * e).exp() - 1.0) + softmax_tolerance(pij, (hi - lo) * scale, npix);
        }
    }
    let (mut o0, mut doo) = (vec![0.0; npix * c], vec![0.0; npix * c]);
    for i in 0..npix {
        for ch in 0..c {
            let (mut acc, mut err, mut abs) = (0.0, 0.0, 0.0);
            for j in 0..npix {
                let (pij, vj) = (p[i * npix + j], v0[j * c + ch]);
                let (epij, evj) = (dp[i * npix + j], dv[j * c + ch]);
                acc += pij * vj;
                err += epij * vj.abs() + pij * evj + epij * evj;
                abs += (pij + epij) * (vj.abs() + evj);
            }
            o0[i * c + ch] = acc;
            doo[i * c + ch] = err + gemm_f16_err(np, abs, acc);
        }
    }
    let (mut y, mut dy) = (vec![0.0; npix * c], vec![0.0; npix * c]);
    for i in 0..npix {
        for r in 0..c {
            let wr = &wp_v[r * c..][..c];
            // The module: x + bp + Wp (o0 + bv) = x + folded + Wp o0.
            let (mut acc, mut err, mut abs) = (xv[i * c + r] + folded[r], 0.0, 0.0);
            for ch in 0..c {
                acc += wr[ch] * o0[i * c + ch];
                err += wr[ch].abs() * doo[i * c + ch];
                abs += (wr[ch] * o0[i * c + ch]).abs();
            }
            y[i * c + r] = acc;
            let mag = abs + xv[i * c + r].abs() + folded[r].abs();
            dy[i * c + r] = err
                + U_F16 * folded[r].abs()
                + F16_SUBNORMAL_HALF_ULP
                + (c as f64 + 2.0) * U_F32 * abs
                + 4.0 * U_F32 * mag
                + U_F16 * acc.abs()
                + F16_SUBNORMAL_HALF_ULP;
        }
    }

    let conv_q = conv::conv1x1_launch(npix, c, c).unwrap();
    let conv_k = conv::conv1x1_launch(np, c, c).unwrap();
    let vt_cfg = gemm::bias_f16_config(c, np, c).unwrap();
    let s_cfg = gemm::bias_f32_config(npix, np, c).unwrap();
    let sm_cfg = vae::softmax_rows_launch(npix, npix, np).unwrap();
    let o_cfg = gemm::bias_f16_config(npix, c, np).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut qd = vec![POISON_F16; npix * c];
        let mut kd = vec![POISON_F16; np * c];
        let mut vt = vec![POISON_F16; c * np];
        let mut sd = common::poisoned_f32(npix * np);
        let mut pd = vec![POISON_F16; npix * np];
        let mut od = vec![POISON_F16; npix * c];
        let mut yd = vec![POISON_F16; npix * c];
        let conv1x1 =
            |launch: &conv::ConvLaunch, m: usize, w: &[u16], b: &[u16], out: &mut [u16]| {
                let params = conv::Conv1x1Params {
                    x: n.as_ptr(),
                    w: w.as_ptr(),
                    bias: b.as_ptr(),
                    residual: std::ptr::null(),
                    out: out.as_mut_ptr(),
                    m: m as i32,
                    cin: c as i32,
                    cout: c as i32,
                };
                // SAFETY: x = n (np >= m rows of c), w (c, c) and b (c) slices of to_qkv, out
                // (m, c); conv1x1_launch validated the shape.
                unsafe { run(launch.kernel, launch.config, &params, order) };
            };
        conv1x1(&conv_q, npix, &wqkv[..c * c], &bqkv[..c], &mut qd);
        conv1x1(
            &conv_k,
            np,
            &wqkv[c * c..2 * c * c],
            &bqkv[c..2 * c],
            &mut kd,
        );
        let vt_params = gemm::GemmBiasF16Params {
            a: wqkv[2 * c * c..].as_ptr(),
            w: n.as_ptr(),
            bias: std::ptr::null(),
            out: vt.as_mut_ptr(),
            m: c as i32,
            n: np as i32,
            k: c as i32,
        };
        // SAFETY: a = Wv (c, c), w = n (np, c), out (c, np), as bias_f16_config validated.
        unsafe { run(gemm::KERNEL_BIAS_F16, vt_cfg, &vt_params, order) };
        let s_params = gemm::GemmBiasF32Params {
            a: qd.as_ptr(),
            w: kd.as_ptr(),
            bias: std::ptr::null(),
            out: sd.as_mut_ptr(),
            m: npix as i32,
            n: np as i32,
            k: c as i32,
        };
        // SAFETY: a = q (npix, c), w = k (np, c), out (npix, np).
        unsafe { run(gemm::KERNEL_BIAS_F32, s_cfg, &s_params, order) };
        let sm_params = vae::SoftmaxRowsParams {
            s: sd.as_ptr(),
            p: pd.as_mut_ptr(),
            rows: npix as i32,
            cols: npix as i32,
            ld: np as i32,
            scale: scale as f32,
        };
        // SAFETY: s and p (npix, np).
        unsafe { run(vae::KERNEL_SOFTMAX_ROWS, sm_cfg, &sm_params, order) };
        let o_params = gemm::GemmBiasF16Params {
            a: pd.as_ptr(),
            w: vt.as_ptr(),
            bias: std::ptr::null(),
            out: od.as_mut_ptr(),
            m: npix as i32,
            n: c as i32,
            k: np as i32,
        };
        // SAFETY: a = P (npix, np), w = V^T (c, np), out (npix, c).
        unsafe { run(gemm::KERNEL_BIAS_F16, o_cfg, &o_params, order) };
        let y_params = conv::Conv1x1Params {
            x: od.as_ptr(),
            w: wp.as_ptr(),
            bias: bp_fold.as_ptr(),
            residual: x.as_ptr(),
            out: yd.as_mut_ptr(),
            m: npix as i32,
            cin: c as i32,
            cout: c as i32,
        };
        // SAFETY: x = o (npix, c), w (c, c), bias (c), residual and out (npix, c).
        unsafe { run(conv_q.kernel, conv_q.config, &y_params, order) };
        let (wo, lo) = compare_l2(&format!("{label} o"), &f16_to_f64(&od), &o0, &doo);
        let (wy, ly) = compare_l2(&format!("{label} y"), &f16_to_f64(&yd), &y, &dy);
        // The per-element bounds above are worst cases (every rounding error aligned); on
        // top, the relative L2 error must look like a few independent f16 roundings of the
        // chain (q, k, V^T, P, o, y): under 4 u_f16. A wrong scale, a missing value bias or
        // a transposed operand is O(1) here.
        assert!(
            lo < 4.0 * U_F16 && ly < 4.0 * U_F16,
            "{label}: rel L2 o {lo:.2e}, y {ly:.2e}"
        );
        // The padding keys' probabilities are exactly 0.
        for i in 0..npix {
            assert!(
                pd[i * np + npix..(i + 1) * np].iter().all(|&b| b == 0),
                "{label}: padding"
            );
        }
        eprintln!("{label} pixels={npix} (keys padded to {np}) c={c} {order:?}: worst err/tol o {wo:.3}, y {wy:.3}; rel L2 o {lo:.2e}, y {ly:.2e}");
    }
}

#[test]
fn attention_through_gemms() {
    // A 3x7 frame (21 pixels, keys padded to 24) at width 64 under the race checker.
    race_checked(|| check_attention("attn 3x7 c64", 20, 21, 64));
    // The VAE's head dim 384, a 5x6 frame (30 pixels, padded to 32).
    check_attention("attn 5x6 c384", 21, 30, 384);
}

#[test]
fn attention_through_gemms_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the larger attention cases");
        return;
    }
    // 10x13 = 130 pixels: two row tiles of every GEMM (ragged), keys padded to 136.
    check_attention("attn 10x13 c384", 22, 130, 384);
    check_attention("attn 8x25 c384", 23, 200, 384);
}
