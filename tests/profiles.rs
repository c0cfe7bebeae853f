//! Built-in profiles carry docs/streamdit.md section 7's numbers, and validation names the field
//! and the rule a bad profile breaks.

use streamdit::model::profile::BUILTIN_PROFILES;
use streamdit::model::streamdit::schema::{checkpoint_tensors, dit_parameters};
use streamdit::{Error, Profile};

#[test]
fn builtin_profiles_have_the_spec_numbers() {
    let tiny = Profile::builtin("tiny").unwrap();
    let m = &tiny.model;
    assert_eq!(
        (
            m.latent_channels,
            m.latent_frames,
            m.latent_height,
            m.latent_width
        ),
        (8, 8, 16, 16)
    );
    assert_eq!((m.dim, m.depth, m.heads, m.ffn_dim), (256, 4, 4, 768));
    assert_eq!((m.window, m.text_len, m.text_dim), ([4, 8, 8], 32, 256));
    let s = &tiny.stream;
    assert_eq!((s.chunks, s.chunk_frames, s.micro_steps), (4, 2, 1));
    assert!(!tiny.cfg());

    let big = Profile::builtin("streamdit-4b").unwrap();
    let m = &big.model;
    assert_eq!(
        (
            m.latent_channels,
            m.latent_frames,
            m.latent_height,
            m.latent_width
        ),
        (8, 16, 64, 64)
    );
    assert_eq!((m.dim, m.depth, m.heads, m.ffn_dim), (3072, 28, 24, 8192));
    assert_eq!((m.window, m.text_len, m.text_dim), ([4, 16, 16], 256, 4096));
    assert_eq!(
        (
            big.stream.chunks,
            big.stream.chunk_frames,
            big.stream.micro_steps
        ),
        (8, 2, 1)
    );
    assert!(!big.cfg());
    // Video: 512x512 from the 8x spatial compression.
    assert_eq!(m.latent_width * big.video.spatial_upsample, 512);

    let teacher = Profile::builtin("streamdit-4b-teacher").unwrap();
    assert_eq!(teacher.model, big.model);
    assert_eq!(teacher.stream.micro_steps, 16);
    assert!(teacher.cfg());
}

#[test]
fn streamdit_4b_has_about_4_2_billion_parameters() {
    let m = Profile::builtin("streamdit-4b").unwrap().model;
    // docs/streamdit.md section 7: "about 4.2B parameters (28 x ~151M per block)". That figure
    // counts the blocks; the embeddings, time modulation (6D x D) and text projection add
    // about 90M more.
    let blocks: usize = checkpoint_tensors(&m)
        .iter()
        .filter(|t| t.name.starts_with("blocks."))
        .map(|t| t.numel())
        .sum();
    let per_block = blocks as f64 / m.depth as f64;
    assert!(
        (per_block / 151e6 - 1.0).abs() < 0.02,
        "{per_block} per block"
    );
    assert!(
        (blocks as f64 / 4.2e9 - 1.0).abs() < 0.02,
        "{blocks} in the blocks"
    );
    let all = dit_parameters(&m) as f64;
    assert!((4.2e9..4.4e9).contains(&all), "{all} in the whole DiT");
}

#[test]
fn every_builtin_round_trips_through_toml() {
    for (name, _) in BUILTIN_PROFILES {
        let p = Profile::builtin(name).unwrap();
        let again = Profile::from_toml(&p.to_toml(), "round trip").unwrap();
        assert_eq!(p, again);
    }
}

/// `tiny` with one line replaced.
fn tiny_with(from: &str, to: &str) -> String {
    let text = BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == "tiny")
        .unwrap()
        .1;
    assert!(text.contains(from), "tiny.toml has no `{from}`");
    text.replace(from, to)
}

fn profile_error(text: &str) -> (String, String) {
    match Profile::from_toml(text, "test") {
        Err(Error::Profile { field, rule, .. }) => (field, rule),
        other => panic!("expected a profile error, got {other:?}"),
    }
}

#[test]
fn bad_profiles_name_the_field_and_the_rule() {
    let cases = [
        (
            "window = [4, 8, 8]",
            "window = [3, 8, 8]",
            "model.window",
            "divide the token grid",
        ),
        ("heads = 4", "heads = 3", "model.heads", "divide model.dim"),
        ("chunks = 4", "chunks = 3", "stream.chunks", "N*c = F"),
        (
            "latent_height = 16",
            "latent_height = 15",
            "model.latent_height",
            "even",
        ),
        ("depth = 4", "depth = 0", "model.depth", "at least 1"),
        (
            "micro_steps = 1",
            "micro_steps = 0",
            "stream.micro_steps",
            "at least 1",
        ),
        ("fps = 16.0", "fps = 0.0", "video.fps", "positive"),
        (
            "kind = \"clip\"",
            "kind = \"bert\"",
            "text.encoders[2].kind",
            "one of t5, clip, byte",
        ),
        (
            "len = 8",
            "len = 9",
            "text.encoders",
            "sum to model.text_len",
        ),
        (
            "name = \"clip\"",
            "name = \"t5\"",
            "text.encoders[2].name",
            "unique",
        ),
        (
            "len = 8\nrandom = { d_model = 256, layers = 2, heads = 4, d_ff = 512, seed = 2 }",
            "len = 8",
            "text.encoders[2].dir",
            "`random` must be given",
        ),
        (
            "micro_steps = 1",
            "micro_steps = 1\nboundaries = [0.0, 0.5, 0.25, 0.75, 1.0]",
            "stream.boundaries",
            "strictly increasing",
        ),
        (
            "micro_steps = 1",
            "micro_steps = 1\nboundaries = [0.0, 0.5, 1.0]",
            "stream.boundaries",
            "stream.chunks + 1",
        ),
        (
            "micro_steps = 1",
            "micro_steps = 1\nboundaries = [0.1, 0.25, 0.5, 0.75, 1.0]",
            "stream.boundaries",
            "start at 0",
        ),
    ];
    for (from, to, field, rule) in cases {
        let (f, r) = profile_error(&tiny_with(from, to));
        assert_eq!(f, field, "replacing `{from}` by `{to}`: {r}");
        assert!(
            r.contains(rule),
            "`{field}`: rule `{r}` does not say `{rule}`"
        );
    }
}

#[test]
fn unknown_and_missing_fields_are_parse_errors() {
    for text in [
        tiny_with("dim = 256", "dim = 256\ndimm = 3"),
        tiny_with("\ndim = 256\n", "\n"),
    ] {
        match Profile::from_toml(&text, "test.toml") {
            Err(Error::ProfileParse { path, msg }) => {
                assert_eq!(path, "test.toml");
                assert!(msg.contains("dim"), "{msg}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_profile_names_the_builtins() {
    let e = Profile::load("no-such-profile").unwrap_err().to_string();
    assert!(e.contains("tiny") && e.contains("streamdit-4b"), "{e}");
}

/// The Wan profiles carry docs/wan.md section 8's numbers.
#[test]
fn wan_profiles_have_the_documented_numbers() {
    use streamdit::inspect::wan_parameters;
    use streamdit::Family;
    let sf = Profile::builtin("wan-1.3b").unwrap();
    assert_eq!(sf.family, Family::Wan);
    let w = sf.wan().unwrap();
    assert_eq!(
        (w.latent_channels, w.latent_height, w.latent_width),
        (16, 60, 104)
    );
    assert_eq!((w.dim, w.depth, w.heads, w.ffn_dim), (1536, 30, 12, 8960));
    assert_eq!((w.freq_dim, w.text_len, w.text_dim), (256, 512, 4096));
    assert_eq!(w.tokens_per_frame(), 1560);
    assert_eq!(w.rope_split(), [22, 21, 21]);
    assert_eq!(
        (w.chunk_frames, w.window, w.sink, w.recache),
        (3, 21, 0, false)
    );
    // 832x480 video from the 8x spatial compression.
    assert_eq!(
        (
            w.latent_width * sf.video.spatial_upsample,
            w.latent_height * sf.video.spatial_upsample
        ),
        (832, 480)
    );
    let (t, s) = w.schedule();
    let want = [1000.0, 937.5, 833.333_333_333_333_4, 625.0];
    for (a, b) in t.iter().zip(want) {
        assert!((a - b).abs() < 1e-9, "{t:?}");
    }
    assert_eq!(s.len(), 4);
    // docs/wan.md section 1: 1,418,996,800 parameters.
    assert_eq!(wan_parameters(w), 1_418_996_800);
    // The shared views: one chunk per call, one call per step.
    assert_eq!(sf.model.latent_frames, 3);
    assert_eq!(sf.stream.micro_steps, 4);

    let ll = Profile::builtin("wan-1.3b-longlive").unwrap();
    let l = ll.wan().unwrap();
    assert_eq!((l.window, l.sink, l.recache), (12, 3, true));
    let lora = l.lora.as_ref().unwrap();
    assert_eq!((lora.rank, lora.alpha), (256, 256.0));
    let tiny = Profile::builtin("wan-tiny").unwrap();
    let t = tiny.wan().unwrap();
    assert_eq!(
        (t.chunk_frames, t.window, t.sink, t.recache),
        (2, 4, 1, true)
    );
    assert_eq!(t.rope_split(), [4, 2, 2]);
}

fn wan_tiny_with(from: &str, to: &str) -> String {
    let text = BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == "wan-tiny")
        .unwrap()
        .1;
    assert!(text.contains(from), "wan-tiny.toml has no `{from}`");
    text.replacen(from, to, 1)
}

#[test]
fn bad_wan_profiles_name_the_field_and_the_rule() {
    let cases = [
        (
            "window = 4 ",
            "window = 1 ",
            "wan.chunk_frames",
            "not exceed wan.window",
        ),
        (
            "sink = 1",
            "sink = 3",
            "wan.sink",
            "must not exceed wan.window",
        ),
        ("heads = 3", "heads = 5", "wan.heads", "divide wan.dim"),
        ("heads = 3", "heads = 16", "wan.heads", "at least 6"),
        (
            "patch = [1, 2, 2]",
            "patch = [1, 4, 4]",
            "wan.patch",
            "[1, 2, 2]",
        ),
        (
            "latent_width = 8",
            "latent_width = 7",
            "wan.latent_width",
            "even",
        ),
        ("freq_dim = 16", "freq_dim = 15", "wan.freq_dim", "even"),
        ("depth = 2", "depth = 0", "wan.depth", "at least 1"),
        (
            "rope_positions = \"absolute\"",
            "rope_positions = \"window\"",
            "wan.rope_positions",
            "not implemented",
        ),
        (
            "shift = 5.0",
            "shift = 5.0\ntimesteps = [1000.0]\nsigmas = [1.0]",
            "wan.timesteps",
            "one pair",
        ),
        ("shift = 5.0", "shift = -1.0", "wan.shift", "positive"),
        (
            "denoising_steps = [1000.0, 750.0, 500.0, 250.0]",
            "denoising_steps = [750.0, 1000.0]",
            "wan.denoising_steps",
            "strictly decreasing",
        ),
        (
            "context_timestep = 0.0",
            "context_timestep = 2000.0",
            "wan.context_timestep",
            "[0, 1000]",
        ),
        (
            "guidance = 1.0",
            "guidance = 3.0",
            "run.guidance",
            "distilled",
        ),
        (
            "len = 8",
            "len = 9",
            "text.encoders",
            "sum to model.text_len",
        ),
        (
            "[video]",
            "[wan.lora]\nrank = 0\nalpha = 1.0\n\n[video]",
            "wan.lora.rank",
            "at least 1",
        ),
        (
            "[video]",
            "[decoder]\nwidths = [8]\ngroups = 1\n\n[video]",
            "family = \"wan\"",
            "no [decoder] section",
        ),
        (
            "family = \"wan\"",
            "",
            "family = \"streamdit\"",
            "no [wan] section",
        ),
    ];
    for (from, to, field, rule) in cases {
        match Profile::from_toml(&wan_tiny_with(from, to), "test") {
            Err(Error::Profile {
                field: f, rule: r, ..
            }) => {
                assert_eq!(f, field, "replacing `{from}` by `{to}`: {r}");
                assert!(
                    r.contains(rule),
                    "`{field}`: rule `{r}` does not say `{rule}`"
                );
            }
            Err(e) => panic!("`{to}`: expected a profile error, got {e}"),
            Ok(_) => panic!("`{to}` was accepted"),
        }
    }
}

/// A profile's own checkpoint (`run.weights`): relative to its TOML's folder (`..` folded
/// away), used when a run names none, random weights when a seed is asked for, and a missing
/// file is an error naming it and the ways out. `train/tiny-shapes.toml` names one.
#[test]
fn a_profiles_own_checkpoint_resolves_against_its_folder() {
    use streamdit::{DType, WeightsSource};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shapes = Profile::load(root.join("train/tiny-shapes.toml").to_str().unwrap()).unwrap();
    let want = root.join("models/tiny-shapes.safetensors");
    assert_eq!(shapes.run.weights.as_deref(), Some(want.to_str().unwrap()));
    assert_eq!(
        WeightsSource::for_profile(&shapes, Some(3), DType::F16).unwrap(),
        WeightsSource::Random {
            seed: 3,
            dtype: DType::F16
        }
    );
    let tiny = Profile::builtin("tiny").unwrap();
    assert_eq!(tiny.run.weights, None);
    assert_eq!(
        WeightsSource::for_profile(&tiny, None, DType::F32).unwrap(),
        WeightsSource::Random {
            seed: 0,
            dtype: DType::F32
        }
    );

    let dir = std::env::temp_dir().join(format!("streamdit-profile-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("w")).unwrap();
    let file = dir.join("mine.toml");
    let text = tiny_with(
        "negative_prompt = \"\"",
        "negative_prompt = \"\"\nweights = \"w/ck.safetensors\"",
    );
    std::fs::write(&file, text).unwrap();
    let mine = Profile::load(file.to_str().unwrap()).unwrap();
    let path = dir.join("w/ck.safetensors");
    assert_eq!(mine.run.weights.as_deref(), Some(path.to_str().unwrap()));
    let err = WeightsSource::for_profile(&mine, None, DType::F16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(path.to_str().unwrap())
            && err.contains("--weights")
            && err.contains("--random-weights"),
        "{err}"
    );
    // Once the file is there, it is what the run loads.
    std::fs::write(&path, b"not read here").unwrap();
    assert_eq!(
        WeightsSource::for_profile(&mine, None, DType::F16).unwrap(),
        WeightsSource::File(path)
    );
    // A round trip through TOML keeps the resolved path.
    assert_eq!(Profile::from_toml(&mine.to_toml(), "again").unwrap(), mine);
    std::fs::remove_dir_all(&dir).unwrap();
}
