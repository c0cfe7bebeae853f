//! Loops the compiler can vectorise: an `exp` built from arithmetic alone (no libm call, so
//! a loop over it becomes SIMD code), sums over fixed lanes, and [`wide`], which runs a
//! closure compiled for the widest vector unit the CPU has (AVX-512, else AVX2, else the
//! x86-64 baseline), detected at run time.
//!
//! Every path computes the same operations in the same order (`a * b + c` is never fused
//! into an FMA without fast-math flags, and the lane counts below are fixed, not the
//! machine's vector width), so results are bit-identical whichever path runs.

/// Lanes of the partial sums in [`sum`] and [`sum_sq_dev`]: one AVX-512 register of f32.
pub(crate) const LANES: usize = 16;

/// `exp(x)` in f32 to about 1 ulp (Cody-Waite range reduction by ln 2, then Cephes'
/// degree-5 minimax polynomial of `expf` on `[-ln2/2, ln2/2]`; Cephes `expf.c`), gradual
/// underflow down to 0 below the smallest subnormal result and +inf above the largest
/// finite one; NaN stays NaN. Written without branches or calls so that loops over it
/// vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer (ties to even) for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    const HI: f32 = 88.722_83;
    const LO: f32 = -103.972_08;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    // 2^n from the integer in `t`'s low mantissa bits, n in [-150, 128], as the product of
    // two normal powers 2^(n >> 1) and 2^(n - (n >> 1)), so that neither the largest finite
    // results nor the subnormal ones need a special case.
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // Wrapping arithmetic: the values are in range, and checked arithmetic (debug builds)
    // would add branches that stop the loop from vectorising.
    let k1 = k >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    let e = y * pow2(k1) * pow2(k.wrapping_sub(k1));
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

/// `z * sigmoid(z)`.
#[inline(always)]
pub(crate) fn silu(z: f32) -> f32 {
    z / (1.0 + exp(-z))
}

/// `0.5 z (1 + tanh(c (z + 0.044715 z^3)))` with `c = sqrt(2/pi)`, as the identity
/// `0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))` (no cancellation near `tanh = -1`).
#[inline(always)]
pub(crate) fn gelu_tanh(z: f32) -> f32 {
    let u = 0.797_884_6 * (z + 0.044715 * z * z * z);
    z / (1.0 + exp(-2.0 * u))
}

/// `sum(v)` over [`LANES`] partial sums, added up in a fixed order at the end.
#[inline(always)]
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    reduce(acc)
}

/// `sum((v - c)^2)` over [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_sq_dev(v: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += (x - c) * (x - c);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += (x - c) * (x - c);
    }
    reduce(acc)
}

/// `max(v)` (`-inf` for an empty slice; NaN entries are skipped as `f32::max` does).
#[inline(always)]
pub(crate) fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = a.max(x);
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a))
}

/// Pairwise sum of the lanes, in a fixed order.
#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Runs `f` compiled for the widest vector unit this CPU has. `f` (an `#[inline(always)]`
/// closure: an ordinary one may stay a call, compiled for the baseline) and the `#[inline(always)]`
/// helpers it calls are inlined into a function with those target features, so its loops
/// vectorise for it; without AVX2 it runs as compiled for the baseline.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above), the only feature
            // `run_avx512` enables.
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), the only feature `run_avx2`
            // enables.
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` against f64's over a dense sweep of its range, within 2 ulp of the f32
    /// result, with the edges exact.
    #[test]
    fn exp_matches_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).to_bits().abs_diff((got as f32).to_bits());
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel);
            assert!(ulp <= 2, "exp({x}) = {got}, want {want} ({ulp} ulp)");
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        // The largest finite and the subnormal results, against libm's.
        for x in [88.5f32, 88.72, -87.5, -95.0, -103.0] {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want.abs() + 2e-45,
                "exp({x}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn silu_and_gelu_match_f64() {
        let mut z = -30.0f32;
        while z < 30.0 {
            let zd = z as f64;
            let silu_ref = zd / (1.0 + (-zd).exp());
            let u = 0.797_884_560_8 * (zd + 0.044715 * zd * zd * zd);
            // 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), without f64's cancellation near -1.
            let gelu_ref = zd / (1.0 + (-2.0 * u).exp());
            for (got, want) in [(silu(z), silu_ref), (gelu_tanh(z), gelu_ref)] {
                let err = (got as f64 - want).abs();
                assert!(err <= 1e-6 * want.abs() + 1e-8, "z {z}: {got} vs {want}");
            }
            z += 0.0173;
        }
    }

    #[test]
    fn sums_and_max_match_f64() {
        for len in [0usize, 1, 15, 16, 17, 100, 257] {
            let v: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let s: f64 = v.iter().map(|&a| a as f64).sum();
            let c = 0.25f32;
            let q: f64 = v.iter().map(|&a| (a as f64 - 0.25).powi(2)).sum();
            assert!((sum(&v) as f64 - s).abs() <= 1e-5 * (1.0 + s.abs()), "len {len}");
            assert!((sum_sq_dev(&v, c) as f64 - q).abs() <= 1e-5 * (1.0 + q), "len {len}");
            let m = v.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
            assert_eq!(max(&v), m);
            assert_eq!(wide(#[inline(always)] || sum(&v)), sum(&v));
        }
    }
}
