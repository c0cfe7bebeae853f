//! The naive f64 Wan streaming reference (`tests/common/wan_naive.rs`, written from
//! docs/wan.md) checked against the properties the document states: the chunked cache is a
//! block-causal recompute, RoPE is relative, eviction keeps absolute rotations, LongLive's
//! re-cache rebuilds the window under the new prompt, and planted mistakes are caught.

// Index loops over layers and frames read like the document's equations.
#![allow(clippy::needless_range_loop)]

mod common;

use common::wan_naive::{
    forward, noise, text_context, KeyRot, Plant, Stream, StreamCfg, WanCfg, WanWeights,
};
use common::Rng;

/// A prompt: `real` random rows, the rest zero (a zero-padded umT5 output).
fn text(cfg: &WanCfg, seed: u64, real: usize) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..cfg.lt * cfg.dtxt)
        .map(|i| {
            if i / cfg.dtxt < real {
                rng.uniform(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

fn warp(shift: f64, steps: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let sig: Vec<f64> = steps
        .iter()
        .map(|&t| {
            let s = t / 1000.0;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .collect();
    (sig.iter().map(|s| 1000.0 * s).collect(), sig)
}

fn scfg(window: usize, sink: usize, recache: bool) -> StreamCfg {
    let (timesteps, sigmas) = warp(5.0, &[1000.0, 750.0, 500.0, 250.0]);
    StreamCfg {
        chunk: 2,
        window,
        sink,
        recache,
        timesteps,
        sigmas,
        seed: 11,
    }
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let d: f64 = b.iter().map(|y| y * y).sum();
    (n / d).sqrt()
}

#[test]
fn schedule_is_the_warped_table() {
    let (t, s) = warp(5.0, &[1000.0, 750.0, 500.0, 250.0]);
    let want = [1000.0, 937.5, 2500.0 / 3.0, 625.0];
    for (a, b) in t.iter().zip(want) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
    assert_eq!(s[1], 0.9375);
    // CausVid: integer timesteps, sigma from the nearest entry of the shift-8 table.
    let table: Vec<f64> = (0..1000)
        .map(|j| 1.0 - j as f64 / 1000.0)
        .map(|s| 8.0 * s / (1.0 + 7.0 * s))
        .collect();
    let lookup = |t: f64| {
        let j = (0..1000)
            .min_by(|&a, &b| {
                (1000.0 * table[a] - t)
                    .abs()
                    .total_cmp(&(1000.0 * table[b] - t).abs())
            })
            .unwrap();
        table[j]
    };
    assert!((lookup(757.0) - 0.756_756_756_8).abs() < 1e-9);
    assert!((lookup(522.0) - 0.521_739_130_4).abs() < 1e-9);
}

#[test]
fn noise_is_standard_normal_and_per_frame() {
    let a = noise(3, 5, 2, 4096);
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / a.len() as f64;
    assert!(
        mean.abs() < 0.06 && (var - 1.0).abs() < 0.08,
        "mean {mean} var {var}"
    );
    assert_ne!(
        noise(3, 5, 2, 8),
        noise(3, 6, 2, 8),
        "frames draw different noise"
    );
    assert_ne!(
        noise(3, 5, 2, 8),
        noise(3, 5, 3, 8),
        "steps draw different noise"
    );
    assert_eq!(noise(3, 5, 2, 8)[..], a[..8], "a prefix is the same draw");
}

/// Without eviction, the cache built chunk by chunk (each chunk attends to the earlier
/// clean chunks and itself) equals one pass over all clean frames at timestep 0 with a
/// block-causal mask; a bidirectional pass differs.
#[test]
fn stream_cache_equals_block_causal_recompute() {
    let cfg = WanCfg::tiny();
    let wt = WanWeights::random(&cfg, 1);
    let txt = text(&cfg, 2, 5);
    let mut st = Stream::new(&wt, &cfg, scfg(16, 0, false), &txt);
    for _ in 0..3 {
        st.chunk();
    }
    let all: Vec<f64> = st.out.concat();
    let pos: Vec<usize> = (0..6).collect();
    let empty = vec![Vec::new(); cfg.layers];
    let (_, causal) = forward(
        &wt,
        &cfg,
        &all,
        &[0.0; 6],
        &pos,
        &st.ctx,
        &empty,
        KeyRot::Stored,
        &|i, j| j / 2 <= i / 2,
    );
    let (_, bidir) = forward(
        &wt,
        &cfg,
        &all,
        &[0.0; 6],
        &pos,
        &st.ctx,
        &empty,
        KeyRot::Stored,
        &|_, _| true,
    );
    for l in 0..cfg.layers {
        for f in 0..6 {
            let (a, b) = (&st.cache[l][f], &causal[l][f]);
            assert_eq!(a.pos, b.pos);
            let e = max_diff(&a.k, &b.k).max(max_diff(&a.v, &b.v));
            assert!(
                e < 1e-9,
                "block {l} frame {f}: cache differs from the recompute by {e:e}"
            );
        }
    }
    // Block 0's keys depend only on each frame's own input; later blocks see attention.
    let e = max_diff(&st.cache[1][0].k, &bidir[1][0].k);
    assert!(
        e > 1e-6,
        "a bidirectional pass should differ from the causal cache ({e:e})"
    );
    let x0 = all.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(x0.is_finite() && x0 < 50.0, "x0 out of O(1) range: {x0}");
}

/// Attention scores depend only on position differences, on every axis; a whole call with
/// every position shifted by 1000 frames (past the reference's 1024-row table) gives the
/// same output.
#[test]
fn rope_is_relative() {
    let cfg = WanCfg::tiny();
    let mut rng = Rng::new(5);
    let q: Vec<f64> = (0..cfg.dh()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let k: Vec<f64> = (0..cfg.dh()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let score = |pq: [usize; 3], pk: [usize; 3]| {
        let a = common::wan_naive::rope_head(&cfg, &q, pq);
        let b = common::wan_naive::rope_head(&cfg, &k, pk);
        a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
    };
    for (pq, pk) in [
        ([3, 1, 2], [1, 0, 3]),
        ([7, 3, 0], [7, 0, 3]),
        ([0, 0, 0], [2, 2, 2]),
    ] {
        let base = score(pq, pk);
        for off in [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1500, 4, 9]] {
            let sh = |p: [usize; 3]| [p[0] + off[0], p[1] + off[1], p[2] + off[2]];
            let s = score(sh(pq), sh(pk));
            assert!(
                (s - base).abs() < 1e-9,
                "{pq:?}/{pk:?} shifted by {off:?}: {s} vs {base}"
            );
        }
    }
    assert!(
        (score([4, 0, 0], [1, 0, 0]) - score([4, 0, 0], [2, 0, 0])).abs() > 1e-6,
        "different distances, same score"
    );

    let wt = WanWeights::random(&cfg, 1);
    let mut st = Stream::new(&wt, &cfg, scfg(16, 0, false), &text(&cfg, 2, 5));
    st.chunk();
    st.chunk();
    let x = noise(9, 0, 0, 2 * cfg.frame_len());
    let call = |cache: &[Vec<common::wan_naive::Frame>], p0: usize| {
        forward(
            &wt,
            &cfg,
            &x,
            &[937.5; 2],
            &[p0, p0 + 1],
            &st.ctx,
            cache,
            KeyRot::Stored,
            &|_, _| true,
        )
        .0
    };
    let a = call(&st.cache, 4);
    let shifted: Vec<Vec<_>> = st
        .cache
        .iter()
        .map(|l| {
            l.iter()
                .map(|fr| {
                    let mut f = fr.clone();
                    f.pos += 1000;
                    f.k = f
                        .k_raw
                        .iter()
                        .enumerate()
                        .map(|(m, kk)| {
                            common::wan_naive::rope(&cfg, kk, [f.pos, m / cfg.wp(), m % cfg.wp()])
                        })
                        .collect();
                    f
                })
                .collect()
        })
        .collect();
    let b = call(&shifted, 1004);
    assert!(
        rel(&b, &a) < 1e-10,
        "shifted call differs: {:e}",
        rel(&b, &a)
    );
    assert!(
        rel(&call(&st.cache, 1004), &a) > 1e-6,
        "moving only the chunk must change the output"
    );
}

/// With a window of 4 frames and a 1-frame sink, the cache holds the sink and the newest
/// frames, each key keeping the rotation of its absolute frame: rotating raw keys at load
/// with their absolute positions gives the same call, rotating by slot does not.
#[test]
fn eviction_keeps_the_sink_and_absolute_rotations() {
    let cfg = WanCfg::tiny();
    let wt = WanWeights::random(&cfg, 1);
    let (w, s) = (4, 1);
    let mut st = Stream::new(&wt, &cfg, scfg(w, s, false), &text(&cfg, 2, 5));
    for k in 0..5 {
        st.chunk();
        let end = 2 * (k + 1);
        let want: Vec<usize> = if end <= w {
            (0..end).collect()
        } else {
            (0..s).chain(end - (w - s)..end).collect()
        };
        for l in 0..cfg.layers {
            let got: Vec<usize> = st.cache[l].iter().map(|f| f.pos).collect();
            assert_eq!(got, want, "block {l} after chunk {k}");
        }
    }
    // The next chunk's call, after its eviction (held 4 + 2 > 4: frames 7, 8 leave).
    let mut cache = st.cache.clone();
    for l in &mut cache {
        l.drain(s..s + 2);
    }
    assert_eq!(cache[0].iter().map(|f| f.pos).collect::<Vec<_>>(), [0, 9]);
    let x = noise(9, 10, 0, 2 * cfg.frame_len());
    let call = |rot| {
        forward(
            &wt,
            &cfg,
            &x,
            &[833.3; 2],
            &[10, 11],
            &st.ctx,
            &cache,
            rot,
            &|_, _| true,
        )
        .0
    };
    let stored = call(KeyRot::Stored);
    assert!(rel(&call(KeyRot::AtLoadAbsolute), &stored) < 1e-12);
    assert!(
        rel(&call(KeyRot::AtLoadSlot), &stored) > 1e-6,
        "slot rotation should differ"
    );
}

/// LongLive's re-cache: before the window is full it rewrites every frame (sink included)
/// with one unmasked timestep-0 call under the new prompt; after, the sink keeps the old
/// prompt's keys and values and the call's first `sink` frames are queries only.
#[test]
fn recache_rebuilds_the_window_under_the_new_prompt() {
    let cfg = WanCfg::tiny();
    let wt = WanWeights::random(&cfg, 1);
    let (old, new) = (text(&cfg, 2, 5), text(&cfg, 3, 6));
    let new_ctx = text_context(&wt, &cfg, &new);
    for chunks in [2, 4] {
        let mut st = Stream::new(&wt, &cfg, scfg(4, 1, true), &old);
        for _ in 0..chunks {
            st.chunk();
        }
        let before = st.cache.clone();
        st.switch(&new);
        let s0 = st.f0();
        let r = 4.min(s0);
        let x: Vec<f64> = st.out[s0 - r..].concat();
        let pos: Vec<usize> = (s0 - r..s0).collect();
        let keep = if s0 > 4 { 1 } else { 0 };
        let sink: Vec<Vec<_>> = before.iter().map(|l| l[..keep].to_vec()).collect();
        let (_, own) = forward(
            &wt,
            &cfg,
            &x,
            &vec![0.0; r],
            &pos,
            &new_ctx,
            &sink,
            KeyRot::Stored,
            &|_, j| j >= keep,
        );
        for l in 0..cfg.layers {
            let got = &st.cache[l];
            let positions: Vec<usize> = got.iter().map(|f| f.pos).collect();
            let want_pos: Vec<usize> = (0..keep).chain(s0 - r + keep..s0).collect();
            assert_eq!(positions, want_pos, "s0 {s0} block {l}");
            if keep == 1 {
                assert_eq!(
                    got[0], before[l][0],
                    "the sink must keep the old prompt's K/V"
                );
            }
            for (g, o) in got[keep..].iter().zip(&own[l][keep..]) {
                assert!(max_diff(&g.k, &o.k).max(max_diff(&g.v, &o.v)) < 1e-12);
            }
            // Block 1's inputs went through cross-attention of the new prompt.
            if l == 1 {
                let last = got.len() - 1;
                assert!(
                    max_diff(&got[last].k, &before[l][last].k) > 1e-6,
                    "re-cached keys unchanged"
                );
            }
        }
        // A masked re-cache (each frame sees only itself and earlier ones) is different.
        let (_, causal) = forward(
            &wt,
            &cfg,
            &x,
            &vec![0.0; r],
            &pos,
            &new_ctx,
            &sink,
            KeyRot::Stored,
            &|i, j| j >= keep && j <= i,
        );
        assert!(
            max_diff(&causal[1][keep].k, &own[1][keep].k) > 1e-6,
            "the mask should matter"
        );
        // The stream goes on, and differs from a switch without re-cache.
        let a = st.chunk();
        let mut plain = Stream::new(&wt, &cfg, scfg(4, 1, false), &old);
        for _ in 0..chunks {
            plain.chunk();
        }
        plain.switch(&new);
        let b = plain.chunk();
        assert!(rel(&a, &b) > 1e-6, "re-cache made no difference");
    }
}

/// Each planted mistake changes one model call.
#[test]
fn planted_mistakes_change_the_output() {
    let base = WanCfg::tiny();
    let wt = WanWeights::random(&base, 1);
    let txt = text(&base, 2, 4);
    let x = noise(4, 0, 0, 2 * base.frame_len());
    let run = |cfg: &WanCfg| {
        let ctx = text_context(&wt, cfg, &txt);
        let empty = vec![Vec::new(); cfg.layers];
        forward(
            &wt,
            cfg,
            &x,
            &[625.0, 625.0],
            &[3, 4],
            &ctx,
            &empty,
            KeyRot::Stored,
            &|_, _| true,
        )
        .0
    };
    let good = run(&base);
    assert!(good.iter().all(|v| v.is_finite()));
    for plant in [
        Plant::RopeHalves,
        Plant::UnpatchifyChannelFirst,
        Plant::MaskTextPadding,
    ] {
        let cfg = WanCfg {
            plant: Some(plant),
            ..base.clone()
        };
        let e = rel(&run(&cfg), &good);
        assert!(e > 1e-4, "{plant:?} changed the output by only {e:e}");
    }
}
