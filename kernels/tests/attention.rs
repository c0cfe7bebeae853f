//! Window self-attention and cross-attention (`kernels/cuda/attention.cu`) in the emulator.
//!
//! Each case compares the kernel's output with an f64 reference computed from the same f16
//! inputs (RMSNorm, scores, softmax and P V all in f64), by relative L2 error over the whole
//! output, and requires that error to be at most twice the error of a **plain f16
//! attention** on the same inputs (FlashAttention's acceptance rule), where "plain f16" is
//! what a naive unfused f16 implementation computes, every intermediate tensor stored in f16:
//!
//! 1. `qn = f16(u * inv * g)` with `inv = 1 / sqrt(sum(u^2) / dh + 1e-6)` in f32 (same for k);
//! 2. scores `s = f16(qn . kn)` (an f16 GEMM: f32 accumulation, f16 output), then
//!    `x = f16(s * f16(1/sqrt(dh)))`;
//! 3. softmax over the allowed keys on f16 values: `m = max x`, `e = f16(exp(f16(x - m)))`,
//!    `sum = f16(sum e)` (f32 sum), `p = f16(e / sum)`;
//! 4. `o = f16(sum_k p_k v_k)` (f16 GEMM: f32 accumulation, f16 output).
//!
//! A query without any allowed key outputs 0 in both references; the kernel must output
//! exactly 0 there (and never NaN). Inputs are fresh random non-zero f16 values, outputs
//! start as NaN (0xffff) so unwritten elements fail, and every case runs in forward, reverse
//! and shuffled thread order. Cases: the `tiny` window layer unshifted and shifted (partial
//! windows at both edges), a dh = 128 geometry with non-square windows, odd shifts and
//! batch 2, cross-attention with a mask that has zeros and a fully masked batch element,
//! with a ragged text length (not a multiple of the 64-key tile) and a ragged query tile.
//! Plus the launch-config contract and the nvcc resource / SASS gates.
//!
//! Race checker: in the default tier one small window case (dh = 128 with the RMSNorm) runs
//! under `emu::racecheck`; with `STREAMDIT_FULL=1` every launch does. tests/race_check.rs
//! runs the cross entry (dh = 64) with a wrapping key ring under it and plants races in the
//! shared core.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::attention::{self, AttnLaunch, CrossShape, WindowShape};
use streamdit_kernels::attention_sm90_window as fa3w;
use streamdit_kernels::emu::{self, EmuErrorKind, ThreadOrder};

/// Sanity bound on the kernel's relative L2 error, besides the 2x-plain-f16 rule.
const REL_L2_MAX: f64 = 2e-3;

fn r16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// f16 values (as bits) uniform in [lo, hi), never zero, and the same values in f32.
fn random_f16(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(lo, hi)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    (bits, vals)
}

/// The per-head RMSNorm in f64 (reference) and in plain f16 (f32 math, f16 result); no gain
/// means no RMSNorm (the kernels' null gains), the values as they are.
fn rms_f64(u: &[f32], g: Option<&[f32]>) -> Vec<f64> {
    let Some(g) = g else {
        return u.iter().map(|&a| a as f64).collect();
    };
    let ms = u.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / u.len() as f64;
    let inv = 1.0 / (ms + 1e-6).sqrt();
    u.iter()
        .zip(g)
        .map(|(&a, &g)| a as f64 * inv * g as f64)
        .collect()
}

fn rms_f16(u: &[f32], g: Option<&[f32]>) -> Vec<f32> {
    let Some(g) = g else {
        return u.to_vec();
    };
    let ss: f32 = u.iter().map(|&a| a * a).sum();
    let inv = 1.0 / (ss / u.len() as f32 + 1e-6).sqrt();
    u.iter().zip(g).map(|(&a, &g)| r16(a * inv * g)).collect()
}

/// One query row attending to `keys` (indices into `k`/`v` row lists): the f64 reference and
/// the plain f16 result. Empty `keys` gives zeros.
struct Refs {
    f64: Vec<f64>,
    plain: Vec<f32>,
}

fn attend_one(
    q: &[f32],
    gq: Option<&[f32]>,
    k64: &[Vec<f64>],
    k16: &[Vec<f32>],
    v: &[&[f32]],
    keys: &[usize],
) -> Refs {
    let dh = q.len();
    if keys.is_empty() {
        return Refs {
            f64: vec![0.0; dh],
            plain: vec![0.0; dh],
        };
    }
    let scale = 1.0 / (dh as f64).sqrt();
    // f64.
    let q64 = rms_f64(q, gq);
    let s: Vec<f64> = keys
        .iter()
        .map(|&j| q64.iter().zip(&k64[j]).map(|(a, b)| a * b).sum::<f64>() * scale)
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut o64 = vec![0.0; dh];
    for (p, &j) in e.iter().zip(keys) {
        for (o, &vv) in o64.iter_mut().zip(v[j]) {
            *o += p / sum * vv as f64;
        }
    }
    // Plain f16.
    let q16 = rms_f16(q, gq);
    let scale16 = r16(scale as f32);
    let x: Vec<f32> = keys
        .iter()
        .map(|&j| {
            let s = r16(q16.iter().zip(&k16[j]).map(|(a, b)| a * b).sum::<f32>());
            r16(s * scale16)
        })
        .collect();
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&x| r16(r16(x - m).exp())).collect();
    let sum = r16(e.iter().sum::<f32>());
    let p: Vec<f32> = e.iter().map(|&e| r16(e / sum)).collect();
    let mut acc = vec![0.0f32; dh];
    for (p, &j) in p.iter().zip(keys) {
        for (o, &vv) in acc.iter_mut().zip(v[j]) {
            *o += p * vv;
        }
    }
    Refs {
        f64: o64,
        plain: acc.into_iter().map(r16).collect(),
    }
}

/// Relative L2 error of `got` against `want`; NaN (unwritten) counts as infinite.
fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        let e = if g.is_finite() { g - w } else { f64::INFINITY };
        num += e * e;
        den += w * w;
    }
    (num / den).sqrt()
}

fn f16_to_f64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect()
}

/// Runs `launch` in every thread order with a fresh poisoned output; `params` builds the
/// parameter struct around the output pointer. Checks each result against `want` and the
/// 2x-plain rule; `zero_rows` (row, width) must be exactly 0.
#[allow(clippy::too_many_arguments)]
fn run_and_check<P: Copy>(
    label: &str,
    seed: u64,
    launch: AttnLaunch,
    out_len: usize,
    params: impl Fn(*mut u16) -> P,
    want: &[f64],
    plain: &[f64],
    zero_rows: &[std::ops::Range<usize>],
) -> Vec<u16> {
    let _race = common::race_check_full();
    let plain_err = rel_l2(plain, want);
    let kernel = emu::kernel(launch.kernel).unwrap_or_else(|e| panic!("{e}"));
    let mut first = None;
    for order in ThreadOrder::all(seed) {
        let mut out = vec![0xffffu16; out_len];
        let p = params(out.as_mut_ptr());
        let t0 = std::time::Instant::now();
        // SAFETY: `params` points at buffers of the extents the kernel reads and writes for
        // the shape `launch` was checked for (built by the caller from that shape), and `out`
        // (out_len elements) lives until the launch returns.
        unsafe { emu::launch_with(kernel, launch.config, &p, order) }
            .unwrap_or_else(|e| panic!("{label} {order:?}: {e}"));
        let got = f16_to_f64(&out);
        if let Some(i) = got.iter().position(|v| !v.is_finite()) {
            panic!(
                "{label} {order:?}: element {i} is {} (unwritten or NaN)",
                got[i]
            );
        }
        for r in zero_rows {
            assert!(
                got[r.clone()].iter().all(|&v| v == 0.0),
                "{label} {order:?}: a row without allowed keys must be exactly 0"
            );
        }
        let err = rel_l2(&got, want);
        eprintln!(
            "{label} {order:?}: kernel rel L2 {err:.3e}, plain f16 {plain_err:.3e} \
             (ratio {:.2}), {:.2} s",
            err / plain_err,
            t0.elapsed().as_secs_f64()
        );
        assert!(
            err <= 2.0 * plain_err,
            "{label} {order:?}: kernel error {err:e} > 2 x plain f16 error {plain_err:e}"
        );
        assert!(err <= REL_L2_MAX, "{label} {order:?}: kernel error {err:e}");
        first.get_or_insert(out);
    }
    first.expect("ThreadOrder::all has orders")
}

/// Window token lists of docs/streamdit.md section 3, written directly from the key definition
/// (group tokens by `((f+sf)/Fw, (i+sh)/Hw, (j+sw)/Ww)`), independent of the kernel's
/// extent arithmetic.
fn windows(grid: [usize; 3], window: [usize; 3], shift: [usize; 3]) -> Vec<Vec<usize>> {
    let mut by_key = std::collections::BTreeMap::<[usize; 3], Vec<usize>>::new();
    for f in 0..grid[0] {
        for i in 0..grid[1] {
            for j in 0..grid[2] {
                let key = [
                    (f + shift[0]) / window[0],
                    (i + shift[1]) / window[1],
                    (j + shift[2]) / window[2],
                ];
                by_key
                    .entry(key)
                    .or_default()
                    .push((f * grid[1] + i) * grid[2] + j);
            }
        }
    }
    by_key.into_values().collect()
}

/// One window case's random inputs and its two references.
struct WindowCase {
    qkv_bits: Vec<u16>,
    gq_bits: Vec<u16>,
    gk_bits: Vec<u16>,
    want: Vec<f64>,
    plain: Vec<f64>,
}

/// `norm`: with RMSNorm gains, or null gains (plain attention, the TAE decoder's).
fn window_case(label: &str, seed: u64, s: &WindowShape, norm: bool) -> WindowCase {
    let (t, dh, heads) = (s.tokens(), s.head_dim, s.heads);
    let d = heads * dh;
    let mut rng = Rng::new(seed);
    let (qkv_bits, qkv) = random_f16(&mut rng, s.batch * t * 3 * d, -1.0, 1.0);
    let (gq_bits, gq) = random_f16(&mut rng, dh, 0.6, 1.6);
    let (gk_bits, gk) = random_f16(&mut rng, dh, 0.6, 1.6);
    let (gq_arg, gk_arg) = if norm {
        (Some(&gq[..]), Some(&gk[..]))
    } else {
        (None, None)
    };
    let wins = windows(s.grid, s.window, s.shift);
    let sizes: Vec<usize> = wins.iter().map(|w| w.len()).collect();
    let mut want = vec![0.0; s.batch * t * d];
    let mut plain = vec![0.0; s.batch * t * d];
    for b in 0..s.batch {
        for e in 0..heads {
            let slice = |tok: usize, part: usize| {
                let base = (b * t + tok) * 3 * d + part * d + e * dh;
                &qkv[base..base + dh]
            };
            for win in &wins {
                let k16: Vec<Vec<f32>> =
                    win.iter().map(|&x| rms_f16(slice(x, 1), gk_arg)).collect();
                let k64: Vec<Vec<f64>> =
                    win.iter().map(|&x| rms_f64(slice(x, 1), gk_arg)).collect();
                let v: Vec<&[f32]> = win.iter().map(|&x| slice(x, 2)).collect();
                let keys: Vec<usize> = (0..win.len()).collect();
                for &x in win {
                    let r = attend_one(slice(x, 0), gq_arg, &k64, &k16, &v, &keys);
                    let o = (b * t + x) * d + e * dh;
                    want[o..o + dh].copy_from_slice(&r.f64);
                    for (p, &v) in plain[o..o + dh].iter_mut().zip(&r.plain) {
                        *p = v as f64;
                    }
                }
            }
        }
    }
    eprintln!(
        "{label}: batch {} grid {:?} window {:?} shift {:?} heads {heads} dh {dh}: {} windows \
         of sizes {}..={}",
        s.batch,
        s.grid,
        s.window,
        s.shift,
        wins.len(),
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
    );
    WindowCase {
        qkv_bits,
        gq_bits,
        gk_bits,
        want,
        plain,
    }
}

/// `norm`: with RMSNorm gains, or null gains (plain attention, the TAE decoder's).
fn check_window(label: &str, seed: u64, s: WindowShape, norm: bool) {
    let launch = attention::window_config(&s).unwrap();
    let (t, d) = (s.tokens(), s.heads * s.head_dim);
    let heads = s.heads;
    let WindowCase {
        qkv_bits,
        gq_bits,
        gk_bits,
        want,
        plain,
    } = window_case(label, seed, &s, norm);
    eprintln!("{label}: grid {:?}", launch.config.grid);
    let gain = |bits: &Vec<u16>| {
        if norm {
            bits.as_ptr()
        } else {
            std::ptr::null()
        }
    };
    let params = |out: *mut u16| attention::AttnWindowParams {
        qkv: qkv_bits.as_ptr(),
        gq: gain(&gq_bits),
        gk: gain(&gk_bits),
        out,
        ft: s.grid[0] as i32,
        ht: s.grid[1] as i32,
        wt: s.grid[2] as i32,
        fw: s.window[0] as i32,
        hw: s.window[1] as i32,
        ww: s.window[2] as i32,
        sf: s.shift[0] as i32,
        sh: s.shift[1] as i32,
        sw: s.shift[2] as i32,
        heads: heads as i32,
    };
    let packed = run_and_check(
        label,
        seed,
        launch,
        s.batch * t * d,
        params,
        &want,
        &plain,
        &[],
    );
    // The packed tile list computes each (window, tile) exactly as the grid before it did:
    // the `unpacked_grid` variant (that grid, one CTA per full-window tile of every window
    // key) must give the same bits.
    let unpacked = s.unpacked_tiles();
    assert!(launch.config.grid.x as usize == s.packed_tiles() && s.packed_tiles() <= unpacked);
    let old = emu::variant(launch.kernel, "unpacked_grid").unwrap_or_else(|e| panic!("{e}"));
    let mut config = launch.config;
    config.grid.x = unpacked as u32;
    let mut out = vec![0xffffu16; s.batch * t * d];
    let p = params(out.as_mut_ptr());
    // SAFETY: as in `run_and_check`: the same buffers, a grid over the same windows.
    unsafe { emu::launch_with(old, config, &p, ThreadOrder::Forward) }
        .unwrap_or_else(|e| panic!("{label} unpacked grid: {e}"));
    if let Some(i) = (0..out.len()).find(|&i| out[i] != packed[i]) {
        panic!(
            "{label}: packed list and unpacked grid differ at element {i}: {:#06x} vs {:#06x}",
            packed[i], out[i]
        );
    }
    eprintln!(
        "{label}: packed {} CTAs per head = unpacked {unpacked} bit for bit",
        s.packed_tiles()
    );
}

/// `mask_of(b, l)` gives the mask (0 or 1) of text token l of batch element b.
fn check_cross(label: &str, seed: u64, s: CrossShape, mask_of: impl Fn(usize, usize) -> f32) {
    let launch = attention::cross_config(&s).unwrap();
    let (t, lt, dh, heads) = (s.tokens, s.text_len, s.head_dim, s.heads);
    let d = heads * dh;
    let mut rng = Rng::new(seed);
    let (q_bits, q) = random_f16(&mut rng, s.batch * t * d, -1.0, 1.0);
    let (kv_bits, kv) = random_f16(&mut rng, s.batch * lt * 2 * d, -1.0, 1.0);
    let (gq_bits, gq) = random_f16(&mut rng, dh, 0.6, 1.6);
    let (gk_bits, gk) = random_f16(&mut rng, dh, 0.6, 1.6);
    let mask: Vec<f32> = (0..s.batch * lt).map(|i| mask_of(i / lt, i % lt)).collect();
    let mut want = vec![0.0; s.batch * t * d];
    let mut plain = vec![0.0; s.batch * t * d];
    let mut zero_rows = Vec::new();
    for b in 0..s.batch {
        let keys: Vec<usize> = (0..lt).filter(|&l| mask[b * lt + l] != 0.0).collect();
        for e in 0..heads {
            let kslice = |l: usize, part: usize| {
                let base = (b * lt + l) * 2 * d + part * d + e * dh;
                &kv[base..base + dh]
            };
            let k16: Vec<Vec<f32>> = (0..lt).map(|l| rms_f16(kslice(l, 0), Some(&gk))).collect();
            let k64: Vec<Vec<f64>> = (0..lt).map(|l| rms_f64(kslice(l, 0), Some(&gk))).collect();
            let v: Vec<&[f32]> = (0..lt).map(|l| kslice(l, 1)).collect();
            for x in 0..t {
                let o = (b * t + x) * d + e * dh;
                let r = attend_one(&q[o..o + dh], Some(&gq), &k64, &k16, &v, &keys);
                want[o..o + dh].copy_from_slice(&r.f64);
                for (p, &v) in plain[o..o + dh].iter_mut().zip(&r.plain) {
                    *p = v as f64;
                }
            }
        }
        if keys.is_empty() {
            zero_rows.push(b * t * d..(b + 1) * t * d);
        }
        eprintln!(
            "{label}: batch element {b}: {} of {lt} text tokens unmasked",
            keys.len()
        );
    }
    let params = |out: *mut u16| attention::AttnCrossParams {
        q: q_bits.as_ptr(),
        kv: kv_bits.as_ptr(),
        mask: mask.as_ptr(),
        gq: gq_bits.as_ptr(),
        gk: gk_bits.as_ptr(),
        out,
        tokens: t as i32,
        text_len: lt as i32,
        heads: heads as i32,
    };
    run_and_check(
        label,
        seed,
        launch,
        s.batch * t * d,
        params,
        &want,
        &plain,
        &zero_rows,
    );
}

fn tiny_window(shift: [usize; 3], batch: usize) -> WindowShape {
    WindowShape {
        batch,
        grid: [8, 8, 8],
        window: [4, 8, 8],
        shift,
        heads: 4,
        head_dim: 64,
    }
}

#[test]
fn window_tiny_unshifted() {
    check_window("window tiny unshifted", 11, tiny_window([0, 0, 0], 1), true);
}

#[test]
fn window_tiny_shifted_partial_windows() {
    check_window("window tiny shifted", 12, tiny_window([2, 4, 4], 1), true);
}

#[test]
fn window_d128_non_square_odd_shift_batch2() {
    let s = WindowShape {
        batch: 2,
        grid: [4, 6, 10],
        window: [2, 3, 5],
        shift: [1, 1, 2],
        heads: 2,
        head_dim: 128,
    };
    check_window("window dh128 2x3x5 shift 1,1,2", 13, s, true);
}

/// The default tier's race-checked case: one head of 128 with the RMSNorm over one window
/// of 2 x 8 x 8 tokens (two query tiles, each over two key tiles). The checker costs about
/// four times the plain emulation, so the case is small; tests/race_check.rs runs the core
/// with a wrapping key ring (dh = 64) and planted races under it.
#[test]
fn window_d128_one_window_under_the_race_checker() {
    let s = WindowShape {
        batch: 1,
        grid: [2, 8, 8],
        window: [2, 8, 8],
        shift: [0, 0, 0],
        heads: 1,
        head_dim: 128,
    };
    race_checked(|| check_window("window dh128 2x8x8, race-checked", 17, s, true));
}

#[test]
fn window_d128_multi_tile_shifted() {
    // Full windows of 256 tokens: 4 query tiles and 4 key tiles, so the 3-stage K/V ring
    // wraps; the shift also makes edge windows of 32 to 128 tokens.
    let s = WindowShape {
        batch: 1,
        grid: [4, 16, 32],
        window: [2, 8, 16],
        shift: [1, 4, 8],
        heads: 2,
        head_dim: 128,
    };
    check_window("window dh128 2x8x16 shift 1,4,8", 14, s, true);
}

/// The TAE decoder's mid-block attention: full attention over each frame's pixels (window =
/// one frame), no RMSNorm (null gains); `tiny`'s one head of 64 at 16x16 latents.
#[test]
fn window_frames_without_norm_d64() {
    let s = WindowShape {
        batch: 1,
        grid: [2, 16, 16],
        window: [1, 16, 16],
        shift: [0, 0, 0],
        heads: 1,
        head_dim: 64,
    };
    check_window("frame attention dh64, no norm", 15, s, false);
}

/// As above with `streamdit-4b`'s heads of 128, a ragged 9x13 frame (117 pixels).
#[test]
fn window_frames_without_norm_d128_ragged() {
    let s = WindowShape {
        batch: 1,
        grid: [3, 9, 13],
        window: [1, 9, 13],
        shift: [0, 0, 0],
        heads: 2,
        head_dim: 128,
    };
    check_window("frame attention dh128 9x13, no norm", 16, s, false);
}

#[test]
fn cross_d128_streamdit_text_len() {
    // Lt = 256 as in streamdit-4b (4 key tiles, the ring wraps), every other batch
    // element's prompt padded after 200 tokens.
    let s = CrossShape {
        batch: 2,
        tokens: 64,
        text_len: 256,
        heads: 2,
        head_dim: 128,
    };
    check_cross("cross dh128 Lt=256", 23, s, |b, l| {
        f32::from(b == 0 || l < 200)
    });
}

#[test]
fn cross_masked_ragged_text() {
    // Lt = 80: one full 64-key tile and a ragged one. Batch 0 has zeros spread over both
    // tiles, batch 1 is fully masked (outputs 0), batch 2 attends to 3 tokens only.
    // T = 100: a full and a ragged query tile.
    let s = CrossShape {
        batch: 3,
        tokens: 100,
        text_len: 80,
        heads: 4,
        head_dim: 64,
    };
    check_cross("cross dh64 Lt=80 masked", 21, s, |b, l| match b {
        0 => f32::from(!(l % 7 == 3 || l == 0 || (60..70).contains(&l))),
        1 => 0.0,
        _ => f32::from(l == 5 || l == 63 || l == 79),
    });
}

#[test]
fn cross_d128_tiny_text() {
    // Lt = 32 (the tiny profile's text length) in one ragged tile; T = 70; batch 1 has a
    // masked tail as a padded prompt does, plus one fully masked batch element.
    let s = CrossShape {
        batch: 3,
        tokens: 70,
        text_len: 32,
        heads: 2,
        head_dim: 128,
    };
    check_cross("cross dh128 Lt=32 masked", 22, s, |b, l| match b {
        0 => 1.0,
        1 => f32::from(l < 9),
        _ => 0.0,
    });
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let ok = tiny_window([2, 4, 4], 1);
    assert!(attention::window_config(&ok).is_ok());
    let cases: Vec<(WindowShape, &str)> = vec![
        (WindowShape { head_dim: 96, ..ok }, "head dim dh = 96"),
        (
            WindowShape {
                grid: [8, 8, 12],
                ..ok
            },
            "not a multiple of the window",
        ),
        (
            WindowShape {
                shift: [4, 0, 0],
                ..ok
            },
            "shift 4 must be smaller than the window 4",
        ),
        (
            WindowShape {
                window: [0, 8, 8],
                ..ok
            },
            "non-empty",
        ),
        (WindowShape { heads: 0, ..ok }, "heads = 0"),
        (WindowShape { batch: 0, ..ok }, "batch = 0"),
    ];
    for (shape, rule) in cases {
        let err = attention::window_config(&shape).expect_err(rule);
        assert!(
            err.starts_with("attn_window") && err.contains(rule),
            "{err} (wanted {rule})"
        );
    }
    let ok = CrossShape {
        batch: 1,
        tokens: 512,
        text_len: 32,
        heads: 4,
        head_dim: 64,
    };
    assert!(attention::cross_config(&ok).is_ok());
    let cases: Vec<(CrossShape, &str)> = vec![
        (CrossShape { head_dim: 80, ..ok }, "head dim dh = 80"),
        (
            CrossShape { text_len: 0, ..ok },
            "text_len must be at least 1",
        ),
        (CrossShape { tokens: 0, ..ok }, "tokens must be at least 1"),
        (CrossShape { heads: 0, ..ok }, "heads = 0"),
        (CrossShape { heads: 70000, ..ok }, "heads = 70000"),
    ];
    for (shape, rule) in cases {
        let err = attention::cross_config(&shape).expect_err(rule);
        assert!(
            err.starts_with("attn_cross") && err.contains(rule),
            "{err} (wanted {rule})"
        );
    }
}

#[test]
fn attention_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    let kernels = [
        (attention::KERNEL_WINDOW_D64, 64),
        (attention::KERNEL_WINDOW_D128, 128),
        (attention::KERNEL_CROSS_D64, 64),
        (attention::KERNEL_CROSS_D128, 128),
    ];
    for (kernel, dh) in kernels {
        for arch in ["sm_80", "sm_90"] {
            let r = common::resources("attention", kernel, arch);
            eprintln!(
                "{kernel} {arch}: {} regs, {} B static smem + {} B dynamic, stack {}, spills \
                 {}/{}, HMMA {}, LDSM {}, LDGSTS {}, LDG.128 {}",
                r.registers,
                r.shared_bytes,
                attention::shared_bytes(dh),
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
            assert!(r.registers <= 255, "{kernel} on {arch}: {r:?}");
            // Q K^T and P V: at least one HMMA per k-step of each (dh/16 + 4 per key tile).
            assert!(
                r.hmma >= dh / 16 + 4 && r.ldsm > 0,
                "{kernel} on {arch}: the main loop must be HMMA fed by LDSM: {r:?}"
            );
            assert!(
                r.ldgsts > 0,
                "{kernel} on {arch}: Q/K/V must be 16-byte cp.async (LDGSTS): {r:?}"
            );
        }
    }
}

/// The packed tile list's size (the grid x of `window_config`) against the windows written
/// from the key definition: the sum over windows of ceil(tokens / BLOCK_Q), for shifted,
/// unshifted, ragged and streamdit-4b shapes; and how many CTAs the unpacked grid had.
#[test]
fn packed_tile_counts_match_the_windows() {
    let shapes = [
        ([8, 8, 8], [4, 8, 8], [0, 0, 0]),
        ([8, 8, 8], [4, 8, 8], [2, 4, 4]),
        ([4, 6, 10], [2, 3, 5], [1, 1, 2]),
        ([4, 16, 32], [2, 8, 16], [1, 4, 8]),
        ([3, 9, 13], [1, 9, 13], [0, 0, 0]),
        ([16, 32, 32], [4, 16, 16], [2, 8, 8]),
        ([16, 32, 32], [4, 16, 16], [0, 0, 0]),
        ([6, 20, 20], [3, 10, 10], [1, 7, 3]),
    ];
    for (grid, window, shift) in shapes {
        let s = WindowShape {
            batch: 2,
            grid,
            window,
            shift,
            heads: 3,
            head_dim: 64,
        };
        let want: usize = windows(grid, window, shift)
            .iter()
            .map(|w| w.len().div_ceil(attention::BLOCK_Q as usize))
            .sum();
        let l = attention::window_config(&s).unwrap();
        eprintln!(
            "grid {grid:?} window {window:?} shift {shift:?}: {want} CTAs per head packed, {} \
             unpacked",
            s.unpacked_tiles()
        );
        assert_eq!(s.packed_tiles(), want, "{grid:?} {window:?} {shift:?}");
        assert_eq!(
            (l.config.grid.x as usize, l.config.grid.y, l.config.grid.z),
            (want, 3, 2)
        );
        assert!(want <= s.unpacked_tiles());
    }
}

// ---------------------------------------------------------------------------------------
// The sm_90a window kernel (`attention_sm90_window.cu`): the same references, rules, poisoned
// outputs and thread orders as the mma.sync kernel above.
// ---------------------------------------------------------------------------------------

/// Runs the sm_90a window kernel on `s` in every order against the references; returns the
/// case (for planted-race runs) and the output of the first order.
fn check_window_sm90(label: &str, seed: u64, s: WindowShape) -> (WindowCase, Vec<u16>) {
    let (kernel, config) = fa3w::config(&s).unwrap_or_else(|e| panic!("{e}"));
    let case = window_case(label, seed, &s, true);
    eprintln!(
        "{label}: {kernel} grid {:?} ({} tiles of 128 per head)",
        config.grid,
        s.packed_tiles_of(128)
    );
    let params = |out: *mut u16| {
        fa3w::params_emulated(
            &s,
            &fa3w::Buffers {
                qkv: case.qkv_bits.as_ptr(),
                gq: case.gq_bits.as_ptr(),
                gk: case.gk_bits.as_ptr(),
                out,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = run_and_check(
        label,
        seed,
        AttnLaunch { kernel, config },
        s.batch * s.tokens() * s.heads * s.head_dim,
        params,
        &case.want,
        &case.plain,
        &[],
    );
    (case, out)
}

/// Shifted layers with edge windows of 32 to 128 tokens (query and key tiles shorter than
/// 128: the runs past a window's end are loaded from its first run and masked), batch 2.
#[test]
fn sm90_window_d128_shifted_batch2() {
    let s = WindowShape {
        batch: 2,
        grid: [4, 8, 32],
        window: [2, 8, 16],
        shift: [1, 4, 8],
        heads: 2,
        head_dim: 128,
    };
    check_window_sm90("sm90 window dh128 shifted", 31, s);
}

/// Windows of 192 tokens (a full and a ragged query tile, a full and a ragged key tile) and
/// unshifted windows of 512 (four key tiles: the 2-stage ring wraps twice).
#[test]
fn sm90_window_d64_ragged_and_wrapping() {
    let s = WindowShape {
        batch: 1,
        grid: [6, 8, 16],
        window: [3, 8, 8],
        shift: [1, 0, 0],
        heads: 2,
        head_dim: 64,
    };
    check_window_sm90("sm90 window dh64 ragged tiles", 32, s);
    if common::full() {
        let s = WindowShape {
            batch: 1,
            grid: [4, 8, 32],
            window: [4, 8, 16],
            shift: [0, 0, 0],
            heads: 1,
            head_dim: 128,
        };
        check_window_sm90("sm90 window dh128 512-token windows", 33, s);
    }
}

/// `kernels/cuda/attention_sm90_window.cu:<line>` of the one line containing `needle`.
fn sm90_site(needle: &str) -> String {
    common::site_in("cuda/attention_sm90_window.cu", needle)
}

/// The default tier's race-checked sm_90a case (one window of 384 tokens: three query tiles,
/// three key tiles, so a ring stage and its k norms are refilled), and the two planted
/// races: the consumers reading the k norms without waiting for them, and normalizing Q
/// without the proxy fence before wgmma reads it. Each is reported as a race naming the
/// sites; the unmodified kernel is clean on the same inputs.
#[test]
fn sm90_window_race_checked_and_planted_races() {
    let s = WindowShape {
        batch: 1,
        grid: [3, 8, 16],
        window: [3, 8, 16],
        shift: [0, 0, 0],
        heads: 1,
        head_dim: 64,
    };
    let (case, _) = race_checked(|| check_window_sm90("sm90 window, race-checked", 34, s));
    let (_, config) = fa3w::config(&s).unwrap();
    let run = |variant: &str, order: ThreadOrder| {
        let kernel = emu::variant(fa3w::KERNEL_D64, variant).unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0xffffu16; s.tokens() * s.heads * s.head_dim];
        let b = fa3w::Buffers {
            qkv: case.qkv_bits.as_ptr(),
            gq: case.gq_bits.as_ptr(),
            gk: case.gk_bits.as_ptr(),
            out: out.as_mut_ptr(),
        };
        let p = fa3w::params_emulated(&s, &b).unwrap();
        // SAFETY: the buffers have the extents of `s`, which `config` checked; `out` lives
        // until the launch returns.
        race_checked(|| unsafe { emu::launch_with(kernel, config, &p, order) })
    };
    let kinv_read = sm90_site("kinv[s][col] * T::kScaleLog2");
    let kinv_write = sm90_site("kinv[s][r] = 1.0f / sqrtf");
    for order in [ThreadOrder::Forward, ThreadOrder::Reverse] {
        let e = run("no_kinv_wait", order).expect_err("the missing kinv_full wait is reported");
        eprintln!("no_kinv_wait {order:?}: {e}");
        assert_eq!(e.kind, EmuErrorKind::Race, "{e}");
        assert!(
            e.message.contains(&kinv_read) && e.message.contains(&kinv_write),
            "the report names both sites ({kinv_read}, {kinv_write}): {e}"
        );
    }
    let e = run("no_q_fence", ThreadOrder::Forward).expect_err("the missing fence is reported");
    eprintln!("no_q_fence: {e}");
    assert_eq!(e.kind, EmuErrorKind::Race, "{e}");
    assert!(
        e.message.contains("wgmma"),
        "the report names the wgmma read: {e}"
    );
}

#[test]
fn sm90_window_shapes_outside_the_contract_are_errors() {
    let ok = WindowShape {
        batch: 1,
        grid: [4, 8, 32],
        window: [2, 8, 16],
        shift: [1, 4, 8],
        heads: 2,
        head_dim: 128,
    };
    assert!(fa3w::config(&ok).is_ok());
    let bad = |s: WindowShape, needle: &str| {
        let e = fa3w::config(&s).expect_err(needle);
        assert!(
            e.starts_with("attn_sm90_window") && e.contains(needle),
            "{e} (wanted {needle})"
        );
    };
    bad(WindowShape { head_dim: 96, ..ok }, "dh = 96");
    bad(
        WindowShape {
            shift: [1, 4, 4],
            ..ok
        },
        "multiples of 8",
    );
    bad(
        WindowShape {
            grid: [4, 8, 24],
            ..ok
        },
        "not a multiple of the window",
    );
    bad(WindowShape { heads: 0, ..ok }, "heads = 0");
    let null = fa3w::Buffers {
        qkv: std::ptr::null(),
        gq: std::ptr::null(),
        gk: std::ptr::null(),
        out: std::ptr::null_mut(),
    };
    let e = fa3w::params_emulated(&ok, &null).unwrap_err();
    assert!(e.contains("must not be null"), "{e}");
}

/// The sm_90a cubin: no spills or stack, at most the 168 registers 384 threads allow at
/// launch; Q K^T and P V are HGMMA fed by UTMALDG, with no mma.sync, ldmatrix or cp.async.
#[test]
fn sm90_window_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    for (kernel, dh) in [(fa3w::KERNEL_D64, 64u32), (fa3w::KERNEL_D128, 128)] {
        let r = common::resources("attention_sm90_window", kernel, "sm_90a");
        eprintln!(
            "{kernel} sm_90a: {} regs, {} B static smem + {} B dynamic, stack {}, spills {}/{}, \
             HGMMA {}, UTMALDG {}, HMMA {}, LDSM {}, LDGSTS {}",
            r.registers,
            r.shared_bytes,
            fa3w::shared_bytes(dh),
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
            r.hgmma >= dh / 16 + fa3w::BLOCK_KV / 16 && r.utmaldg >= 3,
            "{kernel}: Q K^T and P V must be HGMMA fed by UTMALDG: {r:?}"
        );
        assert_eq!((r.hmma, r.ldsm, r.ldgsts), (0, 0, 0), "{kernel}: {r:?}");
        // The consumers' ping-pong hand-overs (common/fa3_core.cuh, Fa3PingPong).
        assert!(r.bar_arv >= 2, "{kernel}: no named-barrier arrival: {r:?}");
        assert!(
            !r.wgmma_serialized,
            "{kernel}: ptxas serialized its wgmma (C7518): {r:?}"
        );
    }
}
