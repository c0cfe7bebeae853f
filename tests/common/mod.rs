//! Helpers shared by the integration tests: a seeded RNG, error measures, and the naive f64
//! reference model in [`naive`].
#![allow(dead_code)]

pub mod naive;
pub mod tae_naive;
pub mod wan_naive;
pub mod wan_tiny;

/// A tiny seeded generator (splitmix64): reproducible random inputs without a `rand` crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    /// `n` f32 values uniform in `[lo, hi)`.
    pub fn f32s(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Widens f32 values to f64 (to feed the naive reference exactly what the engine sees).
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// A buffer of `n` NaNs: an op that leaves an element unwritten fails the comparison.
pub fn poisoned(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Relative L2 error `|a - b| / |b|` (`b` the reference).
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_l2: lengths differ");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Largest absolute difference (NaN if any element is NaN).
pub fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, |m, e| {
            if e.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        })
}

/// Checks `|got - want| <= atol + rtol * |want|` elementwise (NaN fails). On failure, prints
/// the first mismatches and the worst error as a share of its budget, then panics. Returns
/// the largest absolute error, and prints it with the worst share of the budget.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} != reference length {}",
        got.len(),
        want.len()
    );
    let mut bad = 0usize;
    let mut worst = (0usize, 0.0f64);
    let mut max_err = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let budget = atol + rtol * w.abs();
        let share = if err.is_nan() {
            f64::INFINITY
        } else {
            err / budget
        };
        max_err = max_err.max(if err.is_nan() { f64::INFINITY } else { err });
        if share > worst.1 {
            worst = (i, share);
        }
        if err.is_nan() || err > budget {
            if bad < 10 {
                eprintln!("{name}: mismatch at {i}: got {g}, want {w}, |err| {err:.3e} > budget {budget:.3e}");
            }
            bad += 1;
        }
    }
    let (wi, ws) = worst;
    if bad > 0 {
        panic!(
            "{name}: {bad} of {} elements out of tolerance (atol {atol:e}, rtol {rtol:e}); worst at {wi}: got {}, want {}, {:.1}x its budget",
            got.len(),
            got[wi],
            want[wi],
            ws
        );
    }
    println!(
        "{name}: max |err| {max_err:.3e}, worst {:.1}% of budget",
        ws * 100.0
    );
    max_err
}

/// Whether the opt-in full tier runs (`STREAMDIT_FULL=1`): the slow emulator and valgrind
/// cases that the default `./tests/run.sh` leaves out (README, "Tests").
pub fn full() -> bool {
    std::env::var("STREAMDIT_FULL").is_ok_and(|v| v == "1")
}

/// The profile the emulator's whole-model tests run: `tests/profiles/small.toml` (every op
/// of a `tiny` call at about a second per call on the emulator) in the default tier, the
/// built-in `tiny` in the full tier.
pub fn emu_profile() -> streamdit::Profile {
    if full() {
        streamdit::Profile::builtin("tiny").unwrap()
    } else {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles/small.toml");
        streamdit::Profile::load(path).unwrap()
    }
}

/// One traced CPU model call of `graph` (the reference of the device backends' step-by-step
/// comparisons): every traced tensor's values by index, and the output `v`.
pub fn cpu_traced_call(
    graph: &streamdit::model::graph::Graph,
    weights: &std::sync::Arc<streamdit::checkpoint::Weights>,
    text: &streamdit::Tensor,
    mask: &[f32],
    x: &[f32],
    tau: &[f32],
) -> (std::collections::HashMap<usize, Vec<f32>>, Vec<f32>) {
    use streamdit::backend::Backend;
    let mut cpu = streamdit::backend::cpu::CpuBackend::new(graph.clone(), weights.clone()).unwrap();
    cpu.set_text(text, mask).unwrap();
    let mut traced = std::collections::HashMap::new();
    let mut v = vec![0.0; x.len()];
    cpu.forward_traced(
        x,
        tau,
        &mut v,
        Some(&mut |t| {
            traced.insert(t.index, t.values.to_vec());
        }),
    )
    .unwrap();
    (traced, v)
}
