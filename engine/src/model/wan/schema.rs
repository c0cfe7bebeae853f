//! The Wan2.1 checkpoint (docs/wan.md section 9): every tensor in the original Wan names
//! and shapes, in one canonical order with the rule that initialises it in a random
//! checkpoint, and the names a loader accepts for each (the diffusers names, behind the
//! prefixes the released `.pt` files put before them). Pure descriptions: reading files is
//! `crate::checkpoint::wan`'s.

use super::config::WanConfig;
use crate::model::streamdit::schema::{bias, fan_in, std_init, Group, Init, TensorSpec};

/// Prefixes a loader strips, tried in this order (docs/wan.md section 9): Self-Forcing,
/// CausVid and LongLive save the generator as `model.<name>` inside a `generator` or
/// `generator_ema` dict, which `streamdit convert` flattens to dotted names.
pub const ACCEPTED_PREFIXES: [&str; 5] = [
    "generator_ema.model.",
    "generator.model.",
    "generator_ema.",
    "generator.",
    "model.",
];

/// FSDP's wrapper module name, removed wherever it occurs in a name (LongLive's EMA keys).
pub const FSDP_INFIX: &str = "_fsdp_wrapped_module.";

/// Prefixes of a LoRA file's names (docs/wan.md section 10): the `generator_lora` dict of
/// LongLive's `lora.pt`, then PEFT's `base_model.model.`; each is optional.
pub const LORA_PREFIXES: [&str; 2] = ["generator_lora.", "base_model.model."];

/// How a row-structured table is initialised: `[1, k, D]` modulation tables around 0.
fn table() -> Init {
    Init::Uniform {
        mean: 0.0,
        half_width: 0.1,
    }
}

fn gain() -> Init {
    Init::Uniform {
        mean: 1.0,
        half_width: 0.2,
    }
}

/// Every tensor of a Wan checkpoint for `w` in canonical order (the order is the Philox
/// counter word of each tensor's random values), then the engine's own preview map.
///
/// Random values keep activations O(1), also in f16: every Linear `std = gain/sqrt(fan_in)`
/// (gain 1, or 0.5 for the ungated cross-attention output and the time projection, whose
/// outputs are added to the modulation tables), biases within +-0.02, norm gains in
/// [0.8, 1.2], modulation tables within +-0.1 (`tests/wan_engine.rs` checks the range of a
/// chunk's latents).
pub fn wan_tensors(w: &WanConfig) -> Vec<TensorSpec> {
    let (d, c) = (w.dim, w.latent_channels);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, init: Init| {
        out.push(TensorSpec {
            name,
            shape,
            group: Group::Dit,
            init,
        })
    };
    add(
        "patch_embedding.weight".into(),
        vec![d, c, 1, 2, 2],
        fan_in(1.0, 4 * c),
    );
    add("patch_embedding.bias".into(), vec![d], bias());
    add(
        "text_embedding.0.weight".into(),
        vec![d, w.text_dim],
        fan_in(1.0, w.text_dim),
    );
    add("text_embedding.0.bias".into(), vec![d], bias());
    add("text_embedding.2.weight".into(), vec![d, d], fan_in(1.0, d));
    add("text_embedding.2.bias".into(), vec![d], bias());
    add(
        "time_embedding.0.weight".into(),
        vec![d, w.freq_dim],
        fan_in(1.0, w.freq_dim),
    );
    add("time_embedding.0.bias".into(), vec![d], std_init(0.1));
    add("time_embedding.2.weight".into(), vec![d, d], fan_in(1.0, d));
    add("time_embedding.2.bias".into(), vec![d], bias());
    add(
        "time_projection.1.weight".into(),
        vec![6 * d, d],
        fan_in(0.5, d),
    );
    add("time_projection.1.bias".into(), vec![6 * d], bias());
    for l in 0..w.depth {
        let b = |s: &str| format!("blocks.{l}.{s}");
        add(b("modulation"), vec![1, 6, d], table());
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                let g = if attn == "cross_attn" && p == "o" {
                    0.5
                } else {
                    1.0
                };
                add(b(&format!("{attn}.{p}.weight")), vec![d, d], fan_in(g, d));
                add(b(&format!("{attn}.{p}.bias")), vec![d], bias());
            }
            add(b(&format!("{attn}.norm_q.weight")), vec![d], gain());
            add(b(&format!("{attn}.norm_k.weight")), vec![d], gain());
        }
        add(b("norm3.weight"), vec![d], gain());
        add(b("norm3.bias"), vec![d], std_init(0.1));
        add(b("ffn.0.weight"), vec![w.ffn_dim, d], fan_in(1.0, d));
        add(b("ffn.0.bias"), vec![w.ffn_dim], bias());
        add(b("ffn.2.weight"), vec![d, w.ffn_dim], fan_in(1.0, w.ffn_dim));
        add(b("ffn.2.bias"), vec![d], bias());
    }
    add("head.modulation".into(), vec![1, 2, d], table());
    add("head.head.weight".into(), vec![4 * c, d], fan_in(1.0, d));
    add("head.head.bias".into(), vec![4 * c], bias());
    out.push(TensorSpec {
        name: "preview.weight".into(),
        shape: vec![3, c],
        group: Group::Preview,
        init: fan_in(0.5, c),
    });
    out.push(TensorSpec {
        name: "preview.bias".into(),
        shape: vec![3],
        group: Group::Preview,
        init: std_init(0.1),
    });
    out
}

/// Parameters of the network alone (the `Dit` group): 1,418,996,800 for Wan2.1-T2V-1.3B.
pub fn wan_parameters(w: &WanConfig) -> usize {
    wan_tensors(w)
        .iter()
        .filter(|t| t.group == Group::Dit)
        .map(TensorSpec::numel)
        .sum()
}

/// The preview map of a checkpoint without `preview.*` (the released Wan files): a fixed
/// false-colour view, `weight[k][c] = (2/C) cos(2 pi (c/C - k/3))`, bias 0, so channels
/// mix into red, green and blue with phases a third of a turn apart. It shows structure
/// and motion, not the colours the VAE would decode.
pub fn default_preview(channels: usize) -> (Vec<f32>, Vec<f32>) {
    let cf = channels as f64;
    let weight = (0..3)
        .flat_map(|k| {
            (0..channels).map(move |c| {
                let phase = c as f64 / cf - k as f64 / 3.0;
                (2.0 / cf * (2.0 * std::f64::consts::PI * phase).cos()) as f32
            })
        })
        .collect();
    (weight, vec![0.0; 3])
}

/// The original Wan name of a diffusers name (docs/wan.md section 9), `None` if `name` is
/// not one.
pub fn diffusers_to_original(name: &str) -> Option<String> {
    const TOP: [(&str, &str); 8] = [
        (
            "condition_embedder.text_embedder.linear_1.",
            "text_embedding.0.",
        ),
        (
            "condition_embedder.text_embedder.linear_2.",
            "text_embedding.2.",
        ),
        (
            "condition_embedder.time_embedder.linear_1.",
            "time_embedding.0.",
        ),
        (
            "condition_embedder.time_embedder.linear_2.",
            "time_embedding.2.",
        ),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("proj_out.", "head.head."),
        ("scale_shift_table", "head.modulation"),
        ("patch_embedding.", "patch_embedding."),
    ];
    for (from, to) in TOP {
        if let Some(rest) = name.strip_prefix(from) {
            if from == "scale_shift_table" && !rest.is_empty() {
                return None;
            }
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = name.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    const BLOCK: [(&str, &str); 13] = [
        ("scale_shift_table", "modulation"),
        ("attn1.to_q.", "self_attn.q."),
        ("attn1.to_k.", "self_attn.k."),
        ("attn1.to_v.", "self_attn.v."),
        ("attn1.to_out.0.", "self_attn.o."),
        ("attn1.norm_", "self_attn.norm_"),
        ("attn2.to_q.", "cross_attn.q."),
        ("attn2.to_k.", "cross_attn.k."),
        ("attn2.to_v.", "cross_attn.v."),
        ("attn2.to_out.0.", "cross_attn.o."),
        ("attn2.norm_", "cross_attn.norm_"),
        ("norm2.", "norm3."),
        ("ffn.net.0.proj.", "ffn.0."),
    ];
    for (from, to) in BLOCK {
        if let Some(tail) = part.strip_prefix(from) {
            if from == "scale_shift_table" && !tail.is_empty() {
                return None;
            }
            return Some(format!("blocks.{layer}.{to}{tail}"));
        }
    }
    let tail = part.strip_prefix("ffn.net.2.")?;
    Some(format!("blocks.{layer}.ffn.2.{tail}"))
}

/// What a stored name becomes: `_fsdp_wrapped_module.` removed, one accepted prefix
/// stripped (the first of [`ACCEPTED_PREFIXES`] that leaves a known name), a diffusers name
/// mapped to the original one. `is_known` says whether an original name exists. Returns the
/// original name and the prefix stripped (`""` for none).
pub fn canonical_name(stored: &str, is_known: &dyn Fn(&str) -> bool) -> Option<(String, String)> {
    let plain = stored.replace(FSDP_INFIX, "");
    let resolve = |n: &str| -> Option<String> {
        if is_known(n) {
            return Some(n.to_string());
        }
        diffusers_to_original(n).filter(|o| is_known(o))
    };
    if let Some(n) = resolve(&plain) {
        return Some((n, String::new()));
    }
    ACCEPTED_PREFIXES.iter().find_map(|p| {
        plain
            .strip_prefix(p)
            .and_then(resolve)
            .map(|n| (n, p.to_string()))
    })
}
