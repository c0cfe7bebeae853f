//! The streaming sampler end to end on the CPU backend: determinism, seeds, prompt switches,
//! pop order, and classifier-free guidance batching.

use streamdit::backend::StepParams;
use streamdit::checkpoint::DType;
use streamdit::rng::noise_frame;
use streamdit::text::stack;
use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};

fn tiny_engine() -> Engine {
    Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 7,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap()
}

/// Latent chunks of a stream, switching to `switch.1` once `switch.0` chunks were emitted.
fn chunks(engine: &Engine, seed: u64, n: usize, switch: Option<(usize, &str)>) -> Vec<Vec<f32>> {
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(seed),
            ..Default::default()
        })
        .unwrap();
    (0..n)
        .map(|i| {
            if let Some((at, prompt)) = switch {
                if i == at {
                    stream.set_prompt(prompt);
                }
            }
            stream.next_latents().unwrap().to_vec()
        })
        .collect()
}

#[test]
fn same_seed_same_frames_other_seed_differs() {
    let engine = tiny_engine();
    let a = chunks(&engine, 1, 3, None);
    let b = chunks(&engine, 1, 3, None);
    let c = chunks(&engine, 2, 3, None);
    assert_eq!(a, b);
    for (x, y) in a.iter().zip(&c) {
        assert_ne!(x, y);
    }
    assert!(a.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn prompt_switch_changes_only_later_frames() {
    let engine = tiny_engine();
    let plain = chunks(&engine, 3, 5, None);
    let switched = chunks(&engine, 3, 5, Some((2, "a storm over the sea")));
    assert_eq!(
        plain[..2],
        switched[..2],
        "chunks before the switch must be identical"
    );
    for k in 2..5 {
        assert_ne!(
            plain[k], switched[k],
            "chunk {k} after the switch must differ"
        );
    }
}

#[test]
fn streams_of_one_engine_are_independent() {
    let engine = tiny_engine();
    let params = StreamParams {
        prompt: "x".into(),
        seed: Some(5),
        ..Default::default()
    };
    let mut s1 = engine.stream(params.clone()).unwrap();
    let mut s2 = engine.stream(params).unwrap();
    let a1 = s1.next_latents().unwrap().to_vec();
    let a2 = s1.next_latents().unwrap().to_vec();
    let b1 = s2.next_latents().unwrap().to_vec();
    let b2 = s2.next_latents().unwrap().to_vec();
    assert_eq!((a1, a2), (b1, b2));
}

#[test]
fn pop_emits_the_oldest_chunk_and_pushes_numbered_noise() {
    let engine = tiny_engine();
    let m = engine.profile().model.clone();
    let (f, fe, c) = (
        m.latent_frames,
        m.frame_elems(),
        engine.profile().stream.chunk_frames,
    );
    let mut backend = engine.create_backend(1.0).unwrap();
    let text = engine.encode_prompt("pop").unwrap();
    let (t, mask) = stack(&[&text]);
    backend.set_text(&t, &mask).unwrap();
    backend.reset(11, 0).unwrap();
    // dtau = 0: the model runs but nothing moves, so the buffer is pure numbered noise.
    let step = StepParams {
        tau: vec![0.5; f],
        dtau: vec![0.0; f],
        pop: Some(f as u64),
    };
    let mut popped = vec![f32::NAN; c * fe];
    backend.step(&step, &mut popped).unwrap();
    let noise = |g: u64| {
        let mut v = vec![0.0; fe];
        noise_frame(11, g, &mut v);
        v
    };
    let expected_popped: Vec<f32> = (0..c as u64).flat_map(noise).collect();
    assert_eq!(popped, expected_popped, "the popped chunk is frames 0..c");
    let mut buffer = vec![f32::NAN; f * fe];
    backend.read_buffer(&mut buffer).unwrap();
    let expected: Vec<f32> = (c as u64..(f + c) as u64).flat_map(noise).collect();
    assert_eq!(
        buffer, expected,
        "the rest moved down and new noise frames F..F+c entered"
    );
}

#[test]
fn guidance_batches_both_branches() {
    let engine = tiny_engine();
    let m = engine.profile().model.clone();
    let cond = engine.encode_prompt("a cat").unwrap();
    let uncond = engine.encode_prompt("").unwrap();
    let mut x = vec![0.0; m.buffer_elems()];
    for (k, frame) in x.chunks_mut(m.frame_elems()).enumerate() {
        noise_frame(3, k as u64, frame);
    }
    let tau: Vec<f32> = (0..m.latent_frames)
        .map(|f| f as f32 / m.latent_frames as f32)
        .collect();
    let run = |guidance: f32, branches: &[&streamdit::text::TextInput]| {
        let mut b = engine.create_backend(guidance).unwrap();
        let (t, mask) = stack(branches);
        b.set_text(&t, &mask).unwrap();
        let mut v = vec![f32::NAN; x.len()];
        b.forward(&x, &tau, &mut v).unwrap();
        v
    };
    let v_c = run(1.0, &[&cond]);
    let v_u = run(1.0, &[&uncond]);
    let g = 4.0;
    let v = run(g, &[&cond, &uncond]);
    let mut worst = 0.0f32;
    for ((&v, &c), &u) in v.iter().zip(&v_c).zip(&v_u) {
        let want = u + g * (c - u);
        worst = worst.max((v - want).abs() / (1e-4 + 1e-4 * want.abs()));
    }
    assert!(
        worst <= 1.0,
        "batched CFG differs from two separate calls: {worst} of the budget"
    );
    assert_ne!(v_c, v_u, "the prompt must change the output");
}

#[test]
fn guided_stream_runs() {
    let engine = tiny_engine();
    let mut stream = engine
        .stream(StreamParams {
            prompt: "guided".into(),
            guidance: Some(3.0),
            negative_prompt: Some("blurry".into()),
            ..Default::default()
        })
        .unwrap();
    let mut frames = Vec::new();
    let n = stream.next_frames(&mut frames).unwrap();
    let (w, h) = stream.frame_size();
    assert_eq!((w, h), (128, 128));
    assert_eq!(n, stream.frames_per_chunk());
    assert_eq!(frames.len(), n * w * h * 3);
    // The first chunk needs the prefill ((N-1)*s calls) plus one stage.
    assert_eq!(stream.calls(), stream.calls_to_first_chunk());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let engine = tiny_engine();
    let mut b = engine.create_backend(1.0).unwrap();
    let m = engine.profile().model.clone();
    let mut v = vec![0.0; m.buffer_elems()];
    // No text yet.
    assert!(b
        .forward(&v.clone(), &vec![0.0; m.latent_frames], &mut v)
        .is_err());
    let text = engine.encode_prompt("x").unwrap();
    let (t, mut mask) = stack(&[&text]);
    mask.iter_mut().for_each(|v| *v = 0.0);
    let e = b.set_text(&t, &mask).unwrap_err().to_string();
    assert!(e.contains("text_mask"), "{e}");
    let (t, mask) = stack(&[&text]);
    b.set_text(&t, &mask).unwrap();
    let e = b
        .forward(&[0.0; 3], &vec![0.0; m.latent_frames], &mut v)
        .unwrap_err()
        .to_string();
    assert!(e.contains('x') && e.contains("expected"), "{e}");
    let e = engine
        .create_backend(1.0)
        .unwrap()
        .set_text(&t, &mask[..3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_mask"), "{e}");
}

#[test]
fn micro_steps_and_guidance_follow_the_schedule() {
    // tiny with s = 2 micro-steps per stage and CFG, written as a profile file would be.
    let mut profile = Profile::builtin("tiny").unwrap();
    profile.stream.micro_steps = 2;
    profile.run.guidance = 2.5;
    let profile = Profile::from_toml(&profile.to_toml(), "tiny-s2").unwrap();
    let (n, s) = (
        profile.stream.chunks as u64,
        profile.stream.micro_steps as u64,
    );
    let engine = Engine::new(EngineParams {
        profile,
        weights: WeightsSource::Random {
            seed: 7,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .stream(StreamParams {
            prompt: "two micro-steps".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stream.guidance(), 2.5);
    let first = stream.next_latents().unwrap().to_vec();
    assert_eq!(stream.calls(), (n - 1) * s + s, "prefill plus one stage");
    let second = stream.next_latents().unwrap().to_vec();
    assert_eq!(
        stream.calls(),
        (n - 1) * s + 2 * s,
        "one stage per chunk after that"
    );
    assert_ne!(first, second);
    assert!(first.iter().chain(&second).all(|v| v.is_finite()));
}

/// `Stream::step` (one call at a time, as `streamdit bench` drives it) emits the chunks
/// `next_latents` does, and a timed call computes what `forward` does, one step per op.
#[test]
fn stepping_call_by_call_and_timed_calls_match() {
    let engine = tiny_engine();
    let expected = chunks(&engine, 3, 2, None);
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(3),
            ..Default::default()
        })
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        if stream.step().unwrap() {
            got.push(stream.chunk_latents().to_vec());
        }
    }
    assert_eq!(got, expected);
    assert_eq!(stream.calls(), stream.calls_to_first_chunk() + 1);
    let mut frames = Vec::new();
    assert_eq!(
        stream.decode_chunk(&mut frames).unwrap(),
        stream.frames_per_chunk()
    );
    assert_eq!(stream.graphs(), None);
    let err = stream.set_graphs(false).unwrap_err().to_string();
    assert!(err.contains("cpu backend"), "{err}");

    let m = engine.profile().model.clone();
    let mut backend = engine.create_backend(1.0).unwrap();
    let text = engine.encode_prompt("timed").unwrap();
    let (t, mask) = stack(&[&text]);
    backend.set_text(&t, &mask).unwrap();
    let mut x = vec![0.0; m.buffer_elems()];
    for (k, frame) in x.chunks_mut(m.frame_elems()).enumerate() {
        noise_frame(5, k as u64, frame);
    }
    let tau: Vec<f32> = (0..m.latent_frames).map(|f| f as f32 / 8.0).collect();
    let (mut v, mut v_timed) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    backend.forward(&x, &tau, &mut v).unwrap();
    let mut ranges = Vec::new();
    let clock = backend
        .forward_timed(&x, &tau, &mut v_timed, &mut |s| {
            assert!(s.seconds >= 0.0 && s.parts == 1 && !s.label.is_empty());
            ranges.push(s.ops.clone());
        })
        .unwrap();
    assert_eq!(clock, streamdit::backend::Clock::HostWall);
    assert_eq!(v_timed, v);
    let ops = backend.graph().call_ops.len();
    assert_eq!(ranges, (0..ops).map(|i| i..i + 1).collect::<Vec<_>>());
}

// ------------------------------------------------------------ non-finite values

/// A tiny engine over a checkpoint file whose `patch_embed.weight` is all `value` (finite
/// in f32, so it loads), the file removed on drop.
struct HugeEngine(Engine, std::path::PathBuf);

impl Drop for HugeEngine {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

fn engine_with_patch_embed(value: f32) -> HugeEngine {
    let profile = Profile::builtin("tiny").unwrap();
    let mut tensors =
        streamdit::checkpoint::Weights::random(&profile.model, 7, DType::F32).into_tensors();
    tensors
        .get_mut("patch_embed.weight")
        .unwrap()
        .data
        .iter_mut()
        .for_each(|x| *x = value);
    let path = std::env::temp_dir().join(format!(
        "streamdit-stream-huge-{}-{value}.safetensors",
        std::process::id()
    ));
    let list: Vec<(&str, &streamdit::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    streamdit::checkpoint::write_tensors(&path, &list, DType::F32).unwrap();
    let engine = Engine::new(EngineParams {
        profile,
        weights: WeightsSource::File(path.clone()),
        backend: BackendKind::Cpu,
    })
    .unwrap();
    HugeEngine(engine, path)
}

fn preview_stream(engine: &Engine) -> streamdit::Stream {
    engine
        .stream(StreamParams {
            prompt: "overflow".into(),
            decoder: streamdit::DecoderKind::Preview,
            ..Default::default()
        })
        .unwrap()
}

#[test]
fn a_stream_turning_non_finite_stops_naming_the_chunk_and_with_checks_the_op() {
    // Weights of 1e38 overflow f32 in the first linear layer: the stream must stop with an
    // error rather than emit a black chunk.
    let huge = engine_with_patch_embed(1e38);
    let mut stream = preview_stream(&huge.0);
    let mut frames = Vec::new();
    let e = stream.next_frames(&mut frames).unwrap_err().to_string();
    assert!(
        e.contains("stream: chunk 0 (after") && e.contains("turned non-finite"),
        "{e}"
    );
    assert!(frames.is_empty());
    // With per-op checks the first op producing a non-finite value is named, with the
    // model call it happened in.
    let mut stream = preview_stream(&huge.0);
    stream.set_check_ops(true).unwrap();
    let e = stream.next_frames(&mut frames).unwrap_err().to_string();
    assert!(
        e.contains("Linear `h.embed`")
            && e.contains("first op whose output is not finite")
            && e.contains("model call 0 of the stream, computing chunk 0"),
        "{e}"
    );
    // Ordinary weights pass the same checks.
    let mut stream = preview_stream(&tiny_engine());
    stream.set_check_ops(true).unwrap();
    stream.next_frames(&mut frames).unwrap();
}

#[test]
fn guidance_is_checked_once_for_forward_and_streams() {
    let engine = tiny_engine();
    let (lo, hi) = streamdit::GUIDANCE_RANGE;
    for g in [f32::NAN, f32::INFINITY, 3e38, hi + 1.0, lo - 1.0] {
        let e = engine.create_backend(g).err().unwrap().to_string();
        let want = format!("guidance: expected a finite number in [{lo}, {hi}], found {g}");
        assert_eq!(e, want);
        let e = engine
            .stream(StreamParams {
                guidance: Some(g),
                ..Default::default()
            })
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, want);
    }
    assert!(engine.create_backend(hi).is_ok());
}

#[test]
fn non_finite_inputs_are_refused_at_the_boundary() {
    let engine = tiny_engine();
    let m = engine.profile().model.clone();
    let text = engine.encode_prompt("x").unwrap();
    let (t, mask) = stack(&[&text]);
    let mut b = engine.create_backend(1.0).unwrap();
    b.set_text(&t, &mask).unwrap();
    let tau = vec![0.5; m.latent_frames];
    let mut x = vec![0.0; m.buffer_elems()];
    let mut v = vec![0.0; m.buffer_elems()];
    x[m.frame_elems() + 1] = f32::NAN;
    let e = b.forward(&x, &tau, &mut v).unwrap_err().to_string();
    let at = format!("at index {} ([1, 0, 0, 1])", m.frame_elems() + 1);
    assert_eq!(
        e,
        format!("model call input `x`: expected finite values, found NaN {at}")
    );
    x[m.frame_elems() + 1] = 0.0;
    let mut bad_tau = tau.clone();
    bad_tau[1] = f32::INFINITY;
    let e = b.forward(&x, &bad_tau, &mut v).unwrap_err().to_string();
    assert!(
        e.contains("model call input `tau`") && e.contains("inf at index 1"),
        "{e}"
    );
    b.forward(&x, &tau, &mut v).unwrap();

    let mut bad = t.clone();
    bad.data[m.text_dim + 2] = f32::NAN;
    let e = b.set_text(&bad, &mask).unwrap_err().to_string();
    assert!(
        e.contains("text condition `text`") && e.contains("NaN at index"),
        "{e}"
    );
    // The same through the stream API.
    let mut nan_text = text.clone();
    nan_text.text.data[3] = f32::NEG_INFINITY;
    let e = engine
        .stream(StreamParams {
            text: Some(nan_text.clone()),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("text condition `text`: expected finite values, found -inf at index 3 ([0, 3])"),
        "{e}"
    );
    let mut stream = engine.stream(StreamParams::default()).unwrap();
    assert!(stream.set_text(nan_text).is_err());

    // Decoders refuse non-finite latents rather than decode them to black.
    let mut latents = vec![0.0; m.frame_elems()];
    latents[2] = f32::NAN;
    let mut out = Vec::new();
    let mut preview = engine.preview_decoder().unwrap();
    let e = streamdit::Decoder::decode(&mut preview, &latents, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preview latents") && e.contains("NaN at index 2"),
        "{e}"
    );
    let mut tae = engine.tae_decoder().unwrap();
    let e = streamdit::Decoder::decode(&mut tae, &latents, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TAE decoder latents") && e.contains("NaN at index 2"),
        "{e}"
    );
    assert!(out.is_empty());
}
