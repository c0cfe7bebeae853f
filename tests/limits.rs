//! Sizes no machine can hold are refused with the field's name before anything is
//! allocated or written (README, "Limits"): absurd profiles, text encoder configs and a
//! host memory limit. Each case used to abort the process in an allocation, loop for
//! hours or write gigabytes.

use serde_json::json;
use streamdit::model::limits::{MAX_PARAMETERS, MAX_STREAM_BYTES};
use streamdit::model::profile::BUILTIN_PROFILES;
use streamdit::text::clip::ClipConfig;
use streamdit::text::t5::T5Config;
use streamdit::{BackendKind, Engine, EngineParams, Error, Profile, StreamParams, WeightsSource};

/// Built-in profile `name` with each `(from, to)` replaced once.
fn builtin_with(name: &str, edits: &[(&str, &str)]) -> String {
    let mut text = BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "{name}.toml has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    text
}

/// Line edits of a built-in profile, the field refused and a word of its rule.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

fn check_refused(text: &str, field: &str, rule: &str, case: &str) {
    match Profile::from_toml(text, "test") {
        Err(Error::Profile {
            field: f, rule: r, ..
        }) => {
            assert_eq!(f, field, "{case}: {r}");
            assert!(
                r.contains(rule),
                "{case}: `{field}` rule `{r}` does not say `{rule}`"
            );
        }
        other => panic!("{case}: expected a profile error on `{field}`, got {other:?}"),
    }
}

#[test]
fn absurd_streamdit_sizes_name_the_field() {
    let limit = "the engine's limit";
    let cases: &[Case] = &[
        (&[("dim = 256", "dim = 1000000000")], "model.dim", limit),
        (&[("depth = 4", "depth = 1000000000")], "model.depth", limit),
        (&[("heads = 4", "heads = 4096")], "model.heads", limit),
        (
            &[("ffn_dim = 768", "ffn_dim = 1000000000")],
            "model.ffn_dim",
            limit,
        ),
        (
            &[
                ("latent_height = 16", "latent_height = 65536"),
                ("latent_width = 16", "latent_width = 65536"),
            ],
            "model.latent_height",
            limit,
        ),
        (
            &[("latent_channels = 8", "latent_channels = 100000")],
            "model.latent_channels",
            limit,
        ),
        (
            &[("micro_steps = 1", "micro_steps = 1000000000")],
            "stream.micro_steps",
            limit,
        ),
        (
            &[("spatial_upsample = 8", "spatial_upsample = 100000")],
            "video.spatial_upsample",
            limit,
        ),
        (
            &[("temporal_upsample = 4", "temporal_upsample = 100000")],
            "video.temporal_upsample",
            limit,
        ),
        (
            &[(
                "widths = [64, 64, 32, 16]",
                "widths = [1000000, 64, 32, 16]",
            )],
            "decoder.widths[0]",
            limit,
        ),
        // The TAE decoder's structure is checked with the profile, not at the first decode.
        (
            &[("widths = [64, 64, 32, 16]", "widths = [64, 64, 32]")],
            "decoder.widths",
            "4 widths",
        ),
        (
            &[(
                "d_model = 256, layers = 2, heads = 4, d_ff = 512 }",
                "d_model = 100000000, layers = 2, heads = 4, d_ff = 512 }",
            )],
            "text.encoders[0].random.d_model",
            limit,
        ),
        (
            &[(
                "d_model = 256, layers = 2, heads = 4, d_ff = 512 }",
                "d_model = 256, layers = 100000000, heads = 4, d_ff = 512 }",
            )],
            "text.encoders[0].random.layers",
            limit,
        ),
        // A video frame larger than any display: 4096 latent rows times 8.
        (
            &[("latent_height = 16", "latent_height = 4096")],
            "model.latent_height",
            "video pixels",
        ),
        // Tokens per call: 8 x 1024 x 1024.
        (
            &[
                ("latent_height = 16", "latent_height = 2048"),
                ("latent_width = 16", "latent_width = 2048"),
            ],
            "model.latent_frames",
            "tokens per model call",
        ),
        // Every field within its bound, the parameters together not.
        (
            &[
                ("dim = 256", "dim = 65536"),
                ("ffn_dim = 768", "ffn_dim = 262144"),
                ("depth = 4", "depth = 1024"),
            ],
            "model.dim",
            "parameters",
        ),
        // One window's attention scores: 4 heads x (8 x 256 x 256)^2 values.
        (
            &[
                ("latent_height = 16", "latent_height = 512"),
                ("latent_width = 16", "latent_width = 512"),
                ("window = [4, 8, 8]", "window = [8, 256, 256]"),
            ],
            "model.latent_frames",
            "per stream",
        ),
    ];
    for (edits, field, rule) in cases {
        check_refused(
            &builtin_with("tiny", edits),
            field,
            rule,
            &format!("{edits:?}"),
        );
    }
}

#[test]
fn absurd_wan_sizes_name_the_field() {
    let limit = "the engine's limit";
    let cases: &[Case] = &[
        (&[("dim = 48", "dim = 1000000002")], "wan.dim", limit),
        (&[("depth = 2", "depth = 1000000000")], "wan.depth", limit),
        (
            &[("window = 4 ", "window = 1000000000 ")],
            "wan.window",
            limit,
        ),
        (
            &[("latent_height = 8 ", "latent_height = 65536 ")],
            "wan.latent_height",
            limit,
        ),
        (
            &[("ffn_dim = 96", "ffn_dim = 1000000000")],
            "wan.ffn_dim",
            limit,
        ),
        (
            &[(
                "d_model = 32, layers = 2",
                "d_model = 32, layers = 1000000000",
            )],
            "text.encoders[0].random.layers",
            limit,
        ),
        (
            &[("spatial_upsample = 8", "spatial_upsample = 100000")],
            "video.spatial_upsample",
            limit,
        ),
    ];
    for (edits, field, rule) in cases {
        check_refused(
            &builtin_with("wan-tiny", edits),
            field,
            rule,
            &format!("{edits:?}"),
        );
    }
    let steps: Vec<String> = (0..2000).map(|k| format!("{}.0", 1000 - k / 2)).collect();
    let many = format!("denoising_steps = [{}]", steps.join(", "));
    check_refused(
        &builtin_with(
            "wan-tiny",
            &[("denoising_steps = [1000.0, 750.0, 500.0, 250.0]", &many)],
        ),
        "wan.denoising_steps",
        "at most 1000 steps",
        "2000 steps",
    );
}

/// The released models sit well inside the limits.
#[test]
fn builtin_profiles_fit_the_limits() {
    for (name, _) in BUILTIN_PROFILES {
        let need = Profile::builtin(name).unwrap().memory_need();
        assert!(
            need.parameters > 0 && need.stream_bytes > 0,
            "{name}: {need:?}"
        );
        assert!(need.parameters * 4 < MAX_PARAMETERS, "{name}: {need:?}");
        assert!(need.stream_bytes * 4 < MAX_STREAM_BYTES, "{name}: {need:?}");
    }
}

fn object(fields: &[(&str, u64)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::Value::Object(map)
}

/// A text encoder folder's `config.json` is bounded field by field before any weight is
/// read (a T5 with `num_layers = 1e9` reserved room for a billion blocks).
#[test]
fn absurd_text_encoder_configs_name_the_field() {
    for (key, value) in [
        ("num_layers", 1_000_000_000u64),
        ("d_model", 100_000_000),
        ("d_ff", 1_000_000_000),
        ("num_heads", 1_000_000),
        ("vocab_size", 1 << 40),
        ("relative_attention_num_buckets", 1 << 30),
    ] {
        let err = T5Config::from_json(&object(&[(key, value)]), "t5 folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("the engine's limit"),
            "T5 {key} = {value}: {err}"
        );
    }
    for (key, value) in [
        ("num_hidden_layers", 1_000_000_000u64),
        ("hidden_size", 100_000_000),
        ("intermediate_size", 1_000_000_000),
        ("max_position_embeddings", 1 << 40),
    ] {
        let err =
            ClipConfig::from_json(&object(&[(key, value), ("num_attention_heads", 1)]), "clip")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("the engine's limit"),
            "CLIP {key} = {value}: {err}"
        );
    }
    // The released configs pass.
    let umt5 = json!({ "d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
        "vocab_size": 256384, "model_type": "umt5", "feed_forward_proj": "gated-gelu" });
    T5Config::from_json(&umt5, "umt5-xxl").unwrap();
}

/// `STREAMDIT_MEMORY_LIMIT` (or `MemAvailable`) refuses an engine or a stream that cannot
/// fit, with a message naming the need, the limit and where it came from. The only test of
/// this binary that touches the environment.
#[test]
fn a_host_memory_limit_refuses_engines_and_streams() {
    let params = || EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: streamdit::DType::F16,
        },
        backend: BackendKind::Cpu,
    };
    let need = params().profile.memory_need();
    std::env::set_var("STREAMDIT_MEMORY_LIMIT", "1K");
    let err = Engine::new(params())
        .err()
        .expect("an engine under 1 KiB")
        .to_string();
    assert!(
        err.contains("host memory") && err.contains("STREAMDIT_MEMORY_LIMIT=1K"),
        "{err}"
    );
    std::env::set_var("STREAMDIT_MEMORY_LIMIT", "plenty");
    let err = Engine::new(params())
        .err()
        .expect("a bad limit")
        .to_string();
    assert!(
        err.contains("STREAMDIT_MEMORY_LIMIT") && err.contains("`plenty`"),
        "{err}"
    );
    // An engine made without a limit, then one byte too little for its stream.
    std::env::remove_var("STREAMDIT_MEMORY_LIMIT");
    let engine = Engine::new(params()).unwrap();
    std::env::set_var(
        "STREAMDIT_MEMORY_LIMIT",
        (need.stream_bytes - 1).to_string(),
    );
    let err = engine
        .stream(StreamParams::default())
        .err()
        .expect("a stream over the limit")
        .to_string();
    assert!(err.contains("a stream of profile `tiny`"), "{err}");
    std::env::set_var("STREAMDIT_MEMORY_LIMIT", need.stream_bytes.to_string());
    engine.stream(StreamParams::default()).unwrap();
    std::env::remove_var("STREAMDIT_MEMORY_LIMIT");
}
