//! The Wan family's device backend (`CudaCausal` on the kernel emulator) against the CPU
//! backend: one call with an empty cache, a `wan-tiny` stream of five chunks with eviction
//! past the sink and a LongLive prompt switch (re-cache keeping the sink), the lowered
//! launch lists, and graph replay against eager launches, bit for bit.
//!
//! Both backends get the same inputs at every call (the same latents, timesteps and
//! committed chunks), so a difference comes from the call itself and from the cache the
//! device built (f16 keys and values), never from a sampler amplifying it.
//!
//! Tolerance (device f16 activations and f16 cache vs CPU f32, the same f16-exact weights):
//! `|v - v_cpu| <= 5e-3 + 5e-3 |v_cpu|` per element, about 5 f16 ulps of the O(1) outputs
//! (each of the ~40 launches of a call rounds its output to f16 once; the residual stream
//! stays f32). Measured on the emulator: max abs error 1.07e-3 to 1.26e-3 per call over a
//! stream (max |v| about 3), at most a third of the budget.

mod common;

use std::sync::Arc;

use common::Rng;
use streamdit::backend::cpu::CpuCausal;
use streamdit::backend::cuda::device::ThreadOrder;
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::backend::cuda::lower::Step;
use streamdit::backend::cuda::CudaCausal;
use streamdit::checkpoint::wan::random_wan;
use streamdit::checkpoint::Weights;
use streamdit::{
    BackendKind, CausalBackend, DType, Engine, EngineParams, Profile, Tensor, WanConfig,
    WeightsSource,
};

const SEED: u64 = 5;
const ATOL: f64 = 5e-3;
const RTOL: f64 = 5e-3;

fn tiny() -> WanConfig {
    Profile::builtin("wan-tiny").unwrap().wan().unwrap().clone()
}

fn weights(w: &WanConfig) -> Arc<Weights> {
    // f16 values, so both backends compute with the same weights.
    Arc::new(random_wan(w, SEED, DType::F16))
}

fn text(w: &WanConfig, seed: u64, real: usize) -> (Tensor, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let data = rng.f32s(w.text_len * w.text_dim, -1.0, 1.0);
    let mask = (0..w.text_len)
        .map(|l| f32::from(u8::from(l < real)))
        .collect();
    (
        Tensor::new(vec![w.text_len, w.text_dim], data).unwrap(),
        mask,
    )
}

fn compare(name: &str, got: &[f32], want: &[f32]) -> f64 {
    let want: Vec<f64> = common::f64s(want);
    common::assert_close(name, got, &want, ATOL, RTOL)
}

fn kernels(steps: &[Step]) -> Vec<&'static str> {
    steps
        .iter()
        .map(|s| match s {
            Step::Launch { kernel_name, .. } => *kernel_name,
            Step::Copy { .. } => "copy",
        })
        .collect()
}

/// What both backends are asked, in order.
enum Call {
    Text(u64, usize),
    Evict,
    Denoise(u64),
    Commit(u64),
    Recache(u64),
}

/// The calls of `chunks` chunks of `steps` denoising calls each, with a prompt switch
/// before chunk `switch` (LongLive re-cache of the last window of frames).
fn script(w: &WanConfig, chunks: u64, steps: usize, switch: u64) -> Vec<Call> {
    let c = w.chunk_frames as u64;
    let mut calls = vec![Call::Text(3, 5)];
    for k in 0..chunks {
        let f0 = k * c;
        if k == switch {
            calls.push(Call::Text(4, 8));
            calls.push(Call::Recache(f0));
        }
        calls.push(Call::Evict);
        for _ in 0..steps {
            calls.push(Call::Denoise(f0));
        }
        calls.push(Call::Commit(f0));
    }
    calls
}

/// Runs `calls` on the device backend and the CPU backend with the same inputs, comparing
/// every denoising output; returns the device's outputs.
fn run_both(
    w: &WanConfig,
    dev: &mut dyn CausalBackend,
    cpu: &mut dyn CausalBackend,
    calls: &[Call],
) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(17);
    let n = w.chunk_frames * w.frame_elems();
    let (timesteps, _) = w.schedule();
    let mut outputs = Vec::new();
    let mut history: Vec<Vec<f32>> = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        match *call {
            Call::Text(seed, real) => {
                let (t, m) = text(w, seed, real);
                dev.set_text(&t, &m).unwrap();
                cpu.set_text(&t, &m).unwrap();
            }
            Call::Evict => {
                let held = cpu.cached_frames().len();
                if held + w.chunk_frames > w.window {
                    let k = held + w.chunk_frames - w.window;
                    dev.evict(k).unwrap();
                    cpu.evict(k).unwrap();
                }
            }
            Call::Denoise(f0) => {
                let x = rng.f32s(n, -2.0, 2.0);
                let t = vec![timesteps[i % timesteps.len()] as f32; w.chunk_frames];
                let mut v = common::poisoned(n);
                let mut want = common::poisoned(n);
                dev.denoise(&x, &t, f0, &mut v).unwrap();
                cpu.denoise(&x, &t, f0, &mut want).unwrap();
                compare(&format!("call {i} (f0 {f0})"), &v, &want);
                outputs.push(v);
            }
            Call::Commit(f0) => {
                let x0 = rng.f32s(n, -2.0, 2.0);
                dev.commit(&x0, w.context_timestep as f32, f0).unwrap();
                cpu.commit(&x0, w.context_timestep as f32, f0).unwrap();
                history.extend(x0.chunks(w.frame_elems()).map(<[f32]>::to_vec));
            }
            Call::Recache(f0) => {
                let r = (w.window as u64).min(f0) as usize;
                let frames: Vec<f32> = history[history.len() - r..].concat();
                let keep = if f0 > w.window as u64 { w.sink } else { 0 };
                let s = f0 - r as u64;
                dev.recache(&frames, w.context_timestep as f32, s, keep)
                    .unwrap();
                cpu.recache(&frames, w.context_timestep as f32, s, keep)
                    .unwrap();
            }
        }
        assert_eq!(dev.cached_frames(), cpu.cached_frames(), "call {i}: cache");
    }
    outputs
}

/// The first call of a stream: an empty cache, the chunk attending to itself.
#[test]
fn one_call_with_an_empty_cache_matches_the_cpu() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut cpu = CpuCausal::new(&w, wt).unwrap();
    let calls = [Call::Text(3, 5), Call::Denoise(0)];
    let out = run_both(&w, &mut dev, &mut cpu, &calls);
    let scale = out[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "v is O(1), not vanishing: {scale}");
}

/// Five chunks: the window fills (chunk 1), frames past the sink are evicted (chunks 2-4),
/// and a prompt switch before chunk 3 re-caches the last four frames keeping the sink.
#[test]
fn wan_tiny_stream_with_eviction_sink_and_recache_matches_the_cpu() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut cpu = CpuCausal::new(&w, wt).unwrap();
    // The whole schedule (4 steps per chunk): 5 s on the emulator.
    let calls = script(&w, 5, w.steps(), 3);
    run_both(&w, &mut dev, &mut cpu, &calls);
    assert_eq!(cpu.cached_frames(), [0, 7, 8, 9]);
    // Slots: the sink in 0; evicted slots are reused, nothing moved.
    let slots = dev.cache_slots();
    assert_eq!(slots[0], 0);
    let mut sorted = slots.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "four distinct slots: {slots:?}");
}

/// A switch while the window is not yet full (`f0 <= window`): everything re-cached,
/// nothing kept.
#[test]
fn recache_before_the_window_fills_matches_the_cpu() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut cpu = CpuCausal::new(&w, wt).unwrap();
    run_both(&w, &mut dev, &mut cpu, &script(&w, 3, 1, 1));
}

/// Graph replay (forward thread order) against eager launches (reverse order): the same
/// bits, for every call of a stream with eviction and a re-cache.
#[test]
fn graph_replay_equals_eager_launches_bit_for_bit() {
    let w = tiny();
    let wt = weights(&w);
    let mut graphs = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut eager = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    eager.set_graphs(false);
    eager.device_mut().set_thread_order(ThreadOrder::Reverse);
    let calls = script(&w, 4, 2, 3);
    // The CPU stands in as the second backend of each run only to drive the same script.
    let mut cpu = CpuCausal::new(&w, wt.clone()).unwrap();
    let a = run_both(&w, &mut graphs, &mut cpu, &calls);
    let mut cpu = CpuCausal::new(&w, wt).unwrap();
    let b = run_both(&w, &mut eager, &mut cpu, &calls);
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        assert!(xb == yb, "call {k}: replay differs from the eager launches");
    }
    // A replay of the same call again gives the same bits.
    let n = w.chunk_frames * w.frame_elems();
    let x = Rng::new(3).f32s(n, -2.0, 2.0);
    let t = vec![500.0; w.chunk_frames];
    graphs.evict(2).unwrap();
    let (mut v1, mut v2) = (common::poisoned(n), common::poisoned(n));
    graphs.denoise(&x, &t, 8, &mut v1).unwrap();
    graphs.denoise(&x, &t, 8, &mut v2).unwrap();
    assert!(v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// The launches of one call and of the prompt, in order, and the committing prefix.
#[test]
fn the_lowered_lists_launch_the_wan_kernels_in_order() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut prompt = vec!["gemm_bias_gelu_f16", "gemm_bias_f16"];
    for _ in 0..w.depth {
        prompt.extend(["gemm_bias_f16", "wan_rms_rows"]);
    }
    assert_eq!(kernels(dev.prompt_steps()), prompt);
    let mut call = vec![
        "patchify",
        "gemm_bias_f32",
        "wan_timestep_features",
        "gemm_bias_f32",
        "silu_f16",
        "gemm_bias_f32",
        "silu_f16",
        "gemm_bias_f32",
    ];
    let block = [
        "modulation",
        "adaln_rows_warp",
        "gemm_bias_f16",
        "wan_qkv_rope",
        "attn_kvcache_d16",
        "gemm_gated_residual",
        "adaln_rows_warp",
        "gemm_bias_f16",
        "wan_rms_rows",
        "attn_cross_d16",
        "gemm_gated_residual",
        "adaln_rows_warp",
        "gemm_bias_gelu_f16",
        "gemm_gated_residual",
    ];
    for _ in 0..w.depth {
        call.extend(block);
    }
    call.extend([
        "modulation",
        "adaln_rows_warp",
        "gemm_bias_f32",
        "unpatchify",
    ]);
    for attended in [2, 4] {
        let (steps, commit_len) = dev.call_steps(attended).unwrap();
        assert_eq!(kernels(steps), call);
        // The committing pass ends with the last block's cache write.
        assert_eq!(commit_len, 8 + (w.depth - 1) * block.len() + 4);
        assert_eq!(kernels(&steps[..commit_len]).last(), Some(&"wan_qkv_rope"));
        // The attention attends to `attended` frames.
        for s in steps {
            if let Step::Launch {
                params: streamdit::backend::cuda::lower::Params::AttnKvCache(p),
                ..
            } = s
            {
                assert_eq!(p.frames as usize, attended);
                assert_eq!(p.tokens as usize, w.chunk_frames * w.tokens_per_frame());
            }
        }
    }
}

/// A device whose shared memory per block cannot hold the GEMM's tiles refuses the
/// backend when it is built, naming the kernel and the limit.
#[test]
fn a_device_with_too_little_shared_memory_is_refused_at_build() {
    let w = tiny();
    let wt = weights(&w);
    let dev = EmuDevice::new().with_shared_memory_limit(32 * 1024);
    let e = CudaCausal::new(&w, &wt, dev).err().expect("refused");
    let m = e.to_string();
    assert!(m.contains("gemm_bias") && m.contains("32768"), "{m}");
}

/// Calls the device backend refuses, with the thing named.
#[test]
fn bad_calls_are_named() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let n = w.chunk_frames * w.frame_elems();
    let mut v = vec![0.0; n];
    let e = dev
        .denoise(&vec![0.0; n], &[0.0; 2], 0, &mut v)
        .unwrap_err();
    assert!(e.to_string().contains("set_text"), "{e}");
    let (t, m) = text(&w, 1, 3);
    dev.set_text(&t, &m).unwrap();
    let e = dev
        .denoise(&vec![0.0; n - 1], &[0.0; 2], 0, &mut v)
        .unwrap_err();
    assert!(e.to_string().contains('x'), "{e}");
    let e = dev.evict(1).unwrap_err();
    assert!(e.to_string().contains("evict 1"), "{e}");
    for f0 in [0, 2] {
        dev.commit(&vec![0.5; n], 0.0, f0).unwrap();
    }
    let e = dev.commit(&vec![0.5; n], 0.0, 4).unwrap_err();
    assert!(e.to_string().contains("exceed the window"), "{e}");
    let e = dev
        .recache(&vec![0.0; 5 * w.frame_elems()], 0.0, 0, 1)
        .unwrap_err();
    assert!(e.to_string().contains("re-cache frames"), "{e}");
    dev.clear();
    assert!(dev.cached_frames().is_empty());
}

/// The engine builds the device backend for `--backend emu` and streams on it.
#[test]
fn the_engine_runs_wan_on_the_emulator() {
    let e = Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Emu,
    })
    .unwrap();
    let (kind, reason) = e.backend_choice();
    assert_eq!(kind, BackendKind::Emu);
    assert!(reason.starts_with("emu"), "{reason}");
    let mut b = e.create_causal_backend().unwrap();
    assert_eq!(b.name(), "emu");
    // Graphs are on by default and can be turned off through the trait (what a stream's
    // `set_graphs` reaches); the CPU backend has none and says so.
    assert_eq!(b.graphs(), Some(true));
    b.set_graphs(false).unwrap();
    assert_eq!(b.graphs(), Some(false));
    let cpu = Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut c = cpu.create_causal_backend().unwrap();
    assert_eq!(c.graphs(), None);
    let err = c.set_graphs(false).unwrap_err().to_string();
    assert!(err.contains("no device graphs"), "{err}");
}

/// `denoise_timed` runs the same launches one by one: the same output as `denoise`, bit
/// for bit, and one timed piece per launch of the list, labelled by it.
#[test]
fn timed_calls_report_every_launch_and_match_the_call() {
    let w = tiny();
    let wt = weights(&w);
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let (t, m) = text(&w, 2, 4);
    dev.set_text(&t, &m).unwrap();
    let n = w.chunk_frames * w.frame_elems();
    let x = Rng::new(9).f32s(n, -2.0, 2.0);
    let ts = vec![750.0; w.chunk_frames];
    let mut v = common::poisoned(n);
    dev.denoise(&x, &ts, 0, &mut v).unwrap();
    let mut timed = common::poisoned(n);
    let mut labels = Vec::new();
    let clock = dev
        .denoise_timed(&x, &ts, 0, &mut timed, &mut |s| {
            assert!(s.seconds >= 0.0);
            labels.push(s.label.to_string());
        })
        .unwrap();
    assert_eq!(clock, streamdit::Clock::Emulator);
    assert!(v
        .iter()
        .zip(&timed)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let (steps, _) = dev.call_steps(w.chunk_frames).unwrap();
    let want: Vec<String> = steps.iter().map(|s| s.label().to_string()).collect();
    assert_eq!(labels, want);
    assert!(
        labels.iter().any(|l| l.contains("wan_qkv_rope")),
        "{labels:?}"
    );
}

/// The 1.3B shapes lower (every launch's shape contract accepted: dh = 128, D = 1536,
/// 1560 tokens per frame, a 21-frame window), and every launch fits an H100's shared
/// memory while the head-dim-128 attentions (cache and cross) are refused on an sm_86
/// device, naming the kernel.
#[test]
fn wan_1_3b_lowers_and_its_attention_needs_more_than_sm86_shared_memory() {
    use streamdit::backend::cuda::limits::{fit_step, OPTIN_SM86, OPTIN_SM90};
    use streamdit::backend::cuda::lower::wan::{lower_call, lower_prompt, CallLayout, ModelLayout};
    let w = Profile::builtin("wan-1.3b").unwrap().wan().unwrap().clone();
    let m = ModelLayout::new(&w);
    let c = CallLayout::new(&w, w.chunk_frames);
    // Addresses only: nothing is allocated or launched.
    let (mb, cb) = (1 << 32, 1 << 40);
    let prompt = lower_prompt(&w, &m, mb, &c, cb).unwrap();
    assert_eq!(prompt.len(), 2 + 2 * w.depth);
    let full = lower_call(&w, &m, mb, &c, cb, w.window).unwrap();
    assert_eq!(full.steps.len(), 8 + 14 * w.depth + 4);
    let mut refused = Vec::new();
    for mut step in full.steps {
        fit_step(&mut step.clone(), OPTIN_SM90).unwrap();
        if let Err(e) = fit_step(&mut step, OPTIN_SM86) {
            refused.push(e);
        }
    }
    assert_eq!(refused.len(), 2 * w.depth, "two attentions per block");
    assert!(refused[0].contains("attn_kvcache_d128"), "{}", refused[0]);
    assert!(refused[1].contains("attn_cross_d128"), "{}", refused[1]);
    assert!(refused[0].contains("115584 B") && refused[0].contains("101376 B"));
    // More attended frames than the cache holds is refused when lowering.
    let e = lower_call(&w, &m, mb, &c, cb, w.window + 1).unwrap_err();
    assert!(e.to_string().contains("attended frames"), "{e}");
}
