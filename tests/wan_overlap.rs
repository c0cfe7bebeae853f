//! A Wan stream's decode overlapped with its next DiT call (issue 17, docs/wan.md section
//! 13, *Overlap*): after a chunk is emitted the causal sampler hands the next chunk's first
//! denoising call to the device backend (`CausalBackend::prefetch`), which launches it
//! while the chunk is decoded and lets the next `denoise` take it only for the very same
//! inputs and cache.
//!
//! Checked on the kernel emulator: streams driven with prefetch (`next_frames`) and without
//! (`step` + `decode_chunk`) give the same latents and frames bit for bit through prompt
//! switches with LongLive re-caches, with the number of prefetched calls taken counted
//! exactly (so the comparison cannot pass without a prefetch); and the backend alone takes
//! a prefetched call only for equal inputs, dropping it on a new text, an eviction, a
//! commit or other inputs.

mod common;

use std::sync::Arc;

use common::Rng;
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::backend::cuda::CudaCausal;
use streamdit::checkpoint::wan::random_wan;
use streamdit::{
    BackendKind, CausalBackend, DType, DecoderKind, Engine, EngineParams, Profile, StreamParams,
    Tensor, WanConfig, WeightsSource,
};

fn tiny() -> WanConfig {
    Profile::builtin("wan-tiny").unwrap().wan().unwrap().clone()
}

fn engine(backend: BackendKind) -> Engine {
    Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 5,
            dtype: DType::F16,
        },
        backend,
    })
    .unwrap()
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// How a test stream is driven.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Drive {
    /// `next_frames`: the sampler prefetches after each chunk.
    Prefetch,
    /// `step` until a chunk pops, then `decode_chunk`: nothing is started early.
    Steps,
    /// As `Prefetch`, but each prompt switch is set one step into the chunk before, so it
    /// is already waiting when that chunk ends (and still takes effect at the next one).
    SwitchMidChunk,
}

/// `chunks` chunks of a `wan-tiny` stream (chunks of 2, window 4, sink 1, re-cache on)
/// decoded by `decoder`, with a prompt switch taking effect at each chunk of `switches`
/// (a LongLive re-cache: at `f0 = window` of the whole window, past it keeping the sink);
/// every chunk's latents, all frames, and the prefetched calls taken.
fn run(
    e: &Engine,
    drive: Drive,
    decoder: DecoderKind,
    chunks: usize,
    switches: &[usize],
) -> (Vec<Vec<f32>>, Vec<u8>, u64) {
    let mut s = e
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(9),
            decoder,
            ..StreamParams::default()
        })
        .unwrap();
    let prompts = ["a red fox in snow", "waves over a reef"];
    let prompt = |k: usize| {
        switches
            .iter()
            .position(|&j| j == k)
            .map(|i| prompts[i % 2])
    };
    let (mut latents, mut frames) = (Vec::new(), Vec::new());
    for k in 0..chunks {
        match drive {
            Drive::Prefetch => {
                if let Some(p) = prompt(k) {
                    s.set_prompt(p);
                }
                s.next_frames(&mut frames).unwrap();
            }
            Drive::Steps => {
                if let Some(p) = prompt(k) {
                    s.set_prompt(p);
                }
                while !s.step().unwrap() {}
                s.decode_chunk(&mut frames).unwrap();
            }
            Drive::SwitchMidChunk => {
                if let Some(p) = prompt(k + 1) {
                    assert!(!s.step().unwrap());
                    s.set_prompt(p);
                }
                s.next_frames(&mut frames).unwrap();
            }
        }
        latents.push(s.chunk_latents().to_vec());
    }
    assert_eq!(s.calls(), 4 * chunks as u64, "{drive:?}: 4 calls per chunk");
    (latents, frames, s.prefetched_calls())
}

/// The tentpole: prefetching changes no bit of a stream's latents or frames (TAEHV on the
/// emulator beside the DiT), through prompt switches with re-caches. Default tier: four
/// chunks, a switch at chunk 3 (after evictions; the re-cache keeps the sink), the switch
/// set mid-chunk with the preview decoder (latents only). Full tier: six chunks, switches
/// at chunks 2 (the whole window re-cached) and 4, every drive with TAEHV (about 25 s each).
#[test]
fn prefetched_streams_equal_streams_without_prefetch_bit_for_bit() {
    let e = engine(BackendKind::Emu);
    let (chunks, switches): (usize, &[usize]) = if common::full() {
        (6, &[2, 4])
    } else {
        (4, &[3])
    };
    let taehv = DecoderKind::Taehv;
    let (want, want_frames, none) = run(&e, Drive::Steps, taehv, chunks, switches);
    assert_eq!(none, 0, "a stream driven by `step` starts nothing early");
    let frames_expected = (5 + (chunks - 1) * 8) * 64 * 64 * 3;
    assert_eq!(
        want_frames.len(),
        frames_expected,
        "5, then 8 frames per chunk"
    );
    // The frames are not one flat colour (a broken decode would make equality vacuous).
    assert!(want_frames.iter().any(|&b| b != want_frames[0]));
    let mid_decoder = if common::full() {
        taehv
    } else {
        DecoderKind::Preview
    };
    for (drive, decoder) in [
        (Drive::Prefetch, taehv),
        (Drive::SwitchMidChunk, mid_decoder),
    ] {
        let (got, frames, taken) = run(&e, drive, decoder, chunks, switches);
        // Every chunk after the first takes the call started after the chunk before,
        // except at a switch: Prefetch started one that `set_text` dropped, SwitchMidChunk
        // started none (the switch was already waiting when the chunk before ended).
        let expect = (chunks - 1 - switches.len()) as u64;
        assert_eq!(taken, expect, "{drive:?}: prefetched calls taken");
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(bits(a) == bits(b), "{drive:?}: chunk {k} latents differ");
        }
        if decoder == taehv {
            assert!(frames == want_frames, "{drive:?}: frames differ");
        }
    }
}

/// The CPU backend starts nothing early: its streams count no prefetched call, and stay
/// equal however they are driven (tests/wan_engine.rs checks the latents).
#[test]
fn the_cpu_backend_prefetches_nothing() {
    let e = engine(BackendKind::Cpu);
    let mut s = e
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(9),
            decoder: DecoderKind::Preview,
            ..StreamParams::default()
        })
        .unwrap();
    for _ in 0..3 {
        s.next_latents().unwrap();
    }
    assert_eq!(s.prefetched_calls(), 0);
}

/// The backend alone: a prefetched call is taken only by a `denoise` with the same
/// latents, timesteps, first frame and cache, and its output is the eager call's, bit for
/// bit; a new text, an eviction, a commit or other inputs drop it, and the call then
/// computes what a backend that never prefetched computes.
#[test]
fn the_backend_takes_a_prefetched_call_only_when_it_is_the_next_one() {
    let w = tiny();
    let wt = Arc::new(random_wan(&w, 5, DType::F16));
    let mut dev = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let mut plain = CudaCausal::new(&w, &wt, EmuDevice::new()).unwrap();
    let (ta, ma) = text(&w, 3, 5);
    let (tb, mb) = text(&w, 4, 8);
    let n = w.chunk_frames * w.frame_elems();
    let mut rng = Rng::new(21);
    let (x, x2) = (rng.f32s(n, -2.0, 2.0), rng.f32s(n, -2.0, 2.0));
    let t = vec![1000.0f32; w.chunk_frames];
    let call = |b: &mut CudaCausal<EmuDevice>, x: &[f32], f0: u64| {
        let mut v = common::poisoned(n);
        b.denoise(x, &t, f0, &mut v).unwrap();
        v
    };
    for b in [&mut dev, &mut plain] {
        b.set_text(&ta, &ma).unwrap();
    }

    // Taken: the same inputs.
    dev.prefetch(&x, &t, 0).unwrap();
    assert_eq!(dev.prefetched_calls(), 0, "nothing taken yet");
    let v = call(&mut dev, &x, 0);
    assert_eq!(dev.prefetched_calls(), 1);
    assert_eq!(bits(&v), bits(&call(&mut plain, &x, 0)), "taken call");
    assert!(v.iter().all(|v| v.is_finite()));

    // Dropped: other latents, another first frame, other timesteps.
    dev.prefetch(&x, &t, 0).unwrap();
    assert_eq!(
        bits(&call(&mut dev, &x2, 0)),
        bits(&call(&mut plain, &x2, 0))
    );
    dev.prefetch(&x, &t, 0).unwrap();
    assert_eq!(bits(&call(&mut dev, &x, 2)), bits(&call(&mut plain, &x, 2)));
    dev.prefetch(&x, &[750.0; 2], 0).unwrap();
    assert_eq!(bits(&call(&mut dev, &x, 0)), bits(&call(&mut plain, &x, 0)));
    assert_eq!(dev.prefetched_calls(), 1, "none of those taken");

    // Dropped by a new text: the call runs under the new one.
    dev.prefetch(&x, &t, 0).unwrap();
    for b in [&mut dev, &mut plain] {
        b.set_text(&tb, &mb).unwrap();
    }
    let v_b = call(&mut dev, &x, 0);
    assert_eq!(bits(&v_b), bits(&call(&mut plain, &x, 0)), "after a switch");
    assert_ne!(bits(&v_b), bits(&v), "the text changes the call");

    // Dropped by a commit: the next call attends to the committed frames.
    dev.prefetch(&x2, &t, 2).unwrap();
    for b in [&mut dev, &mut plain] {
        b.commit(&x, 0.0, 0).unwrap();
    }
    let v2 = call(&mut dev, &x2, 2);
    assert_eq!(bits(&v2), bits(&call(&mut plain, &x2, 2)), "after a commit");
    assert_eq!(dev.prefetched_calls(), 1);

    // Over a populated cache: taken, then dropped by an eviction.
    dev.prefetch(&x2, &t, 2).unwrap();
    assert_eq!(bits(&call(&mut dev, &x2, 2)), bits(&v2), "over the cache");
    assert_eq!(dev.prefetched_calls(), 2);
    dev.prefetch(&x2, &t, 2).unwrap();
    for b in [&mut dev, &mut plain] {
        b.evict(1).unwrap();
    }
    assert_eq!(dev.cached_frames(), vec![0]);
    let v2e = call(&mut dev, &x2, 2);
    assert_eq!(
        bits(&v2e),
        bits(&call(&mut plain, &x2, 2)),
        "after an eviction"
    );
    assert_ne!(bits(&v2e), bits(&v2), "the eviction changes the call");
    assert_eq!(dev.prefetched_calls(), 2);

    // Dropped by a clear (a stream's end).
    dev.prefetch(&x2, &t, 2).unwrap();
    dev.clear();
    plain.clear();
    assert_eq!(bits(&call(&mut dev, &x, 0)), bits(&call(&mut plain, &x, 0)));
    assert_eq!(dev.prefetched_calls(), 2);
}
