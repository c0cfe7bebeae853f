//! The `streamdit` binary with the Wan family: weights init in the original names,
//! generate with the preview and the golden-test trace (also from a ready text context),
//! plan on an H100, `convert` of a `.pt` (and of a hostile one), and named errors.

mod cli_common;
#[path = "../../tests/common/torch_zip.rs"]
mod torch_zip;

use cli_common::{fails, ok, s, streamdit, temp};

use streamdit::files::read_tensors;
use streamdit::inspect::wan_noise_frame;

#[test]
fn weights_init_then_generate_with_trace() {
    let ckpt = temp("wan-tiny.safetensors");
    ok(&[
        "weights",
        "init",
        "--profile",
        "wan-tiny",
        "--out",
        s(&ckpt),
    ]);
    let t = read_tensors(&ckpt).unwrap();
    assert_eq!(t["patch_embedding.weight"].shape, [48, 4, 1, 2, 2]);
    assert_eq!(t["blocks.1.modulation"].shape, [1, 6, 48]);
    assert!(t.contains_key("blocks.0.cross_attn.norm_k.weight"));

    // From the file, and from the same random weights generated in memory.
    let (a, b) = (temp("a.safetensors"), temp("b.safetensors"));
    let common = [
        "generate",
        "--profile",
        "wan-tiny",
        "--backend",
        "cpu",
        "--preview",
        "--prompt",
        "a cat",
        "--prompt-at",
        "8:a dog",
        "--frames",
        "24",
        "--seed",
        "3",
    ];
    let y4m = temp("wan.y4m");
    let out = ok(&[
        &common[..],
        &["--weights", s(&ckpt), "--trace", s(&a), "--out", s(&y4m)],
    ]
    .concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prompt switch"), "{stderr}");
    ok(&[&common[..], &["--trace", s(&b), "--out", "-"]].concat());
    let (ta, tb) = (read_tensors(&a).unwrap(), read_tensors(&b).unwrap());
    assert_eq!(
        ta, tb,
        "a checkpoint of the random weights runs the same stream"
    );
    // 24 video frames = 3 chunks of 2 latent frames: 4 noise draws and a chunk each.
    assert_eq!(ta.len(), 3 * 5);
    for k in 0..3 {
        let chunk = &ta[&format!("chunk.{k}")];
        assert_eq!(chunk.shape, [2, 4, 8, 8]);
        assert!(chunk.data.iter().all(|v| v.is_finite()));
        for step in 0..4 {
            let n = &ta[&format!("noise.{k}.{step}")];
            let mut z = vec![0.0; 4 * 8 * 8];
            wan_noise_frame(3, 2 * k as u64 + 1, step, &mut z);
            assert_eq!(&n.data[256..], &z[..], "noise.{k}.{step}, its second frame");
        }
    }
    let frames = std::fs::read(&y4m)
        .unwrap()
        .windows(6)
        .filter(|w| w == b"FRAME\n")
        .count();
    assert_eq!(frames, 24);

    // A ready context (`text` only: every row real) replaces the prompt.
    let text = temp("text.safetensors");
    let ctx = streamdit::Tensor::new(vec![8, 32], vec![0.25; 8 * 32]).unwrap();
    streamdit::files::write_tensors(&text, &[("text", &ctx)], streamdit::DType::F32).unwrap();
    let c = temp("c.safetensors");
    ok(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--preview",
        "--frames",
        "8",
        "--text-embeddings",
        s(&text),
        "--trace",
        s(&c),
        "--out",
        "-",
    ]);
    let tc = read_tensors(&c).unwrap();
    assert_ne!(
        tc["chunk.0"], tb["chunk.0"],
        "the context reached the model"
    );
}

#[test]
fn plan_wan_1_3b_on_an_h100() {
    let path = temp("plan-wan.json");
    let out = ok(&[
        "plan",
        "--profile",
        "wan-1.3b",
        "--gpu",
        "h100",
        "--json",
        s(&path),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "CacheAttention",
        "Rope3d",
        "per chunk",
        "KV cache",
        "Self-Forcing 17 FPS",
        "LongLive 20.7 FPS",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let num = |p: &str| r.pointer(p).and_then(serde_json::Value::as_f64).unwrap();
    // 1,418,996,800 parameters (docs/wan.md section 1), f16.
    assert_eq!(num("/parameters/dit"), 1_418_996_800.0);
    // Attention of 3*1560 queries over 21*1560 keys of width 1536 in 30 blocks, plus the
    // text: 4*T*K*D each.
    let t = 3.0 * 1560.0;
    let attention = 30.0 * 4.0 * t * 1536.0 * (21.0 * 1560.0 + 512.0);
    // Per token and block: self q, k, v, o and cross q, o (D x D), the FFN (2 D Dff); the
    // cross-attention K/V are per prompt.
    let (d, dff) = (1536.0, 8960.0);
    let gemm = 2.0 * t * 30.0 * (6.0 * d * d + 2.0 * d * dff);
    let call = num("/totals/call_flops");
    assert!(
        (call - attention - gemm).abs() < 0.01 * call,
        "{call:e} vs {attention:e} + {gemm:e}"
    );
    let chunk = num("/wan/chunk_flops");
    assert!(chunk > 4.0 * call && chunk < 5.0 * call, "{chunk:e}");
    // The KV cache: K and V, f16, 21 frames of 1560 tokens, 30 blocks.
    assert_eq!(
        num("/wan/kv_cache_bytes"),
        2.0 * 2.0 * 21.0 * 1560.0 * 1536.0 * 30.0
    );
    let fps = num("/wan/roofline/fps");
    assert!(fps > 17.0 && fps < 200.0, "{fps}");
}

// A zip of stored entries, as `torch.save` writes them (64-byte aligned data).
fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

/// `{name: tensor([1.5, -2.0])}` in pickle protocol 2, as `torch.save` writes a tensor.
fn tensor_pickle(name: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    unicode(&mut p, name);
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    p.extend([
        b'K', 2, b't', b'Q', b'K', 0, b'K', 2, 0x85, b'K', 1, 0x85, 0x89,
    ]);
    p.extend(b"ccollections\nOrderedDict\n)Rt");
    p.extend(b"Ru.");
    p
}

fn archive(pickle: Vec<u8>) -> Vec<u8> {
    let data: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    torch_zip::zip(&[
        ("ckpt/data.pkl".into(), pickle),
        ("ckpt/byteorder".into(), b"little".to_vec()),
        ("ckpt/data/0".into(), data),
        ("ckpt/version".into(), b"3\n".to_vec()),
    ])
}

#[test]
fn convert_reads_a_pt_and_refuses_a_hostile_one() {
    let pt = temp("gen.pt");
    std::fs::write(
        &pt,
        archive(tensor_pickle("generator_ema.model.head.head.bias")),
    )
    .unwrap();
    let st = temp("gen.safetensors");
    let out = ok(&[
        "convert",
        s(&pt),
        s(&st),
        "--prefix",
        "generator_ema.model.",
        "--list",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("head.head.bias"));
    let t = read_tensors(&st).unwrap();
    assert_eq!(t["head.head.bias"].data, [1.5, -2.0]);

    // A pickle that names os.system: refused by name, never run.
    let mut p = vec![0x80, 2, b'}', b'('];
    unicode(&mut p, "x");
    p.extend(b"cos\nsystem\n");
    p.extend(b"u.");
    let bad = temp("bad.pt");
    std::fs::write(&bad, archive(p)).unwrap();
    let m = fails(&["convert", s(&bad), s(&temp("bad.safetensors"))]);
    assert!(m.contains("os") && m.contains("system"), "{m}");
    // Not a zip at all; a prefix that matches nothing.
    let junk = temp("junk.pt");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    fails(&["convert", s(&junk), s(&temp("junk.safetensors"))]);
    let m = fails(&["convert", s(&pt), s(&st), "--prefix", "critic."]);
    assert!(m.contains("critic."), "{m}");
}

#[test]
fn wan_errors_are_named() {
    let out = streamdit(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--backend",
        "cuda",
        "--preview",
        "--frames",
        "4",
        "--out",
        "-",
    ]);
    // The family runs on a device: with a GPU this succeeds; without one it fails with
    // the CUDA probe's error.
    if !out.status.success() {
        let m = String::from_utf8_lossy(&out.stderr);
        assert!(
            !m.contains("lowering lands") && m.to_lowercase().contains("cuda"),
            "{m}"
        );
    }
    let m = fails(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--decoder",
        "wan-vae",
        "--decoder-weights",
        s(&temp("absent.pth")),
        "--frames",
        "4",
        "--out",
        "-",
    ]);
    assert!(
        m.contains("absent.pth"),
        "the missing decoder checkpoint is named: {m}"
    );
    let m = fails(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--preview",
        "--guidance",
        "3",
    ]);
    assert!(m.contains("classifier-free guidance"), "{m}");
    let lora = temp("none.safetensors");
    let m = fails(&["generate", "--profile", "tiny", "--lora", s(&lora)]);
    assert!(m.contains("not of the wan family"), "{m}");
    let m = fails(&[
        "generate",
        "--profile",
        "wan-tiny",
        "--preview",
        "--lora",
        s(&lora),
    ]);
    assert!(m.contains("--lora-rank"), "{m}");
    let out = temp("v.safetensors");
    let m = fails(&[
        "forward",
        "--profile",
        "wan-tiny",
        "--input",
        s(&lora),
        "--out",
        s(&out),
    ]);
    assert!(m.contains("KV cache"), "{m}");
}

/// The trace hook for StreamDiT: the buffer's initial noise frames, each popped chunk's
/// fresh noise, and every chunk, in the order drawn.
#[test]
fn streamdit_trace_names_every_noise_frame_and_chunk() {
    let path = temp("tiny-trace.safetensors");
    ok(&[
        "generate",
        "--profile",
        "tiny",
        "--preview",
        "--frames",
        "16",
        "--seed",
        "5",
        "--trace",
        s(&path),
        "--out",
        "-",
    ]);
    let t = read_tensors(&path).unwrap();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    // 8 buffer frames, 2 chunks popped (frames 8..11 pushed), 2 chunks emitted.
    assert_eq!(t.len(), 12 + 2, "{names:?}");
    for f in 0..12u64 {
        let n = &t[&format!("noise.{f}")];
        assert_eq!(n.shape, [8, 16, 16]);
        let mut z = vec![0.0; 8 * 16 * 16];
        streamdit::inspect::noise_frame(5, f, &mut z);
        assert_eq!(n.data, z, "noise.{f}");
    }
    for k in 0..2 {
        assert_eq!(t[&format!("chunk.{k}")].shape, [2, 8, 16, 16]);
    }
}
