//! The engine's Wan family against the naive f64 reference of docs/wan.md
//! (`tests/common/wan_naive.rs`): one CPU call over a populated KV cache, and a whole
//! `wan-tiny` stream with eviction, a sink and LongLive prompt switches, with the same
//! Philox noise; the stream's latents do not depend on how it is driven.
//!
//! Tolerances (f32 engine vs f64 reference, the same f32-exact weights and inputs):
//! one call, max |v - v_ref| <= 1e-5 * (1 + max |v_ref|); a stream of chunks, max |x0 -
//! x0_ref| <= 1e-4 * (1 + max |x0_ref|) per chunk (errors of earlier chunks reach later ones
//! through the cache).

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
        .map(|(i, &v)| if i / cfg.dtxt < real { f64::from(v) } else { 0.0 })
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
