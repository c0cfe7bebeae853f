//! The engine's Wan family against the naive f64 reference of docs/wan.md
//! (`tests/common/wan_naive.rs`): one CPU call over a populated KV cache, and a whole
//! `wan-tiny` stream with eviction, a sink and LongLive prompt switches, with the same
//! Philox noise; the stream's latents do not depend on how it is driven.
//!
//! Tolerances (f32 engine vs f64 reference, the same f32-exact weights and inputs):
//! one call, max |v - v_ref| <= 1e-5 * (1 + max |v_ref|); a stream, per chunk, max |x0 -
//! x0_ref| <= 1e-5 * (1 + max |x0_ref|) (errors of earlier chunks reach later ones through
//! the cache). Measured (shared 2-core VM): 8.1e-7 for the call (max |v| 3.6), at most
//! 7.8e-7 over six chunks (max |x0| about 4 to 5).

// Index loops over layers and frames read like the document's equations.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::wan_naive::{self as naive, KeyRot, WanCfg, WanWeights};
use common::Rng;
use streamdit::backend::cpu::CpuCausal;
use streamdit::checkpoint::wan::random_wan;
use streamdit::{
    BackendKind, CausalBackend, DType, DecoderKind, Engine, EngineParams, Profile, StreamParams,
    Tensor, TextInput, WanConfig, WeightsSource,
};

const SEED: u64 = 7;

fn tiny() -> (Profile, WanConfig) {
    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap().clone();
    (p, w)
}

/// The naive model's view of the engine's random weights (f32 values widened).
fn naive_weights(w: &WanConfig) -> WanWeights {
    let weights = random_wan(w, SEED, DType::F32);
    WanWeights(
        weights
            .iter()
            .filter(|(n, _)| !n.starts_with("preview."))
            .map(|(n, t)| (n.to_string(), (t.shape.clone(), common::f64s(&t.data))))
            .collect::<HashMap<_, _>>(),
    )
}

/// A text condition with `real` rows and garbage in the padded rows, which the mask must
/// zero; the naive model gets the zeros.
fn text(cfg: &WanCfg, seed: u64, real: usize) -> (TextInput, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let data = rng.f32s(cfg.lt * cfg.dtxt, -1.0, 1.0);
    let mask: Vec<f32> = (0..cfg.lt).map(|l| f32::from(u8::from(l < real))).collect();
    let zeroed = data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if i / cfg.dtxt < real {
                f64::from(v)
            } else {
                0.0
            }
        })
        .collect();
    let t = TextInput {
        text: Tensor::new(vec![cfg.lt, cfg.dtxt], data).unwrap(),
        mask,
    };
    (t, zeroed)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn profile_matches_the_naive_configuration() {
    let (_, w) = tiny();
    let cfg = WanCfg::tiny();
    assert_eq!(
        (w.latent_channels, w.latent_height, w.latent_width, w.dim),
        (cfg.c, cfg.h, cfg.w, cfg.d)
    );
    assert_eq!(
        (w.depth, w.heads, w.ffn_dim, w.freq_dim, w.text_len, w.text_dim),
        (cfg.layers, cfg.heads, cfg.dff, cfg.freq, cfg.lt, cfg.dtxt)
    );
    assert_eq!(w.rope_split(), [4, 2, 2]);
    let (t, s) = w.schedule();
    assert_eq!(t, [1000.0, 937.5, 2500.0 / 3.0, 625.0]);
    assert_eq!(s, [1.0, 0.9375, 2.5 / 3.0, 0.625]);
    // docs/wan.md section 6: the model sees f32 timesteps, 833.33331298828125.
    assert_eq!(t[2] as f32, 833.333_3_f32);
}

/// One denoising call over a cache of a sink and an evicted window, against the reference.
#[test]
fn cpu_call_over_a_populated_cache_matches_the_naive_model() {
    let (_, w) = tiny();
    let cfg = WanCfg::tiny();
    let nw = naive_weights(&w);
    let mut backend = CpuCausal::new(&w, Arc::new(random_wan(&w, SEED, DType::F32))).unwrap();
    let (cond, zeroed) = text(&cfg, 3, 5);
    backend.set_text(&cond.text, &cond.mask).unwrap();
    let ctx = naive::text_context(&nw, &cfg, &zeroed);

    let mut rng = Rng::new(11);
    let n = 2 * cfg.frame_len();
    let mut cache = vec![Vec::new(); cfg.layers];
    // Two committed chunks (frames 0..3) in both, then the eviction of frames 1 and 2.
    for f0 in [0usize, 2] {
        let x = rng.f32s(n, -2.0, 2.0);
        backend.commit(&x, 0.0, f0 as u64).unwrap();
        let (_, own) = naive::forward(
            &nw,
            &cfg,
            &common::f64s(&x),
            &[0.0; 2],
            &[f0, f0 + 1],
            &ctx,
            &cache,
            KeyRot::Stored,
            &|_, _| true,
        );
        for (layer, new) in cache.iter_mut().zip(own) {
            layer.extend(new);
        }
    }
    assert_eq!(backend.cached_frames(), [0, 1, 2, 3]);
    backend.evict(2).unwrap();
    for layer in &mut cache {
        layer.drain(1..3);
    }
    assert_eq!(backend.cached_frames(), [0, 3]);

    let x = rng.f32s(n, -2.0, 2.0);
    let t = 833.333_3_f32;
    let mut v = common::poisoned(n);
    backend.denoise(&x, &[t; 2], 4, &mut v).unwrap();
    let (want, _) = naive::forward(
        &nw,
        &cfg,
        &common::f64s(&x),
        &[f64::from(t); 2],
        &[4, 5],
        &ctx,
        &cache,
        KeyRot::Stored,
        &|_, _| true,
    );
    let scale = max_abs(&want);
    let err = common::max_abs_err(&v, &want);
    println!("one call: max |v| {scale:.3}, max abs error {err:.3e}");
    assert!(err <= 1e-5 * (1.0 + scale), "call error {err:e}");
    assert!(scale > 0.1 && scale < 50.0, "v out of O(1) range: {scale}");
    // The cache is unchanged by a denoising call.
    assert_eq!(backend.cached_frames(), [0, 3]);
}

fn engine() -> Engine {
    let (p, _) = tiny();
    Engine::new(EngineParams {
        profile: p,
        weights: WeightsSource::Random {
            seed: SEED,
            dtype: DType::F32,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap()
}

fn stream(e: &Engine, text: &TextInput, seed: u64) -> streamdit::Stream {
    e.stream(StreamParams {
        seed: Some(seed),
        text: Some(text.clone()),
        decoder: DecoderKind::Preview,
        ..StreamParams::default()
    })
    .unwrap()
}

/// Six chunks of `wan-tiny` (window 4, sink 1, chunks of 2): eviction from chunk 2 on, a
/// LongLive switch at chunk 2 (`f0 = window`: the whole window re-cached, sink included) and
/// one at chunk 4 (`f0 > window`: the sink keeps the old prompt), against the reference
/// stream with the same noise.
#[test]
fn wan_tiny_stream_with_eviction_sink_and_switches_matches_the_naive_stream() {
    let (_, w) = tiny();
    let cfg = WanCfg::tiny();
    let nw = naive_weights(&w);
    let texts: Vec<_> = [(3, 5), (4, 8), (5, 2)]
        .iter()
        .map(|&(s, real)| text(&cfg, s, real))
        .collect();
    let (timesteps, sigmas) = w.schedule();
    let mut reference = naive::Stream::new(
        &nw,
        &cfg,
        naive::StreamCfg {
            chunk: w.chunk_frames,
            window: w.window,
            sink: w.sink,
            recache: w.recache,
            // The model sees f32 timesteps (docs/wan.md section 6).
            timesteps: timesteps.iter().map(|&t| f64::from(t as f32)).collect(),
            sigmas,
            seed: 5,
        },
        &texts[0].1,
    );
    let e = engine();
    let mut s = stream(&e, &texts[0].0, 5);
    for k in 0..6 {
        if k == 2 || k == 4 {
            let i = k / 2;
            s.set_text(texts[i].0.clone()).unwrap();
            reference.switch(&texts[i].1);
        }
        let got = s.next_latents().unwrap().to_vec();
        let want = reference.chunk();
        let scale = max_abs(&want);
        let err = common::max_abs_err(&got, &want);
        println!("chunk {k}: max |x0| {scale:.3}, max abs error {err:.3e}");
        assert!(err <= 1e-5 * (1.0 + scale), "chunk {k}: error {err:e}");
        assert!(
            scale > 0.1 && scale < 50.0,
            "chunk {k}: x0 out of O(1) range"
        );
    }
    assert_eq!(s.chunks_emitted(), 6);
    assert_eq!(s.calls(), 24, "4 denoising calls per chunk");
}

/// The same stream driven chunk by chunk, step by step (with the prompt switched in the
/// middle of the chunk before, which takes effect at the next chunk) and through the
/// preview decoder gives the same latents bit for bit; the trace holds every noise draw and
/// chunk.
#[test]
fn latents_do_not_depend_on_how_the_stream_is_driven() {
    let cfg = WanCfg::tiny();
    let (a, b) = (text(&cfg, 3, 5).0, text(&cfg, 4, 8).0);
    let e = engine();

    let mut by_chunk = stream(&e, &a, 9);
    by_chunk.set_trace(true);
    let mut want = Vec::new();
    for k in 0..4 {
        if k == 2 {
            by_chunk.set_text(b.clone()).unwrap();
        }
        want.push(by_chunk.next_latents().unwrap().to_vec());
    }

    let mut by_step = stream(&e, &a, 9);
    let mut got = Vec::new();
    let mut steps = 0;
    while got.len() < 4 {
        if by_step.step().unwrap() {
            got.push(by_step.chunk_latents().to_vec());
        }
        steps += 1;
        if steps == 5 {
            // One step into chunk 1: applies at chunk 2, as above.
            by_step.set_text(b.clone()).unwrap();
        }
    }
    assert_eq!(got, want, "step by step");

    let mut by_frames = stream(&e, &a, 9);
    let mut frames = Vec::new();
    for k in 0..4 {
        if k == 2 {
            by_frames.set_text(b.clone()).unwrap();
        }
        let n = by_frames.next_frames(&mut frames).unwrap();
        assert_eq!(n, 2 * 4, "2 latent frames, 4 video frames each");
        assert_eq!(
            by_frames.chunk_latents(),
            &want[k][..],
            "next_frames, chunk {k}"
        );
    }
    assert_eq!(by_frames.frame_size(), (64, 64));

    // The trace: per chunk the initial noise and three re-noises, then the chunk.
    let trace = by_chunk.take_trace();
    let names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
    let mut expect = Vec::new();
    for k in 0..4 {
        for s in 0..4 {
            expect.push(format!("noise.{k}.{s}"));
        }
        expect.push(format!("chunk.{k}"));
    }
    assert_eq!(names, expect);
    let fe = cfg.frame_len();
    for (name, t) in &trace {
        assert_eq!(t.shape, [2, cfg.c, cfg.h, cfg.w], "{name}");
        let parts: Vec<usize> = name
            .split('.')
            .skip(1)
            .map(|p| p.parse().unwrap())
            .collect();
        if let [k, s] = parts[..] {
            for f in 0..2 {
                let mut z = vec![0.0; fe];
                streamdit::inspect::wan_noise_frame(9, (2 * k + f) as u64, s as u32, &mut z);
                assert_eq!(&t.data[f * fe..(f + 1) * fe], &z[..], "{name} frame {f}");
            }
        } else {
            assert_eq!(t.data, want[parts[0]], "{name}");
        }
    }
}

/// Per-op non-finite checks (`Stream::set_check_ops`) run on the Wan family's calls too,
/// re-cache included, and leave the latents bit for bit unchanged.
#[test]
fn per_op_checks_run_on_the_wan_stream_and_change_nothing() {
    let cfg = WanCfg::tiny();
    let (a, b) = (text(&cfg, 3, 5).0, text(&cfg, 4, 8).0);
    let e = engine();
    let run = |check: bool| {
        let mut s = stream(&e, &a, 9);
        s.set_check_ops(check).unwrap();
        (0..3)
            .map(|k| {
                if k == 2 {
                    s.set_text(b.clone()).unwrap();
                }
                s.next_latents().unwrap().to_vec()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(true), run(false));
}
