//! The moving buffer's noise schedule (docs/streamdit.md section 5): for every model call of a
//! stream, the noise level `tau` and Euler step `dtau` of each buffer frame.
//!
//! A stream starts with `(N-1)*s` prefill calls that stagger the chunks from pure noise to
//! `b_{N-1-j}`, then runs the steady state forever: `s` calls per emitted chunk, the last of
//! which pops chunk 0 at `tau = 1`.

use crate::error::{Error, Result};
use crate::model::profile::StreamConfig;

/// The one check of a video-to-video strength: a number in `(0, 1]`.
pub fn check_strength(strength: f64) -> Result<f64> {
    if strength > 0.0 && strength <= 1.0 {
        Ok(strength)
    } else {
        Err(Error::Invalid(format!(
            "strength: expected a number in (0, 1] (1 = text-to-video that ignores the input \
             video, smaller keeps more of it), found {strength}"
        )))
    }
}

/// What one model call of the stream does.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledStep {
    /// Noise level of every buffer frame `[N*c]`.
    pub tau: Vec<f32>,
    /// Euler step of every buffer frame `[N*c]`; zero for frames that are not updated.
    pub dtau: Vec<f32>,
    /// After the update, chunk 0 is clean: emit it and shift the buffer.
    pub pop: bool,
    /// The call belongs to the prefill, before the first chunk can be emitted.
    pub prefill: bool,
}

/// The schedule of a stream: chunks `N`, frames per chunk `c`, micro-steps `s` and the
/// stage boundaries `b_0 = 0 < ... < b_N = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    chunks: usize,
    chunk_frames: usize,
    micro_steps: usize,
    boundaries: Vec<f64>,
}

impl Schedule {
    /// The schedule of a validated profile's stream settings.
    pub fn new(stream: &StreamConfig) -> Schedule {
        Schedule {
            chunks: stream.chunks,
            chunk_frames: stream.chunk_frames,
            micro_steps: stream.micro_steps,
            boundaries: stream.boundaries(),
        }
    }

    /// The schedule of video-to-video with strength `strength` in `(0, 1]` (docs/streamdit.md
    /// section 5): every boundary remapped to `b'_k = t0 + (1 - t0) b_k` with
    /// `t0 = 1 - strength`, in f64, so each `dtau` shrinks by `strength`. Strength 1 gives
    /// `t0 = 0` and the boundaries unchanged, bit for bit.
    pub fn with_strength(mut self, strength: f64) -> Result<Schedule> {
        let t0 = 1.0 - check_strength(strength)?;
        for b in &mut self.boundaries {
            *b = t0 + (1.0 - t0) * *b;
        }
        Ok(self)
    }

    /// The stage boundaries `b_0 .. b_N` in use.
    pub fn boundaries(&self) -> &[f64] {
        &self.boundaries
    }

    /// Model calls before the steady state, `(N-1)*s`.
    pub fn prefill_calls(&self) -> u64 {
        ((self.chunks - 1) * self.micro_steps) as u64
    }

    /// Model calls per emitted chunk in the steady state, `s`.
    pub fn calls_per_chunk(&self) -> u64 {
        self.micro_steps as u64
    }

    /// Frames in the buffer, `N*c`.
    pub fn buffer_frames(&self) -> usize {
        self.chunks * self.chunk_frames
    }

    /// Call number `i` of a stream (0-based; prefill first, then steady state forever).
    pub fn step(&self, i: u64) -> ScheduledStep {
        let n = self.chunks;
        let s = self.micro_steps as u64;
        let b = &self.boundaries;
        let prefill = i < self.prefill_calls();
        // Per chunk `(tau, dtau)` in f64.
        let per_chunk: Vec<(f64, f64)> = if prefill {
            let k = (i / s) as usize;
            let m = i % s;
            (0..n)
                .map(|j| {
                    if k < n - 1 - j {
                        stage_point(b[k], b[k + 1], m, s)
                    } else {
                        (b[n - 1 - j], 0.0)
                    }
                })
                .collect()
        } else {
            let m = (i - self.prefill_calls()) % s;
            (0..n)
                .map(|j| stage_point(b[n - 1 - j], b[n - j], m, s))
                .collect()
        };
        let pop = !prefill && (i - self.prefill_calls()) % s == s - 1;
        let frames = |f: fn(&(f64, f64)) -> f64| -> Vec<f32> {
            per_chunk
                .iter()
                .flat_map(|v| vec![f(v) as f32; self.chunk_frames])
                .collect()
        };
        ScheduledStep {
            tau: frames(|v| v.0),
            dtau: frames(|v| v.1),
            pop,
            prefill,
        }
    }
}

/// `(tau, dtau)` at micro-step `m` of `s` through the stage `[lo, hi]`.
fn stage_point(lo: f64, hi: f64, m: u64, s: u64) -> (f64, f64) {
    let width = hi - lo;
    (lo + (m as f64 / s as f64) * width, width / s as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        chunks: usize,
        chunk_frames: usize,
        micro_steps: usize,
        b: Option<Vec<f64>>,
    ) -> StreamConfig {
        StreamConfig {
            chunks,
            chunk_frames,
            micro_steps,
            boundaries: b,
        }
    }

    /// Expands per-chunk values to per-frame values (`c` frames per chunk).
    fn per_frame(chunks: &[f32], c: usize) -> Vec<f32> {
        chunks.iter().flat_map(|&v| vec![v; c]).collect()
    }

    /// N=4, c=2, s=2, linear boundaries [0, .25, .5, .75, 1], worked out by hand from the
    /// spec. Prefill stage k updates chunks j < 3-k from b_k by (b_{k+1}-b_k)/2 = 0.125;
    /// the others wait at b_{3-j}.
    #[test]
    fn linear_table_n4_c2_s2() {
        let sched = Schedule::new(&config(4, 2, 2, None));
        assert_eq!(sched.prefill_calls(), 6);
        assert_eq!(sched.calls_per_chunk(), 2);
        assert_eq!(sched.buffer_frames(), 8);
        // (tau per chunk, dtau per chunk, pop, prefill)
        #[rustfmt::skip]
        let table: [([f32; 4], [f32; 4], bool, bool); 10] = [
            // prefill k=0: chunks 0..2 active from 0, chunk 3 waits at b_0 = 0
            ([0.0,   0.0,   0.0,   0.0  ], [0.125, 0.125, 0.125, 0.0  ], false, true),
            ([0.125, 0.125, 0.125, 0.0  ], [0.125, 0.125, 0.125, 0.0  ], false, true),
            // k=1: chunks 0..1 active from 0.25, chunk 2 waits at b_1, chunk 3 at b_0
            ([0.25,  0.25,  0.25,  0.0  ], [0.125, 0.125, 0.0,   0.0  ], false, true),
            ([0.375, 0.375, 0.25,  0.0  ], [0.125, 0.125, 0.0,   0.0  ], false, true),
            // k=2: chunk 0 active from 0.5, chunk 1 waits at b_2
            ([0.5,   0.5,   0.25,  0.0  ], [0.125, 0.0,   0.0,   0.0  ], false, true),
            ([0.625, 0.5,   0.25,  0.0  ], [0.125, 0.0,   0.0,   0.0  ], false, true),
            // steady state m=0, m=1 (pop), twice
            ([0.75,  0.5,   0.25,  0.0  ], [0.125, 0.125, 0.125, 0.125], false, false),
            ([0.875, 0.625, 0.375, 0.125], [0.125, 0.125, 0.125, 0.125], true,  false),
            ([0.75,  0.5,   0.25,  0.0  ], [0.125, 0.125, 0.125, 0.125], false, false),
            ([0.875, 0.625, 0.375, 0.125], [0.125, 0.125, 0.125, 0.125], true,  false),
        ];
        for (i, (tau, dtau, pop, prefill)) in table.iter().enumerate() {
            let step = sched.step(i as u64);
            assert_eq!(step.tau, per_frame(tau, 2), "tau of call {i}");
            assert_eq!(step.dtau, per_frame(dtau, 2), "dtau of call {i}");
            assert_eq!(step.pop, *pop, "pop of call {i}");
            assert_eq!(step.prefill, *prefill, "prefill of call {i}");
        }
        // Far into the stream the steady state repeats with period s.
        assert_eq!(sched.step(6 + 2 * 1_000_001), sched.step(6));
        assert_eq!(sched.step(7 + 2 * 1_000_001), sched.step(7));
    }

    fn assert_close(found: &[f32], expected: &[f32], what: &str) {
        assert_eq!(found.len(), expected.len(), "{what}: length");
        for (f, e) in found.iter().zip(expected) {
            assert!(
                (f - e).abs() < 1e-6,
                "{what}: found {found:?}, expected {expected:?}"
            );
        }
    }

    /// N=3, c=1, s=2, boundaries [0, 0.5, 0.8, 1], worked out by hand.
    #[test]
    fn nonlinear_table_n3_c1_s2() {
        let sched = Schedule::new(&config(3, 1, 2, Some(vec![0.0, 0.5, 0.8, 1.0])));
        assert_eq!(sched.prefill_calls(), 4);
        #[rustfmt::skip]
        let table: [([f32; 3], [f32; 3], bool); 6] = [
            // prefill k=0: chunks 0, 1 from 0 by 0.25; chunk 2 waits at 0
            ([0.0,  0.0,  0.0 ], [0.25, 0.25, 0.0 ], false),
            ([0.25, 0.25, 0.0 ], [0.25, 0.25, 0.0 ], false),
            // k=1: chunk 0 from 0.5 by 0.15; chunk 1 waits at 0.5
            ([0.5,  0.5,  0.0 ], [0.15, 0.0,  0.0 ], false),
            ([0.65, 0.5,  0.0 ], [0.15, 0.0,  0.0 ], false),
            // steady: chunk 0 in [0.8, 1], chunk 1 in [0.5, 0.8], chunk 2 in [0, 0.5]
            ([0.8,  0.5,  0.0 ], [0.1,  0.15, 0.25], false),
            ([0.9,  0.65, 0.25], [0.1,  0.15, 0.25], true),
        ];
        for (i, (tau, dtau, pop)) in table.iter().enumerate() {
            let step = sched.step(i as u64);
            assert_close(&step.tau, tau, &format!("tau of call {i}"));
            assert_close(&step.dtau, dtau, &format!("dtau of call {i}"));
            assert_eq!(step.pop, *pop, "pop of call {i}");
            assert_eq!(step.prefill, i < 4, "prefill of call {i}");
        }
    }

    /// One chunk and one micro-step: no prefill, every call pops from pure noise to data.
    #[test]
    fn single_chunk_single_step() {
        let sched = Schedule::new(&config(1, 3, 1, None));
        assert_eq!(sched.prefill_calls(), 0);
        let step = sched.step(0);
        assert_eq!(step.tau, vec![0.0; 3]);
        assert_eq!(step.dtau, vec![1.0; 3]);
        assert!(step.pop && !step.prefill);
    }

    /// Simulates the buffer's noise levels `tau += dtau` call by call and checks that every
    /// call's `tau` is where the frames actually are: after prefill chunk `j` sits at
    /// `b_{N-1-j}`, a popped chunk is at exactly 1, and the shift keeps each frame continuous.
    fn check_invariants(chunks: usize, c: usize, s: usize, b: Option<Vec<f64>>) {
        let cfg = config(chunks, c, s, b);
        check_invariants_of(&Schedule::new(&cfg), &cfg.boundaries(), chunks, c);
    }

    /// [`check_invariants`] of `sched`, whose boundaries are `bounds`; fresh frames enter at
    /// `bounds[0]`.
    fn check_invariants_of(sched: &Schedule, bounds: &[f64], chunks: usize, c: usize) {
        let frames = chunks * c;
        let mut state = vec![bounds[0]; frames];
        let mut pops = 0;
        for i in 0..sched.prefill_calls() + 5 * sched.calls_per_chunk() {
            if i == sched.prefill_calls() {
                for (f, &t) in state.iter().enumerate() {
                    let expected = bounds[chunks - 1 - f / c];
                    assert!(
                        (t - expected).abs() < 1e-6,
                        "after prefill frame {f} at {t}, expected {expected}"
                    );
                }
            }
            let step = sched.step(i);
            assert_eq!(step.tau.len(), frames);
            assert_eq!(step.dtau.len(), frames);
            for (f, x) in state.iter_mut().enumerate() {
                let t = f64::from(step.tau[f]);
                assert!(
                    (t - *x).abs() < 1e-6,
                    "call {i} frame {f}: tau {t}, simulated {x}"
                );
                *x += f64::from(step.dtau[f]);
            }
            if step.pop {
                pops += 1;
                for (f, &t) in state[..c].iter().enumerate() {
                    assert!((t - 1.0).abs() < 1e-6, "call {i}: popped frame {f} at {t}");
                }
                state.rotate_left(c);
                state[frames - c..].fill(bounds[0]);
            }
        }
        assert_eq!(pops, 5);
    }

    #[test]
    fn invariants_linear() {
        check_invariants(4, 2, 2, None);
        check_invariants(4, 2, 1, None);
        check_invariants(3, 1, 5, None);
    }

    #[test]
    fn invariants_nonlinear() {
        check_invariants(3, 1, 2, Some(vec![0.0, 0.5, 0.8, 1.0]));
        check_invariants(4, 3, 3, Some(vec![0.0, 0.1, 0.3, 0.7, 1.0]));
    }

    /// Strength remaps the boundaries to `[1 - s, 1]`; strength 1 changes nothing; strengths
    /// outside (0, 1] (NaN too) are named errors.
    #[test]
    fn strength_remaps_the_boundaries() {
        let base = Schedule::new(&config(4, 2, 1, None));
        assert_eq!(base.clone().with_strength(1.0).unwrap(), base);
        let half = base.clone().with_strength(0.5).unwrap();
        assert_eq!(half.boundaries(), &[0.5, 0.625, 0.75, 0.875, 1.0]);
        let step = half.step(half.prefill_calls());
        assert_eq!(step.tau, per_frame(&[0.875, 0.75, 0.625, 0.5], 2));
        assert_eq!(step.dtau, vec![0.125; 8]);
        check_invariants_of(&half, &[0.5, 0.625, 0.75, 0.875, 1.0], 4, 2);
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let e = base.clone().with_strength(bad).unwrap_err().to_string();
            assert!(e.contains("strength") && e.contains("(0, 1]"), "{e}");
        }
    }

    /// With dyadic boundaries every value is exact, so a popped chunk reaches exactly 1.
    #[test]
    fn pop_reaches_exactly_one() {
        let sched = Schedule::new(&config(4, 2, 2, None));
        let last = sched.step(sched.prefill_calls() + 1);
        assert!(last.pop);
        assert_eq!(last.tau[0] + last.dtau[0], 1.0);
        assert_eq!(last.tau[1] + last.dtau[1], 1.0);
    }
}
