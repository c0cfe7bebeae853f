//! The `streamdit` binary with the Wan-family decoders (issue 17): `generate --decoder
//! taehv|wan-vae [--decoder-weights F]` on `wan-tiny` (random weights, the file `weights init
//! --decoder` writes, a file of the wrong kind), `decode` of a latents file with each
//! decoder and its named errors, `plan` costing each decoder per chunk at 832x480 beside
//! the DiT, and `bench` splitting DiT / decode / end to end with the decode per video frame.

mod cli_common;

use cli_common::{fails, ok, s, streamdit, temp};

use streamdit::checkpoint::{write_tensors, DType};
use streamdit::{wan_decoder, wan_decoder_weights, Profile, Tensor, WanDecoder};

const FRAME: usize = 64 * 64 * 3;

#[test]
fn generate_with_each_decoder_and_its_weights() {
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--profile",
            "wan-tiny",
            "--frames",
            "13",
            "--seed",
            "3",
            "--out",
            "-",
        ];
        args.extend_from_slice(extra);
        ok(&args).stdout
    };
    // The profile's decoder is TAEHV: 5 + 8 frames for two chunks, exactly 13 written.
    let default = gen(&[]);
    assert_eq!(default.len(), 13 * FRAME);
    let taehv = gen(&["--decoder", "taehv"]);
    assert!(taehv == default, "the profile's decoder is TAEHV");
    let vae = gen(&["--decoder", "wan-vae"]);
    assert_eq!(vae.len(), 13 * FRAME);
    assert!(vae != taehv);
    let preview = gen(&["--preview"]);
    assert!(preview != taehv);
    // `weights init --decoder` writes the values a stream draws itself (seed 0, f16).
    let file = temp("taehv.safetensors");
    ok(&[
        "weights",
        "init",
        "--profile",
        "wan-tiny",
        "--decoder",
        "taehv",
        "--out",
        s(&file),
    ]);
    let from_file = gen(&["--decoder-weights", s(&file)]);
    assert!(
        from_file == taehv,
        "the written random weights are the stream's own"
    );
    let vae_file = temp("vae.safetensors");
    ok(&[
        "weights",
        "init",
        "--profile",
        "wan-tiny",
        "--decoder",
        "wan-vae",
        "--seed",
        "1",
        "--out",
        s(&vae_file),
    ]);
    let other = gen(&["--decoder", "wan-vae", "--decoder-weights", s(&vae_file)]);
    assert!(other != vae, "seed 1's file is not seed 0's weights");
    // A checkpoint of the other kind is named, with the tensor that shows its kind.
    let m = fails(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--decoder",
        "taehv",
        "--decoder-weights",
        s(&vae_file),
        "--frames",
        "4",
        "--out",
        "-",
    ]);
    assert!(
        m.contains("not a TAEHV decoder checkpoint") && m.contains("decoder.conv1.weight"),
        "{m}"
    );
    let out = streamdit(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--decoder",
        "vae",
        "--out",
        "-",
    ]);
    let m = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && m.contains("taehv, wan-vae"), "{m}");
    let m = fails(&[
        "generate",
        "--profile",
        "tiny",
        "--decoder",
        "taehv",
        "--out",
        "-",
    ]);
    assert!(m.contains("StreamDiT"), "{m}");
}

#[test]
fn decode_latents_with_each_decoder() {
    let p = Profile::builtin("wan-tiny").unwrap();
    let (t, c, h, w) = (3, 4, 8, 8);
    let z: Vec<f32> = (0..t * c * h * w)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect();
    let latents = temp("latents.safetensors");
    let tensor = Tensor::new(vec![t, c, h, w], z.clone()).unwrap();
    write_tensors(&latents, &[("latents", &tensor)], DType::F32).unwrap();
    let lat = s(&latents);
    for (name, kind) in [
        ("taehv", WanDecoder::Taehv),
        ("wan-vae", WanDecoder::WanVae),
    ] {
        let out = ok(&[
            "decode",
            "--profile",
            "wan-tiny",
            "--decoder",
            name,
            "--random-weights",
            "2",
            "--latents",
            lat,
            "--chunk",
            "1",
            "--out",
            "-",
        ]);
        // 4T - 3 frames, chunk by chunk equal to the library's whole decode.
        assert_eq!(out.stdout.len(), (4 * t - 3) * FRAME, "{name}");
        let weights = wan_decoder_weights(&p, kind, None, 2, DType::F16).unwrap();
        let mut d = wan_decoder(&p, kind, &weights).unwrap();
        let mut want = Vec::new();
        d.decode(&z, &mut want).unwrap();
        assert!(
            out.stdout == want,
            "{name}: CLI (chunks of 1) vs library (whole)"
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("per video frame"), "{err}");
    }
    // Wrong channel count and wrong size name the tensor and the shape expected.
    for shape in [[2, 16, 8, 8], [2, 4, 8, 6]] {
        let n = shape.iter().product();
        let bad = Tensor::new(shape.to_vec(), vec![0.0; n]).unwrap();
        write_tensors(&latents, &[("latents", &bad)], DType::F32).unwrap();
        let m = fails(&[
            "decode",
            "--profile",
            "wan-tiny",
            "--latents",
            lat,
            "--out",
            "-",
        ]);
        assert!(m.contains("latents") && m.contains("[T, 4, 8, 8]"), "{m}");
    }
    // A StreamDiT checkpoint handed to a Wan decoder is named.
    let st = temp("tiny.safetensors");
    ok(&["weights", "init", "--profile", "tiny", "--out", s(&st)]);
    write_tensors(&latents, &[("latents", &tensor)], DType::F32).unwrap();
    let m = fails(&[
        "decode",
        "--profile",
        "wan-tiny",
        "--weights",
        s(&st),
        "--latents",
        lat,
        "--out",
        "-",
    ]);
    assert!(
        m.contains("not a TAEHV decoder checkpoint") && m.contains("StreamDiT TAE"),
        "{m}"
    );
}

fn plan_json(decoder: &str) -> serde_json::Value {
    let path = temp(&format!("plan-{decoder}.json"));
    let out = ok(&[
        "plan",
        "--profile",
        "wan-1.3b",
        "--decoder",
        decoder,
        "--gpu",
        "h100",
        "--json",
        s(&path),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("decoder {decoder}")), "{text}");
    assert!(
        text.contains("end to end") && text.contains("per video frame"),
        "{text}"
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// At 832x480, chunks of 3 latent frames (12 video frames): TAEHV about 9.8 M parameters
/// and 130-140 GFLOP per video frame (issue 17's figures), the Wan VAE 3.39 TFLOP per video
/// frame (docs/wan_vae.md, Cost), more than ten times TAEHV's time per chunk.
#[test]
fn plan_costs_each_decoder_per_chunk_beside_the_dit() {
    let t = plan_json("taehv");
    let num = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(|x| x.as_f64()).unwrap();
    assert_eq!(num(&t, "/decoder/video_frames_per_chunk"), 12.0);
    assert_eq!(
        t.pointer("/decoder/frame_size").unwrap(),
        &serde_json::json!([832, 480])
    );
    let params = num(&t, "/decoder/parameters");
    assert!((9.0e6..10.5e6).contains(&params), "{params}");
    let per_frame = num(&t, "/decoder/flops_per_video_frame");
    assert!((125e9..145e9).contains(&per_frame), "{per_frame:e}");
    assert!(num(&t, "/decoder/roofline/decoder_ms_per_chunk") > 0.0);
    let v = plan_json("wan-vae");
    let per_frame = num(&v, "/decoder/flops_per_video_frame");
    assert!((3.3e12..3.5e12).contains(&per_frame), "{per_frame:e}");
    // The Wan VAE's chunk takes more than ten times TAEHV's on the same GPU.
    let ms = |v: &serde_json::Value| num(v, "/decoder/roofline/decoder_ms_per_chunk");
    assert!(ms(&v) > 10.0 * ms(&t), "{} vs {}", ms(&v), ms(&t));
    assert_eq!(
        num(&v, "/decoder/dit_flops_per_chunk"),
        num(&t, "/decoder/dit_flops_per_chunk")
    );
    assert!(num(&v, "/decoder/cache_bytes") > num(&t, "/decoder/cache_bytes"));
}

#[test]
fn bench_splits_dit_decode_and_end_to_end() {
    let json = temp("bench.json");
    let out = ok(&[
        "bench",
        "--profile",
        "wan-tiny",
        "--backend",
        "cpu",
        "--decoder",
        "wan-vae",
        "--warmup",
        "1",
        "--steps",
        "8",
        "--json",
        s(&json),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "DiT call",
        "decode (per chunk)",
        "decode (per video frame)",
        "wan-vae (CPU, f32)",
        "end to end",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let v = r
        .pointer("/steady/stages/decode_ms_per_video_frame")
        .and_then(|x| x.as_f64());
    assert!(v.is_some_and(|x| x > 0.0), "{r}");
}
