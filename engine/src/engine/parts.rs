//! Parts of an engine that the tools can build alone, without loading the DiT: the TAE
//! decoder of a profile and its text encoders. [`super::Engine`] builds its own from the same
//! functions.

use std::path::Path;

use super::WeightsSource;
use crate::checkpoint::{Checkpoint, DType, Weights};
use crate::decoder::{TaeDecoder, TaeEncoder};
use crate::error::{Error, Result};
use crate::model::streamdit::schema::{Group, TEXT_VOCAB};
use crate::model::tae::{TaeGraph, SPATIAL_UPSAMPLE, TEMPORAL_UPSAMPLE};
use crate::model::{Family, Profile};
use crate::text::conditioner::Adapters;
use crate::text::Conditioner;

/// The TAE decoder's op list for `profile`, or the error saying why the profile cannot use it.
pub(super) fn tae_graph(p: &Profile) -> Result<TaeGraph> {
    if p.family == Family::Wan {
        return Err(Error::Invalid(format!(
            "profile `{}` (wan family): the TAE decoder is StreamDiT's, and the Wan decoders \
             (TAEHV, the Wan VAE) have not landed yet: use the preview (--preview)",
            p.name
        )));
    }
    let m = &p.model;
    let graph = TaeGraph::new(
        &p.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )?;
    if p.video.temporal_upsample != TEMPORAL_UPSAMPLE
        || p.video.spatial_upsample != SPATIAL_UPSAMPLE
    {
        return Err(Error::Invalid(format!(
            "profile `{}`: the TAE decoder upsamples 4x in time and 8x in space, but \
             video.temporal_upsample is {} and video.spatial_upsample is {} (use the preview)",
            p.name, p.video.temporal_upsample, p.video.spatial_upsample
        )));
    }
    Ok(graph)
}

/// The `decoder.*` tensors of `profile`: read from the checkpoint, or generated for random
/// weights.
pub(super) fn tae_weights(p: &Profile, source: &WeightsSource) -> Result<Weights> {
    let c = p.model.latent_channels;
    match source {
        WeightsSource::File(path) => Weights::load_decoder(path, &p.decoder, c),
        WeightsSource::Random { seed, dtype } => {
            Weights::random_decoder(&p.decoder, c, *seed, *dtype)
        }
    }
}

/// The TAE decoder of `profile` on the CPU in f32, with its tensors from `source`; the DiT
/// is not loaded (what `streamdit decode` runs).
pub fn tae_decoder(profile: &Profile, source: &WeightsSource) -> Result<TaeDecoder> {
    TaeDecoder::new(tae_graph(profile)?, &tae_weights(profile, source)?)
}

/// The TAE encoder of video-to-video for `profile` on the CPU in f32 (docs/tae.md,
/// "Encoder"), with its `encoder.*` tensors from `source`. A checkpoint without them still
/// serves text-to-video; here their absence is an error naming the first missing tensor and
/// how to get them.
pub fn tae_encoder(profile: &Profile, source: &WeightsSource) -> Result<TaeEncoder> {
    let (graph, weights) = tae_encoder_parts(profile, source)?;
    TaeEncoder::new(graph, &weights)
}

/// The TAE encoder's op list and `encoder.*` tensors of `profile` from `source` (what
/// [`tae_encoder`] runs on the CPU and a `cuda` video-to-video stream lowers to the GPU).
pub fn tae_encoder_parts(profile: &Profile, source: &WeightsSource) -> Result<(TaeGraph, Weights)> {
    // The decoder's checks (family, upsampling factors) hold for its mirror too.
    tae_graph(profile)?;
    let m = &profile.model;
    let graph = TaeGraph::encoder(
        &profile.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )?;
    let c = m.latent_channels;
    let weights = match source {
        WeightsSource::File(path) => {
            Weights::load_encoder(path, &profile.decoder, c).map_err(|e| {
                Error::Invalid(format!(
                    "video-to-video needs the TAE encoder's `encoder.*` tensors: {e} (a checkpoint \
                     written by `streamdit weights init` carries them; text-to-video runs without)"
                ))
            })?
        }
        WeightsSource::Random { seed, dtype } => {
            Weights::random_encoder(&profile.decoder, c, *seed, *dtype)?
        }
    };
    Ok((graph, weights))
}

/// The text encoders of `profile` with the adapters and byte table of `source` (random
/// weights: those of its seed, in f32); the DiT is not loaded (what `streamdit encode` runs).
pub fn text_encoders(profile: &Profile, source: &WeightsSource) -> Result<Conditioner> {
    if profile.family == Family::Wan {
        return super::wan::wan_text(profile, source);
    }
    let m = &profile.model;
    match source {
        WeightsSource::File(path) => {
            let ckpt = Checkpoint::open(path)?;
            let table = ckpt
                .read_f32("text_embed.weight", &[TEXT_VOCAB, m.text_dim])
                .ok();
            Conditioner::new(
                &profile.text,
                m.text_dim,
                &Adapters::Checkpoint(&ckpt),
                table.as_ref(),
            )
        }
        WeightsSource::Random { seed, .. } => {
            let weights = Weights::random_groups(m, *seed, DType::F32, &[Group::TextEmbed]);
            let table = weights.get("text_embed.weight").ok();
            Conditioner::new(
                &profile.text,
                m.text_dim,
                &Adapters::Random { seed: *seed },
                table,
            )
        }
    }
}

/// Writes each random (folder-less) text encoder of `profile` as a Hugging Face folder
/// under `dir` (`dir/NAME`: config, weights, tokenizer.json); returns the folders written.
pub fn write_random_encoder_folders(profile: &Profile, dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for e in &profile.text.encoders {
        if let (None, Some(spec)) = (&e.dir, &e.random) {
            let bytes = e.tokenizer.as_deref() == Some("bytes");
            let out = dir.join(&e.name);
            crate::text::random::random_model(&e.kind, spec, bytes)?.write_folder(&out)?;
            written.push(format!("{} ({})", out.display(), e.kind));
        }
    }
    Ok(written)
}
