//! Counter-based randomness: Philox4x32-10 (Salmon et al., SC'11, as in Random123) and the
//! Box-Muller map of docs/streamdit.md section 5. Every value is a pure function of a key and a
//! counter, so any backend, and any thread of it, reproduces the same numbers.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four 32-bit outputs for a 128-bit counter and 64-bit key.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// The low and high 32-bit halves of `v`.
pub fn split64(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// Maps a 32-bit draw to `(0, 1]` in f32: `u = ((r >> 8) + 0.5) * 2^-24`, each operation
/// rounded in f32 in this order, so a device computes the same bits. Never 0, so `ln u` is
/// finite; the top draws round to exactly 1 (radius 0 in Box-Muller), as the spec's f32
/// formula gives on every device.
#[inline]
pub fn unit_open(r: u32) -> f32 {
    ((r >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Box-Muller for one pair of draws: `(sqrt(-2 ln ua) cos(2 pi ub), sqrt(-2 ln ua) sin(2 pi ub))`.
#[inline]
pub fn box_muller(ra: u32, rb: u32) -> (f32, f32) {
    let radius = (-2.0 * unit_open(ra).ln()).sqrt();
    let theta = 2.0 * std::f32::consts::PI * unit_open(rb);
    (radius * theta.cos(), radius * theta.sin())
}

/// Four standard normals from one Philox block.
#[inline]
pub fn normals4(counter: [u32; 4], key: [u32; 2]) -> [f32; 4] {
    let r = philox4x32_10(counter, key);
    let (z0, z1) = box_muller(r[0], r[1]);
    let (z2, z3) = box_muller(r[2], r[3]);
    [z0, z1, z2, z3]
}

/// The noise of global latent frame `frame` (docs/streamdit.md section 5): element `e` is output
/// `e mod 4` of the Philox block with key `seed` and counter `[q, frame]`, `q = e / 4`.
pub fn noise_frame(seed: u64, frame: u64, out: &mut [f32]) {
    let key = split64(seed);
    let [g0, g1] = split64(frame);
    for (q, block) in out.chunks_mut(4).enumerate() {
        let [q0, q1] = split64(q as u64);
        let z = normals4([q0, q1, g0, g1], key);
        block.copy_from_slice(&z[..block.len()]);
    }
}

/// Counter word of the Wan family's noise draws (ASCII "WAN1", docs/wan.md section 6).
pub const WAN_NOISE_DOMAIN: u32 = 0x5741_4E31;

/// The Wan sampler's noise of absolute latent frame `frame` at step `step` (0 the initial
/// noise, `s >= 1` the re-noise before step `s`): element `e` is output `e mod 4` of the
/// Philox block with key `seed` and counter `[e / 4, frame, step, WAN_NOISE_DOMAIN]`
/// (docs/wan.md section 6), each pair mapped by [`box_muller`].
pub fn wan_noise_frame(seed: u64, frame: u64, step: u32, out: &mut [f32]) {
    let key = split64(seed);
    for (q, block) in out.chunks_mut(4).enumerate() {
        let z = normals4([q as u32, frame as u32, step, WAN_NOISE_DOMAIN], key);
        block.copy_from_slice(&z[..block.len()]);
    }
}

/// Counter word that separates weight-init draws from noise draws (ASCII "WINI").
pub const WEIGHT_INIT_DOMAIN: u32 = 0x5749_4E49;

/// Element `i` of weight tensor number `tensor` for a random checkpoint: uniform in
/// `(mean - half_width, mean + half_width]` from output `i mod 4` of the Philox block with
/// key `seed` and counter `[i / 4, tensor, WEIGHT_INIT_DOMAIN]`. Computed in f32 as
/// `mean + half_width * (2u - 1)`, each operation rounded separately (no fused multiply-add).
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
pub fn init_value(seed: u64, tensor: u32, i: u64, mean: f32, half_width: f32) -> f32 {
    let [q0, q1] = split64(i / 4);
    let r = philox4x32_10([q0, q1, tensor, WEIGHT_INIT_DOMAIN], split64(seed));
    let u = unit_open(r[(i % 4) as usize]);
    let centred = 2.0 * u - 1.0;
    mean + half_width * centred
}

/// Fills `out` with elements `[start, start + out.len())` of a uniform tensor (see [`init_value`]).
pub fn init_uniform(
    seed: u64,
    tensor: u32,
    start: u64,
    mean: f32,
    half_width: f32,
    out: &mut [f32],
) {
    let key = split64(seed);
    let mut i = start;
    let mut k = 0;
    while k < out.len() {
        let [q0, q1] = split64(i / 4);
        let r = philox4x32_10([q0, q1, tensor, WEIGHT_INIT_DOMAIN], key);
        let lane = (i % 4) as usize;
        let take = (4 - lane).min(out.len() - k);
        for j in 0..take {
            let centred = 2.0 * unit_open(r[lane + j]) - 1.0;
            out[k + j] = mean + half_width * centred;
        }
        k += take;
        i += take as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for philox4x32 with 10 rounds, as `(counter, key,
    /// expected)`. Source: the `kat_vectors` file of the Random123 distribution, quoted in
    /// DEShawResearch/Random123-Boost `libs/random/test/test_philox.cpp` (commit 916db91a):
    ///
    /// ```text
    /// philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
    /// philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
    /// philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
    /// ```
    #[rustfmt::skip]
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0; 4], [0; 2], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];

    #[test]
    fn philox_known_answers() {
        for (counter, key, expected) in KAT {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "counter {counter:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn unit_interval_ends() {
        assert_eq!(unit_open(0), 0.5 / 16_777_216.0);
        assert_eq!(unit_open(0xFF), unit_open(0), "only the top 24 bits count");
        assert_eq!(unit_open(0x8000_0000), 0.5 + 0.5 / 16_777_216.0);
        assert!(unit_open(u32::MAX) <= 1.0);
        for (ra, rb) in [(0, 0), (0, u32::MAX), (u32::MAX, 0), (u32::MAX, u32::MAX)] {
            let (z0, z1) = box_muller(ra, rb);
            assert!(
                z0.is_finite() && z1.is_finite(),
                "box_muller({ra}, {rb}) = ({z0}, {z1})"
            );
        }
    }

    #[test]
    fn noise_follows_the_spec_layout() {
        let (seed, frame) = (0x0123_4567_89ab_cdef_u64, 0x1_0000_0002_u64);
        let mut out = vec![0.0f32; 10];
        noise_frame(seed, frame, &mut out);
        for (e, &v) in out.iter().enumerate() {
            let q = (e / 4) as u64;
            let counter = [
                q as u32,
                (q >> 32) as u32,
                frame as u32,
                (frame >> 32) as u32,
            ];
            let r = philox4x32_10(counter, [seed as u32, (seed >> 32) as u32]);
            let pair = e % 4 / 2 * 2;
            // Box-Muller in f64 from the same draws; f32 rounding stays far below 1e-5.
            let u = |x: u32| ((x >> 8) as f64 + 0.5) / 16_777_216.0;
            let radius = (-2.0 * u(r[pair]).ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u(r[pair + 1]);
            let expected = if e % 2 == 0 {
                radius * theta.cos()
            } else {
                radius * theta.sin()
            };
            assert!(
                (f64::from(v) - expected).abs() < 1e-5,
                "element {e}: {v} vs {expected}"
            );
        }
    }

    #[test]
    fn noise_is_deterministic_and_distinct() {
        let n = 1 << 12;
        let draw = |seed: u64, frame: u64| {
            let mut v = vec![0.0f32; n];
            noise_frame(seed, frame, &mut v);
            v
        };
        let a = draw(7, 3);
        assert_eq!(a, draw(7, 3));
        assert_ne!(a, draw(7, 4));
        assert_ne!(a, draw(8, 3));
        assert_ne!(a, draw(7 | 1 << 32, 3), "the seed's high word counts");
        assert_ne!(a, draw(7, 3 | 1 << 32), "the frame's high word counts");
        // A shorter buffer is a prefix of a longer one, also inside a block of four.
        let mut short = vec![0.0f32; 7];
        noise_frame(7, 3, &mut short);
        assert_eq!(short[..], a[..7]);
    }

    #[test]
    fn noise_is_standard_normal() {
        let n = 1 << 18;
        let mut v = vec![0.0f32; n];
        noise_frame(42, 5, &mut v);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // Standard errors: 1/sqrt(n) ~ 0.002 for the mean, sqrt(2/n) ~ 0.003 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        let within_one = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
        assert!(
            (within_one - 0.6827).abs() < 0.005,
            "P(|z| < 1) = {within_one}"
        );
    }

    #[test]
    fn init_uniform_matches_init_value() {
        let (seed, tensor, mean, half) = (99, 17, 0.25, 0.5);
        for start in [0u64, 1, 2, 3, 5, 6, 7, 4 * 1000 + 3, (1 << 32) + 1] {
            for len in [0usize, 1, 2, 3, 4, 5, 9, 13] {
                let mut out = vec![f32::NAN; len];
                init_uniform(seed, tensor, start, mean, half, &mut out);
                for (k, &v) in out.iter().enumerate() {
                    let expected = init_value(seed, tensor, start + k as u64, mean, half);
                    assert_eq!(
                        v.to_bits(),
                        expected.to_bits(),
                        "start {start} len {len} element {k}"
                    );
                    assert!((mean - half..=mean + half).contains(&v), "{v} out of range");
                }
            }
        }
        let a = init_value(seed, tensor, 0, mean, half);
        assert_ne!(a, init_value(seed, tensor + 1, 0, mean, half));
        assert_ne!(a, init_value(seed + 1, tensor, 0, mean, half));
        assert_ne!(a, init_value(seed, tensor, 1, mean, half));
    }

    #[test]
    fn init_is_uniform() {
        let n = 1 << 16;
        let mut v = vec![0.0f32; n];
        init_uniform(3, 0, 0, 0.0, 1.0, &mut v);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "variance {var}");
    }
}
