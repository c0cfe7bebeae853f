//! The largest sizes a profile may ask for, and the memory a run of it needs at least.
//!
//! Every size in a profile is bounded here before anything is allocated or written, so that
//! a typo (`dim = 1000000000`) is refused with the field's name instead of aborting the
//! process in an allocation, looping for hours (`micro_steps = 1e9`) or wrapping an
//! integer. The bounds are far above every released model of both families (README,
//! "Limits") and small enough that every size the engine derives from them (parameter
//! counts, byte counts, FLOPs) fits a `u64` without overflow. [`Profile::memory_need`]
//! then estimates, in `u128`, the host memory a run needs at the least; the totals are
//! bounded here, and `crate::memory::host` compares them with what the machine has.

use super::profile::{Family, Profile};
use super::streamdit::schema::{checkpoint_tensors, decoder_tensors, TensorSpec};
use super::wan::config::WanConfig;
use super::wan::schema::wan_tensors;
use crate::error::Result;

/// Model, text and decoder widths (`dim`, `text_dim`, `d_model`, `freq_dim`, decoder widths).
pub const MAX_WIDTH: usize = 65_536;
/// Widest channel count of a Wan-family decoder stage (the released ones use 384 at most).
pub const MAX_DECODER_WIDTH: usize = 4096;
/// Feed-forward widths (`ffn_dim`, `d_ff`).
pub const MAX_FFN: usize = 262_144;
/// Blocks of the DiT and layers of a text encoder.
pub const MAX_DEPTH: usize = 1_024;
/// Attention heads.
pub const MAX_HEADS: usize = 1_024;
/// Latent channels.
pub const MAX_CHANNELS: usize = 1_024;
/// Latent rows and columns.
pub const MAX_LATENT_SIDE: usize = 4_096;
/// Latent frames of the moving buffer or of the Wan attention window, and chunks.
pub const MAX_LATENT_FRAMES: usize = 4_096;
/// Text tokens, in all and per encoder.
pub const MAX_TEXT_LEN: usize = 65_536;
/// Text encoders of a profile.
pub const MAX_ENCODERS: usize = 16;
/// Micro-steps per stage (StreamDiT) and denoising steps per chunk (Wan).
pub const MAX_STEPS: usize = 1_000;
/// Temporal and spatial upsampling of the decoder.
pub const MAX_UPSAMPLE: usize = 64;
/// Rows and columns of a video frame.
pub const MAX_VIDEO_SIDE: usize = 16_384;
/// Tokens of one model call and branch.
pub const MAX_TOKENS: usize = 1 << 20;
/// Parameters of the DiT, decoder and random text encoders together (68.7 billion).
pub const MAX_PARAMETERS: u128 = 1 << 36;
/// Host bytes of one stream's working memory (1 TiB).
pub const MAX_STREAM_BYTES: u128 = 1 << 40;

/// The host memory a run needs at the least, in bytes (f32 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Parameters of the DiT, the decoder and the random text encoders.
    pub parameters: u128,
    /// The random text encoders' share of `parameters` (always on the host).
    pub text_parameters: u128,
    /// The weights as f32 on the host (the CPU backend's copy).
    pub weight_bytes: u128,
    /// One stream's latents, activations, attention scores and a decoded chunk.
    pub stream_bytes: u128,
}

type Fail<'a> = &'a dyn Fn(&str, String) -> Result<()>;

/// `field` must not exceed `max`.
fn at_most(fail: Fail, field: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return fail(
            field,
            format!("must be at most {max} (the engine's limit), found {value}"),
        );
    }
    Ok(())
}

fn numel(specs: &[TensorSpec]) -> u128 {
    specs.iter().map(|t| t.numel() as u128).sum()
}

impl Profile {
    /// The StreamDiT sections' sizes against the limits (after the zero checks).
    pub(super) fn check_limits(&self, fail: Fail) -> Result<()> {
        let m = &self.model;
        for (field, value, max) in [
            ("model.latent_channels", m.latent_channels, MAX_CHANNELS),
            ("model.latent_frames", m.latent_frames, MAX_LATENT_FRAMES),
            ("model.latent_height", m.latent_height, MAX_LATENT_SIDE),
            ("model.latent_width", m.latent_width, MAX_LATENT_SIDE),
            ("model.dim", m.dim, MAX_WIDTH),
            ("model.depth", m.depth, MAX_DEPTH),
            ("model.heads", m.heads, MAX_HEADS),
            ("model.ffn_dim", m.ffn_dim, MAX_FFN),
            ("model.text_len", m.text_len, MAX_TEXT_LEN),
            ("model.text_dim", m.text_dim, MAX_WIDTH),
            ("stream.chunks", self.stream.chunks, MAX_LATENT_FRAMES),
            ("stream.chunk_frames", self.stream.chunk_frames, MAX_LATENT_FRAMES),
            ("stream.micro_steps", self.stream.micro_steps, MAX_STEPS),
            ("decoder.groups", self.decoder.groups, MAX_WIDTH),
        ] {
            at_most(fail, field, value, max)?;
        }
        for (i, &w) in self.decoder.widths.iter().enumerate() {
            at_most(fail, &format!("decoder.widths[{i}]"), w, MAX_WIDTH)?;
        }
        self.check_common_limits(fail)
    }

    /// The sections every family has: video, text, and the totals.
    pub(super) fn check_common_limits(&self, fail: Fail) -> Result<()> {
        let v = &self.video;
        at_most(fail, "video.temporal_upsample", v.temporal_upsample, MAX_UPSAMPLE)?;
        at_most(fail, "video.spatial_upsample", v.spatial_upsample, MAX_UPSAMPLE)?;
        for (field, side) in [
            ("model.latent_height", self.model.latent_height),
            ("model.latent_width", self.model.latent_width),
        ] {
            let pixels = side * v.spatial_upsample;
            if pixels > MAX_VIDEO_SIDE {
                return fail(
                    field,
                    format!(
                        "times video.spatial_upsample {} gives {pixels} video pixels, more than \
                         the engine's limit {MAX_VIDEO_SIDE}",
                        v.spatial_upsample
                    ),
                );
            }
        }
        let tokens = self.model.tokens();
        if tokens > MAX_TOKENS {
            return fail(
                "model.latent_frames",
                format!(
                    "times the token grid gives {tokens} tokens per model call, more than the \
                     engine's limit {MAX_TOKENS}"
                ),
            );
        }
        let enc = &self.text.encoders;
        if enc.len() > MAX_ENCODERS {
            return fail(
                "text.encoders",
                format!("must list at most {MAX_ENCODERS} encoders, found {}", enc.len()),
            );
        }
        for (i, e) in enc.iter().enumerate() {
            let field = |f: &str| format!("text.encoders[{i}].{f}");
            at_most(fail, &field("len"), e.len, MAX_TEXT_LEN)?;
            if let Some(r) = &e.random {
                at_most(fail, &field("random.d_model"), r.d_model, MAX_WIDTH)?;
                at_most(fail, &field("random.layers"), r.layers, MAX_DEPTH)?;
                at_most(fail, &field("random.heads"), r.heads, MAX_HEADS)?;
                at_most(fail, &field("random.d_ff"), r.d_ff, MAX_FFN)?;
                at_most(fail, &field("random.d_kv"), r.d_kv.unwrap_or(1), MAX_WIDTH)?;
            }
        }
        Ok(())
    }

    /// The totals: parameters and one stream's memory, after every field is bounded.
    pub(super) fn check_totals(&self, fail: Fail) -> Result<()> {
        let need = self.memory_need();
        if need.parameters > MAX_PARAMETERS {
            let field = if self.family == Family::Wan { "wan.dim" } else { "model.dim" };
            return fail(
                field,
                format!(
                    "and the other sizes give {} parameters, more than the engine's limit {} \
                     ({:.1} GB as f32)",
                    need.parameters,
                    MAX_PARAMETERS,
                    need.weight_bytes as f64 / 1e9
                ),
            );
        }
        if need.stream_bytes > MAX_STREAM_BYTES {
            return fail(
                "model.latent_frames",
                format!(
                    "and the other sizes need {:.1} GB per stream, more than the engine's \
                     limit {:.1} GB",
                    need.stream_bytes as f64 / 1e9,
                    MAX_STREAM_BYTES as f64 / 1e9
                ),
            );
        }
        Ok(())
    }

    /// The host memory a run of this profile needs at the least. Call it on a validated
    /// profile (every size bounded), so no product overflows.
    pub fn memory_need(&self) -> MemoryNeed {
        let m = &self.model;
        let text = self.text_parameters();
        let (dit, stream) = match (&self.wan, self.family) {
            (Some(w), Family::Wan) => (numel(&wan_tensors(w)), wan_stream_bytes(w)),
            _ => {
                let decoder = decoder_tensors(&self.decoder, m.latent_channels)
                    .map(|t| numel(&t))
                    .unwrap_or(0);
                (numel(&checkpoint_tensors(m)) + decoder, self.streamdit_stream_bytes())
            }
        };
        let parameters = dit + text;
        MemoryNeed {
            parameters,
            text_parameters: text,
            weight_bytes: parameters * 4,
            stream_bytes: stream + self.decoded_chunk_bytes(),
        }
    }

    /// Random stand-in encoders: embedding table, attention and FFN of every layer.
    fn text_parameters(&self) -> u128 {
        self.text
            .encoders
            .iter()
            .filter_map(|e| e.random.as_ref())
            .map(|r| {
                let d = r.d_model as u128;
                let inner = (r.heads * r.d_kv.unwrap_or(r.d_model / r.heads.max(1))) as u128;
                let layer = 4 * d * inner + 3 * d * r.d_ff as u128;
                r.layers as u128 * layer + 1024 * d
            })
            .sum()
    }

    /// The moving buffer and its noise (f32), each branch's activations of one block (the
    /// input, Q, K, V and FFN hidden rows of every token) and one window's attention scores.
    fn streamdit_stream_bytes(&self) -> u128 {
        let m = &self.model;
        let branches: u128 = if self.cfg() { 2 } else { 1 };
        let tokens = m.tokens() as u128;
        let window = m.window.iter().map(|&w| w as u128).product::<u128>();
        let buffer = 2 * m.buffer_elems() as u128;
        let acts = branches * tokens * (4 * m.dim as u128 + m.ffn_dim as u128);
        let scores = branches * m.heads as u128 * window * window;
        4 * (buffer + acts + scores)
    }

    /// One chunk's decoded RGB frames (bytes) and the decoder's widest activation (f32).
    fn decoded_chunk_bytes(&self) -> u128 {
        let v = &self.video;
        let frames = (self.stream.chunk_frames * v.temporal_upsample) as u128;
        let pixels = (self.model.latent_height * v.spatial_upsample) as u128
            * (self.model.latent_width * v.spatial_upsample) as u128;
        let widest = self.decoder.widths.last().copied().unwrap_or(3).max(3) as u128;
        frames * pixels * (3 + 4 * widest)
    }
}

/// A Wan stream: the KV cache of every block over the window, one chunk's activations and
/// its attention scores against the window.
fn wan_stream_bytes(w: &WanConfig) -> u128 {
    let p = w.tokens_per_frame() as u128;
    let cache = 2 * w.depth as u128 * w.window as u128 * p * w.dim as u128;
    let tokens = w.chunk_frames as u128 * p;
    let acts = tokens * (4 * w.dim as u128 + w.ffn_dim as u128);
    let scores = w.heads as u128 * tokens * w.window as u128 * p;
    4 * (cache + acts + scores)
}

impl WanConfig {
    /// The `[wan]` sizes against the limits (after the zero checks); `(field, rule)`.
    pub fn check_limits(&self) -> Result<(), (String, String)> {
        for (f, value, max) in [
            ("latent_channels", self.latent_channels, MAX_CHANNELS),
            ("latent_height", self.latent_height, MAX_LATENT_SIDE),
            ("latent_width", self.latent_width, MAX_LATENT_SIDE),
            ("dim", self.dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("heads", self.heads, MAX_HEADS),
            ("ffn_dim", self.ffn_dim, MAX_FFN),
            ("freq_dim", self.freq_dim, MAX_WIDTH),
            ("text_len", self.text_len, MAX_TEXT_LEN),
            ("text_dim", self.text_dim, MAX_WIDTH),
            ("chunk_frames", self.chunk_frames, MAX_LATENT_FRAMES),
            ("window", self.window, MAX_LATENT_FRAMES),
            ("sink", self.sink, MAX_LATENT_FRAMES),
            ("lora.rank", self.lora.as_ref().map_or(1, |l| l.rank), MAX_WIDTH),
            ("vae_dim", self.vae_dim.unwrap_or(1), MAX_DECODER_WIDTH / 4),
            (
                "taehv_widths",
                self.taehv_widths.map_or(1, |w| w.into_iter().max().unwrap_or(1)),
                MAX_DECODER_WIDTH,
            ),
        ] {
            if value > max {
                return Err((
                    format!("wan.{f}"),
                    format!("must be at most {max} (the engine's limit), found {value}"),
                ));
            }
        }
        for (f, list) in [
            ("timesteps", &self.timesteps),
            ("sigmas", &self.sigmas),
            ("denoising_steps", &self.denoising_steps),
        ] {
            let n = list.as_ref().map_or(0, Vec::len);
            if n > MAX_STEPS {
                return Err((
                    format!("wan.{f}"),
                    format!("must list at most {MAX_STEPS} steps (the engine's limit), found {n}"),
                ));
            }
        }
        Ok(())
    }
}
