//! The emulator's f16 and bf16 against the `half` crate, bit for bit: conversions over all
//! 65536 patterns and the rounding boundaries around each, arithmetic on a sampled set, and
//! fma against an exact integer reference.

mod common;

use common::{config, launch, mut_ptr, ptr, Rng};
use half::{bf16, f16};
use streamdit_kernels::emu::{self, ThreadOrder};

#[repr(C)]
#[derive(Clone, Copy)]
struct HalfConvertParams {
    h: *const u16,
    f: *const f32,
    h_to_f32: *mut f32,
    bf_to_f32: *mut f32,
    f_to_h: *mut u16,
    f_to_bf: *mut u16,
    n_h: i32,
    n_f: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HalfArithParams {
    a: *const u16,
    b: *const u16,
    c: *const u16,
    out: *mut u16,
    n: i32,
}

/// Equal bits, or both NaN (NaN payloads are not part of the contract).
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}
fn same_f16(a: u16, b: u16) -> bool {
    a == b || (f16::from_bits(a).is_nan() && f16::from_bits(b).is_nan())
}
fn same_bf16(a: u16, b: u16) -> bool {
    a == b || (bf16::from_bits(a).is_nan() && bf16::from_bits(b).is_nan())
}

/// f32 inputs probing every rounding boundary: each f16 value, the midpoints to its
/// neighbours and the f32 values next to them, the same for bf16 (whose values are f32s
/// with 16 low zero bits), and random bit patterns (NaN, infinities, f32 subnormals).
fn conversion_inputs() -> Vec<f32> {
    let mut f = Vec::new();
    let around = |f: &mut Vec<f32>, v: f32| {
        f.extend([
            v,
            f32::from_bits(v.to_bits().wrapping_add(1)),
            f32::from_bits(v.to_bits().wrapping_sub(1)),
        ]);
    };
    for bits in 0..=u16::MAX {
        let h = f16::from_bits(bits);
        if h.is_finite() {
            let v = h.to_f64();
            let next = f16::from_bits(bits.wrapping_add(1)).to_f64();
            around(&mut f, v as f32);
            let mid = if next.is_finite() {
                (v + next) / 2.0
            } else {
                v.signum() * 65520.0
            };
            around(&mut f, mid as f32); // midpoints of f16 values are exact in f32
        }
        let b = bf16::from_bits(bits).to_f32();
        if b.is_finite() {
            around(&mut f, f32::from_bits(b.to_bits() | 0x8000)); // bf16 midpoint upwards
        }
    }
    let mut rng = Rng::new(3);
    f.extend((0..1 << 18).map(|_| f32::from_bits(rng.next_u32())));
    f.extend((0..1 << 16).map(|_| rng.uniform(-70000.0, 70000.0)));
    f.extend((0..1 << 16).map(|_| rng.uniform(-1.0, 1.0) * 1e-5));
    f
}

#[test]
fn conversions_match_the_half_crate_bit_for_bit() {
    let _race = common::race_check_full();
    let h: Vec<u16> = (0..=u16::MAX).collect();
    let f = conversion_inputs();
    let mut h_to_f32 = vec![f32::NAN; h.len()];
    let mut bf_to_f32 = vec![f32::NAN; h.len()];
    let mut f_to_h = vec![0xffffu16; f.len()];
    let mut f_to_bf = vec![0xffffu16; f.len()];
    let params = HalfConvertParams {
        h: ptr(&h),
        f: ptr(&f),
        h_to_f32: mut_ptr(&mut h_to_f32),
        bf_to_f32: mut_ptr(&mut bf_to_f32),
        f_to_h: mut_ptr(&mut f_to_h),
        f_to_bf: mut_ptr(&mut f_to_bf),
        n_h: h.len() as i32,
        n_f: f.len() as i32,
    };
    // SAFETY: every buffer has n_h or n_f elements; the kernel strides within them.
    unsafe {
        launch(
            "selftest_half_convert",
            config(16, 256, 0),
            &params,
            ThreadOrder::Forward,
        )
    }
    .unwrap_or_else(|e| panic!("{e}"));
    for (i, &bits) in h.iter().enumerate() {
        let want = f16::from_bits(bits).to_f32();
        assert!(
            same_f32(h_to_f32[i], want),
            "__half2float({bits:#06x}) = {:#010x}, half: {:#010x}",
            h_to_f32[i].to_bits(),
            want.to_bits()
        );
        let want = bf16::from_bits(bits).to_f32();
        assert!(
            same_f32(bf_to_f32[i], want),
            "__bfloat162float({bits:#06x}) = {:#010x}, half: {:#010x}",
            bf_to_f32[i].to_bits(),
            want.to_bits()
        );
    }
    for (i, &v) in f.iter().enumerate() {
        let want = f16::from_f32(v).to_bits();
        assert!(
            same_f16(f_to_h[i], want),
            "__float2half({v:e} = {:#010x}) = {:#06x}, half: {want:#06x}",
            v.to_bits(),
            f_to_h[i]
        );
        let want = bf16::from_f32(v).to_bits();
        assert!(
            same_bf16(f_to_bf[i], want),
            "__float2bfloat16({v:e} = {:#010x}) = {:#06x}, half: {want:#06x}",
            v.to_bits(),
            f_to_bf[i]
        );
    }
    eprintln!(
        "checked {} f16/bf16 -> f32 and {} f32 -> f16/bf16 conversions",
        h.len(),
        f.len()
    );
}

/// a * b + c rounded once to f16 (nearest even), computed exactly with integers: every
/// finite f16 is an integer multiple of 2^-24, so a * b + c is N * 2^-48 exactly.
fn exact_fma(a: f16, b: f16, c: f16) -> u16 {
    if !(a.is_finite() && b.is_finite() && c.is_finite()) {
        return f16::from_f64(a.to_f64() * b.to_f64() + c.to_f64()).to_bits();
    }
    let units = |h: f16| (h.to_f64() * 16_777_216.0) as i128; // exact: |h| * 2^24 < 2^40
    let n = units(a) * units(b) + (units(c) << 24);
    if n == 0 {
        let product_negative = a.is_sign_negative() != b.is_sign_negative();
        return if product_negative && c.is_sign_negative() {
            0x8000
        } else {
            0
        };
    }
    let sign = if n < 0 { 0x8000u16 } else { 0 };
    let m = n.unsigned_abs();
    let e = 127 - m.leading_zeros() as i32 - 48; // |value| in [2^e, 2^(e+1))
    let mut shift = e.max(-14) + 38; // one f16 ulp = 2^shift units of 2^-48
    let mut q = m >> shift;
    let rem = m & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q += 1;
    }
    if shift == 24 {
        return sign | q as u16; // subnormal, or 1024 = the smallest normal
    }
    if q == 2048 {
        q = 1024;
        shift += 1;
    }
    let exponent = shift - 23;
    if exponent >= 31 {
        return sign | 0x7c00;
    }
    sign | ((exponent as u16) << 10) | (q as u16 - 1024)
}

#[test]
fn arithmetic_matches_the_half_crate_and_exact_fma() {
    // Every tier (no shared memory: the instrumented build must give the same bits).
    let _race = emu::racecheck(true);
    let mut rng = Rng::new(17);
    // Random finite patterns, values of moderate magnitude (where sums round), and edge
    // values (zeros, subnormals, the largest finite, infinities, NaN).
    let edges = [
        0x0000u16, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00,
        0x3c00, 0xbc00,
    ];
    let pick = |rng: &mut Rng, i: usize| -> u16 {
        match i % 4 {
            0 => rng.next_u32() as u16,
            1 => f16::from_f32(rng.nonzero(-8.0, 8.0)).to_bits(),
            2 => f16::from_f32(rng.nonzero(-1.0, 1.0) * 1e-4).to_bits(),
            _ => edges[(rng.next_u32() as usize) % edges.len()],
        }
    };
    let n = 1 << 17;
    let (mut a, mut b, mut c) = (vec![0u16; n], vec![0u16; n], vec![0u16; n]);
    for i in 0..n {
        a[i] = pick(&mut rng, i);
        b[i] = pick(&mut rng, i / 4);
        c[i] = pick(&mut rng, i / 16);
    }
    let mut out = vec![0xffffu16; n * 6];
    let params = HalfArithParams {
        a: ptr(&a),
        b: ptr(&b),
        c: ptr(&c),
        out: mut_ptr(&mut out),
        n: n as i32,
    };
    // SAFETY: a, b, c hold n values, out 6 per value.
    unsafe {
        launch(
            "selftest_half_arith",
            config(16, 256, 0),
            &params,
            ThreadOrder::Reverse,
        )
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let mut fma_rounding_cases = 0;
    for i in 0..n {
        let (x, y, z) = (
            f16::from_bits(a[i]),
            f16::from_bits(b[i]),
            f16::from_bits(c[i]),
        );
        let o = &out[i * 6..i * 6 + 6];
        let want = [
            (x + y).to_bits(),
            (x - y).to_bits(),
            (x * y).to_bits(),
            (x / y).to_bits(),
            exact_fma(x, y, z),
            exact_fma(x, y, z),
        ];
        for (k, name) in ["__hadd", "__hsub", "__hmul", "__hdiv", "__hfma", "__hfma2"]
            .iter()
            .enumerate()
        {
            assert!(
                same_f16(o[k], want[k]),
                "{name}({:#06x}, {:#06x}, {:#06x}) = {:#06x}, want {:#06x}",
                a[i],
                b[i],
                c[i],
                o[k],
                want[k]
            );
        }
        // Cases where rounding the product and the sum separately would differ.
        let two_roundings = (f16::from_f32(x.to_f32() * y.to_f32()) + z).to_bits();
        if !same_f16(two_roundings, want[4]) {
            fma_rounding_cases += 1;
        }
    }
    assert!(
        fma_rounding_cases > 100,
        "the sample must exercise fma's single rounding ({fma_rounding_cases} cases)"
    );
    eprintln!(
        "checked {n} samples of 6 f16 operations; {fma_rounding_cases} where fma != mul then add"
    );
}
