//! The profile's file form. A profile names its family (`family = "streamdit"`, the
//! default, or `"wan"`); each family has its own sections. [`RawProfile`] is the TOML as
//! written, every section optional; [`Profile`] is the resolved form every stage reads: a
//! Wan profile's `[wan]` section also fills the shared `model` and `stream` views
//! ([`WanConfig::model_view`], [`WanConfig::stream_view`]), so the text encoders, the
//! preview and the tools' common code read one shape whatever the family.
//!
//! A new family adds a variant to [`Family`], its section to [`RawProfile`], one arm to
//! [`Profile::from_raw`] and [`Profile::to_raw`], and its own module under `model/`.

use serde::{Deserialize, Serialize};

use super::profile::{
    DecoderConfig, Family, ModelConfig, Profile, RunConfig, StreamConfig, TextConfig,
    VideoConfig,
};
use super::wan::config::WanConfig;
use crate::error::{Error, Result};

/// A profile as written in TOML: sections of every family, all optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<WanConfig>,
    pub video: VideoConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<DecoderConfig>,
    pub text: TextConfig,
}

fn section_error(name: &str, family: Family, msg: String) -> Error {
    Error::Profile {
        profile: name.to_string(),
        field: format!("family = \"{}\"", family.name()),
        rule: msg,
    }
}

impl Profile {
    /// Parses and validates a profile from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Profile> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| Error::ProfileParse {
            path: origin.to_string(),
            msg: e.to_string(),
        })?;
        let profile = Profile::from_raw(raw)?;
        profile.validate()?;
        Ok(profile)
    }

    /// Renders the profile as TOML (its family's sections).
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of numbers, strings and vectors cannot fail.
        toml::to_string_pretty(&self.to_raw()).unwrap_or_default()
    }

    /// Resolves the file form: the family's sections must be present and no other family's.
    pub fn from_raw(raw: RawProfile) -> Result<Profile> {
        let family = raw.family.unwrap_or_default();
        let name = raw.name.clone();
        let need = |what: &str| {
            section_error(&name, family, format!("needs a [{what}] section, found none"))
        };
        let refuse = |what: &str, owner: &str| {
            section_error(
                &name,
                family,
                format!("has no [{what}] section ({owner} profiles do)"),
            )
        };
        match family {
            Family::StreamDit => {
                if raw.wan.is_some() {
                    return Err(refuse("wan", "wan"));
                }
                Ok(Profile {
                    name: raw.name,
                    description: raw.description,
                    family,
                    model: raw.model.ok_or_else(|| need("model"))?,
                    stream: raw.stream.ok_or_else(|| need("stream"))?,
                    video: raw.video,
                    run: raw.run.ok_or_else(|| need("run"))?,
                    decoder: raw.decoder.ok_or_else(|| need("decoder"))?,
                    text: raw.text,
                    wan: None,
                })
            }
            Family::Wan => {
                for (present, what) in [
                    (raw.model.is_some(), "model"),
                    (raw.stream.is_some(), "stream"),
                    (raw.decoder.is_some(), "decoder"),
                ] {
                    if present {
                        return Err(refuse(what, "streamdit"));
                    }
                }
                let wan = raw.wan.ok_or_else(|| need("wan"))?;
                Ok(Profile {
                    name: raw.name,
                    description: raw.description,
                    family,
                    model: wan.model_view(wan.chunk_frames),
                    stream: wan.stream_view(),
                    video: raw.video,
                    run: raw.run.unwrap_or(RunConfig {
                        seed: 0,
                        guidance: 1.0,
                        negative_prompt: String::new(),
                        weights: None,
                    }),
                    // The TAE decoder is StreamDiT's; a Wan profile has none (the Wan
                    // decoders are their own work), so the view is empty.
                    decoder: DecoderConfig {
                        widths: Vec::new(),
                        groups: 1,
                    },
                    text: raw.text,
                    wan: Some(wan),
                })
            }
        }
    }

    /// The file form: the family's own sections only.
    pub fn to_raw(&self) -> RawProfile {
        let streamdit = self.family == Family::StreamDit;
        RawProfile {
            name: self.name.clone(),
            description: self.description.clone(),
            family: (!streamdit).then_some(self.family),
            model: streamdit.then(|| self.model.clone()),
            stream: streamdit.then(|| self.stream.clone()),
            wan: self.wan.clone(),
            video: self.video.clone(),
            run: Some(self.run.clone()),
            decoder: streamdit.then(|| self.decoder.clone()),
            text: self.text.clone(),
        }
    }
}

impl Profile {
    /// A Wan profile: its `[wan]` section, the views derived from it, video, run and text.
    pub(super) fn validate_wan(&self, fail: &dyn Fn(&str, String) -> Result<()>) -> Result<()> {
        let Some(wan) = &self.wan else {
            return fail("wan", "must be given for `family = \"wan\"`".into());
        };
        if self.name.is_empty() {
            return fail("name", "must not be empty".into());
        }
        if let Err((field, rule)) = wan.check() {
            return fail(&field, rule);
        }
        self.check_common_limits(fail)?;
        if self.model != wan.model_view(wan.chunk_frames) || self.stream != wan.stream_view() {
            return fail(
                "model",
                "of a wan profile is a view of its [wan] section and must equal it (edit [wan])"
                    .into(),
            );
        }
        if !(self.video.fps.is_finite() && self.video.fps > 0.0) {
            return fail(
                "video.fps",
                format!("must be positive, found {}", self.video.fps),
            );
        }
        for (field, v) in [
            ("video.temporal_upsample", self.video.temporal_upsample),
            ("video.spatial_upsample", self.video.spatial_upsample),
        ] {
            if v == 0 {
                return fail(field, "must be at least 1, found 0".into());
            }
        }
        if self.run.guidance != 1.0 {
            return fail(
                "run.guidance",
                format!(
                    "must be 1 (the Wan streaming models are distilled: no classifier-free \
                     guidance), found {}",
                    self.run.guidance
                ),
            );
        }
        self.validate_text(fail)?;
        self.check_totals(fail)
    }
}

impl WanConfig {
    /// The view of these dimensions as the shared model section: `latent_frames` is the
    /// frames of one call (a chunk), `window` the whole chunk (a call attends to all of its
    /// own tokens). The Wan graph and the shared parts (text encoders, preview) read it.
    pub fn model_view(&self, frames: usize) -> ModelConfig {
        let [hp, wp] = self.frame_grid();
        ModelConfig {
            latent_channels: self.latent_channels,
            latent_frames: frames,
            latent_height: self.latent_height,
            latent_width: self.latent_width,
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            ffn_dim: self.ffn_dim,
            window: [frames, hp, wp],
            text_len: self.text_len,
            text_dim: self.text_dim,
        }
    }

    /// The view as the shared stream section: one chunk in flight, one call per step.
    pub fn stream_view(&self) -> StreamConfig {
        StreamConfig {
            chunks: 1,
            chunk_frames: self.chunk_frames,
            micro_steps: self.steps().max(1),
            boundaries: None,
        }
    }
}
