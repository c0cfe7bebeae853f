//! The `[wan]` section of a profile (docs/wan.md section 8): the network's dimensions, the
//! causal sampler's settings (chunk, steps, window, sink, re-cache) and an optional LoRA,
//! validated field by field. The shared views the rest of the engine reads
//! (`model_view`, `stream_view`) are built in `model/profile_toml.rs`.

use serde::{Deserialize, Serialize};

use crate::model::taehv::TaehvConfig;
use crate::model::wan_vae::WanVaeConfig;

/// How keys are positioned for RoPE (docs/wan.md section 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopePositions {
    /// Every token at its absolute latent frame since the stream began (the released
    /// Self-Forcing, CausVid and LongLive configs).
    #[default]
    Absolute,
    /// LongLive's "infinity" variant: positions are cache slots. Not implemented; a profile
    /// naming it is refused with that message.
    Window,
}

/// A LoRA merged into the base weights at load (docs/wan.md section 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// A safetensors file of PEFT factors; the CLI's `--lora F` sets it. Without it the base
    /// weights run alone (and the engine says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The Wan2.1 streaming family's numbers (docs/wan.md sections 1, 5, 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanConfig {
    /// Latent channels `C` (16 for the Wan VAE).
    pub latent_channels: usize,
    /// Latent rows `H` and columns `W` (60 x 104 at 832x480).
    pub latent_height: usize,
    pub latent_width: usize,
    /// Width `D`, blocks `L`, heads `N`, FFN width `Dff`.
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    /// Width of the sinusoidal timestep embedding (256).
    pub freq_dim: usize,
    /// Text rows `Lt` (512) and text width `Dtxt` (4096, umT5-XXL).
    pub text_len: usize,
    pub text_dim: usize,
    /// `(frames, rows, columns)`; only Wan2.1's `[1, 2, 2]` is supported.
    #[serde(default = "default_patch")]
    pub patch: [usize; 3],
    /// Latent frames per chunk `c`.
    pub chunk_frames: usize,
    /// Latent frames attended by a call, sink and the chunk itself included (`Wf`).
    pub window: usize,
    /// The first frames of the stream, never evicted.
    #[serde(default)]
    pub sink: usize,
    /// On a prompt switch, re-run the window's clean frames under the new prompt (LongLive).
    #[serde(default)]
    pub recache: bool,
    #[serde(default)]
    pub rope_positions: RopePositions,
    /// Model timesteps (0..1000 scale) of the denoising steps, and the sigma of each; or
    /// derive both from `shift` and `denoising_steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigmas: Option<Vec<f64>>,
    /// Flow-matching shift of the sigma table (5 for Self-Forcing and LongLive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    /// The configured step list (`denoising_step_list`, e.g. `[1000, 750, 500, 250]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoising_steps: Option<Vec<f64>>,
    /// Warp the step list through the shifted table (`warp_denoising_step`, default true).
    #[serde(default = "yes")]
    pub warp: bool,
    /// Timestep of the pass that writes a clean chunk into the cache (`context_noise`).
    #[serde(default)]
    pub context_timestep: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The decoder a stream uses unless it names another (`"taehv"`, the default, as the
    /// real-time demos; `"wan-vae"`; `"preview"`).
    #[serde(default)]
    pub decoder: WanDecoder,
    /// The decoder's checkpoint (`taew2_1.pth` or `.safetensors`, `Wan2.1_VAE.pth`, ...):
    /// the one of the kind `decoder` names; the CLI's `--decoder-weights F` overrides it.
    /// Without it the decoder runs deterministic random weights (seeded as the DiT's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_weights: Option<String>,
    /// TAEHV's `n_f` widths (taew2_1's `[256, 128, 64, 64]` when absent; toys shrink them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taehv_widths: Option<[usize; 4]>,
    /// The Wan VAE decoder's base width `dim` (96 when absent; toys shrink it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_dim: Option<usize>,
}

/// The decoders a Wan-family stream can use (docs/taehv.md, docs/wan_vae.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WanDecoder {
    /// `madebyollin/taehv`'s tiny decoder (`taew2_1`).
    #[default]
    Taehv,
    /// The Wan 2.1 VAE decoder.
    WanVae,
    /// The cheap per-pixel latent-to-RGB preview.
    Preview,
}

impl WanDecoder {
    /// The name in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WanDecoder::Taehv => "taehv",
            WanDecoder::WanVae => "wan-vae",
            WanDecoder::Preview => "preview",
        }
    }
}

fn default_patch() -> [usize; 3] {
    [1, 2, 2]
}

fn yes() -> bool {
    true
}

/// The sigma table of SF `utils/scheduler.py::FlowMatchScheduler` with `extra_one_step` and
/// 1000 training steps: `sigma_j = shift s_j / (1 + (shift - 1) s_j)`, `s_j = 1 - j/1000`,
/// `j = 0..999`, in f64 (docs/wan.md section 6).
pub fn sigma_table(shift: f64) -> Vec<f64> {
    (0..1000)
        .map(|j| 1.0 - j as f64 / 1000.0)
        .map(|s| shift * s / (1.0 + (shift - 1.0) * s))
        .collect()
}

/// `(timesteps, sigmas)` of a step list: warped, step `T` becomes table entry `1000 - T`
/// (0 past the table); unwarped, `T` is the timestep and its sigma the nearest entry's.
pub fn schedule_from_shift(shift: f64, steps: &[f64], warp: bool) -> (Vec<f64>, Vec<f64>) {
    let table = sigma_table(shift);
    let sigma_at = |j: usize| table.get(j).copied().unwrap_or(0.0);
    if warp {
        let sig: Vec<f64> = steps
            .iter()
            .map(|&t| sigma_at((1000.0 - t).round().max(0.0) as usize))
            .collect();
        (sig.iter().map(|s| 1000.0 * s).collect(), sig)
    } else {
        let sig = steps
            .iter()
            .map(|&t| {
                let j = (0..table.len())
                    .min_by(|&a, &b| {
                        (1000.0 * table[a] - t)
                            .abs()
                            .total_cmp(&(1000.0 * table[b] - t).abs())
                    })
                    .unwrap_or(0);
                sigma_at(j)
            })
            .collect();
        (steps.to_vec(), sig)
    }
}

impl WanConfig {
    /// Head width `d = D / N`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Token grid of one latent frame `(Hp, Wp)`.
    pub fn frame_grid(&self) -> [usize; 2] {
        [self.latent_height / 2, self.latent_width / 2]
    }

    /// Tokens per latent frame `P = Hp * Wp`.
    pub fn tokens_per_frame(&self) -> usize {
        let [hp, wp] = self.frame_grid();
        hp * wp
    }

    /// Elements of one latent frame `C * H * W`.
    pub fn frame_elems(&self) -> usize {
        self.latent_channels * self.latent_height * self.latent_width
    }

    /// RoPE channel pairs of a head `(frame, row, column)` (docs/wan.md section 4).
    pub fn rope_split(&self) -> [usize; 3] {
        let half = self.head_dim() / 2;
        [half - 2 * (half / 3), half / 3, half / 3]
    }

    /// Denoising steps per chunk.
    pub fn steps(&self) -> usize {
        self.schedule().0.len()
    }

    /// The model timesteps and sigmas of the denoising steps, from the explicit lists or
    /// from `shift` and `denoising_steps`.
    pub fn schedule(&self) -> (Vec<f64>, Vec<f64>) {
        match (&self.timesteps, &self.sigmas, self.shift, &self.denoising_steps) {
            (Some(t), Some(s), _, _) => (t.clone(), s.clone()),
            (_, _, Some(shift), Some(steps)) => schedule_from_shift(shift, steps, self.warp),
            _ => (Vec::new(), Vec::new()),
        }
    }

    /// The TAEHV decoder of this profile: taew2_1's, with `taehv_widths` when given and
    /// the profile's latent channels.
    pub fn taehv_config(&self) -> TaehvConfig {
        TaehvConfig {
            latent_channels: self.latent_channels,
            widths: self.taehv_widths.unwrap_or(TaehvConfig::taew2_1().widths),
            ..TaehvConfig::taew2_1()
        }
    }

    /// The Wan VAE decoder of this profile: Wan 2.1's, with `vae_dim` when given. A toy
    /// with fewer than 16 latent channels de-normalises with the first `C` of Wan 2.1's
    /// per-channel means and standard deviations.
    pub fn wan_vae_config(&self) -> WanVaeConfig {
        let base = WanVaeConfig::wan2_1();
        let c = self.latent_channels.min(base.latent_mean.len());
        WanVaeConfig {
            z_dim: self.latent_channels,
            dim: self.vae_dim.unwrap_or(base.dim),
            latent_mean: base.latent_mean[..c].to_vec(),
            latent_std: base.latent_std[..c].to_vec(),
            ..base
        }
    }

    /// Checks every rule; the error is `(field under wan., rule)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, rule: String| Err((format!("wan.{f}"), rule));
        for (f, v) in [
            ("latent_channels", self.latent_channels),
            ("latent_height", self.latent_height),
            ("latent_width", self.latent_width),
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("ffn_dim", self.ffn_dim),
            ("freq_dim", self.freq_dim),
            ("text_len", self.text_len),
            ("text_dim", self.text_dim),
            ("chunk_frames", self.chunk_frames),
            ("window", self.window),
        ] {
            if v == 0 {
                return fail(f, "must be at least 1, found 0".into());
            }
        }
        self.check_limits()?;
        if self.patch != [1, 2, 2] {
            return fail(
                "patch",
                format!("must be [1, 2, 2] (Wan2.1's patch), found {:?}", self.patch),
            );
        }
        for (f, v) in [
            ("latent_height", self.latent_height),
            ("latent_width", self.latent_width),
        ] {
            if v % 2 != 0 {
                return fail(f, format!("must be even for the (1, 2, 2) patch, found {v}"));
            }
        }
        if self.freq_dim % 2 != 0 {
            return fail(
                "freq_dim",
                format!("must be even (cos and sin halves), found {}", self.freq_dim),
            );
        }
        if self.dim % self.heads != 0 {
            return fail(
                "heads",
                format!("must divide wan.dim {} (found {} heads)", self.dim, self.heads),
            );
        }
        let dh = self.head_dim();
        if dh % 2 != 0 || dh < 6 {
            return fail(
                "heads",
                format!(
                    "must leave an even head width of at least 6 for the 3-D RoPE pairs, found {dh}"
                ),
            );
        }
        if self.chunk_frames > self.window {
            return fail(
                "chunk_frames",
                format!(
                    "must not exceed wan.window {} (a chunk attends to itself), found {}",
                    self.window, self.chunk_frames
                ),
            );
        }
        if self.sink + self.chunk_frames > self.window {
            return fail(
                "sink",
                format!(
                    "plus wan.chunk_frames must not exceed wan.window: {} + {} > {}",
                    self.sink, self.chunk_frames, self.window
                ),
            );
        }
        if self.rope_positions == RopePositions::Window {
            return fail(
                "rope_positions",
                "\"window\" (LongLive's infinity variant) is not implemented; use \"absolute\""
                    .into(),
            );
        }
        self.check_schedule()?;
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return fail("lora.rank", "must be at least 1, found 0".into());
            }
            if !(l.alpha.is_finite() && l.alpha > 0.0) {
                return fail("lora.alpha", format!("must be positive, found {}", l.alpha));
            }
        }
        if self.decoder == WanDecoder::WanVae && self.latent_channels > 16 {
            return fail(
                "decoder",
                format!(
                    "\"wan-vae\" has de-normalisation constants for at most 16 latent channels, found wan.latent_channels {}",
                    self.latent_channels
                ),
            );
        }
        if let Some(w) = self.taehv_widths.filter(|w| w.contains(&0)) {
            return fail("taehv_widths", format!("must be positive, found {w:?}"));
        }
        if self.vae_dim.is_some_and(|d| d == 0 || d % 2 != 0) {
            return fail(
                "vae_dim",
                format!("must be positive and even, found {}", self.vae_dim.unwrap_or(0)),
            );
        }
        if !(self.context_timestep.is_finite() && (0.0..=1000.0).contains(&self.context_timestep))
        {
            return fail(
                "context_timestep",
                format!("must lie in [0, 1000], found {}", self.context_timestep),
            );
        }
        Ok(())
    }

    fn check_schedule(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, rule: String| Err((format!("wan.{f}"), rule));
        let explicit = self.timesteps.is_some() || self.sigmas.is_some();
        let derived = self.shift.is_some() || self.denoising_steps.is_some();
        if explicit == derived {
            return fail(
                "timesteps",
                "and wan.sigmas, or else wan.shift and wan.denoising_steps, must be given (one pair)"
                    .into(),
            );
        }
        if explicit && (self.timesteps.is_none() || self.sigmas.is_none()) {
            let missing = if self.timesteps.is_none() { "timesteps" } else { "sigmas" };
            return fail(missing, "must be given with its partner list".into());
        }
        if derived {
            match self.shift {
                Some(s) if s.is_finite() && s > 0.0 => {}
                Some(s) => return fail("shift", format!("must be positive, found {s}")),
                None => return fail("shift", "must be given with wan.denoising_steps".into()),
            }
            match &self.denoising_steps {
                Some(st) if st.iter().all(|t| t.is_finite() && *t > 0.0 && *t <= 1000.0) => {}
                Some(st) => {
                    return fail(
                        "denoising_steps",
                        format!("must lie in (0, 1000], found {st:?}"),
                    )
                }
                None => return fail("denoising_steps", "must be given with wan.shift".into()),
            }
        }
        let (t, s) = self.schedule();
        let field = if explicit { "timesteps" } else { "denoising_steps" };
        if t.is_empty() {
            return fail(field, "must list at least one step".into());
        }
        if t.len() != s.len() {
            return fail(
                "sigmas",
                format!("must list one sigma per timestep: {} vs {}", s.len(), t.len()),
            );
        }
        let decreasing = |v: &[f64]| v.windows(2).all(|w| w[0] > w[1]);
        if !t.iter().all(|x| x.is_finite() && *x > 0.0 && *x <= 1000.0) || !decreasing(&t) {
            return fail(
                field,
                format!("must be strictly decreasing within (0, 1000], found {t:?}"),
            );
        }
        if !s.iter().all(|x| x.is_finite() && *x > 0.0 && *x <= 1.0) || !decreasing(&s) {
            return fail(
                "sigmas",
                format!("must be strictly decreasing within (0, 1], found {s:?}"),
            );
        }
        Ok(())
    }
}
