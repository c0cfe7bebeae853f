//! Video-to-video on the Wan family's causal sampler (SDEdit, docs/wan.md "Video-to-video")
//! with the `wan-tiny` profile on the CPU backend: strength 1 is text-to-video bit for bit;
//! a lower strength starts each chunk at the selected step from its TAEHV-encoded input,
//! noised as the flow-matching schedule defines, checked against the rule written here and
//! driven through a separate backend; missing input and bad strengths are named errors.

mod common;

use common::Rng;
use streamdit::decoder::TaehvEncoder;
use streamdit::model::taehv_encoder::TaehvEncoderConfig;
use streamdit::{DType, Engine, Profile, StreamParams};

use common::wan_tiny::SEED;
const SIDE: usize = 64;
const FRAME: usize = SIDE * SIDE * 3;

use common::wan_tiny::{engine, sdedit_levels_reference, sdedit_reference, text};

fn params() -> StreamParams {
    StreamParams {
        text: Some(text()),
        seed: Some(5),
        ..Default::default()
    }
}

fn video(frames: usize) -> Vec<u8> {
    let mut rng = Rng::new(11);
    (0..frames * FRAME).map(|_| rng.below(256) as u8).collect()
}

/// `n` chunks of a video-to-video stream with `strength`, pushing what each call needs.
fn v2v(e: &Engine, strength: f32, rgb: &[u8], n: usize) -> Vec<Vec<f32>> {
    let mut s = e.video_stream(params(), strength).unwrap();
    assert!(s.is_video_to_video());
    let (mut at, mut out) = (0, Vec::new());
    while out.len() < n {
        let need = s.input_frames_needed();
        if need > 0 {
            s.push_video_frames(&rgb[at * FRAME..(at + need) * FRAME])
                .unwrap();
            at += need;
            assert_eq!(s.input_frames_needed(), 0);
        }
        if s.step().unwrap() {
            out.push(s.chunk_latents().to_vec());
        }
    }
    out
}

#[test]
fn strength_one_is_text_to_video_bit_for_bit() {
    let e = engine();
    let mut t2v = e.stream(params()).unwrap();
    let want: Vec<Vec<f32>> = (0..3)
        .map(|_| t2v.next_latents().unwrap().to_vec())
        .collect();
    let got = v2v(&e, 1.0, &video(24), 3);
    assert!(got == want, "strength 1 differs from text-to-video");
    // A lower strength uses the input: it must differ.
    let low = v2v(&e, 0.7, &video(24), 3);
    assert!(low != want);
}

/// The stream's TAEHV encoder, built apart from it (the random weights of [`SEED`]).
fn encoder() -> TaehvEncoder {
    let p = Profile::builtin("wan-tiny").unwrap();
    let cfg = TaehvEncoderConfig {
        latent_channels: p.wan().unwrap().latent_channels,
        ..TaehvEncoderConfig::taew2_1()
    };
    let ew = TaehvEncoder::random_weights(&cfg, SEED, DType::F32).unwrap();
    TaehvEncoder::new(&cfg, SIDE, SIDE, &ew).unwrap()
}

/// The SDEdit rule of docs/wan.md, driven through a backend of its own: chunk `k` starts at
/// step `j` (the first with `sigma_j <= s`) from `(1 - sigma_j) z + sigma_j eps_j`.
fn reference(strength: f64, rgb: &[u8], chunks: usize) -> (Vec<Vec<f32>>, usize) {
    let mut enc = encoder();
    let c = Profile::builtin("wan-tiny")
        .unwrap()
        .wan()
        .unwrap()
        .chunk_frames;
    sdedit_reference(strength, chunks, |k| {
        enc.encode_rgb(&rgb[4 * k * c * FRAME..4 * (k + 1) * c * FRAME])
            .unwrap()
    })
}

#[test]
fn sdedit_starts_at_the_selected_step_from_the_noised_input() {
    let e = engine();
    let rgb = video(24);
    for (strength, calls) in [(0.9, 2), (0.7, 1)] {
        let (want, j) = reference(strength, &rgb, 3);
        assert_eq!(4 - j, calls, "strength {strength} starts at step {j}");
        let mut s = e.video_stream(params(), strength as f32).unwrap();
        assert_eq!(s.calls_to_first_chunk(), calls as u64);
        s.push_video_frames(&rgb).unwrap();
        let got: Vec<Vec<f32>> = (0..3).map(|_| s.next_latents().unwrap().to_vec()).collect();
        assert_eq!(s.calls(), 3 * calls as u64, "denoising calls per chunk");
        assert!(
            got == want,
            "strength {strength}: the stream differs from the rule"
        );
    }
}

#[test]
fn missing_input_and_bad_strengths_are_named_errors() {
    let e = engine();
    let mut s = e.video_stream(params(), 0.5).unwrap();
    assert_eq!(
        s.input_frames_needed(),
        8,
        "a chunk of 2 latent frames needs 8 frames"
    );
    let err = s.step().unwrap_err().to_string();
    assert!(err.contains("needs input latent frames"), "{err}");
    // 7 frames encode nothing yet (they wait for the 8th); still missing.
    s.push_video_frames(&video(7)).unwrap();
    assert_eq!(s.input_frames_needed(), 1);
    let err = s.step().unwrap_err().to_string();
    assert!(err.contains("needs input latent frames"), "{err}");
    let err = s.push_video_frames(&[0u8; 5]).unwrap_err().to_string();
    assert!(err.contains("RGB8 frames"), "{err}");
    for bad in [0.0, -0.5, 1.5, f32::NAN] {
        let Err(err) = e.video_stream(params(), bad) else {
            panic!("strength {bad} accepted");
        };
        let err = err.to_string();
        assert!(err.contains("strength"), "{bad}: {err}");
    }
    // A text-to-video Wan stream refuses input.
    let mut t2v = e.stream(params()).unwrap();
    assert!(t2v.push_video_frames(&video(4)).is_err());
}

/// The frames of a stream at `strength` given `input` whole, then (when `end`) told the
/// input ended; `next_frames` until it gives 0 (at most `limit` calls: nothing may hang).
fn frames_to_end(e: &Engine, input: &[u8], end: bool, limit: usize) -> (Vec<u8>, Vec<usize>) {
    let mut s = e.video_stream(params(), 0.7).unwrap();
    s.push_video_frames(input).unwrap();
    if end {
        let got = s.end_input().unwrap();
        assert_eq!(got.frames as usize, input.len() / FRAME);
        assert_eq!(s.input_frames_needed(), 0, "the stream pads by itself");
    }
    let (mut out, mut sizes) = (Vec::new(), Vec::new());
    for _ in 0..limit {
        let n = s.next_frames(&mut out).unwrap();
        if n == 0 {
            break;
        }
        sizes.push(n);
    }
    if end {
        assert!(s.finished());
        assert_eq!(s.next_frames(&mut out).unwrap(), 0, "nothing after the end");
        let err = s.step().unwrap_err().to_string();
        assert!(err.contains("nothing more to compute"), "{err}");
        let err = s
            .push_video_frames(&input[..FRAME])
            .unwrap_err()
            .to_string();
        assert!(err.contains("was ended"), "{err}");
        assert_eq!(s.frames_emitted() as usize, out.len() / FRAME);
    }
    (out, sizes)
}

/// The input's end (docs/wan.md "Video-to-video", "The end of the input"): `N` input frames
/// (not a multiple of the 8-frame chunk, most not of 4) give exactly `N` output frames, the
/// last chunk cut; they equal the frames of the same input padded by hand with its last
/// frame to whole chunks, cut after frame `N - 1`. The chunk count follows from the
/// decoder's 3 start-up frames: chunks `0 .. k` give `8k - 3` frames.
#[test]
fn an_input_ending_mid_chunk_gives_exactly_as_many_frames() {
    let e = engine();
    let rgb = video(16);
    for (n, sizes) in [
        (1, vec![1]),
        (3, vec![3]),
        (5, vec![5]),
        (6, vec![5, 1]),
        (8, vec![5, 3]),
        (10, vec![5, 5]),
        (14, vec![5, 8, 1]),
    ] {
        let input = &rgb[..n * FRAME];
        let (got, got_sizes) = frames_to_end(&e, input, true, 8);
        assert_eq!(got.len(), n * FRAME, "{n} input frames");
        assert_eq!(got_sizes, sizes, "{n} input frames: frames per chunk");
        // By hand: the last frame repeated to whole chunks of 8 input frames.
        let chunks = sizes.len();
        let mut padded = input.to_vec();
        while padded.len() < chunks * 8 * FRAME {
            padded.extend_from_slice(&input[(n - 1) * FRAME..n * FRAME]);
        }
        let (want, _) = frames_to_end(&e, &padded, false, chunks);
        assert!(
            got == want[..n * FRAME],
            "{n} input frames differ from the hand-padded input"
        );
    }
    // An input with no frame cannot end; a text-to-video stream has no input to end.
    let mut s = e.video_stream(params(), 0.7).unwrap();
    let err = s.end_input().unwrap_err().to_string();
    assert!(err.contains("no input video frame"), "{err}");
    assert!(e.stream(params()).unwrap().end_input().is_err());
}

/// docs/wan.md "Adaptive noise", written here in f64 from the doc: a frame's motion is the
/// RMS of its difference from the frame before in [-1, 1] units, a chunk's the largest over
/// its frames, `d = min(1, motion / 0.2)`; chunk 0 starts at the strength `s`, chunk `j` at
/// `0.9 (s - 0.1 d_j) + 0.1 l_{j-1}`.
fn adaptive_levels(strength: f64, rgb: &[u8], chunks: usize, per_chunk: usize) -> Vec<f64> {
    let motion = |f: usize| -> f64 {
        if f == 0 {
            return 0.0;
        }
        let (a, b) = (
            &rgb[f * FRAME..(f + 1) * FRAME],
            &rgb[(f - 1) * FRAME..f * FRAME],
        );
        let sum: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((f64::from(x) - f64::from(y)) / 127.5).powi(2))
            .sum();
        (sum / FRAME as f64).sqrt()
    };
    let mut levels: Vec<f64> = vec![strength];
    for j in 1..chunks {
        let m = (j * per_chunk..(j + 1) * per_chunk)
            .map(motion)
            .fold(0.0, f64::max);
        let d = (m / 0.2).min(1.0);
        levels.push(0.9 * (strength - 0.1 * d) + 0.1 * levels[j - 1]);
    }
    levels
}

/// Adaptive noise on a video whose chunks are still (the last frame held), gently moving
/// and fully moving: each chunk's level follows the rule (checked in f64 within 1e-6), the
/// chunk starts at the step that level selects with its first call at the level itself, and
/// the latents equal the rule driven through a backend of its own bit for bit.
#[test]
fn adaptive_noise_lowers_a_moving_chunks_level_and_starts_it_there() {
    let e = engine();
    let mut rgb = video(8);
    let last = rgb[7 * FRAME..].to_vec();
    for _ in 0..8 {
        rgb.extend_from_slice(&last); // chunk 1: no motion
    }
    for f in 0..8 {
        // chunk 2: each frame 3 levels brighter than the one before (motion 3/127.5)
        let next: Vec<u8> = last
            .iter()
            .map(|&v| v.saturating_add(3 * (f + 1)))
            .collect();
        rgb.extend_from_slice(&next);
    }
    rgb.extend_from_slice(&video(9)[FRAME..]); // chunk 3: random frames, full motion
    let strength = 0.9;
    let want_levels = adaptive_levels(strength, &rgb, 4, 8);
    let mut s = e.video_stream(params(), strength as f32).unwrap();
    s.set_adaptive_noise().unwrap();
    s.push_video_frames(&rgb).unwrap();
    let (mut got, mut levels, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let before = s.calls();
        got.push(s.next_latents().unwrap().to_vec());
        levels.push(s.chunk_noise_level().unwrap());
        calls.push(s.calls() - before);
    }
    for (j, (&l, &w)) in levels.iter().zip(&want_levels).enumerate() {
        assert!((l - w).abs() < 1e-6, "chunk {j}: level {l}, the rule {w}");
    }
    assert!(
        levels[1] >= levels[2] && levels[2] > levels[3] && levels[3] < 0.82,
        "{levels:?}"
    );
    // wan-tiny's sigmas 1, 0.9375, 0.8333, 0.625: 0.9 starts at step 2 (2 calls), below
    // 0.8333 at step 3 (1 call).
    let (timesteps, sigmas) = Profile::builtin("wan-tiny")
        .unwrap()
        .wan()
        .unwrap()
        .schedule();
    let step = |l: f64| {
        sigmas
            .iter()
            .position(|&s| s <= l)
            .unwrap_or(sigmas.len() - 1)
    };
    let want_calls: Vec<u64> = levels.iter().map(|&l| (4 - step(l)) as u64).collect();
    assert_eq!(calls, want_calls, "levels {levels:?}");
    assert_eq!(calls[3], 1);
    assert_eq!(timesteps.len(), 4);
    let mut enc = encoder();
    let want = sdedit_levels_reference(
        4,
        |k| (step(levels[k]), levels[k], 1000.0 * levels[k]),
        |k| {
            enc.encode_rgb(&rgb[8 * k * FRAME..8 * (k + 1) * FRAME])
                .unwrap()
        },
    );
    assert!(
        got == want,
        "the stream differs from the rule at its levels"
    );
    // Without adaptive noise every chunk starts at step 2's sigma.
    let mut fixed = e.video_stream(params(), strength as f32).unwrap();
    fixed.push_video_frames(&rgb).unwrap();
    fixed.next_latents().unwrap();
    assert_eq!(fixed.chunk_noise_level(), Some(sigmas[2]));
}

#[test]
fn adaptive_noise_is_refused_where_it_cannot_apply() {
    let e = engine();
    let err = e
        .stream(params())
        .unwrap()
        .set_adaptive_noise()
        .unwrap_err();
    assert!(err.to_string().contains("text-to-video"), "{err}");
    let mut s = e.video_stream(params(), 0.7).unwrap();
    s.push_video_frames(&video(8)).unwrap();
    s.step().unwrap();
    let err = s.set_adaptive_noise().unwrap_err().to_string();
    assert!(err.contains("before the first model call"), "{err}");
}
