//! The decoder kernels (`kernels/cuda/conv.cu`) in the emulator against the f64 CPU
//! references of `streamdit_kernels::conv`, computed from the same f16 inputs: the 3x3
//! implicit-GEMM convolution (plain, fused nearest-2x upsample, fused residual) at ragged
//! spatial sizes and the channel counts of the `tiny` and `streamdit-4b` decoders, the causal
//! temporal convolution (stream start with replicated context, a cached context, the UpT frame
//! repeat, residual), and GroupNorm (+ SiLU) at both decoders' group sizes, including a frame
//! whose statistics are split over 256 CTAs; the Wan VAE's causal 3x3x3 convolution (its layer
//! classes, zero and cached context, chunked == whole stream) and its `time_conv` as
//! `conv_t3` launches. Every case runs in forward, reverse and shuffled thread order with
//! NaN-poisoned outputs and fresh random non-zero inputs.
//!
//! Race checker: in the default tier one small case of every entry point (narrow and wide
//! 3x3, temporal, 3x3x3 and 1x1 convolutions, the three GroupNorm kernels) runs under
//! `emu::racecheck`; with `STREAMDIT_FULL=1` every launch does.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::conv::{self, Conv3dShape, Conv3x3Shape, ConvT3Shape, GroupNormShape};
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};

/// Unit roundoff of f32 (the accumulator, the epilogue) and of f16 (the stored output).
const U_F32: f64 = 1.0 / (1u64 << 24) as f64;
const U_F16: f64 = 1.0 / 2048.0;
/// Half the spacing of f16 subnormals: the absolute rounding error of a tiny output.
const F16_SUBNORMAL_HALF_ULP: f64 = 1.0 / (1u64 << 25) as f64;
/// Poison: an f16 NaN, so an output element the kernel never writes fails the comparison.
const POISON_F16: u16 = 0x7fff;

/// f16 values (bits) uniform in [-range, range) plus `offset`, never within 1e-3 of zero
/// before the offset, and the same values in f64.
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

struct Report {
    max_abs: f64,
    rel_l2: f64,
    /// Largest |err| / tol (<= 1 passes).
    worst_share: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max abs err {:.2e}, rel L2 {:.2e}, worst err/tol {:.3}",
            self.max_abs, self.rel_l2, self.worst_share
        )
    }
}

/// Every element within its tolerance (a NaN, i.e. an unwritten element, fails).
fn compare(what: &str, got: &[f64], want: &[f64], tol: &[f64]) -> Report {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den, mut max_abs, mut worst_share) = (0.0, 0.0, 0.0f64, 0.0f64);
    let mut bad = Vec::new();
    let mut n_bad = 0usize;
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        // A NaN error (an unwritten element) is not within tolerance either.
        if err.is_nan() || err > tol[i] {
            n_bad += 1;
            if bad.len() < 5 {
                bad.push((i, got[i], want[i], tol[i]));
            }
        }
        let err = if err.is_nan() { f64::INFINITY } else { err };
        num += err * err;
        den += want[i] * want[i];
        max_abs = max_abs.max(err);
        worst_share = worst_share.max(err / tol[i]);
    }
    let r = Report {
        max_abs,
        rel_l2: (num / den).sqrt(),
        worst_share,
    };
    assert!(
        bad.is_empty(),
        "{what}: {n_bad} of {} elements outside tolerance (index, got, want, tol): {bad:?}; {r}",
        got.len()
    );
    r
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

fn opt_ptr(v: &Option<Vec<u16>>) -> *const u16 {
    v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr())
}

/// Tolerance of a convolution output: `atol + rtol |ref|` with
/// - `(K + 2) u_f32 sum_k |x w|`: the f32 accumulation of K exact f16 products in any order
///   (Higham's sequential-summation bound; the mma's internal order is within it);
/// - `u_f32 (|acc| + |bias| + |residual|) * 4`: the f32 epilogue additions;
/// - `u_f16 |ref|` plus half an f16 subnormal spacing: the final round to nearest f16,
///   which is the dominant term (measured errors reach ~0.5 f16 ulp: worst err/tol near 1
///   means the f16 rounding itself, not the kernel's arithmetic).
fn conv_tolerance(k: usize, abs: f64, epilogue_mag: f64, want: f64) -> f64 {
    (k as f64 + 2.0) * U_F32 * abs
        + 4.0 * U_F32 * epilogue_mag
        + U_F16 * want.abs()
        + F16_SUBNORMAL_HALF_ULP
}

struct ConvData {
    x: Vec<u16>,
    w: Vec<u16>,
    bias: Option<Vec<u16>>,
    residual: Option<Vec<u16>>,
    want: Vec<f64>,
    tol: Vec<f64>,
}

/// A weight packing function of the crate (checkpoint layout -> kernel layout).
type Pack = fn(&[u16], usize, usize) -> Result<Vec<u16>, String>;

/// Random f16 weights `[cout, cin, taps]` in the checkpoint layout (scaled ~ 1 / sqrt(K)),
/// packed by the crate's pack function: the packed bits and their values.
fn weights(
    rng: &mut Rng,
    cout: usize,
    cin: usize,
    taps: usize,
    pack: Pack,
) -> (Vec<u16>, Vec<f64>) {
    let (w_ckpt, _) = random_f16(rng, cout * cin * taps, 1.7 / ((taps * cin) as f32).sqrt());
    let w = pack(&w_ckpt, cout, cin).unwrap();
    let vals = f16_to_f64(&w);
    (w, vals)
}

/// An optional f16 tensor: bits for the kernel, values for the reference.
type Optional = (Option<Vec<u16>>, Option<Vec<f64>>);

fn optional(rng: &mut Rng, on: bool, n: usize, range: f32) -> Optional {
    if on {
        let (b, v) = random_f16(rng, n, range);
        (Some(b), Some(v))
    } else {
        (None, None)
    }
}

fn finish_tolerance(
    r: &conv::Reference,
    k: usize,
    cout: usize,
    bias: &Option<Vec<f64>>,
    residual: &Option<Vec<f64>>,
) -> Vec<f64> {
    (0..r.value.len())
        .map(|i| {
            let b = bias.as_ref().map_or(0.0, |b| b[i % cout].abs());
            let res = residual.as_ref().map_or(0.0, |v| v[i].abs());
            conv_tolerance(k, r.abs[i], r.abs[i] + b + res, r.value[i])
        })
        .collect()
}

fn conv3x3_data(seed: u64, s: &Conv3x3Shape, with_bias: bool, with_residual: bool) -> ConvData {
    let mut rng = Rng::new(seed);
    let (x, xv) = random_f16(&mut rng, s.t * s.h_in * s.w_in * s.cin, 1.0);
    let (w, wv) = weights(&mut rng, s.cout, s.cin, 9, conv::pack_conv3x3_weight::<u16>);
    let (bias, bv) = optional(&mut rng, with_bias, s.cout, 0.5);
    let (residual, rv) = optional(&mut rng, with_residual, s.m() * s.cout, 2.0);
    let r = conv::conv3x3_reference(s, &xv, &wv, bv.as_deref(), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, s.k(), s.cout, &bv, &rv);
    ConvData {
        x,
        w,
        bias,
        residual,
        want: r.value,
        tol,
    }
}

fn check_conv3x3(label: &str, seed: u64, s: Conv3x3Shape, with_bias: bool, with_residual: bool) {
    let d = conv3x3_data(seed, &s, with_bias, with_residual);
    let launch = conv::conv3x3_launch(&s).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut out = vec![POISON_F16; s.m() * s.cout];
        let params = conv::Conv3x3Params {
            x: d.x.as_ptr(),
            w: d.w.as_ptr(),
            bias: opt_ptr(&d.bias),
            residual: opt_ptr(&d.residual),
            out: out.as_mut_ptr(),
            t: s.t as i32,
            h_in: s.h_in as i32,
            w_in: s.w_in as i32,
            cin: s.cin as i32,
            cout: s.cout as i32,
            upsample: i32::from(s.upsample),
        };
        // SAFETY: x (t, h_in, w_in, cin), w (cout, 9 cin), bias (cout) or null, residual and
        // out (t, h_out, w_out, cout): the extents the kernel touches for this shape, which
        // conv3x3_launch validated.
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let r = compare(label, &f16_to_f64(&out), &d.want, &d.tol);
        eprintln!(
            "{label} {} {s:?} bias={with_bias} residual={with_residual} {order:?}: {r}",
            launch.kernel
        );
    }
}

/// Context of the temporal conv: `StreamStart` replicates the first chunk frame (two copies,
/// as the decoder does when a stream begins; for UpT the repeated sequence's first frame is
/// the same frame), `Cached` is two unrelated random frames (a previous chunk's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    StreamStart,
    Cached,
}

fn check_conv_t3(
    label: &str,
    seed: u64,
    s: ConvT3Shape,
    context: Context,
    with_bias: bool,
    with_residual: bool,
) {
    let mut rng = Rng::new(seed);
    let frame = s.hw * s.cin;
    let (mut x, _) = random_f16(&mut rng, (2 + s.t_in) * frame, 1.0);
    if context == Context::StreamStart {
        let first = x[2 * frame..3 * frame].to_vec();
        x[..frame].copy_from_slice(&first);
        x[frame..2 * frame].copy_from_slice(&first);
    }
    let xv = f16_to_f64(&x);
    let (w, wv) = weights(&mut rng, s.cout, s.cin, 3, conv::pack_conv_t3_weight::<u16>);
    let (bias, bv) = optional(&mut rng, with_bias, s.cout, 0.5);
    let (residual, rv) = optional(&mut rng, with_residual, s.m() * s.cout, 2.0);
    let r = conv::conv_t3_reference(&s, &xv, &wv, bv.as_deref(), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, s.k(), s.cout, &bv, &rv);
    let launch = conv::conv_t3_launch(&s).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut out = vec![POISON_F16; s.m() * s.cout];
        let params = conv::ConvT3Params {
            x: x.as_ptr(),
            w: w.as_ptr(),
            bias: opt_ptr(&bias),
            residual: opt_ptr(&residual),
            out: out.as_mut_ptr(),
            t_in: s.t_in as i32,
            hw: s.hw as i32,
            cin: s.cin as i32,
            cout: s.cout as i32,
            upsample_t: i32::from(s.upsample_t),
        };
        // SAFETY: x (2 + t_in, hw, cin), w (cout, 3 cin), bias (cout) or null, residual and
        // out (t_out, hw, cout), validated by conv_t3_launch.
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let rep = compare(label, &f16_to_f64(&out), &r.value, &tol);
        eprintln!(
            "{label} {} {s:?} {context:?} bias={with_bias} residual={with_residual} {order:?}: {rep}",
            launch.kernel
        );
    }
}

/// GroupNorm (+ SiLU) through its three launches. Each group gets its own offset of up to
/// `offset` (several standard deviations), so the statistics must centre to be accurate.
///
/// Tolerance: `u_f16 |ref|` + half an f16 subnormal (the f16 store) +
/// `1.1 |gamma| (1 + |z|) 3e-5`: a mean error e_m and a relative rstd error e_r move the output by
/// `|gamma| rstd e_m + |gamma z| e_r` through the affine, times SiLU's slope (<= 1.1). With
/// f32 statistics over up to n elements per slice and Chan's merge, `rstd e_m` and `e_r` stay
/// within a few hundred u_f32 (3e-5 = 500 u_f32) for |mean| / std up to ~10; plus the SiLU's
/// f32 evaluation (a few u_f32 of |ref|, folded into the same term).
fn check_groupnorm(label: &str, seed: u64, shape: GroupNormShape, silu: bool, offset: f32) {
    let GroupNormShape {
        frames,
        hw,
        c,
        groups,
    } = shape;
    let mut rng = Rng::new(seed);
    let cg = c / groups;
    let offsets: Vec<f32> = (0..frames * groups)
        .map(|_| rng.uniform(-offset, offset))
        .collect();
    let x: Vec<u16> = (0..frames * hw * c)
        .map(|i| {
            let (f, ch) = (i / (hw * c), i % c);
            f16::from_f32(offsets[f * groups + ch / cg] + rng.nonzero(-1.0, 1.0)).to_bits()
        })
        .collect();
    let (gamma, gv) = random_f16(&mut rng, c, 1.5);
    let (beta, bv) = random_f16(&mut rng, c, 0.5);
    let xv = f16_to_f64(&x);
    let (want, z) = conv::groupnorm_reference(&shape, &xv, &gv, &bv, silu).unwrap();
    let tol: Vec<f64> = (0..want.len())
        .map(|i| {
            U_F16 * want[i].abs()
                + F16_SUBNORMAL_HALF_ULP
                + 1.1 * gv[i % c].abs() * (1.0 + z[i].abs()) * 3e-5
        })
        .collect();
    let plan = conv::groupnorm_plan(&shape).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut part = common::poisoned_f32(plan.part_len);
        let mut stats = common::poisoned_f32(plan.stats_len);
        let mut out = vec![POISON_F16; frames * hw * c];
        let sp = conv::GroupNormStatsParams {
            x: x.as_ptr(),
            part: part.as_mut_ptr(),
            frames: frames as i32,
            hw: hw as i32,
            c: c as i32,
            groups: groups as i32,
            pixels_per_split: plan.pixels_per_split as i32,
        };
        // SAFETY: x (frames, hw, c), part (frames, splits, groups) pairs; the grid is
        // (splits, frames) as planned.
        unsafe { run(conv::KERNEL_GN_STATS, plan.stats, &sp, order) };
        let fp = conv::GroupNormFinalizeParams {
            part: part.as_ptr(),
            stats: stats.as_mut_ptr(),
            frames: frames as i32,
            splits: plan.splits as i32,
            groups: groups as i32,
            hw: hw as i32,
            cg: cg as i32,
            pixels_per_split: plan.pixels_per_split as i32,
        };
        // SAFETY: part as written above, stats (frames, groups) pairs.
        unsafe { run(conv::KERNEL_GN_FINALIZE, plan.finalize, &fp, order) };
        let (mean_err, rstd_err) = check_stats(label, &stats, &xv, &shape);
        let ap = conv::GroupNormApplyParams {
            x: x.as_ptr(),
            stats: stats.as_ptr(),
            gamma: gamma.as_ptr(),
            beta: beta.as_ptr(),
            out: out.as_mut_ptr(),
            hw: hw as i32,
            c: c as i32,
            groups: groups as i32,
            silu: i32::from(silu),
        };
        // SAFETY: x and out (frames, hw, c), stats (frames, groups) pairs, gamma/beta (c).
        unsafe { run(conv::KERNEL_GN_APPLY, plan.apply, &ap, order) };
        let r = compare(label, &f16_to_f64(&out), &want, &tol);
        eprintln!(
            "{label} {shape:?} silu={silu} offset={offset} splits={} {order:?}: {r}; \
             stats: mean err / (std + |mean|) {mean_err:.1e}, rstd rel err {rstd_err:.1e}",
            plan.splits
        );
    }
}

/// The finalized statistics `(mean, rstd)` per (frame, group) against f64: the mean within
/// `STATS_TOL (std + |mean|)` (f32 sums err relative to the magnitudes summed; the error
/// shifts every normalised value by `err / std`) and rstd within `STATS_TOL` relative.
/// 2e-6 (34 u_f32) is far tighter
/// than what the output comparison can see behind the f16 rounding, so a statistics pass
/// that loses precision (a one-pass `E[x^2] - mean^2`, or a merge without Chan's term)
/// fails here. Returns the largest of each error.
fn check_stats(label: &str, stats: &[f32], x: &[f64], shape: &GroupNormShape) -> (f64, f64) {
    const STATS_TOL: f64 = 2e-6;
    let GroupNormShape {
        frames,
        hw,
        c,
        groups,
    } = *shape;
    let cg = c / groups;
    let (mut worst_mean, mut worst_rstd) = (0.0f64, 0.0f64);
    for f in 0..frames {
        for g in 0..groups {
            let vals: Vec<f64> = (0..hw)
                .flat_map(|p| (g * cg..(g + 1) * cg).map(move |ch| x[(f * hw + p) * c + ch]))
                .collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + conv::GN_EPS).sqrt();
            let (gm, gr) = (
                stats[2 * (f * groups + g)] as f64,
                stats[2 * (f * groups + g) + 1] as f64,
            );
            let mean_err = (gm - mean).abs() * rstd / (1.0 + mean.abs() * rstd);
            let rstd_err = (gr - rstd).abs() / rstd;
            assert!(
                mean_err <= STATS_TOL && rstd_err <= STATS_TOL,
                "{label}: frame {f} group {g}: mean {gm} vs {mean}, rstd {gr} vs {rstd}"
            );
            worst_mean = worst_mean.max(mean_err);
            worst_rstd = worst_rstd.max(rstd_err);
        }
    }
    (worst_mean, worst_rstd)
}

fn c3(t: usize, h_in: usize, w_in: usize, cin: usize, cout: usize, upsample: bool) -> Conv3x3Shape {
    Conv3x3Shape {
        t,
        h_in,
        w_in,
        cin,
        cout,
        upsample,
    }
}

#[test]
fn conv3x3_tiny_channels() {
    // conv_in 8 -> 64 (Cin one 16-byte chunk, K = 72: a K tail in the third k-tile).
    race_checked(|| check_conv3x3("conv_in", 1, c3(2, 7, 9, 8, 64, false), true, false));
    // up-block UpS 64 -> 32 with the fused 2x upsample (13x5 -> 26x10) and a residual.
    check_conv3x3("ups 64->32", 2, c3(1, 13, 5, 64, 32, true), true, true);
    // Res conv 32 -> 16, residual, no bias; ragged 9x7 over 3 frames (tiles cross frames).
    check_conv3x3("res 32->16", 3, c3(3, 9, 7, 32, 16, false), false, true);
    // conv_out 16 -> 3: odd Cout, scalar stores, 61 of 64 columns of the tile unused.
    check_conv3x3("conv_out 16->3", 4, c3(2, 13, 5, 16, 3, false), true, false);
}

#[test]
fn conv3x3_4b_channels() {
    // 512 -> 512 (K = 4608, 144 k-tiles, 8 column tiles) at 4x5.
    check_conv3x3("mid 512->512", 5, c3(1, 4, 5, 512, 512, false), true, true);
    // 256 -> 128 with the fused upsample, 3x4 -> 6x8.
    race_checked(|| check_conv3x3("ups 256->128", 6, c3(1, 3, 4, 256, 128, true), true, false));
    // up.2 UpS 256 -> 256 over 2 frames, 5x7 -> 10x14: 3 pixel tiles (ragged, crossing the
    // frame boundary) x 2 column tiles of the wide entry, residual.
    check_conv3x3(
        "ups 256->256 x2",
        12,
        c3(2, 5, 7, 256, 256, true),
        true,
        true,
    );
    // conv_out 128 -> 3.
    check_conv3x3(
        "conv_out 128->3",
        7,
        c3(1, 9, 7, 128, 3, false),
        true,
        false,
    );
}

#[test]
fn conv3x3_edges() {
    // 1x1 frames: every tap but the centre is padding.
    check_conv3x3("1x1", 8, c3(3, 1, 1, 16, 32, false), true, false);
    // 1x2 upsampled to 2x4; 1-pixel-wide columns.
    check_conv3x3("1x2 up", 9, c3(2, 1, 2, 16, 16, true), true, true);
    check_conv3x3("5x1", 10, c3(2, 5, 1, 32, 64, false), false, false);
    // Several pixel tiles, ragged last tile (3 x 11 x 13 = 429 = 3 * 128 + 45), Cout 72 = a
    // full and a ragged column tile.
    check_conv3x3("11x13 x3", 11, c3(3, 11, 13, 64, 72, false), true, true);
}

fn check_conv1x1(label: &str, seed: u64, (m, cin, cout): (usize, usize, usize), residual: bool) {
    let mut rng = Rng::new(seed);
    let (x, xv) = random_f16(&mut rng, m * cin, 1.0);
    // [cout, cin, 1, 1] is used as is (no packing).
    let (w, wv) = random_f16(&mut rng, cout * cin, 1.7 / (cin as f32).sqrt());
    let (bias, bv) = random_f16(&mut rng, cout, 0.5);
    let (res, rv) = optional(&mut rng, residual, m * cout, 2.0);
    let r = conv::conv1x1_reference(m, &xv, &wv, Some(&bv), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, cin, cout, &Some(bv), &rv);
    let launch = conv::conv1x1_launch(m, cin, cout).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut out = vec![POISON_F16; m * cout];
        let params = conv::Conv1x1Params {
            x: x.as_ptr(),
            w: w.as_ptr(),
            bias: bias.as_ptr(),
            residual: opt_ptr(&res),
            out: out.as_mut_ptr(),
            m: m as i32,
            cin: cin as i32,
            cout: cout as i32,
        };
        // SAFETY: x (m, cin), w (cout, cin), bias (cout), residual null or (m, cout), out
        // (m, cout), validated by conv1x1_launch.
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let rep = compare(label, &f16_to_f64(&out), &r.value, &tol);
        eprintln!(
            "{label} {} m={m} {cin}->{cout} residual={residual} {order:?}: {rep}",
            launch.kernel
        );
    }
}

#[test]
fn conv1x1_skip_and_projection() {
    // tiny: up.2's skip 64 -> 32 over 2 x 7 x 9 pixels; mid attention out 64 -> 64 + x.
    race_checked(|| check_conv1x1("skip 64->32", 50, (126, 64, 32), false));
    check_conv1x1("attn out 64->64", 51, (130, 64, 64), true);
    // 4b: up.2's skip 512 -> 256 (wide entry), up.3's 256 -> 128 with a residual; 16 -> 3
    // (odd Cout) for the narrow entry's scalar path.
    race_checked(|| check_conv1x1("skip 512->256", 52, (40, 512, 256), false));
    check_conv1x1("256->128 residual", 53, (300, 256, 128), true);
    check_conv1x1("16->3", 54, (77, 16, 3), true);
}

fn t3(t_in: usize, hw: usize, cin: usize, cout: usize, upsample_t: bool) -> ConvT3Shape {
    ConvT3Shape {
        t_in,
        hw,
        cin,
        cout,
        upsample_t,
    }
}

#[test]
fn conv_t3_tiny_channels() {
    // conv_in_t 64 -> 64 at stream start (context = copies of frame 0), 7x9 pixels.
    check_conv_t3(
        "conv_in_t start",
        20,
        t3(2, 63, 64, 64, false),
        Context::StreamStart,
        true,
        false,
    );
    // A later chunk: cached context, ConvT2 of a Res block with the skip fused as residual.
    check_conv_t3(
        "res conv2_t cached",
        21,
        t3(3, 65, 64, 64, false),
        Context::Cached,
        true,
        true,
    );
    // Narrow widths, one frame.
    race_checked(|| {
        check_conv_t3(
            "16->16",
            22,
            t3(1, 35, 16, 16, false),
            Context::Cached,
            true,
            true,
        )
    });
    check_conv_t3(
        "32->16",
        23,
        t3(2, 13, 32, 16, false),
        Context::StreamStart,
        false,
        false,
    );
}

#[test]
fn conv_t3_upsample_time() {
    // UpT: each chunk frame twice (2 -> 4 frames), at stream start and with a cached context.
    check_conv_t3(
        "upt start",
        24,
        t3(2, 65, 64, 64, true),
        Context::StreamStart,
        true,
        false,
    );
    check_conv_t3(
        "upt cached",
        25,
        t3(3, 21, 32, 32, true),
        Context::Cached,
        true,
        true,
    );
}

#[test]
fn conv_t3_4b_channels() {
    check_conv_t3(
        "4b 512->512",
        26,
        t3(2, 20, 512, 512, false),
        Context::Cached,
        true,
        true,
    );
    // up.3 width, 3 frames of 50 pixels: 2 pixel tiles of the wide entry.
    race_checked(|| {
        check_conv_t3(
            "4b 128->128",
            28,
            t3(3, 50, 128, 128, false),
            Context::Cached,
            true,
            true,
        )
    });
    check_conv_t3(
        "4b 256->256 upt",
        27,
        t3(1, 30, 256, 256, true),
        Context::StreamStart,
        true,
        false,
    );
}

fn gn(frames: usize, hw: usize, c: usize, groups: usize) -> GroupNormShape {
    GroupNormShape {
        frames,
        hw,
        c,
        groups,
    }
}

#[test]
fn groupnorm_tiny_groups() {
    // tiny: 8 groups of 64 / 32 / 16 channels (8, 4, 2 channels a group).
    race_checked(|| check_groupnorm("tiny c64", 30, gn(2, 63, 64, 8), true, 3.0));
    check_groupnorm("tiny c32", 31, gn(3, 65, 32, 8), false, 3.0);
    check_groupnorm("tiny c16", 32, gn(2, 35, 16, 8), true, 3.0);
}

#[test]
fn groupnorm_4b_groups() {
    // streamdit-4b: 32 groups of 512 / 256 / 128 channels (16, 8, 4 channels a group).
    check_groupnorm("4b c512", 33, gn(1, 70, 512, 32), true, 3.0);
    check_groupnorm("4b c256", 34, gn(2, 45, 256, 32), true, 3.0);
    check_groupnorm("4b c128", 35, gn(1, 480, 128, 32), false, 3.0);
}

#[test]
fn groupnorm_split_statistics() {
    // 64x64 pixels: 256 statistics CTAs of 16 pixels each per frame, merged by Chan's
    // formula; group means up to 8 standard deviations away from zero.
    check_groupnorm("split 64x64 c128", 36, gn(1, 4096, 128, 32), true, 8.0);
    // 128x96 pixels: 48 per split, 768 chunks of 8 per statistics CTA (3 per thread).
    check_groupnorm("split 128x96 c128", 38, gn(1, 128 * 96, 128, 32), true, 8.0);
    // 33x31 = 1023 pixels: 4 per split, a shorter last split (3).
    check_groupnorm("split ragged c64", 37, gn(2, 1023, 64, 8), true, 8.0);
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let expect_err = |r: Result<conv::ConvLaunch, String>, needle: &str| {
        let e = r.expect_err("shape must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    };
    expect_err(
        conv::conv3x3_launch(&c3(1, 4, 4, 12, 16, false)),
        "Cin = 12",
    );
    expect_err(conv::conv3x3_launch(&c3(1, 4, 4, 3, 16, false)), "Cin = 3");
    expect_err(conv::conv3x3_launch(&c3(1, 4, 4, 16, 0, false)), "Cout");
    expect_err(conv::conv3x3_launch(&c3(0, 4, 4, 16, 16, false)), "empty");
    expect_err(
        conv::conv3x3_launch(&c3(600, 2048, 2048, 16, 16, true)),
        "exceeds i32",
    );
    expect_err(
        conv::conv3x3_launch(&c3(33, 512, 512, 16, 16, false)),
        "grid's y limit",
    );
    expect_err(conv::conv_t3_launch(&t3(0, 4, 16, 16, false)), "empty");
    expect_err(conv::conv_t3_launch(&t3(2, 4, 20, 16, false)), "Cin = 20");
    // The column tile: narrow (64) unless Cout is a multiple of 128.
    let l = conv::conv3x3_launch(&c3(2, 7, 9, 8, 3, false)).unwrap();
    assert_eq!(l.kernel, conv::KERNEL_CONV3X3);
    let c = l.config;
    assert_eq!((c.grid.x, c.grid.y, c.block.x), (1, 1, 256));
    assert_eq!(c.shared_bytes, 48 * 1024);
    let l = conv::conv3x3_launch(&c3(1, 256, 256, 128, 128, true)).unwrap();
    assert_eq!(l.kernel, conv::KERNEL_CONV3X3_N128);
    assert_eq!((l.config.grid.x, l.config.grid.y), (1, 2048));
    assert_eq!(l.config.shared_bytes, 64 * 1024);
    let l = conv::conv3x3_launch(&c3(1, 8, 8, 64, 192, false)).unwrap();
    assert_eq!((l.kernel, l.config.grid.x), (conv::KERNEL_CONV3X3, 3));
    let l = conv::conv_t3_launch(&t3(2, 64, 512, 512, true)).unwrap();
    assert_eq!((l.kernel, l.config.grid.x), (conv::KERNEL_CONV_T3_N128, 4));
    let l = conv::conv_t3_launch(&t3(2, 64, 64, 64, false)).unwrap();
    assert_eq!(l.kernel, conv::KERNEL_CONV_T3);
    let l = conv::conv1x1_launch(4096, 512, 1536).unwrap();
    assert_eq!((l.kernel, l.config.grid.x), (conv::KERNEL_CONV1X1_N128, 12));
    expect_err(conv::conv1x1_launch(0, 64, 64), "M = 0");
    expect_err(conv::conv1x1_launch(16, 4, 64), "Cin = 4");
    let gn_err = |s: GroupNormShape, needle: &str| {
        let e = conv::groupnorm_plan(&s).expect_err("shape must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    gn_err(gn(1, 16, 24, 8), "C = 24");
    gn_err(gn(1, 16, 4096, 32), "C = 4096");
    gn_err(gn(1, 16, 64, 24), "24 groups");
    gn_err(gn(0, 16, 64, 8), "empty");
    let p = conv::groupnorm_plan(&gn(8, 512 * 512, 128, 32)).unwrap();
    assert_eq!((p.splits, p.pixels_per_split), (256, 1024));
    assert_eq!(p.apply.grid.x, 2048);
}

/// Runs `conv_t3` on `x [2 + t_in, hw, cin]` (context first) in the given order; f16 bits out.
fn run_conv_t3(
    s: &ConvT3Shape,
    x: &[u16],
    w: &[u16],
    bias: &[u16],
    order: ThreadOrder,
) -> Vec<u16> {
    assert_eq!(x.len(), (2 + s.t_in) * s.hw * s.cin);
    let launch = conv::conv_t3_launch(s).unwrap();
    let mut out = vec![POISON_F16; s.m() * s.cout];
    let params = conv::ConvT3Params {
        x: x.as_ptr(),
        w: w.as_ptr(),
        bias: bias.as_ptr(),
        residual: std::ptr::null(),
        out: out.as_mut_ptr(),
        t_in: s.t_in as i32,
        hw: s.hw as i32,
        cin: s.cin as i32,
        cout: s.cout as i32,
        upsample_t: i32::from(s.upsample_t),
    };
    // SAFETY: x (2 + t_in, hw, cin) (asserted), w (cout, 3 cin), bias (cout), out
    // (t_out, hw, cout), as conv_t3_launch validated.
    unsafe { run(launch.kernel, launch.config, &params, order) };
    out
}

/// The cache contract of the temporal conv: decoding a stream chunk by chunk, each chunk's
/// context being the previous chunk's last two input frames (of the repeated sequence, for
/// UpT), gives bit for bit the output of one launch over the whole stream with the
/// stream-start context (two copies of the first frame). Each output element's K-order
/// accumulation sees the same operands either way, so equality is exact.
#[test]
fn conv_t3_chunked_stream_equals_whole_stream() {
    for (seed, upsample_t) in [(40u64, false), (41, true)] {
        let (hw, cin, cout, chunk, chunks) = (13, 32, 16, 2, 3);
        let mut rng = Rng::new(seed);
        let frame = hw * cin;
        let (frames, _) = random_f16(&mut rng, chunks * chunk * frame, 1.0);
        let (w, _) = weights(&mut rng, cout, cin, 3, conv::pack_conv_t3_weight::<u16>);
        let (bias, _) = random_f16(&mut rng, cout, 0.5);
        let first = &frames[..frame];
        // Whole stream: context = two copies of frame 0.
        let whole_shape = t3(chunks * chunk, hw, cin, cout, upsample_t);
        let mut whole_x = [first, first].concat();
        whole_x.extend_from_slice(&frames);
        for order in ThreadOrder::all(seed) {
            let whole = run_conv_t3(&whole_shape, &whole_x, &w, &bias, order);
            assert!(whole.iter().all(|&b| !f16::from_bits(b).is_nan()));
            let shape = t3(chunk, hw, cin, cout, upsample_t);
            let mut context = [first, first].concat();
            let mut streamed = Vec::new();
            for c in 0..chunks {
                let body = &frames[c * chunk * frame..(c + 1) * chunk * frame];
                let x = [&context[..], body].concat();
                streamed.extend(run_conv_t3(&shape, &x, &w, &bias, order));
                // The cache for the next chunk: the last two frames of this layer's input
                // sequence (with UpT both are the repeated last chunk frame).
                let last = &body[(chunk - 1) * frame..];
                context = if upsample_t {
                    [last, last].concat()
                } else {
                    body[(chunk - 2) * frame..].to_vec()
                };
            }
            assert!(
                streamed == whole,
                "chunked decoding differs from the whole stream (upsample_t {upsample_t}, \
                 {order:?})"
            );
        }
        eprintln!("chunked == whole stream, upsample_t {upsample_t}: bit-exact in all orders");
    }
}

// ---------------------------------------------------------------------------------------
// The Wan VAE's causal 3x3x3 convolution (`conv3d_f16`, docs/wan_vae.md).
// ---------------------------------------------------------------------------------------

fn c3d(t: usize, height: usize, width: usize, cin: usize, cout: usize) -> Conv3dShape {
    Conv3dShape {
        t,
        height,
        width,
        cin,
        cout,
    }
}

/// Runs `conv3d` on the buffer `x [2 + t, h, w, cin]` (context first); f16 bits out.
fn run_conv3d(
    s: &Conv3dShape,
    x: &[u16],
    w: &[u16],
    bias: Option<&[u16]>,
    residual: Option<&[u16]>,
    order: ThreadOrder,
) -> Vec<u16> {
    assert_eq!(x.len(), s.input_len());
    assert_eq!(w.len(), s.cout * s.k());
    let launch = conv::conv3d_launch(s).unwrap();
    let mut out = vec![POISON_F16; s.m() * s.cout];
    let params = conv::Conv3dParams {
        x: x.as_ptr(),
        w: w.as_ptr(),
        bias: bias.map_or(std::ptr::null(), <[u16]>::as_ptr),
        residual: residual.map_or(std::ptr::null(), <[u16]>::as_ptr),
        out: out.as_mut_ptr(),
        t: s.t as i32,
        height: s.height as i32,
        width: s.width as i32,
        cin: s.cin as i32,
        cout: s.cout as i32,
    };
    // SAFETY: x (2 + t, h, w, cin) and w (cout, 27 cin) (asserted), bias (cout) or null,
    // residual null or (t, h, w, cout) (the callers' buffers), out (t, h, w, cout); the shape
    // was validated by conv3d_launch.
    unsafe { run(launch.kernel, launch.config, &params, order) };
    out
}

/// Context of the 3x3x3 conv: the Wan VAE's stream start is two *zero* frames (the causal
/// padding), a later chunk's is two random frames (the cache).
fn check_conv3d(
    label: &str,
    seed: u64,
    s: Conv3dShape,
    context: Context,
    with_bias: bool,
    with_residual: bool,
) {
    let mut rng = Rng::new(seed);
    let frame = s.height * s.width * s.cin;
    let (mut x, _) = random_f16(&mut rng, s.input_len(), 1.0);
    if context == Context::StreamStart {
        x[..2 * frame].fill(0);
    }
    let xv = f16_to_f64(&x);
    let (w, wv) = weights(&mut rng, s.cout, s.cin, 27, conv::pack_conv3d_weight::<u16>);
    let (bias, bv) = optional(&mut rng, with_bias, s.cout, 0.5);
    let (residual, rv) = optional(&mut rng, with_residual, s.m() * s.cout, 2.0);
    let r = conv::conv3d_reference(&s, &xv, &wv, bv.as_deref(), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, s.k(), s.cout, &bv, &rv);
    let kernel = conv::conv3d_launch(&s).unwrap().kernel;
    for order in ThreadOrder::all(seed) {
        let out = run_conv3d(&s, &x, &w, bias.as_deref(), residual.as_deref(), order);
        let rep = compare(label, &f16_to_f64(&out), &r.value, &tol);
        eprintln!(
            "{label} {kernel} {s:?} {context:?} bias={with_bias} residual={with_residual} \
             {order:?}: {rep}"
        );
    }
}

#[test]
fn conv3d_vae_layers() {
    // A residual block's conv at a narrow width: 2 frames of 5x7 (70 pixels, one ragged
    // pixel tile), 16 -> 24 (a ragged column tile), cached context, bias and residual.
    race_checked(|| {
        check_conv3d(
            "3d 16->24 cached",
            60,
            c3d(2, 5, 7, 16, 24),
            Context::Cached,
            true,
            true,
        )
    });
    // decoder.conv1's shape class (Cin 16, Cout a multiple of 128: the wide entry) at stream
    // start (zero context), one frame of 4x5.
    race_checked(|| {
        check_conv3d(
            "3d 16->128 start",
            61,
            c3d(1, 4, 5, 16, 128),
            Context::StreamStart,
            true,
            false,
        )
    });
    // head.2: 96 -> 3 (odd Cout, scalar stores), 2 frames of 3x5.
    check_conv3d(
        "3d head 96->3",
        62,
        c3d(2, 3, 5, 96, 3),
        Context::Cached,
        true,
        false,
    );
}

#[test]
fn conv3d_vae_widths_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the VAE's widths");
        return;
    }
    // Stage 2's 192 -> 192 over 3 frames of 9x11 (297 pixels: 3 tiles, the last ragged and
    // crossing frames), residual, no bias.
    check_conv3d(
        "3d 192->192",
        63,
        c3d(3, 9, 11, 192, 192),
        Context::Cached,
        false,
        true,
    );
    // The mid blocks' 384 -> 384 (K = 10368, 324 k-tiles) at 2 frames of 6x7, wide entry.
    check_conv3d(
        "3d 384->384",
        64,
        c3d(2, 6, 7, 384, 384),
        Context::Cached,
        true,
        true,
    );
    // Stage 3's 96 -> 96 at stream start, 1-pixel-wide frames (every dx tap but the centre
    // is padding), 4 frames.
    check_conv3d(
        "3d 96->96 13x1",
        65,
        c3d(4, 13, 1, 96, 96),
        Context::StreamStart,
        true,
        false,
    );
}

/// The cache contract of the Wan VAE's causal convolution (`CausalConv3d` with its
/// `cache_x`): chunk by chunk, each chunk's buffer being `[cache, chunk]` with the cache the
/// last two frames of the previous buffer (zeros at the stream start; a 1-frame chunk keeps
/// the previous cache's last frame), gives bit for bit one launch over the whole stream
/// with two zero frames in front. Chunks of 2, 1, 3 and 1 frames.
#[test]
fn conv3d_chunked_stream_equals_whole_stream() {
    let (h, w, cin, cout) = (4, 5, 16, 8);
    let chunks = [2usize, 1, 3, 1];
    let total: usize = chunks.iter().sum();
    let mut rng = Rng::new(66);
    let frame = h * w * cin;
    let (frames, _) = random_f16(&mut rng, total * frame, 1.0);
    let (wt, _) = weights(&mut rng, cout, cin, 27, conv::pack_conv3d_weight::<u16>);
    let (bias, _) = random_f16(&mut rng, cout, 0.5);
    let mut whole_x = vec![0u16; 2 * frame];
    whole_x.extend_from_slice(&frames);
    for order in ThreadOrder::all(66) {
        let whole = run_conv3d(
            &c3d(total, h, w, cin, cout),
            &whole_x,
            &wt,
            Some(&bias),
            None,
            order,
        );
        assert!(whole.iter().all(|&b| !f16::from_bits(b).is_nan()));
        let mut cache = vec![0u16; 2 * frame];
        let (mut streamed, mut start) = (Vec::new(), 0);
        for &n in &chunks {
            let mut x = cache.clone();
            x.extend_from_slice(&frames[start * frame..(start + n) * frame]);
            streamed.extend(run_conv3d(
                &c3d(n, h, w, cin, cout),
                &x,
                &wt,
                Some(&bias),
                None,
                order,
            ));
            cache = x[x.len() - 2 * frame..].to_vec();
            start += n;
        }
        assert!(
            streamed == whole,
            "chunked 3x3x3 decoding differs from the whole stream ({order:?})"
        );
    }
    eprintln!("conv3d chunks {chunks:?} == whole stream: bit-exact in all orders");
}

/// The Wan VAE's `time_conv` (`Resample` upsample3d: CausalConv3d C -> 2C, kernel (3, 1, 1),
/// output channels `[0, C)` to frame `2t`, `[C, 2C)` to frame `2t + 1`) through the existing
/// `conv_t3_f16` as docs/wan_vae.md's device table maps it: one launch per (chunk frame t,
/// half j) with `t_in = 1`, the input window `buffer + t` frames, the weight and bias rows of
/// half j, and the output at frame `2t + j`. At stream start the first frame bypasses the
/// convolution (the `'Rep'` rule): output frame 0 is `x_0` and the buffer is
/// `[0, 0, x_1, ..]`. Checked against an f64 loop over the checkpoint layout
/// `[2C, C, 3, 1, 1]`, with poisoned outputs.
#[test]
fn vae_time_conv_maps_to_conv_t3_launches() {
    let (hw, c, t) = (37, 16, 3);
    let mut rng = Rng::new(67);
    let frame = hw * c;
    let (chunk, chunk_v) = random_f16(&mut rng, t * frame, 1.0);
    let (w_ckpt, _) = random_f16(&mut rng, 2 * c * c * 3, 1.7 / ((3 * c) as f32).sqrt());
    let w_v = f16_to_f64(&w_ckpt);
    let w = conv::pack_conv_t3_weight(&w_ckpt, 2 * c, c).unwrap();
    let (bias, bias_v) = random_f16(&mut rng, 2 * c, 0.5);
    for (start, seed) in [(true, 68u64), (false, 69)] {
        // Cached history for a later chunk; zeros and the bypass at stream start.
        let bypass = usize::from(start);
        let (cache, cache_v) = if start {
            (vec![0u16; 2 * frame], vec![0.0; 2 * frame])
        } else {
            random_f16(&mut Rng::new(seed), 2 * frame, 1.0)
        };
        let mut buffer = cache.clone();
        buffer.extend_from_slice(&chunk[bypass * frame..]);
        let mut seq = cache_v.clone();
        seq.extend_from_slice(&chunk_v[bypass * frame..]);
        let convolved = t - bypass;
        let frames_out = bypass + 2 * convolved;
        // f64 reference of the module: out[bypass + 2u + j][p][co] = b[jC + co] +
        // sum_{ci, d} W[jC + co, ci, d] seq[u + d][p][ci] (seq has the 2 history frames first).
        let (mut want, mut tol) = (vec![0.0; frames_out * frame], vec![0.0; frames_out * frame]);
        want[..bypass * frame].copy_from_slice(&chunk_v[..bypass * frame]);
        for u in 0..convolved {
            for j in 0..2 {
                for p in 0..hw {
                    for co in 0..c {
                        let row = j * c + co;
                        let (mut acc, mut a) = (bias_v[row], 0.0);
                        for ci in 0..c {
                            for d in 0..3 {
                                let prod =
                                    w_v[(row * c + ci) * 3 + d] * seq[((u + d) * hw + p) * c + ci];
                                acc += prod;
                                a += prod.abs();
                            }
                        }
                        let o = ((bypass + 2 * u + j) * hw + p) * c + co;
                        want[o] = acc;
                        tol[o] = conv_tolerance(3 * c, a, a + bias_v[row].abs(), acc);
                    }
                }
            }
        }
        for order in ThreadOrder::all(seed) {
            let mut out = vec![POISON_F16; frames_out * frame];
            // The lowering's copy of the bypassed first frame.
            out[..bypass * frame].copy_from_slice(&chunk[..bypass * frame]);
            let shape = t3(1, hw, c, c, false);
            let launch = conv::conv_t3_launch(&shape).unwrap();
            for u in 0..convolved {
                for j in 0..2 {
                    let params = conv::ConvT3Params {
                        x: buffer[u * frame..].as_ptr(),
                        w: w[j * c * 3 * c..].as_ptr(),
                        bias: bias[j * c..].as_ptr(),
                        residual: std::ptr::null(),
                        out: out[(bypass + 2 * u + j) * frame..].as_mut_ptr(),
                        t_in: 1,
                        hw: hw as i32,
                        cin: c as i32,
                        cout: c as i32,
                        upsample_t: 0,
                    };
                    // SAFETY: x points at 3 frames of (hw, c) inside buffer (u + 3 <= 2 +
                    // convolved), w at c rows of (3 c) and bias at c values of half j, out at
                    // one frame of (hw, c) inside out: the extents of a t_in = 1 launch.
                    unsafe { run(launch.kernel, launch.config, &params, order) };
                }
            }
            let rep = compare("time_conv", &f16_to_f64(&out), &want, &tol);
            eprintln!("time_conv via conv_t3, stream start {start}, {order:?}: {rep}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The encoders' downsampling convolutions (`conv3x3s2_f16`, `conv_tstride_f16`; docs/taehv.md
// "The encoder", docs/tae.md "Encoder").
// ---------------------------------------------------------------------------------------

fn s2(
    t: usize,
    h_in: usize,
    w_in: usize,
    cin: usize,
    cout: usize,
    pad: usize,
) -> conv::Conv3x3S2Shape {
    conv::Conv3x3S2Shape {
        t,
        h_in,
        w_in,
        cin,
        cout,
        pad,
    }
}

fn check_conv3x3s2(
    label: &str,
    seed: u64,
    s: conv::Conv3x3S2Shape,
    with_bias: bool,
    with_residual: bool,
) {
    let mut rng = Rng::new(seed);
    let (x, xv) = random_f16(&mut rng, s.t * s.h_in * s.w_in * s.cin, 1.0);
    let (w, wv) = weights(&mut rng, s.cout, s.cin, 9, conv::pack_conv3x3_weight::<u16>);
    let (bias, bv) = optional(&mut rng, with_bias, s.cout, 0.5);
    let (residual, rv) = optional(&mut rng, with_residual, s.m() * s.cout, 2.0);
    let r = conv::conv3x3s2_reference(&s, &xv, &wv, bv.as_deref(), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, s.k(), s.cout, &bv, &rv);
    let launch = conv::conv3x3s2_launch(&s).unwrap();
    for order in ThreadOrder::all(seed) {
        let mut out = vec![POISON_F16; s.m() * s.cout];
        let params = conv::Conv3x3S2Params {
            x: x.as_ptr(),
            w: w.as_ptr(),
            bias: opt_ptr(&bias),
            residual: opt_ptr(&residual),
            out: out.as_mut_ptr(),
            t: s.t as i32,
            h_in: s.h_in as i32,
            w_in: s.w_in as i32,
            cin: s.cin as i32,
            cout: s.cout as i32,
            pad: s.pad as i32,
        };
        // SAFETY: x (t, h_in, w_in, cin), w (cout, 9 cin), bias (cout) or null, residual and
        // out (t, h_out, w_out, cout): the extents the kernel touches for this shape, which
        // conv3x3s2_launch validated.
        unsafe { run(launch.kernel, launch.config, &params, order) };
        let rep = compare(label, &f16_to_f64(&out), &r.value, &tol);
        eprintln!(
            "{label} {} {s:?} bias={with_bias} residual={with_residual} {order:?}: {rep}",
            launch.kernel
        );
    }
}

fn ts(
    t_out: usize,
    hw: usize,
    cin: usize,
    cout: usize,
    taps: usize,
    stride: usize,
) -> conv::ConvTStrideShape {
    conv::ConvTStrideShape {
        t_out,
        hw,
        cin,
        cout,
        taps,
        stride,
    }
}

/// Runs `conv_tstride` on the buffer `x [frames_in, hw, cin]`; f16 bits out.
fn run_conv_tstride(
    s: &conv::ConvTStrideShape,
    x: &[u16],
    w: &[u16],
    bias: Option<&[u16]>,
    residual: Option<&[u16]>,
    order: ThreadOrder,
) -> Vec<u16> {
    assert_eq!(x.len(), s.frames_in() * s.hw * s.cin);
    assert_eq!(w.len(), s.cout * s.k());
    let launch = conv::conv_tstride_launch(s).unwrap();
    let mut out = vec![POISON_F16; s.m() * s.cout];
    let params = conv::ConvTStrideParams {
        x: x.as_ptr(),
        w: w.as_ptr(),
        bias: bias.map_or(std::ptr::null(), <[u16]>::as_ptr),
        residual: residual.map_or(std::ptr::null(), <[u16]>::as_ptr),
        out: out.as_mut_ptr(),
        t_out: s.t_out as i32,
        hw: s.hw as i32,
        cin: s.cin as i32,
        cout: s.cout as i32,
        taps: s.taps as i32,
        stride: s.stride as i32,
    };
    // SAFETY: x (frames_in, hw, cin) and w (cout, taps cin) (asserted), bias (cout) or null,
    // residual null or (t_out, hw, cout) (the callers'), out (t_out, hw, cout); the shape was
    // validated by conv_tstride_launch.
    unsafe { run(launch.kernel, launch.config, &params, order) };
    out
}

/// A TPool weight is `[cout, taps cin, 1, 1]` as stored (frame j in input channels
/// `[j cin, (j + 1) cin)`: already `[cout, taps, cin]`); a DownT weight `[cout, cin, 3]` is
/// packed by `pack_conv_t3_weight`.
fn check_conv_tstride(
    label: &str,
    seed: u64,
    s: conv::ConvTStrideShape,
    with_bias: bool,
    with_residual: bool,
) {
    let mut rng = Rng::new(seed);
    let (x, xv) = random_f16(&mut rng, s.frames_in() * s.hw * s.cin, 1.0);
    let pack: Pack = if s.taps == 3 {
        conv::pack_conv_t3_weight::<u16>
    } else {
        |w, _, _| Ok(w.to_vec())
    };
    let (w, wv) = weights(&mut rng, s.cout, s.cin, s.taps, pack);
    let (bias, bv) = optional(&mut rng, with_bias, s.cout, 0.5);
    let (residual, rv) = optional(&mut rng, with_residual, s.m() * s.cout, 2.0);
    let r = conv::conv_tstride_reference(&s, &xv, &wv, bv.as_deref(), rv.as_deref()).unwrap();
    let tol = finish_tolerance(&r, s.k(), s.cout, &bv, &rv);
    let kernel = conv::conv_tstride_launch(&s).unwrap().kernel;
    for order in ThreadOrder::all(seed) {
        let out = run_conv_tstride(&s, &x, &w, bias.as_deref(), residual.as_deref(), order);
        let rep = compare(label, &f16_to_f64(&out), &r.value, &tol);
        eprintln!(
            "{label} {kernel} {s:?} bias={with_bias} residual={with_residual} {order:?}: {rep}"
        );
    }
}

#[test]
fn conv3x3s2_encoder_layers() {
    // TAEHV's stride-2 conv (padding 1 on every side) at odd sizes, whose output is the
    // ceiling half: 2 frames of 9x7 -> 5x4 (40 pixels), 16 -> 24 (ragged column tile), bias
    // and residual.
    race_checked(|| check_conv3x3s2("s2 pad1 16->24", 70, s2(2, 9, 7, 16, 24, 1), true, true));
    // The TAE's DownS (zeros after the frame only) on the wide entry: 3 frames of 10x7 ->
    // 5x3, 8 -> 128.
    race_checked(|| check_conv3x3s2("s2 pad0 8->128", 71, s2(3, 10, 7, 8, 128, 0), true, false));
    // TAEHV's 64 -> 64 without bias at an even size (exact halves).
    check_conv3x3s2("s2 pad1 64->64", 72, s2(2, 8, 6, 64, 64, 1), false, false);
}

#[test]
fn conv3x3s2_encoder_widths_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the encoders' widths");
        return;
    }
    // The 4b TAE encoder's DownS at c1 = 512 (K = 4608), 2 frames of 16x18 -> 8x9.
    check_conv3x3s2(
        "s2 pad0 512->512",
        73,
        s2(2, 16, 18, 512, 512, 0),
        true,
        false,
    );
    // Many pixel tiles across frames, 1-pixel-wide input (every kx tap but one is padding).
    check_conv3x3s2(
        "s2 pad1 32->40 31x1",
        74,
        s2(5, 31, 1, 32, 40, 1),
        true,
        true,
    );
    check_conv3x3s2(
        "s2 pad0 64->64 33x35",
        75,
        s2(2, 33, 35, 64, 64, 0),
        false,
        true,
    );
}

#[test]
fn conv_tstride_encoder_layers() {
    // TAEHV's TPool(64, 2): 2 frames side by side (K = 128), 4 input frames -> 2, 35 pixels.
    race_checked(|| check_conv_tstride("tpool s2", 80, ts(2, 35, 64, 64, 2, 2), false, false));
    // The TAE's DownT (taps 3, stride 2 over [cached frame, chunk]) on the wide entry:
    // 1 + 4 frames -> 2, 16 -> 128, bias and residual.
    race_checked(|| check_conv_tstride("downt 16->128", 81, ts(2, 20, 16, 128, 3, 2), true, true));
    // TPool(64, 1): a plain 1x1 convolution through the same entry, 3 frames.
    check_conv_tstride("tpool s1", 82, ts(3, 21, 16, 24, 1, 1), true, false);
}

#[test]
fn conv_tstride_encoder_widths_full() {
    if !common::full() {
        eprintln!("skipped: STREAMDIT_FULL=1 runs the encoders' widths");
        return;
    }
    check_conv_tstride("downt 512", 83, ts(2, 300, 512, 512, 3, 2), true, false);
    check_conv_tstride("tpool 8 frames", 84, ts(8, 77, 64, 64, 2, 2), false, true);
}

/// The DownT cache contract: chunk by chunk with buffer `[cache, chunk]` (the cache the
/// previous buffer's last frame; the first frame itself at the stream start) gives bit for
/// bit one launch over the whole stream. Chunks of 2, 4 and 2 input frames.
#[test]
fn conv_tstride_chunked_stream_equals_whole_stream() {
    let (hw, cin, cout) = (13, 16, 24);
    let chunks = [2usize, 4, 2];
    let total: usize = chunks.iter().sum();
    let mut rng = Rng::new(85);
    let frame = hw * cin;
    let (frames, _) = random_f16(&mut rng, total * frame, 1.0);
    let (wt, _) = weights(&mut rng, cout, cin, 3, conv::pack_conv_t3_weight::<u16>);
    let (bias, _) = random_f16(&mut rng, cout, 0.5);
    let mut whole_x = frames[..frame].to_vec();
    whole_x.extend_from_slice(&frames);
    for order in ThreadOrder::all(85) {
        let whole = run_conv_tstride(
            &ts(total / 2, hw, cin, cout, 3, 2),
            &whole_x,
            &wt,
            Some(&bias),
            None,
            order,
        );
        assert!(whole.iter().all(|&b| !f16::from_bits(b).is_nan()));
        let mut cache = frames[..frame].to_vec();
        let (mut streamed, mut start) = (Vec::new(), 0);
        for &n in &chunks {
            let mut x = cache.clone();
            x.extend_from_slice(&frames[start * frame..(start + n) * frame]);
            streamed.extend(run_conv_tstride(
                &ts(n / 2, hw, cin, cout, 3, 2),
                &x,
                &wt,
                Some(&bias),
                None,
                order,
            ));
            cache = x[x.len() - frame..].to_vec();
            start += n;
        }
        assert!(
            streamed == whole,
            "chunked DownT differs from the whole stream ({order:?})"
        );
    }
}

#[test]
fn encoder_shapes_outside_the_contract_are_errors() {
    let expect_err = |r: Result<conv::ConvLaunch, String>, needle: &str| {
        let e = r.expect_err("shape must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    };
    expect_err(conv::conv3x3s2_launch(&s2(1, 8, 8, 8, 8, 2)), "pad = 2");
    expect_err(conv::conv3x3s2_launch(&s2(1, 1, 8, 8, 8, 0)), "empty");
    expect_err(conv::conv3x3s2_launch(&s2(1, 8, 8, 3, 8, 1)), "Cin = 3");
    expect_err(conv::conv_tstride_launch(&ts(2, 8, 8, 8, 0, 2)), "taps = 0");
    expect_err(
        conv::conv_tstride_launch(&ts(2, 8, 8, 8, 2, 0)),
        "stride = 0",
    );
    expect_err(conv::conv_tstride_launch(&ts(0, 8, 8, 8, 2, 2)), "empty");
    assert_eq!(s2(1, 9, 7, 8, 8, 1).out_hw(), (5, 4));
    assert_eq!(s2(1, 9, 7, 8, 8, 0).out_hw(), (4, 3));
    assert_eq!(ts(3, 1, 8, 8, 3, 2).frames_in(), 7);
    let l = conv::conv3x3s2_launch(&s2(1, 16, 16, 64, 256, 0)).unwrap();
    assert_eq!(
        (l.kernel, l.config.grid.x),
        (conv::KERNEL_CONV3X3_S2_N128, 2)
    );
    let l = conv::conv_tstride_launch(&ts(2, 64, 64, 64, 2, 2)).unwrap();
    assert_eq!(l.kernel, conv::KERNEL_CONV_TSTRIDE);
}
