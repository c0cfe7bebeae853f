//! The `streamdit` binary with Wan video-to-video (docs/wan.md "Video-to-video"): an input
//! that ends inside a chunk gives exactly as many output frames, said on stderr; `bench`
//! reports the latency and the stages with the TAEHV encoder; `plan` costs the encoder.
//! Fields are checked to exist and be positive, not for their values.

mod cli_common;

use cli_common::{ok, s, temp};

const SIDE: usize = 64;
const FRAME: usize = SIDE * SIDE * 3;

/// `n` raw RGB24 frames of `wan-tiny`'s 64x64: moving stripes with some texture.
fn raw_video(name: &str, n: usize) -> std::path::PathBuf {
    let path = temp(name);
    let mut bytes = Vec::with_capacity(n * FRAME);
    for t in 0..n {
        for y in 0..SIDE {
            for x in 0..SIDE {
                for c in 0..3 {
                    bytes.push(
                        ((3 * x + 5 * y + 7 * t + 50 * c + (x * y + t) % 13 * 9) % 256) as u8,
                    );
                }
            }
        }
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn generate(input: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let args = [
        &[
            "generate",
            "--profile",
            "wan-tiny",
            "--backend",
            "cpu",
            "--prompt",
            "a watercolour",
            "--input-video",
            s(input),
            "--input-size",
            "64x64",
            "--strength",
            "0.7",
            "--out",
            "-",
        ][..],
        extra,
    ]
    .concat();
    ok(&args)
}

/// 6, 8 and 13 input frames (a Wan chunk takes 8; 6 and 13 end inside one, 8 needs a chunk of
/// the repeated frame for the decoder's last 3 frames): exactly that many frames out, the
/// rule said on stderr; `--frames` still cuts shorter.
#[test]
fn generate_writes_as_many_frames_as_the_input_has() {
    for (n, mid) in [(6, true), (8, false), (13, true)] {
        let input = raw_video(&format!("wan-in-{n}.rgb"), n);
        let out = generate(&input, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.stdout.len(), n * FRAME, "{n} input frames:\n{stderr}");
        assert!(
            stderr.contains(&format!("ended after {n} frames")),
            "{stderr}"
        );
        assert_eq!(stderr.contains("mid-chunk"), mid, "{n}: {stderr}");
        assert!(
            stderr.contains(&format!("output stops after frame {}", n - 1))
                && stderr.contains("repeated"),
            "{stderr}"
        );
        assert!(stderr.contains(&format!("wrote {n} frames")), "{stderr}");
    }
    let input = raw_video("wan-in-13b.rgb", 13);
    let out = generate(&input, &["--frames", "4"]);
    assert_eq!(out.stdout.len(), 4 * FRAME);
}

/// `bench --strength 0.7` on `wan-tiny` on the CPU without warm-up, its JSON to `json`.
fn bench_v2v(json: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let args = [
        &[
            "bench",
            "--profile",
            "wan-tiny",
            "--backend",
            "cpu",
            "--warmup",
            "0",
            "--strength",
            "0.7",
            "--json",
            s(json),
        ][..],
        extra,
    ]
    .concat();
    ok(&args)
}

/// `bench --strength` on `wan-tiny`: the video-to-video section with the TAEHV encoder as a
/// stage, the chunk structure said, every figure present and positive.
#[test]
fn bench_reports_wan_video_to_video_stages_and_latency() {
    let json = temp("bench-wan-v2v.json");
    let out = bench_v2v(&json, &["--steps", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "video-to-video (strength 0.7",
        "input frame in -> its output frame out",
        "encoder (TAEHV, CPU, f32)",
        "KV cache",
        "DiT (1 calls)",
        "video FPS",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let v = &r["video_to_video"];
    assert_eq!(v["family"].as_str(), Some("wan"));
    for p in [
        "/latency_ms/mean",
        "/latency_ms/p50",
        "/latency_ms/max",
        "/latency_ms/first_chunk_mean",
        "/encoder/ms_per_frame",
        "/encoder/fps",
        "/stages/encoder/ms_per_chunk",
        "/stages/encoder/fps",
        "/stages/dit/ms_per_chunk",
        "/stages/dit/fps",
        "/stages/decode/fps",
        "/stages/end_to_end/fps",
        "/buffer_input_frames",
        "/calls_per_chunk",
        "/output_frames",
        "/video_fps",
    ] {
        let x = v.pointer(p).and_then(serde_json::Value::as_f64);
        assert!(x.is_some_and(|x| x > 0.0), "video_to_video{p} = {x:?}");
    }
}

/// `bench --decoder wan-vae --strength`: the stream encodes with the Wan VAE encoder, and the
/// report names it as the encoder stage, with the first chunk's 3 frames fewer said.
#[test]
fn bench_names_the_wan_vae_encoder_as_the_stage() {
    let json = temp("bench-wan-vae-v2v.json");
    let out = bench_v2v(&json, &["--steps", "2", "--decoder", "wan-vae"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "encoder (Wan VAE encoder, CPU, f32)",
        "its own 8 input frames",
        "the first chunk 5, its first frame encoded alone",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let v = &r["video_to_video"];
    assert_eq!(
        v["encoder"]["name"].as_str(),
        Some("Wan VAE encoder, CPU, f32")
    );
    let fps = v
        .pointer("/stages/encoder/fps")
        .and_then(serde_json::Value::as_f64);
    assert!(fps.is_some_and(|x| x > 0.0), "{fps:?}");
}

/// `plan --profile P --gpu h100` with `extra`: its text holds `heading`; the JSON's
/// `wan.encoder`.
fn plan_encoder(profile: &str, extra: &[&str], heading: &str) -> serde_json::Value {
    let path = temp(&format!("plan-{profile}-v2v{}.json", extra.len()));
    let args = [
        &[
            "plan",
            "--profile",
            profile,
            "--gpu",
            "h100",
            "--json",
            s(&path),
        ][..],
        extra,
    ]
    .concat();
    let out = ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(heading), "{profile}:\n{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    r["wan"]["encoder"].clone()
}

/// `plan` for a Wan profile includes the TAEHV encoder: FLOPs and bytes per chunk and per
/// input frame, memory on the device and on the host, and its roofline on an H100.
#[test]
fn plan_includes_the_wan_encoder() {
    for profile in ["wan-tiny", "wan-1.3b"] {
        let e = plan_encoder(profile, &[], "video-to-video encoder (TAEHV");
        for p in [
            "/parameters",
            "/flops_per_chunk",
            "/flops_per_input_frame",
            "/bytes_read_per_chunk",
            "/bytes_written_per_chunk",
            "/device_memory_bytes",
            "/host_memory/total_bytes",
            "/input_frames_per_chunk",
            "/roofline/ms_per_chunk",
            "/roofline/ms_per_input_frame",
            "/roofline/input_fps",
            "/roofline/with_dit/fps",
        ] {
            let x = e.pointer(p).and_then(serde_json::Value::as_f64);
            assert!(x.is_some_and(|x| x > 0.0), "{profile}: encoder{p} = {x:?}");
        }
    }
}

/// With `--decoder wan-vae` the stream encodes its input with the Wan VAE's own encoder,
/// and `plan` costs that one: its parameters are those of the encoder graph the stream runs.
#[test]
fn plan_costs_the_wan_vae_encoder_with_the_wan_vae_decoder() {
    use streamdit::inspect::{wan_encoder_graph, VideoCost};
    let p = streamdit::Profile::builtin("wan-tiny").unwrap();
    let e = plan_encoder(
        "wan-tiny",
        &["--decoder", "wan-vae"],
        "video-to-video encoder (the Wan VAE's",
    );
    assert_eq!(e["kind"], "wan-vae");
    let graph = wan_encoder_graph(&p, streamdit::WanDecoder::WanVae).unwrap();
    let taehv = wan_encoder_graph(&p, streamdit::WanDecoder::Taehv).unwrap();
    assert_eq!(e["parameters"].as_u64(), Some(graph.parameters()));
    assert_ne!(graph.parameters(), taehv.parameters());
    let flops = VideoCost::of(&graph, 2, false).total.flops;
    assert_eq!(e["flops_per_chunk"].as_u64(), Some(flops));
    assert!(e
        .pointer("/roofline/with_dit/fps")
        .and_then(serde_json::Value::as_f64)
        .is_some_and(|f| f > 0.0));
}

/// `generate` on 13 input frames (ending mid-chunk) writes the bytes of the Rust API given
/// the same frames and ended the same way; `tests/abi.rs` checks the C ABI against the same
/// Rust stream (`rust_wan_v2v_frames`: random weights of seed 3 in f16, stream seed 11, this
/// prompt, strength 0.7, the frames of `input_byte`, the formula of `raw_video`).
#[test]
fn generate_equals_the_rust_api_and_so_the_c_abi() {
    use streamdit::{BackendKind, DType, Engine, EngineParams, Profile, StreamParams};
    let n = 13;
    let input = raw_video("wan-in-api.rgb", n);
    let out = ok(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--backend",
        "cpu",
        "--random-weights",
        "3",
        "--seed",
        "11",
        "--prompt",
        "a red kite over the sea",
        "--input-video",
        s(&input),
        "--input-size",
        "64x64",
        "--strength",
        "0.7",
        "--out",
        "-",
    ]);
    let engine = Engine::new(EngineParams {
        profile: Profile::load("wan-tiny").unwrap(),
        weights: streamdit::WeightsSource::Random {
            seed: 3,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .video_stream(
            StreamParams {
                prompt: "a red kite over the sea".into(),
                seed: Some(11),
                ..Default::default()
            },
            0.7,
        )
        .unwrap();
    stream
        .push_video_frames(&std::fs::read(&input).unwrap())
        .unwrap();
    stream.end_input().unwrap();
    let mut want = Vec::new();
    while stream.next_frames(&mut want).unwrap() > 0 {}
    assert_eq!(want.len(), n * FRAME);
    assert!(
        out.stdout == want,
        "the CLI's frames differ from the Rust API's"
    );
}

/// `generate --adaptive-noise` (docs/wan.md "Adaptive noise"): the whole input is edited,
/// chunks after the first start below the strength (this input moves), said on stderr, and
/// the frames differ from a fixed-level run; StreamDiT refuses it by name.
#[test]
fn generate_with_adaptive_noise() {
    let n = 16;
    let input = raw_video("wan-in-adaptive.rgb", n);
    let out = generate(&input, &["--adaptive-noise"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.stdout.len(), n * FRAME, "{stderr}");
    assert!(
        stderr.contains("strength 0.7 with adaptive noise"),
        "{stderr}"
    );
    let levels = stderr
        .split("chunks started at noise levels ")
        .nth(1)
        .unwrap_or_else(|| panic!("no levels said: {stderr}"));
    let (lo, hi) = levels.split_once(" to ").unwrap();
    let lo: f64 = lo.parse().unwrap();
    let hi: f64 = hi.split_whitespace().next().unwrap().parse().unwrap();
    assert!(hi == 0.7 && (0.6..0.7).contains(&lo), "{lo} {hi}");
    let fixed = generate(&input, &[]);
    assert_eq!(fixed.stdout.len(), n * FRAME);
    assert!(fixed.stdout != out.stdout, "adaptive noise changed nothing");
    let err = cli_common::fails(&[
        "generate",
        "--profile",
        "tiny",
        "--backend",
        "cpu",
        "--input-video",
        s(&input),
        "--input-size",
        "64x64",
        "--adaptive-noise",
        "--out",
        "-",
    ]);
    assert!(
        err.contains("adaptive noise") && err.contains("Wan family"),
        "{err}"
    );
}
