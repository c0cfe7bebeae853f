//! The `streamdit` binary end to end: weights init, forward, generate into every sink, and
//! errors reported as messages with a non-zero exit (never a panic).

use std::path::PathBuf;
use std::process::{Command, Output};

fn streamdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamdit"))
        .args(args)
        .output()
        .expect("the streamdit binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = streamdit(args);
    assert!(
        out.status.success(),
        "streamdit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn generate_writes_a_playable_y4m() {
    let path = temp("fox.y4m");
    let out = ok(&[
        "generate",
        "--profile",
        "tiny",
        "--prompt",
        "a fox",
        "--frames",
        "20",
        "--out",
        path.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&path).unwrap();
    let header = b"YUV4MPEG2 W128 H128 F16:1";
    assert_eq!(&bytes[..header.len()], header);
    // 20 frames of 4:2:0: a "FRAME\n" marker and 128*128*3/2 bytes each.
    let frames = bytes.windows(6).filter(|w| w == b"FRAME\n").count();
    assert_eq!(frames, 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FPS"), "progress must report FPS: {stderr}");
}

#[test]
fn generate_raw_rgb_on_stdout_and_png_sequence() {
    let out = ok(&["generate", "--frames", "8", "--out", "-"]);
    assert_eq!(out.stdout.len(), 8 * 128 * 128 * 3);
    let dir = temp("pngs/");
    ok(&["generate", "--frames", "8", "--out", dir.to_str().unwrap()]);
    let pngs = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(pngs, 8);
}

#[test]
fn weights_init_then_forward_matches_random_weights() {
    let ckpt = temp("tiny.safetensors");
    ok(&[
        "weights",
        "init",
        "--profile",
        "tiny",
        "--seed",
        "3",
        "--dtype",
        "f16",
        "--out",
        ckpt.to_str().unwrap(),
    ]);
    // Build a forward input with the library, run the CLI on file weights and on the same
    // random weights generated in memory: both must give the same v.
    let input = temp("call.safetensors");
    {
        use streamdit::checkpoint::{write_tensors, DType};
        use streamdit::rng::noise_frame;
        use streamdit::{Profile, Tensor};
        let m = Profile::builtin("tiny").unwrap().model;
        let mut x = vec![0.0; m.buffer_elems()];
        for (k, f) in x.chunks_mut(m.frame_elems()).enumerate() {
            noise_frame(9, k as u64, f);
        }
        let x = Tensor::new(
            vec![
                m.latent_frames,
                m.latent_channels,
                m.latent_height,
                m.latent_width,
            ],
            x,
        )
        .unwrap();
        let tau = Tensor::new(
            vec![m.latent_frames],
            (0..m.latent_frames).map(|f| f as f32 / 8.0).collect(),
        )
        .unwrap();
        let text = Tensor::new(
            vec![m.text_len, m.text_dim],
            (0..m.text_len * m.text_dim)
                .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
                .collect(),
        )
        .unwrap();
        let mask = Tensor::new(
            vec![m.text_len],
            (0..m.text_len)
                .map(|i| if i < 5 { 1.0 } else { 0.0 })
                .collect(),
        )
        .unwrap();
        write_tensors(
            &input,
            &[
                ("x", &x),
                ("tau", &tau),
                ("text", &text),
                ("text_mask", &mask),
            ],
            DType::F32,
        )
        .unwrap();
    }
    let v_file = temp("v_file.safetensors");
    let v_rand = temp("v_rand.safetensors");
    ok(&[
        "forward",
        "--weights",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        v_file.to_str().unwrap(),
    ]);
    ok(&[
        "forward",
        "--random-weights",
        "3",
        "--input",
        input.to_str().unwrap(),
        "--out",
        v_rand.to_str().unwrap(),
    ]);
    let a = streamdit::checkpoint::read_tensors(&v_file).unwrap();
    let b = streamdit::checkpoint::read_tensors(&v_rand).unwrap();
    assert_eq!(a["v"].shape, vec![8, 8, 16, 16]);
    assert_eq!(a["v"], b["v"]);
    assert!(a["v"].data.iter().all(|v| v.is_finite()));
}

#[test]
fn errors_are_messages_not_panics() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "--profile", "nope", "--out", "-"],
            "neither a built-in profile",
        ),
        (
            &[
                "generate",
                "--weights",
                "/nonexistent/w.safetensors",
                "--out",
                "-",
            ],
            "/nonexistent/w.safetensors",
        ),
        (
            &["generate", "--frames", "8", "--out", "video.mp4"],
            "video.mp4",
        ),
        (&["generate", "--backend", "cuda", "--out", "-"], "cuda"),
        (
            &[
                "forward",
                "--input",
                "/nonexistent/in.safetensors",
                "--out",
                "/tmp/v.safetensors",
            ],
            "/nonexistent/in.safetensors",
        ),
    ];
    for (args, needle) in cases {
        let out = streamdit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: `{stderr}` should mention `{needle}`"
        );
    }
}

#[test]
fn profiles_list_and_show() {
    let out = ok(&["profiles", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    for name in ["tiny", "streamdit-4b", "streamdit-4b-teacher"] {
        assert!(list.contains(name), "{list}");
    }
    let out = ok(&["profiles", "show", "streamdit-4b"]);
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(toml.contains("dim = 3072"), "{toml}");
}

#[test]
fn text_embeddings_replace_the_prompt() {
    use streamdit::checkpoint::{write_tensors, DType};
    use streamdit::{Profile, Tensor};
    let m = Profile::builtin("tiny").unwrap().model;
    let text = Tensor::new(
        vec![m.text_len, m.text_dim],
        (0..m.text_len * m.text_dim)
            .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
            .collect(),
    )
    .unwrap();
    let mask = Tensor::new(
        vec![m.text_len],
        (0..m.text_len)
            .map(|i| if i < 9 { 1.0 } else { 0.0 })
            .collect(),
    )
    .unwrap();
    let path = temp("text.safetensors");
    write_tensors(&path, &[("text", &text), ("text_mask", &mask)], DType::F32).unwrap();
    let with = ok(&[
        "generate",
        "--frames",
        "8",
        "--text-embeddings",
        path.to_str().unwrap(),
        "--out",
        "-",
    ]);
    // A prompt given with embeddings is a conflict, not silently ignored.
    let prompt_a = streamdit(&[
        "generate",
        "--frames",
        "8",
        "--prompt",
        "a",
        "--text-embeddings",
        path.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert!(!prompt_a.status.success());
    let stderr = String::from_utf8_lossy(&prompt_a.stderr);
    assert!(
        stderr.contains("--text-embeddings")
            && stderr.contains("cannot be used with")
            && stderr.contains("--prompt"),
        "{stderr}"
    );
    assert!(prompt_a.stdout.is_empty());
    let plain = ok(&["generate", "--frames", "8", "--out", "-"]);
    assert_ne!(
        with.stdout, plain.stdout,
        "the embeddings condition the video"
    );
    // A mis-shaped file is an error naming the tensor.
    let bad = Tensor::new(vec![3], vec![1.0; 3]).unwrap();
    write_tensors(&path, &[("text", &text), ("text_mask", &bad)], DType::F32).unwrap();
    let out = streamdit(&[
        "generate",
        "--frames",
        "8",
        "--text-embeddings",
        path.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("text_mask"));
}

#[test]
fn plan_reports_flops_memory_and_roofline() {
    let path = temp("plan-4b.json");
    let out = ok(&[
        "plan",
        "--profile",
        "streamdit-4b",
        "--gpu",
        "h100",
        "--json",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "WindowAttention",
        "compute",
        "memory",
        "peak device mem",
        "video FPS",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let num = |pointer: &str| {
        report
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no number at {pointer}"))
    };
    let within = |pointer: &str, want: f64, rel: f64| {
        let got = num(pointer);
        assert!(
            (got - want).abs() <= rel * want,
            "{pointer}: {got} vs {want}"
        );
    };
    // docs/streamdit.md section 7: ~128 TFLOP per call, ~4.2B parameters in the blocks, f16 weights.
    within("/totals/call_flops", 128e12, 0.02);
    within("/parameters/blocks", 4.2e9, 0.02);
    within("/memory/weight_bytes", 2.0 * num("/parameters/dit"), 1e-3);
    let peak = num("/memory/peak_bytes");
    let regions: f64 = ["weight", "persistent", "io", "arena"]
        .iter()
        .map(|r| num(&format!("/memory/{r}_bytes")))
        .sum();
    assert_eq!(peak, regions);
    assert!(
        peak < 24e9 * 0.5,
        "peak {peak} should leave room on a 24 GB GPU"
    );
    assert_eq!(report["memory"]["fits_gpu"], serde_json::Value::Bool(true));
    // The roofline can't beat the FLOP floor; FPS is 8 video frames per call.
    let ms = num("/totals/ms_per_call");
    assert!(ms > 128e12 * 0.98 / 989e12 * 1e3 && ms < 250.0, "{ms} ms");
    within("/totals/fps", 8.0 / (ms / 1e3), 1e-9);
    within("/totals/fps_at_efficiency", 0.6 * 8.0 / (ms / 1e3), 1e-9);
    // The CUDA backend's launches fold the residuals, SwiGLU and norms: faster than op by
    // op, never under the FLOP floor; the modelled prologues fold more.
    let device_ms = num("/totals/launches/device/ms_per_call");
    let prologue_ms = num("/totals/launches/with_prologues/ms_per_call");
    assert!(
        prologue_ms < device_ms && device_ms < ms && prologue_ms > 128e12 * 0.98 / 989e12 * 1e3,
        "{prologue_ms} < {device_ms} < {ms}"
    );
    let sm90_ms = num("/totals/launches/sm90/ms_per_call");
    assert!(
        prologue_ms < sm90_ms && sm90_ms < device_ms,
        "{prologue_ms} < {sm90_ms} < {device_ms}"
    );
    // An H100 runs the sm_90a launches, so the end-to-end line adds those to the decoder.
    within(
        "/decoder/prediction/end_to_end_ms_per_call",
        sm90_ms + num("/decoder/prediction/decoder_ms_per_call"),
        1e-9,
    );
    for needle in ["device launches", "sm_90a launches", "wgmma, prologues"] {
        assert!(stdout.contains(needle), "`{needle}` missing");
    }
    let ops = report["ops"].as_array().unwrap();
    let op_ms: f64 = ops
        .iter()
        .filter(|op| op["list"] == "call")
        .map(|op| op["time_us"].as_f64().unwrap() / 1e3)
        .sum();
    assert!((op_ms - ms).abs() < 1e-6 * ms, "{op_ms} vs {ms}");
    let op_flops: u64 = ops
        .iter()
        .filter(|op| op["list"] == "call")
        .map(|op| op["flops"].as_u64().unwrap())
        .sum();
    assert_eq!(op_flops, report["totals"]["call_flops"].as_u64().unwrap());

    // Without --gpu: the same plan, the roofline fields null.
    ok(&[
        "plan",
        "--profile",
        "tiny",
        "--json",
        path.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(report["gpu"].is_null() && report["totals"]["ms_per_call"].is_null());
    assert!(report["ops"][0]["time_us"].is_null());
    assert!(report["totals"]["call_flops"].as_u64().unwrap() > 0);
    let out = streamdit(&["plan", "--gpu", "v100"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("h100, h200"));
}

fn read_json(path: &PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Fields of the bench report that need a GPU and NVML: present and null without them.
const BENCH_GPU_ONLY: &[&str] = &[
    "/memory/measured_device_bytes",
    "/compute/share_of_peak",
    "/gpu/name",
    "/gpu/driver_version",
    "/gpu/cuda_version",
    "/gpu/sm_clock_mhz",
    "/gpu/mem_clock_mhz",
    "/gpu/power_w",
    "/gpu/temperature_c",
    "/gpu/throttle_reasons",
    "/gpu/energy_per_frame_j",
];

/// Fields of the bench report that hold a positive number on every backend.
const BENCH_POSITIVE: &[&str] = &[
    "/first_frame/cold_s",
    "/first_frame/cold_engine_s",
    "/first_frame/cold_prefill_s",
    "/first_frame/cold_calls",
    "/first_frame/warm_s",
    "/first_frame/warm_calls",
    "/steady/steps",
    "/steady/chunks",
    "/steady/video_frames",
    "/steady/seconds",
    "/steady/calls_per_s",
    "/steady/video_fps",
    "/steady/profile_fps",
    "/steady/realtime_factor",
    "/steady/stages/dit_ms_mean",
    "/steady/stages/decode_ms_mean",
    "/steady/stages/end_to_end_ms_mean",
    "/steady/stages/dit_fps",
    "/steady/stages/decode_fps",
    "/steady/stages/end_to_end_fps",
    "/steady/pipelined/chunks",
    "/steady/pipelined/video_frames",
    "/steady/pipelined/seconds",
    "/steady/pipelined/ms_per_chunk",
    "/steady/pipelined/video_fps",
    "/steady/latency_ms/p50",
    "/steady/latency_ms/p90",
    "/steady/latency_ms/p99",
    "/steady/latency_ms/max",
    "/compute/call_flops",
    "/compute/achieved_tflops",
];

/// Checks every field of a bench report; `steps` calls were measured on `backend`.
fn check_bench_report(report: &serde_json::Value, profile: &str, backend: &str, steps: u64) {
    let get = |p: &str| {
        report
            .pointer(p)
            .unwrap_or_else(|| panic!("bench report lacks {p}"))
    };
    let num = |p: &str| {
        get(p)
            .as_f64()
            .unwrap_or_else(|| panic!("{p} is not a number: {}", get(p)))
    };
    for p in BENCH_POSITIVE {
        assert!(num(p) > 0.0, "{p} = {} must be positive", num(p));
    }
    for p in BENCH_GPU_ONLY {
        assert!(
            get(p).is_null(),
            "{p} must be null without a GPU: {}",
            get(p)
        );
    }
    for p in [
        "/config/profile",
        "/config/backend",
        "/config/precision",
        "/config/weights",
        "/config/engine_version",
        "/compute/achieved_basis",
    ] {
        assert!(get(p).as_str().is_some_and(|s| !s.is_empty()), "{p}");
    }
    let p = streamdit::Profile::load(profile).unwrap();
    assert_eq!(get("/config/profile"), p.name.as_str());
    assert_eq!(get("/config/backend"), backend);
    assert_eq!(get("/config/seed").as_u64(), Some(0));
    assert_eq!(get("/config/steps").as_u64(), Some(steps));
    assert_eq!(get("/steady/steps").as_u64(), Some(steps));
    let rev = get("/config/git_revision");
    assert!(
        rev.is_null() || rev.as_str().is_some_and(|r| r.len() == 40),
        "git revision {rev}"
    );
    assert!(get("/config/warmup_steps").as_u64().is_some());
    assert!(get("/config/duration_s").is_null());
    let (p50, p90, p99, max) = (
        num("/steady/latency_ms/p50"),
        num("/steady/latency_ms/p90"),
        num("/steady/latency_ms/p99"),
        num("/steady/latency_ms/max"),
    );
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= max,
        "{p50} {p90} {p99} {max}"
    );
    // tiny pops a chunk of 2 latent frames (8 video frames) every call.
    assert_eq!(num("/steady/chunks"), steps as f64);
    assert_eq!(num("/steady/video_frames"), 8.0 * steps as f64);
    // The pipelined run streams as many chunks as the measured window emitted.
    assert_eq!(num("/steady/pipelined/chunks"), steps as f64);
    assert_eq!(num("/steady/pipelined/video_frames"), 8.0 * steps as f64);
    assert!(num("/steady/pipelined/video_fps") > 0.0);
    assert_eq!(
        get("/steady/pipelined/overlapped").as_bool(),
        Some(backend != "cpu")
    );
    assert_eq!(get("/steady/stages/decoder"), "tae (CPU, f32)");
    let fps = num("/steady/video_fps");
    let rtf = num("/steady/realtime_factor");
    assert!((rtf - fps / 16.0).abs() < 1e-9 * rtf, "{rtf} vs {fps} / 16");
    let frames_per_s = num("/steady/video_frames") / num("/steady/seconds");
    assert!((fps - frames_per_s).abs() < 1e-9 * fps);
    // Every stage is at least as fast as the whole.
    assert!(num("/steady/stages/dit_fps") >= fps && num("/steady/stages/decode_fps") >= fps);
    assert!(num("/first_frame/cold_s") >= num("/first_frame/cold_prefill_s"));
    // The first chunk pops after the prefill calls (`tiny`: 3 of them, then the popping one).
    let schedule = streamdit::stream::schedule::Schedule::new(&p.stream);
    let first_pop = (0..).find(|&i| schedule.step(i).pop).unwrap();
    assert_eq!(num("/first_frame/cold_calls"), (first_pop + 1) as f64);
    let series = |name: &str| {
        get(&format!("/steady/series/{name}"))
            .as_array()
            .unwrap_or_else(|| panic!("series {name}"))
            .clone()
    };
    for name in [
        "dit_ms",
        "decode_ms",
        "step_ms",
        "emitted_at_s",
        "interval_ms",
    ] {
        assert_eq!(series(name).len() as u64, steps, "series {name}");
    }
    let step_max = series("step_ms")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(step_max, max);
    let jitter = get("/steady/jitter_ms");
    if steps >= 2 {
        assert!(jitter.as_f64().is_some_and(|j| j >= 0.0), "jitter {jitter}");
    } else {
        assert!(jitter.is_null(), "one interval has no jitter: {jitter}");
    }
    let rss = get("/memory/peak_rss_bytes");
    assert!(
        rss.is_null() || rss.as_f64().is_some_and(|b| b > 1e6),
        "{rss}"
    );
}

#[test]
fn bench_cpu_reports_every_field() {
    let path = temp("bench-cpu.json");
    let out = ok(&[
        "bench",
        "--profile",
        "tiny",
        "--backend",
        "cpu",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["cold", "warm", "video FPS", "p99", "jitter", "peak RSS"] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    let report = read_json(&path);
    check_bench_report(&report, "tiny", "cpu", 3);
    assert!(report["config"]["graphs"].is_null());
    assert!(report["memory"]["plan_peak_device_bytes"].is_null());

    // Graph replay is a device feature; the CPU backend says so instead of ignoring it.
    let out = streamdit(&[
        "bench",
        "--backend",
        "cpu",
        "--graphs",
        "off",
        "--steps",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no device graphs"), "{stderr}");
    let out = streamdit(&["bench", "--backend", "cpu", "--steps", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
}

/// Checks a profile report and its Chrome trace: one complete event per timed step, the
/// steps covering every call op once, shares summing to one.
fn check_profile(
    report: &serde_json::Value,
    trace: &serde_json::Value,
    profile: &str,
    backend: &str,
) {
    use streamdit::model::graph::Graph;
    let m = streamdit::Profile::load(profile).unwrap().model;
    let graph = Graph::build(&m, 1.0);
    assert_eq!(report["backend"], backend);
    assert_eq!(
        report["call_ops"].as_u64(),
        Some(graph.call_ops.len() as u64)
    );
    assert!(report["nvtx"]["ranges"].is_string());
    assert!(report["nvtx"].get("injection").is_some());
    let steps = report["steps"].as_array().unwrap();
    let events: Vec<&serde_json::Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    assert_eq!(events.len(), steps.len());
    if backend == "cpu" {
        assert_eq!(steps.len(), graph.call_ops.len(), "one step per op");
    }
    let mut covered = 0;
    let mut end = 0.0;
    for (step, event) in steps.iter().zip(&events) {
        let (ts, dur) = (
            event["ts"].as_f64().unwrap(),
            event["dur"].as_f64().unwrap(),
        );
        assert!(dur >= 0.0 && ts + 1e-6 >= end, "events in order: {event}");
        end = ts + dur;
        assert_eq!(event["name"], step["label"]);
        assert!((dur - step["seconds"].as_f64().unwrap() * 1e6).abs() < 1e-6 * dur.max(1.0));
        let ops = step["ops"].as_array().unwrap();
        let (a, b) = (ops[0].as_u64().unwrap(), ops[1].as_u64().unwrap());
        // A step starts where the previous op range ended, or repeats it (a copy).
        assert!(
            a == covered || b == covered,
            "op range {a}..{b} after {covered}"
        );
        covered = b;
    }
    assert_eq!(covered, graph.call_ops.len() as u64);
    let share: f64 = steps.iter().map(|s| s["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    let flops: f64 = steps.iter().map(|s| s["flops"].as_f64().unwrap()).sum();
    let want = report["call_flops"].as_f64().unwrap();
    assert!(
        want > 0.0 && (flops - want).abs() < 1e-9 * want,
        "{flops} vs {want}"
    );
    let total = report["total_s"].as_f64().unwrap();
    assert!(total > 0.0 && report["gflops_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn profile_cpu_reports_ops_and_writes_a_chrome_trace() {
    let (path, trace) = (temp("profile-cpu.json"), temp("profile-cpu-trace.json"));
    let out = ok(&[
        "profile",
        "--profile",
        "tiny",
        "--backend",
        "cpu",
        "--json",
        path.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WindowAttention") && stdout.contains("GFLOP/s"),
        "{stdout}"
    );
    let report = read_json(&path);
    assert_eq!(report["clock"], "host wall clock");
    assert_eq!(
        report["nvtx"]["injection"].as_str(),
        streamdit::nvtx::injection().as_deref(),
        "no NVTX tool attached unless the test runner has one"
    );
    check_profile(&report, &read_json(&trace), "tiny", "cpu");
}

/// The profile of the emulator runs: `tests/profiles/small.toml` (every op of a `tiny` call
/// at about a second per call on the emulator), or `tiny` itself with `STREAMDIT_FULL=1`.
fn emu_profile() -> String {
    if std::env::var("STREAMDIT_FULL").is_ok_and(|v| v == "1") {
        "tiny".into()
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/profiles/small.toml").into()
    }
}

/// The emulator takes seconds per call: bench makes the fewest calls it can (first chunk
/// cold and warm, one measured call) and profile one traced call.
#[test]
fn bench_and_profile_run_on_the_emulator() {
    let profile = emu_profile();
    let path = temp("bench-emu.json");
    ok(&[
        "bench",
        "--profile",
        &profile,
        "--backend",
        "emu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        path.to_str().unwrap(),
    ]);
    let report = read_json(&path);
    check_bench_report(&report, &profile, "emu", 1);
    assert_eq!(report["config"]["graphs"], serde_json::Value::Bool(true));
    assert!(report["memory"]["plan_peak_device_bytes"].as_u64().unwrap() > 100_000);

    // Under an NVTX tool, so the launch ranges of the device path are checked too.
    let (path, trace) = (temp("profile-emu.json"), temp("profile-emu-trace.json"));
    let (out, log) = with_nvtx_tool(
        &[
            "profile",
            "--profile",
            &profile,
            "--backend",
            "emu",
            "--warmup",
            "0",
            "--json",
            path.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
        ],
        "profile-emu-nvtx.log",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not GPU time"), "{stdout}");
    let report = read_json(&path);
    assert_eq!(report["clock"], "emulator wall clock (not GPU time)");
    check_profile(&report, &read_json(&trace), &profile, "emu");
    let tree = nvtx_tree(&log);
    let call = tree.iter().find(|(n, _)| n == "profiled call").unwrap();
    let launches: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        call.1, launches,
        "one range per launch, named as the report"
    );
    assert!(report["nvtx"]["injection"].is_string());
}

/// `--warmup-seconds` warms up by time, rejects what is not a duration, and excludes
/// `--warmup`.
#[test]
fn bench_warmup_by_seconds() {
    let out = streamdit(&[
        "bench",
        "--profile",
        "tiny",
        "--backend",
        "cpu",
        "--steps",
        "1",
        "--warmup-seconds",
        "0.05",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("warm-up"));
    let out = streamdit(&["bench", "--warmup-seconds", "nan"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--warmup-seconds"));
    let out = streamdit(&["bench", "--warmup", "2", "--warmup-seconds", "1"]);
    assert!(!out.status.success());
}

/// Compiles `tools/tests/nvtx/inject.c`, a minimal NVTX tool, into a shared library.
fn nvtx_tool() -> PathBuf {
    let lib = temp("libnvtx_inject.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nvtx/inject.c");
    let out = Command::new(&cc)
        .args([
            "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", source, "-o",
        ])
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// Runs `streamdit args` with the NVTX tool injected; returns the process and its range log.
fn with_nvtx_tool(args: &[&str], log: &str) -> (Output, Vec<String>) {
    let log = temp(log);
    let out = Command::new(env!("CARGO_BIN_EXE_streamdit"))
        .args(args)
        .env(streamdit::nvtx::INJECTION_VAR, nvtx_tool())
        .env("STREAMDIT_NVTX_LOG", &log)
        .output()
        .expect("the streamdit binary runs");
    assert!(
        out.status.success(),
        "streamdit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("the NVTX tool was loaded and wrote its log");
    (out, text.lines().map(String::from).collect())
}

/// Pushes and pops pair up; returns the top-level ranges with the ranges pushed inside each.
fn nvtx_tree(log: &[String]) -> Vec<(String, Vec<String>)> {
    let mut tree: Vec<(String, Vec<String>)> = Vec::new();
    let mut depth = 0usize;
    for line in log {
        if let Some(name) = line.strip_prefix("push ") {
            if depth == 0 {
                tree.push((name.to_string(), Vec::new()));
            } else {
                tree.last_mut().unwrap().1.push(name.to_string());
            }
            depth += 1;
        } else {
            assert_eq!(line, "pop", "unexpected log line");
            depth = depth.checked_sub(1).expect("a pop without a push");
        }
    }
    assert_eq!(depth, 0, "every range is popped");
    tree
}

/// A tool attached through NVTX_INJECTION64_PATH (as Nsight Systems does) receives a range
/// per op of the profiled call, named as the report's steps, inside `profiled call`; and a
/// range per streaming step and chunk decode from `generate`.
#[test]
fn nvtx_ranges_reach_an_injected_tool() {
    let json = temp("profile-nvtx.json");
    let (out, log) = with_nvtx_tool(
        &[
            "profile",
            "--profile",
            "tiny",
            "--backend",
            "cpu",
            "--warmup",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        "profile-nvtx.log",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded by"));
    let report = read_json(&json);
    assert!(report["nvtx"]["injection"].is_string());
    let tree = nvtx_tree(&log);
    let names: Vec<&str> = tree.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["prompt", "warm-up call 0", "profiled call"]);
    assert!(!tree[0].1.is_empty(), "the prompt's ops have ranges");
    let labels: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        tree[2].1, labels,
        "one range per op, in order, named as the report"
    );
    assert_eq!(tree[1].1.len(), labels.len());

    let video = temp("nvtx.y4m");
    let (_, log) = with_nvtx_tool(
        &[
            "generate",
            "--profile",
            "tiny",
            "--frames",
            "16",
            "--out",
            video.to_str().unwrap(),
        ],
        "generate-nvtx.log",
    );
    let tree = nvtx_tree(&log);
    let steps: Vec<&str> = tree
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("step "))
        .collect();
    let decodes = tree.iter().filter(|(n, _)| n == "decode").count();
    // `tiny`: 3 prefill calls, then one chunk of 2 latent frames (8 video frames) per call.
    assert_eq!(steps, ["step 0", "step 1", "step 2", "step 3", "step 4"]);
    assert_eq!(decodes, 2);
    assert!(tree
        .iter()
        .filter(|(n, _)| n.starts_with("step "))
        .all(|(_, ops)| !ops.is_empty()));
}

/// `weights init` writes the decoder's tensors; `decode` turns a latent file into the frames
/// the library's TAE decoder gives, from the file's weights or the same random weights, for
/// any chunk size; `generate --preview` keeps the cheap preview.
#[test]
fn decode_latents_file_and_preview() {
    use streamdit::checkpoint::{write_tensors, DType, Weights};
    use streamdit::decoder::{Decoder, TaeDecoder};
    use streamdit::model::tae::TaeGraph;
    use streamdit::{Profile, Tensor};
    let ckpt = temp("tiny-decoder.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();
    ok(&["weights", "init", "--seed", "5", "--out", ckpt_s]);
    let p = Profile::builtin("tiny").unwrap();
    let (t, c, h, w) = (3, 8, 16, 16);
    let z: Vec<f32> = (0..t * c * h * w)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect();
    let latents = temp("latents.safetensors");
    let tensor = Tensor::new(vec![t, c, h, w], z.clone()).unwrap();
    write_tensors(&latents, &[("latents", &tensor)], DType::F32).unwrap();
    let lat = latents.to_str().unwrap();
    let from_file = ok(&[
        "decode",
        "--weights",
        ckpt_s,
        "--latents",
        lat,
        "--out",
        "-",
    ]);
    assert_eq!(from_file.stdout.len(), 4 * t * 128 * 128 * 3);
    let random = ok(&[
        "decode",
        "--random-weights",
        "5",
        "--latents",
        lat,
        "--chunk",
        "1",
        "--out",
        "-",
    ]);
    assert!(from_file.stdout == random.stdout, "file vs random weights");
    let weights = Weights::random_decoder(&p.decoder, c, 5, DType::F16).unwrap();
    let mut dec = TaeDecoder::new(TaeGraph::new(&p.decoder, c, h, w).unwrap(), &weights).unwrap();
    let mut want = Vec::new();
    dec.decode(&z, &mut want).unwrap();
    assert!(from_file.stdout == want, "CLI vs library");
    // A latent file of the wrong shape names the tensor and both shapes.
    let bad = Tensor::new(vec![2, c, h, 8], vec![0.0; 2 * c * h * 8]).unwrap();
    write_tensors(&latents, &[("latents", &bad)], DType::F32).unwrap();
    let out = streamdit(&["decode", "--latents", lat, "--out", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("latents") && err.contains("[2, 8, 16, 8]"),
        "{err}"
    );
    // generate: the TAE decoder by default, the preview on request.
    let tae = ok(&[
        "generate",
        "--frames",
        "8",
        "--weights",
        ckpt_s,
        "--out",
        "-",
    ]);
    let preview = ok(&[
        "generate",
        "--frames",
        "8",
        "--weights",
        ckpt_s,
        "--preview",
        "--out",
        "-",
    ]);
    assert_eq!(tae.stdout.len(), preview.stdout.len());
    assert!(tae.stdout != preview.stdout);
    // The preview repeats each latent pixel over an 8x8 block; the decoder does not.
    let px = |f: &[u8], x: usize| f[x * 3..x * 3 + 3].to_vec();
    assert_eq!(px(&preview.stdout, 0), px(&preview.stdout, 7));
    assert!((0..8).any(|x| px(&tae.stdout, x) != px(&tae.stdout, 0)));
}

/// Sizes and outputs (issue 14): `--frames 0` is an error naming the flag and help says
/// exactly N frames are written; a closed stdout is an error naming it; a profile too large
/// for the engine is refused naming the field, before `weights init` writes anything.
#[test]
fn size_and_output_errors_name_the_cause_and_leave_no_file() {
    let fail = |out: &Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "should fail: {stderr}");
        assert!(!stderr.contains("panicked"), "panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "`{stderr}` should mention `{needle}`"
        );
    };
    let y4m = temp("zero.y4m");
    let out = streamdit(&["generate", "--frames", "0", "--out", y4m.to_str().unwrap()]);
    fail(&out, "--frames");
    assert!(!y4m.exists(), "--frames 0 left {}", y4m.display());
    let help = String::from_utf8_lossy(&ok(&["generate", "--help"]).stdout).into_owned();
    assert!(
        help.contains("exactly this many") && !help.contains("rounded up"),
        "{help}"
    );

    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" generate --frames 8 --out - >&-")
        .arg(env!("CARGO_BIN_EXE_streamdit"))
        .output()
        .unwrap();
    fail(&out, "stdout is closed");
    // A shell's `>/dev/null` is an open stdout and stays allowed.
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" generate --frames 8 --out - >/dev/null")
        .arg(env!("CARGO_BIN_EXE_streamdit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tiny = streamdit::Profile::builtin("tiny").unwrap().to_toml();
    let huge = temp("huge.toml");
    std::fs::write(&huge, tiny.replacen("\ndim = 256", "\ndim = 1000000000", 1)).unwrap();
    let weights = temp("huge.safetensors");
    let out = streamdit(&[
        "weights",
        "init",
        "--profile",
        huge.to_str().unwrap(),
        "--out",
        weights.to_str().unwrap(),
    ]);
    fail(&out, "model.dim");
    let left: Vec<_> = std::fs::read_dir(weights.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("huge.safetensors"))
        .collect();
    assert!(left.is_empty(), "weights init left {left:?}");
}

/// A `forward` input file for the tiny profile: `x`, `tau`, `text`, `text_mask`, plus
/// `extra` tensors; `poison` puts a NaN at that flat index of that tensor.
fn forward_input(
    name: &str,
    extra: &[(&str, Vec<usize>)],
    poison: Option<(&str, usize)>,
) -> PathBuf {
    use streamdit::checkpoint::{write_tensors, DType};
    use streamdit::{Profile, Tensor};
    let m = Profile::builtin("tiny").unwrap().model;
    let mut shapes: Vec<(&str, Vec<usize>)> = vec![
        (
            "x",
            vec![
                m.latent_frames,
                m.latent_channels,
                m.latent_height,
                m.latent_width,
            ],
        ),
        ("tau", vec![m.latent_frames]),
        ("text", vec![m.text_len, m.text_dim]),
        ("text_mask", vec![m.text_len]),
    ];
    shapes.extend(extra.iter().cloned());
    let tensors: Vec<(&str, Tensor)> = shapes
        .into_iter()
        .map(|(n, shape)| {
            let len = shape.iter().product();
            let mut data: Vec<f32> = (0..len).map(|i| ((i % 7) as f32) / 7.0).collect();
            if n.ends_with("mask") {
                data.iter_mut().for_each(|v| *v = 1.0);
            }
            if let Some((p, at)) = poison {
                if p == n {
                    data[at] = f32::NAN;
                }
            }
            (n, Tensor::new(shape, data).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let path = temp(name);
    write_tensors(&path, &refs, DType::F32).unwrap();
    path
}

/// Inputs that used to give a wrong answer with exit status 0 are errors naming the input.
#[test]
fn wrong_answers_are_errors() {
    let m = streamdit::Profile::builtin("tiny").unwrap().model;
    let out_v = temp("v-refused.safetensors");
    let out_v = out_v.to_str().unwrap();
    let clean = forward_input("clean.safetensors", &[], None);
    let clean = clean.to_str().unwrap();
    let nan_x = forward_input("nan-x.safetensors", &[], Some(("x", 3)));
    let nan_tau = forward_input("nan-tau.safetensors", &[], Some(("tau", 1)));
    let nan_text = forward_input("nan-text.safetensors", &[], Some(("text", 0)));
    let short_negative = forward_input(
        "short-negative.safetensors",
        &[
            ("negative_text", vec![m.text_len - 1, m.text_dim]),
            ("negative_text_mask", vec![m.text_len - 1]),
        ],
        None,
    );
    let latents = {
        use streamdit::checkpoint::{write_tensors, DType};
        let mut t =
            streamdit::Tensor::zeros(vec![1, m.latent_channels, m.latent_height, m.latent_width]);
        t.data[m.latent_width + 2] = f32::INFINITY;
        let path = temp("inf-latents.safetensors");
        write_tensors(&path, &[("latents", &t)], DType::F32).unwrap();
        path
    };
    let dir = std::env::temp_dir();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "forward",
                "--input",
                clean,
                "--out",
                out_v,
                "--guidance",
                "nan",
            ],
            "guidance: expected a finite number in [0, 30], found NaN".into(),
        ),
        (
            vec![
                "forward",
                "--input",
                clean,
                "--out",
                out_v,
                "--guidance",
                "inf",
            ],
            "found inf".into(),
        ),
        (
            vec![
                "forward",
                "--input",
                nan_x.to_str().unwrap(),
                "--out",
                out_v,
            ],
            "tensor `x`: expected finite values, found NaN at index 3 ([0, 0, 0, 3])".into(),
        ),
        (
            vec![
                "forward",
                "--input",
                nan_tau.to_str().unwrap(),
                "--out",
                out_v,
            ],
            "tensor `tau`: expected finite values, found NaN at index 1 ([1])".into(),
        ),
        (
            vec![
                "forward",
                "--input",
                nan_text.to_str().unwrap(),
                "--out",
                out_v,
            ],
            "tensor `text`: expected finite values, found NaN at index 0 ([0, 0])".into(),
        ),
        (
            vec![
                "forward",
                "--input",
                short_negative.to_str().unwrap(),
                "--out",
                out_v,
                "--guidance",
                "3",
            ],
            format!(
                "tensor `negative_text`: expected shape [{}, {}], found shape [{}, {}]",
                m.text_len,
                m.text_dim,
                m.text_len - 1,
                m.text_dim
            ),
        ),
        (
            vec![
                "decode",
                "--latents",
                latents.to_str().unwrap(),
                "--out",
                "-",
            ],
            format!(
                "tensor `latents`: expected finite values, found inf at index {} ([0, 0, 1, 2])",
                m.latent_width + 2
            ),
        ),
        (
            vec!["generate", "--weights", dir.to_str().unwrap(), "--out", "-"],
            "is a directory; expected a safetensors file".into(),
        ),
        (
            vec!["generate", "--prompt-at", "100000:later", "--out", "-"],
            "--prompt-at 100000: the run writes".into(),
        ),
        (
            vec!["plan", "--guidance", "inf"],
            "guidance: expected a finite number in [0, 30], found inf".into(),
        ),
        (
            vec!["generate", "--guidance", "1e30", "--out", "-"],
            "guidance: expected a finite number in [0, 30], found 1".into(),
        ),
    ];
    for (args, needle) in &cases {
        let out = streamdit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle.as_str()),
            "{args:?}: `{stderr}` lacks `{needle}`"
        );
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
    // The clean input still runs, and a negative condition with guidance 1 is reported as
    // unused rather than silently dropped.
    let out = ok(&[
        "forward",
        "--input",
        short_negative.to_str().unwrap(),
        "--out",
        out_v,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("negative_text"),
        "{stderr}"
    );
}

/// `count` RGB8 frames of `w x h` with moving structure.
fn test_frames(w: usize, h: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|t| {
            (0..w * h * 3)
                .map(|i| {
                    let (p, c) = (i / 3, i % 3);
                    let (x, y) = (p % w, p / w);
                    (30 + (x * 5 + y * 3 + c * 60 + t * 9) % 190) as u8
                })
                .collect()
        })
        .collect()
}

/// A 4:2:0 Y4M of `frames` written by the engine's own writer.
fn write_y4m(path: &PathBuf, frames: &[Vec<u8>], w: usize, h: usize) {
    use streamdit::sink::{FrameSink, Y4mSink};
    let mut sink = Y4mSink::new(Vec::new(), "test", w, h, 16.0).unwrap();
    for f in frames {
        sink.write_frame(f).unwrap();
    }
    std::fs::write(path, sink.into_inner().unwrap()).unwrap();
}

fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamdit"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The tool may stop reading early (an error): a broken pipe is fine here.
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Video-to-video from a Y4M file of another size (scaled and cropped), from raw RGB24 on
/// stdin and from a PNG folder: the whole input is edited (12 frames, a chunk and a half:
/// the partial chunk is said and not padded into the output); raw stdin and the PNG folder
/// of the same frames give the same bytes.
#[test]
fn generate_video_to_video_from_y4m_stdin_and_pngs() {
    let (w, h) = (64, 48);
    let frames = test_frames(w, h, 12);
    let y4m = temp("input.y4m");
    write_y4m(&y4m, &frames, w, h);
    let out_y4m = temp("edited.y4m");
    let out = ok(&[
        "generate",
        "--prompt",
        "a watercolour",
        "--input-video",
        y4m.to_str().unwrap(),
        "--strength",
        "0.5",
        "--out",
        out_y4m.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scaled to cover 128x128"), "{stderr}");
    assert!(
        stderr.contains("ended after 12 frames") && stderr.contains("mid-chunk"),
        "{stderr}"
    );
    assert!(stderr.contains("32 frames later"), "{stderr}");
    let bytes = std::fs::read(&out_y4m).unwrap();
    assert_eq!(bytes.windows(6).filter(|w| w == b"FRAME\n").count(), 12);

    let raw: Vec<u8> = frames.concat();
    let args = |input: &str| -> Vec<String> {
        [
            "generate",
            "--prompt",
            "a watercolour",
            "--input-video",
            input,
            "--frames",
            "8",
            "--out",
            "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut raw_args = args("-");
    raw_args.extend(["--input-size".to_string(), format!("{w}x{h}")]);
    let raw_refs: Vec<&str> = raw_args.iter().map(String::as_str).collect();
    let from_stdin = run_with_stdin(&raw_refs, &raw);
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    assert_eq!(from_stdin.stdout.len(), 8 * 128 * 128 * 3);
    let dir = temp("input-pngs/");
    {
        use streamdit::sink::{FrameSink, PngSequence};
        let mut pngs = PngSequence::new(&dir, w, h).unwrap();
        for f in &frames {
            pngs.write_frame(f).unwrap();
        }
        pngs.finish().unwrap();
    }
    let png_args = args(dir.to_str().unwrap());
    let png_refs: Vec<&str> = png_args.iter().map(String::as_str).collect();
    let from_pngs = ok(&png_refs);
    assert!(
        from_pngs.stdout == from_stdin.stdout,
        "PNG folder and raw stdin differ"
    );
    // Text-to-video of the same prompt and seed differs: the input matters.
    let t2v = ok(&[
        "generate",
        "--prompt",
        "a watercolour",
        "--frames",
        "8",
        "--out",
        "-",
    ]);
    assert!(t2v.stdout != from_stdin.stdout);
}

/// Bad input video: named errors and a non-zero exit, never a panic or a hang.
#[test]
fn video_to_video_input_errors_are_named() {
    let (w, h) = (16, 16);
    let frames = test_frames(w, h, 5);
    let good = temp("good.y4m");
    write_y4m(&good, &frames, w, h);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = temp("truncated.y4m");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let c422 = temp("c422.y4m");
    std::fs::write(&c422, b"YUV4MPEG2 W16 H16 F16:1 C422\nFRAME\n").unwrap();
    let garbage = temp("garbage.y4m");
    std::fs::write(&garbage, b"\x89PNG not a y4m\n").unwrap();
    let gen = |input: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["generate", "--input-video", input, "--out", "-"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (gen(truncated.to_str().unwrap(), &[]), "truncated"),
        (gen(c422.to_str().unwrap(), &[]), "C422` is not supported"),
        (gen(garbage.to_str().unwrap(), &[]), "YUV4MPEG2"),
        (gen(good.to_str().unwrap(), &["--strength", "0"]), "(0, 1]"),
        (
            gen(good.to_str().unwrap(), &["--strength", "1.5"]),
            "(0, 1]",
        ),
        (gen("/nonexistent/in.y4m", &[]), "/nonexistent/in.y4m"),
        (
            vec![
                "generate".into(),
                "--strength".into(),
                "0.5".into(),
                "--out".into(),
                "-".into(),
            ],
            "--input-video",
        ),
    ];
    for (args, needle) in &cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = streamdit(&refs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{stderr}` should mention `{needle}`"
        );
    }
    // Raw RGB24 whose length is not a whole number of --input-size frames.
    let raw: Vec<u8> = frames.concat();
    let out = run_with_stdin(
        &[
            "generate",
            "--input-video",
            "-",
            "--input-size",
            "16x15",
            "--out",
            "-",
        ],
        &raw,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bytes into frame") && stderr.contains("16x15"),
        "{stderr}"
    );
    // An empty stdin.
    let out = run_with_stdin(&["generate", "--input-video", "-", "--out", "-"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("empty input"), "{stderr}");
}

/// `bench --input-video F` and `bench --strength S` (a synthetic input, no file) add a
/// video-to-video section: the input-frame-to-output-frame latency and the encoder's cost
/// per frame, in the text and the JSON, every figure present and positive (not its value).
#[test]
fn bench_reports_video_to_video_latency_and_encoder_cost() {
    let profile = emu_profile_small();
    let (w, h) = (40, 24);
    let y4m = temp("bench-input.y4m");
    write_y4m(&y4m, &test_frames(w, h, 6), w, h);
    let json = temp("bench-v2v.json");
    let y4m_arg = y4m.to_str().unwrap().to_string();
    for input in [Some(y4m_arg.as_str()), None] {
        let mut args = vec![
            "bench",
            "--profile",
            &profile,
            "--backend",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--json",
            json.to_str().unwrap(),
        ];
        match input {
            Some(f) => args.extend(["--input-video", f]),
            None => args.extend(["--strength", "0.7"]),
        }
        let out = ok(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "video-to-video (strength",
            "input frame in -> its output frame out",
            "encoder (TAE, CPU, f32)",
            "ms per video frame",
        ] {
            assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
        }
        let report = read_json(&json);
        let v = &report["video_to_video"];
        for p in [
            "/latency_ms/mean",
            "/latency_ms/p50",
            "/latency_ms/max",
            "/latency_ms/frames",
            "/latency_ms/first_chunk_mean",
            "/encoder/ms_per_frame",
            "/encoder/fps",
            "/encoder/frames",
            "/encoder/seconds",
            "/buffer_input_frames",
            "/frames_per_chunk",
            "/output_frames",
            "/video_fps",
        ] {
            let x = v.pointer(p).and_then(serde_json::Value::as_f64);
            assert!(x.is_some_and(|x| x > 0.0), "video_to_video{p} = {x:?}");
        }
        assert_eq!(v["synthetic_input"].as_bool(), Some(input.is_none()));
        match input {
            // 6 frames of a 40x24 file: the rest of the run repeats its last frame, said.
            Some(_) => {
                assert!((v["strength"].as_f64().unwrap() - 0.6).abs() < 1e-6);
                assert!(v["input_repeated_frames"].as_u64().unwrap() > 0);
                assert!(stdout.contains("its last frame repeated"), "{stdout}");
            }
            None => {
                assert!((v["strength"].as_f64().unwrap() - 0.7).abs() < 1e-6);
                assert!(stdout.contains("synthetic"), "{stdout}");
            }
        }
        // The text-to-video figures are still there.
        assert!(report["steady"]["stages"]["dit_ms_mean"].as_f64().unwrap() > 0.0);
    }
    // Without either flag there is no video-to-video section.
    ok(&[
        "bench",
        "--profile",
        &profile,
        "--backend",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(read_json(&json)["video_to_video"].is_null());
    // A bad strength is refused before anything runs.
    let out = streamdit(&["bench", "--profile", &profile, "--strength", "1.5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--strength: expected a number in (0, 1]")
    );
}

/// `plan` reports the host memory video-to-video's encoder adds: weights, caches,
/// activations and queued input, in the text and the JSON, summing to its total.
#[test]
fn plan_reports_the_encoders_host_memory() {
    let path = temp("plan-v2v.json");
    let out = ok(&[
        "plan",
        "--profile",
        "tiny",
        "--json",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("encoder host mem") && stdout.contains("more than text-to-video"),
        "{stdout}"
    );
    let report = read_json(&path);
    let host = &report["decoder"]["encoder"]["host_memory"];
    let num = |k: &str| host[k].as_u64().unwrap_or_else(|| panic!("{k}: {host}"));
    for k in [
        "weight_bytes",
        "cache_bytes",
        "activation_bytes",
        "queue_bytes",
    ] {
        assert!(num(k) > 0, "{k}");
    }
    assert_eq!(
        num("total_bytes"),
        num("weight_bytes") + num("cache_bytes") + num("activation_bytes") + num("queue_bytes")
    );
    let tiny = streamdit::Profile::builtin("tiny").unwrap();
    let est = streamdit::inspect::video_to_video_memory(&tiny).unwrap();
    assert_eq!(u128::from(num("total_bytes")), est.total());
    assert_eq!(
        u128::from(num("stream_bytes_text_to_video")),
        tiny.memory_need().stream_bytes
    );
}

/// `tests/profiles/small.toml`: the smallest profile with every op, for CPU runs that only
/// check that fields are present.
fn emu_profile_small() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/profiles/small.toml").into()
}

/// `bench --kernels` on the emulator: every path's row with its time and its difference from
/// the mma.sync result in the JSON; the profile's own shapes when none are given; the CPU
/// backend refused by name.
#[test]
fn bench_kernels_compares_the_gemm_paths_on_the_emulator() {
    let path = temp("kernels-emu.json");
    let out = ok(&[
        "bench",
        "--kernels",
        "--backend",
        "emu",
        "--kernel-shapes",
        "72x64x40,8x16x8",
        "--kernel-reps",
        "1",
        "--json",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cuBLAS not compared"), "{stdout}");
    let report = read_json(&path);
    assert_eq!(report["emulated"], true);
    let rows = report["gemms"].as_array().unwrap();
    let paths: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r["m"].as_u64().unwrap(), r["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            (72, "mma.sync"),
            (72, "sm90a"),
            (8, "mma.sync"),
            (8, "sm90a")
        ]
    );
    for r in rows {
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["rel_diff_vs_mma_sync"].as_f64().unwrap() <= 2e-3, "{r}");
    }
    // A profile's own shapes: its GEMMs and its attention shapes (StreamDiT: window, shifted
    // window, cross), each attention path checked against the CPU on the emulator.
    let path = temp("kernels-emu-small.json");
    let small = emu_profile_small();
    ok(&[
        "bench",
        "--kernels",
        "--backend",
        "emu",
        "--profile",
        &small,
        "--kernel-reps",
        "1",
        "--json",
        path.to_str().unwrap(),
    ]);
    let report = read_json(&path);
    assert!(!report["gemms"].as_array().unwrap().is_empty());
    let attention = report["attention"].as_array().unwrap();
    let labels: Vec<&str> = attention
        .iter()
        .map(|r| r["shape"].as_str().unwrap())
        .collect();
    assert!(
        labels
            .iter()
            .any(|l| l.starts_with("window") && l.contains("shift 0x0x0"))
            && labels
                .iter()
                .any(|l| l.starts_with("window") && !l.contains("shift 0x0x0"))
            && labels.iter().any(|l| l.starts_with("cross")),
        "{labels:?}"
    );
    for r in attention {
        assert!(
            r["ms"].as_f64().unwrap() > 0.0 && r["ctas"].as_u64().unwrap() > 0,
            "{r}"
        );
        assert!(r["rel_l2_vs_cpu"].as_f64().unwrap() <= 2e-3, "{r}");
    }
    // The linear layers that read a norm (QKV, the cross-attention's q, W13, the final
    // layer): three rows each, unfused and with the LayerNorm prologue, in agreement.
    let prologues = report["prologues"].as_array().unwrap();
    let paths: Vec<&str> = prologues
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(!paths.is_empty() && paths.len() % 3 == 0, "{paths:?}");
    assert_eq!(&paths[..3], ["adaln+sm90a", "stats+ln", "ln"]);
    for r in prologues {
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["rel_diff_vs_unfused"].as_f64().unwrap() <= 4e-3, "{r}");
    }
    let refused = streamdit(&["bench", "--kernels", "--backend", "cpu"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--backend cuda"), "{err}");
    let bad = streamdit(&[
        "bench",
        "--kernels",
        "--backend",
        "emu",
        "--kernel-shapes",
        "8x8",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("MxNxK"), "{err}");
}
