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
        use streamdit::model::checkpoint::{write_tensors, DType};
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
    let a = streamdit::model::checkpoint::read_tensors(&v_file).unwrap();
    let b = streamdit::model::checkpoint::read_tensors(&v_rand).unwrap();
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
    use streamdit::model::checkpoint::{write_tensors, DType};
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
    let prompt_a = ok(&[
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
    let plain = ok(&["generate", "--frames", "8", "--out", "-"]);
    assert_eq!(
        with.stdout, prompt_a.stdout,
        "the prompt is ignored when embeddings are given"
    );
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
    // MODEL_SPEC section 7: ~128 TFLOP per call, ~4.2B parameters in the blocks, f16 weights.
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
