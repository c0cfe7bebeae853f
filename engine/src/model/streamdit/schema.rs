//! The tensors of a checkpoint (docs/streamdit.md section 6, plus the preview map and the byte-level
//! text embedding), in one canonical order, each with the rule that initialises it in a
//! random checkpoint. The order matters: a tensor's position is its Philox counter word, so
//! a device can regenerate the same weights without reading a file.

use crate::model::profile::{DecoderConfig, ModelConfig};
use crate::model::tae::{TaeGraph, TensorRole};
use crate::error::Result;

/// Which part of the engine needs a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The DiT itself (docs/streamdit.md section 6): required to run a model call.
    Dit,
    /// `preview.*`: the latent-to-RGB preview decoder.
    Preview,
    /// `text_embed.weight`: the byte-level text embedding.
    TextEmbed,
    /// `decoder.*`: the temporal-autoencoder decoder (docs/tae.md), listed by
    /// [`decoder_tensors`] since its shapes come from the profile's decoder section.
    Decoder,
    /// `encoder.*`: the temporal-autoencoder encoder of video-to-video (docs/tae.md),
    /// listed by [`encoder_tensors`]; optional in a checkpoint (text-to-video runs without).
    Encoder,
}

/// How a random checkpoint initialises a tensor: uniform around `mean` with `half_width`,
/// one `(mean, half_width)` per row when `rows` is given (adaLN tables: shift, scale, gate).
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    Uniform { mean: f32, half_width: f32 },
    Rows(Vec<(f32, f32)>),
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub group: Group,
    pub init: Init,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

const SQRT3: f32 = 1.732_050_8;

// The init helpers below are shared with the other families' schemas (`model/wan`).

/// Uniform with standard deviation `std` around zero.
pub(crate) fn std_init(std: f32) -> Init {
    Init::Uniform {
        mean: 0.0,
        half_width: std * SQRT3,
    }
}

/// A linear layer's weight, `std = gain / sqrt(fan_in)`, so outputs keep their inputs' scale.
pub(crate) fn fan_in(gain: f32, inputs: usize) -> Init {
    std_init(gain / (inputs as f32).sqrt())
}

/// Small biases.
pub(crate) fn bias() -> Init {
    Init::Uniform {
        mean: 0.0,
        half_width: 0.02,
    }
}

/// adaLN rows: shifts and scales small around 0; gates in `[0.1, 0.3]`, never zero, so
/// every sub-layer changes the output while the residual stream stays O(1) over many blocks.
fn mod_rows(kinds: &[ModRow]) -> Init {
    Init::Rows(
        kinds
            .iter()
            .map(|k| match k {
                ModRow::Shift | ModRow::Scale => (0.0, 0.1),
                ModRow::Gate => (0.2, 0.1),
            })
            .collect(),
    )
}

enum ModRow {
    Shift,
    Scale,
    Gate,
}

/// The byte-level text vocabulary: 256 bytes + 3 special ids (pad 0, end 1, unknown 2).
pub const TEXT_VOCAB: usize = 259;

/// Every tensor of a checkpoint for `m`, in canonical order.
pub fn checkpoint_tensors(m: &ModelConfig) -> Vec<TensorSpec> {
    let d = m.dim;
    let dh = m.head_dim();
    let [ft, ht, wt] = m.token_grid();
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, group: Group, init: Init| {
        out.push(TensorSpec {
            name,
            shape,
            group,
            init,
        })
    };
    let dit = Group::Dit;
    let pd = m.patch_dim();
    add(
        "patch_embed.weight".into(),
        vec![d, pd],
        dit,
        fan_in(1.0, pd),
    );
    add("patch_embed.bias".into(), vec![d], dit, bias());
    for (axis, len) in [("t", ft), ("h", ht), ("w", wt)] {
        add(
            format!("pos_embed.{axis}"),
            vec![len, d],
            dit,
            std_init(0.1),
        );
    }
    add(
        "time_embed.1.weight".into(),
        vec![d, 256],
        dit,
        fan_in(1.0, 256),
    );
    add("time_embed.1.bias".into(), vec![d], dit, std_init(0.1));
    add(
        "time_embed.2.weight".into(),
        vec![d, d],
        dit,
        fan_in(1.0, d),
    );
    add("time_embed.2.bias".into(), vec![d], dit, bias());
    add(
        "time_mod.weight".into(),
        vec![6 * d, d],
        dit,
        fan_in(0.5, d),
    );
    add("time_mod.bias".into(), vec![6 * d], dit, bias());
    add(
        "text_proj.1.weight".into(),
        vec![d, m.text_dim],
        dit,
        fan_in(1.0, m.text_dim),
    );
    add("text_proj.1.bias".into(), vec![d], dit, bias());
    add("text_proj.2.weight".into(), vec![d, d], dit, fan_in(1.0, d));
    add("text_proj.2.bias".into(), vec![d], dit, bias());
    let norm_gain = || Init::Uniform {
        mean: 1.0,
        half_width: 0.2,
    };
    for l in 0..m.depth {
        let p = |s: &str| format!("blocks.{l}.{s}");
        use ModRow::*;
        add(
            p("mod_table"),
            vec![6, d],
            dit,
            mod_rows(&[Shift, Scale, Gate, Shift, Scale, Gate]),
        );
        add(p("attn.qkv.weight"), vec![3 * d, d], dit, fan_in(1.0, d));
        add(p("attn.qkv.bias"), vec![3 * d], dit, bias());
        add(p("attn.q_norm"), vec![dh], dit, norm_gain());
        add(p("attn.k_norm"), vec![dh], dit, norm_gain());
        add(p("attn.out.weight"), vec![d, d], dit, fan_in(1.0, d));
        add(p("attn.out.bias"), vec![d], dit, bias());
        add(p("cross.q.weight"), vec![d, d], dit, fan_in(1.0, d));
        add(p("cross.q.bias"), vec![d], dit, bias());
        add(p("cross.kv.weight"), vec![2 * d, d], dit, fan_in(1.0, d));
        add(p("cross.kv.bias"), vec![2 * d], dit, bias());
        add(p("cross.q_norm"), vec![dh], dit, norm_gain());
        add(p("cross.k_norm"), vec![dh], dit, norm_gain());
        // Cross-attention has no gate: a smaller output projection keeps its residual
        // contribution comparable to the gated sub-layers.
        add(p("cross.out.weight"), vec![d, d], dit, fan_in(0.5, d));
        add(p("cross.out.bias"), vec![d], dit, bias());
        add(
            p("ffn.w13.weight"),
            vec![2 * m.ffn_dim, d],
            dit,
            fan_in(1.0, d),
        );
        add(
            p("ffn.w2.weight"),
            vec![d, m.ffn_dim],
            dit,
            fan_in(1.0, m.ffn_dim),
        );
    }
    add(
        "final.mod_table".into(),
        vec![2, d],
        dit,
        mod_rows(&[ModRow::Shift, ModRow::Scale]),
    );
    add(
        "final.linear.weight".into(),
        vec![pd, d],
        dit,
        fan_in(1.0, d),
    );
    add("final.linear.bias".into(), vec![pd], dit, bias());
    let c = m.latent_channels;
    add(
        "preview.weight".into(),
        vec![3, c],
        Group::Preview,
        fan_in(0.5, c),
    );
    add(
        "preview.bias".into(),
        vec![3],
        Group::Preview,
        std_init(0.1),
    );
    add(
        "text_embed.weight".into(),
        vec![TEXT_VOCAB, m.text_dim],
        Group::TextEmbed,
        std_init(1.0),
    );
    out
}

/// Parameters of the DiT alone (docs/streamdit.md section 6).
pub fn dit_parameters(m: &ModelConfig) -> usize {
    checkpoint_tensors(m)
        .iter()
        .filter(|t| t.group == Group::Dit)
        .map(TensorSpec::numel)
        .sum()
}

/// Philox counter word of the first decoder tensor: decoder tensor `j` (in
/// [`decoder_tensors`] order) draws with counter word `DECODER_COUNTER + j`, a range of its
/// own, so that the decoder's random values do not move when DiT or text tensors are added.
pub const DECODER_COUNTER: u32 = 0x0100_0000;

/// The decoder's tensors (docs/tae.md) for latents with `latent_channels` channels, in
/// canonical order, with their init rules. Random weights keep activations O(1): GroupNorm
/// gains around 1, every convolution and projection `std = gain / sqrt(fan_in)` so each
/// keeps its input's scale, every residual branch as large as its input (never a
/// zero-initialised last layer, so no branch is hidden), and `conv_out` spreads the RGB
/// output over the byte range without saturating it (`tests/decoder.rs` measures both).
pub fn decoder_tensors(dec: &DecoderConfig, latent_channels: usize) -> Result<Vec<TensorSpec>> {
    // The tensor list does not depend on the latent height and width.
    let graph = TaeGraph::new(dec, latent_channels, 1, 1)?;
    Ok(tae_specs(&graph, Group::Decoder))
}

/// Philox counter word of the first encoder tensor: encoder tensor `j` (in
/// [`encoder_tensors`] order) draws with counter word `ENCODER_COUNTER + j`, its own range
/// like the decoder's.
pub const ENCODER_COUNTER: u32 = 0x0200_0000;

/// The encoder's tensors (docs/tae.md, "Encoder") in canonical order, initialised by the
/// decoder's rules (every gain 1, so the latents of random weights are O(1)).
pub fn encoder_tensors(dec: &DecoderConfig, latent_channels: usize) -> Result<Vec<TensorSpec>> {
    let graph = TaeGraph::encoder(dec, latent_channels, 1, 1)?;
    Ok(tae_specs(&graph, Group::Encoder))
}

fn tae_specs(graph: &TaeGraph, group: Group) -> Vec<TensorSpec> {
    graph
        .tensors()
        .into_iter()
        .map(|t| TensorSpec {
            init: match t.role {
                TensorRole::NormWeight => Init::Uniform {
                    mean: 1.0,
                    half_width: 0.2,
                },
                TensorRole::NormBias => std_init(0.1),
                TensorRole::Weight { fan_in: n, gain } => fan_in(gain, n),
                TensorRole::Bias => bias(),
                TensorRole::OutBias => std_init(0.1),
            },
            name: t.name,
            shape: t.shape,
            group,
        })
        .collect()
}
