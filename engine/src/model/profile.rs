//! Run profiles: the model's dimensions, the streaming schedule and run settings, read from
//! TOML and validated so that every later stage can rely on the numbers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::streamdit::schema::decoder_tensors;
use super::wan::config::WanConfig;
use crate::error::{Error, Result};

/// The profiles shipped inside the engine (docs/streamdit.md section 7, docs/wan.md section
/// 8), as `(name, TOML)`.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("tiny", include_str!("../../../profiles/tiny.toml")),
    (
        "streamdit-4b",
        include_str!("../../../profiles/streamdit-4b.toml"),
    ),
    (
        "streamdit-4b-teacher",
        include_str!("../../../profiles/streamdit-4b-teacher.toml"),
    ),
    ("wan-tiny", include_str!("../../../profiles/wan-tiny.toml")),
    ("wan-1.3b", include_str!("../../../profiles/wan-1.3b.toml")),
    (
        "wan-1.3b-longlive",
        include_str!("../../../profiles/wan-1.3b-longlive.toml"),
    ),
];

/// Which model family a profile runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// StreamDiT's moving buffer (docs/streamdit.md): sections `[model]`, `[stream]`,
    /// `[decoder]`.
    #[default]
    StreamDit,
    /// The Wan2.1 causal streaming family (docs/wan.md): section `[wan]`.
    Wan,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::StreamDit => "streamdit",
            Family::Wan => "wan",
        }
    }
}

/// A complete run profile. In TOML each family writes its own sections
/// (`crate::model::profile_toml`: [`Profile::from_toml`], [`Profile::to_toml`]); a Wan
/// profile's `model` and `stream` are views of its `[wan]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// The model family (StreamDiT unless the profile says `family = "wan"`).
    pub family: Family,
    pub model: ModelConfig,
    pub stream: StreamConfig,
    pub video: VideoConfig,
    pub run: RunConfig,
    pub decoder: DecoderConfig,
    pub text: TextConfig,
    /// The Wan family's section (`family = "wan"` only).
    pub wan: Option<WanConfig>,
}

/// The DiT's dimensions (docs/streamdit.md section 1). The patch is `(1, 2, 2)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Latent channels `C`.
    pub latent_channels: usize,
    /// Latent frames in the moving buffer `F`.
    pub latent_frames: usize,
    /// Latent height `H`.
    pub latent_height: usize,
    /// Latent width `W`.
    pub latent_width: usize,
    /// Model width `D`.
    pub dim: usize,
    /// Number of blocks `L`.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN width `Dff`.
    pub ffn_dim: usize,
    /// Self-attention window `(Fw, Hw, Ww)` in tokens.
    pub window: [usize; 3],
    /// Text tokens `Lt`.
    pub text_len: usize,
    /// Text embedding width `Dtxt`.
    pub text_dim: usize,
}

/// The moving buffer and its schedule (docs/streamdit.md section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Chunks in the buffer `N`.
    pub chunks: usize,
    /// Latent frames per chunk `c`.
    pub chunk_frames: usize,
    /// Micro-steps per chunk stage `s`.
    pub micro_steps: usize,
    /// Stage boundaries `b_0 = 0 < ... < b_N = 1`; linear `k/N` when absent.
    #[serde(default)]
    pub boundaries: Option<Vec<f64>>,
}

/// How latents map to video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// Video frames per second.
    pub fps: f64,
    /// Video frames per latent frame (temporal compression).
    pub temporal_upsample: usize,
    /// Pixels per latent pixel along each axis (spatial compression).
    pub spatial_upsample: usize,
}

/// Run settings a stream starts with; each can be overridden per stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Noise seed.
    pub seed: u64,
    /// Classifier-free guidance scale; `1.0` disables CFG.
    pub guidance: f32,
    /// Prompt of the unconditional branch when CFG is on.
    #[serde(default)]
    pub negative_prompt: String,
    /// The checkpoint this profile runs when a run names none (no `--weights`, a NULL
    /// `checkpoint` in the C ABI): relative to the TOML file's folder (`profiles/` of the
    /// repository for a built-in profile); absolute once loaded. Absent: deterministic
    /// random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// The temporal-autoencoder decoder this profile pairs with (docs/tae.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Channel widths of the decoder stages.
    pub widths: Vec<usize>,
    /// GroupNorm groups.
    pub groups: usize,
}

/// The text conditioning: encoders whose outputs are concatenated along the sequence into
/// `text [Lt, Dtxt]` and `text_mask [Lt]`, in the order listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Where the encoders' linear layers run: `cpu` (default; no GPU memory) or `backend`
    /// (the model's device, through the engine's FP16 GEMM kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub encoders: Vec<TextEncoderConfig>,
}

/// One text encoder of the conditioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// Names the encoder in errors, in `--text-dir NAME=PATH` and in its adapter tensor
    /// `text_adapter.{name}.weight [Dtxt, d_model]` (+ `.bias`) of the DiT checkpoint.
    pub name: String,
    /// `t5` (T5 v1.1, UL2, ByT5, umT5), `clip` (CLIP text model) or `byte` (the byte-level
    /// embedding `text_embed.weight` of the DiT checkpoint).
    pub kind: String,
    /// Tokens this encoder contributes (truncation and padding length).
    pub len: usize,
    /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// `bytes` for ByT5's byte tokenizer; otherwise the folder's `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Without `dir`: a deterministic random encoder of this shape stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomEncoderConfig>,
}

/// The shape of a random stand-in encoder (the profile's `tiny` encoders, or a stand-in for
/// a folder that is not downloaded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomEncoderConfig {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub d_ff: usize,
    /// T5 head width; `d_model / heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_kv: Option<usize>,
    /// T5 `feed_forward_proj` (default `gated-gelu`) or CLIP `hidden_act` (default `quick_gelu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<String>,
    /// umT5: a relative position bias in every block, not only the first.
    #[serde(default)]
    pub per_layer_bias: bool,
    #[serde(default)]
    pub seed: u64,
}

impl ModelConfig {
    /// Token grid `(Ft, Ht, Wt)` after the `(1, 2, 2)` patch.
    pub fn token_grid(&self) -> [usize; 3] {
        [
            self.latent_frames,
            self.latent_height / 2,
            self.latent_width / 2,
        ]
    }

    /// Tokens per model call and branch, `Ft * Ht * Wt`.
    pub fn tokens(&self) -> usize {
        self.token_grid().iter().product()
    }

    /// Tokens in one latent frame, `Ht * Wt`.
    pub fn tokens_per_frame(&self) -> usize {
        let [_, ht, wt] = self.token_grid();
        ht * wt
    }

    /// Head size `dh = D / heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Entries of one patch token, `C * 4`.
    pub fn patch_dim(&self) -> usize {
        self.latent_channels * 4
    }

    /// Elements of one latent frame, `C * H * W`.
    pub fn frame_elems(&self) -> usize {
        self.latent_channels * self.latent_height * self.latent_width
    }

    /// Elements of the whole latent buffer, `F * C * H * W`.
    pub fn buffer_elems(&self) -> usize {
        self.latent_frames * self.frame_elems()
    }

    /// The window shift of block `l`: zero for even blocks, half a window for odd ones.
    pub fn window_shift(&self, layer: usize) -> [usize; 3] {
        if layer % 2 == 0 {
            [0, 0, 0]
        } else {
            self.window.map(|w| w / 2)
        }
    }
}

impl StreamConfig {
    /// The stage boundaries, linear when the profile lists none.
    pub fn boundaries(&self) -> Vec<f64> {
        match &self.boundaries {
            Some(b) => b.clone(),
            None => (0..=self.chunks)
                .map(|k| k as f64 / self.chunks as f64)
                .collect(),
        }
    }
}

impl VideoConfig {
    /// Video frames shown per latent chunk of `c` frames.
    pub fn frames_per_chunk(&self, chunk_frames: usize) -> usize {
        chunk_frames * self.temporal_upsample
    }
}

impl Profile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Profile> {
        let (_, text) = BUILTIN_PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no built-in profile `{name}`: expected one of {}",
                    builtin_names().join(", ")
                ))
            })?;
        let mut p = Profile::from_toml(text, &format!("built-in `{name}`"))?;
        // Relative to the TOML's folder, `profiles/` of the repository (the engine crate's
        // sibling), as for a profile read from a file.
        p.resolve_weights(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles"));
        Ok(p)
    }

    /// A built-in profile name, or else a path to a TOML file.
    pub fn load(name_or_path: &str) -> Result<Profile> {
        if BUILTIN_PROFILES.iter().any(|(n, _)| *n == name_or_path) {
            return Profile::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "profile `{name_or_path}` is neither a built-in profile ({}) nor an existing file",
                builtin_names().join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut p = Profile::from_toml(&text, &path.display().to_string())?;
        p.resolve_weights(path.parent().unwrap_or(Path::new(".")));
        Ok(p)
    }

    /// Makes a relative `run.weights` absolute against `root`, with `..` folded away.
    fn resolve_weights(&mut self, root: &Path) {
        use std::path::{Component, PathBuf};
        if let Some(w) = &self.run.weights {
            if Path::new(w).is_relative() {
                let mut out = PathBuf::new();
                for c in root.join(w).components() {
                    match c {
                        Component::ParentDir
                            if matches!(
                                out.components().next_back(),
                                Some(Component::Normal(_))
                            ) =>
                        {
                            out.pop();
                        }
                        c => out.push(c),
                    }
                }
                self.run.weights = Some(out.display().to_string());
            }
        }
    }

    /// The `[wan]` section, or an error naming the profile's family.
    pub fn wan(&self) -> Result<&WanConfig> {
        self.wan.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "profile `{}` is of the {} family, not wan",
                self.name,
                self.family.name()
            ))
        })
    }

    /// Whether classifier-free guidance is on (two branches per call).
    pub fn cfg(&self) -> bool {
        self.run.guidance != 1.0
    }

    /// Checks every rule the rest of the engine relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, rule: String| -> Result<()> {
            Err(Error::Profile {
                profile: self.name.clone(),
                field: field.to_string(),
                rule,
            })
        };
        if self.family == Family::Wan {
            return self.validate_wan(&fail);
        }
        if self.wan.is_some() {
            return fail("wan", "belongs to `family = \"wan\"` profiles only".into());
        }
        let m = &self.model;
        let positive = [
            ("model.latent_channels", m.latent_channels),
            ("model.latent_frames", m.latent_frames),
            ("model.latent_height", m.latent_height),
            ("model.latent_width", m.latent_width),
            ("model.dim", m.dim),
            ("model.depth", m.depth),
            ("model.heads", m.heads),
            ("model.ffn_dim", m.ffn_dim),
            ("model.text_len", m.text_len),
            ("model.text_dim", m.text_dim),
            ("stream.chunks", self.stream.chunks),
            ("stream.chunk_frames", self.stream.chunk_frames),
            ("stream.micro_steps", self.stream.micro_steps),
            ("video.temporal_upsample", self.video.temporal_upsample),
            ("video.spatial_upsample", self.video.spatial_upsample),
            ("decoder.groups", self.decoder.groups),
        ];
        for (field, value) in positive {
            if value == 0 {
                return fail(field, "must be at least 1, found 0".into());
            }
        }
        if self.name.is_empty() {
            return fail("name", "must not be empty".into());
        }
        self.check_limits(&fail)?;
        for (field, v) in [
            ("model.latent_height", m.latent_height),
            ("model.latent_width", m.latent_width),
        ] {
            if v % 2 != 0 {
                return fail(
                    field,
                    format!("must be even for the (1, 2, 2) patch, found {v}"),
                );
            }
        }
        if m.dim % m.heads != 0 {
            return fail(
                "model.heads",
                format!("must divide model.dim {} (found {} heads)", m.dim, m.heads),
            );
        }
        let grid = m.token_grid();
        if m.window.contains(&0) {
            return fail(
                "model.window",
                format!("must be positive, found {:?}", m.window),
            );
        }
        if grid.iter().zip(m.window).any(|(&g, w)| g % w != 0) {
            return fail(
                "model.window",
                format!(
                    "must divide the token grid {grid:?} (Ft, Ht, Wt), found {:?}",
                    m.window
                ),
            );
        }
        let s = &self.stream;
        if s.chunks * s.chunk_frames != m.latent_frames {
            return fail(
                "stream.chunks",
                format!(
                    "times stream.chunk_frames must equal model.latent_frames (N*c = F): {} * {} != {}",
                    s.chunks, s.chunk_frames, m.latent_frames
                ),
            );
        }
        if let Some(b) = &s.boundaries {
            if b.len() != s.chunks + 1 {
                return fail(
                    "stream.boundaries",
                    format!(
                        "must list stream.chunks + 1 = {} values, found {}",
                        s.chunks + 1,
                        b.len()
                    ),
                );
            }
            if b[0] != 0.0 || b[s.chunks] != 1.0 {
                return fail(
                    "stream.boundaries",
                    format!("must start at 0 and end at 1, found {b:?}"),
                );
            }
            if b.windows(2)
                .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
            {
                return fail(
                    "stream.boundaries",
                    format!("must be strictly increasing, found {b:?}"),
                );
            }
        }
        if !(self.video.fps.is_finite() && self.video.fps > 0.0) {
            return fail(
                "video.fps",
                format!("must be positive, found {}", self.video.fps),
            );
        }
        if !self.run.guidance.is_finite() {
            return fail(
                "run.guidance",
                format!("must be finite, found {}", self.run.guidance),
            );
        }
        if self.decoder.widths.is_empty() || self.decoder.widths.contains(&0) {
            return fail(
                "decoder.widths",
                format!("must list positive widths, found {:?}", self.decoder.widths),
            );
        }
        if let Some(w) = self
            .decoder
            .widths
            .iter()
            .find(|&&w| w % self.decoder.groups != 0)
        {
            return fail(
                "decoder.groups",
                format!(
                    "must divide every decoder width, found {} groups and width {w}",
                    self.decoder.groups
                ),
            );
        }
        if let Err(e) = decoder_tensors(&self.decoder, m.latent_channels) {
            return fail("decoder.widths", format!("must suit the TAE decoder: {e}"));
        }
        self.validate_text(&fail)?;
        self.check_totals(&fail)
    }
}

impl TextConfig {
    /// Points encoder `name` at a model folder (the CLI's `--text-dir NAME=PATH`).
    pub fn set_dir(&mut self, name: &str, dir: &str) -> Result<()> {
        let names: Vec<String> = self.encoders.iter().map(|e| e.name.clone()).collect();
        let e = self
            .encoders
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "text encoder `{name}`: expected one of {}",
                    names.join(", ")
                ))
            })?;
        e.dir = Some(dir.to_string());
        Ok(())
    }
}

impl Profile {
    pub(super) fn validate_text(&self, fail: &dyn Fn(&str, String) -> Result<()>) -> Result<()> {
        if let Some(d) = &self.text.device {
            if d != "cpu" && d != "backend" {
                return fail(
                    "text.device",
                    format!("must be cpu or backend, found `{d}`"),
                );
            }
        }
        let enc = &self.text.encoders;
        if enc.is_empty() {
            return fail("text.encoders", "must list at least one encoder".into());
        }
        let total: usize = enc.iter().map(|e| e.len).sum();
        if total != self.model.text_len {
            return fail(
                "text.encoders",
                format!(
                    "lengths must sum to model.text_len {}, found {total}",
                    self.model.text_len
                ),
            );
        }
        for (i, e) in enc.iter().enumerate() {
            let field = |f: &str| format!("text.encoders[{i}].{f}");
            if e.name.is_empty() || enc[..i].iter().any(|o| o.name == e.name) {
                return fail(
                    &field("name"),
                    format!("must be unique and non-empty, found `{}`", e.name),
                );
            }
            let min_len = if e.kind == "clip" { 2 } else { 1 };
            if e.len < min_len {
                return fail(
                    &field("len"),
                    format!(
                        "must be at least {min_len} for a `{}` encoder, found {}",
                        e.kind, e.len
                    ),
                );
            }
            match e.kind.as_str() {
                "t5" | "clip" => {
                    if e.dir.is_none() && e.random.is_none() {
                        return fail(&field("dir"), "or `random` must be given".into());
                    }
                }
                "byte" => {}
                k => {
                    return fail(
                        &field("kind"),
                        format!("must be one of t5, clip, byte, found `{k}`"),
                    )
                }
            }
            if let Some(t) = &e.tokenizer {
                if t != "bytes" {
                    return fail(
                        &field("tokenizer"),
                        format!("must be `bytes` when given, found `{t}`"),
                    );
                }
            }
            if let Some(r) = &e.random {
                for (f, v) in [
                    ("d_model", r.d_model),
                    ("layers", r.layers),
                    ("heads", r.heads),
                    ("d_ff", r.d_ff),
                ] {
                    if v == 0 {
                        return fail(
                            &field(&format!("random.{f}")),
                            "must be at least 1, found 0".into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect()
}
