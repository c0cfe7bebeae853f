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

use common::wan_tiny::{engine, sdedit_reference, text};

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

/// The SDEdit rule of docs/wan.md, driven through a backend of its own: chunk `k` starts at
/// step `j` (the first with `sigma_j <= s`) from `(1 - sigma_j) z + sigma_j eps_j`.
fn reference(strength: f64, rgb: &[u8], chunks: usize) -> (Vec<Vec<f32>>, usize) {
    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap();
    let cfg = TaehvEncoderConfig {
        latent_channels: w.latent_channels,
        ..TaehvEncoderConfig::taew2_1()
    };
    let ew = TaehvEncoder::random_weights(&cfg, SEED, DType::F32).unwrap();
    let mut enc = TaehvEncoder::new(&cfg, SIDE, SIDE, &ew).unwrap();
    let c = w.chunk_frames;
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
