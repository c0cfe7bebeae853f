//! Video-to-video on StreamDiT's moving buffer (docs/streamdit.md section 5, "Video-to-video")
//! on the CPU backend: strength 1 is text-to-video bit for bit; a naive f64 reference of the
//! rule (remapped boundaries, input mixes in every frame the text-to-video sampler fills
//! with noise), written here from the spec and driven by the backend's model call, matches
//! the stream; bad strengths, missing input and missing encoder tensors are named errors.

mod common;

use common::{assert_close, Rng};
use streamdit::checkpoint::{self, DType, Weights};
use streamdit::rng::noise_frame;
use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};

const SEED: u64 = 7;

fn tiny_engine_from(weights: WeightsSource) -> Engine {
    Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights,
        backend: BackendKind::Cpu,
    })
    .unwrap()
}

fn tiny_engine() -> Engine {
    tiny_engine_from(WeightsSource::Random {
        seed: SEED,
        dtype: DType::F16,
    })
}

fn params(seed: u64) -> StreamParams {
    StreamParams {
        prompt: "a red kite over a beach".into(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// A 128x128 test video with moving structure plus noise: `frames` RGB8 frames.
fn video(seed: u64, frames: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let (h, w) = (128, 128);
    let mut out = Vec::with_capacity(frames * h * w * 3);
    for t in 0..frames {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = 128.0
                        + 70.0 * ((x + 3 * t) as f64 * 0.09 + (y as f64) * 0.05 + c as f64).sin();
                    out.push((v + rng.uniform(-30.0, 30.0)).clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    out
}

/// `n` chunks of a video-to-video stream, pushing only the input each call needs.
fn v2v_chunks(engine: &Engine, strength: f32, rgb: &[u8], n: usize) -> Vec<Vec<f32>> {
    let frame = 128 * 128 * 3;
    let mut stream = engine.video_stream(params(3), strength).unwrap();
    assert!(stream.is_video_to_video());
    let mut at = 0;
    let mut out = Vec::new();
    while out.len() < n {
        let need = stream.input_frames_needed();
        if need > 0 {
            stream
                .push_video_frames(&rgb[at * frame..(at + need) * frame])
                .unwrap();
            at += need;
            assert_eq!(stream.input_frames_needed(), 0);
            assert_eq!(stream.input_frames_pushed(), at as u64);
        }
        if stream.step().unwrap() {
            out.push(stream.chunk_latents().to_vec());
        }
    }
    out
}

/// Strength 1 runs the whole video-to-video path (encoder, mixes written into the buffer)
/// with `t0 = 0`: every latent is text-to-video's, bit for bit.
#[test]
fn strength_one_is_text_to_video_bit_for_bit() {
    let engine = tiny_engine();
    let rgb = video(1, 40);
    let v2v = v2v_chunks(&engine, 1.0, &rgb, 2);
    let mut t2v = engine.stream(params(3)).unwrap();
    for (k, chunk) in v2v.iter().enumerate() {
        let want = t2v.next_latents().unwrap();
        assert!(
            chunk[..] == want[..],
            "chunk {k} differs from text-to-video"
        );
    }
    // A lower strength does change the output, and so does the input video.
    let edited = v2v_chunks(&engine, 0.5, &rgb, 1);
    assert_ne!(edited[0], v2v[0]);
    let other = v2v_chunks(&engine, 0.5, &video(2, 40), 1);
    assert_ne!(edited[0], other[0]);
}

/// The spec's rule in f64 with the backend's model call as the velocity: boundaries
/// `b'_k = t0 + (1 - t0) b_k`, all `B` frames start as `t0 z + (1 - t0) n`, each pop pushes
/// the next chunk's mix.
#[test]
fn matches_naive_v2v_reference() {
    let engine = tiny_engine();
    let strength = 0.6f32;
    let profile = engine.profile().clone();
    let m = profile.model.clone();
    let (nch, c, s) = (
        profile.stream.chunks,
        profile.stream.chunk_frames,
        profile.stream.micro_steps,
    );
    let (b_frames, fe) = (nch * c, m.frame_elems());
    let chunks = 3;
    let rgb = video(4, 4 * (b_frames + (chunks - 1) * c));
    let got = v2v_chunks(&engine, strength, &rgb, chunks);

    // Input latents, encoded at once (chunked encoding equals it: tests/encoder.rs).
    let weights = WeightsSource::Random {
        seed: SEED,
        dtype: DType::F16,
    };
    let z = streamdit::tae_encoder(&profile, &weights)
        .unwrap()
        .encode_rgb(&rgb)
        .unwrap();
    let t0 = 1.0 - f64::from(strength);
    let bounds: Vec<f64> = (0..=nch)
        .map(|k| t0 + (1.0 - t0) * (k as f64 / nch as f64))
        .collect();
    let mix = |g: usize| -> Vec<f64> {
        let mut n = vec![0.0f32; fe];
        noise_frame(3, g as u64, &mut n);
        (0..fe)
            .map(|e| t0 * f64::from(z[g * fe + e]) + (1.0 - t0) * f64::from(n[e]))
            .collect()
    };
    let mut x: Vec<f64> = (0..b_frames).flat_map(mix).collect();
    let mut backend = engine.create_backend(1.0).unwrap();
    let text = engine.encode_prompt(&params(3).prompt).unwrap();
    let (t, mask) = streamdit::text::stack(&[&text]);
    backend.set_text(&t, &mask).unwrap();
    let mut call = |x: &mut Vec<f64>, tau: &[f64], dtau: &[f64]| {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let tf: Vec<f32> = (0..b_frames).map(|f| tau[f / c] as f32).collect();
        let mut v = vec![0.0f32; xf.len()];
        backend.forward(&xf, &tf, &mut v).unwrap();
        for (f, (xs, vs)) in x.chunks_mut(fe).zip(v.chunks(fe)).enumerate() {
            for (a, &b) in xs.iter_mut().zip(vs) {
                *a += dtau[f / c] * f64::from(b);
            }
        }
    };
    for k in 0..nch - 1 {
        for mm in 0..s {
            let (mut tau, mut dtau) = (vec![0.0; nch], vec![0.0; nch]);
            for j in 0..nch {
                if k < nch - 1 - j {
                    let width = bounds[k + 1] - bounds[k];
                    tau[j] = bounds[k] + mm as f64 / s as f64 * width;
                    dtau[j] = width / s as f64;
                } else {
                    tau[j] = bounds[nch - 1 - j];
                }
            }
            call(&mut x, &tau, &dtau);
        }
    }
    let mut next = b_frames;
    for (k, chunk) in got.iter().enumerate() {
        for mm in 0..s {
            let (mut tau, mut dtau) = (vec![0.0; nch], vec![0.0; nch]);
            for j in 0..nch {
                let width = bounds[nch - j] - bounds[nch - 1 - j];
                tau[j] = bounds[nch - 1 - j] + mm as f64 / s as f64 * width;
                dtau[j] = width / s as f64;
            }
            call(&mut x, &tau, &dtau);
        }
        let popped: Vec<f64> = x.drain(..c * fe).collect();
        assert_close(
            &format!("v2v chunk {k} vs naive"),
            chunk,
            &popped,
            1e-4,
            1e-3,
        );
        if k + 1 < got.len() {
            for g in next..next + c {
                x.extend(mix(g));
            }
        }
        next += c;
    }
}

#[test]
fn bad_strengths_and_missing_input_are_named_errors() {
    let engine = tiny_engine();
    for bad in [0.0, -0.1, 1.01, f32::NAN] {
        let e = engine
            .video_stream(params(1), bad)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("strength") && e.contains("(0, 1]"), "{e}");
    }
    let mut stream = engine.video_stream(params(1), 0.5).unwrap();
    // Adaptive noise is the Wan family's (StreamDiffusionV2's controller).
    let e = stream.set_adaptive_noise().unwrap_err().to_string();
    assert!(
        e.contains("adaptive noise") && e.contains("Wan family"),
        "{e}"
    );
    assert_eq!(stream.chunk_noise_level(), None);
    // The first call needs B * 4 = 32 video frames.
    assert_eq!(stream.input_frames_needed(), 32);
    let e = stream.step().unwrap_err().to_string();
    assert!(
        e.contains("video-to-video") && e.contains("video frames 0..32"),
        "{e}"
    );
    assert_eq!(stream.calls(), 0, "a refused call does not run");
    let rgb = video(3, 40);
    let frame = 128 * 128 * 3;
    let e = stream
        .push_video_frames(&rgb[..frame + 5])
        .unwrap_err()
        .to_string();
    assert!(e.contains("whole 128x128 RGB8 frames"), "{e}");
    // 31 frames: 28 encoded, 3 waiting; one more frame completes the first call's input.
    stream.push_video_frames(&rgb[..31 * frame]).unwrap();
    assert_eq!(stream.input_frames_needed(), 1);
    stream
        .push_video_frames(&rgb[31 * frame..32 * frame])
        .unwrap();
    assert_eq!(stream.input_frames_needed(), 0);
    // Prefill (3 calls) and the first stage run; the call after pops, needing 8 more.
    stream.next_latents().unwrap();
    assert_eq!(stream.input_frames_needed(), 8);
    assert!(stream.step().is_err());
    stream
        .push_video_frames(&rgb[32 * frame..40 * frame])
        .unwrap();
    stream.next_latents().unwrap();
    // A text-to-video stream takes no input.
    let mut t2v = engine.stream(params(1)).unwrap();
    assert!(!t2v.is_video_to_video());
    assert_eq!(t2v.input_frames_needed(), 0);
    let e = t2v
        .push_video_frames(&rgb[..frame])
        .unwrap_err()
        .to_string();
    assert!(e.contains("text-to-video"), "{e}");
}

/// A checkpoint without `encoder.*` runs text-to-video; video-to-video names the first
/// missing encoder tensor.
#[test]
fn a_checkpoint_without_the_encoder_serves_only_text_to_video() {
    let profile = Profile::builtin("tiny").unwrap();
    let mut tensors = Weights::random(&profile.model, SEED, DType::F16).into_tensors();
    tensors.extend(
        Weights::random_decoder(&profile.decoder, 8, SEED, DType::F16)
            .unwrap()
            .into_tensors(),
    );
    let dir = std::env::temp_dir().join(format!("streamdit-v2v-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("no-encoder.safetensors");
    let refs: Vec<(&str, &streamdit::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(&path, &refs, DType::F16).unwrap();
    let engine = tiny_engine_from(WeightsSource::File(path.clone()));
    engine.stream(params(1)).unwrap();
    let e = engine
        .video_stream(params(1), 0.5)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("encoder.conv_in.weight") && e.contains("weights init"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Video-to-video on the emulated CUDA backend (its `write_frames` a host-to-device copy
/// after the queued step) against the CPU backend: every chunk within 1e-2 relative L2 (f16
/// weights and GEMM inputs against f32), as for text-to-video in `tests/cuda_backend.rs`.
/// The default tier runs `tests/profiles/small.toml` (64x64 video, B = 4 latent frames);
/// `STREAMDIT_FULL=1` runs `tiny`.
#[test]
fn emulator_matches_the_cpu() {
    let profile = common::emu_profile();
    let (w, h) = (
        profile.model.latent_width * 8,
        profile.model.latent_height * 8,
    );
    let chunks = 3;
    let frames_total = 4 * (profile.stream.chunks + chunks) * profile.stream.chunk_frames;
    let mut rng = Rng::new(11);
    let rgb: Vec<u8> = (0..frames_total * w * h * 3)
        .map(|i| ((i % 251) as f64 * 0.8 + rng.uniform(0.0, 50.0)) as u8)
        .collect();
    let run = |backend: BackendKind| -> Vec<Vec<f32>> {
        let engine = Engine::new(EngineParams {
            profile: profile.clone(),
            weights: WeightsSource::Random {
                seed: 5,
                dtype: DType::F16,
            },
            backend,
        })
        .unwrap();
        let mut stream = engine.video_stream(params(17), 0.5).unwrap();
        let frame = w * h * 3;
        let mut at = 0;
        (0..chunks)
            .map(|_| {
                let need = stream.input_frames_needed();
                stream
                    .push_video_frames(&rgb[at * frame..(at + need) * frame])
                    .unwrap();
                at += need;
                stream.next_latents().unwrap().to_vec()
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let emu = run(BackendKind::Emu);
    let emu_s = start.elapsed().as_secs_f64();
    let cpu = run(BackendKind::Cpu);
    for (k, (e, c)) in emu.iter().zip(&cpu).enumerate() {
        let err = common::rel_l2(&common::f64s(e), &common::f64s(c));
        println!("v2v chunk {k}: relative L2 emu vs cpu {err:.3e}");
        assert!(err < 1e-2, "chunk {k}: {err:.3e}");
    }
    println!("{chunks} v2v chunks on the emulator in {emu_s:.1} s");
}

/// The input's end on StreamDiT's buffer (docs/streamdit.md, "Video-to-video input"): 12
/// input frames (a chunk and a half of 8) give exactly 12 output frames, chunks of 8 and 4;
/// they equal a stream fed by hand with the last frame repeated whenever it asks, cut after
/// frame 11; then it writes nothing more and computes nothing.
#[test]
fn an_input_ending_mid_chunk_gives_exactly_as_many_frames() {
    let frame = 128 * 128 * 3;
    let e = tiny_engine();
    let rgb = video(5, 12);
    let mut s = e.video_stream(params(3), 0.6).unwrap();
    s.push_video_frames(&rgb).unwrap();
    let end = s.end_input().unwrap();
    assert_eq!((end.frames, end.chunks, end.last_chunk_frames), (12, 2, 4));
    assert!(end.mid_chunk() && end.to_string().contains("ended after 12 frames"));
    let (mut got, mut sizes) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        match s.next_frames(&mut got).unwrap() {
            0 => break,
            n => sizes.push(n),
        }
    }
    assert_eq!(sizes, vec![8, 4]);
    assert!(s.finished() && s.input_frames_repeated() > 0);
    assert!(s.step().is_err(), "a step after the end is a named error");

    let mut by_hand = e.video_stream(params(3), 0.6).unwrap();
    by_hand.push_video_frames(&rgb).unwrap();
    let mut want = Vec::new();
    while want.len() < 12 * frame {
        for _ in 0..by_hand.input_frames_needed() {
            by_hand.push_video_frames(&rgb[11 * frame..]).unwrap();
        }
        by_hand.next_frames(&mut want).unwrap();
    }
    assert_eq!(
        s.input_frames_repeated(),
        by_hand.input_frames_pushed() - 12
    );
    assert!(
        got == want[..12 * frame],
        "differs from the hand-padded input"
    );
}
