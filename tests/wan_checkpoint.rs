//! Wan checkpoints (docs/wan.md sections 9 and 10): `weights init` writes the original
//! names; the loader accepts the diffusers names behind the released files' prefixes in
//! f32, bf16 and f16, merges a LoRA, and names what is wrong with a checkpoint of the other
//! family, of another size, with a missing tensor, an ambiguous prefix or a LoRA of another
//! rank.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use streamdit::checkpoint::wan::random_wan;
use streamdit::model::profile::BUILTIN_PROFILES;
use streamdit::{files, BackendKind, DType, Engine, EngineParams, Profile, Tensor, WeightsSource};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-wan-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn wan_tiny_text() -> String {
    BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == "wan-tiny")
        .unwrap()
        .1
        .to_string()
}

fn load(profile: Profile, path: &Path) -> streamdit::Result<Engine> {
    Engine::new(EngineParams {
        profile,
        weights: WeightsSource::File(path.to_path_buf()),
        backend: BackendKind::Cpu,
    })
}

/// The diffusers name of an original name, written from the table of docs/wan.md section 9
/// (independently of the loader's map).
fn diffusers(orig: &str) -> String {
    let top = [
        (
            "text_embedding.0.",
            "condition_embedder.text_embedder.linear_1.",
        ),
        (
            "text_embedding.2.",
            "condition_embedder.text_embedder.linear_2.",
        ),
        (
            "time_embedding.0.",
            "condition_embedder.time_embedder.linear_1.",
        ),
        (
            "time_embedding.2.",
            "condition_embedder.time_embedder.linear_2.",
        ),
        ("time_projection.1.", "condition_embedder.time_proj."),
        ("head.head.", "proj_out."),
    ];
    if orig == "head.modulation" {
        return "scale_shift_table".into();
    }
    for (o, d) in top {
        if let Some(rest) = orig.strip_prefix(o) {
            return format!("{d}{rest}");
        }
    }
    if let Some(rest) = orig.strip_prefix("blocks.") {
        let (l, part) = rest.split_once('.').unwrap();
        let part = part
            .replace("modulation", "scale_shift_table")
            .replace("self_attn.o.", "attn1.to_out.0.")
            .replace("cross_attn.o.", "attn2.to_out.0.")
            .replace("self_attn.norm_", "attn1.norm_")
            .replace("cross_attn.norm_", "attn2.norm_")
            .replace("norm3.", "norm2.")
            .replace("ffn.0.", "ffn.net.0.proj.")
            .replace("ffn.2.", "ffn.net.2.");
        let part = ["q", "k", "v"].iter().fold(part, |p, x| {
            p.replace(&format!("self_attn.{x}."), &format!("attn1.to_{x}."))
                .replace(&format!("cross_attn.{x}."), &format!("attn2.to_{x}."))
        });
        return format!("blocks.{l}.{part}");
    }
    orig.to_string()
}

fn message(r: streamdit::Result<Engine>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn weights_init_round_trips_and_every_naming_loads() {
    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap().clone();
    let path = tmp("init.safetensors");
    files::write_random_profile_checkpoint(&p, 3, DType::F16, &path).unwrap();
    let stored = files::read_tensors(&path).unwrap();
    let want = random_wan(&w, 3, DType::F16);
    assert_eq!(stored.len(), want.len(), "every tensor, preview included");
    for (name, t) in want.iter() {
        assert_eq!(stored[name], *t, "{name}: original name and values");
    }
    let e = load(p.clone(), &path).unwrap();
    for (name, t) in want.iter() {
        assert_eq!(e.weights().get(name).unwrap(), t, "{name} loaded");
    }

    // Diffusers names behind Self-Forcing's EMA prefix, FSDP wrappers, bf16, no preview:
    // the loader maps each back and the preview falls back to the fixed map.
    let renamed: Vec<(String, Tensor)> = stored
        .iter()
        .filter(|(n, _)| !n.starts_with("preview."))
        .map(|(n, t)| {
            let d = diffusers(n).replacen("blocks.", "blocks._fsdp_wrapped_module.", 1);
            (format!("generator_ema.model.{d}"), t.clone())
        })
        .collect();
    assert!(renamed
        .iter()
        .any(|(n, _)| n.contains("attn2.to_out.0.weight")));
    let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let dpath = tmp("diffusers.safetensors");
    files::write_tensors(&dpath, &refs, DType::BF16).unwrap();
    let e = load(p.clone(), &dpath).unwrap();
    for (name, t) in stored.iter().filter(|(n, _)| !n.starts_with("preview.")) {
        let bf16: Vec<f32> = t.data.iter().map(|&x| DType::BF16.round(x)).collect();
        let got = e.weights().get(name).unwrap();
        assert_eq!(got.data, bf16, "{name} from diffusers bf16");
    }
    assert!(
        e.weight_notes()
            .iter()
            .any(|n| n.contains("generator_ema.model.")),
        "{:?}",
        e.weight_notes()
    );
    assert!(e.weight_notes().iter().any(|n| n.contains("false-colour")));
    // The same subtree twice (a whole Self-Forcing file converted without --prefix).
    let mut both = renamed.clone();
    both.extend(
        renamed
            .iter()
            .map(|(n, t)| (n.replacen("generator_ema.", "generator.", 1), t.clone())),
    );
    let refs: Vec<(&str, &Tensor)> = both.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bpath = tmp("both.safetensors");
    files::write_tensors(&bpath, &refs, DType::F32).unwrap();
    let m = message(load(p.clone(), &bpath));
    assert!(m.contains("--prefix") && m.contains("generator."), "{m}");
}

#[test]
fn checkpoints_of_another_family_size_or_shape_are_named_errors() {
    let wan = Profile::builtin("wan-tiny").unwrap();
    let sd = Profile::builtin("tiny").unwrap();
    let wan_path = tmp("wan.safetensors");
    let sd_path = tmp("sd.safetensors");
    files::write_random_profile_checkpoint(&wan, 0, DType::F16, &wan_path).unwrap();
    files::write_random_profile_checkpoint(&sd, 0, DType::F16, &sd_path).unwrap();

    let m = message(load(wan.clone(), &sd_path));
    assert!(
        m.contains("a streamdit checkpoint") && m.contains("patch_embed.weight"),
        "{m}"
    );
    assert!(m.contains("[256, 32]"), "the tensor's shape: {m}");
    let m = message(load(sd.clone(), &wan_path));
    assert!(
        m.contains("a wan checkpoint") && m.contains("patch_embedding.weight"),
        "{m}"
    );
    assert!(m.contains("profile `tiny`"), "{m}");

    // Another size: width 60 instead of 48.
    let wider = Profile::from_toml(
        &wan_tiny_text()
            .replace("dim = 48", "dim = 60")
            .replace("name = \"wan-tiny\"", "name = \"wan-wider\""),
        "test",
    )
    .unwrap();
    let m = message(load(wider, &wan_path));
    assert!(
        m.contains("patch_embedding.weight")
            && m.contains("[60, 4, 1, 2, 2]")
            && m.contains("[48, 4, 1, 2, 2]")
            && m.contains("another size"),
        "{m}"
    );

    // A missing tensor is named with its shape and where it was looked for.
    let mut t = files::read_tensors(&wan_path).unwrap();
    t.remove("blocks.1.norm3.bias");
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mpath = tmp("missing.safetensors");
    files::write_tensors(&mpath, &refs, DType::F16).unwrap();
    let m = message(load(wan.clone(), &mpath));
    assert!(
        m.contains("blocks.1.norm3.bias") && m.contains("[48]"),
        "{m}"
    );
}

/// PEFT factors of rank `r` for every target of a 2-block model.
fn lora_file(rank: usize, name: &str) -> (PathBuf, BTreeMap<String, Tensor>) {
    let mut rng = common::Rng::new(rank as u64);
    let mut out = BTreeMap::new();
    for l in 0..2 {
        for (m, o, i) in [
            ("self_attn.q", 48, 48),
            ("self_attn.k", 48, 48),
            ("self_attn.v", 48, 48),
            ("self_attn.o", 48, 48),
            ("cross_attn.q", 48, 48),
            ("cross_attn.k", 48, 48),
            ("cross_attn.v", 48, 48),
            ("cross_attn.o", 48, 48),
            ("ffn.0", 96, 48),
            ("ffn.2", 48, 96),
        ] {
            let p = format!("generator_lora.base_model.model.blocks.{l}.{m}");
            let a = Tensor::new(vec![rank, i], rng.f32s(rank * i, -0.1, 0.1)).unwrap();
            let b = Tensor::new(vec![o, rank], rng.f32s(o * rank, -0.1, 0.1)).unwrap();
            out.insert(format!("{p}.lora_A.weight"), a);
            out.insert(format!("{p}.lora_B.weight"), b);
        }
    }
    let path = tmp(name);
    let refs: Vec<(&str, &Tensor)> = out.iter().map(|(n, t)| (n.as_str(), t)).collect();
    files::write_tensors(&path, &refs, DType::F32).unwrap();
    (path, out)
}

fn with_lora(rank: usize, alpha: f32, file: &Path) -> Profile {
    let text = wan_tiny_text().replace(
        "[video]",
        &format!(
            "[wan.lora]\nrank = {rank}\nalpha = {alpha}\nfile = \"{}\"\n\n[video]",
            file.display()
        ),
    );
    Profile::from_toml(&text, "test").unwrap()
}

#[test]
fn a_lora_is_merged_at_load_and_a_rank_mismatch_is_named() {
    let base_path = tmp("base.safetensors");
    let p = Profile::builtin("wan-tiny").unwrap();
    files::write_random_profile_checkpoint(&p, 1, DType::F32, &base_path).unwrap();
    let base = files::read_tensors(&base_path).unwrap();
    let (lpath, factors) = lora_file(2, "lora.safetensors");
    let e = load(with_lora(2, 6.0, &lpath), &base_path).unwrap();
    assert!(
        e.weight_notes()
            .iter()
            .any(|n| n.contains("merged 20 modules")),
        "{:?}",
        e.weight_notes()
    );
    // W + (alpha / r) B A, by hand, for one target; untouched tensors stay.
    let key = "blocks.1.ffn.2";
    let w = &base[&format!("{key}.weight")];
    let pre = format!("generator_lora.base_model.model.{key}");
    let (a, b) = (
        &factors[&format!("{pre}.lora_A.weight")],
        &factors[&format!("{pre}.lora_B.weight")],
    );
    let got = e.weights().get(&format!("{key}.weight")).unwrap();
    let (out, inp) = (w.shape[0], w.shape[1]);
    let mut worst = 0f64;
    for o in 0..out {
        for i in 0..inp {
            let ba: f64 = (0..2)
                .map(|r| f64::from(b.data[o * 2 + r]) * f64::from(a.data[r * inp + i]))
                .sum();
            let want = f64::from(w.data[o * inp + i]) + 3.0 * ba;
            worst = worst.max((f64::from(got.data[o * inp + i]) - want).abs());
        }
    }
    assert!(worst < 1e-6, "merge error {worst:e}");
    assert_eq!(
        e.weights().get("head.head.weight").unwrap(),
        &base["head.head.weight"]
    );

    // The profile says rank 3, the file holds rank 2.
    let m = message(load(with_lora(3, 3.0, &lpath), &base_path));
    assert!(m.contains("rank 3") && m.contains("lora_A.weight"), "{m}");
    assert!(
        m.contains(&lpath.display().to_string()),
        "the file is named: {m}"
    );
    // A factor of a module that is not a target.
    let (bad, mut extra) = lora_file(2, "lora-extra.safetensors");
    extra.insert(
        "generator_lora.base_model.model.head.head.lora_A.weight".into(),
        Tensor::zeros(vec![2, 48]),
    );
    let refs: Vec<(&str, &Tensor)> = extra.iter().map(|(n, t)| (n.as_str(), t)).collect();
    files::write_tensors(&bad, &refs, DType::F32).unwrap();
    let m = message(load(with_lora(2, 2.0, &bad), &base_path));
    assert!(m.contains("head.head") && m.contains("not a target"), "{m}");
}

/// The Wan family's backend choice: the emulator on request, the GPU on request when the
/// CUDA probe works (else its error), and `auto` the GPU or the CPU with the probe's reason.
#[test]
fn the_device_backends_are_chosen_for_wan() {
    let engine = |backend| {
        Engine::new(EngineParams {
            profile: Profile::builtin("wan-tiny").unwrap(),
            weights: WeightsSource::Random {
                seed: 0,
                dtype: DType::F16,
            },
            backend,
        })
    };
    let e = engine(BackendKind::Emu).unwrap();
    assert_eq!(e.backend_choice().0, BackendKind::Emu);
    match engine(BackendKind::Cuda) {
        Ok(e) => assert_eq!(e.backend_choice().0, BackendKind::Cuda),
        Err(e) => {
            let m = e.to_string();
            assert!(!m.contains("lowering"), "the probe's own error: {m}");
        }
    }
    let e = engine(BackendKind::Auto).unwrap();
    match e.backend_choice() {
        (BackendKind::Cpu, r) => assert!(r.contains("CUDA probe failed"), "{r}"),
        (BackendKind::Cuda, r) => assert!(r.starts_with("auto:"), "{r}"),
        other => panic!("auto chose {other:?}"),
    }
    let m = e.create_backend(1.0).err().unwrap().to_string();
    assert!(m.contains("create_causal_backend"), "{m}");
    // The default decoder of a Wan stream is the profile's (TAEHV for wan-tiny).
    let s = e.stream(streamdit::StreamParams::default()).unwrap();
    assert_eq!(s.frame_size(), (64, 64));
}
